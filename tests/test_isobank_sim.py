"""The `iso20022` bank simulator over real mutual TLS on loopback, driven by adapters/https.py.

Documents are built with protocols.iso20022 and signed with protocols.xmldsig, as the
gateway will; every report the bank gives is checked to validate against its XSD and
to verify against the bank's pinned certificate. Business time is a task.Clock set to
2026-11-28 10:00 China time; sockets and threads run on the real reactor.
"""

from __future__ import annotations

import io
import json
from datetime import date, datetime

import pytest
import pytest_twisted
from twisted.internet import ssl, task
from twisted.web import client as web_client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from adapters.https import HttpsBankClient, HttpsError
from protocols import iso20022 as iso
from protocols import xmldsig
from protocols.cnbank_envelope import CN_TZ
from simulators.isobank.bank import IsoBankSimulator
from simulators.outcomes import account_failing_with
from tests import tlsfixtures

pytestmark = pytest.mark.loopback

HOLDING = "6222020000000001"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=CN_TZ)
PAID_ACCT = "6228480000000123457"
CLOSED_ACCT = account_failing_with("622848000000", "R004")     # -> AC04


@pytest.fixture(scope="module")
def pki():
    return tlsfixtures.make_pki()


class _Bank:
    """A simulator listening on loopback, with its clock and the URL to reach it."""

    def __init__(self, reactor, pki, server_cert=None, **kw):
        self.clock = task.Clock()
        self.clock.advance(T0.timestamp())
        self.sim = IsoBankSimulator(reactor, bank_key_pem=pki.bank_sig.key_pem,
                                    bank_cert_pem=pki.bank_sig.cert_pem,
                                    gateway_certs=[pki.gateway_sig.cert_pem],
                                    holding_account=HOLDING, holding_name="市财政局补贴专户",
                                    clock=self.clock, **kw)
        cert = server_cert or pki.server
        self.port = self.sim.listen_https(0, server_key_pem=cert.key_pem,
                                          server_cert_pem=cert.cert_pem, ca_pem=pki.ca.cert_pem)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}"


@pytest.fixture
def make_bank(reactor, pki):
    banks = []

    def make(**kw):
        b = _Bank(reactor, pki, **kw)
        banks.append(b)
        return b
    yield make
    for b in banks:
        pytest_twisted.blockon(b.sim.stop())


@pytest.fixture
def make_client(reactor, pki):
    clients = []

    def make(url, *, cert=None, **kw):
        cert = cert or pki.client
        c = HttpsBankClient(reactor, url, ca_pem=pki.ca.cert_pem, client_cert_pem=cert.cert_pem,
                            client_key_pem=cert.key_pem, server_name="bank.test", **kw)
        clients.append(c)
        return c
    yield make
    for c in clients:
        pytest_twisted.blockon(c.close())


@pytest.fixture
def bank(make_bank):
    return make_bank()


@pytest.fixture
def gw(bank, make_client):
    return make_client(bank.url)


def pain001(pki, msg_id: str, kind: str, lines: list[tuple[str, str, int]], *, sign=True,
            ctrl_sum_off: int = 0, debtor: str = HOLDING) -> bytes:
    """A pain.001 of *kind* with (end_to_end_id, account, fen) lines, signed by the gateway."""
    transfers = [iso.CreditTransfer(instr_id=f"{msg_id}-{i}", end_to_end_id=e2e, amount_fen=fen,
                                    creditor_name="张三", creditor_account=acct,
                                    creditor_agent_name=None, creditor_id_number=None,
                                    remittance="惠民补贴")
                 for i, (e2e, acct, fen) in enumerate(lines, 1)]
    total = sum(t.amount_fen for t in transfers)
    header = iso.PaymentInitiation(
        msg_id=msg_id, created_at=T0.isoformat(), nb_of_txs=len(transfers),
        ctrl_sum_fen=total + ctrl_sum_off, initiating_party="市财政局", debtor_name="市财政局补贴专户",
        debtor_account=debtor, debtor_agent_bic=None, debtor_agent_id="ISOBANK",
        requested_date="2026-11-28", pmt_inf_id=f"{msg_id}/{kind}")
    out = io.BytesIO()
    try:
        iso.write_pain001(out, header, transfers)
    except iso.Iso20022Error:
        assert ctrl_sum_off, "only a test that asks for a wrong CtrlSum may write one"
    doc = out.getvalue()
    return xmldsig.sign_bytes(doc, pki.gateway_sig.key_pem, pki.gateway_sig.cert_pem) if sign else doc


