"""report.monthly: a month's figures, conservation, and reconciliation with stored bank statements.

The rows are inserted in the states the flows leave them in (a batch DONE with its
bank figures, items PAID / FAILED / REFUNDED with their result times, a refund DONE,
a late return applied), on SQLite and PostgreSQL. Statements are cnbank files written
by `protocols.cnbank_files.write_statement_file` and read back, or ISO-style entries.
"""

from __future__ import annotations

import datetime
import io
import json
from types import SimpleNamespace

import pytest
import pytest_twisted
from sqlalchemy import func, insert, select
from twisted.internet import task

from gateway import db as dbmod
from gateway import reports, statements
from gateway.commands import Commands
from gateway.journal import Journal
from gateway.models import journal, late_returns, statement_lines
from gateway.models import batches as batches_t
from gateway.models import items as items_t
from gateway.models import orders as orders_t
from gateway.models import refunds as refunds_t
from gateway.models import statements as statements_t
from gateway.rpc_api import INVALID_PARAMS, Caller, RpcError
from gateway.rules import CST
from protocols.cnbank_files import (Statement, StatementBatch, StatementHeader, StatementRefund,
                                    read_statement_file, write_statement_file)

BANK = "cnbank"
P1, P2 = "NY2026-01", "NY2026-02"
ID_NO = "110101199003078515"


def secs(*args) -> int:
    return int(datetime.datetime(*args, tzinfo=CST).timestamp())


def add_order(conn, no, project, funded, state, lines, *, bank=BANK, total=None):
    """An order and its items: lines are (amount, status, reason_code, result_at, batch_no)."""
    count, amount = total or (len(lines), sum(x[0] for x in lines))
    conn.execute(insert(orders_t).values(
        order_no=no, bank_id=bank, budget_unit="长丰县农业农村局", project_code=project,
        project_name=f"项目{project}", project_short="耕地补贴", region="340121", total_amount=amount,
        total_count=count, funded_at=funded, state=state, results_pending=0, retry_requested=0,
        created_at=funded, updated_at=funded))
    if lines:
        conn.execute(insert(items_t), [
            {"order_no": no, "seq": seq, "name": "张三", "id_number": ID_NO,
             "account_no": f"62220212345678{seq:05d}", "account_bank": "", "amount": amt, "remark": "",
             "status": status, "batch_no": batch, "reason_code": reason, "reason_text": None,
             "bank_serial": None, "result_at": at, "pushed": None, "orig_batch_no": None}
            for seq, (amt, status, reason, at, batch) in enumerate(lines, 1)])


def add_batch(conn, batch_no, order_no, state, total, paid=None, failed=None, done_at=None, bank=BANK):
    conn.execute(insert(batches_t).values(
        batch_no=batch_no, order_no=order_no, bank_id=bank, kind="PAY", seq=1, state=state,
        total_count=total[0], total_amount=total[1], succ_cnt=paid and paid[0], succ_amt=paid and paid[1],
        fail_cnt=failed and failed[0], fail_amt=failed and failed[1], attempts=1,
        created_at="2026-11-01T00:00:00+08:00", updated_at="2026-11-01T00:00:00+08:00",
        done_at=done_at, overdue_alarmed=0, bank_overdue_alarmed=0))


def add_refund(conn, refund_no, order_no, count, amount, done_at_text, bank=BANK):
    conn.execute(insert(refunds_t).values(
        refund_no=refund_no, order_no=order_no, bank_id=bank, state="DONE", total_count=count,
        total_amount=amount, reason="账户人已故", approved_by="李科长", caller="unix:uid=0",
        refund_serial="RS" + refund_no, returned_to="6222000011112222", refund_amount=amount,
        attempts=1, created_at="2026-11-21T09:00:00+08:00", updated_at=done_at_text))


def add_return(conn, serial, batch_no, order_no, seq, amount, reason, date, bank=BANK):
    conn.execute(insert(late_returns).values(
        return_serial=serial, bank_id=bank, batch_no=batch_no, order_no=order_no, seq=seq, amount=amount,
        reason_code=reason, return_date=date, applied_at="2026-11-28T10:00:00+08:00", journal_id=1))


