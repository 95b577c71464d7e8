"""`gatewayctl journal show` as an operator searches the journal, run as the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa

from gateway import config as configmod
from gateway import db as dbmod
from gateway.journal import Entry, Journal
from gateway.models import bank_reports
from simulators import harness

GATEWAYCTL = str(Path(sys.executable).parent / "gatewayctl")
LONG = "明细 " + "x" * 500 + " THE-END"


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    p = harness.Paths(tmp_path_factory.mktemp("jshow") / "gw")
    config = harness.write_config(p, harness.make_keys(p), harness.Ports(18490, 18491, 18492))
    cfg = configmod.load(config)
    dbmod.upgrade(cfg.database_url)
    engine = dbmod.make_engine(cfg.database_url)
    jr = Journal(cfg.journal_archive_dir, key=cfg.journal_auth.key)
    entries = [
        ("2026-03-02T10:00:00+08:00", Entry("out", "isobank", "https", "pain.001.001.09", "pain.001 B1 3 items",
                                             payload=b"<x/>", msg_id="B1", order_no="O1", batch_no="B1")),
        ("2026-03-02T11:00:00+08:00", Entry("in", "isobank", "https", "pain.002.001.10", "pain.002 for B1: ACCP",
                                             payload=b"<y/>", msg_id="R9", verified="ok")),
        ("2026-03-03T09:00:00+08:00", Entry("out", "cnbank-demo", "tcp", "BP01", LONG, payload=b"z",
                                             msg_id="M7", order_no="O2", batch_no="B2")),
        ("2026-03-03T09:01:00+08:00", Entry("in", "cnbank-demo", "tcp", "BP01", "unverified reply: bad sig",
                                             payload=b"w", msg_id="M7", order_no="O2", batch_no="B2",
                                             verified="failed: signature")),
        ("2026-03-04T09:00:00+08:00", Entry("event", "cnbank-demo", "tcp", "HB01", "HB01: connection refused")),
    ]
    ids = []
    for at, e in entries:
        with engine.begin() as conn:
            ids.append(jr.append(conn, e, at))
    with engine.begin() as conn:
        conn.execute(sa.insert(bank_reports).values(bank_id="isobank", cursor="c1", kind="pain.002.001.10",
                                                    msg_id="R9", ref="B1", journal_id=ids[1],
                                                    received_at="2026-03-02T11:00:00+08:00"))
    engine.dispose()
    return config, ids


def ctl(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([GATEWAYCTL, "--config", str(config), *args], capture_output=True, text=True, timeout=60)


def _shown(config, *args) -> list[dict]:
    r = ctl(config, "journal", "show", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_each_filter_selects_what_it_names(inst):
    """--bank, --type (a prefix), --direction, --since/--until, --verified and --id each narrow the
    entries to those they name, oldest first; --json gives one object per line."""
    config, ids = inst
    assert [e["id"] for e in _shown(config)] == ids
    assert [e["id"] for e in _shown(config, "--bank", "cnbank-demo")] == ids[2:]
    assert [e["id"] for e in _shown(config, "--type", "pain.002")] == [ids[1]]
    assert [e["id"] for e in _shown(config, "--direction", "out")] == [ids[0], ids[2]]
    assert [e["id"] for e in _shown(config, "--since", "2026-03-03", "--until", "2026-03-04")] == ids[2:4]
    assert [e["id"] for e in _shown(config, "--verified", "failed")] == [ids[3]]
    assert [e["id"] for e in _shown(config, "--id", str(ids[4]))] == [ids[4]]
    assert [e["id"] for e in _shown(config, "--bank", "cnbank-demo", "--limit", "1")] == [ids[4]]
    assert ctl(config, "journal", "show", "--id", "999999").returncode == 1


def test_a_report_is_tied_to_the_order_and_batch_it_answers(inst):
    """A pain.002 journaled without an order (the report arrives before it is matched) is shown
    with the order and batch of the pain.001 it answers (bank_reports.ref = its MsgId), and is
    found by --order and --batch."""
    config, ids = inst
    by_order = _shown(config, "--order", "O1")
    assert [e["id"] for e in by_order] == ids[:2]
    assert by_order[1]["order_no"] == "O1" and by_order[1]["batch_no"] == "B1" and by_order[1]["tied_by_report"]
    assert [e["id"] for e in _shown(config, "--batch", "B1")] == ids[:2]
    text = ctl(config, "journal", "show", "--type", "pain.002").stdout
    assert "order=~O1 batch=~B1" in text


def test_full_shows_the_whole_decoded_entry(inst):
    """Without --full a long decoded view is cut at 300 characters and says so; with --full (and
    in --json) it is whole."""
    config, ids = inst
    cut = ctl(config, "journal", "show", "--id", str(ids[2])).stdout
    assert "THE-END" not in cut and "--full" in cut
    assert "THE-END" in ctl(config, "journal", "show", "--id", str(ids[2]), "--full").stdout
    assert _shown(config, "--id", str(ids[2]))[0]["decoded"].endswith("THE-END")


def test_no_traceback_on_an_unmigrated_database(tmp_path):
    """Every database command on a database without the schema says to migrate, exit 2, no traceback."""
    p = harness.Paths(tmp_path / "gw")
    config = harness.write_config(p, harness.make_keys(p), harness.Ports(18493, 18494, 18495))
    for args in (["journal", "show"], ["orders"], ["alarms"], ["journal", "head"]):
        r = ctl(config, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "db upgrade" in r.stderr or "migrat" in r.stderr, (args, r.stderr)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_the_gateway_can_show_the_batch_file_it_sent(reactor, tmp_path):
    """A cnbank batch file goes out (the flow ticked in process against the loopback bank); its
    upload is journaled as SM4 ciphertext, and beside it the file's key||iv under the gateway's
    own SM2 key. `journal show --id N --decrypt --reason R` prints the file's lines with ID and
    account numbers masked, and journals who opened it and why first; without --reason it
    refuses, and the SM2-encrypted entry alone (FILEKEY) cannot be opened by the bank's key."""
    from twisted.internet import threads

    from tests.support import in_process, spec
    inst = await in_process(reactor, tmp_path, [spec("DEC0001", 4)])
    try:
        async def sent():
            rows = await inst.query("SELECT id, batch_no FROM journal WHERE tx_code = 'PUT' AND decoded NOT LIKE '%.sig%'")
            return rows or None
        rows = await inst.until(sent, 60, "the batch file uploaded")
        keys = await inst.query("SELECT id FROM journal WHERE tx_code = 'FILEKEY' AND batch_no = :b",
                                b=rows[0]["batch_no"])
        assert len(keys) == 1
        items = await inst.query("SELECT seq, id_number, account_no FROM items WHERE order_no = 'DEC0001' "
                                 "ORDER BY seq")
    finally:
        await inst.close()
    cfg = inst.p.conf / "gateway.toml"
    n = str(rows[0]["id"])
    refused = await threads.deferToThread(ctl, cfg, "journal", "show", "--id", n, "--decrypt")
    assert refused.returncode == 2 and "--reason" in refused.stderr
    r = await threads.deferToThread(ctl, cfg, "journal", "show", "--id", n, "--decrypt", "--reason",
                                    "audit 2026-7", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["batch_no"] == rows[0]["batch_no"] and shown["total_count"] == 4
    assert [x["seq"] for x in shown["lines"]] == [i["seq"] for i in items]
    for x, i in zip(shown["lines"], items):
        assert x["id_no"] == i["id_number"][:4] + "*" * (len(i["id_number"]) - 8) + i["id_number"][-4:]
        assert i["id_number"] not in r.stdout and i["account_no"] not in r.stdout
    opened = [e for e in _shown(cfg, "--type", "file.decrypt")]
    assert len(opened) == 1 and "audit 2026-7" in opened[0]["decoded"] and opened[0]["batch_no"] == rows[0]["batch_no"]
    sig = await threads.deferToThread(ctl, cfg, "journal", "show", "--id", str(keys[0]["id"]), "--decrypt",
                                      "--reason", "x")
    assert sig.returncode == 1 and "not the upload of a batch file" in sig.stderr
    assert ctl(cfg, "journal", "verify").returncode == 0
