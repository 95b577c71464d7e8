"""The iso20022 dialect over SFTP, the spec's alternative transport, chosen in the bank file.

The daemon's service runs in the test's reactor against the ISO bank simulator
serving SFTP on loopback (Conch, key authentication, the host key pinned). The
pain.001 is uploaded whole into /in, the bank's signed pain.002 and camt.054
are read from /out in name order; results and a late return are applied as over
HTTPS, and the bank's ledger shows each transfer credited once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from simulators import datagen, harness, sftp_server
from simulators.isobank import install as isoinstall
from tests.support import InProcess

pytestmark = [pytest.mark.loopback]


@pytest_twisted.ensureDeferred
async def test_iso20022_over_sftp_pays_and_takes_a_late_return(reactor, tmp_path):
    """PAY over SFTP: every item gets its result from the pain.002 in /out (one fails with AC01), a
    late return (camt.054 in /out) turns a PAID item FAILED; the journal names the sftp channel."""
    order = datagen.OrderSpec(
        order_no="ISOF0001", bank_id=isoinstall.ISO_BANK_ID, count=8, seed=31,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.2}, corrupt=None)
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [order], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, _https = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0)
    port = bank.listen_sftp(str(tmp_path / "iso-sftp"), authorized_keys=[sftp_server.public_key_line(keys.gw_ssh)],
                            host_key_path=keys.bank_host).getHost().port
    host_line = sftp_server.public_key_line(keys.bank_host + ".pub")
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1, return_poll_s=0.2,
                               sftp=(keys.gw_ssh, host_line))
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    try:
        async def done():
            rows = await ip.query("SELECT state FROM batches WHERE order_no = 'ISOF0001'")
            return rows == [{"state": "DONE"}]
        await ip.until(done, 60, "the batch's results over SFTP")
        per = {r["status"]: r["n"] for r in await ip.query(
            "SELECT status, count(*) AS n FROM items WHERE order_no = 'ISOF0001' GROUP BY status")}
        failed = await ip.query("SELECT seq, reason_code FROM items WHERE status = 'FAILED'")
        paid_seq = (await ip.query("SELECT min(seq) AS s FROM items WHERE status = 'PAID'"))[0]["s"]
        await bank.return_item(f"ISOF0001-{paid_seq}", "AC04")

        async def returned():
            rows = await ip.query("SELECT status, reason_code FROM items WHERE seq = :s", s=paid_seq)
            return rows[0]["status"] == "FAILED"
        await ip.until(returned, 30, "the late return over SFTP")
        channels = await ip.query("SELECT DISTINCT channel FROM journal WHERE peer = :b",
                                  b=isoinstall.ISO_BANK_ID)
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    assert per.get("FAILED") == len(failed) >= 1 and per["PAID"] + per["FAILED"] == 8
    assert all(f["reason_code"] == "AC01" for f in failed)
    assert bank.double_credits() == [] and len(bank.credits()) == per["PAID"]
    assert bank.payments_received("ISOF0001-P01") == 1
    assert "sftp" in {c["channel"] for c in channels} and "https" not in {c["channel"] for c in channels}


def _sftp_install(tmp_path, **bank_file):
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    cfg = harness.write_config(p, keys, harness.Ports(1, 2, 3), token="test-token")
    pki = isoinstall.make_pki(p.keys)
    path = isoinstall.write_bank_file(p.banks, pki, 4, sftp=(keys.gw_ssh, "ssh-ed25519 AAAA"), **bank_file)
    return cfg, path


def test_unsigned_reports_over_sftp_are_refused_at_load_unless_testing_says_so(tmp_path):
    """signature = "none" with transport "sftp" (result files nobody authenticates) stops the load
    naming the file and key; [testing] allow_unsigned_reports = true lets a test installation
    have it; over HTTPS (mutual TLS authenticates the bank) "none" stays allowed."""
    from gateway import config as configmod
    cfg, path = _sftp_install(tmp_path)
    path.write_text(path.read_text().replace('signature = "xmldsig"', 'signature = "none"'))
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(cfg)
    assert any("iso20022.signature" in m and "allow_unsigned_reports" in m for m in e.value.errors), e.value.errors
    path.write_text(path.read_text() + "\n[testing]\nallow_unsigned_reports = true\n")
    loaded = configmod.load(cfg)
    bank = loaded.banks[isoinstall.ISO_BANK_ID]
    assert bank.settings.signature == "none" and bank.settings.allow_unsigned_reports


@pytest_twisted.ensureDeferred
async def test_an_oversized_report_file_is_refused_unread_and_a_rejected_batch_leaves_no_upload(reactor, tmp_path):
    """Over SFTP: a report file over max_document_bytes is refused without being read (journaled,
    one alarm) and passed, the status question brings the bank's copy again and the batch gets
    its result; a batch the bank rejects whole (AM04) leaves no pain.001 behind, neither in the
    bank's /in folder nor in the work folder, like a finished one."""
    order = datagen.OrderSpec(
        order_no="ISOG0001", bank_id=isoinstall.ISO_BANK_ID, count=3, seed=8,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={}, corrupt=None)
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [order], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, _https = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0)
    root = tmp_path / "iso-sftp"
    port = bank.listen_sftp(str(root), authorized_keys=[sftp_server.public_key_line(keys.gw_ssh)],
                            host_key_path=keys.bank_host).getHost().port
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1, sftp=(
        keys.gw_ssh, sftp_server.public_key_line(keys.bank_host + ".pub")), iso_extra="max_document_bytes = 100000")
    harness.migrate(cfg)
    bank.reject_next_payment("AM04")
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    try:
        async def rejected():
            return await ip.query("SELECT batch_no FROM batches WHERE state = 'RJCT'")
        await ip.until(rejected, 60, "the batch rejected whole")
        # Set before the next batch goes out (it is built from the next tick on): its pain.002.
        bank.hostile_next_report("oversized", size=300_000)
        left_after_reject = sorted(x.name for x in (root / "in").iterdir())
        work_after_reject = sorted(x.name for x in Path(ip.flow.adapter.work_dir).iterdir())

        async def done():
            return await ip.query("SELECT batch_no FROM batches WHERE state = 'DONE'")
        await ip.until(done, 60, "the second batch's results after the oversized file")
        alarms = await ip.query("SELECT kind FROM alarms WHERE kind = 'report-refused'")
        refused = await ip.query("SELECT verified FROM journal WHERE peer = :b AND verified LIKE 'failed%'",
                                 b=isoinstall.ISO_BANK_ID)
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    assert "ISOG0001-P01.xml" not in left_after_reject, left_after_reject
    assert not any(n.startswith("ISOG0001-P01") for n in work_after_reject), work_after_reject
    assert alarms == [{"kind": "report-refused"}]
    assert len(refused) == 1 and "over the limit of 100000" in refused[0]["verified"]
    assert bank.payments_received("ISOG0001-P02") == 1
