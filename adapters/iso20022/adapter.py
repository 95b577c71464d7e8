"""The `iso20022` dialect behind IBankAdapter: pain.001 over HTTPS with mutual TLS (or SFTP), reports from a feed.

A batch is one pain.001.001.10 (MsgId = BatchNo, PmtInfId = BatchNo/PAY|RETRY),
validated against its XSD and signed (enveloped XMLDSig, RSA-SHA256, exclusive
c14n) before it leaves. `POST /payments` is idempotent on MsgId, so after an
unknown outcome the very same bytes are posted again as the status question
(never a new document: DU01 would follow). Results, refund confirmations, late
returns and statements come from `GET /reports?since=cursor`: each document is
XSD-validated and its signature checked against the pinned bank certificate(s)
before it is journaled and kept (IDialectStore.report_received); one that fails is journaled as
failed, alarmed and never used. The cursor moves in the same transaction.

A refund is a pain.001 of one transfer (EndToEndId = RefundNo, PmtInfId =
RefundNo/REFUND) from the holding account back to the order's original account;
it is DONE when the pain.002 says ACSC and the camt.054 shows the debit.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
from collections import OrderedDict

from sqlalchemy import Connection
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from adapters.https import HttpsBankClient, PageMalformed, PageTooLarge
from adapters.interface import (BatchItem, BatchSpec, BatchStatus, Built, IBankAdapter, ItemResult,
                                LateReturn, RefundStatus, Reply, RequestTiming, ResultSet, ResultsRefused,
                                ResultTotals, TransportError)
from adapters.interface import Entry
from adapters.link_watch import ALARM_KIND as LINK_DOWN
from adapters.link_watch import LinkWatch
from adapters.statements import entry_rows
from protocols import iso20022 as iso
from protocols import xmldsig
from protocols.iso_feed import FeedReport
from protocols.chinatime import CST

log = Logger()
PAGES_PER_SYNC = 20
PAGE_LIMIT = 100          # reports asked per page; fewer after a page too large
MAX_ASK_AGAIN = 3         # status questions per MsgId after refused reports, per run
FINAL = ("ACSC", "RJCT")
KNOWN_REPORTS = 64        # pain.002 summaries kept in memory by journal id (the most recently used)


def _type_label(kind: str) -> str:
    """The journal's message-type column for what the feed says (a bank's text: capped, marked)."""
    return kind if len(kind) <= 35 else kind[:34] + "~"


def _document_key(r: FeedReport) -> str:
    """An alarm episode's key for a refused document: its digest and size as received, so the
    same document served again (the bank repeating itself) is the same episode, not another."""
    h = hashlib.sha256(r.document if r.document is not None else r.raw).hexdigest()
    return f"sha256:{h[:40]}:{r.size or len(r.document or b'')}"


def _feed_key(since: str | None) -> str:
    return (since or "(start)")[:64]


def statement_period(from_date: str, to_date: str) -> str:
    """A camt.053's period as the reports name it: one day D{YYYYMMDD}, a whole calendar year
    (1 January to 31 December) Y{YYYY} for the January check, anything else M{YYYYMM} of its start."""
    day = from_date.replace("-", "")
    if from_date == to_date:
        return f"D{day}"
    if from_date[5:] == "01-01" and to_date == f"{from_date[:4]}-12-31":
        return f"Y{day[:4]}"
    return f"M{day[:6]}"


class _Judged:
    """One received document and what judging it found."""

    def __init__(self, r: FeedReport):
        self.r = r
        self.bad: str | None = None
        self.msg_id: str | None = None
        self.ref: str | None = None          # pain.002 OrgnlMsgId
        self.orig_name: str | None = None    # pain.002 OrgnlMsgNmId
        self.entries: list[tuple[str | None, str | None]] = []   # camt.054 (EndToEndId, InstrId)
        self.summary: _Pain002 | None = None  # pain.002: what batch_status needs of it
        self.jid: int | None = None          # the journal entry it was kept as


class _Pain002:
    """What a batch's status needs of one pain.002, read once (on a thread) and kept by its
    journal id: the group part and whether every transfer status is final. A 100,000-transfer
    pain.002 is some 60 MB; parsing it again on every status tick (on the reactor thread, as
    it once was) held the reactor for tens of seconds and lost the lease."""

    __slots__ = ("report", "all_final", "count")

    def __init__(self, report, all_final: bool, count: int):
        self.report = report
        self.all_final = all_final
        self.count = count

    @classmethod
    def read(cls, doc: bytes) -> "_Pain002":
        report, statuses = iso.read_pain002(io.BytesIO(doc))
        all_final, n = True, 0
        for s in statuses:   # to its end: the reader's last step checks the whole
            n += 1
            all_final = all_final and s.status in FINAL
        return cls(report, all_final, n)

    def done(self) -> bool:
        return self.all_final and self.report.group_status in ("ACSC", "PART", "RJCT")

    def rejected_whole(self) -> bool:
        return self.report.group_status == "RJCT" and bool(self.report.group_reason)


class _Sink:
    """What write_pain001 writes to: a callable behind a file's write()."""

    def __init__(self, write) -> None:
        self.write = write


def _iso_time(now: float) -> str:
    return datetime.datetime.fromtimestamp(int(now), CST).isoformat()


