"""The `iso20022` bank simulator: a strict agent bank taking pain.001 over HTTPS with mutual TLS.

It answers the gateway as shared/spec/iso20022.md says a bank does, with the wire
readings in docs/spec-readings.md: `POST /payments` takes one pain.001 only if it is
well-formed and XSD-valid (else 400 FF01 naming the line, nothing recorded), is
idempotent on MsgId (the same bytes again: 200 with the first answer; other bytes:
409 DU01), and answers 202 before processing. Processing checks the gateway's XMLDSig
signature against the pinned certificates (RJCT DS0B), the group header's count and
control sum (RJCT AM10) and the funds hook (RJCT AM04), then decides each transfer by
`outcome_for_account`; the resulting pain.002 (and for a refund a camt.054 debit entry)
is put in `GET /reports` after `result_delay_s` on the clock, signed with the bank's key.
A TLS client without a certificate from the bank's CA never reaches HTTP.

A pain.001 posted again with the same bytes after it was processed (the gateway's status
question) is answered 200 with the first answer, and the reports it produced are put in the
feed again (new cursors), so a gateway that had to refuse one of them learns the outcome again.

Validation, signatures and XML run in threads; the ledger is guarded by a lock, so the
reactor only moves bytes. Test hooks: `reject_next_payment`, `return_item`, `statement`,
`mangle_next_report`, `hostile_next_report` (DOCTYPE, lone surrogate, oversized),
`inject_report` (any text as a report), `inject_pain002` (a signed, valid pain.002 naming
any MsgId / OrgnlMsgNmId), `pad_pages` (pages over a cap); the ledger reads `credits`,
`double_credits`, `payments_received`, `requests`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from lxml import etree
from twisted.internet import defer, ssl
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import resource, server

from protocols import iso20022 as iso
from protocols import xmldsig
from protocols.cnbank_envelope import CN_TZ
from simulators import sftp_server
from simulators.outcomes import REASONS, SUCCESS, outcome_for_account

log = Logger()

DEFAULT_MAX_BODY = 64 << 20
MAX_PAGE = 1000
KINDS = ("PAY", "RETRY", "REFUND")


class _Rejected(Exception):
    """The whole pain.001 is rejected with an ISO status reason code."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


@dataclass
class _Payment:
    msg_id: str
    digest: str
    answer: dict
    received_at: float
    kind: str = ""
    group_status: str = ""           # set once processed: ACSC / PART / RJCT
    reports: list = field(default_factory=list)   # what processing put in the feed


@dataclass
class _Credit:
    """One transfer the bank credited to a beneficiary's account."""

    end_to_end_id: str
    instr_id: str
    msg_id: str
    account: str
    name: str
    amount: int
    serial: str
    booked: str                     # YYYY-MM-DD
    returned: str | None = None     # the return's NtryRef once returned


@dataclass
class _Entry:
    """One booking on the holding account (camt.053/054)."""

    ref: str
    credit: bool                    # CRDT (money back in) or DBIT (money out)
    amount: int
    booked: str                     # YYYY-MM-DD
    end_to_end_id: str | None = None
    instr_id: str | None = None
    return_reason: str | None = None
    info: str = ""
    counterparty: dict = field(default_factory=dict)


class _Ledger:
    """The bank's books, in memory: payments by MsgId, credits, holding-account entries,
    reports, and the requests seen. Every method takes the lock: callers are threads."""

    def __init__(self, opening_balance: int):
        self.lock = threading.RLock()
        self.payments: dict[str, _Payment] = {}
        self.received: collections.Counter[str] = collections.Counter()
        self.credits: list[_Credit] = []
        self.by_e2e: dict[str, list[_Credit]] = collections.defaultdict(list)
        self.entries: list[_Entry] = []
        self.opening_balance = opening_balance
        self.reports: list[tuple[str, str]] = []       # (type, document)
        self.requests: list[tuple[str, str, int]] = []
        self.serial = 0

    def next_serial(self, prefix: str) -> str:
        with self.lock:
            self.serial += 1
            return f"{prefix}{self.serial:010d}"


