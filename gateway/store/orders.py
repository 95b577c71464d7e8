"""The `orders` table: one row per order of the core (gateway/models.py)."""

from __future__ import annotations

from sqlalchemy import Connection, Row, func, insert, select, update

from gateway.models import BatchState, ItemStatus, OrderState, batches, items, orders


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


def in_states(conn: Connection, bank_id: str, states) -> list[str]:
    """The bank's orders in *states*, oldest first."""
    return list(conn.execute(select(orders.c.order_no).where(
        orders.c.bank_id == bank_id, orders.c.state.in_(states))
        .order_by(orders.c.created_at, orders.c.order_no)).scalars())


def needing_batch(conn: Connection, bank_id: str) -> list[str]:
    """The bank's LOADED orders that no live batch holds yet (their PAY batch is to be made)."""
    live = select(batches.c.batch_no).where(batches.c.order_no == orders.c.order_no,
                                            batches.c.state.in_(BatchState.LIVE))
    return list(conn.execute(select(orders.c.order_no).where(
        orders.c.bank_id == bank_id, orders.c.state == OrderState.LOADED,
        ~live.exists()).order_by(orders.c.created_at, orders.c.order_no)).scalars())


def to_retry(conn: Connection, bank_id: str) -> list[str]:
    """The bank's DISPATCHED orders whose corrected items are to go out in a RETRY batch."""
    return list(conn.execute(select(orders.c.order_no).where(
        orders.c.bank_id == bank_id, orders.c.retry_requested == 1,
        orders.c.state == OrderState.DISPATCHED).order_by(orders.c.order_no)).scalars())


def known(conn: Connection, order_nos: list[str]) -> set[str]:
    """Those of *order_nos* the gateway holds."""
    return set(conn.execute(select(orders.c.order_no).where(orders.c.order_no.in_(order_nos))).scalars())


def add(conn: Connection, /, **values) -> None:
    """A new order (seen funded at the core)."""
    conn.execute(insert(orders).values(**values))


def set_(conn: Connection, order_no: str, /, **values) -> None:
    """Set columns of the order (its state, detail, ...)."""
    conn.execute(update(orders).where(orders.c.order_no == order_no).values(**values))


def retry_taken(conn: Connection, order_no: str) -> None:
    """The flow is making the RETRY batch order.retry asked for."""
    conn.execute(update(orders).where(orders.c.order_no == order_no).values(retry_requested=0))


def dispatched(conn: Connection, order_no: str, at: str) -> None:
    """A batch of a LOADED order was accepted: the order is DISPATCHED."""
    conn.execute(update(orders).where(orders.c.order_no == order_no,
                                      orders.c.state == OrderState.LOADED)
                 .values(state=OrderState.DISPATCHED, updated_at=at))


def with_corrected_waiting(conn: Connection, bank_ids) -> list[Row]:
    """(order_no, bank_id, n, amount) of the banks' DISPATCHED orders with CORRECTED items that
    no live batch holds, by order number (the scheduled retry)."""
    live = select(batches.c.batch_no).where(batches.c.batch_no == items.c.batch_no,
                                            batches.c.state.in_(BatchState.LIVE))
    return conn.execute(
        select(orders.c.order_no, orders.c.bank_id, func.count().label("n"),
               func.sum(items.c.amount).label("amount"))
        .join(items, items.c.order_no == orders.c.order_no)
        .where(orders.c.state == OrderState.DISPATCHED, orders.c.bank_id.in_(bank_ids),
               items.c.status == ItemStatus.CORRECTED, ~live.exists())
        .group_by(orders.c.order_no, orders.c.bank_id).order_by(orders.c.order_no)).all()
