"""A batch over the bank's per-message limits goes out as several pain.001 messages
(iso20022.md: MsgId {BatchNo}-{part:03d}, each with its own GrpHdr totals); one that fits is
one message with MsgId = BatchNo. Each part is a whole, valid, signed document."""

from __future__ import annotations

import contextlib
import datetime
import io
import tempfile

import pytest
import pytest_twisted

from protocols import iso20022 as I
from protocols import xmldsig as D
from tests.test_xmldsig import make_identity

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def gateway():
    return make_identity("gateway", passphrase=None)


def header(n: int, total: int) -> I.PaymentInitiation:
    return I.PaymentInitiation("O1-P01", "2026-05-30T10:00:00+08:00", n, total, "长丰县财政局", "补贴专户",
                               "3400123", None, "ICBK", "2026-06-01", "O1-P01/PAY")


def transfers(n: int) -> list[I.CreditTransfer]:
    return [I.CreditTransfer(f"O1-P01-{i}", f"O1-{i}", 100 + i, "张三" * (1 + i % 5), f"6222{i:012d}", "工商银行",
                             None, "耕地补贴") for i in range(1, n + 1)]


def write(n: int, gateway, **limits) -> tuple[list[I.Part], dict[str, bytes]]:
    docs: dict[str, io.BytesIO] = {}

    @contextlib.contextmanager
    def open_part(msg_id):
        docs[msg_id] = io.BytesIO()
        yield docs[msg_id]
    ts = transfers(n)
    with tempfile.TemporaryFile() as spool:
        parts = I.write_pain001_parts(open_part, header(n, sum(t.amount_fen for t in ts)), ts, spool=spool,
                                      signer=D.StreamSigner(*gateway), **limits)
    return parts, {k: v.getvalue() for k, v in docs.items()}


def test_fifty_transfers_seven_a_message_are_eight_signed_parts_with_their_own_totals(gateway):
    """50 transfers at 7 a message: parts -001..-008 of 7,7,...,1 transfers, in order, each XSD-valid,
    verified with the pinned certificate, GrpHdr/PmtInf totals its own, PmtInfId {MsgId}/PAY; the
    InstrIds are the batch's (BatchNo-Seq) and together they are the batch's transfers once each."""
    parts, docs = write(50, gateway, max_transfers=7, max_bytes=None)
    assert [p.msg_id for p in parts] == [f"O1-P01-{k:03d}" for k in range(1, 9)]
    assert [p.count for p in parts] == [7] * 7 + [1]
    got = []
    for p in parts:
        doc = docs[p.msg_id]
        I.validate(doc)
        D.verify_bytes(doc, [(gateway[1], None)], NOW)
        h, it = I.read_pain001(doc)
        lines = list(it)
        assert (h.msg_id, h.pmt_inf_id, h.nb_of_txs, h.ctrl_sum_fen) == (p.msg_id, f"{p.msg_id}/PAY", p.count,
                                                                         p.amount_fen)
        assert p.amount_fen == sum(t.amount_fen for t in lines) and p.size == len(doc)
        got.extend(lines)
    assert got == transfers(50)


def test_a_batch_that_fits_is_one_message_named_by_its_batch(gateway):
    """At or under both limits, one message with MsgId = BatchNo (the unsplit form)."""
    parts, docs = write(7, gateway, max_transfers=7, max_bytes=10 ** 6)
    assert [(p.msg_id, p.count) for p in parts] == [("O1-P01", 7)]
    assert I.read_pain001(docs["O1-P01"])[0].msg_id == "O1-P01"


def test_the_byte_cap_splits_so_that_no_message_is_larger(gateway):
    """max_bytes 6,000: every part (signature included) is at most 6,000 bytes, the parts together
    hold the 40 transfers, and a cap too small for one transfer is refused naming it."""
    parts, docs = write(40, gateway, max_transfers=None, max_bytes=6000)
    assert len(parts) > 2
    assert all(len(docs[p.msg_id]) <= 6000 for p in parts), [len(d) for d in docs.values()]
    assert max(len(d) for d in docs.values()) > 5000    # the cap is used, not a fixed small count
    assert sum(p.count for p in parts) == 40
    with pytest.raises(I.Iso20022Error) as exc:
        write(3, gateway, max_transfers=None, max_bytes=2000)
    assert exc.value.element == "max_message_bytes"
    (one,) = write(1, gateway, max_transfers=None, max_bytes=None)[0]
    with pytest.raises(I.Iso20022Error) as exc:
        write(1, gateway, max_transfers=None, max_bytes=one.size - 1)
    assert exc.value.element == "CdtTrfTxInf[1]"