def november(conn) -> None:
    """The month the tests look at; see the module docstring of each figure's source."""
    # FS01: 4 items; P01 paid 3, failed 1 (refunded in F01); seq 4 paid and returned late.
    add_order(conn, "FS01", P1, "2026-11-02T09:30:00+08:00", "DISPATCHED", [
        (100, "PAID", "0000", "2026-11-20T00:00:00+08:00", "FS01-P01"),
        (200, "PAID", "0000", "2026-11-30T23:30:00+08:00", "FS01-P01"),    # still November in CST
        (300, "REFUNDED", "R010", "2026-11-25T10:00:00+08:00", "FS01-P01"),
        (400, "FAILED", "R005", "2026-11-28T00:00:00+08:00", "FS01-P01")])
    add_batch(conn, "FS01-P01", "FS01", "DONE", (4, 1000), (3, 700), (1, 300), secs(2026, 11, 20, 10))
    add_refund(conn, "FS01-F01", "FS01", 1, 300, "2026-11-25T10:00:00+08:00")
    add_return(conn, "RT0001", "FS01-P01", "FS01", 4, 400, "R005", "20261128")
    # FS02 (other project): funded in November, its batch done just after midnight on 1 December.
    add_order(conn, "FS02", P2, "2026-11-05T09:00:00+08:00", "SETTLED", [
        (500, "PAID", "0000", "2026-12-01T00:00:00+08:00", "FS02-P01"),
        (600, "PAID", "0000", "2026-12-01T00:00:00+08:00", "FS02-P01")])
    add_batch(conn, "FS02-P01", "FS02", "DONE", (2, 1100), (2, 1100), (0, 0), secs(2026, 12, 1, 0, 10))
    # FS03: funded in October, paid and SETTLED in November.
    add_order(conn, "FS03", P1, "2026-10-20T09:00:00+08:00", "SETTLED", [
        (700, "PAID", "0000", "2026-11-03T00:00:00+08:00", "FS03-P01")])
    add_batch(conn, "FS03-P01", "FS03", "DONE", (1, 700), (1, 700), (0, 0), secs(2026, 11, 3, 15))
    # FS04: INVALID header, no items. FS05: sent, the bank has not answered yet.
    add_order(conn, "FS04", P1, "2026-11-10T09:00:00+08:00", "INVALID", [], total=(1, 50))
    add_order(conn, "FS05", P1, "2026-11-12T09:00:00+08:00", "DISPATCHED", [
        (800, "SENT", None, None, "FS05-P01"), (900, "SENT", None, None, "FS05-P01")])
    add_batch(conn, "FS05-P01", "FS05", "ACCEPTED", (2, 1700))


def stmt(period, blines, rlines, acct="6222000099990000") -> Statement:
    """A cnbank statement whose H line is the sum of its lines, through a real file and back."""
    h = StatementHeader(period, acct, sum(b.succ_cnt for b in blines), sum(b.succ_amt for b in blines),
                        sum(b.return_cnt for b in blines), sum(b.return_amt for b in blines),
                        sum(r.cnt for r in rlines), sum(r.amt for r in rlines))
    buf = io.BytesIO()
    write_statement_file(buf, Statement(h, list(blines), list(rlines)))
    return read_statement_file(io.BytesIO(buf.getvalue()), period=period)


MATCHING = [StatementBatch("FS01-P01", "FS01", 4, 1000, 3, 700, 1, 300, 1, 400),
            StatementBatch("FS03-P01", "FS03", 1, 700, 1, 700, 0, 0, 0, 0)]
MATCHING_R = [StatementRefund("FS01-F01", "FS01", 1, 300, "RSFS01-F01")]


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    with e.begin() as conn:
        november(conn)
    yield e
    e.dispose()


def ca(count, amount):
    return {"count": count, "amount": amount}


def figures(report, bank, project):
    [f] = [f for f in report["figures"] if (f["bank_id"], f["project_code"]) == (bank, project)]
    return f


