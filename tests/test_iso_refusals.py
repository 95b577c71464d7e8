"""What the iso20022 bank sends that must not be believed: refused, journaled, alarmed, nothing applied.

The daemon's service runs in the test's reactor against the real ISO bank
simulator over loopback HTTPS with mutual TLS; the flow of the ISO bank is
ticked until the bank has answered. In each case the pain.002 reaches the
gateway but must not be used: a document altered after signing, one signed by
a key whose certificate is not the pinned one, and one signed with a pinned
certificate that has expired. The journal keeps the document marked failed, one
critical alarm names it, and the batch's status is asked again (the same pain.001
re-POSTed): the bank serves its pain.002 again. A good copy (the alteration was in
transit) completes the batch; a copy signed by the same wrong key is the same
document, the same alarm, and the batch stays ACCEPTED with its items SENT.
"""

from __future__ import annotations

import datetime

import pytest
import pytest_twisted

from simulators import datagen, harness
from simulators.isobank import install as isoinstall
from tests.support import InProcess

pytestmark = [pytest.mark.loopback]


def _order() -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no="ISOR0001", bank_id=isoinstall.ISO_BANK_ID, count=6, seed=9,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={}, corrupt=None)


def _tamper(doc: str) -> str:
    """Change one paid transfer's status to a failure after the bank signed it."""
    return doc.replace("<TxSts>ACSC</TxSts>", "<TxSts>RJCT</TxSts>", 1)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("case", ["tampered", "unpinned_signer", "expired_signer"])
async def test_a_bad_report_is_refused_journaled_and_not_applied(reactor, tmp_path, case):
    """A pain.002 that fails its signature check, or is signed by an unpinned or expired certificate,
    is journaled verified=failed and alarmed once; the status is asked again and only a good copy
    is applied: tampered in transit, the batch completes; a wrong signer, nothing reaches the core."""
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [_order()], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    if case == "unpinned_signer":
        # The bank signs with a key of its own CA whose certificate we never pinned.
        key = isoinstall._key()
        ca_key = isoinstall._key()
        pki.bank_key_pem = isoinstall._plain_key(key)
        pki.bank_cert_pem = isoinstall._pem(isoinstall._cert("Someone else", key, "Other CA", ca_key))
    elif case == "expired_signer":
        # The pinned certificate itself has expired: re-issue it (same name, the pinned file) expired.
        key = isoinstall._key()
        old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
        cert = isoinstall._pem(isoinstall._cert("Demo ISO Bank signing", key, "Demo Bank CA", key,
                                                days=30, now=old))
        pki.bank_key_pem = isoinstall._plain_key(key)
        pki.bank_cert_pem = cert
        (pki.dir / "bank_cert.pem").write_bytes(cert)
    bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0)
    if case == "tampered":
        bank.mangle_next_report(_tamper)
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1)
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    try:
        async def alarmed():
            return await ip.query("SELECT * FROM alarms WHERE kind = 'report-refused'")
        alarms = await ip.until(alarmed, 30, "the report refused")
        if case == "tampered":
            async def done():
                return (await ip.query("SELECT state FROM batches WHERE order_no = 'ISOR0001'")) == \
                    [{"state": "DONE"}]
            await ip.until(done, 30, "the batch resolved by asking again")
        for _ in range(5):          # more passes change nothing
            await ip.flow.tick()
        alarms = await ip.query("SELECT * FROM alarms WHERE kind = 'report-refused'")
        asked = bank.payments_received("ISOR0001-P01"), [
            r for r in bank.requests() if r[:2] == ("POST", "/payments")]
        batches = await ip.query("SELECT state FROM batches WHERE order_no = 'ISOR0001'")
        items = await ip.query("SELECT status, count(*) AS n FROM items WHERE order_no = 'ISOR0001' "
                               "GROUP BY status")
        refused = await ip.query("SELECT verified, tx_code FROM journal WHERE direction = 'in' "
                                 "AND verified LIKE 'failed%'")
        kept = await ip.query("SELECT count(*) AS n FROM bank_reports")
        core = await sims.core.results("ISOR0001")
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    assert len(alarms) == 1, alarms          # one episode, however often the same document comes
    assert alarms[0]["severity"] == "critical" and "pain.002" in alarms[0]["message"]
    assert any(r["tx_code"].startswith("pain.002") for r in refused)
    why = " ".join(r["verified"] for r in refused).lower()
    assert {"tampered": "does not verify", "unpinned_signer": "pinned", "expired_signer": "expired"}[case] in why, why
    taken, posts = asked
    assert taken == 1 and len(posts) >= 2        # asked again with the same bytes, never paid twice
    if case == "tampered":
        assert batches == [{"state": "DONE"}]
        assert items == [{"status": "PAID", "n": 6}]
        assert kept == [{"n": 1}]
    else:
        assert len(posts) <= 1 + 3               # asked again a bounded number of times
        assert batches == [{"state": "ACCEPTED"}]
        assert items == [{"status": "SENT", "n": 6}]
        assert kept == [{"n": 0}]
        assert core == {}
