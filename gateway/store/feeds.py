"""The `bank_feeds` and `bank_reports` tables: a report feed's cursor per bank, and each report
taken from it (pointing at the journal entry that holds the document). Used by
gateway/dialect_store.py for the dialects (adapters/interface.py IDialectStore)."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update

from gateway.models import bank_feeds, bank_reports


def cursor(conn: Connection, bank_id: str) -> str | None:
    return conn.execute(select(bank_feeds.c.cursor).where(bank_feeds.c.bank_id == bank_id)).scalar()


def set_cursor(conn: Connection, bank_id: str, cursor: str | None, at: str) -> None:
    done = conn.execute(update(bank_feeds).where(bank_feeds.c.bank_id == bank_id)
                        .values(cursor=cursor, updated_at=at)).rowcount
    if not done:
        conn.execute(insert(bank_feeds).values(bank_id=bank_id, cursor=cursor, updated_at=at))


def report_received(conn: Connection, bank_id: str, cursor: str, kind: str, msg_id: str, ref: str | None,
                    journal_id: int, at: str) -> None:
    conn.execute(insert(bank_reports).values(
        bank_id=bank_id, cursor=cursor[:64], kind=kind, msg_id=msg_id[:64],
        ref=(ref or None) and ref[:64], journal_id=journal_id, received_at=at))


def report_journal_ids(conn: Connection, bank_id: str, kind: str, ref: str | None = None) -> list[int]:
    """The journal ids of the bank's reports of *kind* (naming *ref*), in the order received."""
    q = select(bank_reports.c.journal_id).where(bank_reports.c.bank_id == bank_id,
                                                bank_reports.c.kind == kind)
    if ref is not None:
        q = q.where(bank_reports.c.ref == ref)
    return list(conn.execute(q.order_by(bank_reports.c.id)).scalars())
