"""Result sheets (交易结果) sealed with the gateway's SM2 key, and the handover register (交接登记簿), article 26.

The database holds a month as the flows leave it (tests/paper_seed.py). The sheet's
PDF is read back with `pdftotext` (poppler-utils) and its detached seal checked with
our SM2 code, with `gatewayctl sheet verify` (no configuration) and with `openssl`.
Without pdftotext or openssl these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from sqlalchemy import func, select, update
from twisted.internet import task

from gateway import db as dbmod
from gateway.commands import Commands
from gateway.journal import Entry, Journal
from gateway.masking import mask
from gateway.models import batches, journal, result_sheets
from gateway.paper import register, sheets
from gateway.paper.seal import Seal, fingerprint_of, load_public, openssl_command, verify
from gateway.rpc_api import INVALID_PARAMS, Caller, RpcError
from gateway.workdays import load_calendar
from protocols import sm
from tests import paper_seed

ROOT = Path(__file__).resolve().parent.parent
AT = "2026-12-01T09:00:00+08:00"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (tests/services.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def pdf_text(data: bytes, tmp_path: Path) -> str:
    """The PDF's text as pdftotext reads it, whitespace runs folded to one space."""
    exe = need_tool("pdftotext")
    f = tmp_path / "read.pdf"
    f.write_bytes(data)
    out = subprocess.run([exe, "-layout", str(f), "-"], capture_output=True, check=True).stdout.decode()
    return re.sub(r"[ \t]+", " ", out)


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture(scope="module")
def seal() -> Seal:
    return Seal(sm.generate_keypair())


@pytest.fixture
def seeded(engine, tmp_path):
    jr = Journal(str(tmp_path / "archive"))
    with engine.begin() as conn:
        paper_seed.seed(conn, jr)
    return engine, jr


def test_sheet_shows_the_batch_and_exactly_the_items_it_failed(seeded, seal, tmp_path):
    """FS01-P01's sheet names bank, order, project, BankBatchNo and dates, its figures in yuan, and lists
    as failed exactly seq 4 (R001, since corrected and paid in FS01-R02, shown under its old account,
    masked) and seq 5 (R010, refunded): not seq 2, paid in the batch and returned later; the list agrees
    with the batch's totals, and the result file's SM3, its verification and the signer's fingerprint
    are printed."""
    engine, jr = seeded
    with engine.begin() as conn:
        row = sheets.ensure_sheet(conn, jr, seal, "FS01-P01", AT, bank_name="示范代发银行")
        data, sig = sheets.sheet_files(conn, jr, "FS01-P01")
        d = sheets.sheet_data(conn, "FS01-P01")
    assert [x["seq"] for x in d["failed"]] == [4, 5] and d["failed_list_matches"]
    text = pdf_text(data, tmp_path)
    for want in ("交易结果", "FS01-P01", "示范代发银行 (CNB01)", "FS01", "BKS01-P01", "NY01 耕地地力保护补贴",
                 "耕地补贴", "2026-11-20T10:00:00+08:00", "2026-11-27", "15.00", "6.00", "9.00",
                 "R001 账号不存在", "R010 账户人已故", "PAID (FS01-R02)", "REFUNDED", mask(paper_seed.acct(4)),
                 "ab" * 32, "ok", "一致 agrees", seal.fingerprint, "第 1 页 共 1 页"):
        assert want in text, want
    assert paper_seed.acct(4) not in text and paper_seed.acct(2) not in text and mask(paper_seed.acct(2)) not in text
    assert re.search(r"^ *5 +张5 ", text, re.M) and not re.search(r"^ *2 +张2 ", text, re.M)
    assert row["pdf_size"] == len(data) and row["signer"] == seal.fingerprint
    assert verify(data, sig, seal.public_key) and not verify(data + b" ", sig, seal.public_key)