def checked(pki, report: dict) -> bytes:
    """The report's document after proving it XSD-valid, of its stated type, and signed by the bank."""
    doc = report.document
    iso.validate(doc, report.type)
    assert iso.message_type(doc) == report.type
    now = T0.replace(tzinfo=CN_TZ)
    assert xmldsig.verify_bytes(doc, [(pki.bank_sig.cert_pem, None)], now) == pki.bank_sig.cert_pem
    return doc


def pain002(pki, report: dict):
    assert report.type == iso.PAIN002
    header, statuses = iso.read_pain002(checked(pki, report))
    return header, list(statuses)


@pytest_twisted.ensureDeferred
async def test_a_payment_is_taken_once_and_answered_by_a_signed_pain002(pki, bank, gw):
    """202 then, for the same bytes, 200 with the same body and no second payment; the
    result pain.002 validates, verifies against the bank's certificate and says PART:
    the good account ACSC with a bank serial, the closed one RJCT AC04."""
    doc = pain001(pki, "B20261128001", "PAY", [("FS1-1", PAID_ACCT, 12345), ("FS1-2", CLOSED_ACCT, 500)])
    first = await gw.post_payment(doc)
    assert first == (202, {"msg_id": "B20261128001", "status": "RCVD"})
    assert await gw.post_payment(doc) == (200, first[1])
    await bank.sim.settle()
    assert bank.sim.payments_received("B20261128001") == 1
    reports, nxt = await gw.reports(None)
    assert [r.cursor for r in reports] == ["1"] and nxt == "1"
    header, statuses = pain002(pki, reports[0])
    assert (header.orig_msg_id, header.group_status, header.orig_pmt_inf_id) == \
        ("B20261128001", "PART", "B20261128001/PAY")
    ok, bad = statuses
    assert (ok.orig_end_to_end_id, ok.status, ok.amount_fen) == ("FS1-1", "ACSC", 12345)
    assert ok.bank_ref
    assert (bad.orig_end_to_end_id, bad.status, bad.reason_code) == ("FS1-2", "RJCT", "AC04")
    credits = bank.sim.credits()
    assert [(c["end_to_end_id"], c["amount"], c["serial"]) for c in credits] == \
        [("FS1-1", 12345, ok.bank_ref)]
    assert bank.sim.double_credits() == []
    assert await gw.reports(nxt) == ([], "1")
    assert bank.sim.requests() == [("POST", "/payments", 202), ("POST", "/payments", 200),
                                   ("GET", "/reports", 200), ("GET", "/reports", 200)]


@pytest_twisted.ensureDeferred
async def test_the_same_msg_id_with_other_content_is_409_du01(pki, bank, gw):
    """A second pain.001 under a MsgId already taken, with different bytes, is answered 409
    DU01 and pays nothing more."""
    await gw.post_payment(pain001(pki, "B2", "PAY", [("FS2-1", PAID_ACCT, 100)]))
    status, answer = await gw.post_payment(pain001(pki, "B2", "PAY", [("FS2-1", PAID_ACCT, 200)]))
    assert (status, answer["error"]) == (409, "DU01")
    await bank.sim.settle()
    assert bank.sim.payments_received("B2") == 1
    assert [c["amount"] for c in bank.sim.credits()] == [100]


