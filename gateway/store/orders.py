"""The `orders` table: one row per order of the core (gateway/models.py)."""

from __future__ import annotations

from sqlalchemy import Connection, Row, select, update

from gateway.models import OrderState, orders


def begin_write(conn: Connection) -> None:
    """Make this transaction a write transaction now, before it reads what it decides on.

    SQLite (pysqlite) runs SELECTs outside any transaction until the first write, so a
    read-then-write transaction could decide on a row another writer changes before its
    write; a first statement that writes (and matches nothing) takes SQLite's write lock at
    once, as BEGIN IMMEDIATE would. PostgreSQL needs nothing here: the rows are locked with
    SELECT ... FOR UPDATE.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(update(orders).where(orders.c.order_no.is_(None)).values(state=orders.c.state))


def get(conn: Connection, order_no: str) -> dict | None:
    o = conn.execute(select(orders).where(orders.c.order_no == order_no)).mappings().one_or_none()
    return dict(o) if o is not None else None


def get_for_update(conn: Connection, order_no: str) -> dict | None:
    """The order row, locked FOR UPDATE (the group an order-level change decides on)."""
    o = conn.execute(select(orders).where(orders.c.order_no == order_no).with_for_update()
                     ).mappings().one_or_none()
    return dict(o) if o is not None else None


def state_and_bank(conn: Connection, order_no: str) -> Row | None:
    """(state, bank_id) of the order, or None."""
    return conn.execute(select(orders.c.state, orders.c.bank_id).where(
        orders.c.order_no == order_no)).one_or_none()


def bank_of(conn: Connection, order_no: str) -> str:
    return conn.execute(select(orders.c.bank_id).where(orders.c.order_no == order_no)).scalar_one()


def funded(conn: Connection, order_no: str) -> Row:
    """(total_amount, total_count): what the core funded (rule 1's left-hand side)."""
    return conn.execute(select(orders.c.total_amount, orders.c.total_count)
                        .where(orders.c.order_no == order_no)).one()


def request_retry(conn: Connection, order_no: str) -> None:
    """order.retry: the flow sends the corrected items in a RETRY batch at its next tick."""
    conn.execute(update(orders).where(orders.c.order_no == order_no).values(retry_requested=1))


def results_changed(conn: Connection, order_no: str, at: str, *, state: str | None = None) -> None:
    """Item results changed: they are to be pushed to the core (and the order's state set)."""
    conn.execute(update(orders).where(orders.c.order_no == order_no).values(
        results_pending=1, updated_at=at, **({"state": state} if state is not None else {})))


def reopen_settled(conn: Connection, order_no: str) -> None:
    """A SETTLED order with an item FAILED again (a late return) is DISPATCHED again."""
    conn.execute(update(orders).where(orders.c.order_no == order_no,
                                      orders.c.state == OrderState.SETTLED)
                 .values(state=OrderState.DISPATCHED))
