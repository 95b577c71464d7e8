"""The monthly report as XLSX and PDF, the yearly report with the January check, and the ledger (articles 25-26).

The database holds November 2026 as the flows leave it (tests/paper_seed.py); the bank's
statements are cnbank RC01 files written and read back with protocols.cnbank_files, as the
bank simulator writes them. The workbook is read back with openpyxl and its SUM formulas
evaluated here, the PDFs with pdftotext; every figure is checked against the database (by
queries of its own, not the report's) and against the statement, and a mismatch planted in
a statement must show up as a listed difference.
"""

from __future__ import annotations

import io
import json
import re
from decimal import Decimal
from types import SimpleNamespace

import pytest
import pytest_twisted
from openpyxl import load_workbook
from sqlalchemy import func, select
from twisted.internet import task

from gateway import db as dbmod
from gateway import reports, statements
from gateway.commands import Commands
from gateway.journal import Journal
from gateway.models import ItemStatus, items, journal, orders
from gateway.paper import figures, ledger, printed, workbook
from gateway.rpc_api import Caller
from protocols.cnbank_files import (Statement, StatementBatch, StatementHeader, StatementRefund,
                                    read_statement_file, write_statement_file)
from tests import paper_seed
from tests.test_paper_sheets import pdf_text

FETCHED = "2026-12-01T08:00:00+08:00"


def stmt(period: str, blines, rlines) -> Statement:
    h = StatementHeader(period, "6222000099990000", sum(b.succ_cnt for b in blines), sum(b.succ_amt for b in blines),
                        sum(b.return_cnt for b in blines), sum(b.return_amt for b in blines),
                        sum(r.cnt for r in rlines), sum(r.amt for r in rlines))
    buf = io.BytesIO()
    write_statement_file(buf, Statement(h, list(blines), list(rlines)))
    return read_statement_file(io.BytesIO(buf.getvalue()), period=period)


def true_lines(fs02_paid: int = 3000):
    """The bank's lines for what the gateway recorded in November; fs02_paid plants a mismatch."""
    return ([StatementBatch("FS01-P01", "FS01", 5, 1500, 3, 600, 2, 900, 1, 200),
             StatementBatch("FS01-R02", "FS01", 1, 400, 1, 400, 0, 0, 0, 0),
             StatementBatch("FS02-P01", "FS02", 2, 3000, 2, fs02_paid, 0, 3000 - fs02_paid, 0, 0)],
            [StatementRefund("FS01-F01", "FS01", 1, 500, "RSF01")])


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def seeded(engine, tmp_path):
    jr = Journal(str(tmp_path / "archive"))
    with engine.begin() as conn:
        paper_seed.seed(conn, jr)
        b, r = true_lines(fs02_paid=2999)    # planted: the bank says it paid 0.01 less
        b.append(StatementBatch("FS09-P01", "FS09", 1, 100, 1, 100, 0, 0, 0, 0))   # and a batch we never sent
        statements.store_cnbank_statement(conn, paper_seed.BANK, "M202611", stmt("M202611", b, r),
                                          "cnbank:STMT_M202611.txt", FETCHED)
    return engine, jr


def fen(v) -> int:
    """A yuan cell (Decimal or float as openpyxl reads it back) as integer fen, exactly."""
    return int((Decimal(str(v)) * 100).to_integral_value())


def evaluate(ws, cell) -> int:
    """The value Excel computes for a cell: a =SUM(X1:X9) formula summed over its range, in fen for amounts."""
    v = cell.value
    if isinstance(v, str) and v.startswith("="):
        m = re.fullmatch(r"=SUM\(([A-Z]+)([0-9]+):([A-Z]+)([0-9]+)\)", v)
        assert m and m.group(1) == m.group(3), v
        return sum(evaluate(ws, ws[f"{m.group(1)}{r}"]) for r in range(int(m.group(2)), int(m.group(4)) + 1))
    return fen(v) if cell.number_format == workbook.YUAN else int(v or 0)


def db_paid(conn, project: str) -> tuple[int, int]:
    """Items PAID with their result in November 2026, by a query of the test's own."""
    n, a = conn.execute(select(func.count(), func.sum(items.c.amount))
                        .join(orders, orders.c.order_no == items.c.order_no)
                        .where(orders.c.project_code == project, items.c.status == ItemStatus.PAID,
                               items.c.result_at >= "2026-11-01", items.c.result_at < "2026-12-01")).one()
    return n, int(a or 0)


