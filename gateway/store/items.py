"""The `items` table: one row per payee of an order, keyed (order_no, seq).

Per-item updates compare `(status + "")` rather than `status`: PostgreSQL then takes the
primary key, not the (order_no, status) counts index, for a one-row update (tests/test_pg_plans.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, select, update

from gateway.models import BatchState, ItemStatus, batches, items, orders, refund_items

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


# --- batches: which items go into one, and what becomes of them -------------------------------

def pending_for_pay(order_no: str):
    """The condition of the order's items a PAY batch takes: PENDING, in no batch (rule 2)."""
    return and_(items.c.order_no == order_no, items.c.status == ItemStatus.PENDING,
                items.c.batch_no.is_(None))


def corrected_for_retry(order_no: str):
    """The condition of the order's items a RETRY batch takes: CORRECTED, in no live batch (rule 2)."""
    live = select(batches.c.batch_no).where(batches.c.batch_no == items.c.batch_no,
                                            batches.c.state.in_(BatchState.LIVE))
    return and_(items.c.order_no == order_no, items.c.status == ItemStatus.CORRECTED,
                ~live.exists())


def totals(conn: Connection, where) -> Row:
    """(count, amount) of the items matching *where* (pending_for_pay, corrected_for_retry)."""
    return conn.execute(select(func.count(), func.sum(items.c.amount)).where(where)).one()


def put_in_batch(conn: Connection, where, batch_no: str, *, retry: bool) -> None:
    """The items matching *where* go into the batch; a RETRY batch's keep the batch they failed in
    (OrigBatchNo, cnbank.md)."""
    if retry:
        conn.execute(update(items).where(where).values(orig_batch_no=items.c.batch_no))
    conn.execute(update(items).where(where).values(batch_no=batch_no))


def delete_of_order(conn: Connection, order_no: str) -> None:
    """Every item of the order (a load that starts again, or one refused)."""
    conn.execute(delete(items).where(items.c.order_no == order_no))


def sent(conn: Connection, order_no: str, batch_no: str) -> int:
    """The batch's PENDING or CORRECTED items are SENT (the bank holds it); returns how many."""
    return conn.execute(update(items).where(
        items.c.order_no == order_no, items.c.batch_no == batch_no,
        items.c.status.in_((ItemStatus.PENDING, ItemStatus.CORRECTED)))
        .values(status=ItemStatus.SENT)).rowcount


def release(conn: Connection, order_no: str, batch_no: str, status: str, *, retry: bool) -> None:
    """The batch's items in *status* are free to go out again: PAY items PENDING and in no batch;
    RETRY items CORRECTED, pointing again at the batch they failed in."""
    of_batch = and_(items.c.order_no == order_no, items.c.batch_no == batch_no, items.c.status == status)
    if retry:
        conn.execute(update(items).where(of_batch).values(
            status=ItemStatus.CORRECTED, batch_no=items.c.orig_batch_no, orig_batch_no=None))
    else:
        conn.execute(update(items).where(of_batch).values(status=ItemStatus.PENDING, batch_no=None))


def sent_by(conn: Connection, bank_id: str, order_no: str, seq: int) -> bool:
    """Whether the item is one of an order of this bank."""
    return conn.execute(
        select(items.c.seq).select_from(items.join(orders, items.c.order_no == orders.c.order_no))
        .where(items.c.order_no == order_no, items.c.seq == seq,
               orders.c.bank_id == bank_id)).first() is not None
