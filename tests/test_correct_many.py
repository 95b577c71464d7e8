"""item.correct_many and `gatewayctl corrections import`, on SQLite and PostgreSQL.

The method is called through the real Commands and database; the CLI through the
real RPC on a Unix socket (rpc_site + listen_rpc), the way an operator runs it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from types import SimpleNamespace

import pytest
import pytest_twisted
from sqlalchemy import func, select
from twisted.internet import task
from twisted.internet.threads import deferToThreadPool

from gateway import db as dbmod
from gateway.cli_corrections import SheetError, cmd_corrections_import, read_sheet
from gateway.commands import Commands
from gateway.journal import Journal
from gateway.models import corrections, items, journal
from gateway.rpc import listen_rpc, rpc_site
from gateway.rpc_api import (INVALID_PARAMS, MISSING_EVIDENCE, NOT_ALLOWED, UNKNOWN_ITEM, WRONG_STATE,
                             Caller, RpcError)
from tests.test_rpc_races import BANK, ORDER, seed

CALLER = Caller("unix", "uid=1000,gid=1000")
NEW_ACCOUNT = "6222029876543210{:03d}"


@pytest.fixture
def env(reactor, db_url, tmp_path):
    dbmod.upgrade(db_url)
    engine = dbmod.make_engine(db_url)
    database = dbmod.Database(reactor, engine, threads=1)
    database.start()
    clock = task.Clock()
    clock.advance(1_795_000_000)
    commands = Commands(clock, database, Journal(str(tmp_path / "archive")),
                        SimpleNamespace(flows={BANK: None}, tickers={}, core=None))
    yield SimpleNamespace(engine=engine, db=database, commands=commands, reactor=reactor)
    database.stop()


def fix(seq: int, **extra) -> dict:
    return {"seq": seq, "account_no": NEW_ACCOUNT.format(seq), "confirmed_by": "收款人本人", **extra}


def many(env, fixes, **params):
    return env.commands.call("item.correct_many", {
        "order_no": ORDER, "approved_by": "李科长", "approval_ref": "NY[2026]18号", "corrections": fixes,
        **params}, CALLER)


def states(env) -> dict:
    with env.engine.connect() as c:
        return dict(c.execute(select(items.c.status, func.count()).group_by(items.c.status)).all())


@pytest_twisted.ensureDeferred
async def test_every_listed_item_is_corrected_with_its_evidence_in_one_journal_entry(env):
    """Three corrections: all items CORRECTED with the new data, a correction row each with who confirmed,
    who approved and the reference, and one journal entry whose text and payload hold no full account."""
    with env.engine.begin() as c:
        seed(c, 5)
    result = await many(env, [fix(1), fix(3, name="李四", account_bank="农业银行长丰支行"),
                              fix(5, id_number="110101198501010017", confirmed_by="监护人王五")])
    assert result["corrected"] == 3 and result["order_no"] == ORDER
    with env.engine.connect() as c:
        got = {r.seq: r for r in c.execute(select(items).where(items.c.status == "CORRECTED"))}
        rows = {r.seq: r for r in c.execute(select(corrections))}
        entries = list(c.execute(select(journal).where(journal.c.tx_code == "item.correct_many")))
    assert sorted(got) == [1, 3, 5] and got[3].name == "李四" and got[5].id_number == "110101198501010017"
    assert got[1].account_no == NEW_ACCOUNT.format(1)
    assert {s: (r.confirmed_by, r.approved_by, r.approval_ref) for s, r in rows.items()} == {
        1: ("收款人本人", "李科长", "NY[2026]18号"), 3: ("收款人本人", "李科长", "NY[2026]18号"),
        5: ("监护人王五", "李科长", "NY[2026]18号")}
    (entry,) = entries
    assert {r.journal_id for r in rows.values()} == {entry.id}
    text = entry.decoded + bytes(entry.payload).decode()
    assert NEW_ACCOUNT.format(1) not in text and "110101198501010017" not in text and "1, 3, 5" in text


REFUSALS = [
    ("bad-account", [fix(1), fix(2), fix(3, account_no="12ab")], INVALID_PARAMS, "corrections[2].account_no", 3,
     ("seq 3", "8 to 32 digits")),
    ("no-confirmed-by", [fix(1), {"seq": 2, "account_no": NEW_ACCOUNT.format(2)}], MISSING_EVIDENCE,
     "corrections[1].confirmed_by", 2, ("seq 2", "confirmed_by")),
    ("bad-id-check-digit", [fix(1), fix(2, id_number="110101199003078514")], INVALID_PARAMS,
     "corrections[1].id_number", 2, ("seq 2",)),
    ("seq-twice", [fix(1), fix(1)], INVALID_PARAMS, "corrections[1].seq", 1, ("seq 1", "twice")),
    ("unknown-field", [fix(1), fix(2, iban="x")], INVALID_PARAMS, "corrections[1].iban", 2, ("seq 2", "iban")),
    ("unknown-seq", [fix(1), fix(99)], UNKNOWN_ITEM, "corrections[1].seq", 99, ("seq 99",)),
    ("not-failed", [fix(1), fix(2), fix(4)], WRONG_STATE, "corrections[2].seq", 4, ("item 4 is PAID",)),
    ("not-fixable", [fix(2), fix(5)], NOT_ALLOWED, "corrections[1].seq", 5, ("R009", "only refunded")),
]


@pytest_twisted.ensureDeferred
async def test_one_bad_correction_refuses_the_whole_sheet_naming_its_seq_and_field(env):
    """For each kind of bad line (bad account, missing confirmation, bad ID, seq twice, unknown field,
    unknown seq, item not FAILED, reason not fixable) the refusal is the one item.correct would give,
    naming the seq (data.seq, message) and the field (corrections[i].field); no item of the sheet is
    corrected and nothing is journaled. Refusals change nothing, so one database serves every case."""
    with env.engine.begin() as c:
        seed(c, 5)
        c.execute(items.update().where(items.c.seq == 4).values(status="PAID"))
        c.execute(items.update().where(items.c.seq == 5).values(reason_code="R009"))
    for name, fixes, code, field, seq, words in REFUSALS:
        with pytest.raises(RpcError) as e:
            await many(env, fixes)
        assert (e.value.code, e.value.field, (e.value.data or {}).get("seq")) == (code, field, seq), name
        assert all(w in e.value.message for w in words), (name, e.value.message)
        assert "CORRECTED" not in states(env), name
    with env.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(corrections)).scalar_one() == 0
        assert c.execute(select(func.count()).where(journal.c.tx_code == "item.correct_many")).scalar_one() == 0


@pytest_twisted.ensureDeferred
async def test_the_sheet_level_params_are_checked_first(env):
    """Approval missing, an empty, mistyped or oversized list: refused naming the parameter."""
    for params, code, field in [
            ({"approved_by": ""}, MISSING_EVIDENCE, "approved_by"),
            ({"approval_ref": None}, MISSING_EVIDENCE, "approval_ref"),
            ({"corrections": []}, INVALID_PARAMS, "corrections"),
            ({"corrections": "all"}, INVALID_PARAMS, "corrections"),
            ({"corrections": [fix(s) for s in range(1, 5002)]}, INVALID_PARAMS, "corrections")]:
        with pytest.raises(RpcError) as e:
            await env.commands.call("item.correct_many", {
                "order_no": ORDER, "approved_by": "李科长", "approval_ref": "NY[2026]18号",
                "corrections": [fix(1)], **params}, CALLER)
        assert (e.value.code, e.value.field) == (code, field), params.keys()


@pytest_twisted.ensureDeferred
async def test_958_corrections_in_one_call(env):
    """A department's 958 corrections (the case that took 73 s one call at a time) go through in one call
    and one transaction, every item CORRECTED."""
    with env.engine.begin() as c:
        seed(c, 958)
    start = env.reactor.seconds()
    result = await many(env, [fix(s) for s in range(1, 959)])
    took = env.reactor.seconds() - start
    assert result["corrected"] == 958 and states(env) == {"CORRECTED": 958}
    assert took < 30, took


# --- gatewayctl corrections import ------------------------------------------------------

def test_read_sheet_csv_and_its_refusals(tmp_path):
    """The CSV header names the columns; a wrong header, a bad seq or an extra cell names the line."""
    f = tmp_path / "s.csv"
    f.write_text("seq,account_no,confirmed_by,name\n1,6222029876543210001,本人,\n2,6222029876543210002,本人,李四\n")
    assert read_sheet(f) == [(2, {"seq": 1, "account_no": "6222029876543210001", "confirmed_by": "本人"}),
                             (3, {"seq": 2, "account_no": "6222029876543210002", "confirmed_by": "本人",
                                  "name": "李四"})]
    f.write_text("seq,account,confirmed_by\n1,6222029876543210001,本人\n")
    with pytest.raises(SheetError, match="line 1: unknown column 'account'"):
        read_sheet(f)
    f.write_text("seq,account_no\n1,6222029876543210001\n")
    with pytest.raises(SheetError, match="line 1: column 'confirmed_by' is required"):
        read_sheet(f)
    f.write_text("seq,account_no,confirmed_by\n1,6222029876543210001,本人\nx,6222029876543210002,本人\n")
    with pytest.raises(SheetError, match="line 3: seq 'x'"):
        read_sheet(f)
    f.write_bytes("seq,account_no,confirmed_by\n7,6222029876543210001,收款人本人\n".encode("gb18030"))
    assert read_sheet(f)[0][1]["confirmed_by"] == "收款人本人"


def test_read_sheet_xlsx(tmp_path):
    """An .xlsx sheet reads like the CSV (numbers typed as numbers by the spreadsheet come back as text)."""
    import openpyxl
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["seq", "account_no", "confirmed_by"])
    ws.append([4, "6222029876543210004", "本人"])
    ws.append([5.0, "6222029876543210005", "监护人"])
    wb.save(tmp_path / "s.xlsx")
    assert [c for _, c in read_sheet(tmp_path / "s.xlsx")] == [
        {"seq": 4, "account_no": "6222029876543210004", "confirmed_by": "本人"},
        {"seq": 5, "account_no": "6222029876543210005", "confirmed_by": "监护人"}]


@pytest.fixture
def served(env):
    d = tempfile.mkdtemp(prefix="rpc", dir="/tmp")
    sock = os.path.join(d, "rpc.sock")
    listeners = listen_rpc(env.reactor, rpc_site(env.commands, None, reactor=env.reactor), unix_path=sock)
    yield SimpleNamespace(env=env, sock=sock, dir=d)
    pytest_twisted.blockon(listeners.stop())
    shutil.rmtree(d)


def _args(file, sock) -> argparse.Namespace:
    return argparse.Namespace(file=str(file), order=ORDER, approved_by="李科长", approval_ref="NY[2026]18号",
                              socket=sock, timeout=30.0)


@pytest_twisted.ensureDeferred
async def test_cli_import_corrects_the_sheet_through_the_rpc(served, tmp_path):
    """`gatewayctl corrections import sheet.csv` corrects every line through the daemon's RPC (exit 0);
    a sheet with one item that is not FAILED is refused whole, the seq, field and sheet line printed
    (exit 1), and nothing of it is corrected."""
    env = served.env
    with env.engine.begin() as c:
        seed(c, 6)
        c.execute(items.update().where(items.c.seq == 6).values(status="PAID"))
    good = tmp_path / "good.csv"
    good.write_text("seq,account_no,confirmed_by\n" + "".join(
        f"{s},{NEW_ACCOUNT.format(s)},本人\n" for s in (1, 2, 3)))
    out, err = io.StringIO(), io.StringIO()
    pool = env.reactor.getThreadPool()
    code = await deferToThreadPool(env.reactor, pool, cmd_corrections_import, None, _args(good, served.sock),
                                   stdout=out, stderr=err)
    assert (code, err.getvalue()) == (0, "") and json.loads(out.getvalue())["corrected"] == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("seq,account_no,confirmed_by\n4,6222029876543210004,本人\n6,6222029876543210006,本人\n")
    out, err = io.StringIO(), io.StringIO()
    code = await deferToThreadPool(env.reactor, pool, cmd_corrections_import, None, _args(bad, served.sock),
                                   stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == ""
    assert f"WRONG_STATE ({WRONG_STATE}) seq=6 (line 3 of {bad}) field=corrections[1].seq" in err.getvalue()
    assert states(env) == {"CORRECTED": 3, "FAILED": 2, "PAID": 1}
