"""The gateway's durable state: orders, items, batches, journal and alarms.

Declared as SQLAlchemy Core tables (no ORM: nothing maps rows to objects, and
gatewayctl's reads load faster without it); the schema itself is created only by
the Alembic migrations in `gateway/migrations/`. Money columns are integers of fen.
Times are ISO 8601 strings with offset (+08:00), as the core and banks write
them, so the journal's hash chain sees exactly the text that was stored.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table,
                        Text, UniqueConstraint)


metadata = MetaData()


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


# A disbursement order (发放单) pulled from the core.
orders = Table(
    "orders", metadata,
    Column("order_no", String(64), primary_key=True),
    Column("bank_id", String(32), index=True, nullable=False),
    Column("budget_unit", String(200), nullable=False),
    Column("project_code", String(64), nullable=False),
    Column("project_name", String(200), nullable=False),
    Column("project_short", String(16), nullable=False),
    Column("region", String(16), nullable=False),
    Column("total_amount", BigInteger, nullable=False),
    Column("total_count", Integer, nullable=False),
    Column("funded_at", String(40), nullable=False),
    Column("state", String(16), index=True, nullable=False),
    Column("detail", Text),          # JSON: why INVALID, etc.
    Column("core_state_pushed", String(16)),
    Column("results_pending", Integer, default=0, nullable=False),  # 1: results to push to the core
    Column("retry_requested", Integer, default=0, nullable=False),  # 1: send corrected items now
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)


# One recipient line of an order (发放明细).
items = Table(
    "items", metadata,
    # The console's per-state count and sum of an order read this index alone, and its items
    # filtered by state and reason are paged along it by seq (migration 0018).
    Column("order_no", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("id_number", String(18), nullable=False),
    Column("account_no", String(32), nullable=False),
    Column("account_bank", String(200), nullable=False),
    # core-api.md: the account bank's 12-digit CNAPS code (联行号) when the core holds it;
    # iso20022 names the creditor agent by it (ClrSysMmbId) instead of by name.
    Column("account_bank_code", String(12)),
    Column("amount", BigInteger, nullable=False),
    Column("remark", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("batch_no", String(64)),
    Column("reason_code", String(8)),
    Column("reason_text", String(200)),
    Column("bank_serial", String(64)),
    Column("result_at", String(40), index=True),  # reports select a month by it
    Column("pushed", String(16)),    # status last pushed to the core
    # core-api.md result versions: the version given to the item's current result (never
    # reused: +1 for every new result), the result it was given to (version_sig), and the
    # version the core has acknowledged.
    Column("result_version", Integer),
    Column("version_sig", String(400)),
    Column("pushed_version", Integer),
    Column("orig_batch_no", String(64)),  # RETRY: the batch it last failed in
    Index("ix_items_order_counts", "order_no", "status", "reason_code", "seq", "amount"),
)


# One transmission to a bank (发放批次): PAY, RETRY or REFUND.
batches = Table(
    "batches", metadata,
    Column("batch_no", String(64), primary_key=True),
    Column("order_no", String(64), index=True, nullable=False),
    Column("bank_id", String(32), index=True, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("state", String(16), index=True, nullable=False),
    Column("total_count", Integer, nullable=False),
    Column("total_amount", BigInteger, nullable=False),
    Column("file_name", String(100)),
    # the batch document's digest, hex: SM3 (cnbank), SHA-256 (iso20022); file_digest_alg names
    # it (NULL for batches built before migration 0019)
    Column("file_digest", String(64)),
    Column("file_digest_alg", String(16)),
    Column("file_enc_key", Text),    # SM2-enveloped key||iv, base64
    Column("bank_batch_no", String(64)),
    # where the dialect's fetch_results reads the bank's results from: the bank's result file
    # name (cnbank), the journal id of the pain.002 ("parts:<id>" for a split batch; iso20022)
    Column("result_ref", String(100)),
    Column("result_sm3", String(64)),   # the bank's result file's SM3 (cnbank), else empty
    Column("result_enc_key", Text),
    Column("reject_code", String(8)),
    Column("reject_msg", String(500)),
    Column("succ_cnt", Integer),
    Column("succ_amt", BigInteger),
    Column("fail_cnt", Integer),
    Column("fail_amt", BigInteger),
    Column("attempts", Integer, default=0, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("next_check_at", BigInteger),  # reactor seconds, whole
    Column("done_at", BigInteger),  # reactor seconds: late returns asked until + window
    Column("confirm_due", String(10)),   # article 26: check within 5 working days
    Column("dispute_due", String(10)),   # and report errors within 3 more
    Column("confirmed_by", String(100)),
    Column("confirmed_at", String(40)),
    Column("overdue_alarmed", Integer, default=0, nullable=False),
    Column("bank_due", String(10)),      # the bank owes its results by then
    Column("bank_overdue_alarmed", Integer, default=0, nullable=False),
    # consecutive questions (or resends) without a usable answer: the backoff (gateway/backoff.py)
    Column("failures", Integer, default=0, nullable=False),
)


# One message or file exchanged, or one operator-visible event (报文日志).
#
# Append-only and hash-chained: `hash` covers every column and `prev_hash`,
# so an edited or deleted entry breaks the chain at that point.
journal = Table(
    "journal", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),
    Column("direction", String(8), nullable=False),         # in / out / event
    Column("peer", String(64), nullable=False),
    Column("channel", String(16), nullable=False),          # tcp / sftp / http / rpc / daemon
    # the message type: up to an ISO 20022 MsgNmId (Max35Text), e.g. pain.002.001.03.ch.02
    Column("tx_code", String(35), nullable=False),
    Column("msg_id", String(64)),
    Column("order_no", String(64), index=True),
    Column("batch_no", String(64), index=True),
    Column("verified", String(200), nullable=False),
    Column("payload", LargeBinary),  # small payloads, as on the wire
    Column("payload_ref", String(200)),  # big payloads: archive file name
    Column("payload_size", BigInteger, nullable=False),
    Column("payload_sm3", String(64), nullable=False),
    Column("decoded", Text, nullable=False),                # masked, human-readable view
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("mac", String(64)),       # HMAC-SM3 of hash, key outside the database
)


# One row: the last journal entry's id and hash; locking it serialises appends.
journal_head = Table(
    "journal_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("last_id", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("keyed_from", Integer),   # first entry with a MAC; NULL: none yet
)

# One row per cold archive file that journal entries were moved to (`gatewayctl journal archive`,
# gateway/journal_cold.py): entries first_id..last_id, the hash before them and of the last, the
# file and its digests, and a MAC under the journal key. The row with the highest last_id is the
# anchor the live chain continues from.
journal_cuts = Table(
    "journal_cuts", metadata,
    Column("id", Integer, primary_key=True),
    Column("first_id", Integer, nullable=False),
    Column("last_id", Integer, nullable=False, unique=True),
    Column("prev_hash", String(64), nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("entries", Integer, nullable=False),
    Column("file", String(200), nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("file_sm3", String(64), nullable=False),
    Column("at", String(40), nullable=False),
    Column("mac", String(64)),
)


class RefundState:
    NEW = "NEW"                # created by refund.request, RF01 not sent yet
    SUBMITTING = "SUBMITTING"  # RF01 journaled as sent; RQ01 first after a crash
    ACCEPTED = "ACCEPTED"      # RF01 answered 0000; following RQ01
    DONE = "DONE"              # the bank returned the money
    REFUSED = "REFUSED"        # RF01 answered an E code
    RJCT = "RJCT"              # the bank refused the refund after accepting it

    LIVE = (NEW, SUBMITTING, ACCEPTED)


# A refund to the original channel (原渠道退回) of items that cannot be paid.
refunds = Table(
    "refunds", metadata,
    Column("refund_no", String(64), primary_key=True),
    Column("order_no", String(64), index=True, nullable=False),
    Column("bank_id", String(32), index=True, nullable=False),
    Column("state", String(16), index=True, nullable=False),
    Column("total_count", Integer, nullable=False),
    Column("total_amount", BigInteger, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("approved_by", String(100), nullable=False),
    Column("caller", String(200), nullable=False),
    Column("refund_serial", String(64)),
    Column("returned_to", String(32)),
    Column("refund_amount", BigInteger),
    Column("reject_code", String(8)),
    Column("reject_msg", String(500)),
    Column("attempts", Integer, default=0, nullable=False),
    Column("next_check_at", BigInteger),
    Column("failures", Integer, default=0, nullable=False),   # as batches.failures
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)


# One item of a refund, with the batch that reported it failed.
refund_items = Table(
    "refund_items", metadata,
    Column("refund_no", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("order_no", String(64), nullable=False),
    Column("batch_no", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
)


# A paid item the bank later returned (退票), applied once per ReturnSerial.
late_returns = Table(
    "late_returns", metadata,
    Column("return_serial", String(64), primary_key=True),
    Column("bank_id", String(32), primary_key=True),
    Column("batch_no", String(64), nullable=False),
    Column("order_no", String(64), index=True, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason_code", String(8), nullable=False),
    Column("return_date", String(8), nullable=False),
    Column("applied_at", String(40), nullable=False),
    Column("journal_id", Integer, index=True, nullable=False),
)


class DisputeState:
    NEW = "NEW"                # raised by batch.dispute, DP01 not sent yet
    SUBMITTING = "SUBMITTING"  # DP01 journaled as sent; sent again with the same DisputeNo
    ACCEPTED = "ACCEPTED"      # the bank took it
    REFUSED = "REFUSED"        # refused for good: an operator settles it with the bank

    LIVE = (NEW, SUBMITTING)


# An error in a batch's results reported to the bank (DP01), article 26.
disputes = Table(
    "disputes", metadata,
    Column("dispute_no", String(64), primary_key=True),
    Column("batch_no", String(64), index=True, nullable=False),
    Column("order_no", String(64), nullable=False),
    Column("bank_id", String(32), index=True, nullable=False),
    Column("seqs", Text, nullable=False),             # JSON list
    Column("reason", String(200), nullable=False),
    Column("raised_by", String(100), nullable=False),
    Column("state", String(16), index=True, nullable=False),  # NEW, SUBMITTING, ACCEPTED, REFUSED
    Column("due", String(10)),
    Column("on_time", Integer),
    Column("attempts", Integer, default=0, nullable=False),
    Column("next_check_at", BigInteger),   # DP01 not again before (backoff)
    Column("failures", Integer, default=0, nullable=False),       # as batches.failures
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)


# A correction (信息更正) of a failed item, with its evidence; every one is kept.
corrections = Table(
    "corrections", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_no", String(64), index=True, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", String(40), nullable=False),
    Column("failed_batch_no", String(64)),
    Column("reason_code", String(8)),
    Column("old_values", Text, nullable=False),     # JSON of the fields before
    Column("new_values", Text, nullable=False),     # JSON of the fields changed
    Column("confirmed_by", String(100), nullable=False),   # the recipient or guardian
    Column("approved_by", String(100), nullable=False),    # the department head
    Column("approval_ref", String(100), nullable=False),   # the approval document
    Column("caller", String(200), nullable=False),
    Column("journal_id", Integer, index=True, nullable=False),
)


# Something an operator must look at (告警): a contract fault, a rejected file, a double payment.
#
# One row is one episode; see gateway/alarms.py.
alarms = Table(
    "alarms", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),
    Column("severity", String(8), nullable=False),          # warning / critical
    Column("kind", String(40), nullable=False),
    Column("bank_id", String(32)),
    Column("order_no", String(64)),
    Column("batch_no", String(64)),
    Column("message", Text, nullable=False),
    Column("journal_id", Integer, index=True),
    Column("acknowledged_by", String(64)),
    # the episode (gateway/alarms.py): what makes two raises the same alarm, how often it
    # was seen, when last, and when the daemon saw the condition end
    Column("key", String(200)),
    Column("count", Integer, default=1, nullable=False),
    Column("last_at", String(40)),
    Column("last_message", Text),
    Column("cleared_at", String(40)),
    Column("acknowledged_at", String(40)),
    Column("ack_comment", Text),
    Index("ix_alarms_open", "kind", "cleared_at"),
)


# A bank's statement (对账单) of one period, as fetched: cnbank RC01 or ISO camt.053.
#
# Stored again whole when fetched again from the same source; `totals` keeps the
# dialect's own summary (the cnbank H line) as JSON.
statements = Table(
    "statements", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("bank_id", String(32), nullable=False),
    Column("period", String(16), nullable=False),           # D20261128, M202611, Y2026
    Column("source", String(200), nullable=False),          # cnbank:STMT_M202611.txt, camt.053:<MsgId>
    Column("dialect", String(16), nullable=False),          # cnbank / entries
    Column("account", String(34)),   # PayerAcct, the holding account
    Column("opening_balance", BigInteger),
    Column("closing_balance", BigInteger),
    Column("totals", Text),
    Column("line_count", Integer, nullable=False),
    Column("fetched_at", String(40), nullable=False),
    Column("journal_id", Integer),
    UniqueConstraint("bank_id", "period", "source", name="uq_statements_bank_period_source"),
)


# One line of a statement: a batch or refund (cnbank), or one booked entry (camt.053).
statement_lines = Table(
    "statement_lines", metadata,
    Column("statement_id", Integer, primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("kind", String(8), nullable=False),              # batch / refund / entry
    Column("reference", String(64), index=True, nullable=False),  # BatchNo, RefundNo, EndToEndId
    Column("order_no", String(64)),
    Column("count", Integer),
    Column("amount", BigInteger, nullable=False),
    Column("paid_count", Integer),
    Column("paid_amount", BigInteger),
    Column("failed_count", Integer),
    Column("failed_amount", BigInteger),
    Column("returned_count", Integer),
    Column("returned_amount", BigInteger),
    Column("credit", Integer),       # entries: 1 credit, 0 debit
    Column("entry_kind", String(16)),  # entries: payment / return / refund
    Column("bank_ref", String(64)),  # RefundSerial, the bank's entry reference
    Column("booked", String(10)),    # YYYY-MM-DD
)


# Where a bank's report feed (ISO 20022 GET /reports) was read up to.
bank_feeds = Table(
    "bank_feeds", metadata,
    Column("bank_id", String(32), primary_key=True),
    Column("cursor", String(64)),
    Column("updated_at", String(40), nullable=False),
)


# A verified document from a bank's report feed; its bytes are in the journal entry.
bank_reports = Table(
    "bank_reports", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("bank_id", String(32), index=True, nullable=False),
    Column("cursor", String(64), nullable=False),
    Column("kind", String(20), nullable=False),             # pain.002.001.11, camt.054.001.08, ...
    Column("msg_id", String(64), nullable=False),
    Column("ref", String(64), index=True),   # pain.002: OrgnlMsgId
    Column("journal_id", Integer, nullable=False),
    Column("received_at", String(40), nullable=False),
)


# A batch's result sheet (交易结果) as produced by the gateway: the PDF, sealed with its SM2 key.
#
# The PDF and its detached signature are journal payloads (`journal_id`, `sig_journal_id`);
# `filed_at`/`filed_by` record when the department filed it with finance (article 26).
result_sheets = Table(
    "result_sheets", metadata,
    Column("batch_no", String(64), primary_key=True),
    Column("order_no", String(64), index=True, nullable=False),
    Column("bank_id", String(32), index=True, nullable=False),
    Column("produced_at", String(40), nullable=False),
    Column("pdf_sm3", String(64), nullable=False),
    Column("pdf_sha256", String(64), nullable=False),
    Column("pdf_size", BigInteger, nullable=False),
    Column("signer", String(100), nullable=False),          # SHA-256 fingerprint of the seal's public key
    Column("journal_id", Integer, nullable=False),          # the PDF
    Column("sig_journal_id", Integer, nullable=False),      # its detached SM2 signature (DER)
    Column("filed_at", String(40)),
    Column("filed_by", String(100)),
)


# Who may act (gateway/leadership.py): one row per lease ("gateway", or "core" and each bank).
#
# `epoch` grows by one with each new holder, in the transaction that takes the lease; it is
# the fencing token every transaction of the flows checks. Times are milliseconds of the
# database's clock (PostgreSQL `clock_timestamp()`), which alone decides expiry.
leases = Table(
    "leases", metadata,
    Column("name", String(64), primary_key=True),
    Column("epoch", BigInteger, default=0, nullable=False),
    Column("holder", String(200)),
    Column("acquired_ms", BigInteger),
    Column("expires_ms", BigInteger),     # NULL on SQLite (flock)
)


# One row per (lease, epoch): who held it, from when, and until when the database let it
# (the last renewal's expiry, or when it was released); for operators and the overlap check.
lease_terms = Table(
    "lease_terms", metadata,
    Column("name", String(64), primary_key=True),
    Column("epoch", BigInteger, primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger),
    Column("released_ms", BigInteger),
)


# A signed-in console session, by the SHA-256 of its id (the cookie is never stored).
console_sessions = Table(
    "console_sessions", metadata,
    Column("sid_hash", String(64), primary_key=True),
    Column("user_name", String(64), index=True, nullable=False),
    Column("role", String(16), nullable=False),
    Column("signed_in_at", Float, nullable=False),     # seconds of the daemon's clock
    Column("last_seen", Float, nullable=False),
)


# Wrong console passwords in a row, and until when the account is locked.
console_lockouts = Table(
    "console_lockouts", metadata,
    Column("user_name", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("locked_until", Float, nullable=False),
)
