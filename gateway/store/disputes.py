"""The `disputes` table: errors in a batch's results reported to the bank (DP01), `{batch}-Dnn`."""

from __future__ import annotations

from sqlalchemy import Connection, func, or_, select, update

from gateway.models import DisputeState, disputes
from gateway.store.numbered import insert_numbered


def create(conn: Connection, batch_no: str, values: dict) -> str | None:
    """A new dispute of the batch, numbered `{batch_no}-Dnn`; returns its number, or None when
    concurrent calls took every number tried (gateway/store/numbered.py)."""
    return insert_numbered(conn, disputes, "dispute_no", lambda n: f"{batch_no}-D{n:02d}",
                           select(func.count()).where(disputes.c.batch_no == batch_no),
                           dict(batch_no=batch_no, **values))


def due(conn: Connection, bank_id: str, now: int) -> list[dict]:
    """The bank's disputes not yet accepted whose next attempt is due at *now*."""
    return [dict(r) for r in conn.execute(select(disputes).where(
        disputes.c.bank_id == bank_id,
        disputes.c.state.in_(DisputeState.LIVE),
        or_(disputes.c.next_check_at.is_(None), disputes.c.next_check_at <= now))).mappings()]


def mark_submitting(conn: Connection, dispute_no: str, at: str) -> None:
    """Before the DP01 leaves (rule 3): SUBMITTING, one attempt more."""
    conn.execute(update(disputes).where(disputes.c.dispute_no == dispute_no).values(
        state=DisputeState.SUBMITTING, attempts=disputes.c.attempts + 1, updated_at=at))


def set_(conn: Connection, dispute_no: str, /, **values) -> None:
    """Set columns of the dispute (its state, backoff)."""
    conn.execute(update(disputes).where(disputes.c.dispute_no == dispute_no).values(**values))