@implementer(IPolicyForHTTPS)
class _NoClientCertificate:
    def __init__(self, ca_pem: bytes):
        self.options = ssl.optionsForClientTLS("bank.test", trustRoot=ssl.Certificate.loadPEM(ca_pem))

    def creatorForNetloc(self, hostname, port):  # noqa: N802
        return self.options


@pytest_twisted.ensureDeferred
async def test_a_client_without_certificate_is_refused_at_the_handshake(reactor, pki, bank, gw):
    """A TLS client that presents no certificate gets no HTTP answer (HttpsError) and the
    bank records no request and no payment."""
    gw.agent = web_client.Agent(reactor, contextFactory=_NoClientCertificate(pki.ca.cert_pem),
                                pool=gw.pool)
    with pytest.raises(HttpsError) as e:
        await gw.post_payment(pain001(pki, "B3", "PAY", [("FS3-1", PAID_ACCT, 100)]))
    assert e.value.status is None
    assert bank.sim.requests() == [] and bank.sim.payments_received("B3") == 0


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_from_another_ca_is_refused(pki, bank, make_client):
    """A client certificate for the right name but issued by another CA is refused at the
    handshake; nothing is recorded."""
    rogue = tlsfixtures.issue(tlsfixtures.make_ca("Rogue CA"), "gateway.test", client=True)
    with pytest.raises(HttpsError):
        await make_client(bank.url, cert=rogue).reports(None)
    assert bank.sim.requests() == []


@pytest_twisted.ensureDeferred
async def test_a_server_certificate_for_another_host_is_refused_by_our_client(pki, make_bank, make_client):
    """A bank whose certificate (from the right CA) names another host is not talked to:
    the client raises before sending, and the bank records nothing."""
    other = tlsfixtures.issue(pki.ca, "other.test", dns=("other.test",), server=True)
    b = make_bank(server_cert=other)
    with pytest.raises(HttpsError):
        await make_client(b.url).post_payment(pain001(pki, "B4", "PAY", [("FS4-1", PAID_ACCT, 1)]))
    assert b.sim.requests() == []


@pytest_twisted.ensureDeferred
async def test_a_tampered_or_unsigned_pain001_is_rejected_ds0b_and_pays_nothing(pki, bank, gw):
    """A signed pain.001 changed after signing (a creditor name), and one not signed at
    all, are taken (202) and answered by a pain.002 RJCT DS0B with no transaction; no
    credit is made."""
    doc = pain001(pki, "B5", "PAY", [("FS5-1", PAID_ACCT, 100)])
    tampered = doc.replace("张三".encode(), "李四".encode())
    assert tampered != doc
    assert (await gw.post_payment(tampered))[0] == 202
    assert (await gw.post_payment(pain001(pki, "B6", "PAY", [("FS6-1", PAID_ACCT, 1)], sign=False)))[0] == 202
    await bank.sim.settle()
    reports, _ = await gw.reports(None)
    assert len(reports) == 2
    for r in reports:
        header, statuses = pain002(pki, r)
        assert (header.group_status, header.group_reason, statuses) == ("RJCT", "DS0B", [])
    assert bank.sim.credits() == []


@pytest_twisted.ensureDeferred
async def test_a_wrong_control_sum_is_rejected_am10(pki, bank, gw):
    """A signed pain.001 whose GrpHdr CtrlSum is one fen off its transfers is answered
    RJCT AM10 and pays nothing."""
    doc = pain001(pki, "B7", "PAY", [("FS7-1", PAID_ACCT, 100), ("FS7-2", PAID_ACCT, 200)], ctrl_sum_off=1)
    assert (await gw.post_payment(doc))[0] == 202
    await bank.sim.settle()
    (r,), _ = await gw.reports(None)
    header, statuses = pain002(pki, r)
    assert (header.group_status, header.group_reason, statuses) == ("RJCT", "AM10", [])
    assert bank.sim.credits() == []


