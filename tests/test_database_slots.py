"""DatabaseSlots: bursts queue for the database, a stuck database never takes every request thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from app.http.guards import DatabaseSlots


def hold_until(slots: DatabaseSlots, entered: threading.Event, release: threading.Event) -> bool:
    with slots.held() as held:
        entered.set()
        release.wait(timeout=30)
        return held


def take(slots: DatabaseSlots) -> bool:
    with slots.held() as held:
        return held


def test_a_request_beyond_the_slots_queues_and_gets_the_slot_freed() -> None:
    slots = DatabaseSlots(1, queue=1, max_wait=10)
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(hold_until, slots, entered, release)
        assert entered.wait(timeout=30)
        queued = pool.submit(take, slots)
        time.sleep(0.1)
        assert not queued.done()  # waiting for the slot, not refused
        release.set()
        assert first.result(timeout=30) is True
        assert queued.result(timeout=30) is True


def test_beyond_slots_and_queue_a_request_is_refused_at_once() -> None:
    slots = DatabaseSlots(1, queue=0, max_wait=10)
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(hold_until, slots, entered, release)
        assert entered.wait(timeout=30)
        started = time.monotonic()
        with slots.held() as held:
            assert held is False
        assert time.monotonic() - started < 1.0  # refused, not queued for max_wait
        release.set()
        assert first.result(timeout=30) is True


def test_a_queued_request_gives_up_after_max_wait() -> None:
    slots = DatabaseSlots(1, queue=4, max_wait=0.2)
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(hold_until, slots, entered, release)
        assert entered.wait(timeout=30)
        with slots.held() as held:
            assert held is False
        with slots.held(wait=False) as probe:  # a probe never queues
            assert probe is False
        release.set()
        first.result(timeout=30)
    with slots.held(wait=False) as free:
        assert free is True
