"""The `batches` table: one row per batch (PAY `-Pnn`, RETRY `-Rnn`) sent to a bank."""

from __future__ import annotations

from sqlalchemy import Connection, Row, func, insert, select, update

from gateway.models import BatchState, batches


def get_for_update(conn: Connection, batch_no: str) -> dict | None:
    """The batch, locked FOR UPDATE (the group a batch-level change decides on)."""
    b = conn.execute(select(batches).where(batches.c.batch_no == batch_no).with_for_update()
                     ).mappings().one_or_none()
    return dict(b) if b is not None else None


def of_order(conn: Connection, order_no: str) -> list[Row]:
    """The order's batches, in their order."""
    return list(conn.execute(select(batches).where(batches.c.order_no == order_no)
                             .order_by(batches.c.seq)))


def confirm(conn: Connection, batch_no: str, who: str, at: str) -> int:
    """batch.confirm (article 26): who checked the results, once; returns the row count."""
    return conn.execute(update(batches).where(
        batches.c.batch_no == batch_no, batches.c.confirmed_by.is_(None)).values(
        confirmed_by=who, confirmed_at=at)).rowcount


def late_return_watch(conn: Connection, bank_id: str, since: int, now: int) -> list[dict]:
    """The bank's DONE batches done since *since* whose next status question is due at *now*."""
    return [dict(r) for r in conn.execute(select(batches).where(
        batches.c.bank_id == bank_id, batches.c.state == BatchState.DONE,
        batches.c.done_at >= since, batches.c.next_check_at <= now)
        .order_by(batches.c.batch_no)).mappings()]


def confirm_overdue(conn: Connection, bank_id: str, today: str) -> list[Row]:
    """(batch_no, order_no, confirm_due) of DONE batches not checked by their due date, not yet alarmed."""
    return list(conn.execute(select(batches.c.batch_no, batches.c.order_no, batches.c.confirm_due)
                             .where(batches.c.bank_id == bank_id,
                                    batches.c.state == BatchState.DONE,
                                    batches.c.confirmed_by.is_(None),
                                    batches.c.overdue_alarmed == 0,
                                    batches.c.confirm_due < today)))


def bank_overdue(conn: Connection, bank_id: str, today: str) -> list[Row]:
    """(batch_no, order_no, bank_due) of ACCEPTED batches whose results the bank owes, not yet alarmed."""
    return list(conn.execute(select(batches.c.batch_no, batches.c.order_no, batches.c.bank_due)
                             .where(batches.c.bank_id == bank_id,
                                    batches.c.state == BatchState.ACCEPTED,
                                    batches.c.bank_overdue_alarmed == 0,
                                    batches.c.bank_due < today)))


def confirm_overdue_alarmed(conn: Connection, batch_no: str) -> None:
    conn.execute(update(batches).where(batches.c.batch_no == batch_no).values(overdue_alarmed=1))


def bank_overdue_alarmed(conn: Connection, batch_no: str) -> None:
    conn.execute(update(batches).where(batches.c.batch_no == batch_no).values(bank_overdue_alarmed=1))


def get(conn: Connection, batch_no: str) -> dict:
    return dict(conn.execute(select(batches).where(batches.c.batch_no == batch_no)).mappings().one())


def live(conn: Connection, bank_id: str) -> list[dict]:
    """The bank's batches not finished yet (BatchState.LIVE), oldest first."""
    return [dict(r) for r in conn.execute(select(batches).where(
        batches.c.bank_id == bank_id, batches.c.state.in_(BatchState.LIVE))
        .order_by(batches.c.created_at, batches.c.batch_no)).mappings()]


def count_of_order(conn: Connection, order_no: str) -> int:
    """How many batches the order has had (a batch number is never reused)."""
    return conn.execute(select(func.count()).where(batches.c.order_no == order_no)).scalar_one()


def add(conn: Connection, /, **values) -> None:
    """A new batch."""
    conn.execute(insert(batches).values(**values))


def set_(conn: Connection, batch_no: str, /, **values) -> None:
    """Set columns of the batch (its state, backoff, the bank's answer)."""
    conn.execute(update(batches).where(batches.c.batch_no == batch_no).values(**values))


def change_from(conn: Connection, batch_no: str, from_state: str, /, **values) -> int:
    """Set columns of the batch (its new `state` among them) if it is still in *from_state*;
    returns the row count (0 or 1)."""
    return conn.execute(update(batches).where(batches.c.batch_no == batch_no,
                                              batches.c.state == from_state).values(**values)).rowcount


def mark_submitting(conn: Connection, batch_no: str, at: str) -> None:
    """Before the submission leaves (rule 3): SUBMITTING, one attempt more."""
    conn.execute(update(batches).where(batches.c.batch_no == batch_no).values(
        state=BatchState.SUBMITTING, attempts=batches.c.attempts + 1, updated_at=at))


def refusal_hold(conn: Connection, order_no: str) -> int:
    """Until when the order's next batch waits after its batches were refused (0: no wait)."""
    return conn.execute(select(func.max(batches.c.next_check_at)).where(
        batches.c.order_no == order_no, batches.c.state == BatchState.REFUSED)).scalar_one() or 0


def refused_count(conn: Connection, order_no: str) -> int:
    """How many batches of the order the bank refused."""
    return conn.execute(select(func.count()).where(
        batches.c.order_no == order_no, batches.c.state == BatchState.REFUSED)).scalar_one()


def others_held(conn: Connection, order_no: str, batch_no: str) -> int:
    """How many other batches of the order the bank holds (ACCEPTED or DONE)."""
    return conn.execute(select(func.count()).where(
        batches.c.order_no == order_no, batches.c.batch_no != batch_no,
        batches.c.state.in_((BatchState.ACCEPTED, BatchState.DONE)))).scalar_one()


def any_sent_by(conn: Connection, bank_id: str, batch_nos: list[str]) -> bool:
    """Whether any of *batch_nos* is a batch of this bank."""
    return conn.execute(select(batches.c.batch_no).where(
        batches.c.batch_no.in_(batch_nos), batches.c.bank_id == bank_id)).first() is not None


def accepted(conn: Connection, bank_id: str) -> list[dict]:
    """The bank's ACCEPTED batches (waiting for their results)."""
    return [dict(r) for r in conn.execute(select(batches).where(
        batches.c.bank_id == bank_id, batches.c.state == "ACCEPTED")).mappings()]


def waiting_per_bank(conn: Connection) -> list[Row]:
    """(bank_id, count, oldest created_at) of the live batches, per bank."""
    return conn.execute(select(batches.c.bank_id, func.count(), func.min(batches.c.created_at))
                        .where(batches.c.state.in_(BatchState.LIVE)).group_by(batches.c.bank_id)).all()


def oldest_live(conn: Connection, bank_id: str) -> dict | None:
    """(batch_no, state, created_at) of the bank's oldest live batch."""
    first = conn.execute(select(batches.c.batch_no, batches.c.state, batches.c.created_at)
                         .where(batches.c.bank_id == bank_id, batches.c.state.in_(BatchState.LIVE))
                         .order_by(batches.c.created_at, batches.c.batch_no).limit(1)).mappings().first()
    return dict(first) if first else None