@pytest_twisted.ensureDeferred
async def test_the_funds_hook_rejects_the_next_payment_am04(pki, bank, gw):
    """reject_next_payment('AM04') makes the next pain.001 RJCT AM04 with nothing paid; the
    one after it is paid."""
    bank.sim.reject_next_payment("AM04")
    await gw.post_payment(pain001(pki, "B8", "PAY", [("FS8-1", PAID_ACCT, 100)]))
    await bank.sim.settle()
    await gw.post_payment(pain001(pki, "B9", "PAY", [("FS8-1", PAID_ACCT, 100)]))
    await bank.sim.settle()
    first, second = (await gw.reports(None))[0]
    assert pain002(pki, first)[0].group_reason == "AM04"
    assert pain002(pki, second)[0].group_status == "ACSC"
    assert [c["msg_id"] for c in bank.sim.credits()] == ["B9"]


@pytest_twisted.ensureDeferred
async def test_an_xsd_invalid_or_malformed_pain001_is_400_naming_the_line(pki, bank, gw):
    """A pain.001 breaking the XSD (PmtMtd XXX) is answered 400 FF01 whose message names the
    line of the fault; a body that is not XML is 400 too; nothing is recorded."""
    doc = pain001(pki, "B10", "PAY", [("FS10-1", PAID_ACCT, 100)], sign=False)
    bad = doc.replace(b"<PmtMtd>TRF</PmtMtd>", b"<PmtMtd>XXX</PmtMtd>")
    line = bad[:bad.index(b"<PmtMtd>")].count(b"\n") + 1
    with pytest.raises(HttpsError) as e:
        await gw.post_payment(bad)
    answer = json.loads(e.value.body)
    assert e.value.status == 400 and answer["error"] == "FF01"
    assert answer["message"].startswith(f"line {line}:") and "PmtMtd" in answer["message"]
    cut = doc[:doc.index(b"<CdtTrfTxInf>") + 20]
    with pytest.raises(HttpsError) as e:
        await gw.post_payment(cut)
    assert e.value.status == 400
    last_line = cut.count(b"\n") + 1
    assert json.loads(e.value.body)["message"].startswith(f"line {last_line}:")
    with pytest.raises(HttpsError) as e:
        await gw.post_payment(b"not xml at all")
    assert e.value.status == 400 and json.loads(e.value.body)["error"] == "FF01"
    assert bank.sim.payments_received("B10") == 0
    assert (await gw.reports(None))[0] == []


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_cap_is_413(pki, make_bank, make_client):
    """A pain.001 larger than the simulator's max_body is refused 413 (HttpsError) and not
    taken; the client still reads reports afterwards on a fresh connection."""
    b = make_bank(max_body=2000)
    gw = make_client(b.url)
    big = pain001(pki, "B11", "PAY", [(f"FS11-{i}", PAID_ACCT, 100) for i in range(1, 40)])
    assert len(big) > 2000
    with pytest.raises(HttpsError) as e:
        await gw.post_payment(big)
    assert e.value.status == 413
    assert b.sim.requests() == [("POST", "/payments", 413)]
    assert b.sim.payments_received("B11") == 0
    assert await gw.reports(None) == ([], "0")


@pytest_twisted.ensureDeferred
async def test_refund_is_answered_acsc_and_a_camt054_debit(pki, bank, gw):
    """A REFUND pain.001 (one transfer, EndToEndId = RefundNo, back to the original account)
    gets a pain.002 ACSC with the refund serial and a camt.054 DBIT entry on the holding
    account naming the RefundNo."""
    await gw.post_payment(pain001(pki, "RF20261128001", "REFUND",
                                  [("RF20261128001", "6212260000000009", 700)]))
    await bank.sim.settle()
    (p2, n), _ = await gw.reports(None)
    header, (st,) = pain002(pki, p2)
    assert (header.group_status, st.status, st.orig_end_to_end_id) == ("ACSC", "ACSC", "RF20261128001")
    assert n.type == iso.CAMT054
    note = iso.read_camt054(checked(pki, n))
    (entry,) = note.entries
    assert note.account == HOLDING
    assert (entry.credit, entry.amount_fen, entry.end_to_end_id, entry.bank_ref) == \
        (False, 700, "RF20261128001", st.bank_ref)


