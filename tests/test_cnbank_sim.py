"""The cnbank bank simulator over real loopback TCP and SFTP, driven like the gateway drives a bank.

Requests are built with protocols/ (the same envelope and file codecs the
gateway uses), files travel through the gateway's own SFTP client
(adapters/sftp.py) to the simulator's Conch server, and business time is a
task.Clock injected into the bank: processing is advanced by the test, and
`bank.settle()` waits for the threads it started. No sleeps.
"""

from __future__ import annotations

import base64
import io
import os
from datetime import datetime
from types import SimpleNamespace

import pytest
import pytest_twisted
from stdnum.cn import ric
from twisted.internet import defer, protocol, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from adapters.sftp import SFTPClient, SFTPEndpoint
from protocols import cnbank_envelope as env
from protocols import cnbank_files as files
from protocols import sm
from protocols.framing import FrameDecoder, encode_frame
from simulators.cnbank.bank import CnBankSimulator
from simulators.outcomes import account_failing_with, outcome_for_account
from simulators.sftp_server import generate_client_key, generate_host_key

pytestmark = pytest.mark.loopback

BANK_ID = "CNBANK"
GW_ID = "GW3301"
PAYER = "6222020200112233445"
# 2025-03-10 10:00:00 in UTC+8: the bank's (and the test's) business time starts here.
T0 = datetime(2025, 3, 10, 10, 0, 0, tzinfo=env.CN_TZ).timestamp()
DELAY = 10.0
GUARD = 60  # a hung exchange fails the test after this many seconds


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sm2_keys():
    return SimpleNamespace(bank=sm.generate_keypair(), gw=sm.generate_keypair(),
                           stranger=sm.generate_keypair())


@pytest.fixture
def ssh_keys(tmp_path):
    d = tmp_path / "ssh"
    d.mkdir()
    host_line = generate_host_key(str(d / "bank_host"))
    client_line = generate_client_key(str(d / "gw_ssh"))
    return SimpleNamespace(host=str(d / "bank_host"), host_line=host_line,
                           client=str(d / "gw_ssh"), client_line=client_line)


async def _start(reactor, tmp_path, sm2_keys, ssh_keys, clock, **kw):
    bank = CnBankSimulator(
        reactor, data_dir=str(tmp_path / "bank"), bank_key=sm2_keys.bank,
        gateway_key=sm2_keys.gw.public_key, bank_id=BANK_ID, settings=env.EnvelopeSettings(),
        sftp_root=str(tmp_path / "sftp"), processing_delay_s=DELAY, clock=clock, **kw)
    await bank.ready
    tcp = bank.listen_tcp()
    sftp = bank.listen_sftp(authorized_keys=[ssh_keys.client_line], host_key_path=ssh_keys.host)
    return bank, tcp.getHost().port, sftp.getHost().port


@pytest.fixture
def clock():
    c = task.Clock()
    c.advance(T0)
    return c


def _bank_fixture(reactor, tmp_path, sm2_keys, ssh_keys, clock, **kw):
    bank, tcp_port, sftp_port = pytest_twisted.blockon(defer.ensureDeferred(
        _start(reactor, tmp_path, sm2_keys, ssh_keys, clock, **kw)))
    yield Gateway(reactor, bank, tcp_port, sftp_port, sm2_keys, ssh_keys, clock)
    pytest_twisted.blockon(bank.stop())
    assert bank.internal_errors == 0


@pytest.fixture
def gw(reactor, tmp_path, sm2_keys, ssh_keys, clock):
    """A bank that funds an order at its first batch (auto_fund), and the gateway side."""
    yield from _bank_fixture(reactor, tmp_path, sm2_keys, ssh_keys, clock, auto_fund=True)


@pytest.fixture
def gw_unfunded(reactor, tmp_path, sm2_keys, ssh_keys, clock):
    """A bank that knows only the funding it is told of, and the gateway side."""
    yield from _bank_fixture(reactor, tmp_path, sm2_keys, ssh_keys, clock)


# --- the gateway side -------------------------------------------------------------------------