def test_workbook_figures_formulas_and_differences(seeded):
    """The workbook has a summary sheet, one sheet per bank and project, Differences and Ledger; every
    summary figure equals the report and the database; each SUM formula evaluates to the total of the
    figures it sums, and each project sheet's order rows total to its summary row; the statement's lines
    reconcile but the planted FS02-P01 (paid 29.99 on the bank's side) and the unknown FS09-P01, which
    are listed as amount_differs and bank_only with the statement's figures."""
    engine, _ = seeded
    with engine.connect() as conn:
        detail = figures.month_detail(conn, 2026, 11)
        paid = {p: db_paid(conn, p) for p in ("NY01", "NY02")}
    wb = load_workbook(io.BytesIO(workbook.monthly_workbook(detail, bank_names={"CNB01": "示范代发银行"})))
    assert wb.sheetnames == ["汇总 Summary", "CNB01 NY01", "CNB01 NY02", "差异 Differences", "台账 Ledger"]
    ws = wb["汇总 Summary"]
    heads = [c.value for c in ws[4]]
    col = {h: i + 1 for i, h in enumerate(heads)}
    rows = {ws.cell(row=r, column=2).value: r for r in range(5, 7)}
    for f in detail["report"]["figures"]:
        r = rows[f["project_code"]]
        got = lambda t: (ws.cell(row=r, column=col[f"{t} 笔数 count"]).value,  # noqa: E731
                         fen(ws.cell(row=r, column=col[f"{t} 金额 yuan"]).value))
        assert got("支付 Paid") == (f["items"]["paid"]["count"], f["items"]["paid"]["amount"]) \
            == paid[f["project_code"]]
        assert got("拨入 Funded") == (f["orders"]["funded"]["count"], f["orders"]["funded"]["amount"])
        assert got("退回 Refunded") == (f["items"]["refunded"]["count"], f["items"]["refunded"]["amount"])
        assert got("在途 Outstanding") == (f["outstanding"]["count"], f["outstanding"]["amount"])
    assert got("失败 Failed") == (0, 0) and rows["NY01"] == 5
    assert (ws.cell(row=5, column=col["失败 Failed 笔数 count"]).value,
            fen(ws.cell(row=5, column=col["退票 Returned 金额 yuan"]).value)) == (1, 200)
    total_row = 7
    assert ws.cell(row=total_row, column=1).value == "合计 Total"
    for name, c in col.items():
        if "笔数" in name or "金额" in name:
            formula = ws.cell(row=total_row, column=c)
            assert formula.value.startswith("=SUM(")
            assert evaluate(ws, formula) == sum(evaluate(ws, ws.cell(row=r, column=c)) for r in (5, 6))
    assert evaluate(ws, ws.cell(row=total_row, column=col["支付 Paid 金额 yuan"])) == 800 + 3000

    for (bank, project), per in detail["orders"].items():
        ps = wb[f"{bank} {project}"]
        pcol = {c.value: i + 1 for i, c in enumerate(ps[3])}
        last = 3 + len(per) + 1
        assert ps.cell(row=last, column=1).value == "合计 Total"
        summary = rows[project]
        for name, c in col.items():
            if "笔数" in name or "金额" in name:
                assert evaluate(ps, ps.cell(row=last, column=pcol[name])) == evaluate(ws, ws.cell(row=summary, column=c)), name

    ds = wb["差异 Differences"]
    found = {(r[1].value, r[4].value): r for r in ds.iter_rows(min_row=4) if r[4].value}
    assert set(found) == {("amount_differs", "FS02-P01"), ("bank_only", "FS09-P01")}
    bank_side = json.loads(found[("amount_differs", "FS02-P01")][7].value)
    assert bank_side["paid"] == {"count": 2, "amount": 2999}
    assert "M202611" in ds.cell(row=4, column=3).value and "3 matched" in ds.cell(row=4, column=3).value

    ls = wb["台账 Ledger"]
    balances = [fen(r[9].value) for r in ls.iter_rows(min_row=4) if r[0].value == "CNB01" and r[1].value == "NY01"
                and r[2].value]
    assert balances == [1500, 900, 900, 900, 500, 0, 200]


def test_monthly_pdf_prints_the_figures_and_the_listed_differences(seeded, tmp_path):
    """The printed monthly report shows each project's figures and orders in yuan, the totals, the
    conservation check and the differences against the statement, with "第 n 页 共 m 页" on each page."""
    engine, _ = seeded
    with engine.connect() as conn:
        detail = figures.month_detail(conn, 2026, 11)
    text = pdf_text(printed.monthly_pdf(detail, bank_names={"CNB01": "示范代发银行"}), tmp_path)
    for want in ("月度报表 Monthly report 2026-11", "示范代发银行 CNB01 / 项目 NY01 耕地地力保护补贴", "成功 paid 2 / 29.99",
                 "支付 Items paid 3 8.00", "支付 Items paid 2 30.00", "支付 Items paid 5 38.00",
                 "拨入 Funded (orders) 2 45.00", "退票 Returned late 1 2.00", "FS01 340121 8.00 5.00 2.00 2.00",
                 "2 orders checked, 平衡 ok", "相符 matched 3, 差异 differences 2", "amount_differs 金额不符",
                 "bank_only 银行有网关无", "FS09-P01", "第 1 页 共"):
        assert want in text, want
    pages = re.findall(r"第 (\d+) 页 共 (\d+) 页", text)
    assert pages and all(m == pages[-1][1] for _, m in pages) and pages[-1][0] == pages[-1][1]


