"""Bank statements reach report.monthly: fetched (cnbank RC01) or pushed (iso20022 camt.053), verified, stored.

Each test pays an order through the real bank simulator on loopback, gets the
bank's statement of today the dialect's way, and checks that the monthly
report's reconciliation finds the gateway and the bank in agreement; then the
statement is made to disagree and the difference is reported.
"""

from __future__ import annotations

import datetime

import pytest
import pytest_twisted
from sqlalchemy import text

from gateway import reports
from gateway.rules import CST
from simulators import datagen, harness
from simulators.isobank import install as isoinstall
from tests.support import InProcess, in_process, spec

pytestmark = [pytest.mark.loopback]


async def _settled(ip, order_no):
    rows = await ip.query("SELECT state FROM orders WHERE order_no = :o", o=order_no)
    return rows and rows[0]["state"] == "SETTLED"


@pytest_twisted.ensureDeferred
async def test_cnbank_statement_fetched_by_rc01_reconciles(reactor, tmp_path, db_url):
    """RC01 for today's period, the statement file fetched, verified and stored; report.monthly
    finds the batch on both sides with no difference. The daily step asks RC01 for yesterday once."""
    s = spec("STMT0001", 9, seed=4)
    ip = await in_process(reactor, tmp_path, [s], db_url=db_url)
    try:
        await ip.until(lambda: _settled(ip, "STMT0001"), 60, "the order SETTLED")
        today = datetime.datetime.fromtimestamp(reactor.seconds(), CST).date()
        got = await ip.flow.adapter.fetch_statement("D" + today.strftime("%Y%m%d"), ip.flow)
        assert got and got["period"] == "D" + today.strftime("%Y%m%d")
        report = await ip.db.run(reports.monthly, today.year, today.month, harness.BANK_ID)
        rec = report["reconciliation"][harness.BANK_ID]
        stored = await ip.query("SELECT count(*) AS n FROM journal WHERE tx_code = 'RC01'")
        # The daily step: off unless the bank file says statement_daily; on, one RC01 a day.
        before = len(ip.sims.bank.requests("RC01"))
        await ip.flow.fetch_statements()
        assert len(ip.sims.bank.requests("RC01")) == before
    finally:
        await ip.close()
    assert rec["statement"] is not None and rec["differences"] == [] and rec["matched"] >= 1, rec
    assert stored[0]["n"] == 2          # the request and the reply, journaled


@pytest_twisted.ensureDeferred
async def test_iso_statement_pushed_as_camt053_reconciles(reactor, tmp_path):
    """A camt.053 the ISO bank puts in its feed is verified, kept and stored as the day's statement;
    report.monthly then reconciles every transfer of the paid order with no difference."""
    order = datagen.OrderSpec(
        order_no="ISOS0001", bank_id=isoinstall.ISO_BANK_ID, count=5, seed=12,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={}, corrupt=None)
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [order], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0)
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1)
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    try:
        await ip.until(lambda: _settled(ip, "ISOS0001"), 60, "the order SETTLED")
        today = datetime.datetime.fromtimestamp(reactor.seconds(), CST).date()
        await bank.statement(today)
        # What the daily step does for this bank: read the feed, which stores the camt.053.
        await ip.flow.adapter.fetch_statement("D" + today.strftime("%Y%m%d"), ip.flow)
        st = await ip.query("SELECT period, line_count FROM statements")
        report = await ip.db.run(reports.monthly, today.year, today.month, isoinstall.ISO_BANK_ID)
        # The bank's statement made to disagree: one entry's amount off by a fen.
        await ip.db.run(lambda c: c.execute(text(
            "UPDATE statement_lines SET amount = amount + 1 WHERE reference = 'ISOS0001-1'")))
        differing = await ip.db.run(reports.monthly, today.year, today.month, isoinstall.ISO_BANK_ID)
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    assert st == [{"period": "D" + today.strftime("%Y%m%d"), "line_count": 5}]
    rec = report["reconciliation"][isoinstall.ISO_BANK_ID]
    assert rec["statement"] is not None and rec["differences"] == [], rec
    diffs = differing["reconciliation"][isoinstall.ISO_BANK_ID]["differences"]
    assert len(diffs) == 1 and "ISOS0001-1" in str(diffs[0]), diffs
