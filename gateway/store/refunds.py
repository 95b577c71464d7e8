"""The `refunds` and `refund_items` tables: refunds (原渠道退回) `{order}-Fnn` and the items each holds."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select, update

from gateway.models import RefundState, refund_items, refunds
from gateway.store.numbered import insert_numbered


def create(conn: Connection, order_no: str, values: dict) -> str | None:
    """A new refund of the order, numbered `{order_no}-Fnn` (the next number); returns its number,
    or None when concurrent calls took every number tried (gateway/store/numbered.py)."""
    return insert_numbered(conn, refunds, "refund_no", lambda n: f"{order_no}-F{n:02d}",
                           select(func.count()).where(refunds.c.order_no == order_no),
                           dict(order_no=order_no, **values))


def add_items(conn: Connection, refund_no: str, order_no: str, rows: list[dict]) -> None:
    """The refund's items (rows with seq, batch_no, amount)."""
    conn.execute(insert(refund_items), [
        {"refund_no": refund_no, "seq": r["seq"], "order_no": order_no, "batch_no": r["batch_no"],
         "amount": r["amount"]} for r in rows])


def get(conn: Connection, refund_no: str) -> dict | None:
    r = conn.execute(select(refunds).where(refunds.c.refund_no == refund_no)).mappings().one_or_none()
    return dict(r) if r is not None else None


def live(conn: Connection, bank_id: str) -> list[dict]:
    """The bank's refunds not finished yet, oldest first."""
    return [dict(r) for r in conn.execute(select(refunds).where(
        refunds.c.bank_id == bank_id, refunds.c.state.in_(RefundState.LIVE))
        .order_by(refunds.c.created_at, refunds.c.refund_no)).mappings()]


def lines(conn: Connection, refund_no: str) -> list[dict]:
    """(seq, batch_no, amount) of the refund's items, in seq order: what the request names."""
    return [dict(x) for x in conn.execute(select(
        refund_items.c.seq, refund_items.c.batch_no, refund_items.c.amount).where(
        refund_items.c.refund_no == refund_no).order_by(refund_items.c.seq)).mappings()]


def set_(conn: Connection, refund_no: str, /, **values) -> None:
    """Set columns of the refund (its state, backoff, the bank's answer)."""
    conn.execute(update(refunds).where(refunds.c.refund_no == refund_no).values(**values))


def mark_submitting(conn: Connection, refund_no: str, at: str) -> None:
    """Before the request leaves (rule 3): SUBMITTING, one attempt more."""
    conn.execute(update(refunds).where(refunds.c.refund_no == refund_no).values(
        state=RefundState.SUBMITTING, attempts=refunds.c.attempts + 1, updated_at=at))


def send_later(conn: Connection, refund_no: str, at: str, failures: int, next_check_at: int) -> None:
    """A SUBMITTING refund the bank asked to send again later is NEW again, after a backoff."""
    conn.execute(update(refunds).where(refunds.c.refund_no == refund_no,
                                       refunds.c.state == RefundState.SUBMITTING)
                 .values(state=RefundState.NEW, updated_at=at, failures=failures,
                         next_check_at=next_check_at))


def sent_by(conn: Connection, bank_id: str, refund_no: str) -> bool:
    """Whether the refund is one of this bank's."""
    return conn.execute(select(refunds.c.refund_no).where(
        refunds.c.refund_no == refund_no, refunds.c.bank_id == bank_id)).first() is not None


def accepted(conn: Connection, bank_id: str) -> list[dict]:
    """The bank's ACCEPTED refunds (waiting for the bank's answer)."""
    return [dict(r) for r in conn.execute(select(refunds).where(
        refunds.c.bank_id == bank_id, refunds.c.state == "ACCEPTED")).mappings()]