def test_yearly_adds_up_the_months_and_the_january_check(engine, tmp_path):
    """The year's rows per bank, project, region and month add up to the twelve monthly reports; with
    the bank's yearly statement (RC01 period Y2026) agreeing the January check passes, and a mismatch
    planted in it fails the check and is listed; without a yearly statement the monthly ones stand in
    and the check does not pass."""
    jr = Journal(str(tmp_path / "archive"))
    with engine.begin() as conn:
        paper_seed.seed(conn, jr)
        b, r = true_lines()
        statements.store_cnbank_statement(conn, paper_seed.BANK, "M202611", stmt("M202611", b, r),
                                          "cnbank:STMT_M202611.txt", FETCHED)
    with engine.connect() as conn:
        yr = reports.yearly(conn, 2026)
        months = [reports.monthly(conn, 2026, m) for m in range(1, 13)]
    for (bank, project) in {(f["bank_id"], f["project_code"]) for m in months for f in m["figures"]}:
        row = next(t for t in yr["by_project_bank"] if (t["bank_id"], t["project_code"]) == (bank, project))
        fs = [f for m in months for f in m["figures"] if (f["bank_id"], f["project_code"]) == (bank, project)]
        assert row["paid"]["amount"] == sum(f["items"]["paid"]["amount"] for f in fs)
        assert row["refunded"] == {"count": sum(f["items"]["refunded"]["count"] for f in fs),
                                   "amount": sum(f["items"]["refunded"]["amount"] for f in fs)}
        assert row["late_returned"]["amount"] == sum(f["late_returned"]["amount"] for f in fs)
        assert row["funded"]["amount"] == sum(f["orders"]["funded"]["amount"] for f in fs)
        assert row["batch_paid"]["amount"] == sum(f["batches"]["paid"]["amount"] for f in fs)
    assert [m["month"] for m in yr["by_month"]] == ["2026-11"]
    assert {r["region"]: r["paid"]["amount"] for r in yr["by_region"]} == {"340121": 800, "340122": 3000}
    assert yr["total"]["paid"]["amount"] == 3800 and yr["total"]["funded"]["amount"] == 4500
    assert yr["reconciliation"]["CNB01"]["statement"]["coverage"] == "months"
    assert not yr["january_check"]["ok"] and not yr["january_check"]["banks"]["CNB01"]["yearly_statement"]

    with engine.begin() as conn:
        b, r = true_lines()
        statements.store_cnbank_statement(conn, paper_seed.BANK, "Y2026", stmt("Y2026", b, r),
                                          "cnbank:STMT_Y2026.txt", "2027-01-05T08:00:00+08:00")
        good = reports.yearly(conn, 2026)
        assert good["january_check"]["ok"] and good["reconciliation"]["CNB01"]["matched"] == 4
        b, r = true_lines(fs02_paid=2999)
        statements.store_cnbank_statement(conn, paper_seed.BANK, "Y2026", stmt("Y2026", b, r),
                                          "cnbank:STMT_Y2026.txt", "2027-01-06T08:00:00+08:00")
        bad = reports.yearly(conn, 2026)
    rec = bad["reconciliation"]["CNB01"]
    assert not bad["january_check"]["ok"] and rec["statement"]["periods"] == ["Y2026"]
    assert [(d["kind"], d["reference"]) for d in rec["differences"]] == [("amount_differs", "FS02-P01")]
    text = pdf_text(printed.yearly_pdf(bad), tmp_path)
    for want in ("年度汇总 Yearly summary 2026", "2026-11 45.00 38.00 5.00 2.00 2.00", "CNB01 / NY02 30.00 30.00",
                 "340122 30.00 30.00", "差异 differences 1; 待处理 NOT agreed", "FS02-P01"):
        assert want in text, want