def test_figures_of_a_month(engine):
    """November's figures per bank and project: orders funded (INVALID apart) and settled, batches
    done with the bank's counts, items by their latest result (paid, refunded, failed by reason),
    refunds, late returns by reason, items still outstanding now; every loaded order conserves."""
    with engine.connect() as conn:
        r = reports.monthly(conn, 2026, 11)
    json.dumps(r, ensure_ascii=False)     # what the RPC sends
    assert (r["from"], r["until"]) == ("2026-11-01T00:00:00+08:00", "2026-12-01T00:00:00+08:00")
    f = figures(r, BANK, P1)
    assert f["project_name"] == "项目NY2026-01"
    assert f["orders"] == {"funded": ca(2, 2700), "invalid": ca(1, 50), "settled": 1}
    assert f["batches"] == {"done": 2, "paid": ca(4, 1400), "failed": ca(1, 300)}
    assert f["items"] == {"paid": ca(3, 1000), "refunded": ca(1, 300),
                          "failed": {**ca(1, 400), "by_reason": {"R005": ca(1, 400)}}}
    assert f["refunds"] == {"done": 1, **ca(1, 300)}
    assert f["late_returned"] == {**ca(1, 400), "by_reason": {"R005": ca(1, 400)}}
    assert f["outstanding"] == {**ca(3, 2100), "by_status": {"FAILED": ca(1, 400), "SENT": ca(2, 1700)}}
    g = figures(r, BANK, P2)
    assert g["orders"]["funded"] == ca(1, 1100)
    assert g["batches"]["done"] == 0 and g["items"]["paid"] == ca(0, 0)
    assert r["conservation"] == {"orders_checked": 4, "ok": True, "broken": [], "broken_total": 0,
                                 "orders_not_loaded": 0}


def test_month_boundary_is_china_standard_time(engine):
    """An item paid at 2026-11-30T23:30+08:00 (15:30 UTC) counts in November, not December; a batch
    whose results came in at 00:10 on 1 December CST counts in December."""
    with engine.connect() as conn:
        nov = reports.monthly(conn, 2026, 11, bank_id=BANK, project_code=P1)
        dec = reports.monthly(conn, 2026, 12, bank_id=BANK)
    assert figures(nov, BANK, P1)["items"]["paid"] == ca(3, 1000)     # 100 + 200 (23:30) + 700
    assert [f["project_code"] for f in nov["figures"]] == [P1]
    d1, d2 = figures(dec, BANK, P1), figures(dec, BANK, P2)
    assert d1["items"]["paid"] == ca(0, 0)
    assert d2["items"]["paid"] == ca(2, 1100) and d2["batches"]["done"] == 1
    assert d2["orders"]["settled"] == 1


def test_conservation_broken_order_is_listed(engine):
    """An order whose items no longer add up to its funded total is named with both sides."""
    with engine.begin() as conn:
        conn.execute(items_t.update().where(items_t.c.order_no == "FS03").values(amount=699))
    with engine.connect() as conn:
        c = reports.monthly(conn, 2026, 11)["conservation"]
    assert not c["ok"]
    assert c["broken"] == [{"order_no": "FS03", "bank_id": BANK, "project_code": P1,
                            "funded": ca(1, 700), "items": ca(1, 699)}]


def test_no_statement_is_a_note_not_an_error(engine):
    """Without a stored statement for the month, reconciliation says so and lists nothing."""
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11)["reconciliation"]
    assert list(rec) == [BANK]
    assert rec[BANK]["statement"] is None
    assert "no statement of bank cnbank is stored for 2026-11" in rec[BANK]["note"]
    assert rec[BANK]["differences"] == []


def test_matching_cnbank_statement_file_reconciles_with_no_difference(engine):
    """A statement file written by the cnbank writer and read back, stored (twice: idempotent),
    matches every batch and refund the gateway recorded in November: no difference."""
    st = stmt("M202611", MATCHING, MATCHING_R)
    with engine.begin() as conn:
        sid = statements.store_cnbank_statement(conn, BANK, "M202611", st, "cnbank:STMT_M202611.txt",
                                                "2026-12-02T09:00:00+08:00", journal_id=None)
    with engine.begin() as conn:
        again = statements.store_cnbank_statement(conn, BANK, "M202611", st, "cnbank:STMT_M202611.txt",
                                                  "2026-12-02T09:05:00+08:00")
        assert again == sid
        assert conn.execute(select(func.count()).select_from(statements_t)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(statement_lines)).scalar_one() == 3
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11)["reconciliation"][BANK]
    assert rec["differences"] == [] and rec["matched"] == 3
    assert rec["statement"]["periods"] == ["M202611"]
    assert rec["statement"]["fetched_at"] == "2026-12-02T09:05:00+08:00"
    assert rec["statement"]["totals"]["paid_amt"] == 1400


