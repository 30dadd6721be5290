"""Bytes on disk of some tables and their indexes, and the raw size of their columns' data (B4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    Table,
    cast,
    func,
    select,
    text,
)

# Bytes of a fixed-size value, whatever the database does around it (headers, alignment, pages).
_FIXED_BYTES = ((Boolean, 1), (BigInteger, 8), (Float, 8), (Integer, 4))


@dataclass(frozen=True)
class SizeReport:
    relations: list[tuple[str, int]]  # a table (with PostgreSQL's TOAST) or an index, and its bytes
    columns: list[tuple[str, int]]  # `table.column` and the raw size of its data, largest first

    @property
    def total(self) -> int:
        return sum(size for _, size in self.relations)

    @property
    def raw(self) -> int:
        """The columns' data alone: text as UTF-8, numbers at their width, NULL as nothing."""
        return sum(size for _, size in self.columns)


def measure_sizes(engine: Engine, tables: Sequence[Table]) -> SizeReport:
    with engine.connect() as conn:
        sizes = _postgresql_sizes if conn.dialect.name == "postgresql" else _sqlite_sizes
        relations = [pair for table in tables for pair in sizes(conn, table.name)]
        columns = [pair for table in tables for pair in _raw_bytes(conn, table)]
    return SizeReport(relations, sorted(columns, key=lambda pair: -pair[1]))


def _postgresql_sizes(conn: Connection, table: str) -> list[tuple[str, int]]:
    """The table with its TOAST, free-space and visibility maps; then each index."""
    heap = conn.execute(text("SELECT pg_table_size(CAST(:t AS regclass))"), {"t": table}).scalar_one()
    indexes = conn.execute(
        text(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = CAST(:t AS regclass) ORDER BY c.relname"
        ),
        {"t": table},
    )
    return [(table, int(heap)), *((str(name), int(size)) for name, size in indexes)]


def _sqlite_sizes(conn: Connection, table: str) -> list[tuple[str, int]]:
    """Pages (with their unused space) of the table's b-tree, then of each index's (the dbstat table)."""
    rows = conn.execute(
        text(
            "SELECT s.name, sum(s.pgsize) FROM dbstat AS s JOIN sqlite_master AS m ON m.name = s.name"
            " WHERE m.tbl_name = :t GROUP BY s.name ORDER BY m.type DESC, s.name"
        ),
        {"t": table},
    )
    return [(str(name), int(size)) for name, size in rows]


def _raw_bytes(conn: Connection, table: Table) -> list[tuple[str, int]]:
    sums = conn.execute(select(*(_value_bytes(conn, column) for column in table.c))).one()
    return [(f"{table.name}.{column.name}", int(size or 0)) for column, size in zip(table.c, sums, strict=True)]


def _value_bytes(conn: Connection, column: Column[Any]) -> Any:
    for kind, width in _FIXED_BYTES:
        if isinstance(column.type, kind):
            return func.count(column) * width
    if conn.dialect.name == "postgresql":
        return func.sum(func.octet_length(column))
    return func.sum(func.length(cast(column, LargeBinary)))
