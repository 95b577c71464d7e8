"""The iso20022 dialect keeps the reactor thread free of work that grows with a document.

A 100,000-transfer pain.002 is some 60 MB. `batch_status` once parsed the batch's whole
pain.002 on the reactor thread on every status tick: at 100k that held the reactor for
longer than the lease's 6 s, so the daemon lost its lease, stood down, came back, parsed
it again and lost it again (bench/two_banks.py --only iso --iso 100000 on SQLite).
"""

from __future__ import annotations

import threading

import pytest
import pytest_twisted

from protocols import iso20022 as I
from protocols import iso_feed


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_pain002_is_read_off_the_reactor_thread_and_not_again_on_each_status_tick(
        reactor, tmp_path, monkeypatch):
    """An order through the daemon's flow against the ISO bank simulator on loopback HTTPS:
    every read of a pain.002 (judging it as it arrives, the batch's status, its results) runs
    on a worker thread, never on the reactor thread; and the pain.002 is read twice in all
    (judged once as it arrives, its lines once for the apply), not once more per status tick:
    the status is decided from what judging it found, kept by its journal id. Fails (a read on
    the reactor thread, three reads) when batch_status parses the document itself again.
    The feed page's document strings are decoded from JSON on a thread too, not on the
    reactor thread that takes the page as it arrives."""
    from simulators import datagen, harness
    from simulators.isobank import install as isoinstall
    from tests.support import InProcess

    reads: list[str] = []
    real = I.read_pain002

    def counted(source):
        reads.append(threading.current_thread().name)
        return real(source)
    monkeypatch.setattr(I, "read_pain002", counted)
    decoded: list[tuple[str, int]] = []     # documents' JSON strings decoded: (thread, bytes)
    real_decode = iso_feed.decode_document

    def decode(raw):
        if len(raw) > 4096:       # a document (cursors and types are short fields)
            decoded.append((threading.current_thread().name, len(raw)))
        return real_decode(raw)
    monkeypatch.setattr(iso_feed, "decode_document", decode)

    order = datagen.OrderSpec(
        order_no="ISOR0001", bank_id=isoinstall.ISO_BANK_ID, count=200, seed=12,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.05}, corrupt=None)
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [order], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0.5)
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1)
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    try:
        async def reported():
            return len(await sims.core.results("ISOR0001")) == 200
        await ip.until(reported, 60, "all 200 results at the core")
        for _ in range(5):        # more ticks: nothing reads the document again
            await ip.flow.tick()
        batches = await ip.query("SELECT state FROM batches WHERE order_no = 'ISOR0001'")
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    assert [b["state"] for b in batches] == ["DONE"]
    reactor_thread = threading.main_thread().name
    assert reactor_thread not in reads, reads
    assert len(reads) == 2, reads
    assert decoded and all(t != reactor_thread for t, _ in decoded), decoded