@pytest_twisted.ensureDeferred
async def test_return_item_gives_a_camt054_credit_once(pki, bank, gw):
    """return_item on a credited transfer puts a camt.054 CRDT entry with its EndToEndId,
    InstrId and RtrInf reason; returning it again, or a transfer never credited, is
    refused. After the return a RETRY may credit it again without a double credit, while
    paying it twice without a return shows in double_credits()."""
    await gw.post_payment(pain001(pki, "B12", "PAY", [("FS12-1", PAID_ACCT, 900),
                                                      ("FS12-2", CLOSED_ACCT, 50)]))
    await bank.sim.settle()
    await bank.sim.return_item("FS12-1", "AC04")
    with pytest.raises(ValueError, match="FS12-1"):
        await bank.sim.return_item("FS12-1")
    with pytest.raises(ValueError, match="FS12-2"):
        await bank.sim.return_item("FS12-2")
    reports, _ = await gw.reports("1")
    (r,) = reports
    (entry,) = iso.read_camt054(checked(pki, r)).entries
    assert (entry.credit, entry.amount_fen, entry.end_to_end_id, entry.instr_id, entry.return_reason) == \
        (True, 900, "FS12-1", "B12-1", "AC04")
    await gw.post_payment(pain001(pki, "B12-R02", "RETRY", [("FS12-1", PAID_ACCT, 900)]))
    await bank.sim.settle()
    assert len(bank.sim.credits("FS12-1")) == 2 and bank.sim.double_credits() == []
    await gw.post_payment(pain001(pki, "B12-R03", "RETRY", [("FS12-1", PAID_ACCT, 900)]))
    await bank.sim.settle()
    assert bank.sim.double_credits() == ["FS12-1"]


@pytest_twisted.ensureDeferred
async def test_statement_is_a_valid_camt053_whose_balances_add_up(pki, bank, gw):
    """statement(day) puts in the reports a signed, XSD-valid camt.053 for the holding
    account whose entries are the day's payments, refunds and returns and whose closing
    balance is the opening balance moved by them (read_camt053 checks that too)."""
    await gw.post_payment(pain001(pki, "B13", "PAY", [("FS13-1", PAID_ACCT, 1000), ("FS13-2", PAID_ACCT, 234)]))
    await gw.post_payment(pain001(pki, "RF13", "REFUND", [("RF13", "6212260000000009", 66)]))
    await bank.sim.settle()
    await bank.sim.return_item("FS13-2", "AC06")
    await bank.sim.statement(date(2026, 11, 28))
    reports, _ = await gw.reports(None)
    assert reports[-1].type == iso.CAMT053
    s = iso.read_camt053(checked(pki, reports[-1]))
    assert (s.account, s.from_date, s.opening_fen, s.closing_fen) == \
        (HOLDING, "2026-11-28", 0, -1000 - 234 - 66 + 234)
    assert sorted((e.end_to_end_id, e.credit, e.amount_fen) for e in s.entries) == \
        [("FS13-1", False, 1000), ("FS13-2", False, 234), ("FS13-2", True, 234), ("RF13", False, 66)]
    bank.clock.advance(86400)
    await bank.sim.statement(date(2026, 11, 29))
    s2 = iso.read_camt053(checked(pki, (await gw.reports(reports[-1].cursor))[0][0]))
    assert (s2.opening_fen, s2.closing_fen, s2.entries) == (s.closing_fen, s.closing_fen, ())