class IsoBankSimulator:
    """One simulated agent bank (代发金融机构) of the `iso20022` dialect over HTTPS.

    *bank_key_pem*/*bank_cert_pem* sign every report; *gateway_certs* are the gateway's
    pinned XMLDSig certificates; the holding account is the debtor of every payment.
    *clock* (default: the reactor) drives business time and the result delay.
    """

    def __init__(self, reactor: Any, *, bank_key_pem: bytes, bank_cert_pem: bytes,
                 gateway_certs: list[bytes], holding_account: str, holding_name: str,
                 result_delay_s: float = 0.0, sign: bool = True, clock: Any = None,
                 max_body: int = DEFAULT_MAX_BODY, opening_balance: int = 0,
                 bank_bic: str | None = None, max_transfers_per_message: int = 0,
                 max_message_bytes: int = 0) -> None:
        if not gateway_certs:
            raise ValueError("gateway_certs: at least one pinned certificate is needed")
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.bank_key_pem = bank_key_pem
        self.bank_cert_pem = bank_cert_pem
        self.pinned = [(c, None) for c in gateway_certs]
        self.holding_account = holding_account
        self.holding_name = holding_name
        self.result_delay_s = result_delay_s
        self.sign = sign
        self.max_body = max_body
        self.bank_bic = bank_bic
        # iso20022.md: the bank's per-message limits (0: none); an over-limit pain.001 is
        # refused whole (400 FF01), never partly taken.
        self.max_transfers_per_message = max_transfers_per_message
        self.max_message_bytes = max_message_bytes
        self.ledger = _Ledger(opening_balance)
        self.internal_errors = 0
        self._rejects: collections.deque[str] = collections.deque()
        self._timers: set[Any] = set()
        self._work: set[defer.Deferred] = set()
        self._ports: list[Any] = []
        self._site: _Site | None = None
        self._mangle: Callable[[str], str] | None = None
        self._padding = (0, 0)           # (bytes, only when the limit asked is over this)
        self._sftp_root: str | None = None

    # --- life cycle -----------------------------------------------------------------------

    def listen_https(self, port: int = 0, *, server_key_pem: bytes, server_cert_pem: bytes,
                     ca_pem: bytes, interface: str = "127.0.0.1") -> Any:
        """Serve HTTPS requiring a client certificate issued by *ca_pem*; the IListeningPort."""
        mine = ssl.PrivateCertificate.loadPEM(server_key_pem + b"\n" + server_cert_pem)
        options = ssl.CertificateOptions(privateKey=mine.privateKey.original,
                                         certificate=mine.original,
                                         trustRoot=ssl.Certificate.loadPEM(ca_pem))
        self._site = _Site(_BankResource(self), self)
        listening = self.reactor.listenSSL(port, self._site, options, interface=interface)
        self._ports.append(listening)
        log.info("iso20022 bank simulator on https://{host}:{port}", host=interface,
                 port=listening.getHost().port)
        return listening

    def listen_sftp(self, root: str, port: int = 0, *, authorized_keys: list[str | bytes],
                    host_key_path: str, username: str = "gateway", interface: str = "127.0.0.1") -> Any:
        """Serve the same bank over SFTP (iso20022.md, Transport): a pain.001 renamed into `/in`
        whole is taken as if POSTed; every report is also written to `/out` as `{cursor:010d}.xml`
        (under a temporary name, then renamed). Returns the IListeningPort."""
        self._sftp_root = root
        for d in ("in", "out"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        factory = sftp_server.make_sftp_server_factory(root, username, list(authorized_keys), host_key_path,
                                                       on_operation=self._sftp_operation)
        listening = factory.listen(self.reactor, port, interface)
        self._ports.append(listening)
        log.info("iso20022 bank simulator files on sftp://{user}@{host}:{port}", user=username,
                 host=interface, port=listening.getHost().port)
        return listening

    def _sftp_operation(self, op: str, *paths: Any) -> None:
        if op != "rename":
            return
        new = paths[1].decode() if isinstance(paths[1], bytes) else paths[1]
        if not (new.startswith("/in/") and new.endswith(".xml")):
            return
        with open(os.path.join(self._sftp_root, new.lstrip("/")), "rb") as f:
            body = f.read(self.max_body + 1)

        async def take() -> None:
            status, answer = await self.post_payments(body)
            log.info("iso20022 bank: file {name} taken over SFTP: {status} {answer}", name=new,
                     status=status, answer=answer)
        self._track(defer.ensureDeferred(take()))

    def stop(self) -> defer.Deferred:
        """Stop listening, drop connections, cancel pending reports, finish running work."""

        async def go() -> None:
            for p in self._ports:
                await defer.maybeDeferred(p.stopListening)
            self._ports.clear()
            if self._site is not None:
                for ch in list(self._site.channels):
                    # Over TLS the site's protocol may be the generic wrapper of the channel.
                    transport = getattr(ch, "transport", None) or getattr(
                        getattr(ch, "_channel", None), "transport", None)
                    if transport is not None:
                        transport.abortConnection()
            for t in list(self._timers):
                if t.active():
                    t.cancel()
            self._timers.clear()
            await self.settle()
        return defer.ensureDeferred(go())

    def settle(self) -> defer.Deferred:
        """Fires once no processing started so far is still running (delayed reports may
        still be waiting on the clock)."""
        pending = list(self._work)
        if not pending:
            return defer.succeed(None)
        return defer.DeferredList(pending).addCallback(lambda _: self.settle())

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        def failed(f):
            self.internal_errors += 1
            log.failure("iso20022 bank simulator: background work failed", f)

        d.addErrback(failed)
        self._work.add(d)
        d.addBoth(lambda r: (self._work.discard(d), r)[1])
        return d

    def _in_thread(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args, **kw)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), tz=CN_TZ)

    # --- test hooks and reads -----------------------------------------------------------

    def reject_next_payment(self, code: str = "AM04") -> None:
        """The next pain.001 taken is rejected whole with *code* (AM04: funds not available)."""
        self._rejects.append(code)

    def return_item(self, end_to_end_id: str, reason: str = "AC04") -> defer.Deferred:
        """The beneficiary's bank sends back a credited transfer: a camt.054 CRDT entry on the
        holding account naming it. ValueError if it was never credited or is returned already."""
        return self._in_thread(self._return_item, end_to_end_id, reason)

    def statement(self, day: date) -> defer.Deferred:
        """Put a camt.053 for the holding account for *day* in the reports; fires with it."""
        return self._in_thread(self._statement, day)

    def credits(self, end_to_end_id: str | None = None) -> list[dict]:
        """Every credit (or those of one EndToEndId), oldest first, as dicts."""
        with self.ledger.lock:
            rows = self.ledger.credits if end_to_end_id is None else self.ledger.by_e2e.get(end_to_end_id, [])
            return [dict(c.__dict__) for c in rows]

    def double_credits(self) -> list[str]:
        """EndToEndIds credited twice without a return in between: must stay empty."""
        with self.ledger.lock:
            twice = []
            for e2e, rows in self.ledger.by_e2e.items():
                live = 0
                for c in rows:
                    live += 1
                    if live > 1:
                        twice.append(e2e)
                        break
                    if c.returned is not None:
                        live -= 1
            return twice

    def payments_received(self, msg_id: str) -> int:
        """How many times a pain.001 with this MsgId was taken as a new payment (0 or 1)."""
        with self.ledger.lock:
            return self.ledger.received[msg_id]

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every HTTP request answered, in order."""
        with self.ledger.lock:
            return list(self.ledger.requests)

    def report_count(self) -> int:
        with self.ledger.lock:
            return len(self.ledger.reports)

    # --- HTTP -------------------------------------------------------------------------------

    def _record(self, method: str, path: str, status: int) -> None:
        with self.ledger.lock:
            self.ledger.requests.append((method, path, status))

    async def post_payments(self, body: bytes) -> tuple[int, dict]:
        """A pain.001 arrives: (status, JSON answer)."""
        try:
            msg_id, digest = await self._in_thread(self._take, body)
        except iso.SchemaError as e:
            return 400, {"error": "FF01", "message": _schema_message(e)}
        except iso.Iso20022Error as e:
            return 400, {"error": "FF01", "message": str(e)}
        with self.ledger.lock:
            seen = self.ledger.payments.get(msg_id)
            if seen is not None:
                if seen.digest == digest:
                    if seen.reports:   # asked again once processed: its reports again
                        self._append_reports(list(seen.reports))
                    return 200, seen.answer
                return 409, {"error": "DU01",
                             "message": f"MsgId {msg_id} was taken before with other content"}
            p = _Payment(msg_id, digest, {"msg_id": msg_id, "status": "RCVD"}, self.clock.seconds())
            self.ledger.payments[msg_id] = p
            self.ledger.received[msg_id] += 1
        reject = self._rejects.popleft() if self._rejects else None
        self._track(defer.ensureDeferred(self._process(p, body, reject)))
        return 202, p.answer

    def get_reports(self, since: str | None, limit: int) -> dict:
        start = int(since) if since is not None else 0
        with self.ledger.lock:
            page = self.ledger.reports[start:start + limit]
        out = [{"cursor": str(start + i + 1), "type": t, "document": d}
               for i, (t, d) in enumerate(page)]
        answer = {"reports": out, "next": out[-1]["cursor"] if out else str(start)}
        size, over = self._padding
        if size and limit > over:
            answer["padding"] = "p" * size
        return answer

    # --- payments ---------------------------------------------------------------------------

    def _take(self, body: bytes) -> tuple[str, str]:
        """In a thread: XSD validation, a full read (what the XSD cannot say: currency, fen,
        one PmtInf, the kind of payment), then the MsgId and the body's SHA-256. Counts and
        sums that do not add up are not refused here: they are answered AM10 in a pain.002."""
        if self.max_message_bytes and len(body) > self.max_message_bytes:
            raise iso.Iso20022Error("Document", f"{len(body)} bytes, over this bank's limit of "
                                                f"{self.max_message_bytes} bytes a message")
        _well_formed(body)
        iso.validate(io.BytesIO(body), iso.PAIN001)
        header, transfers = iso.read_pain001(body)
        _kind(header)
        count = 0
        try:
            for _ in transfers:
                count += 1
        except iso.SchemaError:
            raise
        except iso.Iso20022Error as e:
            if not e.element.endswith(("/NbOfTxs", "/CtrlSum")):
                raise
        if self.max_transfers_per_message and count > self.max_transfers_per_message:
            raise iso.Iso20022Error("GrpHdr/NbOfTxs", f"{count} transfers, over this bank's limit of "
                                                      f"{self.max_transfers_per_message} a message")
        if _kind(header) == "REFUND" and count != 1:
            raise iso.Iso20022Error("PmtInf/CdtTrfTxInf", f"a refund has one transfer, not {count}")
        return header.msg_id, hashlib.sha256(body).hexdigest()

    async def _process(self, p: _Payment, body: bytes, reject: str | None) -> None:
        now = self._now()
        reports = await self._in_thread(self._decide, p, body, reject, now)
        p.reports = list(reports)
        self._publish(reports)

    def _append_reports(self, reports: list[tuple[str, str]]) -> None:
        """Add reports to the feed; with SFTP on, also as files in /out (whole, then renamed)."""
        with self.ledger.lock:
            first = len(self.ledger.reports) + 1
            self.ledger.reports.extend(reports)
            if self._sftp_root is not None:
                out = os.path.join(self._sftp_root, "out")
                for i, (_kind, doc) in enumerate(reports):
                    tmp = os.path.join(out, f".part-{first + i:010d}")
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.write(doc)
                    os.replace(tmp, os.path.join(out, f"{first + i:010d}.xml"))

    def mangle_next_report(self, fn: Callable[[str], str]) -> None:
        """Test hook: the next report published goes through *fn* (after signing), e.g. to tamper."""
        self._mangle = fn

    def hostile_next_report(self, case: str, size: int = 0) -> None:
        """Test hook: the next report published (a real one, signed) is made hostile:
        "doctype" (a DTD with an entity, referenced in MsgId), "surrogate" (a lone surrogate
        in the JSON string, served as the escape \\ud800), "oversized" (padded with a comment
        to *size* characters)."""
        def doctype(doc: str) -> str:
            decl, rest = doc.split("?>", 1) if doc.startswith("<?xml") else ("", doc)
            head = decl + "?>" if decl else ""
            rest = rest.replace("<MsgId>", "<MsgId>&boom;", 1)
            return head + '\n<!DOCTYPE Document [<!ENTITY boom "boom">]>' + rest

        def surrogate(doc: str) -> str:
            return doc.replace("<MsgId>", "<MsgId>\ud800", 1)

        def oversized(doc: str) -> str:
            return doc + "<!--" + "x" * max(0, size - len(doc) - 7) + "-->"
        self._mangle = {"doctype": doctype, "surrogate": surrogate, "oversized": oversized}[case]

    def inject_report(self, kind: str, document: str) -> None:
        """Test hook: put *document* (any text) in the feed as a report of type *kind*, now."""
        self._append_reports([(kind, document)])

    def inject_pain002(self, orig_msg_id: str, orig_msg_nm_id: str = iso.PAIN001,
                       group_status: str = "ACSC") -> defer.Deferred:
        """Test hook: a signed, XSD-valid pain.002 naming *orig_msg_id* / *orig_msg_nm_id* (a
        MsgId the gateway never sent, or the wrong message name) put in the feed; fires with it."""
        def make() -> str:
            header = iso.PaymentInitiation(
                msg_id=orig_msg_id, created_at="", nb_of_txs=0, ctrl_sum_fen=0, initiating_party="",
                debtor_name="", debtor_account=self.holding_account, debtor_agent_bic=None,
                debtor_agent_id="", requested_date="", pmt_inf_id=f"{orig_msg_id}/PAY")
            kind, doc = self._pain002(header, self._now(), group_status, [])
            if orig_msg_nm_id != iso.PAIN001:
                kind, doc = self._document(iso.PAIN002, lambda out: iso.write_pain002(out, iso.StatusReport(
                    msg_id=self.ledger.next_serial("P2"),
                    created_at=self._now().isoformat(timespec="seconds"), orig_msg_id=orig_msg_id,
                    orig_msg_nm_id=orig_msg_nm_id, group_status=group_status, group_reason=None,
                    group_info=None), []))
            self._append_reports([(kind, doc)])
            return doc
        return self._in_thread(make)

    def pad_pages(self, size: int, when_limit_over: int = 0) -> None:
        """Test hook: every feed page asked with a limit over *when_limit_over* carries *size*
        bytes of padding (an extra field), to be over a page cap; size 0 stops it."""
        self._padding = (size, when_limit_over)

    def _publish(self, reports: list[tuple[str, str]]) -> None:
        mangle = self._mangle
        if mangle is not None and reports:
            self._mangle = None
            reports = [(reports[0][0], mangle(reports[0][1]))] + list(reports[1:])

        def put() -> None:
            self._append_reports(reports)
        if self.result_delay_s <= 0:
            put()
            return
        timer = None

        def fire() -> None:
            self._timers.discard(timer)
            put()
        timer = self.clock.callLater(self.result_delay_s, fire)
        self._timers.add(timer)

    def _document(self, kind: str, write: Callable[[io.BytesIO], Any]) -> tuple[str, str]:
        out = io.BytesIO()
        write(out)
        doc = out.getvalue()
        if self.sign:
            doc = xmldsig.sign_bytes(doc, self.bank_key_pem, self.bank_cert_pem)
        return kind, doc.decode("utf-8")

    def _pain002(self, header: iso.PaymentInitiation, now: datetime, group_status: str,
                 statuses: list[iso.TxStatus], reason: str | None = None,
                 info: str | None = None) -> tuple[str, str]:
        report = iso.StatusReport(
            msg_id=self.ledger.next_serial("P2"), created_at=now.isoformat(timespec="seconds"),
            orig_msg_id=header.msg_id, orig_msg_nm_id=iso.PAIN001, group_status=group_status,
            group_reason=reason, group_info=info, orig_pmt_inf_id=header.pmt_inf_id)
        return self._document(iso.PAIN002, lambda out: iso.write_pain002(out, report, statuses))

    def _camt054(self, now: datetime, entries: list[_Entry]) -> tuple[str, str]:
        n = iso.Notification(msg_id=self.ledger.next_serial("N"),
                             created_at=now.isoformat(timespec="seconds"),
                             account=self.holding_account,
                             entries=tuple(_iso_entry(e) for e in entries))
        return self._document(iso.CAMT054, lambda out: iso.write_camt054(out, n))

    def _decide(self, p: _Payment, body: bytes, reject: str | None,
                now: datetime) -> list[tuple[str, str]]:
        """In a thread: check and apply one pain.001; the reports it produces."""
        header, transfers = iso.read_pain001(body)
        p.kind = _kind(header)
        try:
            xmldsig.verify_bytes(body, self.pinned, now)
        except xmldsig.SignatureError as e:
            return self._refuse(p, header, now, "DS0B", f"signature: {e}")
        try:
            for _ in transfers:
                pass
        except iso.Iso20022Error as e:   # the counts and sums (everything else was refused with 400)
            return self._refuse(p, header, now, "AM10", str(e))
        if reject is not None:
            return self._refuse(p, header, now, reject, "refused by the test hook")
        if header.debtor_account != self.holding_account:
            return self._refuse(p, header, now, "AC02",
                                f"DbtrAcct {header.debtor_account} is not the holding account")
        _, transfers = iso.read_pain001(body)
        booked = now.date().isoformat()
        if p.kind == "REFUND":
            return self._refund(p, header, next(transfers), now, booked)
        statuses: list[iso.TxStatus] = []
        paid = failed = 0
        with self.ledger.lock:
            for t in transfers:
                code = outcome_for_account(t.creditor_account)
                if code == SUCCESS:
                    serial = self.ledger.next_serial("C")
                    c = _Credit(t.end_to_end_id, t.instr_id, header.msg_id, t.creditor_account,
                                t.creditor_name, t.amount_fen, serial, booked)
                    self.ledger.credits.append(c)
                    self.ledger.by_e2e[t.end_to_end_id].append(c)
                    self.ledger.entries.append(_Entry(serial, False, t.amount_fen, booked,
                                                      t.end_to_end_id, t.instr_id))
                    statuses.append(iso.TxStatus(t.instr_id, t.end_to_end_id, "ACSC", None, None,
                                                 t.amount_fen, t.creditor_account, None, serial))
                    paid += 1
                else:
                    text, iso_code = REASONS[code]
                    statuses.append(iso.TxStatus(t.instr_id, t.end_to_end_id, "RJCT", iso_code,
                                                 text, t.amount_fen, t.creditor_account, None, None))
                    failed += 1
            group = "ACSC" if not failed else "RJCT" if not paid else "PART"
            p.group_status = group
        log.info("iso20022 bank: {msg_id} ({kind}) {group}: {paid} paid, {failed} failed",
                 msg_id=header.msg_id, kind=p.kind, group=group, paid=paid, failed=failed)
        return [self._pain002(header, now, group, statuses)]

    def _refund(self, p: _Payment, header: iso.PaymentInitiation, t: iso.CreditTransfer,
                now: datetime, booked: str) -> list[tuple[str, str]]:
        with self.ledger.lock:
            serial = self.ledger.next_serial("R")
            entry = _Entry(serial, False, t.amount_fen, booked, t.end_to_end_id, t.instr_id,
                           counterparty={"account": t.creditor_account, "name": t.creditor_name})
            self.ledger.entries.append(entry)
            p.group_status = "ACSC"
        status = iso.TxStatus(t.instr_id, t.end_to_end_id, "ACSC", None, None, t.amount_fen,
                              t.creditor_account, None, serial)
        log.info("iso20022 bank: refund {msg_id} paid back", msg_id=header.msg_id)
        return [self._pain002(header, now, "ACSC", [status]), self._camt054(now, [entry])]

    def _refuse(self, p: _Payment, header: iso.PaymentInitiation, now: datetime, code: str,
                info: str) -> list[tuple[str, str]]:
        p.group_status = "RJCT"
        log.info("iso20022 bank: {msg_id} rejected whole: {code}", msg_id=header.msg_id, code=code)
        return [self._pain002(header, now, "RJCT", [], code, info[:500])]

    def _return_item(self, end_to_end_id: str, reason: str) -> str:
        now = self._now()
        with self.ledger.lock:
            live = [c for c in self.ledger.by_e2e.get(end_to_end_id, []) if c.returned is None]
            if not live:
                raise ValueError(f"EndToEndId {end_to_end_id}: no credited transfer to return "
                                 "(never credited, or returned already)")
            c = live[-1]
            ref = self.ledger.next_serial("T")
            c.returned = ref
            entry = _Entry(ref, True, c.amount, now.date().isoformat(), c.end_to_end_id,
                           c.instr_id, return_reason=reason)
            self.ledger.entries.append(entry)
        kind, doc = self._camt054(now, [entry])
        self._append_reports([(kind, doc)])
        return doc

    def _statement(self, day: date) -> str:
        now = self._now()
        on = day.isoformat()
        with self.ledger.lock:
            before = [e for e in self.ledger.entries if e.booked < on]
            today = [e for e in self.ledger.entries if e.booked == on]
            opening = self.ledger.opening_balance + sum(_signed(e) for e in before)
            msg_id = self.ledger.next_serial("S")
        s = iso.Statement(msg_id=msg_id, created_at=now.isoformat(timespec="seconds"),
                          stmt_id=f"{self.holding_account[-12:]}-{day:%Y%m%d}",
                          account=self.holding_account, from_date=on, to_date=on,
                          opening_fen=opening, closing_fen=opening + sum(_signed(e) for e in today),
                          entries=tuple(_iso_entry(e) for e in today))
        kind, doc = self._document(iso.CAMT053, lambda out: iso.write_camt053(out, s))
        self._append_reports([(kind, doc)])
        return doc


def _well_formed(body: bytes) -> None:
    """Refuse a document that is not well-formed XML, naming the line.

    Needed before `iso.validate`: lxml's iterparse with resolve_entities=False (as
    protocols.iso20022 parses) lets a document cut short pass without an error."""
    try:
        for _, el in etree.iterparse(io.BytesIO(body), events=("end",), no_network=True,
                                     load_dtd=False):  # libxml2's entity and depth limits stay on
            el.clear()
    except etree.XMLSyntaxError as e:
        raise iso.SchemaError(e.lineno or 0, e.msg) from None


def _kind(header: iso.PaymentInitiation) -> str:
    """PAY, RETRY or REFUND from PmtInfId = {MsgId}/{kind}."""
    prefix, _, kind = header.pmt_inf_id.rpartition("/")
    if prefix != header.msg_id or kind not in KINDS:
        raise iso.Iso20022Error("PmtInf/PmtInfId", f"{header.pmt_inf_id!r} is not "
                                f"{header.msg_id}/PAY, /RETRY or /REFUND")
    return kind


def _signed(e: _Entry) -> int:
    return e.amount if e.credit else -e.amount


def _iso_entry(e: _Entry) -> iso.Entry:
    return iso.Entry(entry_ref=e.ref, amount_fen=e.amount, credit=e.credit, booking_date=e.booked,
                     status="BOOK", end_to_end_id=e.end_to_end_id, instr_id=e.instr_id,
                     return_reason=e.return_reason, bank_ref=e.ref)


def _schema_message(e: Exception) -> str:
    line = getattr(e, "line", None)
    text = str(e)
    if line is not None and not text.startswith("line "):
        return f"line {line}: {text}"
    return text


class _CappedRequest(server.Request):
    """A request whose body may not exceed the simulator's cap: past it the client gets 413
    and the connection is closed, without the body being stored."""

    _too_big = False

    def _cap(self) -> int:
        return self.channel.site.bank.max_body

    def gotLength(self, length):  # noqa: N802
        if length is not None and length > self._cap():
            self._refuse()
            return
        self._received = 0
        super().gotLength(length)

    def handleContentChunk(self, data):  # noqa: N802
        if self._too_big:
            return
        self._received += len(data)
        if self._received > self._cap():
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._too_big = True
        self.content = io.BytesIO()
        bank = self.channel.site.bank
        path = getattr(self.channel, "_path", b"?").decode("ascii", "replace")
        command = getattr(self.channel, "_command", b"?").decode("ascii", "replace")
        bank._record(command, path.split("?")[0], 413)
        body = json.dumps({"error": "TOO_LARGE",
                           "message": f"body exceeds {bank.max_body} bytes"}).encode()
        self.channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.channel.transport.loseConnection()

    def requestReceived(self, command, path, version):  # noqa: N802
        if self._too_big:
            return
        super().requestReceived(command, path, version)


class _Site(server.Site):
    noisy = False
    requestFactory = _CappedRequest

    def __init__(self, root, bank: IsoBankSimulator):
        super().__init__(root, timeout=120)
        self.bank = bank
        self.channels: set = set()

    def buildProtocol(self, addr):  # noqa: N802
        channel = super().buildProtocol(addr)
        channels = self.channels
        lost = channel.connectionLost

        def connection_lost(reason):
            channels.discard(channel)
            return lost(reason)
        channel.connectionLost = connection_lost
        channels.add(channel)
        return channel

    def log(self, request) -> None:
        pass  # the bank records (method, path, status) itself; bodies never reach a log


class _BankResource(resource.Resource):
    isLeaf = True

    def __init__(self, bank: IsoBankSimulator):
        super().__init__()
        self.bank = bank

    def render(self, request):
        path = urlsplit(request.uri.decode("ascii", "replace")).path
        method = request.method.decode("ascii", "replace")
        if method == "POST" and path == "/payments":
            body = request.content.read()
            defer.ensureDeferred(self.bank.post_payments(body)).addCallbacks(
                lambda r: self._answer(request, method, path, *r),
                lambda f: self._fail(request, method, path, f))
            return server.NOT_DONE_YET
        if method == "GET" and path == "/reports":
            query = parse_qs(urlsplit(request.uri.decode("ascii", "replace")).query)
            since = query.get("since", [None])[0]
            limit = query.get("limit", ["100"])[0]
            if (since is not None and not since.isdigit()) or not limit.isdigit() \
                    or not 1 <= int(limit) <= MAX_PAGE:
                return self._answer(request, method, path, 400, {
                    "error": "BAD_QUERY",
                    "message": f"since must be a cursor and limit 1..{MAX_PAGE}"}, done=False)
            return self._answer(request, method, path, 200,
                                self.bank.get_reports(since, int(limit)), done=False)
        return self._answer(request, method, path, 404,
                            {"error": "NOT_FOUND", "message": f"no {method} {path}"}, done=False)

    def _answer(self, request, method: str, path: str, status: int, payload: dict,
                done: bool = True):
        try:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate (a test hook): it travels as its JSON escape
            body = json.dumps(payload).encode("ascii")
        self.bank._record(method, path, status)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if not done:
            return body
        if not request._disconnected:  # noqa: SLF001
            request.write(body)
            request.finish()
        return None

    def _fail(self, request, method: str, path: str, f) -> None:
        self.bank.internal_errors += 1
        log.failure("iso20022 bank simulator: {method} {path} failed", f, method=method, path=path)
        self._answer(request, method, path, 500, {"error": "INTERNAL", "message": "internal error"})
