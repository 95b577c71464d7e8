"""The `result_sheets` table: each DONE batch's sealed result sheet (结果确认单, gateway/paper/sheets.py)
and whether the department filed it with finance."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update

from gateway.models import BatchState, batches, result_sheets


def get(conn: Connection, batch_no: str) -> dict | None:
    r = conn.execute(select(result_sheets).where(result_sheets.c.batch_no == batch_no)).mappings().one_or_none()
    return dict(r) if r else None


def add(conn: Connection, row: dict) -> None:
    conn.execute(insert(result_sheets).values(**row))


def filed(conn: Connection, batch_no: str, at: str, by: str) -> int:
    """The sheet was filed with finance, once; returns the row count (0: no sheet, or filed already)."""
    return conn.execute(update(result_sheets).where(result_sheets.c.batch_no == batch_no,
                                                    result_sheets.c.filed_at.is_(None))
                        .values(filed_at=at, filed_by=by)).rowcount


def done_batches_without(conn: Connection, *, bank_id: str | None = None,
                         order_no: str | None = None) -> list[str]:
    """DONE batches that have no sheet yet (of the bank, of the order), by number."""
    q = (select(batches.c.batch_no).where(batches.c.state == BatchState.DONE,
                                          batches.c.batch_no.not_in(select(result_sheets.c.batch_no)))
         .order_by(batches.c.batch_no))
    if bank_id:
        q = q.where(batches.c.bank_id == bank_id)
    if order_no:
        q = q.where(batches.c.order_no == order_no)
    return list(conn.execute(q).scalars())
