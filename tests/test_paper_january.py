"""The January check end to end: the bank's yearly statement (cnbank RC01 with a Y period) reaches report.yearly.

The daily statement step asks for the year's statement on 1 January (with the day's and the
month's), and the cnbank bank simulator answers RC01 Y{year} with every batch and refund
DONE in the year, which the yearly reconciliation finds in agreement with the gateway.
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
import pytest_twisted

from gateway import reports
from gateway.flow import BankFlow
from gateway.rules import CST
from simulators import harness
from tests.support import in_process, spec


class _Db:
    async def run(self, fn, *a):  # noqa: ANN001
        return 0    # no statement of that period is stored yet


@pytest.mark.parametrize("today, asked", [
    (datetime.date(2027, 1, 1), ["D20261231", "M202612", "Y2026"]),
    (datetime.date(2027, 2, 1), ["D20270131", "M202701"]),
    (datetime.date(2027, 1, 2), ["D20270101"]),
])
@pytest_twisted.ensureDeferred
async def test_daily_step_asks_for_the_year_on_the_first_of_january(today, asked):
    """On 1 January the statement step asks for yesterday's day, December and the past year; on another
    first of the month the month only; on other days the day only."""
    got = []

    async def fetch(period, recorder):  # noqa: ANN001
        got.append(period)
        return None
    flow = SimpleNamespace(bank=SimpleNamespace(statement_daily=True), today=lambda: today, _statement_day=None,
                           db=_Db(), adapter=SimpleNamespace(fetch_statement=fetch), bank_id="B")
    await BankFlow.fetch_statements(flow)
    assert got == asked


async def _settled(ip, order_no):
    rows = await ip.query("SELECT state FROM orders WHERE order_no = :o", o=order_no)
    return rows and rows[0]["state"] == "SETTLED"


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_cnbank_yearly_statement_reconciles_the_year(reactor, tmp_path):
    """An order paid through the cnbank simulator on loopback; RC01 Y{year} fetched, verified and stored;
    report.yearly reconciles the year against it with no difference and the January check agrees."""
    s = spec("YEAR0001", 7, seed=3)
    ip = await in_process(reactor, tmp_path, [s])
    try:
        await ip.until(lambda: _settled(ip, "YEAR0001"), 60, "the order SETTLED")
        year = datetime.datetime.fromtimestamp(reactor.seconds(), CST).year
        got = await ip.flow.adapter.fetch_statement(f"Y{year}", ip.flow)
        assert got and got["period"] == f"Y{year}"
        yr = await ip.db.run(reports.yearly, year, harness.BANK_ID)
    finally:
        await ip.close()
    rec = yr["reconciliation"][harness.BANK_ID]
    assert rec["statement"]["periods"] == [f"Y{year}"] and rec["differences"] == [] and rec["matched"] >= 1, rec
    assert yr["january_check"]["ok"] and yr["total"]["paid"]["count"] + yr["total"]["failed"]["count"] >= 1


@pytest.mark.parametrize("frm, to, period", [("2026-11-28", "2026-11-28", "D20261128"),
                                             ("2026-11-01", "2026-11-30", "M202611"),
                                             ("2026-01-01", "2026-12-31", "Y2026"),
                                             ("2026-01-01", "2026-06-30", "M202601")])
def test_iso_camt053_period(frm, to, period):
    """A camt.053 over one day is a daily statement, over a calendar year the yearly one (the January
    check), anything else the month it starts in."""
    from adapters.iso20022.adapter import statement_period
    assert statement_period(frm, to) == period


def test_iso_yearly_camt053_is_stored_as_the_year(tmp_path):
    """A verified camt.053 from 1 January to 31 December is stored as period Y{year}, which
    report.yearly takes as the bank's yearly statement."""
    import io

    from adapters.iso20022.adapter import IsoAdapter
    from gateway import db as dbmod
    from protocols import iso20022 as I
    url = f"sqlite:///{tmp_path}/g.db"
    dbmod.upgrade(url)
    e = dbmod.make_engine(url)
    s = I.Statement("S2027010500001", "2027-01-05T08:00:00+08:00", "STMT-2026", "34001234567890123",
                    "2026-01-01", "2026-12-31", 0, -500,
                    (I.Entry("N1", 500, False, "2026-11-20", "BOOK", "FS01-1", None, None, "SN1"),))
    out = io.BytesIO()
    I.write_camt053(out, s)
    with e.begin() as conn:
        from gateway import statements

        def statement_in(conn, period, source, header, lines, journal_id):
            return statements.store_lines(conn, "ISO1", period, source, header, lines,
                                          "2027-01-05T08:00:00+08:00", journal_id)
        IsoAdapter._store_statement(SimpleNamespace(bank_id="ISO1"), conn,
                                    SimpleNamespace(statement_in=statement_in), out.getvalue(), 1)
        yr = reports.yearly(conn, 2026, "ISO1")
    e.dispose()
    assert yr["reconciliation"]["ISO1"]["statement"]["periods"] == ["Y2026"]
    assert yr["january_check"]["banks"]["ISO1"]["yearly_statement"]
    assert [d["kind"] for d in yr["reconciliation"]["ISO1"]["differences"]] == ["bank_only"]