class _WatchedClient:
    """The bank client (HTTPS or SFTP) with the link's state noted on every call in a LinkWatch,
    the same as cnbank's for health, /metrics and bank-link-down: an answer (any HTTP status
    below 500, a page refused as too large or malformed included) is the link working; no
    answer, a timeout or a 5xx is a failure. What a call means for the bank-link-down episode
    ("down" or "clear", with when) waits in `verdict` until the adapter, which holds the
    recorder, acts on it (IsoAdapter._linked). Each call is timed as `{channel}_{verb}`
    (https_post, https_get, sftp_put, sftp_get, sftp_remove) through `timing`."""

    def __init__(self, client, clock, channel: str, watch: LinkWatch | None = None) -> None:
        self._client, self._clock, self._channel = client, clock, channel
        self.timing = RequestTiming()
        self.watch = watch if watch is not None else LinkWatch(300.0)
        self.verdict: tuple[str, float] | None = None

    @property
    def state(self) -> dict:
        return self.watch.state()

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def _watch(self, what: str, verb: str, call):
        timed = self.timing.start(f"{self._channel}_{verb}")
        try:
            out = await call
        except Exception as e:
            status = getattr(e, "status", None)
            kind = getattr(e, "kind", None)
            if kind is None and status is not None and status < 500:
                timed.done("refused", f"HTTP{status}")     # answered, with a refusal (400, 413)
            else:
                timed.done("error", kind or (f"HTTP{status}" if status is not None else type(e).__name__))
            if status is not None and status < 500:
                self._ok()
            else:
                now = self._clock.seconds()
                if self.watch.failed(now, f"{what}: {e}"):
                    self.verdict = ("down", now)
            raise
        if isinstance(out, tuple) and isinstance(out[0], int) and out[0] >= 400:
            said = out[1].get("error") if isinstance(out[1], dict) else None
            timed.done("refused", str(said or f"HTTP{out[0]}")[:16])   # 409: DU01, the bank's refusal
        else:
            timed.ok()
        self._ok()
        return out

    def _ok(self) -> None:
        now = self._clock.seconds()
        if self.watch.ok(now):
            self.verdict = ("clear", now)

    def post_payment(self, doc: bytes):
        return self._watch("POST payment", "post" if self._channel == "https" else "put",
                           self._client.post_payment(doc))

    def reports(self, since, limit: int = 100):
        return self._watch("GET reports", "get", self._client.reports(since, limit))

    async def remove_upload(self, msg_id: str):
        """Housekeeping after the results: timed, but left out of the link's state."""
        timed = self.timing.start(f"{self._channel}_remove")
        try:
            await self._client.remove_upload(msg_id)
        except Exception as e:
            timed.done("error", getattr(e, "kind", None) or type(e).__name__)
            raise
        timed.ok()


