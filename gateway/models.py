"""The gateway's durable state: orders, items, batches, journal and alarms.

Declared with SQLAlchemy 2; the schema itself is created only by the Alembic
migrations in `gateway/migrations/`. Money columns are integers of fen.
Times are ISO 8601 strings with offset (+08:00), as the core and banks write
them, so the journal's hash chain sees exactly the text that was stored.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class OrderState:
    FUNDED = "FUNDED"          # header seen at the core, details not loaded yet
    LOADING = "LOADING"        # details being pulled and validated
    INVALID = "INVALID"        # failed validation: nothing of it is sent
    LOADED = "LOADED"          # details stored and valid
    DISPATCHED = "DISPATCHED"  # a batch of it was accepted by the bank
    SETTLED = "SETTLED"        # every item PAID or REFUNDED

    LIVE = (FUNDED, LOADING, LOADED, DISPATCHED)


class ItemStatus:
    PENDING = "PENDING"
    SENT = "SENT"
    PAID = "PAID"
    FAILED = "FAILED"
    CORRECTED = "CORRECTED"
    REFUND_PENDING = "REFUND_PENDING"
    REFUNDED = "REFUNDED"

    ALL = (PENDING, SENT, PAID, FAILED, CORRECTED, REFUND_PENDING, REFUNDED)
    # What the core is told about (core-api.md results).
    REPORTED = (PAID, FAILED, REFUNDED)


class BatchState:
    BUILDING = "BUILDING"      # files being written locally
    BUILT = "BUILT"            # files ready in the work dir
    UPLOADED = "UPLOADED"      # files on the bank's SFTP
    SUBMITTING = "SUBMITTING"  # BP01 journaled as sent; outcome unknown until a reply or BQ01
    ACCEPTED = "ACCEPTED"      # BP01 answered 0000
    REFUSED = "REFUSED"        # BP01 answered an E code: not remembered by the bank
    DONE = "DONE"              # results applied
    RJCT = "RJCT"              # the bank refused the whole batch after accepting it

    LIVE = (BUILDING, BUILT, UPLOADED, SUBMITTING, ACCEPTED)


class Order(Base):
    """A disbursement order (发放单) pulled from the core."""

    __tablename__ = "orders"
    order_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    bank_id: Mapped[str] = mapped_column(String(32), index=True)
    budget_unit: Mapped[str] = mapped_column(String(200))
    project_code: Mapped[str] = mapped_column(String(64))
    project_name: Mapped[str] = mapped_column(String(200))
    project_short: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(16))
    total_amount: Mapped[int] = mapped_column(BigInteger)
    total_count: Mapped[int] = mapped_column(Integer)
    funded_at: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16), index=True)
    detail: Mapped[str | None] = mapped_column(Text)          # JSON: why INVALID, etc.
    core_state_pushed: Mapped[str | None] = mapped_column(String(16))
    results_pending: Mapped[int] = mapped_column(Integer, default=0)  # 1: results to push to the core
    retry_requested: Mapped[int] = mapped_column(Integer, default=0)  # 1: send corrected items now
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))


class Item(Base):
    """One recipient line of an order (发放明细)."""

    __tablename__ = "items"
    # The console's per-state count and sum of an order read this index alone, and its items
    # filtered by state and reason are paged along it by seq (migration 0018).
    __table_args__ = (Index("ix_items_order_counts", "order_no", "status", "reason_code", "seq", "amount"),)
    order_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    id_number: Mapped[str] = mapped_column(String(18))
    account_no: Mapped[str] = mapped_column(String(32))
    account_bank: Mapped[str] = mapped_column(String(200))
    # core-api.md: the account bank's 12-digit CNAPS code (联行号) when the core holds it;
    # iso20022 names the creditor agent by it (ClrSysMmbId) instead of by name.
    account_bank_code: Mapped[str | None] = mapped_column(String(12))
    amount: Mapped[int] = mapped_column(BigInteger)
    remark: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    batch_no: Mapped[str | None] = mapped_column(String(64))
    reason_code: Mapped[str | None] = mapped_column(String(8))
    reason_text: Mapped[str | None] = mapped_column(String(200))
    bank_serial: Mapped[str | None] = mapped_column(String(64))
    result_at: Mapped[str | None] = mapped_column(String(40), index=True)  # reports select a month by it
    pushed: Mapped[str | None] = mapped_column(String(16))    # status last pushed to the core
    # core-api.md result versions: the version given to the item's current result (never
    # reused: +1 for every new result), the result it was given to (version_sig), and the
    # version the core has acknowledged.
    result_version: Mapped[int | None] = mapped_column(Integer)
    version_sig: Mapped[str | None] = mapped_column(String(400))
    pushed_version: Mapped[int | None] = mapped_column(Integer)
    orig_batch_no: Mapped[str | None] = mapped_column(String(64))  # RETRY: the batch it last failed in


class Batch(Base):
    """One transmission to a bank (发放批次): PAY, RETRY or REFUND."""

    __tablename__ = "batches"
    batch_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_no: Mapped[str] = mapped_column(String(64), index=True)
    bank_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    total_count: Mapped[int] = mapped_column(Integer)
    total_amount: Mapped[int] = mapped_column(BigInteger)
    file_name: Mapped[str | None] = mapped_column(String(100))
    file_sm3: Mapped[str | None] = mapped_column(String(64))
    file_enc_key: Mapped[str | None] = mapped_column(Text)    # SM2-enveloped key||iv, base64
    bank_batch_no: Mapped[str | None] = mapped_column(String(64))
    result_file: Mapped[str | None] = mapped_column(String(100))
    result_sm3: Mapped[str | None] = mapped_column(String(64))
    result_enc_key: Mapped[str | None] = mapped_column(Text)
    reject_code: Mapped[str | None] = mapped_column(String(8))
    reject_msg: Mapped[str | None] = mapped_column(String(500))
    succ_cnt: Mapped[int | None] = mapped_column(Integer)
    succ_amt: Mapped[int | None] = mapped_column(BigInteger)
    fail_cnt: Mapped[int | None] = mapped_column(Integer)
    fail_amt: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    next_check_at: Mapped[int | None] = mapped_column(BigInteger)  # reactor seconds, whole
    done_at: Mapped[int | None] = mapped_column(BigInteger)  # reactor seconds: late returns asked until + window
    confirm_due: Mapped[str | None] = mapped_column(String(10))   # article 26: check within 5 working days
    dispute_due: Mapped[str | None] = mapped_column(String(10))   # and report errors within 3 more
    confirmed_by: Mapped[str | None] = mapped_column(String(100))
    confirmed_at: Mapped[str | None] = mapped_column(String(40))
    overdue_alarmed: Mapped[int] = mapped_column(Integer, default=0)
    bank_due: Mapped[str | None] = mapped_column(String(10))      # the bank owes its results by then
    bank_overdue_alarmed: Mapped[int] = mapped_column(Integer, default=0)
    # consecutive questions (or resends) without a usable answer: the backoff (gateway/backoff.py)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class JournalEntry(Base):
    """One message or file exchanged, or one operator-visible event (报文日志).

    Append-only and hash-chained: `hash` covers every column and `prev_hash`,
    so an edited or deleted entry breaks the chain at that point.
    """

    __tablename__ = "journal"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[str] = mapped_column(String(40))
    direction: Mapped[str] = mapped_column(String(8))         # in / out / event
    peer: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))          # tcp / sftp / http / rpc / daemon
    # the message type: up to an ISO 20022 MsgNmId (Max35Text), e.g. pain.002.001.03.ch.02
    tx_code: Mapped[str] = mapped_column(String(35))
    msg_id: Mapped[str | None] = mapped_column(String(64))
    order_no: Mapped[str | None] = mapped_column(String(64), index=True)
    batch_no: Mapped[str | None] = mapped_column(String(64), index=True)
    verified: Mapped[str] = mapped_column(String(200))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)  # small payloads, as on the wire
    payload_ref: Mapped[str | None] = mapped_column(String(200))  # big payloads: archive file name
    payload_size: Mapped[int] = mapped_column(BigInteger)
    payload_sm3: Mapped[str] = mapped_column(String(64))
    decoded: Mapped[str] = mapped_column(Text)                # masked, human-readable view
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))       # HMAC-SM3 of hash, key outside the database


class JournalHead(Base):
    """One row: the last journal entry's id and hash; locking it serialises appends."""

    __tablename__ = "journal_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
    keyed_from: Mapped[int | None] = mapped_column(Integer)   # first entry with a MAC; NULL: none yet


