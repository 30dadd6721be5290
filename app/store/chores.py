"""Periodic chores shared by all workers and replicas: whoever moves a chore's `next_at` forward runs it."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.store.schema import schedules


class Chores:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock

    def take_turn(self, chore: str, *, every_seconds: float) -> bool:
        """True for exactly one caller per period, across all workers and replicas."""
        now = self._clock()
        with self._engine.begin() as conn:
            due = (schedules.c.name == chore) & (schedules.c.next_at <= now)
            if conn.execute(update(schedules).where(due).values(next_at=now + every_seconds)).rowcount == 1:
                return True
            if conn.execute(select(schedules.c.name).where(schedules.c.name == chore)).first() is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(insert(schedules).values(name=chore, next_at=now + every_seconds))
            except IntegrityError:
                return False  # another worker created it a moment ago: its turn
            return True