@pytest_twisted.ensureDeferred
async def test_results_wait_for_the_delay_and_reports_page(pki, make_bank, make_client):
    """With result_delay_s the pain.002 appears only once the clock has moved that far;
    reports page by limit with increasing cursors, and an unknown path is 404."""
    b = make_bank(result_delay_s=30)
    gw = make_client(b.url)
    for n in range(3):
        await gw.post_payment(pain001(pki, f"B14-{n}", "PAY", [(f"FS14-{n}", PAID_ACCT, 10)]))
    await b.sim.settle()
    assert await gw.reports(None) == ([], "0")
    b.clock.advance(29)
    assert await gw.reports(None) == ([], "0")
    b.clock.advance(1)
    page, nxt = await gw.reports(None, limit=2)
    assert [r.cursor for r in page] == ["1", "2"] and nxt == "2"
    page, nxt = await gw.reports(nxt, limit=2)
    assert [r.cursor for r in page] == ["3"] and nxt == "3"
    resp = await gw.agent.request(b"GET", (b.url + "/other").encode(), Headers(), None)
    await web_client.readBody(resp)
    assert resp.code == 404 and b.sim.requests()[-1] == ("GET", "/other", 404)


def test_unknown_payment_kind_is_400(pki, reactor):
    """A PmtInfId that is not {MsgId}/PAY, /RETRY or /REFUND is refused before it is taken."""
    sim = IsoBankSimulator(reactor, bank_key_pem=pki.bank_sig.key_pem, bank_cert_pem=pki.bank_sig.cert_pem,
                           gateway_certs=[pki.gateway_sig.cert_pem], holding_account=HOLDING,
                           holding_name="x")
    doc = pain001(pki, "B15", "BONUS", [("FS15-1", PAID_ACCT, 1)])
    with pytest.raises(iso.Iso20022Error, match="PmtInfId"):
        sim._take(doc)



@pytest_twisted.ensureDeferred
async def test_asked_again_once_processed_the_bank_serves_its_reports_again(pki, bank, gw):
    """The status question (the same bytes re-POSTed) after processing is answered 200 as
    before, pays nothing more, and puts the same signed pain.002 in the feed again under a new
    cursor: what a gateway had to refuse it can learn again."""
    doc = pain001(pki, "B20261128009", "PAY", [("FS9-1", PAID_ACCT, 100)])
    first = await gw.post_payment(doc)
    await bank.sim.settle()
    assert await gw.post_payment(doc) == (200, first[1])
    reports, nxt = await gw.reports(None)
    assert [r.cursor for r in reports] == ["1", "2"] and nxt == "2"
    assert reports[0].document == reports[1].document
    assert pain002(pki, reports[1])[0].orig_msg_id == "B20261128009"
    assert bank.sim.payments_received("B20261128009") == 1 and len(bank.sim.credits("FS9-1")) == 1


@pytest_twisted.ensureDeferred
async def test_the_hostile_hooks_serve_what_they_say(pki, bank, gw):
    """inject_pain002 serves a signed, XSD-valid pain.002 naming any MsgId and OrgnlMsgNmId;
    hostile_next_report("surrogate") travels as the JSON escape of a lone surrogate; pad_pages
    makes pages over a size only when the limit asked is over the threshold."""
    await bank.sim.inject_pain002("NEVER-P01", "pain.001.001.03")
    header, _ = pain002(pki, (await gw.reports(None))[0][0])
    assert (header.orig_msg_id, header.orig_msg_nm_id) == ("NEVER-P01", "pain.001.001.03")
    bank.sim.hostile_next_report("surrogate")
    await gw.post_payment(pain001(pki, "B20261128010", "PAY", [("FS10-1", PAID_ACCT, 100)]))
    await bank.sim.settle()
    reports, _ = await gw.reports("1")
    assert reports[0].document is None and "lone surrogate U+D800" in reports[0].refused
    bank.sim.pad_pages(5000, when_limit_over=1)
    assert len(bank.sim.get_reports(None, 2)["padding"]) == 5000
    assert "padding" not in bank.sim.get_reports(None, 1)