class _Raw(protocol.Protocol):
    """Writes bytes, collects everything until the bank closes the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.buf = bytearray()
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(bytes(self.buf))


def _id_no(base17: str) -> str:
    return base17 + ric.calc_check_digit(base17 + "0")


ID_NO = _id_no("11010519491231002")
GOOD_ACCT = "6222000000001234"


class Gateway:
    """What the gateway does, reduced to the calls a test needs."""

    def __init__(self, reactor, bank, tcp_port, sftp_port, sm2_keys, ssh_keys, clock):
        self.reactor = reactor
        self.bank = bank
        self.tcp_port = tcp_port
        self.keys = sm2_keys
        self.clock = clock
        self.settings = env.EnvelopeSettings()
        self.counter = 0
        self.sftp = SFTPClient(reactor, SFTPEndpoint(
            host="127.0.0.1", port=sftp_port, username="gateway",
            client_key_path=ssh_keys.client, host_key=ssh_keys.host_line))

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), tz=env.CN_TZ)

    def next_msg_id(self) -> str:
        self.counter += 1
        return env.new_msg_id("T", self.counter)

    # messages

    def build(self, tx, fields, *, msg_id=None, now=None, signer=None, inner=None):
        head = env.request_head(tx, GW_ID, BANK_ID, msg_id or self.next_msg_id(),
                                now or self.now())
        inner = inner if inner is not None else env.build_request(tx, fields)
        return head, env.build_message(head, inner, signer or self.keys.gw,
                                       self.keys.bank.public_key, self.settings)

    async def exchange(self, data: bytes) -> bytes:
        """Send raw bytes on a fresh connection; everything received until the bank closed it."""
        p = _Raw(data)
        await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.tcp_port), p)
        return await p.closed.addTimeout(GUARD, self.reactor)

    async def send_raw(self, raw: bytes):
        """Send one framed message; (reply Head, inner, raw reply) or None when no reply came."""
        received = await self.exchange(encode_frame(raw))
        if not received:
            return None
        dec = FrameDecoder()
        bodies = dec.feed(received)
        assert len(bodies) == 1 and dec.pending == 0, "exactly one reply frame, then close"
        opened = await threads.deferToThread(env.open_message, bodies[0], self.keys.gw,
                                             self.keys.bank.public_key, self.settings)
        return opened.head, opened.inner_xml, bodies[0]

    async def call(self, tx, fields=None, **kw):
        """One request; returns (Head, fields) of the verified reply, checked as the gateway would."""
        head, raw = await threads.deferToThread(self.build, tx, fields or {}, **kw)
        got = await self.send_raw(raw)
        assert got is not None, f"{tx}: no reply"
        rh, inner, _ = got
        env.check_head(rh, now=self.now(), expect_tx=tx, reply=True, expect_sender=BANK_ID,
                       expect_receiver=GW_ID)
        assert rh.msg_id == head.msg_id
        return rh, env.parse_reply(tx, inner, rh.ret_code)

    # files

    def batch_plain(self, batch_no, order_no, items, kind="PAY") -> bytes:
        """A batch file; items are (seq, acct, amount fen) or (seq, acct, amount, orig)."""
        header = files.BatchHeader(batch_no, order_no, PAYER, "市财政局补贴专户", len(items),
                                   sum(it[2] for it in items), "20250310", "耕地补贴")
        out = io.BytesIO()
        w = files.BatchFileWriter(out, header, kind=kind)
        for it in items:
            w.write_line(files.BatchLine(it[0], "王𬌗", ID_NO, it[1], "", it[2], "P001", "",
                                         it[3] if len(it) > 3 else ""))
        w.close()
        return out.getvalue()

    def seal_file(self, plain: bytes):
        key, iv = os.urandom(16), os.urandom(16)
        cipher = sm.sm4_cbc_encrypt(key, iv, plain)
        sig = sm.sm2_sign(self.keys.gw, plain, self.settings.uid)
        enc_key = env.wrap_key(self.keys.bank.public_key, key + iv, self.settings)
        return cipher, sig, sm.sm3_hex(plain), enc_key

    async def upload(self, name: str, cipher: bytes, sig: bytes) -> None:
        s = await self.sftp.connect().addTimeout(GUARD, self.reactor)
        try:
            await s.upload_bytes(sig, "/in", name + ".sig")
            await s.upload_bytes(cipher, "/in", name)
        finally:
            await s.close()

    async def fetch(self, name: str):
        s = await self.sftp.connect().addTimeout(GUARD, self.reactor)
        try:
            return (await s.read_bytes(f"/out/{name}", 1 << 26),
                    await s.read_bytes(f"/out/{name}.sig", 4096))
        finally:
            await s.close()

    def open_file(self, cipher, sig, sm3_hex, enc_key) -> bytes:
        key, iv = env.unwrap_key(self.keys.gw, enc_key, self.settings)
        plain = sm.sm4_cbc_decrypt(key, iv, cipher)
        assert sm.sm3_hex(plain) == sm3_hex
        assert sm.sm2_verify(self.keys.bank.public_key, plain, sig, self.settings.uid)
        return plain

    async def submit(self, batch_no, order_no, items, *, kind="PAY", plain=None, upload=True,
                     **over):
        """Build, upload and BP01 a batch; returns (reply Head, reply fields, BP01 fields)."""
        plain = plain if plain is not None else self.batch_plain(batch_no, order_no, items, kind)
        cipher, sig, sm3_hex, enc_key = await threads.deferToThread(self.seal_file, plain)
        if upload:
            await self.upload(f"{batch_no}.req", cipher, sig)
        fields = {"BatchNo": batch_no, "Kind": kind, "OrderNo": order_no,
                  "FileName": f"{batch_no}.req", "FileSM3": sm3_hex, "FileEncKey": enc_key,
                  "TotalCount": len(items), "TotalAmount": sum(it[2] for it in items)}
        fields.update(over)
        rh, rf = await self.call("BP01", fields)
        return rh, rf, fields

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.bank.settle()

    async def run_to_done(self, batch_no):
        await self.advance(DELAY)
        rh, rf = await self.call("BQ01", {"BatchNo": batch_no})
        assert rh.ret_code == "0000"
        return rf


def items_with_outcomes():
    """Four items: two credited, one R001 and one R004 (decided by the account number)."""
    return [(1, GOOD_ACCT, 10000), (2, account_failing_with("62220000000", "R001"), 2050),
            (3, "6222000000005678", 99), (4, account_failing_with("62220000000", "R004"), 30000)]


# --- tests --------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_hb01_reply_is_signed_encrypted_and_addressed_back(gw):
    """HB01 gets 0000 with the request's TxCode and MsgId, SenderId/ReceiverId swapped,
    signed by the bank and encrypted to the gateway (open_message verifies both)."""
    head, raw = gw.build("HB01", {})
    rh, inner, reply = await gw.send_raw(raw)
    assert (rh.tx_code, rh.msg_id, rh.ret_code) == ("HB01", head.msg_id, "0000")
    assert (rh.sender_id, rh.receiver_id) == (BANK_ID, GW_ID)
    assert rh.enc_flag == "1" and b"<Rsp" not in reply  # the inner XML never travels in clear
    assert env.parse_reply("HB01", inner, "0000") == {}
    assert gw.bank.requests(tx="HB01")[0]["ret_code"] == "0000"


@pytest_twisted.ensureDeferred
async def test_batch_accepted_then_rcvd_proc_done_with_verified_result_file(gw):
    """BP01 is accepted with a BankBatchNo; BQ01 goes RCVD -> PROC -> DONE on the bank's clock;
    the result file in /out verifies, decrypts, matches FileSM3, and says S/F per
    outcome_for_account; the ledger holds credits for the S lines only."""
    items = items_with_outcomes()
    rh, rf, _ = await gw.submit("ORD1-P01", "ORD1", items)
    assert rh.ret_code == "0000", rh.ret_msg
    assert rf["BatchNo"] == "ORD1-P01" and rf["BankBatchNo"].startswith(BANK_ID + "20250310")

    _, st = await gw.call("BQ01", {"BatchNo": "ORD1-P01"})
    assert st["Status"] == "RCVD"
    await gw.advance(DELAY / 2)
    _, st = await gw.call("BQ01", {"BatchNo": "ORD1-P01"})
    assert st["Status"] == "PROC"
    await gw.advance(DELAY / 2)
    _, st = await gw.call("BQ01", {"BatchNo": "ORD1-P01"})
    assert st["Status"] == "DONE" and st["ResultFile"] == "ORD1-P01.rsp"
    assert "Returns" not in st

    cipher, sig = await gw.fetch("ORD1-P01.rsp")
    plain = gw.open_file(cipher, sig, st["FileSM3"], st["FileEncKey"])
    header, lines = files.read_result_file(io.BytesIO(plain))
    lines = list(lines)
    assert (header.bank_batch_no, header.total, header.succ_cnt, header.fail_cnt) == \
        (rf["BankBatchNo"], 4, 2, 2)
    assert header.proc_date == "20250310"
    for (seq, acct, amount), line in zip(items, lines):
        code = outcome_for_account(acct)
        assert (line.seq, line.acct_no, line.amount) == (seq, acct, amount)
        assert line.status == ("S" if code == "0000" else "F") and line.reason_code == code
    assert [(c.seq, c.amount, c.serial) for c in gw.bank.credits("ORD1")] == \
        [(1, 10000, lines[0].bank_serial), (3, 99, lines[2].bank_serial)]
    assert gw.bank.accepted_count("ORD1-P01") == 1
    # The bank never leaves an incomplete name in /out.
    assert sorted(os.listdir(gw.bank.out_dir)) == ["ORD1-P01.rsp", "ORD1-P01.rsp.sig"]


@pytest_twisted.ensureDeferred
async def test_resent_bp01_gets_the_original_reply_and_pays_once(gw):
    """The same BatchNo with the same content (new MsgId and FileEncKey) gets the original
    reply, even once the file is gone from /in, and nothing more: one batch, credits once."""
    items = [(1, GOOD_ACCT, 500), (2, "6222000000005678", 700)]
    _, first, fields = await gw.submit("ORD2-P01", "ORD2", items)
    await gw.run_to_done("ORD2-P01")
    for name in ("ORD2-P01.req", "ORD2-P01.req.sig"):
        os.unlink(os.path.join(gw.bank.in_dir, name))
    plain = gw.batch_plain("ORD2-P01", "ORD2", items)
    _, _, _, fresh_key = gw.seal_file(plain)
    rh, again = await gw.call("BP01", {**fields, "FileEncKey": fresh_key})
    assert rh.ret_code == "0000" and again == first
    await gw.advance(DELAY)
    assert len(gw.bank.credits("ORD2")) == 2 and gw.bank.double_credits() == []
    assert [r["note"] for r in gw.bank.requests("BP01", "ORD2-P01")][1] == "replay"
    assert gw.bank.accepted_count("ORD2-P01") == 2  # both answered 0000: a resend is visible


@pytest_twisted.ensureDeferred
async def test_same_batch_no_with_different_content_is_e004(gw):
    """A remembered BatchNo with a different TotalAmount is refused E004, carrying the BatchNo only."""
    items = [(1, GOOD_ACCT, 500)]
    _, _, fields = await gw.submit("ORD3-P01", "ORD3", items)
    rh, rf = await gw.call("BP01", {**fields, "TotalAmount": 501})
    assert rh.ret_code == "E004" and rf == {"BatchNo": "ORD3-P01"}
    assert gw.bank.accepted_count("ORD3-P01") == 1


@pytest_twisted.ensureDeferred
async def test_bad_signature_is_e001_and_consumes_nothing(gw):
    """A message signed by another key is refused E001 with an empty Rsp, and its MsgId is
    not taken: the same MsgId, properly signed, is then accepted."""
    _, raw = gw.build("BQ01", {"BatchNo": "X-P01"}, msg_id="SAME1", signer=gw.keys.stranger)
    rh, inner, _ = await gw.send_raw(raw)
    assert rh.ret_code == "E001" and rh.msg_id == "SAME1"
    assert env.parse_reply("BQ01", inner, "E001") == {}
    rh, _ = await gw.call("HB01", msg_id="SAME1")
    assert rh.ret_code == "0000"


@pytest_twisted.ensureDeferred
async def test_garbage_ciphertext_is_e002(gw):
    """An EncKey that does not decrypt under the bank's key is refused E002."""
    _, raw = gw.build("HB01", {})
    start = raw.index(b"<EncKey>") + len(b"<EncKey>")
    end = raw.index(b"</EncKey>")
    garbage = base64.b64encode(b"\x04" + os.urandom(64 + 32 + 32))
    rh, _, _ = await gw.send_raw(raw[:start] + garbage + raw[end:])
    assert rh.ret_code == "E002" and rh.tx_code == "HB01"


