"""The `items` table: one row per payee of an order, keyed (order_no, seq).

Per-item updates compare `(status + "")` rather than `status`: PostgreSQL then takes the
primary key, not the (order_no, status) counts index, for a one-row update (tests/test_pg_plans.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from gateway.models import BatchState, ItemStatus, batches, items, refund_items

LOCK_CHUNK = 500   # seqs per IN (...) list: well under SQLite's bound-variable limit


def lock(conn: Connection, order_no: str, seqs: list[int] | None = None,
         status: str | None = None) -> list[dict]:
    """The order's items (those in *seqs*, or all with *status*), locked FOR UPDATE in seq order."""
    q = select(items).where(items.c.order_no == order_no)
    if status is not None:
        q = q.where(items.c.status == status)
    if seqs is None:
        return [dict(r) for r in conn.execute(q.order_by(items.c.seq).with_for_update()).mappings()]
    ordered, rows = sorted(seqs), []
    for i in range(0, len(ordered), LOCK_CHUNK):
        part = ordered[i:i + LOCK_CHUNK]
        rows += [dict(r) for r in conn.execute(
            q.where(items.c.seq.in_(part)).order_by(items.c.seq).with_for_update()).mappings()]
    return rows


def per_status(conn: Connection, order_no: str) -> list[Row]:
    """(status, n, amt) per status of the order's items: rule 1's right-hand side."""
    return list(conn.execute(
        select(items.c.status, func.count().label("n"), func.sum(items.c.amount).label("amt"))
        .where(items.c.order_no == order_no).group_by(items.c.status)))


def correct(conn: Connection, order_no: str, seq: int, new: dict[str, Any]) -> int:
    """A FAILED item gets the new account data and is CORRECTED; returns the row count (0 or 1)."""
    return conn.execute(update(items).where(
        items.c.order_no == order_no, items.c.seq == seq, (items.c.status + "") == ItemStatus.FAILED)
        .values(status=ItemStatus.CORRECTED, **new)).rowcount


def corrected_waiting(conn: Connection, order_no: str) -> Row:
    """(count, amount) of the order's CORRECTED items that no live batch holds."""
    live = select(batches.c.batch_no).where(batches.c.batch_no == items.c.batch_no,
                                            batches.c.state.in_(BatchState.LIVE))
    return conn.execute(select(func.count(), func.sum(items.c.amount)).where(
        items.c.order_no == order_no, items.c.status == ItemStatus.CORRECTED,
        ~live.exists())).one()


def mark_refund_pending(conn: Connection, order_no: str, seqs: list[int]) -> int:
    """FAILED items in *seqs* -> REFUND_PENDING (in chunks, in the order given); returns how many."""
    changed = 0
    for i in range(0, len(seqs), LOCK_CHUNK):
        changed += conn.execute(update(items).where(
            items.c.order_no == order_no, items.c.status == ItemStatus.FAILED,
            items.c.seq.in_(seqs[i:i + LOCK_CHUNK])).values(
            status=ItemStatus.REFUND_PENDING)).rowcount
    return changed


def seqs_of_batch(conn: Connection, order_no: str, batch_no: str, seqs: list[int]) -> set[int]:
    """Those of *seqs* that are items of the batch (sent in it, or failed in it and sent again)."""
    return set(conn.execute(select(items.c.seq).where(
        items.c.order_no == order_no, items.c.seq.in_(seqs),
        (items.c.batch_no == batch_no) | (items.c.orig_batch_no == batch_no))).scalars())


def _of_refund(refund_no: str):
    return items.c.seq.in_(select(refund_items.c.seq).where(refund_items.c.refund_no == refund_no))


def refund_refused(conn: Connection, order_no: str, refund_no: str) -> int:
    """The refund's REFUND_PENDING items are FAILED again; returns how many."""
    return conn.execute(update(items).where(
        items.c.order_no == order_no, items.c.status == ItemStatus.REFUND_PENDING, _of_refund(refund_no))
        .values(status=ItemStatus.FAILED)).rowcount


def refunded(conn: Connection, order_no: str, refund_no: str, serial: str | None, at: str) -> int:
    """The refund's REFUND_PENDING items are REFUNDED with the bank's serial; returns how many."""
    return conn.execute(update(items).where(
        items.c.order_no == order_no, items.c.status == ItemStatus.REFUND_PENDING, _of_refund(refund_no))
        .values(status=ItemStatus.REFUNDED, bank_serial=serial, result_at=at)).rowcount


def returned_late(conn: Connection, order_no: str, seq: int, batch_no: str, amount: int, *,
                  reason_code: str, reason_text: str, serial: str, result_at: str) -> int:
    """A PAID item of the batch, of this amount, is FAILED again (a late return); returns 0 or 1."""
    return conn.execute(update(items).where(
        items.c.order_no == order_no, items.c.seq == seq,
        items.c.batch_no == batch_no, (items.c.status + "") == ItemStatus.PAID,
        items.c.amount == amount).values(
        status=ItemStatus.FAILED, reason_code=reason_code, reason_text=reason_text,
        bank_serial=serial, result_at=result_at)).rowcount