def test_each_kind_of_difference_is_found(engine):
    """Storing the statement again with other lines replaces them; then a batch missing from the
    statement, one the gateway does not know, one the gateway has not finished, one the gateway
    finished in December, differing returns, and a refund with another count and amount are each
    reported with their kind and bilingual label."""
    with engine.begin() as conn:
        statements.store_cnbank_statement(conn, BANK, "M202611", stmt("M202611", MATCHING, MATCHING_R),
                                          "cnbank:STMT_M202611.txt", "2026-12-02T09:00:00+08:00")
    bad = stmt("M202611", [
        StatementBatch("FS01-P01", "FS01", 4, 1000, 3, 700, 1, 300, 0, 0),      # return not listed
        StatementBatch("FS02-P01", "FS02", 2, 1100, 2, 1100, 0, 0, 0, 0),      # gateway: December
        StatementBatch("FS05-P01", "FS05", 2, 1700, 2, 1700, 0, 0, 0, 0),      # gateway: ACCEPTED
        StatementBatch("ZZ01-P01", "ZZ01", 1, 10, 1, 10, 0, 0, 0, 0)],         # unknown
        [StatementRefund("FS01-F01", "FS01", 2, 299, "RSFS01-F01")])           # FS03-P01 left out
    with engine.begin() as conn:
        statements.store_cnbank_statement(conn, BANK, "M202611", bad, "cnbank:STMT_M202611.txt",
                                          "2026-12-03T09:00:00+08:00")
        assert conn.execute(select(func.count()).select_from(statement_lines)).scalar_one() == 5
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11)["reconciliation"][BANK]
    found = {(d["kind"], d["line"], d["reference"]) for d in rec["differences"]}
    assert found == {("returns_differ", "batch", "FS01-P01"), ("period_differs", "batch", "FS02-P01"),
                     ("bank_only", "batch", "FS05-P01"), ("bank_only", "batch", "ZZ01-P01"),
                     ("gateway_only", "batch", "FS03-P01"), ("count_differs", "refund", "FS01-F01"),
                     ("amount_differs", "refund", "FS01-F01")}
    by = {(d["kind"], d["reference"]): d for d in rec["differences"]}
    assert by[("returns_differ", "FS01-P01")]["gateway"]["returned"] == ca(1, 400)
    assert by[("returns_differ", "FS01-P01")]["bank"]["returned"] == ca(0, 0)
    assert by[("period_differs", "FS02-P01")]["gateway_month"] == "2026-12"
    assert by[("bank_only", "FS05-P01")]["gateway"] == {"state": "ACCEPTED"}
    assert by[("bank_only", "ZZ01-P01")]["gateway"] is None
    assert by[("amount_differs", "FS01-F01")]["gateway"]["amount"] == 300
    assert by[("amount_differs", "FS01-F01")]["bank"]["amount"] == 299
    for d in rec["differences"]:
        assert d["label"].startswith(d["kind"] + " ") and d["label"] == reports.LABELS[d["kind"]]
    assert reports.LABELS["gateway_only"].startswith("gateway_only 网关有银行无")
    assert rec["matched"] == 0 and rec["differences_total"] == 7
    # The batch the gateway left out of November is on December's statement: period, not missing.
    with engine.begin() as conn:
        statements.store_cnbank_statement(conn, BANK, "M202612", stmt("M202612", [
            StatementBatch("FS03-P01", "FS03", 1, 700, 1, 700, 0, 0, 0, 0)], []),
            "cnbank:STMT_M202612.txt", "2027-01-02T09:00:00+08:00")
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11, project_code=P1)["reconciliation"][BANK]
    by = {(d["kind"], d["reference"]): d for d in rec["differences"]}
    assert by[("period_differs", "FS03-P01")]["bank_period"] == "M202612"
    assert ("period_differs", "FS02-P01") not in by       # project NY2026-02, filtered out
    assert ("bank_only", "ZZ01-P01") in by                # an unknown order's line is kept