@pytest_twisted.ensureDeferred
async def test_reused_msg_id_is_e008(gw):
    """A MsgId already used by this sender on this TxDate is refused E008."""
    rh, _ = await gw.call("HB01", msg_id="DUP1")
    assert rh.ret_code == "0000"
    rh, _ = await gw.call("HB01", msg_id="DUP1")
    assert rh.ret_code == "E008"


@pytest_twisted.ensureDeferred
async def test_timestamp_outside_the_window_is_e009(gw):
    """TxDate/TxTime 301 s from the bank's clock is refused E009; 300 s is still accepted."""
    late = datetime.fromtimestamp(T0 - 301, tz=env.CN_TZ)
    rh, rf = await gw.call("BQ01", {"BatchNo": "ORD9-P01"}, now=late)
    assert rh.ret_code == "E009" and rf == {"BatchNo": "ORD9-P01"}
    edge = datetime.fromtimestamp(T0 + 300, tz=env.CN_TZ)
    rh, _ = await gw.call("HB01", now=edge)
    assert rh.ret_code == "0000"


@pytest_twisted.ensureDeferred
async def test_unknown_batch_is_e007(gw):
    """BQ01 for a BatchNo the bank never accepted is E007, carrying that BatchNo."""
    rh, rf = await gw.call("BQ01", {"BatchNo": "NOPE-P01"})
    assert rh.ret_code == "E007" and rf == {"BatchNo": "NOPE-P01"}


