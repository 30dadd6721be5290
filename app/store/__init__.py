"""Persistence: the engine, the schema and its migrations, the gate queue, deliveries and periodic chores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from app.store.chores import Chores
from app.store.deliveries import DeliveryStore
from app.store.queue import GateQueue


@dataclass(frozen=True)
class Store:
    """The three faces of one database: what the web, the worker and the CLI use."""

    gates: GateQueue
    deliveries: DeliveryStore
    chores: Chores

    @classmethod
    def open(cls, engine: Engine, clock: Callable[[], float]) -> Store:
        return cls(GateQueue(engine, clock), DeliveryStore(engine, clock), Chores(engine, clock))