def test_daily_statements_stand_in_for_a_missing_month(engine):
    """Without M202611, the daily statements of November are used together, and a batch listed on
    two of them is a duplicate."""
    with engine.begin() as conn:
        statements.store_cnbank_statement(conn, BANK, "D20261103", stmt("D20261103", [MATCHING[1]], []),
                                          "cnbank:STMT_D20261103.txt", "2026-11-04T09:00:00+08:00")
        statements.store_cnbank_statement(conn, BANK, "D20261120", stmt("D20261120", [MATCHING[0]], []),
                                          "cnbank:STMT_D20261120.txt", "2026-12-02T09:00:00+08:00")
        statements.store_cnbank_statement(conn, BANK, "D20261125", stmt("D20261125", [MATCHING[1]],
                                                                        MATCHING_R),
                                          "cnbank:STMT_D20261125.txt", "2026-12-02T09:00:00+08:00")
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11)["reconciliation"][BANK]
    assert rec["statement"]["coverage"] == "days"
    assert rec["statement"]["periods"] == ["D20261103", "D20261120", "D20261125"]
    assert [(d["kind"], d["reference"]) for d in rec["differences"]] == [("duplicate", "FS03-P01")]
    assert rec["matched"] == 3 and "daily" in rec["note"]


ISO = "isobank"


def iso_month(conn) -> None:
    """An ISO bank: FS07 paid 3 items in November, seq 3 returned; FS07-F01 refunded 50 fen."""
    add_order(conn, "FS07", P1, "2026-11-02T09:30:00+08:00", "DISPATCHED", [
        (100, "PAID", "ACSC", "2026-11-10T00:00:00+08:00", "FS07-P01"),
        (200, "PAID", "ACSC", "2026-11-10T00:00:00+08:00", "FS07-P01"),
        (300, "FAILED", "AC04", "2026-11-15T00:00:00+08:00", "FS07-P01"),
        (50, "REFUNDED", "AC01", "2026-11-16T00:00:00+08:00", "FS07-P01")], bank=ISO)
    add_batch(conn, "FS07-P01", "FS07", "DONE", (4, 650), (3, 600), (1, 50), secs(2026, 11, 10, 12), bank=ISO)
    add_return(conn, "CAMT-RT1", "FS07-P01", "FS07", 3, 300, "AC04", "20261115", bank=ISO)
    add_refund(conn, "FS07-F01", "FS07", 1, 50, "2026-11-16T10:00:00+08:00", bank=ISO)


def entry(ref, amount, credit=False, date="2026-11-10", kind=None):
    return {"reference": ref, "amount_fen": amount, "credit": credit, "booking_date": date,
            **({"kind": kind} if kind else {})}


def test_iso_entries_reconcile_per_end_to_end_id(engine):
    """Entries match per EndToEndId (OrderNo-Seq, RefundNo), debits and credits apart; a returned
    item still counts as debited in its batch's month. Stored again under the same source the lines
    are replaced; then a double booking, an amount off, a debit missing and one unknown are found."""
    with engine.begin() as conn:
        iso_month(conn)
    good = [entry("FS07-1", 100), entry("FS07-2", 200), entry("FS07-3", 300),
            entry("FS07-F01", 50, date="2026-11-16", kind="refund"), entry("FS07-3", 300, True, "2026-11-15")]
    with engine.begin() as conn:
        sid = statements.store_entries(conn, ISO, "M202611", "camt.053:STMT-202611", good,
                                       "2026-12-01T08:00:00+08:00", opening_balance=100000,
                                       closing_balance=99650)
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11, bank_id=ISO)["reconciliation"]
    assert list(rec) == [ISO]
    assert rec[ISO]["differences"] == [] and rec[ISO]["matched"] == 5
    assert rec[ISO]["statement"]["closing_balance"] == 99650
    bad = [entry("FS07-1", 100), entry("FS07-1", 100), entry("FS07-2", 250),
           entry("FS07-9", 70), entry("FS07-F01", 50), entry("FS07-3", 300, True, "2026-11-15")]
    with engine.begin() as conn:
        assert statements.store_entries(conn, ISO, "M202611", "camt.053:STMT-202611", bad,
                                        "2026-12-02T08:00:00+08:00") == sid
    with engine.connect() as conn:
        rec = reports.monthly(conn, 2026, 11, bank_id=ISO)["reconciliation"][ISO]
    assert {(d["kind"], d["line"], d["reference"]) for d in rec["differences"]} == {
        ("duplicate", "debit", "FS07-1"), ("amount_differs", "debit", "FS07-2"),
        ("gateway_only", "debit", "FS07-3"), ("bank_only", "debit", "FS07-9")}
    assert rec["matched"] == 2