class RefundState:
    NEW = "NEW"                # created by refund.request, RF01 not sent yet
    SUBMITTING = "SUBMITTING"  # RF01 journaled as sent; RQ01 first after a crash
    ACCEPTED = "ACCEPTED"      # RF01 answered 0000; following RQ01
    DONE = "DONE"              # the bank returned the money
    REFUSED = "REFUSED"        # RF01 answered an E code
    RJCT = "RJCT"              # the bank refused the refund after accepting it

    LIVE = (NEW, SUBMITTING, ACCEPTED)


class Refund(Base):
    """A refund to the original channel (原渠道退回) of items that cannot be paid."""

    __tablename__ = "refunds"
    refund_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_no: Mapped[str] = mapped_column(String(64), index=True)
    bank_id: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    total_count: Mapped[int] = mapped_column(Integer)
    total_amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    approved_by: Mapped[str] = mapped_column(String(100))
    caller: Mapped[str] = mapped_column(String(200))
    refund_serial: Mapped[str | None] = mapped_column(String(64))
    returned_to: Mapped[str | None] = mapped_column(String(32))
    refund_amount: Mapped[int | None] = mapped_column(BigInteger)
    reject_code: Mapped[str | None] = mapped_column(String(8))
    reject_msg: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[int | None] = mapped_column(BigInteger)
    failures: Mapped[int] = mapped_column(Integer, default=0)   # as batches.failures
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))