@pytest_twisted.ensureDeferred
async def test_digest_mismatch_and_missing_file_are_e006_and_not_remembered(gw):
    """A FileSM3 that is not the file's, or a file not in /in, is E006; the refused BatchNo is
    not remembered, so the corrected BP01 is then accepted."""
    items = [(1, GOOD_ACCT, 500)]
    rh, rf, fields = await gw.submit("ORD4-P01", "ORD4", items, FileSM3="ab" * 32)
    assert rh.ret_code == "E006" and "SM3" in rh.ret_msg and rf == {"BatchNo": "ORD4-P01"}
    rh, _, _ = await gw.submit("ORD5-P01", "ORD5", items, upload=False)
    assert rh.ret_code == "E006" and "not in /in" in rh.ret_msg
    rh, _ = await gw.call("BQ01", {"BatchNo": "ORD4-P01"})
    assert rh.ret_code == "E007"
    rh, _, _ = await gw.submit("ORD4-P01", "ORD4", items)
    assert rh.ret_code == "0000"


@pytest_twisted.ensureDeferred
async def test_file_signature_by_another_key_is_e006(gw):
    """A .sig that is not the gateway's signature of the plaintext is E006."""
    plain = gw.batch_plain("ORD6-P01", "ORD6", [(1, GOOD_ACCT, 500)])
    cipher, _, sm3_hex, enc_key = gw.seal_file(plain)
    await gw.upload("ORD6-P01.req", cipher, sm.sm2_sign(gw.keys.stranger, plain))
    rh, _ = await gw.call("BP01", {"BatchNo": "ORD6-P01", "Kind": "PAY", "OrderNo": "ORD6",
                                   "FileName": "ORD6-P01.req", "FileSM3": sm3_hex,
                                   "FileEncKey": enc_key, "TotalCount": 1, "TotalAmount": 500})
    assert rh.ret_code == "E006" and ".sig" in rh.ret_msg