def test_bad_statements_are_refused_whole(engine):
    """A statement whose period is not its own, or an entry with a float amount or no direction, is
    refused with the field named and nothing is stored."""
    st = stmt("M202611", MATCHING, MATCHING_R)
    with engine.begin() as conn:
        with pytest.raises(ValueError, match="Period"):
            statements.store_cnbank_statement(conn, BANK, "M202612", st, "cnbank:x", "2026-12-02T09:00:00+08:00")
        with pytest.raises(ValueError, match=r"entries\[1\]\.amount_fen"):
            statements.store_entries(conn, ISO, "M202611", "camt.053:1", [entry("A-1", 1), entry("A-2", 1.5)],
                                     "2026-12-02T09:00:00+08:00")
        with pytest.raises(ValueError, match=r"entries\[0\]\.credit"):
            statements.store_entries(conn, ISO, "M202611", "camt.053:1",
                                     [{**entry("A-1", 1), "credit": None}], "2026-12-02T09:00:00+08:00")
        with pytest.raises(ValueError, match="period"):
            statements.store_entries(conn, ISO, "2026-11", "camt.053:1", [], "2026-12-02T09:00:00+08:00")
        assert conn.execute(select(func.count()).select_from(statements_t)).scalar_one() == 0


# --- the RPC method -----------------------------------------------------------------------

@pytest.fixture
def commands(reactor, engine, tmp_path):
    clock = task.Clock()
    clock.advance(secs(2026, 12, 5, 9))
    database = dbmod.Database(reactor, engine)
    database.start()
    gateway = SimpleNamespace(flows={BANK: None}, tickers={}, core=None)
    yield Commands(clock, database, Journal(str(tmp_path / "archive")), gateway)
    database.stop()


CALLER = Caller("unix", "uid=1000,gid=1000")


def counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(journal)).scalar_one(),
                conn.execute(select(func.count()).select_from(statements_t)).scalar_one())


@pytest_twisted.ensureDeferred
async def test_rpc_report_monthly_is_journaled_with_its_caller(commands, engine):
    """report.monthly answers the month's report (JSON-safe) and journals the call with its caller."""
    assert "report.monthly" in commands.methods()
    before = counts(engine)
    r = await commands.call("report.monthly", {"year": 2026, "month": 11, "bank_id": BANK,
                                               "project_code": P1}, CALLER)
    json.dumps(r)
    assert figures(r, BANK, P1)["items"]["paid"] == ca(3, 1000)
    assert r["reconciliation"][BANK]["statement"] is None
    assert counts(engine) == (before[0] + 1, before[1])
    with engine.connect() as conn:
        last = conn.execute(select(journal).order_by(journal.c.id.desc()).limit(1)).mappings().one()
    assert last["peer"] == "unix:uid=1000,gid=1000" and last["tx_code"] == "report.monthly"
    assert last["decoded"] == f"report.monthly 2026-11 bank {BANK} project {P1}"
    assert last["at"] == "2026-12-05T09:00:00+08:00"


@pytest.mark.parametrize("params, field", [
    ({"year": 2026, "month": 13}, "month"),
    ({"year": 2026, "month": 0}, "month"),
    ({"year": 2026, "month": "11"}, "month"),
    ({"year": 1999, "month": 11}, "year"),
    ({"year": True, "month": 11}, "year"),
    ({"month": 11}, "year"),
    ({"year": 2026, "month": 11, "bank_id": "nobank"}, "bank_id"),
    ({"year": 2026, "month": 11, "bank_id": 7}, "bank_id"),
    ({"year": 2026, "month": 11, "project_code": "a|b"}, "project_code"),
    ({"year": 2026, "month": 11, "day": 1}, "day"),
])
@pytest_twisted.ensureDeferred
async def test_rpc_refusals_name_the_field_and_change_nothing(commands, engine, params, field):
    """A bad month or year, an unknown bank, a malformed project code or an unknown parameter is
    refused INVALID_PARAMS naming the field, and nothing is journaled or stored."""
    before = counts(engine)
    with pytest.raises(RpcError) as e:
        await commands.call("report.monthly", params, CALLER)
    assert (e.value.code, e.value.field) == (INVALID_PARAMS, field)
    if field == "bank_id" and params["bank_id"] == "nobank":
        assert "configured: cnbank" in e.value.message
    assert counts(engine) == before
