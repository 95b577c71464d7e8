"""The `corrections` table: each correction of a FAILED item's account data (article 23)."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select

from gateway.models import corrections


def add(conn: Connection, rows: list[dict]) -> None:
    """The corrections of one call, each naming the call's journal entry."""
    conn.execute(insert(corrections), rows)


def count(conn: Connection, order_no: str, seq: int) -> int:
    """How many times the item has been corrected."""
    return conn.execute(select(func.count()).where(corrections.c.order_no == order_no,
                                                   corrections.c.seq == seq)).scalar_one()