@pytest_twisted.ensureDeferred
async def test_totals_that_do_not_add_up_are_e003(gw):
    """A message whose TotalAmount is not the file's H line, or a file whose lines do not add
    up to its H line, is refused E003."""
    items = [(1, GOOD_ACCT, 500), (2, GOOD_ACCT[:-1] + "5", 600)]
    rh, _, _ = await gw.submit("ORD7-P01", "ORD7", items, TotalAmount=1101)
    assert rh.ret_code == "E003" and "TotalAmount" in rh.ret_msg
    good = gw.batch_plain("ORD7-P01", "ORD7", items)
    bad = good.replace("|11.00|".encode(), b"|11.01|", 1)  # the H line only
    assert bad != good
    rh, _, _ = await gw.submit("ORD7-P01", "ORD7", items, plain=bad, TotalAmount=1101)
    assert rh.ret_code == "E003" and "line 1, field TotalAmount" in rh.ret_msg


@pytest_twisted.ensureDeferred
async def test_malformed_line_is_e999_naming_line_and_field(gw):
    """A D line whose IdNo fails the GB 11643 check is E999 with the line number and field."""
    good = gw.batch_plain("ORD8-P01", "ORD8", [(1, GOOD_ACCT, 500), (2, GOOD_ACCT, 600)])
    wrong = ID_NO[:-1] + ("0" if ID_NO[-1] != "0" else "1")
    lines = good.split(b"\r\n")
    lines[2] = lines[2].replace(ID_NO.encode(), wrong.encode())
    rh, _, _ = await gw.submit("ORD8-P01", "ORD8", [(1, GOOD_ACCT, 500), (2, GOOD_ACCT, 600)],
                               plain=b"\r\n".join(lines))
    assert rh.ret_code == "E999" and "line 3, field IdNo" in rh.ret_msg


@pytest_twisted.ensureDeferred
async def test_unfunded_order_is_e005_until_funded(gw_unfunded):
    """Without funding a BP01 is E005; after the treasury funds the order it is accepted, and a
    batch exceeding what is left is E005 again."""
    gw = gw_unfunded
    items = [(1, GOOD_ACCT, 500)]
    rh, _, _ = await gw.submit("ORD10-P01", "ORD10", items)
    assert rh.ret_code == "E005"
    await gw.bank.fund("ORD10", 800)
    rh, _, _ = await gw.submit("ORD10-P01", "ORD10", items)
    assert rh.ret_code == "0000"
    await gw.run_to_done("ORD10-P01")
    rh, _, _ = await gw.submit("ORD10-R02", "ORD10", [(1, GOOD_ACCT, 301, "ORD10-P01")],
                               kind="RETRY")
    assert rh.ret_code == "E005"


@pytest_twisted.ensureDeferred
async def test_second_live_pay_batch_is_e010(gw):
    """A second PAY batch for an order whose PAY batch is live is refused E010."""
    rh, _, _ = await gw.submit("ORD11-P01", "ORD11", [(1, GOOD_ACCT, 500)])
    assert rh.ret_code == "0000"
    rh, _, _ = await gw.submit("ORD11-P02", "ORD11", [(1, GOOD_ACCT, 500)])
    assert rh.ret_code == "E010"