@pytest.mark.loopback
@pytest.mark.parametrize("case", ["all_taken", "first_part_rejected"])
@pytest_twisted.ensureDeferred
async def test_fifty_items_seven_a_message_end_to_end_over_loopback_https(reactor, tmp_path, case):
    """The daemon's flow against the ISO bank simulator on loopback HTTPS (mutual TLS), both held
    to 7 transfers a message: the 50-item PAY batch goes out as 8 signed parts, each taken once
    by the bank (which refuses a larger message), the batch DONE once every part's pain.002 is in,
    every item's result (paid and failed, from all parts) applied and pushed to the core, nothing
    credited twice; the journal keeps each part's document under its own MsgId; the batch row
    names its digest's algorithm (SHA-256) and its results as the parts' pain.002. When the bank
    rejects the first part whole (AM04) and pays the others, the batch is still DONE (not
    rejected: that would free paid items for another batch): part 1's 7 items are FAILED with
    AM04 and the rest carry the bank's own results."""
    from simulators import datagen, harness
    from simulators.isobank import install as isoinstall
    from tests.support import InProcess
    order = datagen.OrderSpec(
        order_no="ISOS0001", bank_id=isoinstall.ISO_BANK_ID, count=50, seed=11,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.2}, corrupt=None)
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [order], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0, max_transfers_per_message=7)
    if case == "first_part_rejected":
        bank.reject_next_payment("AM04")
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1, iso_extra="max_transfers_per_message = 7")
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    try:
        async def reported():
            return len(await sims.core.results("ISOS0001")) == 50
        await ip.until(reported, 60, "all 50 results at the core")
        batches = await ip.query("SELECT batch_no, state, file_digest_alg, result_ref FROM batches "
                                 "WHERE order_no = 'ISOS0001'")
        items = await ip.query("SELECT status, count(*) AS n FROM items WHERE order_no = 'ISOS0001' "
                               "GROUP BY status ORDER BY status")
        sent = await ip.query("SELECT msg_id FROM journal WHERE direction = 'out' AND tx_code = 'pain.001.001.10' "
                              "ORDER BY id")
        core = await sims.core.results("ISOS0001")
        posts = [r for r in bank.requests() if r[:2] == ("POST", "/payments")]
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    parts = [f"ISOS0001-P01-{k:03d}" for k in range(1, 9)]
    # the parts' manifest digested by SHA-256; its results referenced by the last part's pain.002
    assert [(b["batch_no"], b["state"], b["file_digest_alg"]) for b in batches] == [("ISOS0001-P01", "DONE", "SHA-256")]
    assert batches[0]["result_ref"].startswith("parts:")
    assert [r["msg_id"] for r in sent][:8] == parts
    assert all(r[2] in (200, 202) for r in posts), posts
    assert [bank.payments_received(m) for m in parts] == [1] * 8
    assert bank.payments_received("ISOS0001-P01") == 0
    assert bank.double_credits() == []
    failed = sorted(s for s, r in core.items() if r["status"] == "FAILED")
    assert failed and len(failed) < 50
    am04 = sorted(s for s, r in core.items() if r["reason_code"] == "AM04")
    assert am04 == (list(range(1, 8)) if case == "first_part_rejected" else [])
    assert {r["status"] for r in core.values()} == {"PAID", "FAILED"}
    assert items == [{"status": "FAILED", "n": len(failed)}, {"status": "PAID", "n": 50 - len(failed)}]
    assert len(bank.credits()) == 50 - len(failed)


@pytest_twisted.ensureDeferred
async def test_the_bank_refuses_a_message_over_its_limit(reactor):
    """The simulator holds a bank's limit: an 8-transfer pain.001 to a bank of 7 a message is
    refused whole (400 FF01 naming NbOfTxs), nothing recorded; 7 are taken."""
    from simulators.isobank.bank import IsoBankSimulator
    bank_id = make_identity("bank", passphrase=None)
    gw = make_identity("gateway", passphrase=None)
    sim = IsoBankSimulator(reactor, bank_key_pem=bank_id[0], bank_cert_pem=bank_id[1], gateway_certs=[gw[1]],
                           holding_account="3400123", holding_name="补贴专户", max_transfers_per_message=7)

    def doc(n: int, msg: str) -> bytes:
        out = io.BytesIO()
        ts = transfers(n)
        h = I.PaymentInitiation(msg, "2026-05-30T10:00:00+08:00", n, sum(t.amount_fen for t in ts), "长丰县财政局",
                                "补贴专户", "3400123", None, "ICBK", "2026-06-01", f"{msg}/PAY")
        I.write_pain001(out, h, [I.CreditTransfer(**{**t.__dict__, "instr_id": f"{msg}-{i}"})
                                 for i, t in enumerate(ts, 1)], D.StreamSigner(*gw))
        return out.getvalue()
    status, answer = await sim.post_payments(doc(8, "B8"))
    assert status == 400 and answer["error"] == "FF01" and "NbOfTxs" in answer["message"]
    assert sim.payments_received("B8") == 0
    status, answer = await sim.post_payments(doc(7, "B7"))
    assert status == 202
    await sim.settle()
    await sim.stop()