class RefundItem(Base):
    """One item of a refund, with the batch that reported it failed."""

    __tablename__ = "refund_items"
    refund_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_no: Mapped[str] = mapped_column(String(64))
    batch_no: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)


class LateReturn(Base):
    """A paid item the bank later returned (退票), applied once per ReturnSerial."""

    __tablename__ = "late_returns"
    return_serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    bank_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_no: Mapped[str] = mapped_column(String(64))
    order_no: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    reason_code: Mapped[str] = mapped_column(String(8))
    return_date: Mapped[str] = mapped_column(String(8))
    applied_at: Mapped[str] = mapped_column(String(40))
    journal_id: Mapped[int] = mapped_column(Integer, index=True)


class DisputeState:
    NEW = "NEW"                # raised by batch.dispute, DP01 not sent yet
    SUBMITTING = "SUBMITTING"  # DP01 journaled as sent; sent again with the same DisputeNo
    ACCEPTED = "ACCEPTED"      # the bank took it
    REFUSED = "REFUSED"        # refused for good: an operator settles it with the bank

    LIVE = (NEW, SUBMITTING)


class Dispute(Base):
    """An error in a batch's results reported to the bank (DP01), article 26."""

    __tablename__ = "disputes"
    dispute_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    batch_no: Mapped[str] = mapped_column(String(64), index=True)
    order_no: Mapped[str] = mapped_column(String(64))
    bank_id: Mapped[str] = mapped_column(String(32), index=True)
    seqs: Mapped[str] = mapped_column(Text)             # JSON list
    reason: Mapped[str] = mapped_column(String(200))
    raised_by: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), index=True)  # NEW, SUBMITTING, ACCEPTED, REFUSED
    due: Mapped[str | None] = mapped_column(String(10))
    on_time: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[int | None] = mapped_column(BigInteger)   # DP01 not again before (backoff)
    failures: Mapped[int] = mapped_column(Integer, default=0)       # as batches.failures
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))