@pytest_twisted.ensureDeferred
async def test_bad_frame_prefix_is_e999_and_closed_without_reading_the_body(gw):
    """A length prefix that is not digits is answered E999 at once (the body is never awaited)
    and the connection is closed; so is a length over 16 MiB with no body sent at all."""
    for prefix in (b"12ab5678", b"99999999"):
        received = await gw.exchange(prefix)  # returns only because the bank closed
        dec = FrameDecoder()
        (body,) = dec.feed(received)
        opened = env.open_message(body, gw.keys.gw, gw.keys.bank.public_key, gw.settings)
        assert opened.head.ret_code == "E999" and opened.head.sender_id == BANK_ID
    assert [r["ret_code"] for r in gw.bank.requests()] == ["E999", "E999"]


@pytest_twisted.ensureDeferred
async def test_unusable_envelopes_and_heads_are_e999(gw):
    """A frame that is not a CnBank document is E999 (with a blank Head, nothing to echo); a
    verified request addressed to another ReceiverId is E999 naming ReceiverId; an inner field
    error is E999 naming the field, echoing the BatchNo it did carry."""
    (body,) = FrameDecoder().feed(await gw.exchange(encode_frame(b"<not-xml")))
    opened = env.open_message(body, gw.keys.gw, gw.keys.bank.public_key, gw.settings)
    assert (opened.head.ret_code, opened.head.tx_code, opened.head.msg_id) == ("E999", "", "")

    head = env.request_head("HB01", GW_ID, "OTHERBANK", "W1", gw.now())
    raw = env.build_message(head, env.build_request("HB01", {}), gw.keys.gw,
                            gw.keys.bank.public_key, gw.settings)
    rh, _, _ = await gw.send_raw(raw)
    assert rh.ret_code == "E999" and "ReceiverId" in rh.ret_msg

    inner = env.build_inner("Req", {"BatchNo": "ORD21-P01", "Kind": "PAY", "OrderNo": "ORD21",
                                    "FileName": "OTHER.req", "FileSM3": "ab" * 32,
                                    "FileEncKey": "AAAA", "TotalCount": "1",
                                    "TotalAmount": "1.00"})
    rh, rf = await gw.call("BP01", inner=inner)
    assert rh.ret_code == "E999" and "FileName" in rh.ret_msg and rf == {"BatchNo": "ORD21-P01"}


@pytest_twisted.ensureDeferred
async def test_reject_hook_ends_batch_rjct_and_frees_the_order(gw):
    """reject_next_batch makes a 0000-accepted batch end RJCT E005 with nothing paid; its
    BatchNo stays spent (E004 for other content) and a new PAY batch for the order is allowed."""
    gw.bank.reject_next_batch("E005")
    items = [(1, GOOD_ACCT, 500)]
    rh, _, fields = await gw.submit("ORD12-P01", "ORD12", items)
    assert rh.ret_code == "0000"
    st = await gw.run_to_done("ORD12-P01")
    assert (st["Status"], st["RejectCode"]) == ("RJCT", "E005") and "ResultFile" not in st
    assert gw.bank.credits("ORD12") == []
    rh, _ = await gw.call("BP01", {**fields, "TotalCount": 2})
    assert rh.ret_code == "E004"
    rh, _, _ = await gw.submit("ORD12-P02", "ORD12", items)
    assert rh.ret_code == "0000"


@pytest_twisted.ensureDeferred
async def test_dropped_reply_still_accepts_and_bq01_finds_it(gw):
    """drop_reply_after('BP01'): the bank acts but closes without replying; BQ01 then shows the
    batch (so the gateway must not resend blindly) and exactly one BP01 was accepted."""
    gw.bank.drop_reply_after("BP01")
    plain = gw.batch_plain("ORD13-P01", "ORD13", [(1, GOOD_ACCT, 500)])
    cipher, sig, sm3_hex, enc_key = gw.seal_file(plain)
    await gw.upload("ORD13-P01.req", cipher, sig)
    _, raw = gw.build("BP01", {"BatchNo": "ORD13-P01", "Kind": "PAY", "OrderNo": "ORD13",
                               "FileName": "ORD13-P01.req", "FileSM3": sm3_hex,
                               "FileEncKey": enc_key, "TotalCount": 1, "TotalAmount": 500})
    assert await gw.send_raw(raw) is None
    rh, st = await gw.call("BQ01", {"BatchNo": "ORD13-P01"})
    assert rh.ret_code == "0000" and st["Status"] == "RCVD"
    assert gw.bank.accepted_count("ORD13-P01") == 1