def test_sheet_is_made_once_and_kept_in_the_journal(seeded, seal):
    """A second ensure_sheet returns the stored sheet and journals nothing more; the PDF and its
    signature are journal payloads of the batch; a batch whose results are not in gets no sheet."""
    engine, jr = seeded
    with engine.begin() as conn:
        first = sheets.ensure_sheet(conn, jr, seal, "FS02-P01", AT)
        n = conn.execute(select(func.count()).select_from(journal)).scalar_one()
        again = sheets.ensure_sheet(conn, jr, seal, "FS02-P01", "2026-12-09T09:00:00+08:00")
        assert again == first
        assert conn.execute(select(func.count()).select_from(journal)).scalar_one() == n
        kinds = conn.execute(select(journal.c.tx_code).where(journal.c.batch_no == "FS02-P01",
                                                             journal.c.tx_code.like("result-sheet%"))
                             .order_by(journal.c.id)).scalars().all()
        assert kinds == ["result-sheet", "result-sheet.sig"]
        conn.execute(update(result_sheets).values(filed_at=None))
        from gateway.models import batches
        conn.execute(update(batches).where(batches.c.batch_no == "FS01-R02").values(state="ACCEPTED"))
        with pytest.raises(sheets.SheetError, match="ACCEPTED"):
            sheets.ensure_sheet(conn, jr, seal, "FS01-R02", AT)
        with pytest.raises(sheets.SheetError, match="no batch"):
            sheets.ensure_sheet(conn, jr, seal, "NOPE", AT)


@pytest.fixture
def sqlite_seeded(tmp_path):
    url = f"sqlite:///{tmp_path}/gateway.db"
    dbmod.upgrade(url)
    e = dbmod.make_engine(url)
    jr = Journal(str(tmp_path / "archive"))
    with e.begin() as conn:
        paper_seed.seed(conn, jr)
    yield e, jr
    e.dispose()