class Correction(Base):
    """A correction (信息更正) of a failed item, with its evidence; every one is kept."""

    __tablename__ = "corrections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[str] = mapped_column(String(40))
    failed_batch_no: Mapped[str | None] = mapped_column(String(64))
    reason_code: Mapped[str | None] = mapped_column(String(8))
    old_values: Mapped[str] = mapped_column(Text)     # JSON of the fields before
    new_values: Mapped[str] = mapped_column(Text)     # JSON of the fields changed
    confirmed_by: Mapped[str] = mapped_column(String(100))   # the recipient or guardian
    approved_by: Mapped[str] = mapped_column(String(100))    # the department head
    approval_ref: Mapped[str] = mapped_column(String(100))   # the approval document
    caller: Mapped[str] = mapped_column(String(200))
    journal_id: Mapped[int] = mapped_column(Integer, index=True)


class Alarm(Base):
    """Something an operator must look at (告警): a contract fault, a rejected file, a double payment.

    One row is one episode; see gateway/alarms.py.
    """

    __tablename__ = "alarms"
    __table_args__ = (Index("ix_alarms_open", "kind", "cleared_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(8))          # warning / critical
    kind: Mapped[str] = mapped_column(String(40))
    bank_id: Mapped[str | None] = mapped_column(String(32))
    order_no: Mapped[str | None] = mapped_column(String(64))
    batch_no: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    journal_id: Mapped[int | None] = mapped_column(Integer, index=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    # the episode (gateway/alarms.py): what makes two raises the same alarm, how often it
    # was seen, when last, and when the daemon saw the condition end
    key: Mapped[str | None] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(Integer, default=1)
    last_at: Mapped[str | None] = mapped_column(String(40))
    last_message: Mapped[str | None] = mapped_column(Text)
    cleared_at: Mapped[str | None] = mapped_column(String(40))
    acknowledged_at: Mapped[str | None] = mapped_column(String(40))
    ack_comment: Mapped[str | None] = mapped_column(Text)


class Statement(Base):
    """A bank's statement (对账单) of one period, as fetched: cnbank RC01 or ISO camt.053.

    Stored again whole when fetched again from the same source; `totals` keeps the
    dialect's own summary (the cnbank H line) as JSON.
    """

    __tablename__ = "statements"
    __table_args__ = (UniqueConstraint("bank_id", "period", "source",
                                       name="uq_statements_bank_period_source"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bank_id: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(16))           # D20261128, M202611, Y2026
    source: Mapped[str] = mapped_column(String(200))          # cnbank:STMT_M202611.txt, camt.053:<MsgId>
    dialect: Mapped[str] = mapped_column(String(16))          # cnbank / entries
    account: Mapped[str | None] = mapped_column(String(34))   # PayerAcct, the holding account
    opening_balance: Mapped[int | None] = mapped_column(BigInteger)
    closing_balance: Mapped[int | None] = mapped_column(BigInteger)
    totals: Mapped[str | None] = mapped_column(Text)
    line_count: Mapped[int] = mapped_column(Integer)
    fetched_at: Mapped[str] = mapped_column(String(40))
    journal_id: Mapped[int | None] = mapped_column(Integer)


class StatementLine(Base):
    """One line of a statement: a batch or refund (cnbank), or one booked entry (camt.053)."""

    __tablename__ = "statement_lines"
    statement_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))              # batch / refund / entry
    reference: Mapped[str] = mapped_column(String(64), index=True)  # BatchNo, RefundNo, EndToEndId
    order_no: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int | None] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    paid_count: Mapped[int | None] = mapped_column(Integer)
    paid_amount: Mapped[int | None] = mapped_column(BigInteger)
    failed_count: Mapped[int | None] = mapped_column(Integer)
    failed_amount: Mapped[int | None] = mapped_column(BigInteger)
    returned_count: Mapped[int | None] = mapped_column(Integer)
    returned_amount: Mapped[int | None] = mapped_column(BigInteger)
    credit: Mapped[int | None] = mapped_column(Integer)       # entries: 1 credit, 0 debit
    entry_kind: Mapped[str | None] = mapped_column(String(16))  # entries: payment / return / refund
    bank_ref: Mapped[str | None] = mapped_column(String(64))  # RefundSerial, the bank's entry reference
    booked: Mapped[str | None] = mapped_column(String(10))    # YYYY-MM-DD


class BankFeed(Base):
    """Where a bank's report feed (ISO 20022 GET /reports) was read up to."""

    __tablename__ = "bank_feeds"
    bank_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[str] = mapped_column(String(40))


class BankReport(Base):
    """A verified document from a bank's report feed; its bytes are in the journal entry."""

    __tablename__ = "bank_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bank_id: Mapped[str] = mapped_column(String(32), index=True)
    cursor: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))             # pain.002.001.11, camt.054.001.08, ...
    msg_id: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(64), index=True)   # pain.002: OrgnlMsgId
    journal_id: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[str] = mapped_column(String(40))