@pytest_twisted.ensureDeferred
async def test_retry_of_a_paid_item_is_paid_again_and_recorded(gw):
    """The bank cannot know an item was paid: a RETRY naming an already credited item credits
    it again, and double_credits() reports it (preventing it is the gateway's duty)."""
    items = [(1, GOOD_ACCT, 500), (2, account_failing_with("62220000000", "R001"), 500)]
    await gw.submit("ORD14-P01", "ORD14", items)
    await gw.run_to_done("ORD14-P01")
    rh, _, _ = await gw.submit("ORD14-R02", "ORD14", [(1, GOOD_ACCT, 500, "ORD14-P01")],
                               kind="RETRY")
    assert rh.ret_code == "0000"
    await gw.run_to_done("ORD14-R02")
    (double,) = gw.bank.double_credits()
    assert (double.order_no, double.seq, double.credits) == ("ORD14", 1, 2)
    assert sorted(double.batch_nos) == ["ORD14-P01", "ORD14-R02"]


@pytest_twisted.ensureDeferred
async def test_retry_naming_an_unknown_orig_batch_is_e999(gw):
    """A RETRY line whose OrigBatchNo is not a processed batch of the order is refused E999."""
    rh, _, _ = await gw.submit("ORD15-R02", "ORD15", [(1, GOOD_ACCT, 500, "ORD15-P01")],
                               kind="RETRY")
    assert rh.ret_code == "E999" and "OrigBatchNo" in rh.ret_msg


@pytest_twisted.ensureDeferred
async def test_late_return_is_listed_in_every_bq01(gw):
    """An item returned after DONE is listed under Returns in BQ01 from then on."""
    await gw.submit("ORD16-P01", "ORD16", [(1, GOOD_ACCT, 500), (2, "6222000000005678", 700)])
    await gw.run_to_done("ORD16-P01")
    ret = await gw.bank.return_item("ORD16-P01", 2, "R004")
    for _ in range(2):
        _, st = await gw.call("BQ01", {"BatchNo": "ORD16-P01"})
        assert st["Returns"] == [{"Seq": 2, "Amount": 700, "ReasonCode": "R004",
                                  "ReturnSerial": ret["serial"], "ReturnDate": "20250310"}]


@pytest_twisted.ensureDeferred
async def test_refund_of_a_failed_item_goes_proc_then_done(gw):
    """RF01 for an item that failed is accepted; RQ01 says PROC, then DONE with the refund
    serial, the payer account and the amount; a refund of a paid item is refused."""
    items = [(1, GOOD_ACCT, 500), (2, account_failing_with("62220000000", "R010"), 700)]
    await gw.submit("ORD17-P01", "ORD17", items)
    await gw.run_to_done("ORD17-P01")
    rh, rf = await gw.call("RF01", {"RefundNo": "ORD17-F01", "OrderNo": "ORD17",
                                    "TotalCount": 1, "TotalAmount": 700,
                                    "Items": [{"Seq": 2, "BatchNo": "ORD17-P01",
                                               "Amount": 700}]})
    assert rh.ret_code == "0000" and rf == {"RefundNo": "ORD17-F01"}
    _, st = await gw.call("RQ01", {"RefundNo": "ORD17-F01"})
    assert st["Status"] == "PROC"
    await gw.advance(DELAY)
    _, st = await gw.call("RQ01", {"RefundNo": "ORD17-F01"})
    assert st["Status"] == "DONE" and st["ReturnedTo"] == PAYER and st["RefundAmount"] == 700
    rh, _ = await gw.call("RF01", {"RefundNo": "ORD17-F02", "OrderNo": "ORD17",
                                   "TotalCount": 1, "TotalAmount": 500,
                                   "Items": [{"Seq": 1, "BatchNo": "ORD17-P01", "Amount": 500}]})
    assert rh.ret_code == "E999"
    rh, _ = await gw.call("RQ01", {"RefundNo": "ORD17-F02"})
    assert rh.ret_code == "E007"


@pytest_twisted.ensureDeferred
async def test_refund_reject_hook_ends_rjct(gw):
    """reject_next_refund makes an accepted RF01 end RJCT with its code, reported by RQ01."""
    items = [(1, account_failing_with("62220000000", "R010"), 700)]
    await gw.submit("ORD22-P01", "ORD22", items)
    await gw.run_to_done("ORD22-P01")
    gw.bank.reject_next_refund("E005")
    rh, _ = await gw.call("RF01", {"RefundNo": "ORD22-F01", "OrderNo": "ORD22",
                                   "TotalCount": 1, "TotalAmount": 700,
                                   "Items": [{"Seq": 1, "BatchNo": "ORD22-P01", "Amount": 700}]})
    assert rh.ret_code == "0000"
    await gw.advance(DELAY)
    _, st = await gw.call("RQ01", {"RefundNo": "ORD22-F01"})
    assert (st["Status"], st["RejectCode"]) == ("RJCT", "E005") and "RefundSerial" not in st


