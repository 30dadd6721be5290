"""Each distinct gate policy stored once: a gate's `policy_id` refers to a `policies` row (migration 0008).

The domain keeps `Gate.policy` as the policy's JSON (app/core/gate.py); only the store
translates, inside the transaction that reads or writes the gate. Gates share a handful of
policies, and the JSON (about 260 bytes) on every gate was a fifth of a pending gate's bytes
(docs/benchmarks.md, B4).

A policy row is never changed or deleted (pruning keeps them: there are few, and a deleted
row could still be cached by another process), so each queue caches the rows it met both
ways, JSON to id for writes and id to JSON for reads, and asks the database only on a miss.
What a transaction met is cached only once it has committed: the id of a rolled-back insert
may be given to another policy later (SQLite hands out the highest id again).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, RowMapping, select
from sqlalchemy.dialects import postgresql, sqlite

from app.core.gate import Gate
from app.store.records import gate_from_row
from app.store.schema import policies

# Far more than the distinct policies one installation has; the bound only guards memory.
MAX_CACHED = 1024


def policy_digest(body: str) -> str:
    """The key a policy is found by (migration 0008 computes the same for existing gates)."""
    return hashlib.sha256(body.encode()).hexdigest()


class PolicyCache:
    """The policy rows this process met, both ways; shared by the threads of one queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._bodies: dict[int, str] = {}

    @contextmanager
    def transaction(self) -> Iterator[PolicyLookup]:
        """Lookups for one transaction, entered before it: what they met is cached only if it commits."""
        lookup = PolicyLookup(self)
        yield lookup
        self._remember(lookup.met)

    def id_of(self, body: str) -> int | None:
        with self._lock:
            return self._ids.get(body)

    def body_of(self, policy_id: int) -> str | None:
        with self._lock:
            return self._bodies.get(policy_id)

    def _remember(self, met: Mapping[int, str]) -> None:
        with self._lock:
            if len(self._bodies) + len(met) > MAX_CACHED:
                self._ids.clear()
                self._bodies.clear()
            for policy_id, body in met.items():
                self._ids[body] = policy_id
                self._bodies[policy_id] = body


class PolicyLookup:
    """Policy JSON to row id and back within one transaction (`conn`), through the cache."""

    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache
        self.met: dict[int, str] = {}

    def gate(self, conn: Connection, row: RowMapping) -> Gate:
        """The gate a `gates` row holds, its policy JSON included."""
        return gate_from_row(row, self.body(conn, row["policy_id"]))

    def columns(self, conn: Connection, values: Mapping[str, Any]) -> dict[str, Any]:
        """Column values to write: a `policy` (JSON or None) becomes `policy_id`, its row stored first if new."""
        if "policy" not in values:
            return dict(values)
        body = values["policy"]
        written = {name: value for name, value in values.items() if name != "policy"}
        return written | {"policy_id": None if body is None else self.id_for(conn, body)}

    def body(self, conn: Connection, policy_id: int | None) -> str | None:
        if policy_id is None:
            return None
        body = self.met.get(policy_id)
        if body is None:
            body = self._cache.body_of(policy_id)
        if body is None:
            body = str(conn.execute(select(policies.c.body).where(policies.c.id == policy_id)).scalar_one())
            self.met[policy_id] = body
        return body

    def id_for(self, conn: Connection, body: str) -> int:
        policy_id = self._cache.id_of(body)
        if policy_id is None:
            policy_id = stored_policy_id(conn, body)
            self.met[policy_id] = body
        return policy_id


def stored_policy_id(conn: Connection, body: str) -> int:
    """The id of the `policies` row holding `body`, inserted if there is none (get-or-insert).

    Two replicas storing the same new policy at once must both succeed: the second
    insert does nothing (on PostgreSQL it first waits for the first one's transaction),
    and the select after it finds the row the first one committed.
    """
    digest = policy_digest(body)
    by_digest = select(policies.c.id).where(policies.c.digest == digest)
    found = conn.execute(by_digest).scalar()
    if found is None:
        conn.execute(_insert_unless_present(conn, digest, body))
        found = conn.execute(by_digest).scalar_one()
    return int(found)


def _insert_unless_present(conn: Connection, digest: str, body: str) -> Any:
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(policies).values(digest=digest, body=body)
        return statement.on_conflict_do_nothing(index_elements=[policies.c.digest])
    return sqlite.insert(policies).values(digest=digest, body=body).on_conflict_do_nothing([policies.c.digest])