def test_seal_verifies_in_openssl_and_in_gatewayctl_without_a_config(sqlite_seeded, seal, tmp_path):
    """The documented openssl command accepts the sheet's detached seal and refuses it for a changed
    PDF; `gatewayctl sheet verify PDF SIG PUBKEY` (no --config) says OK with the fingerprint and exits
    0, and exits 1 for a PDF changed by one byte."""
    openssl = need_tool("openssl")
    engine, jr = sqlite_seeded
    with engine.begin() as conn:
        sheets.ensure_sheet(conn, jr, seal, "FS01-P01", AT)
        data, sig = sheets.sheet_files(conn, jr, "FS01-P01")
    pdf, sigf, pub = tmp_path / "FS01-P01.pdf", tmp_path / "FS01-P01.pdf.sig", tmp_path / "seal.pub.pem"
    pdf.write_bytes(data)
    sigf.write_bytes(sig)
    pub.write_bytes(seal.public_pem())
    assert fingerprint_of(load_public(pub.read_bytes())) == seal.fingerprint
    cmd = openssl_command(str(pdf), str(sigf), str(pub)).split()
    assert cmd[0] == "openssl"
    ok = subprocess.run([openssl, *cmd[1:]], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    ctl = [sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()", "sheet", "verify"]
    out = subprocess.run([*ctl, str(pdf), str(sigf), str(pub)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and seal.fingerprint in out.stdout, out.stdout + out.stderr
    b = bytearray(data)
    b[len(b) // 2] ^= 1
    pdf.write_bytes(bytes(b))
    assert subprocess.run([openssl, *cmd[1:]], capture_output=True).returncode != 0
    bad = subprocess.run([*ctl, str(pdf), str(sigf), str(pub)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "BAD" in bad.stdout


def test_seal_verifies_with_the_gateways_certificate_in_gatewayctl_and_openssl(sqlite_seeded, seal, tmp_path):
    """With the gateway's X.509 certificate (SM2-with-SM3, made by openssl from the seal key) in place
    of the bare public key: `gatewayctl sheet verify PDF SIG CERT` says OK with the same fingerprint
    and the certificate's subject and validity, and the documented `openssl pkeyutl -certin` line
    accepts the seal; a certificate of another key makes both refuse it (gatewayctl exits 1).
    Checked to fail with load_public not reading certificates (exit 2: "expected one PUBLIC KEY")."""
    openssl = need_tool("openssl")
    from protocols import keyfile
    engine, jr = sqlite_seeded
    with engine.begin() as conn:
        sheets.ensure_sheet(conn, jr, seal, "FS01-P01", AT)
        data, sig = sheets.sheet_files(conn, jr, "FS01-P01")
    pdf, sigf = tmp_path / "FS01-P01.pdf", tmp_path / "FS01-P01.pdf.sig"
    pdf.write_bytes(data)
    sigf.write_bytes(sig)

    def certificate(key, name: str) -> Path:
        pem, crt = tmp_path / f"{name}.pem", tmp_path / f"{name}.crt"
        keyfile.write_private_key_file(pem, key)
        subprocess.run([openssl, "req", "-x509", "-new", "-key", str(pem), "-sm3", "-sigopt",
                        "distid:1234567812345678", "-subj", f"/CN={name}/O=Subsidy Gateway", "-days", "365",
                        "-out", str(crt)], check=True, capture_output=True)
        return crt

    crt, other = certificate(seal.key, "gateway-seal"), certificate(sm.generate_keypair(), "someone-else")
    assert fingerprint_of(load_public(crt.read_bytes())) == seal.fingerprint
    ctl = [sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()", "sheet", "verify"]
    out = subprocess.run([*ctl, str(pdf), str(sigf), str(crt)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and seal.fingerprint in out.stdout, out.stdout + out.stderr
    assert "certificate O=Subsidy Gateway,CN=gateway-seal" in out.stdout
    cmd = openssl_command(str(pdf), str(sigf), str(crt), certificate=True).split()
    assert "-certin" in cmd
    ok = subprocess.run([openssl, *cmd[1:]], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*ctl, str(pdf), str(sigf), str(other)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "BAD" in bad.stdout, bad.stdout + bad.stderr
    cmd = openssl_command(str(pdf), str(sigf), str(other), certificate=True).split()
    assert subprocess.run([openssl, *cmd[1:]], capture_output=True).returncode != 0


def test_register_per_batch_received_sheet_confirmed_deadline_disputes_filed(seeded, seal):
    """The November register lists the three batches by the time their results arrived: FS01-P01
    confirmed by 王科员 within its due date (3 working days taken), its dispute and the bank's answer;
    FS01-R02 and FS02-P01 unconfirmed past their due dates on 2026-12-03 (late); a sheet's production
    and its filing with finance show once they happen. December's register is empty."""
    engine, jr = seeded
    cal = load_calendar(ROOT / "conf" / "calendar")
    today = datetime.date(2026, 12, 3)
    with engine.begin() as conn:
        sheets.ensure_sheet(conn, jr, seal, "FS01-P01", AT)
        conn.execute(update(result_sheets).where(result_sheets.c.batch_no == "FS01-P01").values(
            filed_at="2026-12-02T10:00:00+08:00", filed_by="财务股张会计"))
        reg = register.register(conn, 2026, 11, today=today, calendar=cal)
        assert register.register(conn, 2026, 12, today=today)["batches"] == []
    rows = {r["batch_no"]: r for r in reg["batches"]}
    assert list(rows) == ["FS01-P01", "FS02-P01", "FS01-R02"]
    p = rows["FS01-P01"]
    assert (p["results_received_at"], p["sheet_produced_at"], p["confirmed_by"], p["within_deadline"],
            p["working_days_taken"]) == ("2026-11-20T10:00:00+08:00", AT, "王科员", True, 2)
    assert (p["filed_at"], p["filed_by"]) == ("2026-12-02T10:00:00+08:00", "财务股张会计")
    assert [(d["dispute_no"], d["state"], d["seqs"]) for d in p["disputes"]] == [("FS01-P01-D01", "ACCEPTED", [5])]
    assert rows["FS01-R02"]["within_deadline"] is False and rows["FS01-R02"]["sheet_produced_at"] is None
    assert rows["FS02-P01"]["within_deadline"] is False and rows["FS02-P01"]["confirmed_by"] is None
    assert register.register(conn=engine.connect(), year=2026, month=11, today=datetime.date(2026, 11, 26)
                             )["batches"][2]["within_deadline"] is None    # not due yet: pending
    text = "\n".join(register.lines(reg))
    assert "FS01-P01-D01" in text and "LATE" in text and "财务股张会计" in text


@pytest.fixture
def commands(reactor, seeded, tmp_path):
    engine, jr = seeded
    clock = task.Clock()
    clock.advance(paper_seed.secs(2026, 12, 3, 9))
    database = dbmod.Database(reactor, engine)
    database.start()
    cal = load_calendar(ROOT / "conf" / "calendar")
    gateway = SimpleNamespace(flows={paper_seed.BANK: None}, tickers={}, core=None,
                              cfg=SimpleNamespace(calendar=cal))
    yield Commands(clock, database, jr, gateway)
    database.stop()


CALLER = Caller("unix", "uid=1000,gid=1000")


@pytest_twisted.ensureDeferred
async def test_rpc_batch_register_answers_and_is_journaled(commands, seeded):
    """batch.register answers the month's register (JSON-safe) and journals the call with its caller;
    a bad month, an unknown bank or an unknown parameter is refused naming the field, journaling nothing."""
    engine, _ = seeded
    assert "batch.register" in commands.methods()
    r = await commands.call("batch.register", {"year": 2026, "month": 11, "bank_id": paper_seed.BANK}, CALLER)
    json.dumps(r)
    assert [b["batch_no"] for b in r["batches"]] == ["FS01-P01", "FS02-P01", "FS01-R02"]
    assert r["batches"][0]["working_days_taken"] == 2 and r["as_of"] == "2026-12-03"
    with engine.connect() as conn:
        last = conn.execute(select(journal).order_by(journal.c.id.desc()).limit(1)).mappings().one()
        n = conn.execute(select(func.count()).select_from(journal)).scalar_one()
    assert (last["tx_code"], last["peer"], last["decoded"]) == (
        "batch.register", "unix:uid=1000,gid=1000", f"batch.register 2026-11 bank {paper_seed.BANK}")
    for params, field in (({"year": 2026, "month": 13}, "month"), ({"year": 2026, "month": 11, "bank_id": "X"},
                                                                   "bank_id"),
                          ({"year": 2026, "month": 11, "day": 1}, "day"), ({"month": 11}, "year")):
        with pytest.raises(RpcError) as e:
            await commands.call("batch.register", params, CALLER)
        assert (e.value.code, e.value.field) == (INVALID_PARAMS, field)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(journal)).scalar_one() == n


def test_an_iso20022_batch_sheet_names_the_pain002_it_was_settled_by_and_its_sm3(seeded, seal, tmp_path):
    """An iso20022 batch has no result file: its `result_ref` is the journal id of the pain.002 that
    settled it ("parts:<id>" when sent as several messages). The sheet names that message and its
    journal entry, and prints the SM3 of the pain.002 as received, not of another entry's payload."""
    engine, jr = seeded
    pain002 = b"<?xml version='1.0'?><Document>a pain.002 as the bank sent it</Document>"
    with engine.begin() as conn:
        decoy = jr.append(conn, Entry("event", "gateway", "daemon", "results", "results applied",
                                      payload=b"not the report", batch_no="FS02-P01"), AT)
        jid = jr.append(conn, Entry("in", "ISOB", "https", "pain.002.001.03", "payment status report",
                                    payload=pain002, batch_no="FS02-P01", verified="ok xmldsig"), AT)
        assert decoy != jid
        conn.execute(update(batches).where(batches.c.batch_no == "FS02-P01").values(
            result_ref=f"parts:{jid}", result_sm3=None))
        d = sheets.sheet_data(conn, "FS02-P01")
        data = sheets.render_sheet(d, fingerprint=seal.fingerprint, signer_id="GW", produced_at=AT)
    assert d["result_sm3"] == sm.sm3_hex(pain002)
    text = pdf_text(data, tmp_path)
    for want in ("pain.002.001.03", f"journal #{jid}", sm.sm3_hex(pain002), "ok xmldsig"):
        assert want in " ".join(text.split()), want