@pytest_twisted.ensureDeferred
async def test_dispute_only_on_a_done_batch(gw):
    """DP01 on a DONE batch is accepted (Y) and repeated identically; on an unknown batch E007,
    on a batch not yet DONE E999."""
    await gw.submit("ORD18-P01", "ORD18", [(1, GOOD_ACCT, 500)])
    rh, _ = await gw.call("DP01", {"DisputeNo": "D1", "BatchNo": "ORD18-P01", "Seqs": [1],
                                   "Reason": "金额不符"})
    assert rh.ret_code == "E999"
    await gw.run_to_done("ORD18-P01")
    for _ in range(2):
        rh, rf = await gw.call("DP01", {"DisputeNo": "D1", "BatchNo": "ORD18-P01",
                                        "Seqs": [1], "Reason": "金额不符"})
        assert rh.ret_code == "0000" and rf == {"DisputeNo": "D1", "Accepted": "Y"}
    assert len(gw.bank.ledger.disputes()) == 1
    rh, _ = await gw.call("DP01", {"DisputeNo": "D2", "BatchNo": "NOPE", "Seqs": [1],
                                   "Reason": "x"})
    assert rh.ret_code == "E007"


@pytest_twisted.ensureDeferred
async def test_statement_lists_done_batches_and_refunds_of_the_period(gw):
    """RC01 writes STMT_{Period}.txt to /out, signed and encrypted; its H line adds up its
    B and R lines, returns included."""
    items = [(1, GOOD_ACCT, 500), (2, account_failing_with("62220000000", "R001"), 700),
             (3, "6222000000005678", 900)]
    await gw.submit("ORD19-P01", "ORD19", items)
    await gw.run_to_done("ORD19-P01")
    await gw.bank.return_item("ORD19-P01", 3)
    await gw.call("RF01", {"RefundNo": "ORD19-F01", "OrderNo": "ORD19", "TotalCount": 1,
                           "TotalAmount": 700,
                           "Items": [{"Seq": 2, "BatchNo": "ORD19-P01", "Amount": 700}]})
    await gw.advance(DELAY)
    rh, rf = await gw.call("RC01", {"Period": "M202503"})
    assert rh.ret_code == "0000" and rf["StatementFile"] == "STMT_M202503.txt"
    cipher, sig = await gw.fetch("STMT_M202503.txt")
    plain = gw.open_file(cipher, sig, rf["FileSM3"], rf["FileEncKey"])
    stmt = files.read_statement_file(io.BytesIO(plain), period="M202503")
    h = stmt.header
    assert (h.payer_acct, h.paid_cnt, h.paid_amt, h.return_cnt, h.return_amt, h.refund_cnt,
            h.refund_amt) == (PAYER, 2, 1400, 1, 900, 1, 700)
    assert [b.batch_no for b in stmt.batches] == ["ORD19-P01"]
    _, rf = await gw.call("RC01", {"Period": "M202502"})
    cipher, sig = await gw.fetch("STMT_M202502.txt")
    plain = gw.open_file(cipher, sig, rf["FileSM3"], rf["FileEncKey"])
    assert files.read_statement_file(io.BytesIO(plain)).batches == []


@pytest_twisted.ensureDeferred
async def test_ledger_survives_a_restart_and_resumes_processing(reactor, tmp_path, sm2_keys,
                                                                ssh_keys, clock):
    """A bank restarted on the same data dir still knows the MsgIds it saw, its batches and
    remembered replies, and finishes a batch it had accepted but not processed."""
    bank, tcp_port, sftp_port = await _start(reactor, tmp_path, sm2_keys, ssh_keys, clock,
                                             auto_fund=True)
    gw = Gateway(reactor, bank, tcp_port, sftp_port, sm2_keys, ssh_keys, clock)
    try:
        _, first, fields = await gw.submit("ORD20-P01", "ORD20", [(1, GOOD_ACCT, 500)])
    finally:
        await bank.stop()
    bank, tcp_port, sftp_port = await _start(reactor, tmp_path, sm2_keys, ssh_keys, clock,
                                             auto_fund=True)
    counter, gw = gw.counter, Gateway(reactor, bank, tcp_port, sftp_port, sm2_keys, ssh_keys,
                                      clock)
    try:
        rh, _ = await gw.call("HB01", msg_id=env.new_msg_id("T", counter))
        assert rh.ret_code == "E008"
        gw.counter = counter
        rh, again = await gw.call("BP01", fields)
        assert rh.ret_code == "0000" and again == first
        st = await gw.run_to_done("ORD20-P01")
        assert st["Status"] == "DONE"
        assert len(bank.credits("ORD20")) == 1
    finally:
        await bank.stop()
    assert bank.internal_errors == 0