def test_ledger_running_balance_equals_what_is_in_flight(seeded):
    """Each project's ledger runs funded, paid, failed, corrected, paid on retry, refunded and returned
    in date order; the balance ends at what the bank still holds for the project (conservation), and a
    year's ledger carries the earlier balance in as its opening."""
    engine, _ = seeded
    with engine.connect() as conn:
        led = {(lg["bank_id"], lg["project_code"]): lg for lg in ledger.ledger(conn)["ledgers"]}
        later = ledger.ledger(conn, year=2027)["ledgers"]
    ny01 = led[("CNB01", "NY01")]
    assert [(m["kind"], m["effect"], m["balance"]) for m in ny01["movements"]] == [
        ("funded", 1500, 1500), ("paid", -600, 900), ("failed", 0, 900), ("corrected", 0, 900),
        ("retried", -400, 500), ("refunded", -500, 0), ("returned", 200, 200)]
    assert ny01["closing"] == ny01["held_now"] == 200 and ny01["balanced"]
    assert led[("CNB01", "NY02")]["closing"] == 0 and led[("CNB01", "NY02")]["balanced"]
    assert {(lg["project_code"], lg["opening"], len(lg["movements"])) for lg in later} == {("NY01", 200, 0),
                                                                                            ("NY02", 0, 0)}


@pytest_twisted.ensureDeferred
async def test_rpc_report_yearly(reactor, seeded):
    """report.yearly answers the year (JSON-safe) and journals the call with its caller; an unknown
    bank is refused naming the field."""
    engine, jr = seeded
    clock = task.Clock()
    clock.advance(paper_seed.secs(2027, 1, 5, 9))
    database = dbmod.Database(reactor, engine)
    database.start()
    try:
        cmds = Commands(clock, database, jr, SimpleNamespace(flows={paper_seed.BANK: None}, tickers={}, core=None))
        r = await cmds.call("report.yearly", {"year": 2026, "project_code": "NY02"}, Caller("unix", "uid=0"))
        json.dumps(r)
        assert r["total"]["paid"]["amount"] == 3000
        with engine.connect() as conn:
            last = conn.execute(select(journal).order_by(journal.c.id.desc()).limit(1)).mappings().one()
        assert (last["tx_code"], last["decoded"]) == ("report.yearly", "report.yearly 2026 project NY02")
        from gateway.rpc_api import INVALID_PARAMS, RpcError
        with pytest.raises(RpcError) as e:
            await cmds.call("report.yearly", {"year": 2026, "bank_id": "X"}, Caller("unix", "uid=0"))
        assert (e.value.code, e.value.field) == (INVALID_PARAMS, "bank_id")
    finally:
        database.stop()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_long_reports_are_read_beside_the_writer(reactor, seeded):
    """report.yearly and batch.register read on the read pool, so that a long report does not hold
    up the writer. Each report is made long for real: a test connection holds ACCESS EXCLUSIVE on
    orders and batches (which both read), so the report's SELECT waits on PostgreSQL. Meanwhile a
    journal append on the writer pool (one thread) commits, and the report has not answered yet;
    once the lock is released it answers with its figures and is journaled. Checked to fail (the
    writer's append never commits; the 120 s guard fails it) with either method back on
    `cmds.db.run`. PostgreSQL only: on SQLite in WAL a reader cannot be made to wait."""
    import sqlalchemy as sa
    from twisted.internet import defer

    from gateway.journal import Entry
    from tests.test_paper_sheets import ROOT
    from gateway.workdays import load_calendar
    engine, jr = seeded
    clock = task.Clock()
    clock.advance(paper_seed.secs(2027, 1, 5, 9))
    database = dbmod.Database(reactor, engine)    # one writer thread, the default
    database.start()
    gateway = SimpleNamespace(flows={paper_seed.BANK: None}, tickers={}, core=None,
                              cfg=SimpleNamespace(calendar=load_calendar(ROOT / "conf" / "calendar")))
    cmds = Commands(clock, database, jr, gateway)
    caller = Caller("unix", "uid=0")
    try:
        for method, params in (("report.yearly", {"year": 2026}), ("batch.register", {"year": 2026, "month": 11})):
            locker = engine.connect()
            locker.execute(sa.text("LOCK TABLE orders, batches IN ACCESS EXCLUSIVE MODE"))
            try:
                answer = defer.ensureDeferred(cmds.call(method, params, caller))
                wrote = database.run(lambda c: jr.append(c, Entry("event", "test", "daemon", "writer.step",
                                                                  "the writer goes on"), "2027-01-05T09:00:00+08:00"))
                jid = await wrote.addTimeout(120, reactor)
                assert jid > 0 and not answer.called, f"{method} answered while its tables were locked"
            finally:
                locker.commit()
                locker.close()
            r = await answer
            with engine.connect() as conn:
                last = conn.execute(select(journal).order_by(journal.c.id.desc()).limit(1)).mappings().one()
            assert last["tx_code"] == method and last["id"] > jid
            if method == "report.yearly":
                assert r["total"]["paid"]["amount"] > 0
            else:
                assert [b["batch_no"] for b in r["batches"]] == ["FS01-P01", "FS02-P01", "FS01-R02"]
    finally:
        database.stop()
