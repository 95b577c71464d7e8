"""The `cnbank` bank simulator: a strict agent bank on framed TCP and SFTP.

It answers the gateway exactly as shared/spec/cnbank.md says a bank does, and
no more kindly: every request is parsed (E999), decrypted (E002) and verified
(E001) before its Head, timestamp (E009), MsgId (E008) and fields (E999) are
judged, and only then acted on. Batches are taken from `/in` (digest and
signature checked, E006; parsed strictly, E999/E003), decided against the
ledger (idempotency E004, funds E005, one live PAY per order E010), processed
after a delay on the injected clock, and answered with a signed, encrypted
result file in `/out`. Each item's fate comes from `outcome_for_account`, so a
test aims at any reason code by the account number. Crypto and files run in
threads, the ledger on its own thread; the reactor only moves bytes.

Test hooks: `reject_next_batch`, `reject_next_refund`, `drop_reply_after`,
`misreply_next` (a signed reply whose Head does not answer the request),
`refuse_next` / `refuse_next_submission` (a request answered with an E code, not
acted on),
`clock_offset_s` (the bank's clock off by that much, for its judgement of
requests and the time in its replies), `return_item`, `fund`, `settle`, and the
ledger reads `accepted_count`, `credits`, `double_credits`, `requests`, `batch_now`.
"""

from __future__ import annotations

import collections
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

from lxml import etree
from twisted.internet import defer, protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from protocols import cnbank_envelope as env
from protocols import cnbank_files as files
from protocols import framing, sm
from protocols.cnbank_envelope import OK, EnvelopeError, EnvelopeSettings, Head
from simulators import sftp_server
from simulators.cnbank.ledger import Ledger, Refused, fingerprint, reject_text
from simulators.outcomes import REASONS, SUCCESS, SUCCESS_TEXT, outcome_for_account

log = Logger()

CHUNK = 1 << 20
MAX_SIG_BYTES = 1024
_RET_MSG_MAX = 256
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass
class _Outcome:
    """How a request is answered: RetCode, RetMsg, the `<Rsp>` bytes of a 0000 reply,
    the request's number for the log and for an error reply, and a note for the log."""

    code: str
    message: str = ""
    rsp: bytes | None = None
    number: str = ""
    note: str = ""


class _Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _clean(message: str) -> str:
    message = _XML_ILLEGAL.sub("?", message)
    return message if len(message) <= _RET_MSG_MAX else message[:_RET_MSG_MAX - 3] + "..."


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False)


def _period_dates(period: str) -> tuple[str, str]:
    """First and last YYYYMMDD of a statement period, for string comparison."""
    if period[0] == "D":
        return period[1:], period[1:]
    if period[0] == "M":
        return period[1:] + "01", period[1:] + "31"
    return period[1:] + "0101", period[1:] + "1231"


class _Tee:
    """A file-like sink: hashes the plaintext, keeps a copy, and writes it SM4-encrypted."""

    def __init__(self, cipher_out, encryptor, hashers, plain_out=None) -> None:
        self._out = cipher_out
        self._enc = encryptor
        self._hashers = hashers
        self._plain = plain_out

    def write(self, data: bytes) -> int:
        for h in self._hashers:
            h.update(data)
        if self._plain is not None:
            self._plain.write(data)
        self._out.write(self._enc.update(data))
        return len(data)


