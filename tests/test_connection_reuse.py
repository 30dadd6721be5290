"""A burst of gates reaches GitHub over a handful of kept-alive connections, not one per call.

GitHub keeps connections open, and so does the simulator (LoopbackServer speaks
HTTP/1.1 keep-alive), so a client that opened a connection (and a TLS session,
in production) per call would show here as hundreds of connections.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.world import World, running_world, wait_for

GATES = 200
INSTALLATIONS = 4
# One per worker thread (WORKER_CONCURRENCY, 4 by default) plus the redelivery chore, with room to spare.
MAX_GITHUB_CONNECTIONS = 8


@contextmanager
def worker_running(world: World) -> Iterator[None]:
    """The worker's own loop (claims, threads, chores) as `serve` runs it, not the step-by-step `settle`."""
    stop = threading.Event()
    thread = threading.Thread(target=world.worker.run, args=(stop,), name="burst-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        world.worker.wakeup.set()
        thread.join(timeout=30)


def deliver_burst(world: World) -> None:
    for n in range(GATES):
        installation = n % INSTALLATIONS + 1
        payload = world.github.open_deployment(
            owner=f"org-{installation}",
            repo="shop",
            installation_id=installation,
            run_id=10_000 + n // 10,
            environment=f"env-{n % 10}",
        )
        response = world.deliver(payload)
        assert response.status_code == 202, response.text
        world.worker.wakeup.set()


def test_a_burst_of_gates_reuses_a_few_github_connections(tmp_path: Path, private_pem: str, public_pem: bytes) -> None:
    with running_world(tmp_path, private_pem, public_pem) as world:
        for n in range(10):
            world.stacksona.script(f"env-{n}", "allow")
        with worker_running(world):
            deliver_burst(world)
            wait_for(lambda: len(world.github.final_reviews()) >= GATES or None, timeout=90)
        reviews = world.github.final_reviews()
        assert len(reviews) == GATES
        assert len({(r.owner, r.run_id, r.body["environment_name"]) for r in reviews}) == GATES
        assert sorted(set(world.github.token_requests)) == list(range(1, INSTALLATIONS + 1))
        calls = len(world.github.reviews) + len(world.github.token_requests)
        assert calls >= GATES + INSTALLATIONS  # so the bound below says something
        assert world.github.connections_opened <= MAX_GITHUB_CONNECTIONS, (
            f"{world.github.connections_opened} connections for {calls} calls"
        )
        assert world.stacksona.connections_opened <= MAX_GITHUB_CONNECTIONS
