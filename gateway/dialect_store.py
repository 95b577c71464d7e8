"""What a dialect keeps between calls, in the gateway's tables (adapters/interface.py IDialectStore).

A bank whose reports arrive on a feed keeps the feed's cursor (`bank_feeds`) and the
reports it took (`bank_reports`, each pointing at the journal entry that holds the
document); to judge a report it asks whether a message, batch, transfer or refund
was ours, and which batches and refunds are still open. The adapter runs every call
inside a transaction its recorder opened (`IBankRecorder.read`) and never names a
table itself; the statements are gateway/store/'s (feeds, alarms, batches, refunds, items).
"""

from __future__ import annotations

from sqlalchemy import Connection
from zope.interface import implementer

from adapters.interface import IDialectStore
from gateway.store import alarms, batches, feeds, items, refunds


@implementer(IDialectStore)
class DialectStore:
    def __init__(self, bank_id: str):
        self.bank_id = bank_id

    def feed_cursor(self, conn: Connection) -> str | None:
        return feeds.cursor(conn, self.bank_id)

    def set_feed_cursor(self, conn: Connection, cursor: str | None, at: str) -> None:
        feeds.set_cursor(conn, self.bank_id, cursor, at)

    def report_received(self, conn: Connection, cursor: str, kind: str, msg_id: str, ref: str | None,
                        journal_id: int, at: str) -> None:
        feeds.report_received(conn, self.bank_id, cursor, kind, msg_id, ref, journal_id, at)

    def report_journal_ids(self, conn: Connection, kind: str, ref: str | None = None) -> list[int]:
        return feeds.report_journal_ids(conn, self.bank_id, kind, ref)

    def alarm_open(self, conn: Connection, kind: str, key: str) -> bool:
        return alarms.is_open(conn, kind, self.bank_id, key)

    def batch_sent(self, conn: Connection, batch_nos: list[str]) -> bool:
        return batches.any_sent_by(conn, self.bank_id, batch_nos)

    def refund_sent(self, conn: Connection, refund_no: str) -> bool:
        return refunds.sent_by(conn, self.bank_id, refund_no)

    def item_sent(self, conn: Connection, order_no: str, seq: int) -> bool:
        return items.sent_by(conn, self.bank_id, order_no, seq)

    def open_batches_and_refunds(self, conn: Connection) -> tuple[list[dict], list[dict]]:
        return batches.accepted(conn, self.bank_id), refunds.accepted(conn, self.bank_id)