class CnBankSimulator:
    """One simulated agent bank (代发金融机构) of the `cnbank` dialect.

    *clock* drives business time (TxDate/TxTime checks, processing delays,
    ProcDate); *reactor* drives sockets, threads and connection timeouts.
    `ready` fires once the ledger is open and unfinished work is rescheduled.
    """

    def __init__(self, reactor: Any, *, data_dir: str, bank_key: sm.SM2PrivateKey,
                 gateway_key: sm.SM2PublicKey, bank_id: str = "CNBANK",
                 settings: EnvelopeSettings | None = None, sftp_root: str,
                 processing_delay_s: float = 0.5, clock: Any = None,
                 max_skew_s: int | None = None, client_id: str | None = None,
                 auto_fund: bool = False, amount_unit: str = "yuan",
                 frame_width: int = framing.DEFAULT_WIDTH,
                 max_frame_bytes: int = framing.DEFAULT_MAX_SIZE, read_timeout_s: float = 60,
                 max_file_bytes: int = 4 << 30, payer_acct: str | None = None) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.settings = settings or EnvelopeSettings()
        self.bank_key = bank_key
        self.gateway_key = gateway_key
        self.bank_id = bank_id
        self.client_id = client_id
        self.processing_delay_s = processing_delay_s
        self.max_skew_s = self.settings.max_skew_s if max_skew_s is None else max_skew_s
        self.auto_fund = auto_fund
        if amount_unit not in ("yuan", "fen"):
            raise ValueError(f"amount_unit must be yuan or fen, not {amount_unit!r}")
        self.amount_unit = amount_unit
        self.frame_width = frame_width
        self.max_frame_bytes = max_frame_bytes
        self.read_timeout_s = read_timeout_s
        self.max_file_bytes = max_file_bytes
        self.payer_acct = payer_acct

        self.data_dir = os.path.abspath(data_dir)
        self.sftp_root = os.path.abspath(sftp_root)
        self.in_dir = os.path.join(self.sftp_root, "in")
        self.out_dir = os.path.join(self.sftp_root, "out")
        self.spool_dir = os.path.join(self.data_dir, "batches")
        self.results_dir = os.path.join(self.data_dir, "results")
        for d in (self.data_dir, self.in_dir, self.out_dir, self.spool_dir, self.results_dir):
            os.makedirs(d, exist_ok=True)

        self.ledger = Ledger(os.path.join(self.data_dir, "ledger.sqlite3"), reactor)
        self.internal_errors = 0
        self._handlers: dict[str, Callable[[Head, dict], Awaitable[_Outcome]]] = {
            "HB01": self._hb01, "BP01": self._bp01, "BQ01": self._bq01, "RF01": self._rf01,
            "RQ01": self._rq01, "DP01": self._dp01, "RC01": self._rc01,
        }
        self._batch_rejects: collections.deque[str] = collections.deque()
        self._refund_rejects: collections.deque[str] = collections.deque()
        self._drops: list[str] = []
        self._result_mangles: collections.deque[Callable[[bytes], bytes]] = collections.deque()
        self._bad_signatures = 0
        self._misreplies: list[tuple[str, dict]] = []
        self._refusals: dict[str, collections.deque[tuple[str, str]]] = {}
        self.clock_offset_s = 0.0
        self._timers: dict[tuple[str, str], Any] = {}
        self._work: set[defer.Deferred] = set()
        self._ports: list[Any] = []
        self._connections: set[_BankProtocol] = set()
        self._sftp_factory: sftp_server.SFTPServerFactory | None = None
        self.ready = defer.ensureDeferred(self._start())

    # --- life cycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        await self.ledger.open()
        batches, refunds = await self.ledger.pending()
        await self._in_thread(self._tidy_out)
        for b in batches:
            self._schedule_batch(b["batch_no"], b["accepted_at"])
        for r in refunds:
            self._schedule_refund(r["refund_no"], r["accepted_at"])
        log.info("cnbank simulator {bank} ready: {b} batches and {r} refunds to finish",
                 bank=self.bank_id, b=len(batches), r=len(refunds))

    def listen_tcp(self, port: int = 0, interface: str = "127.0.0.1") -> Any:
        """Serve the framed message link; returns the IListeningPort."""
        listening = self.reactor.listenTCP(port, _BankFactory(self), interface=interface)
        self._ports.append(listening)
        log.info("cnbank {bank} messages on {host}:{port}", bank=self.bank_id,
                 host=interface, port=listening.getHost().port)
        return listening

    def listen_sftp(self, port: int = 0, interface: str = "127.0.0.1", *,
                    authorized_keys: list[str | bytes], host_key_path: str,
                    username: str = "gateway", strict_rename: bool = False) -> Any:
        """Serve `/in` and `/out` over SFTP to the gateway's key; returns the IListeningPort."""
        self._sftp_factory = sftp_server.make_sftp_server_factory(
            self.sftp_root, username, list(authorized_keys), host_key_path,
            strict_rename=strict_rename)
        listening = self._sftp_factory.listen(self.reactor, port, interface)
        self._ports.append(listening)
        log.info("cnbank {bank} files on sftp://{user}@{host}:{port}", bank=self.bank_id,
                 user=username, host=interface, port=listening.getHost().port)
        return listening

    def stop(self) -> defer.Deferred:
        """Stop listening, drop connections, cancel timers, finish running work, close the ledger."""

        async def go() -> None:
            for p in self._ports:
                await defer.maybeDeferred(p.stopListening)   # None from some ports, a Deferred from others
            self._ports.clear()
            if self._sftp_factory is not None:
                self._sftp_factory.disconnect_all()
            for conn in list(self._connections):
                conn.transport.abortConnection()
            for timer in self._timers.values():
                if timer.active():
                    timer.cancel()
            self._timers.clear()
            await self.settle()
            await self.ledger.close()
        return defer.ensureDeferred(go())

    def settle(self) -> defer.Deferred:
        """Fires once no request or processing started so far is still running."""
        pending = list(self._work)
        if not pending:
            return defer.succeed(None)
        return defer.DeferredList(pending).addCallback(lambda _: self.settle())

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        def failed(f):
            self.internal_errors += 1
            log.failure("cnbank simulator: background work failed", f)

        d.addErrback(failed)
        self._work.add(d)
        d.addBoth(lambda r: (self._work.discard(d), r)[1])
        return d

    def _in_thread(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args, **kw)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds() + self.clock_offset_s, tz=env.CN_TZ)

    def _today(self) -> str:
        return self._now().strftime("%Y%m%d")

    # --- test hooks -----------------------------------------------------------------------

    def fund(self, order_no: str, amount: int) -> defer.Deferred:
        """The treasury has paid *amount* fen for *order_no*."""
        return self.ledger.fund(order_no, amount, self.clock.seconds())

    def reject_next_batch(self, code: str = "E005") -> None:
        """The next batch accepted ends RJCT with *code* instead of being processed."""
        self._batch_rejects.append(code)

    def reject_next_refund(self, code: str = "E005") -> None:
        """The next refund accepted ends RJCT with *code*."""
        self._refund_rejects.append(code)

    def drop_reply_after(self, tx_code: str) -> None:
        """The next *tx_code* request answered 0000 is acted on, but its reply is never sent."""
        self._drops.append(tx_code)

    def refuse_next_submission(self, code: str = "E006", message: str = "refused by the test") -> None:
        """The next BP01 is answered *code* without being acted on or remembered, as a bank
        refuses a batch it cannot take (E004 when it holds another under that number)."""
        self.refuse_next("BP01", code, message)

    def refuse_next(self, tx: str, code: str = "E999", message: str = "refused by the test") -> None:
        """The next *tx* request (verified, Head good) is answered *code* without being acted on."""
        self._refusals.setdefault(tx, collections.deque()).append((code, message))

    def misreply_next(self, tx: str, /, **head_changes: str) -> None:
        """The next reply to *tx* is properly signed and encrypted, but its Head has
        *head_changes* (tx_code, msg_id, sender_id, receiver_id) in place of the values that
        answer the request; the request itself is acted on as usual."""
        unknown = set(head_changes) - {"tx_code", "msg_id", "sender_id", "receiver_id"}
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} in a reply Head")
        self._misreplies.append((tx, head_changes))

    def mangle_next_result(self, fn: Callable[[bytes], bytes]) -> None:
        """The next result file's plaintext is passed through *fn* before it is digested,
        signed and encrypted: a bank bug the gateway must catch by its own checks."""
        self._result_mangles.append(fn)

    def corrupt_next_result_signature(self) -> None:
        """The next result file's `.sig` has one bit flipped."""
        self._bad_signatures += 1

    def return_item(self, batch_no: str, seq: int, reason: str = "R004") -> defer.Deferred:
        """A credited item comes back late (closed account, say); BQ01 lists it from now on."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        return self.ledger.add_return(batch_no, seq, reason, self._today(), self.clock.seconds())

    def accepted_count(self, batch_no: str, tx: str = "BP01") -> int:
        return self.ledger.accepted_count(batch_no, tx)

    def credits(self, order_no: str) -> list:
        return self.ledger.credits(order_no)

    def double_credits(self) -> list:
        return self.ledger.double_credits()

    def requests(self, tx: str | None = None, number: str | None = None) -> list[dict]:
        return self.ledger.requests(tx, number)

    def batch_now(self, batch_no: str) -> dict | None:
        return self.ledger.batch_now(batch_no)

    # --- one request, one reply -------------------------------------------------------------

    def handle(self, raw: bytes) -> defer.Deferred:
        """Answer one frame body: fires with the reply body, or None when the reply is dropped."""
        return self._track(defer.ensureDeferred(self._handle(raw)))

    def frame_error_reply(self, message: str) -> defer.Deferred:
        """The E999 reply to a frame refused before its body was read."""

        async def go() -> bytes:
            at = self.clock.seconds()
            await self.ledger.log_request(at, "", "", "", "", "E999", _clean(message), "frame")
            return await self._in_thread(self._seal, None, "E999", _clean(message),
                                         env.build_inner("Rsp", {}), self._now())
        return self._track(defer.ensureDeferred(go()))

    async def _handle(self, raw: bytes) -> bytes | None:
        at, now = self.clock.seconds(), self._now()
        head: Head | None = None
        try:
            head, outcome = await self._decide(raw, now)
        except Exception:
            self.internal_errors += 1
            log.failure("cnbank simulator: internal error on a request")
            if head is None:
                head = self._best_head(raw)
            outcome = _Outcome("E999", "internal error of the bank")
        outcome.message = _clean(outcome.message)
        tx = head.tx_code if head is not None else ""
        drop = outcome.code == OK and tx in self._drops
        if drop:
            self._drops.remove(tx)
            outcome.note = (outcome.note + " reply dropped").strip()
        await self.ledger.log_request(
            at, tx, head.msg_id if head else "", head.sender_id if head else "", outcome.number,
            outcome.code, outcome.message, outcome.note)
        log.info("{tx} {msg_id} {number}: {code} {message}", tx=tx or "-",
                 msg_id=head.msg_id if head else "-", number=outcome.number or "-",
                 code=outcome.code, message=outcome.message or outcome.note)
        if drop:
            return None
        inner = outcome.rsp
        if inner is None:
            name = env.ERROR_REPLY_NUMBER.get(tx)
            inner = env.build_inner("Rsp", {name: outcome.number} if name and outcome.number
                                    else {}, encoding=self.settings.encoding)
        changes = None
        for i, (mis_tx, mis) in enumerate(self._misreplies):
            if mis_tx == tx:
                changes = self._misreplies.pop(i)[1]
                break
        return await self._in_thread(self._seal, head, outcome.code, outcome.message, inner, now,
                                     changes)

    async def _decide(self, raw: bytes, now: datetime) -> tuple[Head | None, _Outcome]:
        # The spec's order: envelope (E999), decryption (E002), signature (E001),
        # then Head, timestamp, MsgId and fields; nothing acts before all pass.
        try:
            opened = await self._in_thread(env.open_message, raw, self.bank_key,
                                           self.gateway_key, self.settings)
        except EnvelopeError as e:
            return self._best_head(raw), _Outcome(e.code, e.message)
        head, inner = opened.head, opened.inner_xml
        try:
            env.check_head(head, now=now, max_skew_s=self.max_skew_s, reply=False,
                           expect_receiver=self.bank_id, expect_sender=self.client_id)
        except EnvelopeError as e:
            return head, _Outcome(e.code, e.message, number=self._number_of(head.tx_code, inner))
        if not await self.ledger.claim_msg_id(head.sender_id, head.tx_date, head.msg_id,
                                              self.clock.seconds()):
            return head, _Outcome("E008", f"MsgId {head.msg_id} was already used by "
                                  f"{head.sender_id} on {head.tx_date}",
                                  number=self._number_of(head.tx_code, inner))
        try:
            fields = await self._in_thread(env.parse_request, head.tx_code, inner,
                                           encoding=self.settings.encoding)
        except EnvelopeError as e:
            return head, _Outcome(e.code, e.message, number=self._number_of(head.tx_code, inner))
        planned = self._refusals.get(head.tx_code)
        if planned:
            code, message = planned.popleft()
            return head, _Outcome(code, message, number=self._number_of(head.tx_code, inner))
        return head, await self._handlers[head.tx_code](head, fields)

    def _seal(self, head: Head | None, code: str, message: str, inner: bytes,
              now: datetime, changes: dict | None = None) -> bytes:
        if head is None:
            d, t = env.tx_datetime(now)
            reply = Head(tx_code="", sender_id=self.bank_id, receiver_id=self.client_id or "",
                         msg_id="", tx_date=d, tx_time=t, ret_code=code, ret_msg=message)
        else:
            reply = env.reply_head(head, now, code, message)
        for name, value in (changes or {}).items():
            setattr(reply, name, value)
        plain = head is not None and head.enc_flag == "0" and self.settings.allow_plaintext
        return env.build_message(reply, inner, self.bank_key, self.gateway_key, self.settings,
                                 encrypt=not plain)

    def _best_head(self, raw: bytes) -> Head | None:
        """Enough of an unusable request's Head to address the error reply, if anything."""
        try:
            return env.peek_head(raw, self.settings)
        except EnvelopeError:
            pass
        except Exception:  # noqa: BLE001  (any garbage at all)
            return None

        def grab(tag: bytes, pattern: bytes) -> str:
            m = re.search(b"<" + tag + b">(" + pattern + b")</" + tag + b">", raw[:8192])
            return m.group(1).decode("ascii") if m else ""

        tx = grab(b"TxCode", rb"[A-Z]{2}[0-9]{2}")
        msg_id = grab(b"MsgId", rb"[A-Za-z0-9]{1,32}")
        if not tx and not msg_id:
            return None
        return Head(tx_code=tx, sender_id=grab(b"SenderId", rb"[A-Za-z0-9_-]{1,64}")
                    or self.client_id or "", receiver_id=self.bank_id, msg_id=msg_id,
                    tx_date="", tx_time="")

    def _number_of(self, tx_code: str, inner: bytes) -> str:
        """The request's number for an error reply, if the verified inner XML holds a valid one."""
        name = env.ERROR_REPLY_NUMBER.get(tx_code)
        if name is None:
            return ""
        try:
            root = etree.fromstring(inner, _safe_parser())
        except Exception:  # noqa: BLE001
            return ""
        found = [c for c in root if c.tag == name]
        if len(found) != 1 or len(found[0]) or not found[0].text:
            return ""
        text = found[0].text
        return text if env.IDENTIFIER_RE.fullmatch(text) else ""

    def _reply(self, tx: str, fields: dict) -> bytes:
        return env.build_reply(tx, OK, fields, encoding=self.settings.encoding)

    # --- HB01 -------------------------------------------------------------------------------

    async def _hb01(self, head: Head, f: dict) -> _Outcome:
        return _Outcome(OK, rsp=self._reply("HB01", {}))

    # --- BP01: submit a batch ---------------------------------------------------------------

    async def _bp01(self, head: Head, f: dict) -> _Outcome:
        number = f["BatchNo"]
        content = fingerprint({k: f[k] for k in ("Kind", "OrderNo", "FileSM3", "TotalCount",
                                                  "TotalAmount")})
        # A remembered number is answered from memory alone: the gateway may
        # already have removed the file of a batch that is DONE.
        try:
            rsp = await self.ledger.recall("batch", number, content)
        except Refused as e:
            return _Outcome(e.code, e.message, number=number)
        if rsp is not None:
            return _Outcome(OK, rsp=rsp, number=number, note="replay")
        plain = os.path.join(self.spool_dir, f"{number}.{uuid.uuid4().hex}.req")
        try:
            header, origs = await self._in_thread(self._take_batch_file, f, plain)
            status, rsp = await self.ledger.accept_batch(
                batch_no=number, kind=f["Kind"], order_no=f["OrderNo"], file_sm3=f["FileSM3"],
                total_count=f["TotalCount"], total_amount=f["TotalAmount"],
                payer_acct=header.payer_acct, plain_path=plain, orig_batch_nos=origs,
                content=content, at=self.clock.seconds(), date=self._today(),
                bank_id=self.bank_id, planned_reject=self._next_batch_reject,
                make_rsp=lambda bbn: self._reply("BP01", {"BatchNo": number, "BankBatchNo": bbn}),
                auto_fund=self.auto_fund)
        except (_Refusal, Refused, EnvelopeError) as e:
            _unlink(plain)
            return _Outcome(e.code, e.message, number=number)
        except BaseException:
            _unlink(plain)
            raise
        if status == "replay":
            _unlink(plain)
            return _Outcome(OK, rsp=rsp, number=number, note="replay")
        row = await self.ledger.batch(number)
        self._schedule_batch(number, row["accepted_at"])
        return _Outcome(OK, rsp=rsp, number=number, note=f"accepted as {row['bank_batch_no']}")

    def _next_batch_reject(self) -> str | None:
        # Called on the ledger thread once acceptance is certain; deque pops are atomic.
        try:
            return self._batch_rejects.popleft()
        except IndexError:
            return None

    def _next_refund_reject(self) -> str | None:
        try:
            return self._refund_rejects.popleft()
        except IndexError:
            return None

    def _take_batch_file(self, f: dict, plain: str) -> tuple[files.BatchHeader, set[str]]:
        """Decrypt, digest-check, verify and parse `/in/{FileName}` (blocking).

        Leaves the plaintext at *plain*; raises _Refusal or EnvelopeError.
        """
        name = f["FileName"]
        path = os.path.join(self.in_dir, name)
        sig_path = path + ".sig"
        for p, what in ((path, name), (sig_path, name + ".sig")):
            if not os.path.isfile(p):
                raise _Refusal("E006", f"file {what} is not in /in")
        size = os.path.getsize(path)
        if size > self.max_file_bytes:
            raise _Refusal("E999", f"file {name}: {size} bytes is over the "
                           f"{self.max_file_bytes}-byte limit")
        if size == 0 or size % sm.SM4_BLOCK:
            raise _Refusal("E006", f"file {name}: {size} bytes is not SM4-CBC ciphertext")
        with open(sig_path, "rb") as fs:
            signature = fs.read(MAX_SIG_BYTES + 1)
        key, iv = env.unwrap_key(self.bank_key, f["FileEncKey"], self.settings, "FileEncKey")
        dec = sm.SM4CBCDecryptor(key, iv)
        digest = sm.SM3Hasher()
        signed = sm.SM2DigestHasher(self.gateway_key, self.settings.uid)
        with open(path, "rb") as fi, open(plain, "wb") as fo:
            def out(data: bytes) -> None:
                digest.update(data)
                signed.update(data)
                fo.write(data)
            while chunk := fi.read(CHUNK):
                out(dec.update(chunk))
            try:
                out(dec.finalize())
            except sm.CryptoError as e:
                raise _Refusal("E006", f"file {name} does not decrypt under FileEncKey: "
                               f"{e}") from None
        if digest.hexdigest() != f["FileSM3"]:
            raise _Refusal("E006", f"file {name}: SM3 {digest.hexdigest()} is not FileSM3 "
                           f"{f['FileSM3']}")
        if len(signature) > MAX_SIG_BYTES or not sm.sm2_verify_digest(
                self.gateway_key, signed.e(), signature, der=self.settings.der):
            raise _Refusal("E006", f"file {name}.sig does not verify against the file")
        origs: set[str] = set()
        try:
            with open(plain, "rb") as fp:
                header, lines = files.read_batch_file(fp, unit=self.amount_unit,
                                                      encoding=self.settings.encoding,
                                                      kind=f["Kind"])
                for field, value in (("BatchNo", f["BatchNo"]), ("OrderNo", f["OrderNo"])):
                    found = getattr(header, "batch_no" if field == "BatchNo" else "order_no")
                    if found != value:
                        raise _Refusal("E999", f"file {name} line 1, field {field}: {found} "
                                       f"is not the message's {value}")
                for line in lines:
                    if line.orig_batch_no:
                        origs.add(line.orig_batch_no)
        except files.FileFormatError as e:
            raise _Refusal(e.code, f"file {name} {e}") from None
        if header.total_count != f["TotalCount"]:
            raise _Refusal("E003", f"file {name} line 1, field TotalCount: "
                           f"{header.total_count} is not the message's {f['TotalCount']}")
        if header.total_amount != f["TotalAmount"]:
            raise _Refusal("E003", f"file {name} line 1, field TotalAmount: "
                           f"{header.total_amount} fen is not the message's "
                           f"{f['TotalAmount']} fen")
        return header, origs

    # --- processing a batch -----------------------------------------------------------------

    def _later(self, key: tuple[str, str], delay: float, fn: Callable[[], Awaitable[Any]]) -> None:
        def fire() -> None:
            self._timers.pop(key, None)
            self._track(defer.ensureDeferred(fn()))
        old = self._timers.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[key] = self.clock.callLater(max(0.0, delay), fire)

    def _schedule_batch(self, batch_no: str, accepted_at: float) -> None:
        elapsed = self.clock.seconds() - accepted_at
        half = self.processing_delay_s / 2
        self._later(("proc", batch_no), half - elapsed,
                    lambda: self.ledger.start_processing(batch_no))
        self._later(("done", batch_no), self.processing_delay_s - elapsed,
                    lambda: self._process_batch(batch_no))

    async def _process_batch(self, batch_no: str) -> None:
        row = await self.ledger.start_processing(batch_no)
        if row is None or row["status"] != "PROC":
            return
        if row["planned_reject"]:
            code = row["planned_reject"]
            await self.ledger.reject_batch(batch_no, code, reject_text(code), self._today())
            log.info("batch {batch_no} rejected {code}", batch_no=batch_no, code=code)
            return
        proc_date = self._today()
        result = await self._in_thread(self._produce_result, row, proc_date)
        h: files.ResultHeader = result["header"]
        failures: list[tuple] = []
        done = await self.ledger.finish_batch(
            batch_no, credits=self._credit_rows(result["plain"], failures), failures=failures,
            result_file=result["name"], result_sm3=result["sm3"],
            result_enc_key=result["enc_key"], proc_date=proc_date, succ_cnt=h.succ_cnt,
            succ_amt=h.succ_amt, fail_cnt=h.fail_cnt, fail_amt=h.fail_amt)
        if done:
            await self._in_thread(self._publish, result["name"])
            log.info("batch {batch_no} DONE: {s} paid, {f} failed", batch_no=batch_no,
                     s=h.succ_cnt, f=h.fail_cnt)

    def _serial(self, bank_batch_no: str, seq: int) -> str:
        return f"{bank_batch_no}-{seq}"

    def _produce_result(self, row: dict, proc_date: str) -> dict:
        """Decide every item and write `{BatchNo}.rsp` under a temporary name in /out (blocking)."""
        unit, encoding = self.amount_unit, self.settings.encoding
        batch_no, bank_batch_no = row["batch_no"], row["bank_batch_no"]

        def items():
            with open(row["plain_path"], "rb") as fp:
                _, lines = files.read_batch_file(fp, unit=unit, encoding=encoding,
                                                 kind=row["kind"])
                for line in lines:
                    yield line, outcome_for_account(line.acct_no)

        # Two passes: the H line carries the totals, and a million items are
        # not held in memory.
        succ = [0, 0]
        fail = [0, 0]
        for line, code in items():
            c = succ if code == SUCCESS else fail
            c[0] += 1
            c[1] += line.amount
        header = files.ResultHeader(batch_no, bank_batch_no, succ[0] + fail[0],
                                    succ[1] + fail[1], succ[0], succ[1], fail[0], fail[1],
                                    proc_date)
        name = f"{batch_no}.rsp"
        plain = os.path.join(self.results_dir, name)

        def write(out) -> None:
            w = files.ResultFileWriter(out, header, unit=unit, encoding=encoding)
            for line, code in items():
                if code == SUCCESS:
                    w.write_line(files.ResultLine(line.seq, line.acct_no, line.amount, "S",
                                                  SUCCESS, SUCCESS_TEXT,
                                                  self._serial(bank_batch_no, line.seq),
                                                  proc_date))
                else:
                    w.write_line(files.ResultLine(line.seq, line.acct_no, line.amount, "F", code,
                                                  REASONS[code][0], "", proc_date))
            w.close()

        mangle = self._result_mangles.popleft() if self._result_mangles else None
        if mangle is None:
            sm3, enc_key = self._write_out_file(name, write, keep_plain=plain)
        else:
            # The bank's own records keep the true results; only what the gateway gets is damaged.
            with open(plain, "wb") as f:
                write(f)
            with open(plain, "rb") as f:
                damaged = mangle(f.read())
            sm3, enc_key = self._write_out_file(name, lambda out: out.write(damaged))
        if self._bad_signatures:
            self._bad_signatures -= 1
            sig = os.path.join(self.out_dir, f".{name}.sig.part")
            with open(sig, "r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([first[0] ^ 0x01]))
        return {"header": header, "name": name, "plain": plain, "sm3": sm3, "enc_key": enc_key}

    def _credit_rows(self, plain: str, failures: list):
        """Credits of a result file for the ledger; F lines are gathered into *failures*."""
        with open(plain, "rb") as fp:
            _, lines = files.read_result_file(fp, unit=self.amount_unit,
                                              encoding=self.settings.encoding)
            for line in lines:
                if line.status == "S":
                    yield line.seq, line.acct_no, line.amount, line.bank_serial, line.post_date
                else:
                    failures.append((line.seq, line.acct_no, line.amount, line.reason_code))

    def _write_out_file(self, name: str, write: Callable[[Any], None],
                        keep_plain: str | None = None) -> tuple[str, str]:
        """Write a file for the gateway under temporary names in /out: SM4-encrypted under a
        fresh key, with its `.sig`. Returns (FileSM3, FileEncKey); `_publish` renames."""
        key, iv = os.urandom(16), os.urandom(16)
        digest = sm.SM3Hasher()
        signed = sm.SM2DigestHasher(self.bank_key.public_key, self.settings.uid)
        part = os.path.join(self.out_dir, f".{name}.part")
        enc = sm.SM4CBCEncryptor(key, iv)
        with open(part, "wb") as out:
            plain_out = open(keep_plain, "wb") if keep_plain else None
            try:
                write(_Tee(out, enc, (digest, signed), plain_out))
            finally:
                if plain_out is not None:
                    plain_out.close()
            out.write(enc.finalize())
            out.flush()
            os.fsync(out.fileno())
        signature = sm.sm2_sign_digest(self.bank_key, signed.e(), der=self.settings.der)
        with open(os.path.join(self.out_dir, f".{name}.sig.part"), "wb") as out:
            out.write(signature)
            out.flush()
            os.fsync(out.fileno())
        return digest.hexdigest(), env.wrap_key(self.gateway_key, key + iv, self.settings)

    def _publish(self, name: str) -> None:
        """The `.sig` into place first, then the file, each by one rename."""
        for n in (name + ".sig", name):
            os.replace(os.path.join(self.out_dir, f".{n}.part"), os.path.join(self.out_dir, n))

    def _tidy_out(self) -> None:
        """After a restart: leftover temporary result files are published if their batch is
        DONE (the crash fell between commit and rename), else removed (processing redoes them)."""
        for entry in os.listdir(self.out_dir):
            m = re.fullmatch(r"\.(.+\.rsp)\.part", entry)
            if not m:
                continue
            name = m.group(1)
            row = self.ledger.batch_now(name[:-4])
            if row is not None and row["status"] == "DONE" \
                    and os.path.exists(os.path.join(self.out_dir, f".{name}.sig.part")):
                self._publish(name)
            else:
                for n in (entry, f".{name}.sig.part"):
                    _unlink(os.path.join(self.out_dir, n))

    # --- BQ01: batch status -----------------------------------------------------------------

    async def _bq01(self, head: Head, f: dict) -> _Outcome:
        number = f["BatchNo"]
        row = await self.ledger.batch(number)
        if row is None:
            return _Outcome("E007", f"no batch {number}", number=number)
        fields: dict[str, Any] = {"BatchNo": number, "Status": row["status"]}
        if row["status"] == "DONE":
            fields.update(ResultFile=row["result_file"], FileSM3=row["result_sm3"],
                          FileEncKey=row["result_enc_key"])
            returns = await self.ledger.returns_of(number)
            if returns:
                fields["Returns"] = [{"Seq": r["seq"], "Amount": r["amount"],
                                      "ReasonCode": r["reason"], "ReturnSerial": r["serial"],
                                      "ReturnDate": r["return_date"]} for r in returns]
        elif row["status"] == "RJCT":
            fields.update(RejectCode=row["reject_code"], RejectMsg=row["reject_msg"])
        return _Outcome(OK, rsp=self._reply("BQ01", fields), number=number,
                        note=row["status"])

    # --- RF01 / RQ01: refunds ---------------------------------------------------------------

    async def _rf01(self, head: Head, f: dict) -> _Outcome:
        number = f["RefundNo"]
        items = sorted(f["Items"], key=lambda it: it["Seq"])
        content = fingerprint({"OrderNo": f["OrderNo"], "TotalCount": f["TotalCount"],
                               "TotalAmount": f["TotalAmount"], "Items": items})
        try:
            status, rsp = await self.ledger.accept_refund(
                refund_no=number, order_no=f["OrderNo"], total_count=f["TotalCount"],
                total_amount=f["TotalAmount"], items=items, content=content,
                at=self.clock.seconds(), planned_reject=self._next_refund_reject,
                make_rsp=lambda: self._reply("RF01", {"RefundNo": number}))
        except Refused as e:
            return _Outcome(e.code, e.message, number=number)
        if status == "ok":
            row = await self.ledger.refund(number)
            self._schedule_refund(number, row["accepted_at"])
        return _Outcome(OK, rsp=rsp, number=number, note="" if status == "ok" else status)

    def _schedule_refund(self, refund_no: str, accepted_at: float) -> None:
        elapsed = self.clock.seconds() - accepted_at
        self._later(("refund", refund_no), self.processing_delay_s - elapsed,
                    lambda: self.ledger.finish_refund(refund_no, self._today(), self.bank_id))

    async def _rq01(self, head: Head, f: dict) -> _Outcome:
        number = f["RefundNo"]
        row = await self.ledger.refund(number)
        if row is None:
            return _Outcome("E007", f"no refund {number}", number=number)
        fields: dict[str, Any] = {"RefundNo": number, "Status": row["status"]}
        if row["status"] == "DONE":
            fields.update(RefundSerial=row["refund_serial"], ReturnedTo=row["returned_to"],
                          RefundAmount=row["total_amount"])
        elif row["status"] == "RJCT":
            fields.update(RejectCode=row["reject_code"], RejectMsg=row["reject_msg"])
        return _Outcome(OK, rsp=self._reply("RQ01", fields), number=number, note=row["status"])

    # --- DP01: disputes ---------------------------------------------------------------------

    async def _dp01(self, head: Head, f: dict) -> _Outcome:
        number = f["DisputeNo"]
        seqs = sorted(f["Seqs"])
        content = fingerprint({"BatchNo": f["BatchNo"], "Seqs": seqs, "Reason": f["Reason"]})
        try:
            status, rsp = await self.ledger.accept_dispute(
                dispute_no=number, batch_no=f["BatchNo"], seqs=seqs, reason=f["Reason"],
                content=content, at=self.clock.seconds(),
                make_rsp=lambda: self._reply("DP01", {"DisputeNo": number, "Accepted": "Y"}))
        except Refused as e:
            return _Outcome(e.code, e.message, number=number)
        return _Outcome(OK, rsp=rsp, number=number, note="" if status == "ok" else status)

    # --- RC01: statements -------------------------------------------------------------------

    async def _rc01(self, head: Head, f: dict) -> _Outcome:
        period = f["Period"]
        first, last = _period_dates(period)
        batches, refunds = await self.ledger.statement_rows(first, last)
        name = f"STMT_{period}.txt"
        payer = self.payer_acct or (batches[0]["payer_acct"] if batches else "0" * 8)
        statement = files.Statement(
            files.StatementHeader(
                period, payer, sum(b["succ_cnt"] for b in batches),
                sum(b["succ_amt"] for b in batches), sum(b["return_cnt"] for b in batches),
                sum(b["return_amt"] for b in batches), sum(r["total_count"] for r in refunds),
                sum(r["total_amount"] for r in refunds)),
            [files.StatementBatch(b["batch_no"], b["order_no"], b["total_count"],
                                  b["total_amount"], b["succ_cnt"], b["succ_amt"], b["fail_cnt"],
                                  b["fail_amt"], b["return_cnt"], b["return_amt"])
             for b in batches],
            [files.StatementRefund(r["refund_no"], r["order_no"], r["total_count"],
                                   r["total_amount"], r["refund_serial"]) for r in refunds])

        def write(out) -> None:
            files.write_statement_file(out, statement, unit=self.amount_unit,
                                       encoding=self.settings.encoding)

        def make() -> tuple[str, str]:
            result = self._write_out_file(name, write)
            self._publish(name)
            return result

        sm3, enc_key = await self._in_thread(make)
        return _Outcome(OK, rsp=self._reply("RC01", {"Period": period, "StatementFile": name,
                                                     "FileSM3": sm3, "FileEncKey": enc_key}),
                        note=f"{len(batches)} batches, {len(refunds)} refunds")


# --- the TCP side ---------------------------------------------------------------------------

class _BankProtocol(protocol.Protocol):
    """Feeds a FrameDecoder and hands the first complete body to the bank; one reply, then close."""

    def __init__(self, bank: CnBankSimulator) -> None:
        self.bank = bank
        self._decoder = framing.FrameDecoder(bank.frame_width, bank.max_frame_bytes)
        self._answered = False
        self._timer = None

    def connectionMade(self) -> None:
        self.bank._connections.add(self)
        self._timer = self.bank.reactor.callLater(self.bank.read_timeout_s, self._idle)

    def _idle(self) -> None:
        self._timer = None
        log.info("cnbank: no complete request within {s} s; closing", s=self.bank.read_timeout_s)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return  # one request per connection: anything after it is ignored
        try:
            bodies = self._decoder.feed(data)
        except framing.FrameError as e:
            if e.bodies:
                bodies = e.bodies
            else:
                self._begin()
                self.bank.frame_error_reply(str(e)).addCallback(self._send)
                return
        if bodies:
            self._begin()
            self.bank.handle(bodies[0]).addCallback(self._send)

    def _begin(self) -> None:
        self._answered = True
        self.transport.pauseProducing()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _send(self, reply: bytes | None) -> None:
        if reply is not None:
            self.transport.write(framing.encode_frame(reply, self.bank.frame_width))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.bank._connections.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _BankFactory(protocol.Factory):
    noisy = False  # one connection per message: "starting factory" lines would drown the log

    def __init__(self, bank: CnBankSimulator) -> None:
        self.bank = bank

    def buildProtocol(self, addr: Any) -> _BankProtocol:
        return _BankProtocol(self.bank)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["CnBankSimulator"]
