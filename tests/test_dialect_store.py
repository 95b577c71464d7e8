"""gateway/dialect_store.py: what a dialect keeps between calls, one bank's view only (issue 12).

The iso20022 adapter asks these questions instead of running SQL on the gateway's tables;
each answer must be about its own bank, or a report of one bank could be taken as naming
another bank's batch, and a feed cursor of one bank could move another's.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from adapters.interface import IDialectStore
from gateway import db as dbmod
from gateway.alarms import clear_alarm, raise_alarm
from gateway.dialect_store import DialectStore
from tests.test_report_monthly import add_batch, add_order, add_refund

AT = "2026-11-28T09:00:00+08:00"


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    with e.begin() as conn:
        add_order(conn, "A1", "P1", AT, "PROCESSING", [(100, "SENT", None, None, "A1-P01")], bank="bank-a")
        add_batch(conn, "A1-P01", "A1", "ACCEPTED", (1, 100), bank="bank-a")
        add_refund(conn, "A1-F01", "A1", 1, 100, AT, bank="bank-a")
        add_order(conn, "B1", "P1", AT, "PROCESSING", [(200, "SENT", None, None, "B1-P01")], bank="bank-b")
        add_batch(conn, "B1-P01", "B1", "ACCEPTED", (1, 200), bank="bank-b")
    yield e
    e.dispose()


def test_each_answer_is_about_its_own_bank(engine):
    """A bank's store sees its own batches, items, refunds and open batches, never another bank's;
    the feed cursor is kept per bank (inserted, then moved); reports are listed by kind and ref."""
    a, b = DialectStore("bank-a"), DialectStore("bank-b")
    verifyObject(IDialectStore, a)
    with engine.begin() as conn:
        assert a.batch_sent(conn, ["A1-P01"]) and not a.batch_sent(conn, ["B1-P01"])
        assert b.batch_sent(conn, ["x", "B1-P01"]) and not b.batch_sent(conn, ["A1-P01"])
        assert a.item_sent(conn, "A1", 1) and not a.item_sent(conn, "B1", 1) and not a.item_sent(conn, "A1", 2)
        assert a.refund_sent(conn, "A1-F01") and not b.refund_sent(conn, "A1-F01")
        open_b, _ = b.open_batches_and_refunds(conn)
        assert [x["batch_no"] for x in open_b] == ["B1-P01"]
        assert a.feed_cursor(conn) is None
        a.set_feed_cursor(conn, "7", AT)
        b.set_feed_cursor(conn, "3", AT)
        a.set_feed_cursor(conn, "9", AT)
        assert (a.feed_cursor(conn), b.feed_cursor(conn)) == ("9", "3")
        a.report_received(conn, "8", "pain.002", "M1", "A1-P01", 11, AT)
        a.report_received(conn, "9", "pain.002", "M2", "A1-P01", 12, AT)
        a.report_received(conn, "9", "camt.054", "M3", None, 13, AT)
        assert a.report_journal_ids(conn, "pain.002", "A1-P01") == [11, 12]
        assert a.report_journal_ids(conn, "camt.054") == [13]
        assert b.report_journal_ids(conn, "pain.002") == []


def test_an_alarm_episode_is_open_until_cleared(engine):
    """alarm_open answers for this bank's episode of that kind and key, and no more once cleared."""
    a, b = DialectStore("bank-a"), DialectStore("bank-b")
    with engine.begin() as conn:
        raise_alarm(conn, AT, "critical", "report-refused", "x", bank_id="bank-a", key="k1")
        assert a.alarm_open(conn, "report-refused", "k1")
        assert not a.alarm_open(conn, "report-refused", "k2") and not b.alarm_open(conn, "report-refused", "k1")
        clear_alarm(conn, AT, "report-refused", bank_id="bank-a", key="k1")
        assert not a.alarm_open(conn, "report-refused", "k1")
