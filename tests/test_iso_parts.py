"""A batch over the bank's per-message limits goes out as several pain.001 messages
(iso20022.md: MsgId {BatchNo}-{part:03d}, each with its own GrpHdr totals); one that fits is
one message with MsgId = BatchNo. Each part is a whole, valid, signed document."""

from __future__ import annotations

import contextlib
import datetime
import io
import tempfile

import pytest

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