class ResultSheet(Base):
    """A batch's result sheet (交易结果) as produced by the gateway: the PDF, sealed with its SM2 key.

    The PDF and its detached signature are journal payloads (`journal_id`, `sig_journal_id`);
    `filed_at`/`filed_by` record when the department filed it with finance (article 26).
    """

    __tablename__ = "result_sheets"
    batch_no: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_no: Mapped[str] = mapped_column(String(64), index=True)
    bank_id: Mapped[str] = mapped_column(String(32), index=True)
    produced_at: Mapped[str] = mapped_column(String(40))
    pdf_sm3: Mapped[str] = mapped_column(String(64))
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    pdf_size: Mapped[int] = mapped_column(BigInteger)
    signer: Mapped[str] = mapped_column(String(100))          # SHA-256 fingerprint of the seal's public key
    journal_id: Mapped[int] = mapped_column(Integer)          # the PDF
    sig_journal_id: Mapped[int] = mapped_column(Integer)      # its detached SM2 signature (DER)
    filed_at: Mapped[str | None] = mapped_column(String(40))
    filed_by: Mapped[str | None] = mapped_column(String(100))



class Lease(Base):
    """Who may act (gateway/leadership.py): one row per lease ("gateway", or "core" and each bank).

    `epoch` grows by one with each new holder, in the transaction that takes the lease; it is
    the fencing token every transaction of the flows checks. Times are milliseconds of the
    database's clock (PostgreSQL `clock_timestamp()`), which alone decides expiry.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    holder: Mapped[str | None] = mapped_column(String(200))
    acquired_ms: Mapped[int | None] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)     # NULL on SQLite (flock)


class LeaseTerm(Base):
    """One row per (lease, epoch): who held it, from when, and until when the database let it
    (the last renewal's expiry, or when it was released); for operators and the overlap check."""

    __tablename__ = "lease_terms"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger)
    released_ms: Mapped[int | None] = mapped_column(BigInteger)


orders = Order.__table__
class ConsoleSession(Base):
    """A signed-in console session, by the SHA-256 of its id (the cookie is never stored)."""

    __tablename__ = "console_sessions"
    sid_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    signed_in_at: Mapped[float] = mapped_column(Float)     # seconds of the daemon's clock
    last_seen: Mapped[float] = mapped_column(Float)


class ConsoleLockout(Base):
    """Wrong console passwords in a row, and until when the account is locked."""

    __tablename__ = "console_lockouts"
    user_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[float] = mapped_column(Float)


items = Item.__table__
batches = Batch.__table__
journal = JournalEntry.__table__
journal_head = JournalHead.__table__
alarms = Alarm.__table__
corrections = Correction.__table__
refunds = Refund.__table__
late_returns = LateReturn.__table__
disputes = Dispute.__table__
refund_items = RefundItem.__table__
statements = Statement.__table__
statement_lines = StatementLine.__table__
bank_feeds = BankFeed.__table__
bank_reports = BankReport.__table__
result_sheets = ResultSheet.__table__
leases = Lease.__table__
lease_terms = LeaseTerm.__table__
console_sessions = ConsoleSession.__table__
console_lockouts = ConsoleLockout.__table__