@implementer(IBankAdapter)
class IsoAdapter:
    """One ISO 20022 bank: its HTTPS client, our signing key, the bank's pinned certificates."""

    dialect = "iso20022"

    def __init__(self, reactor, bank, settings, client: HttpsBankClient, *, key_pem: bytes,
                 cert_pem: bytes, pinned, work_dir: str, journal_store=None):
        # journal_store: no longer used (documents come back through recorder.payloads_in); still
        # accepted from callers that pass it (tests/test_iso_charset.py).
        self.reactor = reactor
        self.bank = bank
        self.bank_id = bank.bank_id
        self.s = settings
        self.client = _WatchedClient(client, reactor, settings.transport, LinkWatch(
            getattr(settings, "link_alarm_after_s", 300.0), self.bank_id))
        self.key_pem = key_pem
        self.cert_pem = cert_pem
        self.pinned = pinned            # callable(now: datetime) -> [(cert_pem, None)]
        self.work_dir = work_dir
        self.channel = settings.transport      # "https" or "sftp", for the journal
        self._page_limit: dict[str | None, int] = {}   # cursor -> page size that fits, after a page too large
        self._asked_again: dict[str, int] = {}
        self._faulted: set[str] = set()     # cursors whose page could not be taken (alarm open)
        self._known: OrderedDict[int, _Pain002] = OrderedDict()   # journal id -> pain.002 read once
        os.makedirs(work_dir, exist_ok=True)

    @property
    def timing(self) -> RequestTiming:
        """How each call to the bank is timed (the gateway gives one that feeds /metrics)."""
        return self.client.timing

    @timing.setter
    def timing(self, timing: RequestTiming) -> None:
        self.client.timing = timing

    def link_state(self) -> dict:
        """The link as last seen (in memory, for health and /metrics): last answer, last failure
        and when, consecutive failures, and since when failing."""
        return self.client.watch.state()

    async def _linked(self, recorder, call):
        """Await a call to the bank, then act on what it means for the link: raise (or update)
        the one bank-link-down episode once the link has failed for link_alarm_after_s, clear
        it at the first answer after that (adapters/link_watch.py, as cnbank does)."""
        try:
            return await call
        finally:
            verdict, self.client.verdict = self.client.verdict, None
            if verdict is not None:
                what, now = verdict
                if what == "down":
                    message = self.client.watch.down_message(now)
                    await recorder.read(lambda conn: recorder.alarm_in(
                        conn, "critical", LINK_DOWN, message, None, None, None))
                else:
                    await recorder.read(lambda conn: recorder.clear_in(conn, LINK_DOWN))

    # --- documents -----------------------------------------------------------------

    def _text(self, field: str, text: str | None) -> str | None:
        """A name or remittance text as the bank's character set takes it: as it is, or, for a
        Latin-only bank, in pinyin (the original stays in the item and in the journal's pull)."""
        if not text or self.s.charset != "latin":
            return text
        return iso.to_latin(field, text)

    def _transfer(self, spec: BatchSpec, i) -> iso.CreditTransfer:
        try:
            name = self._text("Cdtr/Nm", i.name)
            agent = self._text("CdtrAgt/FinInstnId/Nm", i.account_bank) if not i.account_bank_code else None
            remittance = self._text("RmtInf/Ustrd", spec.project_short or spec.project_code)
        except iso.Iso20022Error as e:
            raise iso.Iso20022Error(f"item {spec.order_no} seq {i.seq}: {e.element}", e.message) from None
        return iso.CreditTransfer(
            instr_id=f"{spec.batch_no}-{i.seq}", end_to_end_id=f"{spec.order_no}-{i.seq}",
            amount_fen=i.amount, creditor_name=name, creditor_account=i.account_no,
            creditor_agent_name=agent or None, creditor_id_number=i.id_number or None,
            remittance=remittance, creditor_agent_cnaps=i.account_bank_code or None)

    def _header(self, msg_id: str, kind: str, count: int, amount: int, when: str, date: str):
        return iso.PaymentInitiation(
            msg_id=msg_id, created_at=when, nb_of_txs=count, ctrl_sum_fen=amount,
            initiating_party=self._text("GrpHdr/InitgPty/Nm", self.s.initiating_party),
            debtor_name=self._text("PmtInf/Dbtr/Nm", self.bank.payer_name),
            debtor_account=self.bank.payer_acct, debtor_agent_bic=self.s.debtor_agent_bic or None,
            debtor_agent_id=self.s.debtor_agent_id, requested_date=date,
            pmt_inf_id=f"{msg_id}/{kind}")

    def _write_sealed(self, final: str, header, transfers) -> str:
        """Write the pain.001 (signed as it is written when the bank wants XMLDSig: no tree, flat
        memory at a million transfers), validate it against its XSD streaming, then put it in
        place; return its SHA-256. A failure leaves nothing behind."""
        part = final + ".part"
        h = hashlib.sha256()
        signer = (xmldsig.StreamSigner(self.key_pem, self.cert_pem) if self.s.signature == "xmldsig"
                  else None)
        try:
            with open(part, "wb") as f:
                def write(data: bytes) -> None:
                    h.update(data)
                    f.write(data)
                iso.write_pain001(_Sink(write), header, transfers, signer)
            iso.validate(part)
            os.replace(part, final)
        except BaseException:
            for p in (part, final):
                if os.path.exists(p):
                    os.unlink(p)
            raise
        return h.hexdigest()

    def build_batch(self, spec: BatchSpec, items) -> Built:
        name = f"{spec.batch_no}.pain001.xml"
        final = os.path.join(self.work_dir, name)
        d = spec.submit_date
        header = self._header(spec.batch_no, spec.kind, spec.total_count, spec.total_amount,
                              spec.created_at, f"{d[:4]}-{d[4:6]}-{d[6:]}")
        transfers = (self._transfer(spec, i) for i in items)
        if self.s.max_transfers_per_message or self.s.max_message_bytes:
            return self._build_parts(spec, header, transfers)
        digest = self._write_sealed(final, header, transfers)
        return Built(name, digest, "", spec.total_count, spec.total_amount, digest_alg="SHA-256")

    def _build_parts(self, spec: BatchSpec, header, transfers) -> Built:
        """A bank with per-message limits: the batch as one or several pain.001 messages
        (iso.write_pain001_parts). Several are listed in a manifest, `{BatchNo}.parts.json`,
        which is the batch's file_name; one is the batch's ordinary document."""
        import contextlib
        import tempfile
        signer = (xmldsig.StreamSigner(self.key_pem, self.cert_pem) if self.s.signature == "xmldsig"
                  else None)
        written: list[str] = []
        digests: dict[str, str] = {}

        @contextlib.contextmanager
        def open_part(msg_id: str):
            path = os.path.join(self.work_dir, f"{msg_id}.pain001.xml")
            written.append(path)
            h = hashlib.sha256()
            with open(path + ".part", "wb") as f:
                def write(data: bytes) -> None:
                    h.update(data)
                    f.write(data)
                yield _Sink(write)
            iso.validate(path + ".part")
            os.replace(path + ".part", path)
            digests[msg_id] = h.hexdigest()
        try:
            with tempfile.TemporaryFile(dir=self.work_dir) as spool:
                parts = iso.write_pain001_parts(
                    open_part, header, transfers, spool=spool, signer=signer, kind=spec.kind,
                    max_transfers=self.s.max_transfers_per_message or None,
                    max_bytes=self.s.max_message_bytes or None)
            if len(parts) == 1:
                return Built(f"{spec.batch_no}.pain001.xml", digests[parts[0].msg_id], "",
                             spec.total_count, spec.total_amount, digest_alg="SHA-256")
            manifest = json.dumps({"batch_no": spec.batch_no, "parts": [
                {"msg_id": p.msg_id, "file": f"{p.msg_id}.pain001.xml", "count": p.count,
                 "amount": p.amount_fen, "sha256": digests[p.msg_id]} for p in parts]}, indent=1).encode()
            name = f"{spec.batch_no}.parts.json"
            path = os.path.join(self.work_dir, name)
            written.append(path)
            with open(path + ".part", "wb") as f:
                f.write(manifest)
            os.replace(path + ".part", path)
        except BaseException:
            for p in written:
                for q in (p, p + ".part"):
                    if os.path.exists(q):
                        os.unlink(q)
            raise
        return Built(name, hashlib.sha256(manifest).hexdigest(), "", spec.total_count, spec.total_amount,
                     digest_alg="SHA-256")

    def _parts(self, batch: dict) -> list[dict]:
        """The messages of a batch: [{msg_id, file, count, amount}]; one (MsgId = BatchNo) unless split."""
        name = batch["file_name"] or ""
        if name.endswith(".parts.json"):
            with open(os.path.join(self.work_dir, name), "rb") as f:
                return json.load(f)["parts"]
        return [{"msg_id": batch["batch_no"], "file": name, "count": batch["total_count"],
                 "amount": batch["total_amount"]}]

    def built_exists(self, batch: dict) -> bool:
        if not os.path.exists(os.path.join(self.work_dir, batch["file_name"])):
            return False
        return all(os.path.exists(os.path.join(self.work_dir, p["file"])) for p in self._parts(batch))

    sent_tx_code = iso.PAIN001   # the journal's tx_code of a document as sent (restore_sent)

    def restore_sent(self, batch: dict, document: bytes) -> None:
        """Put back the document the journal archived when it was POSTed (blocking): the status
        question is the same bytes again, and another daemon, with its own work folder, built it."""
        path = os.path.join(self.work_dir, batch["file_name"])
        tmp = path + ".restoring"
        with open(tmp, "wb") as f:
            f.write(document)
        os.replace(tmp, path)

    async def deliver_batch(self, batch: dict, recorder) -> None:
        return None   # HTTPS: the document travels in the POST itself

    # --- posting ----------------------------------------------------------------------

    async def _post(self, ref: dict, path: str, decoded: str, recorder, before=None) -> Reply | None:
        """Journal the document (with `before`), POST it, journal the answer; None if unknown."""
        with open(path, "rb") as f:
            doc = f.read()
        await recorder.record([Entry("out", self.bank_id, self.channel, iso.PAIN001, decoded, payload_file=path,
                                     msg_id=ref["msg_id"], order_no=ref["order_no"],
                                     batch_no=ref["batch_no"])], change=before)
        try:
            status, answer = await self._linked(recorder, self.client.post_payment(doc))
        except TransportError as e:
            body = getattr(e, "body", b"") or b""
            if getattr(e, "status", None) in (400, 413):
                ids = await recorder.record([Entry(
                    "in", self.bank_id, self.channel, iso.PAIN001, f"HTTP {e.status}: {e}", payload=body,
                    msg_id=ref["msg_id"], order_no=ref["order_no"], batch_no=ref["batch_no"],
                    verified="ok")])
                try:
                    code = json.loads(body).get("error") or f"HTTP{e.status}"
                except (ValueError, AttributeError):
                    code = f"HTTP{e.status}"
                return Reply("refused", str(code)[:8], str(e)[:500], journal_id=ids[-1])
            await recorder.record([Entry("event", self.bank_id, self.channel, iso.PAIN001,
                                         f"POST {ref['msg_id']}: {e}", msg_id=ref["msg_id"],
                                         order_no=ref["order_no"], batch_no=ref["batch_no"])])
            log.warn("{bank}: POST {msg}: {error}", bank=self.bank_id, msg=ref["msg_id"], error=e)
            return None
        raw = json.dumps(answer, ensure_ascii=False).encode()
        if status == 409:
            # DU01: the bank holds other content under this MsgId. Never resend: ask, alarm.
            await recorder.record(
                [Entry("in", self.bank_id, self.channel, iso.PAIN001, f"HTTP 409 {answer.get('error')}: "
                       f"{answer.get('message', '')}"[:500], payload=raw, msg_id=ref["msg_id"],
                       order_no=ref["order_no"], batch_no=ref["batch_no"], verified="ok")],
                alarm=("critical", "message-id-conflict",
                       f"bank holds other content under MsgId {ref['msg_id']} (DU01): not resent",
                       ref["order_no"], ref["batch_no"]))
            return None
        ids = await recorder.record([Entry("in", self.bank_id, self.channel, iso.PAIN001,
                                           f"HTTP {status}: {answer.get('status')} {answer.get('msg_id')}",
                                           payload=raw, msg_id=ref["msg_id"], order_no=ref["order_no"],
                                           batch_no=ref["batch_no"], verified="ok")])
        if answer.get("msg_id") != ref["msg_id"]:
            return None
        return Reply("accepted", "", str(answer.get("status")), bank_ref=answer.get("msg_id"),
                     journal_id=ids[-1])

    async def submit_batch(self, batch: dict, recorder, before) -> Reply | None:
        """POST the batch's message, or each of its parts (each idempotent on its own MsgId, so
        posting them all again is the status question). Accepted when every part is; refused
        when every part is; anything else is an unknown outcome, asked again."""
        parts = self._parts(batch)
        replies = []
        for n, p in enumerate(parts, 1):
            path = os.path.join(self.work_dir, p["file"])
            of = f" part {n} of {len(parts)}" if len(parts) > 1 else ""
            decoded = (f"POST /payments pain.001 {p['msg_id']} ({batch['kind']}{of}): {p['count']} "
                       f"transfers, {p['amount']} fen, SHA-256 {p.get('sha256') or batch['file_digest']}")
            replies.append(await self._post({"msg_id": p["msg_id"], "order_no": batch["order_no"],
                                             "batch_no": batch["batch_no"]}, path, decoded, recorder,
                                            before if n == 1 else None))
        if len(replies) == 1:
            return replies[0]
        if all(r is not None and r.outcome == "accepted" for r in replies):
            return Reply("accepted", "", replies[-1].message, bank_ref=batch["batch_no"],
                         journal_id=replies[-1].journal_id)
        if all(r is not None and r.outcome == "refused" for r in replies):
            return replies[0]
        return None

    # --- the report feed ----------------------------------------------------------------

    def _judge(self, r: FeedReport, now: datetime.datetime) -> "_Judged":
        """Judge one received document on its own (thread); never raises.

        Signature first (a streaming pass finds the one Signature and checks its pinned,
        in-date certificate before any tree is built), then well-formed whole (streaming),
        the message type against the feed's, the XSD (streaming), and a full read. A
        DOCTYPE is refused outright. Whatever
        fails, the document alone is refused: the feed moves past it.
        """
        j = _Judged(r)
        if r.document is None:
            j.bad = f"refused as received: {r.refused}"
            return j
        doc = r.document
        if len(doc) > self.s.max_document_bytes:   # a transport that could not cap it
            j.bad = f"the document is {len(doc)} bytes, over max_document_bytes {self.s.max_document_bytes}"
            return j
        kind = r.type
        try:
            if self.s.signature == "xmldsig":
                xmldsig.verify_bytes(doc, self.pinned(now), now)
            # Whole first: the streaming reader passes a document cut off partway.
            iso.well_formed(io.BytesIO(doc))
            actual = iso.message_type(io.BytesIO(doc))
            if actual != kind:
                raise iso.Iso20022Error("Document", f"the feed says {kind}, the document is {actual}")
            if kind not in (iso.PAIN002, iso.CAMT054, iso.CAMT053):
                raise iso.Iso20022Error("type", f"{kind} is not a report the gateway takes "
                                        f"({iso.PAIN002}, {iso.CAMT054} or {iso.CAMT053} expected)")
            iso.validate(io.BytesIO(doc), kind)
            if kind == iso.PAIN002:
                j.summary = _Pain002.read(doc)
                report = j.summary.report
                j.msg_id, j.ref, j.orig_name = report.msg_id, report.orig_msg_id, report.orig_msg_nm_id
            elif kind == iso.CAMT054:
                n = iso.read_camt054(io.BytesIO(doc))
                j.msg_id = n.msg_id
                j.entries = [(e.end_to_end_id, e.instr_id) for e in n.entries]
            else:
                j.msg_id = iso.read_camt053(io.BytesIO(doc)).msg_id
        except Exception as e:  # noqa: BLE001  (whatever a hostile document trips, it alone is refused)
            j.bad = f"{type(e).__name__}: {e}"
            if not isinstance(e, (iso.Iso20022Error, xmldsig.SignatureError)):
                log.warn("{bank}: report {cursor} refused on an unexpected error: {error}",
                         bank=self.bank_id, cursor=r.cursor, error=j.bad[:300])
        return j

    def _original(self, conn: Connection, store, j: "_Judged") -> str | None:
        """Why a valid, signed document names nothing the gateway sent (None: it does)."""
        if j.r.type == iso.PAIN002:
            if j.orig_name != iso.PAIN001:
                return f"OrgnlMsgNmId {j.orig_name!r}, {iso.PAIN001} expected"
            if not self._sent(conn, store, j.ref):
                return f"OrgnlMsgId {j.ref!r} names no message the gateway sent to {self.bank_id}"
        elif j.r.type == iso.CAMT054:
            for e2e, instr in j.entries:
                if e2e is not None and not self._sent_transfer(conn, store, e2e):
                    return f"entry EndToEndId {e2e!r} names no transfer the gateway sent to {self.bank_id}"
                if e2e is None and instr is not None and not self._sent(conn, store, instr.rsplit("-", 1)[0]):
                    return f"entry InstrId {instr!r} names no batch the gateway sent to {self.bank_id}"
        return None

    def _sent(self, conn: Connection, store, msg_id: str | None) -> bool:
        """A MsgId we sent this bank: a batch's (BatchNo) or a refund's (RefundNo)."""
        if not msg_id:
            return False
        base, _, part = msg_id.rpartition("-")
        names = [msg_id, base] if base and len(part) == 3 and part.isdigit() else [msg_id]   # {BatchNo}-{part:03d}
        return store.batch_sent(conn, names) or store.refund_sent(conn, msg_id)

    def _sent_transfer(self, conn: Connection, store, e2e: str) -> bool:
        """An EndToEndId we sent this bank: OrderNo-Seq of one of its items, or a RefundNo."""
        order_no, _, seq = e2e.rpartition("-")
        if order_no and seq.isdigit() and store.item_sent(conn, order_no, int(seq)):
            return True
        return store.refund_sent(conn, e2e)

    def _keep_page(self, recorder, judged: list["_Judged"], since: str | None, new_cursor: str | None):
        """The transaction of one page: each document journaled (refused ones with what arrived
        and one alarm episode each), the good ones kept, the cursor moved past all of them."""
        def new_episode(conn: Connection, kind: str, key: str) -> bool:
            return not recorder.store.alarm_open(conn, kind, key)

        def keep(conn: Connection) -> tuple[int, int]:
            n = new_bad = 0
            at = _iso_time(recorder.now())
            for j in judged:
                r = j.r
                label = _type_label(r.type)
                why = j.bad
                key = _document_key(r)
                if why is None:
                    why = self._original(conn, recorder.store, j)
                    if why is not None:
                        new_bad += new_episode(conn, "report-unknown-original", key)
                        jid = recorder.journal_in(conn, Entry(
                            "in", self.bank_id, self.channel, label,
                            f"report {r.cursor}: {r.type} {j.msg_id} applied to nothing: {why}"[:500],
                            payload=r.document, msg_id=(j.msg_id or "")[:64] or None,
                            verified=f"failed: unknown original: {why}"[:200]))
                        recorder.alarm_in(conn, "critical", "report-unknown-original",
                                          f"report {r.cursor} ({r.type} {j.msg_id}) from bank {self.bank_id} "
                                          f"is signed and valid but {why}: applied to nothing"[:500],
                                          None, None, jid, key=key)
                        continue
                else:
                    new_bad += new_episode(conn, "report-refused", key)
                    jid = recorder.journal_in(conn, Entry(
                        "in", self.bank_id, self.channel, label,
                        f"report {r.cursor} ({r.type}, {r.size} bytes as received) refused: {why}"[:500],
                        payload=r.document if r.document is not None else r.raw,
                        verified=f"failed: {why}"[:200]))
                    recorder.alarm_in(conn, "critical", "report-refused",
                                      f"report {r.cursor} ({r.type}) from bank {self.bank_id} refused, "
                                      f"not used; the feed goes on: {why}"[:500], None, None, jid,
                                      key=key)
                    continue
                jid = recorder.journal_in(conn, Entry(
                    "in", self.bank_id, self.channel, label,
                    f"report {r.cursor}: {r.type} {j.msg_id}" + (f" for {j.ref}" if j.ref else ""),
                    payload=r.document, msg_id=j.msg_id[:64], batch_no=j.ref, verified="ok"))
                j.jid = jid
                if r.type == iso.CAMT053:
                    try:
                        self._store_statement(conn, recorder, r.document, jid)
                    except ValueError as e:   # checked whole before anything is written
                        recorder.alarm_in(conn, "warning", "statement-not-stored",
                                          f"camt.053 {j.msg_id} kept but not stored for "
                                          f"reconciliation: {e}"[:500], None, None, jid)
                recorder.store.report_received(conn, r.cursor, r.type, j.msg_id, j.ref, jid, at)
                n += 1
            for kind in ("feed-page-too-large", "feed-page-malformed"):
                recorder.clear_in(conn, kind, key=_feed_key(since))
            recorder.store.set_feed_cursor(conn, new_cursor, at)
            return n, new_bad
        return recorder.read(keep)

    async def _feed_fault(self, recorder, kind: str, since: str | None, why: str) -> None:
        """A page that cannot be taken at all: one alarm episode per cursor, journaled once."""
        self._faulted.add(_feed_key(since))
        def rec(conn: Connection) -> bool:
            key = _feed_key(since)
            first = not recorder.store.alarm_open(conn, kind, key)
            jid = None
            if first:
                jid = recorder.journal_in(conn, Entry(
                    "event", self.bank_id, self.channel, "GET reports",
                    f"report page after cursor {since or '(start)'} not taken: {why}"[:500]))
            recorder.alarm_in(conn, "critical", kind,
                              f"bank {self.bank_id}: the report page after cursor {since or '(start)'} "
                              f"cannot be taken ({why}); the feed waits there, the rest of the "
                              f"daemon goes on"[:500], None, None, jid, key=key)
            return first
        if await recorder.read(rec):    # the alarm episode is what an operator sees; one line
            log.warn("{bank}: report page after {since}: {why}", bank=self.bank_id, since=since, why=why)

    async def sync(self, recorder) -> int:
        """Read the feed from the kept cursor; keep each verified document. Returns how many were kept.

        Each document is judged on its own: one refused is journaled with what arrived,
        alarmed once, and passed (the cursor moves); the open batches and refunds of this bank
        are then asked again (the same bytes re-POSTed: the status question), so what the
        refused document may have said is learnt again from the bank, never guessed. A page
        too large is asked again in smaller pages; one that cannot be taken even one report
        at a time is alarmed once and the feed waits at that cursor.
        """
        since = await recorder.read(recorder.store.feed_cursor)
        kept = refused = 0
        limit = self._page_limit.get(since, PAGE_LIMIT)
        for _ in range(PAGES_PER_SYNC):
            try:
                reports, nxt = await self._linked(recorder, self.client.reports(since, limit))
            except PageTooLarge as e:
                if limit > 1:
                    limit = max(1, limit // 4)
                    self._page_limit[since] = limit
                    continue
                await self._feed_fault(recorder, "feed-page-too-large", since, str(e))
                break
            except PageMalformed as e:
                await self._feed_fault(recorder, "feed-page-malformed", since, str(e))
                break
            if not reports:
                if _feed_key(since) in self._faulted:      # readable again, nothing new in it
                    await recorder.read(lambda conn, key=_feed_key(since): [
                        recorder.clear_in(conn, kind, key=key) for kind in ("feed-page-too-large",
                                                                           "feed-page-malformed")])
                    self._faulted.discard(_feed_key(since))
                break
            now = datetime.datetime.fromtimestamp(recorder.now(), datetime.timezone.utc)
            judged = []
            for r in reports:
                judged.append(await deferToThread(self._judge, r, now))
            new_cursor = nxt if nxt is not None else reports[-1].cursor
            n, bad = await self._keep_page(recorder, judged, since, new_cursor)
            for j in judged:
                if j.jid is not None and j.summary is not None:
                    self._remember(j.jid, j.summary)
            self._faulted.discard(_feed_key(since))
            kept += n
            refused += bad
            self._page_limit.pop(since, None)
            if new_cursor == since:
                break
            since = new_cursor
        if refused:
            await self._ask_again(recorder)
        return kept

    def _may_ask_again(self, msg_id: str) -> bool:
        """A bank whose reports keep failing is not asked without end: a few times per MsgId
        (per run); past that the batch's deadline alarms (bank_due) take over."""
        n = self._asked_again.get(msg_id, 0)
        if n >= MAX_ASK_AGAIN:
            return False
        self._asked_again[msg_id] = n + 1
        return True

    async def _ask_again(self, recorder) -> None:
        """After a refused report: the status question (the same bytes again) for every open
        batch and refund of this bank; the bank answers it and puts its reports in the feed
        again."""
        bs, rs = await recorder.read(recorder.store.open_batches_and_refunds)
        for b in bs:
            if not (b["file_name"] and self.built_exists(b) and self._may_ask_again(b["batch_no"])):
                continue
            for p in self._parts(b):
                await self._post({"msg_id": p["msg_id"], "order_no": b["order_no"], "batch_no": b["batch_no"]},
                                 os.path.join(self.work_dir, p["file"]), f"POST /payments pain.001 {p['msg_id']} "
                                 f"again (status question: a report of this bank was refused)", recorder)
        for r in rs:
            if os.path.exists(self._refund_path(r)) and self._may_ask_again(r["refund_no"]):
                await self._post({"msg_id": r["refund_no"], "order_no": r["order_no"], "batch_no": r["refund_no"]},
                                 self._refund_path(r), f"POST /payments pain.001 refund {r['refund_no']} again "
                                 f"(status question: a report of this bank was refused)", recorder)

    def _store_statement(self, conn: Connection, recorder, doc: bytes, jid: int) -> None:
        """Keep a verified camt.053 for report.monthly and report.yearly (period: statement_period)."""
        st = iso.read_camt053(io.BytesIO(doc))
        period = statement_period(st.from_date, st.to_date)
        entries = []
        for e in st.entries:
            if e.status != "BOOK" or not e.end_to_end_id:
                continue
            tail = e.end_to_end_id.rsplit("-", 1)[-1]     # OrderNo-Seq, or a refund's OrderNo-Fnn
            kind = ("return" if e.credit and e.return_reason else
                    "refund" if not e.credit and tail[:1] == "F" else
                    "payment" if not e.credit else "credit")
            entries.append({"reference": e.end_to_end_id, "amount_fen": e.amount_fen, "credit": e.credit,
                            "booking_date": e.booking_date, "kind": kind,
                            **({"bank_ref": e.bank_ref} if e.bank_ref else {})})
        header, lines = entry_rows(entries, account=st.account, opening_balance=st.opening_fen,
                                   closing_balance=st.closing_fen)
        recorder.statement_in(conn, period, f"camt.053:{st.msg_id}", header, lines, jid)

    async def _documents(self, recorder, kind: str, ref: str | None = None) -> list[tuple[int, bytes]]:
        def find(conn: Connection):
            ids = recorder.store.report_journal_ids(conn, kind, ref)
            kept = recorder.payloads_in(conn, ids)
            return [(i, kept[i]) for i in ids]
        return await recorder.read(find)

    async def _latest_id(self, recorder, kind: str, ref: str) -> int | None:
        """The journal id of the last report of `kind` for `ref` (its document not read)."""
        def find(conn: Connection):
            ids = recorder.store.report_journal_ids(conn, kind, ref)
            return ids[-1] if ids else None
        return await recorder.read(find)

    def _remember(self, jid: int, summary: _Pain002) -> None:
        self._known[jid] = summary
        self._known.move_to_end(jid)
        while len(self._known) > KNOWN_REPORTS:
            self._known.popitem(last=False)

    async def _pain002(self, recorder, jid: int) -> _Pain002:
        """A kept pain.002's summary: from memory when judged (or read) before in this run,
        else its document read from the journal and parsed once, off the reactor thread."""
        known = self._known.get(jid)
        if known is None:
            kept = await recorder.read(recorder.payloads_in, [jid])
            known = await deferToThread(_Pain002.read, kept[jid])
            self._remember(jid, known)
        return known

    async def _notifications(self, recorder) -> list[tuple[int, iso.Entry]]:
        docs = await self._documents(recorder, iso.CAMT054)

        def parse():
            out = []
            for jid, doc in docs:
                out.extend((jid, e) for e in iso.read_camt054(io.BytesIO(doc)).entries)
            return out
        return await deferToThread(parse)

    # --- batches ------------------------------------------------------------------------

    async def batch_status(self, batch: dict, recorder) -> BatchStatus | None:
        if batch["state"] == "SUBMITTING":
            # The POST's outcome is unknown: the same bytes again are the question (idempotent on
            # MsgId); the bank answers 200 with its first answer if it had them.
            reply = await self.submit_batch(batch, recorder, None)
            if reply is None:
                return None
            if reply.outcome == "refused":
                return BatchStatus("unknown_to_bank", reply.code, reply.message, journal_id=reply.journal_id)
            return BatchStatus("pending", journal_id=reply.journal_id)
        await self.sync(recorder)
        returns = []
        if batch["state"] == "DONE":
            prefix = batch["batch_no"] + "-"
            for jid, e in await self._notifications(recorder):
                if e.credit and e.return_reason and e.instr_id and e.instr_id.startswith(prefix):
                    seq = e.instr_id[len(prefix):]
                    if seq.isdigit():
                        returns.append(LateReturn(serial=e.entry_ref, seq=int(seq), amount=e.amount_fen,
                                                  reason_code=e.return_reason,
                                                  return_date=e.booking_date.replace("-", ""),
                                                  journal_id=jid))
            return BatchStatus("done", returns=returns)
        parts = self._parts(batch)
        if len(parts) > 1:
            return await self._parts_status(batch, parts, recorder)
        jid = await self._latest_id(recorder, iso.PAIN002, batch["batch_no"])
        if jid is None:
            return BatchStatus("pending")
        known = await self._pain002(recorder, jid)
        report = known.report
        if known.rejected_whole():
            outcome = iso.reason_outcome(report.group_reason)
            return BatchStatus("rejected", report.group_reason,
                               f"{iso.REASONS.get(report.group_reason, ('', report.group_info or ''))[1]} "
                               f"({outcome})", journal_id=jid)
        if known.done():
            return BatchStatus("done", results={"ref": str(jid), "digest": "", "key": ""}, journal_id=jid)
        return BatchStatus("pending", journal_id=jid)

    @staticmethod
    def _result_lines(batch: dict, statuses, prefix: str) -> list[ItemResult]:
        out = []
        for s in statuses:
            if not s.orig_instr_id.startswith(prefix) or not s.orig_instr_id[len(prefix):].isdigit():
                raise ResultsRefused(f"OrgnlInstrId {s.orig_instr_id} is not an item of "
                                     f"{batch['batch_no']}", [])
            if s.amount_fen is None:
                raise ResultsRefused(f"{s.orig_instr_id}: no OrgnlTxRef/Amt to check against the item", [])
            paid = s.status == "ACSC"
            code = s.reason_code or ""
            text = s.additional_info or (iso.REASONS.get(code, ("", ""))[1] if code else "")
            out.append(ItemResult(int(s.orig_instr_id[len(prefix):]), paid, "0000" if paid else code,
                                  (text or "")[:200], s.bank_ref or "",
                                  (s.acceptance_date or "")[:10], s.amount_fen, s.creditor_account))
        return out

    async def _latest_reports(self, parts: list[dict], recorder) -> list[tuple[int, bytes] | None]:
        ids = [await self._latest_id(recorder, iso.PAIN002, p["msg_id"]) for p in parts]
        kept = await recorder.read(recorder.payloads_in, [i for i in ids if i is not None])
        return [None if i is None else (i, kept[i]) for i in ids]

    async def _parts_status(self, batch: dict, parts: list[dict], recorder) -> BatchStatus:
        """A split batch is done when every part's pain.002 is final; rejected whole only when
        every part is rejected whole (a part rejected beside paid ones fails its own items)."""
        latest = [await self._latest_id(recorder, iso.PAIN002, p["msg_id"]) for p in parts]
        if any(x is None for x in latest):
            return BatchStatus("pending")
        judged = [(jid, await self._pain002(recorder, jid)) for jid in latest]
        whole = [(jid, k.report) for jid, k in judged if k.rejected_whole()]
        if len(whole) == len(judged):
            jid, report = whole[0]
            outcome = iso.reason_outcome(report.group_reason)
            return BatchStatus("rejected", report.group_reason,
                               f"{iso.REASONS.get(report.group_reason, ('', report.group_info or ''))[1]} "
                               f"({outcome}; every part of {batch['batch_no']})", journal_id=jid)
        if all(k.rejected_whole() or k.done() for _jid, k in judged):
            last = judged[-1][0]
            return BatchStatus("done", results={"ref": f"parts:{last}", "digest": "", "key": ""}, journal_id=last)
        return BatchStatus("pending", journal_id=judged[-1][0])

    async def fetch_results(self, batch: dict, recorder) -> ResultSet:
        prefix = batch["batch_no"] + "-"
        if str(batch["result_ref"]).startswith("parts:"):
            parts = self._parts(batch)
            latest = await self._latest_reports(parts, recorder)
            if any(x is None for x in latest):
                raise ResultsRefused(f"{batch['batch_no']}: a part's pain.002 is missing", [])
            docs = [(p, jid, doc) for p, (jid, doc) in zip(parts, latest)]
            jid = latest[-1][0]
        else:
            jid = int(batch["result_ref"])
            kept = await recorder.read(recorder.payloads_in, [jid])
            docs = [(None, jid, kept[jid])]

        def parse():
            out = []
            for part, _jid, doc in docs:
                report, statuses = iso.read_pain002(io.BytesIO(doc))
                if part is not None and report.group_status == "RJCT" and report.group_reason:
                    # A part rejected whole beside paid ones: its own transfers fail with its reason.
                    code = report.group_reason
                    text = report.group_info or iso.REASONS.get(code, ("", ""))[1]
                    _h, ts = iso.read_pain001(os.path.join(self.work_dir, part["file"]))
                    for t in ts:
                        out.append(ItemResult(int(t.instr_id[len(prefix):]), False, code, text[:200], "", "",
                                              t.amount_fen, t.creditor_account))
                    continue
                out.extend(self._result_lines(batch, statuses, prefix))
            return report, out
        try:
            report, lines = await deferToThread(parse)
        except iso.Iso20022Error as e:
            raise ResultsRefused(f"pain.002 for {batch['batch_no']}: {e}", []) from None
        paid = [x for x in lines if x.paid]
        failed = [x for x in lines if not x.paid]
        totals = ResultTotals(batch["batch_no"] if len(docs) > 1 else report.orig_msg_id, len(lines), sum(x.amount for x in lines),
                              len(paid), sum(x.amount for x in paid), len(failed),
                              sum(x.amount for x in failed))
        summary = (f"pain.002 {report.msg_id}: {len(lines)} transfers, paid {totals.paid_count} / "
                   f"{totals.paid_amount} fen, failed {totals.failed_count} / {totals.failed_amount} fen")

        def evidence(verified: str) -> list:
            return [Entry("event", self.bank_id, self.channel, "results",
                          f"{summary}; kept as journal entry {jid}" if verified == "ok"
                          else f"pain.002 {report.msg_id} (journal entry {jid}) not applied: {verified}",
                          order_no=batch["order_no"], batch_no=batch["batch_no"], verified=verified[:200])]
        return ResultSet(totals, lambda: iter(lines), evidence, lambda: None, summary=summary)

    async def after_results(self, batch: dict) -> None:
        """The bank is done with the batch (results applied, or rejected whole): our pain.001
        goes, locally (archived in the journal) and, over SFTP, from the bank's in folder."""
        path = os.path.join(self.work_dir, batch["file_name"] or "")
        parts = self._parts(batch) if batch["file_name"] and os.path.exists(path) else []
        for p in parts:
            if p["file"] != batch["file_name"] and os.path.exists(os.path.join(self.work_dir, p["file"])):
                os.unlink(os.path.join(self.work_dir, p["file"]))
        if batch["file_name"] and os.path.exists(path):
            os.unlink(path)
        if self.s.transport == "sftp" and self.s.sftp is not None and self.s.sftp.remove_uploads:
            for msg_id in [p["msg_id"] for p in parts] or [batch["batch_no"]]:
                await self.client.remove_upload(msg_id)

    # --- refunds ------------------------------------------------------------------------

    def _refund_path(self, refund: dict) -> str:
        return os.path.join(self.work_dir, f"{refund['refund_no']}.refund.pain001.xml")

    def _build_refund(self, refund: dict, lines: list[dict], now: float) -> str:
        final = self._refund_path(refund)
        if os.path.exists(final):
            return final   # the same bytes every time: the bank's MsgId idempotency holds
        when = _iso_time(now)
        header = self._header(refund["refund_no"], "REFUND", 1, refund["total_amount"], when, when[:10])
        items = [f"{x['batch_no']}:{x['seq']}:{x['amount']}" for x in lines]
        ustrd, cur = [], "REFUND"
        for it in items:
            if len(cur) + 1 + len(it) > 140:
                ustrd.append(cur)
                cur = it
            else:
                cur = f"{cur} {it}"
        ustrd.append(cur)
        t = iso.CreditTransfer(instr_id=refund["refund_no"], end_to_end_id=refund["refund_no"],
                               amount_fen=refund["total_amount"],
                               creditor_name=self._text("Cdtr/Nm", self.s.refund_account_name),
                               creditor_account=self.s.refund_account, creditor_agent_name=None,
                               creditor_id_number=None, remittance=ustrd)
        self._write_sealed(final, header, [t])
        return final

    async def send_refund(self, refund: dict, lines: list[dict], recorder, before) -> Reply | None:
        path = await deferToThread(self._build_refund, refund, lines, recorder.now())
        decoded = (f"POST /payments pain.001 refund {refund['refund_no']}: {refund['total_count']} items, "
                   f"{refund['total_amount']} fen back to {self.s.refund_account}")
        return await self._post({"msg_id": refund["refund_no"], "order_no": refund["order_no"],
                                 "batch_no": refund["refund_no"]}, path, decoded, recorder, before)

    async def refund_status(self, refund: dict, recorder) -> RefundStatus | None:
        if refund["state"] == "SUBMITTING":
            if not os.path.exists(self._refund_path(refund)):
                return RefundStatus("unknown_to_bank")
            decoded = f"POST /payments pain.001 refund {refund['refund_no']} again (status question)"
            reply = await self._post({"msg_id": refund["refund_no"], "order_no": refund["order_no"],
                                      "batch_no": refund["refund_no"]}, self._refund_path(refund),
                                     decoded, recorder)
            if reply is None:
                return None
            if reply.outcome == "refused":
                return RefundStatus("unknown_to_bank", reply.code, reply.message, journal_id=reply.journal_id)
            return RefundStatus("pending", journal_id=reply.journal_id)
        await self.sync(recorder)
        jid = await self._latest_id(recorder, iso.PAIN002, refund["refund_no"])
        if jid is None:
            return RefundStatus("pending")
        kept = await recorder.read(recorder.payloads_in, [jid])

        def read():
            report, statuses = iso.read_pain002(io.BytesIO(kept[jid]))
            return report, list(statuses)
        report, statuses = await deferToThread(read)
        if report.group_status == "RJCT" or any(s.status == "RJCT" for s in statuses):
            code = report.group_reason or next((s.reason_code for s in statuses if s.reason_code), "") or ""
            return RefundStatus("rejected", code, report.group_info or "", journal_id=jid)
        done = [s for s in statuses if s.status == "ACSC" and s.orig_end_to_end_id == refund["refund_no"]]
        if not done:
            return RefundStatus("pending", journal_id=jid)
        debit = [e for _jid, e in await self._notifications(recorder)
                 if not e.credit and e.end_to_end_id == refund["refund_no"]]
        if not debit:
            return RefundStatus("pending", journal_id=jid)   # the camt.054 debit confirms it
        if os.path.exists(self._refund_path(refund)):
            os.unlink(self._refund_path(refund))   # archived in the journal; the bank has it
        return RefundStatus("done", serial=done[0].bank_ref or debit[0].bank_ref or debit[0].entry_ref,
                            amount=debit[0].amount_fen, returned_to=self.s.refund_account, journal_id=jid)

    # --- disputes and statements ------------------------------------------------------------

    async def dispute(self, dispute: dict, recorder, before) -> Reply | None:
        # iso20022.md names no message for a dispute: it goes to the bank through its own
        # channel; the gateway records it and tracks its deadline (article 26).
        await recorder.record([Entry("event", self.bank_id, "daemon", "dispute",
                                     f"dispute {dispute['dispute_no']} of {dispute['batch_no']} "
                                     f"(seqs {dispute['seqs']}): the iso20022 dialect has no dispute "
                                     f"message; report it to the bank by its agreed channel",
                                     order_no=dispute["order_no"], batch_no=dispute["batch_no"])],
                              change=before,
                              alarm=("warning", "dispute-manual",
                                     f"dispute {dispute['dispute_no']} must be sent to bank {self.bank_id} "
                                     f"by hand (iso20022 has no dispute message)",
                                     dispute["order_no"], dispute["batch_no"]))
        return Reply("accepted", "", "recorded; to be reported to the bank by hand")

    async def fetch_statement(self, period: str, recorder):
        await self.sync(recorder)
        docs = await self._documents(recorder, iso.CAMT053)
        return await deferToThread(lambda: [iso.read_camt053(io.BytesIO(doc)) for _jid, doc in docs])

    def close(self):
        return self.client.close() if hasattr(self.client, "close") else None
