"""What a dialect keeps between calls, in the gateway's tables (adapters/interface.py IDialectStore).

A bank whose reports arrive on a feed keeps the feed's cursor (`bank_feeds`) and the
reports it took (`bank_reports`, each pointing at the journal entry that holds the
document); to judge a report it asks whether a message, batch, transfer or refund
was ours, and which batches and refunds are still open. The adapter runs every call
inside a transaction its recorder opened (`IBankRecorder.read`) and never names a
table itself.
"""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update
from zope.interface import implementer

from adapters.interface import IDialectStore
from gateway.models import alarms, bank_feeds, bank_reports, batches, items, orders, refunds


@implementer(IDialectStore)
class DialectStore:
    def __init__(self, bank_id: str):
        self.bank_id = bank_id

    def feed_cursor(self, conn: Connection) -> str | None:
        return conn.execute(select(bank_feeds.c.cursor).where(bank_feeds.c.bank_id == self.bank_id)).scalar()

    def set_feed_cursor(self, conn: Connection, cursor: str | None, at: str) -> None:
        done = conn.execute(update(bank_feeds).where(bank_feeds.c.bank_id == self.bank_id)
                            .values(cursor=cursor, updated_at=at)).rowcount
        if not done:
            conn.execute(insert(bank_feeds).values(bank_id=self.bank_id, cursor=cursor, updated_at=at))

    def report_received(self, conn: Connection, cursor: str, kind: str, msg_id: str, ref: str | None,
                        journal_id: int, at: str) -> None:
        conn.execute(insert(bank_reports).values(
            bank_id=self.bank_id, cursor=cursor[:64], kind=kind, msg_id=msg_id[:64],
            ref=(ref or None) and ref[:64], journal_id=journal_id, received_at=at))

    def report_journal_ids(self, conn: Connection, kind: str, ref: str | None = None) -> list[int]:
        q = select(bank_reports.c.journal_id).where(bank_reports.c.bank_id == self.bank_id,
                                                    bank_reports.c.kind == kind)
        if ref is not None:
            q = q.where(bank_reports.c.ref == ref)
        return list(conn.execute(q.order_by(bank_reports.c.id)).scalars())

    def alarm_open(self, conn: Connection, kind: str, key: str) -> bool:
        return conn.execute(select(alarms.c.id).where(
            alarms.c.kind == kind, alarms.c.bank_id == self.bank_id, alarms.c.key == key,
            alarms.c.cleared_at.is_(None))).first() is not None

    def batch_sent(self, conn: Connection, batch_nos: list[str]) -> bool:
        return conn.execute(select(batches.c.batch_no).where(
            batches.c.batch_no.in_(batch_nos), batches.c.bank_id == self.bank_id)).first() is not None

    def refund_sent(self, conn: Connection, refund_no: str) -> bool:
        return conn.execute(select(refunds.c.refund_no).where(
            refunds.c.refund_no == refund_no, refunds.c.bank_id == self.bank_id)).first() is not None

    def item_sent(self, conn: Connection, order_no: str, seq: int) -> bool:
        return conn.execute(
            select(items.c.seq).select_from(items.join(orders, items.c.order_no == orders.c.order_no))
            .where(items.c.order_no == order_no, items.c.seq == seq,
                   orders.c.bank_id == self.bank_id)).first() is not None

    def open_batches_and_refunds(self, conn: Connection) -> tuple[list[dict], list[dict]]:
        bs = [dict(r) for r in conn.execute(select(batches).where(
            batches.c.bank_id == self.bank_id, batches.c.state == "ACCEPTED")).mappings()]
        rs = [dict(r) for r in conn.execute(select(refunds).where(
            refunds.c.bank_id == self.bank_id, refunds.c.state == "ACCEPTED")).mappings()]
        return bs, rs
