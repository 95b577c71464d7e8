"""The one interface between the gateway's flows and a bank (代发银行适配器).

A bank adapter binds a dialect, a transport, keys and one bank's settings. The
flows in gateway/ speak only to `IBankAdapter`: they own every state change
and never see a message, a file format or a transport. An adapter owns the
wire: it builds, signs, sends, verifies and parses, and it journals every
message it sends or receives through the `IBankRecorder` the flow gives it,
before it returns anything. What it returns is a neutral, verified outcome
(`Reply`, `BatchStatus`, `RefundStatus`, `ResultSet`); something that failed
verification is journaled and alarmed by the adapter and reported as nothing
to act on (None), so nothing unverified ever reaches a state change.

Adapters are found by dialect name in the entry-point group
`subsidy_gateway.bank_adapters` (see `gateway/bankplugins.py`); a site adds a bank
in its own package by registering a factory there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Iterator

from zope.interface import Attribute, Interface

ENTRY_POINT_GROUP = "subsidy_gateway.bank_adapters"


class TransportError(Exception):
    """A bank could not be reached or did not answer in time: the step is tried again later
    (with backoff) and logged as a warning, not as a failure of the gateway."""


class RequestTiming:
    """How an adapter (or the core client) tells the daemon how long each request to its peer took
    and how it ended, without importing the daemon: the gateway hands it one whose
    `observe(tx, seconds, outcome, code)` feeds /metrics; one made without `observe` measures and
    tells nobody, so an adapter runs the same in a test.

    `tx` names the request (BP01, BQ01, sftp_put, https_post, ...); `outcome` is "ok" (answered
    well), "refused" (answered with a refusal: `code` is the peer's return code or HTTP status) or
    "error" (no usable answer: `code` is the class of the failure, e.g. connect_failed, timeout,
    unverified). Durations are read on `clock`, monotonic seconds, so they do not jump with the
    wall clock; a request is timed from just before it leaves to the end of its answer.
    """

    def __init__(self, observe: Callable[[str, float, str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.observe = observe
        self.clock = clock

    def start(self, tx: str) -> "Timed":
        return Timed(self, tx)


class Timed:
    """One request being timed: `stop()` when its answer is in (the time counted ends there; the
    answer may be judged later), then `done(outcome, code)` once; later calls are ignored."""

    def __init__(self, timing: RequestTiming, tx: str):
        self.timing, self.tx = timing, tx
        self.started = timing.clock()
        self.seconds: float | None = None
        self.outcome: str | None = None

    def stop(self) -> None:
        if self.seconds is None:
            self.seconds = max(0.0, self.timing.clock() - self.started)

    def ok(self) -> None:
        self.done("ok")

    def done(self, outcome: str, code: str = "") -> None:
        self.stop()
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self.timing.observe is not None:
            try:
                self.timing.observe(self.tx, self.seconds, outcome, code)
            except Exception:  # noqa: BLE001  (a figure lost is not the request's failure)
                from twisted.logger import Logger
                Logger().failure("request timing of {tx} not observed", tx=self.tx)


@dataclass
class Entry:
    """What the caller knows about one exchange; the journal adds time, hashes and storage."""

    direction: str                 # "in", "out" or "event"
    peer: str                      # bank id, "core", or the RPC caller
    channel: str                   # tcp, sftp, http, rpc, daemon
    tx_code: str                   # BP01, BQ01, GET items, results, ...
    decoded: str                   # masked, human-readable
    payload: bytes | None = None   # the bytes on the wire
    payload_file: str | None = None  # or a file holding them (big files)
    msg_id: str | None = None
    order_no: str | None = None
    batch_no: str | None = None
    verified: str = "n/a"          # "ok", "failed: why", "n/a"


@dataclass
class BatchSpec:
    """What a batch file says at its head: the batch, its order and its totals."""

    batch_no: str
    order_no: str
    kind: str                 # PAY / RETRY
    total_count: int
    total_amount: int         # fen
    submit_date: str          # YYYYMMDD, China Standard Time
    project_code: str
    project_short: str
    created_at: str = ""      # ISO 8601 with +08:00, when the batch is built


# The columns of the row tuples given to an adapter's build_batch_rows, in this order
# (orig_batch_no and account_bank_code may be None there).
BATCH_ROW_FIELDS = ("seq", "name", "id_number", "account_no", "account_bank", "account_bank_code",
                    "amount", "remark", "orig_batch_no")


@dataclass
class BatchItem:
    """One line of a batch: an item to credit."""

    seq: int
    name: str
    id_number: str
    account_no: str
    account_bank: str
    amount: int               # fen
    remark: str
    orig_batch_no: str        # the batch the item last failed in (RETRY), else ""
    account_bank_code: str = ""   # the 12-digit CNAPS code of the account's bank, "" when unknown


@dataclass
class Built:
    """A batch document written, signed (and encrypted) in the adapter's work dir.

    `name`, `digest`, `digest_alg` and `key` are kept in the batch row (file_name,
    file_digest, file_digest_alg, file_enc_key) so the batch can be delivered and submitted
    again after a restart. `digest` is hex, by the dialect's algorithm, named in `digest_alg`
    ("SM3", "SHA-256"; "" when the dialect keeps none).
    """

    name: str
    digest: str
    key: str
    count: int
    amount: int
    digest_alg: str = ""


class Outcome(StrEnum):
    """The bank's verified reply to a submission (batch, refund or dispute). There is no
    "unknown": an exchange without a verified reply is None, and the flow asks."""

    ACCEPTED = "accepted"
    RETRY = "retry"          # refused for now: send again later, nothing was taken
    REFUSED = "refused"      # refused for good: an operator decides
    UNSENT = "unsent"        # it never reached the bank: sending again is not blind


class BankAnswer(StrEnum):
    """What the bank says it knows of a batch or a refund, asked (BQ01/RQ01, pain.002)."""

    UNKNOWN_TO_BANK = "unknown_to_bank"   # never received: it may be submitted again
    PENDING = "pending"                   # in hand
    REJECTED = "rejected"                 # whole, nothing paid
    DONE = "done"                         # results ready
    UNANSWERED = "unanswered"             # the bank refused the question


@dataclass
class Reply:
    """The bank's verified answer to a submission (batch, refund or dispute); `outcome` is
    an Outcome (a plain string is taken and checked)."""

    outcome: Outcome
    code: str = ""
    message: str = ""
    bank_ref: str | None = None
    journal_id: int | None = None
    fields: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)


@dataclass
class LateReturn:
    """A paid item the bank sent back (退票)."""

    serial: str               # the bank's reference, unique per bank: applied once
    seq: int
    amount: int
    reason_code: str
    return_date: str          # YYYYMMDD
    journal_id: int | None = None   # the entry of the message that carried it, if not the status's


@dataclass
class BatchStatus:
    """What the bank knows of a batch.

    `state` is a BankAnswer (a plain string is taken and checked). "unanswered" is
    alarmed by the flow unless `alarmed`: the adapter holds an episode of its own for that
    refusal (cnbank's bank-refusing for E008/E009). `results` is what fetch_results needs
    later, kept in the batch row: "ref" (result_ref: where the results are, e.g. the bank's
    result file name or a journal id), "digest" (result_sm3) and "key" (result_enc_key).
    """

    state: BankAnswer
    code: str = ""
    message: str = ""
    results: dict | None = None
    returns: list[LateReturn] = field(default_factory=list)
    journal_id: int | None = None
    alarmed: bool = False

    def __post_init__(self) -> None:
        self.state = BankAnswer(self.state)


@dataclass
class RefundStatus:
    """What the bank knows of a refund (原渠道退回); states as BatchStatus."""

    state: BankAnswer
    code: str = ""
    message: str = ""
    serial: str | None = None
    amount: int | None = None
    returned_to: str | None = None
    journal_id: int | None = None
    alarmed: bool = False

    def __post_init__(self) -> None:
        self.state = BankAnswer(self.state)


@dataclass
class ResultTotals:
    batch_no: str
    count: int
    amount: int
    paid_count: int
    paid_amount: int
    failed_count: int
    failed_amount: int


@dataclass
class ItemResult:
    seq: int
    paid: bool
    reason_code: str
    reason_text: str
    bank_serial: str
    post_date: str            # YYYYMMDD or YYYY-MM-DD, may be empty
    amount: int | None        # fen, when the bank repeats it (checked against the item)
    account_no: str | None    # when the bank repeats it (checked against the item)


@dataclass
class ResultSet:
    """A batch's results, verified whole; `lines()` streams them once.

    The flow applies the lines in one transaction together with `evidence`
    (journal entries of what was received); if the lines do not add up it
    journals `refused(why)` instead and applies nothing. `cleanup()` removes
    temporary files either way.
    """

    totals: ResultTotals
    lines: Callable[[], Iterator[ItemResult]]
    evidence: Callable[[str], list]          # verified -> journal Entries (verified="ok" or "failed: ...")
    cleanup: Callable[[], None]
    summary: str = ""


class ResultsRefused(Exception):
    """Results that failed verification or parsing: nothing may be applied.

    `entries` are the journal entries of what was received, marked failed; `cleanup()`
    removes the received files once they are journaled (archived).
    """

    def __init__(self, why: str, entries: list, cleanup: Callable[[], None] | None = None):
        super().__init__(why)
        self.entries = entries
        self.cleanup = cleanup or (lambda: None)


class IDialectStore(Interface):
    """What a dialect keeps between calls, and what it may ask of the gateway's records, for one
    bank (gateway/dialect_store.py implements it). Every method takes the connection of a
    transaction `IBankRecorder.read` opened."""

    def feed_cursor(conn):
        """The report feed's kept cursor, or None before the first report."""

    def set_feed_cursor(conn, cursor, at):
        """Keep the feed's cursor (moved past the reports just kept)."""

    def report_received(conn, cursor, kind, msg_id, ref, journal_id, at):
        """Note a report taken from the feed: its type, MsgId, what it answers, its journal entry."""

    def report_journal_ids(conn, kind, ref=None):
        """The journal ids of the reports of `kind` received (answering `ref` if given), oldest first."""

    def alarm_open(conn, kind, key):
        """Whether an alarm episode of `kind` and `key` is open for this bank."""

    def batch_sent(conn, batch_nos):
        """Whether one of `batch_nos` is a batch the gateway sent this bank."""

    def refund_sent(conn, refund_no):
        """Whether `refund_no` is a refund the gateway sent this bank."""

    def item_sent(conn, order_no, seq):
        """Whether item `seq` of `order_no` belongs to an order paid through this bank."""

    def open_batches_and_refunds(conn):
        """(batches, refunds) of this bank the bank has accepted and not finished, as dicts."""


class IBankRecorder(Interface):
    """What an adapter is given to journal the messages it exchanges (the flow implements it)."""

    store = Attribute("The bank's IDialectStore: what the dialect keeps between calls.")

    def record(entries, change=None, alarm=None):
        """Journal `entries` (`Entry`) in one transaction with `change(conn)` if given.

        `alarm` = (severity, kind, message, order_no, batch_no) raises an alarm pointing at the
        last entry. Returns a Deferred firing with the journal ids of the entries.
        """

    def now():
        """Seconds since the epoch, from the flow's clock."""

    def read(fn, *args):
        """Run fn(conn, *args) in one database transaction (off the reactor); Deferred of its result."""

    def journal_in(conn, entry):
        """Append a journal entry inside a transaction `read` opened; returns its id."""

    def alarm_in(conn, severity, kind, message, order_no, batch_no, journal_id, key=None):
        """Raise an alarm inside a transaction `read` opened: opens an episode, or updates the
        open one of the same (kind, bank, order_no, batch_no, key) (gateway/alarms.py)."""

    def clear_in(conn, kind, order_no=None, batch_no=None, key=None):
        """End the open episode of that identity (the condition is gone), inside a transaction
        `read` opened; returns how many were cleared."""

    def payloads_in(conn, journal_ids):
        """The bytes kept by the journal for each of `journal_ids` (inline or archived), as a dict
        by id, inside a transaction `read` opened: how a dialect reads back a document it received."""

    def statement_in(conn, period, source, header, lines, journal_id):
        """Store the bank's statement for `period` (DYYYYMMDD, MYYYYMM, YYYYY) inside a transaction
        `read` opened, replacing one stored before from the same `source`; returns its id.

        `header` holds dialect, account, opening_balance, closing_balance and totals (JSON text or
        None); each of `lines` is a dict with kind ("batch", "refund", "entry"), reference, amount
        and the optional order_no, count, paid_count, paid_amount, failed_count, failed_amount,
        returned_count, returned_amount, credit, entry_kind, bank_ref, booked (gateway/statements.py
        reconciles them, by dialect, against the gateway's batches and refunds)."""


class IBankAdapter(Interface):
    """A bank, as the flows see it."""

    bank_id = Attribute("the bank's id (bank_id of its orders)")
    dialect = Attribute("the dialect's name, e.g. 'cnbank' or 'iso20022'")
    work_dir = Attribute("where the adapter keeps its files")

    def build_batch(spec, items):
        """Write, sign (and encrypt) a batch document from streamed BatchItems; returns Built.

        Blocking: the flow calls it on a pool thread. An adapter may also offer
        `build_batch_rows(spec, blocks)`, the same from lists of row tuples in
        BATCH_ROW_FIELDS order (no object per item); the flow then uses that.
        """

    def built_exists(batch):
        """Whether the built document of this batch row is still in the work dir."""

    def deliver_batch(batch, recorder):
        """Put the built document where the bank takes it (SFTP upload; nothing for HTTPS). Deferred."""

    def submit_batch(batch, recorder, before):
        """Send the batch; `before(conn)` is run in the transaction journaling the request.

        Deferred firing with a Reply, or None when there is no verified answer.
        """

    def batch_status(batch, recorder):
        """Ask what the bank knows of the batch. Deferred firing with BatchStatus or None."""

    def fetch_results(batch, recorder):
        """Fetch and verify the batch's results. Deferred firing with a ResultSet; ResultsRefused."""

    def send_refund(refund, lines, recorder, before):
        """Send a refund of `lines` (dicts: seq, batch_no, amount). Deferred: Reply or None."""

    def refund_status(refund, recorder):
        """Ask what the bank knows of a refund. Deferred: RefundStatus or None."""

    def dispute(dispute, recorder, before):
        """Report an error in a batch's results to the bank (article 26). Deferred: Reply or None."""

    def fetch_statement(period, recorder):
        """Fetch the bank's statement for a period ("D20261128", "M202611"). Deferred: the statement."""

    def after_results(batch):
        """Housekeeping once the bank is done with a batch: its results applied, or the batch
        rejected whole (RJCT) or refused (remove uploads). Deferred."""

    def close():
        """Release connections. Deferred or None."""

    # Optional: an adapter with a `timing` attribute (a RequestTiming) times its requests through
    # it; the gateway replaces it with one that feeds /metrics (gateway_bank_request_*).


class IBankAdapterFactory(Interface):
    """What the entry point `subsidy_gateway.bank_adapters:<dialect>` names."""

    dialect = Attribute("the dialect's name, equal to the entry point's name")

    def load_settings(reader, data, base_dir):
        """Validate the dialect's part of a bank file (a dict of the keys other than bank_id, name,
        dialect, payer_acct, payer_name); report every problem through `reader.err(key, message)`
        (gateway.config.Reader, which names the file) and return the settings object, or None.
        The settings must have status_poll_s, return_poll_s, result_working_days and
        late_return_window_days for the flows.
        """

    def make(reactor, bank, cfg, faults):
        """Build the adapter for one bank (gateway.config.BankConfig): load its keys, refusing
        unsafe or missing ones with gateway.bankplugins.AdapterError naming the file and key."""
