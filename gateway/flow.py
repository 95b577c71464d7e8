"""The disbursement flow for one bank: funded order -> batch -> results -> core.

Every step reads its starting point from the database and commits its outcome
together with the journal entry that caused it, so the daemon resumes from the
database alone after a crash at any instant (domain.md rule 5):

    order:  FUNDED -> LOADING -> LOADED | INVALID -> DISPATCHED -> SETTLED
    batch:  BUILDING -> BUILT -> UPLOADED -> SUBMITTING -> ACCEPTED -> DONE
                                     ^            |                 \\-> RJCT
                                     +-- E007 ----+   (BQ01 first: no blind resend, rule 3)

A batch in SUBMITTING has had its BP01 journaled as sent; whether the bank
got it is unknown until a reply or a BQ01, so BQ01 always comes first. Nothing
from the bank changes state before it is decrypted, verified and parsed whole
(rule 4); a result file is applied in one transaction or not at all.

This module holds the tick, the orders and the batches. The other steps of a
bank's flow are objects of their own, composed by BankFlow on one FlowContext
(gateway/flowctx.py): refund_flow.py (RF01/RQ01), late_returns.py, article26.py
(checks, disputes, deadlines) and core_push.py (results and order states back to
the core). What to do after a bank's reply or status answer is decided once, for
batches, refunds and disputes alike, by gateway/transitions.py.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
import traceback
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update
from sqlalchemy import exc as sa_exc
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from adapters.interface import (BATCH_ROW_FIELDS, BatchItem, BatchSpec, Built, IBankAdapter,
                                IBankRecorder, ResultSet, ResultsRefused, TransportError)
from adapters.core_interface import CoreContractError, CoreError, Exchange, ICoreSystem
from gateway.config import BankConfig, GatewayConfig
from gateway.db import Database, copy_rows, executemany
from gateway.faults import Faults
from gateway.leadership import Deposed
from gateway.journal import Entry, Journal
from gateway.models import BatchState, ItemStatus, OrderState, batches, items, orders, statements
from gateway import backoff
from gateway.article26 import Article26Steps
from gateway.core_push import CorePushSteps, journal_exchange
from gateway.flowctx import FlowContext
from gateway.late_returns import LateReturnSteps
from gateway.refund_flow import RefundSteps
from gateway.rules import (CST, ConservationError, ResultRejected,  # noqa: F401
                           check_conservation, clear_alarm, iso, post_date, raise_alarm)
from gateway.transitions import Next, Phase, after_status, after_submit
from gateway import store   # table access, grouped by table (gateway/store/)
from gateway.masking import mask, mask_text
from gateway.validation import OrderValidator, header_problems, storable, uncarriable

log = Logger()
APPLY_CHUNK = 10000

# One result line applied to its item. Amount and account are checked when the bank repeats
# them (cnbank always does). `status || ''`, not `status`: one row by the primary key (order_no,
# seq). With `status`, PostgreSQL, its statistics not yet knowing the batch's items are SENT,
# chose the counts index ix_items_order_counts (order_no, status, ...) and scanned every SENT
# item of the order for each line: a million results were still not applied after 8 minutes.
APPLY_SQL = ("UPDATE items SET status = ?, reason_code = ?, reason_text = ?, bank_serial = ?, "
             "result_at = ? WHERE order_no = ? AND seq = ? AND batch_no = ? AND status || '' = 'SENT' "
             "AND (CAST(? AS BIGINT) IS NULL OR amount = ?) "
             "AND (CAST(? AS VARCHAR(64)) IS NULL OR account_no = ?)")

# A result file applied set-based: its lines staged in a temporary table (COPY on PostgreSQL),
# then one UPDATE joins them to the batch's SENT items on (order_no, seq, batch_no) and, when the
# bank repeats them, amount and account. An item is updated once however many lines name it,
# so the UPDATE's row count is the number of lines that matched an item of their own: a line
# matching nothing, or a second line for the same item, leaves it short of the line count and
# the file is refused (_apply_results). `status || ''`: as in APPLY_SQL, no index on status
# (PostgreSQL, statistics stale after the batch turned SENT, scanned the counts index per line).
STAGE_COLUMNS = ("seq", "status", "reason_code", "reason_text", "bank_serial", "result_at", "amount",
                 "account_no")
STAGE_SQL = ("CREATE TEMP TABLE apply_lines (seq INTEGER NOT NULL, status VARCHAR(16) NOT NULL, "
             "reason_code TEXT, reason_text TEXT, bank_serial TEXT, result_at TEXT, amount BIGINT, "
             "account_no TEXT)")
STAGED_APPLY_SQL = (
    "UPDATE items SET status = s.status, reason_code = s.reason_code, reason_text = s.reason_text, "
    "bank_serial = s.bank_serial, result_at = s.result_at FROM apply_lines AS s "
    "WHERE items.order_no = ? AND items.batch_no = ? AND items.seq = s.seq "
    "AND items.status || '' = 'SENT' "
    "AND (s.amount IS NULL OR items.amount = s.amount) "
    "AND (s.account_no IS NULL OR items.account_no = s.account_no)")
# Which way each database applies a result file. Measured on a loaded 2-core machine (load 5-8),
# the apply transaction alone on a million SENT items: PostgreSQL per line 101.6 s, staged 52.4 s
# by hash join, about 37 s by merge join. SQLite, no clear winner: a million 20.7 s per line,
# 15.2 s staged; 200,000 per line 7.0 / 5.8 s, staged 8.7 / 6.1 s; in `make bench` the
# fetch+verify+apply stage per line 3.0 s (100k) / 29.3 s (1M), staged 4.4 / 33.1 s. SQLite
# keeps the per-line UPDATE by primary key (_apply_per_line), the path already proven.
STAGED_APPLY = {"postgresql": True, "sqlite": False}


def _s(v: Any, n: int = 200) -> str:
    # A refused header is still stored (to say why): without what the database cannot hold.
    return storable(v[:n]) if isinstance(v, str) else ""


_DIGIT_RUN = re.compile(r"[0-9]{8,}")


def error_text(e: BaseException) -> str:
    """An exception as a log line that holds no personal data.

    A database error's str() quotes the statement's parameters (names, ID and account
    numbers of a whole chunk of items): only the driver's own message is kept, and every
    run of 8 or more digits in what is left is masked (accounts can be that short).
    """
    if isinstance(e, sa_exc.StatementError):
        orig = e.orig
        text = f"{type(e).__name__}: " + (f"{type(orig).__name__}: {orig}" if orig is not None else "")
    else:
        text = f"{type(e).__name__}: {e}"
    return _DIGIT_RUN.sub(lambda m: mask(m.group()), mask_text(text))[:2000]


class ItemStreamRefused(Exception):
    """The core's item stream broke a cap (a line too long, more lines than the header says):
    the order is INVALID with this reason, and the stream is not read further."""


def _i(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


ITEM_COLUMNS = ("order_no", "seq", "name", "id_number", "account_no", "account_bank", "account_bank_code",
                "amount", "remark", "status")


class _Loader:
    """Turns the NDJSON byte stream of one order into validated item rows (runs on the DB thread).

    Bounded: a line longer than `max_line` bytes, or a line past the header's total_count,
    stops the stream (ItemStreamRefused), so the stream is at most about
    (total_count + 1) x max_line bytes. The unfinished line is kept as a list of pieces and
    joined once when its newline comes, so a long line costs its length, not its square.
    The raw copy kept for the journal is created 0600: it holds ID and account numbers.
    """

    def __init__(self, header: dict, raw_path: str, max_line: int = 65536):
        self.v = OrderValidator(header)
        self.max_line = max_line
        self.max_lines = header.get("total_count") or 0
        self.pending: list[bytes] = []    # pieces of the unfinished line
        self.pending_len = 0
        self.line_no = 0
        fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.fchmod(fd, 0o600)   # an older file of the same name keeps its mode otherwise
        self.raw = os.fdopen(fd, "wb")  # noqa: SIM115  (closed in finish/abort)
        self.raw_path = raw_path
        self.bytes = 0
        # feed runs on a pool thread; abort may be called from another while a feed finishes.
        self.lock = threading.Lock()
        self.closed = False

    def _too_long(self, line_no: int) -> ItemStreamRefused:
        return ItemStreamRefused(f"line {line_no}: longer than {self.max_line} bytes "
                                 f"(core.max_item_line_bytes); the item stream was not read further")

    def _hold(self, piece: bytes) -> None:
        if piece:
            self.pending.append(piece)
            self.pending_len += len(piece)
        if self.pending_len > self.max_line:
            raise self._too_long(self.line_no + 1)

    def feed(self, conn: Connection, chunk: bytes) -> None:
        with self.lock:
            if self.closed:
                raise ItemStreamRefused("the load was abandoned")
            self.raw.write(chunk)
            self.bytes += len(chunk)
            nl = chunk.find(b"\n")
            if nl < 0:
                self._hold(chunk)
                return
            if self.pending_len + nl > self.max_line:
                raise self._too_long(self.line_no + 1)
            first = b"".join(self.pending) + chunk[:nl] if self.pending else chunk[:nl]
            self.pending, self.pending_len = [], 0
            lines = chunk[nl + 1:].split(b"\n")
            tail = lines.pop()
            lines.insert(0, first)
            for i, line in enumerate(lines):
                if len(line) > self.max_line:
                    raise self._too_long(self.line_no + 1 + i)
            if self.line_no + len(lines) > self.max_lines:
                raise ItemStreamRefused(
                    f"line {self.max_lines + 1}: more lines than the header's total_count "
                    f"{self.max_lines}; the item stream was not read further")
            self._hold(tail)
            self._rows(conn, lines)

    def _rows(self, conn: Connection, lines: list[bytes]) -> None:
        rows = self.v.check_lines(lines, ItemStatus.PENDING)
        if rows is not None:
            self.line_no += len(lines)
        else:
            rows = self._rows_one_by_one(lines)
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            # COPY, in this chunk's transaction: a row refused fails the chunk whole, as before.
            copy_rows(conn, "items", ITEM_COLUMNS, rows)
        else:
            executemany(conn, f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(ITEM_COLUMNS))})", rows)

    def _rows_one_by_one(self, lines: list[bytes]) -> list[tuple]:
        """The chunk decoded and checked item by item (a line the chunk path did not take)."""
        rows = []
        for obj in self._decode(lines):
            self.line_no += 1
            if isinstance(obj, str):
                self.v.count += 1
                self.v.bad_items += 1
                self.v._reason(f"line {self.line_no}: {obj}")
                continue
            row = self.v.check_item(obj, self.line_no)
            if row is not None:
                rows.append((row["order_no"], row["seq"], row["name"], row["id_number"],
                             row["account_no"], row["account_bank"], row["account_bank_code"], row["amount"],
                             row["remark"], ItemStatus.PENDING))
        return rows

    @staticmethod
    def _decode(lines: list[bytes]) -> list:
        """Each line as a JSON object, or as a string saying why it is not one.

        A chunk of well-formed lines is decoded as one JSON array (five times faster
        than line by line); a chunk holding a bad line is decoded line by line to name it.
        """
        if lines and all(line.startswith(b"{") for line in lines):
            try:
                objs = json.loads(b"[" + b",".join(lines) + b"]")
            except ValueError:
                pass
            else:
                if len(objs) == len(lines) and all(type(o) is dict for o in objs):
                    return objs
        out: list = []
        for line in lines:
            if not line.strip():
                out.append("empty line")
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                out.append(f"not JSON ({getattr(e, 'msg', e)})")
                continue
            out.append(obj if isinstance(obj, dict) else "not a JSON object")
        return out

    def finish(self, conn: Connection) -> list[str]:
        with self.lock:
            tail = b"".join(self.pending)
            if tail.strip():
                if self.line_no + 1 > self.max_lines:
                    raise ItemStreamRefused(
                        f"line {self.max_lines + 1}: more lines than the header's total_count "
                        f"{self.max_lines}")
                self._rows(conn, [tail])
            self.pending, self.pending_len = [], 0
            self.raw.close()
            self.closed = True
            return self.v.finish()

    def abort(self) -> None:
        with self.lock:
            self.closed = True
            self.raw.close()
            try:
                os.unlink(self.raw_path)
            except FileNotFoundError:
                pass


@implementer(IBankRecorder)
class BankFlow:
    """Drives the orders and batches of one bank; `tick` does whatever is due, then returns.

    Composed of steps (no mixins): `refunds`, `returns` (late returns), `article26` and
    `push` (to the core), each built on the one FlowContext `ctx` with the collaborators
    it names; this object is also the IBankRecorder the adapter journals through."""

    def __init__(self, reactor, cfg: GatewayConfig, bank: BankConfig, db: Database, journal: Journal,
                 core: ICoreSystem, adapter: IBankAdapter, faults: Faults, metrics=None):
        self.ctx = FlowContext(reactor, cfg, bank, db, metrics)
        self.journal = journal
        self.core = core
        self.adapter = adapter
        self.faults = faults
        self.bank_id = bank.bank_id
        self.last_poll = float("-inf")
        self.wake_poll = False
        self.stopping = False   # set on SIGTERM: finish the current step, start no other
        # A step that failed waits before it is tried again (doubling, capped), so a fault
        # that persists (a 4xx from the core, a bank that refuses) is not retried and
        # alarmed every tick. Kept in memory: a restart tries everything at once.
        self._backoff: dict[str, tuple[float, float]] = {}
        self._went_through: set[str] = set()   # steps that succeeded since start (see _guard)
        self._statement_day: datetime.date | None = None
        self._core_job: defer.Deferred | None = None
        self._core_idle: list[defer.Deferred] = []
        from gateway.dialect_store import DialectStore
        self.store = DialectStore(self.bank_id)   # IBankRecorder.store
        self.refunds = RefundSteps(self.ctx, adapter, self)
        self.returns = LateReturnSteps(self.ctx)
        self.article26 = Article26Steps(self.ctx, adapter, self)
        self.push = CorePushSteps(self.ctx, core, journal, self._contract_fault)

    # --- what the steps share: the context ------------------------------------

    cfg = property(lambda self: self.ctx.cfg)
    db = property(lambda self: self.ctx.db)

    @property
    def reactor(self):
        return self.ctx.reactor

    @reactor.setter
    def reactor(self, clock) -> None:   # tests drive the flow on a task.Clock
        self.ctx.reactor = clock

    @property
    def bank(self) -> BankConfig:
        return self.ctx.bank

    @bank.setter
    def bank(self, bank: BankConfig) -> None:
        self.ctx.bank = bank

    def now(self) -> float:
        return self.ctx.now()

    def at(self) -> str:
        return self.ctx.at()

    def today(self) -> datetime.date:
        return self.ctx.today()

    def _journal(self, conn: Connection, e: Entry) -> int:
        return self.journal.append(conn, e, self.at())

    def _alarm(self, conn: Connection, severity: str, kind: str, message: str, **kw) -> None:
        self.ctx.alarm(conn, severity, kind, message, **kw)

    def _core_entries(self, conn: Connection, ex: Exchange, tx: str, order_no=None) -> None:
        journal_exchange(self.journal, conn, self.at(), ex, tx, order_no)

    async def push_results(self) -> None:
        await self.push.push_results()

    async def push_states(self) -> None:
        await self.push.push_states()

    async def _contract_fault(self, e: CoreContractError, order_no=None) -> None:
        def rec(conn):
            jid = self._journal(conn, Entry("in", "core", "http", f"{e.method} {e.status}",
                                            f"contract fault: {e.method} {e.url} answered {e.status}",
                                            payload=e.body, order_no=order_no,
                                            verified=f"failed: HTTP {e.status}"))
            said = mask_text(e.body[:200].decode("utf-8", "replace"))   # a 409 names the seq
            self._alarm(conn, "critical", "core-contract",
                        f"core answered {e.status} to {e.method} {e.url}: {said}", order_no=order_no,
                        journal_id=jid)
        await self.db.run(rec)

    # --- the tick -------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over everything due for this bank; each step's failure is contained.

        The core's part (poll, load, push) runs apart, started here when the last one is
        over: a slow core never holds a bank's own steps (submit, status, results).
        """
        self._start_core_work()
        for order_no in await self.db.run(self._orders_needing_batch):
            await self._guard(f"batch order {order_no}", self.create_pay_batch(order_no))
        for order_no in await self.db.run(self._orders_to_retry):
            await self._guard(f"retry order {order_no}", self.create_retry_batch(order_no))
        for b in await self.db.run(self._live_batches):
            await self._guard(f"advance batch {b['batch_no']}", self.advance(b))
        for b in await self.db.run(self.returns.watched):
            await self._guard(f"late returns of {b['batch_no']}", self.query(b))
        for r in await self.db.run(self.refunds.live):
            await self._guard(f"advance refund {r['refund_no']}", self.refunds.advance(r))
        await self._guard("fetch statements", self.fetch_statements())
        await self._guard("send disputes", self.article26.send_disputes())
        await self._guard("check deadlines", self.article26.check_deadlines())
        await self._guard("heartbeat", self.heartbeat())

    def _start_core_work(self) -> None:
        if self._core_job is not None or self.stopping:
            return
        job = self._core_job = defer.ensureDeferred(self.core_work())
        job.addErrback(lambda f: log.failure("{bank}: core work failed", f, bank=self.bank_id))

        def over(_):
            self._core_job = None
            idle, self._core_idle = self._core_idle, []
            for d in idle:
                d.callback(None)
        job.addBoth(over)

    def core_idle(self) -> defer.Deferred:
        """Fires once no core work (poll, load, push) of this bank is running."""
        if self._core_job is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._core_idle.append(d)
        return d

    async def core_work(self) -> None:
        """Everything that talks to the core: poll for funded orders, load them, push results
        and order states. Never overlaps itself (one per bank)."""
        if self.wake_poll or self.now() - self.last_poll >= self.cfg.core.poll_interval_s:
            self.wake_poll = False
            await self._guard("poll the core", self.poll_core())
            self.last_poll = self.now()
        for order_no in await self.db.run(self._orders_in, (OrderState.FUNDED, OrderState.LOADING)):
            await self._guard(f"load order {order_no}", self.load_order(order_no))
        await self._guard("push results", self.push.push_results())
        await self._guard("push order states", self.push.push_states())

    async def fetch_statements(self) -> None:
        """Once a day, the bank's statement (对账单) of yesterday, and of last month on the 1st,
        for report.monthly; for banks whose adapter fetches them (statement_daily)."""
        if not self.bank.statement_daily:
            return
        today = self.today()
        if self._statement_day == today:
            return
        self._statement_day = today   # one attempt a day: a refusal is alarmed, not repeated
        yesterday = today - datetime.timedelta(days=1)
        periods = ["D" + yesterday.strftime("%Y%m%d")]
        if today.day == 1:
            periods.append("M" + yesterday.strftime("%Y%m"))
        if today.month == 1 and today.day == 1:
            periods.append("Y" + yesterday.strftime("%Y"))   # the January check (report.yearly)
        for period in periods:
            have = await self.db.run(store.statements.count_of_period, self.bank_id, period)
            if not have:
                got = await self.adapter.fetch_statement(period, self)
                log.info("{bank}: statement {period}: {got}", bank=self.bank_id, period=period,
                         got=got or "not fetched")

    async def _guard(self, what: str, coro) -> None:
        until, delay = self._backoff.get(what, (0.0, 0.0))
        if self.stopping or self.now() < until:
            coro.close()
            return
        try:
            await coro
        except CoreContractError as e:
            await self._contract_fault(e)
        except (CoreError, TransportError) as e:
            log.warn("{bank}: {what}: {error}; will try again", bank=self.bank_id, what=what,
                     error=error_text(e))
        except Deposed as e:
            # The lease is lost: what committed was fenced; the next holder resumes from it.
            log.warn("{bank}: {what} stopped: {error}", bank=self.bank_id, what=what, error=e)
            return
        except ConservationError as e:
            # Rule 1: the change was refused (its transaction rolled back); one alarm episode
            # per step, cleared when the step goes through.
            log.error("{bank}: {what} refused: {error}", bank=self.bank_id, what=what, error=e)
            await self.db.run(lambda c: self._alarm(c, "critical", "conservation",
                                                    f"{what} refused: {e}", key=what))
        except Exception as e:  # noqa: BLE001
            # Not log.failure: the exception's text can hold personal data (a database error
            # quotes the rows it refused); the frames say where without any values.
            log.error("{bank}: {what} failed: {error}\n{where}", bank=self.bank_id, what=what,
                      error=error_text(e), where="".join(traceback.format_tb(e.__traceback__)))
            # Not only the log: one alarm episode per failing step, cleared when it goes through
            # (a million-item batch cancelled by a statement timeout, tick after tick, was seen
            # only in the log). The database may be what fails: then the log is all there is.
            try:
                await self.db.run(lambda c: self._alarm(c, "critical", "step-failed",
                                                        f"{what} failed: {error_text(e)[:400]}", key=what))
            except Exception as again:  # noqa: BLE001
                log.warn("{bank}: {what}: the step-failed alarm could not be written: {error}",
                         bank=self.bank_id, what=what, error=error_text(again))
        else:
            # Cleared after a failure, and after the first success since this process started
            # (the backoff is in memory: an episode opened before a restart must clear too).
            first = what not in self._went_through
            if self._backoff.pop(what, None) is not None or first:
                self._went_through.add(what)

                def cleared(c: Connection) -> None:
                    for kind in ("conservation", "step-failed"):
                        clear_alarm(c, self.at(), kind, bank_id=self.bank_id, key=what)
                await self.db.run(cleared)
            return
        delay = min(max(2 * delay, 1.0), 300.0)
        self._backoff[what] = (self.now() + delay, delay)

    # What the tick works on (bench/stage_runner.py and tools/mutate.py name these too).
    def _orders_in(self, conn: Connection, states) -> list[str]:
        return store.orders.in_states(conn, self.bank_id, states)

    def _orders_needing_batch(self, conn: Connection) -> list[str]:
        return store.orders.needing_batch(conn, self.bank_id)

    def _orders_to_retry(self, conn: Connection) -> list[str]:
        return store.orders.to_retry(conn, self.bank_id)

    def _live_batches(self, conn: Connection) -> list[dict]:
        return store.batches.live(conn, self.bank_id)

    # --- core: poll and load --------------------------------------------------

    async def poll_core(self) -> None:
        found, exchanges = await self.core.list_funded(self.bank_id)

        def record(conn: Connection) -> None:
            nos = [o.get("order_no") for o in found if isinstance(o, dict)]
            known = store.orders.known(conn, [n for n in nos if isinstance(n, str)])
            new = [o for o in found if isinstance(o, dict) and o.get("order_no") not in known]
            if not new and len(nos) == len(found):
                return   # an empty or known poll is not worth a journal entry every few seconds
            for ex in exchanges:
                self._core_entries(conn, ex, "GET orders")
            at = self.at()
            for h in found:
                no = h.get("order_no") if isinstance(h, dict) else None
                if not isinstance(no, str) or not no or len(no) > 64 or uncarriable(no):
                    self._alarm(conn, "critical", "core-contract",
                                f"funded order without a usable order_no: {ascii(h)[:200]}")
                    continue
                if no in known:
                    continue
                known.add(no)
                problems = header_problems(h, self.bank_id)
                store.orders.add(
                    conn, order_no=no, bank_id=self.bank_id, budget_unit=_s(h.get("budget_unit")),
                    project_code=_s(h.get("project_code"), 64),
                    project_name=_s(h.get("project_name")),
                    project_short=_s(h.get("project_short"), 16), region=_s(h.get("region"), 16),
                    total_amount=_i(h.get("total_amount")), total_count=_i(h.get("total_count")),
                    funded_at=_s(h.get("funded_at"), 40),
                    state=OrderState.INVALID if problems else OrderState.FUNDED,
                    detail=json.dumps({"reasons": problems}, ensure_ascii=False) if problems else None,
                    created_at=at, updated_at=at, results_pending=0)
                self._journal(conn, Entry("event", "core", "daemon", "order-seen",
                                          f"order {no} funded for {h.get('total_count')} items, "
                                          f"{h.get('total_amount')} fen"
                                          + (f"; INVALID: {problems}" if problems else ""),
                                          order_no=no))
                log.info("{bank}: order {order} seen at the core{invalid}", bank=self.bank_id,
                         order=no, invalid=" (INVALID header)" if problems else "")
        await self.db.run(record)

    async def load_order(self, order_no: str) -> None:
        began = self.ctx.started()

        def start(conn: Connection) -> dict:
            o = conn.execute(select(orders).where(orders.c.order_no == order_no)).mappings().one()
            conn.execute(delete(items).where(items.c.order_no == order_no))
            conn.execute(update(orders).where(orders.c.order_no == order_no)
                         .values(state=OrderState.LOADING, updated_at=self.at()))
            return dict(o)
        header = await self.db.run_bulk(start)
        os.makedirs(self.cfg.work_dir, mode=0o700, exist_ok=True)
        loader = _Loader(header, os.path.join(self.cfg.work_dir, f"{order_no}.items.ndjson"),
                         self.cfg.core.max_item_line_bytes)
        try:
            size = await self.core.stream_items(order_no, lambda chunk: self.db.run_bulk(loader.feed, chunk))
        except (ItemStreamRefused, sa_exc.DataError) as e:
            await self.db.run_plain_bulk(loader.abort)
            await self._load_refused(order_no, loader, e)
            return
        except BaseException:
            await self.db.run_plain_bulk(loader.abort)
            raise

        def finish(conn: Connection) -> list[str]:
            reasons = loader.finish(conn)
            state = OrderState.INVALID if reasons else OrderState.LOADED
            if not reasons:
                check_conservation(conn, order_no)
            jid = self._journal(conn, Entry(
                "in", "core", "http", "GET items",
                f"order {order_no}: {loader.v.count} items, {size} bytes; "
                + (f"INVALID ({len(reasons)} reasons): {reasons[:20]}" if reasons else "valid"),
                payload_file=loader.raw_path, order_no=order_no,
                verified="ok" if not reasons else f"failed: {len(reasons)} reasons"))
            conn.execute(update(orders).where(orders.c.order_no == order_no).values(
                state=state, updated_at=self.at(),
                detail=json.dumps({"reasons": reasons}, ensure_ascii=False) if reasons else None))
            if reasons:
                self._alarm(conn, "warning", "order-invalid",
                            f"order {order_no} is INVALID: {'; '.join(reasons[:5])}",
                            order_no=order_no, journal_id=jid)
            return reasons
        try:
            reasons = await self.db.run_bulk(finish)
        except (ItemStreamRefused, sa_exc.DataError) as e:
            await self.db.run_plain_bulk(loader.abort)
            await self._load_refused(order_no, loader, e)
            return
        os.unlink(loader.raw_path)   # archived in the journal
        self.ctx.stage("load", began)
        log.info("{bank}: order {order} loaded: {n} items, {state}", bank=self.bank_id,
                 order=order_no, n=loader.v.count, state="INVALID" if reasons else "valid")

    async def _load_refused(self, order_no: str, loader: _Loader, e: Exception) -> None:
        """The item stream broke a cap, or the database refused what validation let through:
        the order is INVALID with the reason (masked: a database error quotes the rows), its
        partial items are removed, one alarm. The partial work file is already gone."""
        if isinstance(e, ItemStreamRefused):
            reason = str(e)
        else:
            reason = (f"lines up to {loader.line_no + 1}: the database refused the items "
                      f"({error_text(e)})")

        def rec(conn: Connection) -> None:
            store.items.delete_of_order(conn, order_no)
            jid = self._journal(conn, Entry(
                "in", "core", "http", "GET items",
                f"order {order_no}: item stream refused after {loader.bytes} bytes: {reason}",
                order_no=order_no, verified=f"failed: {reason[:180]}"))
            store.orders.set_(conn, order_no, state=OrderState.INVALID, updated_at=self.at(),
                              detail=json.dumps({"reasons": [reason]}, ensure_ascii=False))
            self._alarm(conn, "warning", "order-invalid", f"order {order_no} is INVALID: {reason}",
                        order_no=order_no, journal_id=jid)
        await self.db.run_bulk(rec)   # deletes what was stored of the order: up to every item
        log.warn("{bank}: order {order} INVALID: {reason}", bank=self.bank_id, order=order_no,
                 reason=reason)

    # --- batches ----------------------------------------------------------------

    def _new_batch(self, conn: Connection, order_no: str, kind: str, eligible) -> str | None:
        """Put the eligible items of an order in a new batch (one transaction); None if there are none.

        Numbers follow the dialect: {OrderNo}-P01 for PAY, then -R02, -R03... counting every
        batch of the order, so a resend is recognisable and a number is never reused.
        """
        n = store.batches.count_of_order(conn, order_no)
        batch_no = f"{order_no}-{'P' if kind == 'PAY' else 'R'}{n + 1:02d}"
        cnt, amt = store.items.totals(conn, eligible)
        if not cnt:
            return None
        at = self.at()
        store.batches.add(
            conn, batch_no=batch_no, order_no=order_no, bank_id=self.bank_id, kind=kind, seq=n + 1,
            state=BatchState.BUILDING, total_count=cnt, total_amount=int(amt), attempts=0,
            created_at=at, updated_at=at)
        # RETRY: OrigBatchNo, the batch in which each item last failed (cnbank.md, RETRY).
        store.items.put_in_batch(conn, eligible, batch_no, retry=kind == "RETRY")
        self._journal(conn, Entry("event", self.bank_id, "daemon", "batch-created",
                                  f"{kind} batch {batch_no}: {cnt} items, {amt} fen",
                                  order_no=order_no, batch_no=batch_no))
        log.info("{bank}: created {kind} batch {batch}", bank=self.bank_id, kind=kind, batch=batch_no)
        return batch_no

    async def create_pay_batch(self, order_no: str) -> None:
        await self.db.run_bulk(self._new_batch, order_no, "PAY", store.items.pending_for_pay(order_no))

    async def create_retry_batch(self, order_no: str) -> None:
        """Send the order's corrected items again (rule 2: only CORRECTED items, never one
        already in a live batch)."""
        def create(conn: Connection) -> None:
            # The order row before the items and the journal head (docs/lock-order.md): order.retry
            # holds this row while it waits for the journal head.
            store.orders.retry_taken(conn, order_no)
            self._new_batch(conn, order_no, "RETRY", store.items.corrected_for_retry(order_no))
        await self.db.run_bulk(create)

    async def advance(self, b: dict) -> None:
        state = b["state"]
        if state in (BatchState.UPLOADED, BatchState.SUBMITTING) and not self.adapter.built_exists(b):
            if not await self._not_built_here(b):
                return
        if state == BatchState.BUILDING:
            await self.build(b)
        elif state == BatchState.BUILT:
            await self.upload(b)
        elif state == BatchState.UPLOADED:
            await self.submit(b)
        elif state == BatchState.SUBMITTING:
            await self.query(b)
        elif state == BatchState.ACCEPTED:
            if (b["next_check_at"] or 0) <= self.now():
                await self.query(b)

    async def _not_built_here(self, b: dict) -> bool:
        """The batch's file is not in this daemon's work folder (each daemon has its own: another
        one built it before a takeover; or the host was restored). True when the step may go on.

        UPLOADED: nothing was submitted, so it is built here again (new file, key and upload).
        SUBMITTING: the bank may hold it. An adapter whose status question is the same bytes
        again (iso20022 re-POSTs the document: `restore_sent`) gets them back from the journal,
        which archived them before they left; one that asks by number (cnbank BQ01) needs nothing.
        """
        from gateway.models import journal as journal_t
        if b["state"] == BatchState.UPLOADED:
            await self.db.run(lambda c: store.batches.change_from(c, b["batch_no"], BatchState.UPLOADED,
                                                                  state=BatchState.BUILDING, updated_at=self.at()))
            log.info("{bank}: {batch} was built elsewhere and not submitted: building it here",
                     bank=self.bank_id, batch=b["batch_no"])
            return False
        restore = getattr(self.adapter, "restore_sent", None)
        if restore is None:
            return True
        row = await self.db.run(lambda c: c.execute(select(journal_t).where(
            journal_t.c.direction == "out", journal_t.c.batch_no == b["batch_no"],
            journal_t.c.msg_id == b["batch_no"], journal_t.c.tx_code == self.adapter.sent_tx_code)
            .order_by(journal_t.c.id.desc()).limit(1)).first())
        if row is None:
            return True
        payload = await self.db.run_plain(self.journal.payload_of, row)
        await self.db.run_plain(restore, b, payload)
        log.info("{bank}: {batch}: the document sent was put back from journal entry {id}",
                 bank=self.bank_id, batch=b["batch_no"], id=row.id)
        return True

    def _build_document(self, b: dict) -> Built:
        """Stream the batch's items from the database into the adapter's document (pool thread);
        timed here, in the thread, as the build stage."""
        began = self.ctx.started()
        with self.db.engine.connect() as conn:
            o = conn.execute(select(orders).where(orders.c.order_no == b["order_no"])).mappings().one()
            spec = BatchSpec(batch_no=b["batch_no"], order_no=b["order_no"], kind=b["kind"],
                             total_count=b["total_count"], total_amount=b["total_amount"],
                             submit_date=datetime.datetime.fromtimestamp(self.now(), CST).strftime("%Y%m%d"),
                             created_at=self.at(),
                             project_code=o["project_code"], project_short=o["project_short"])
            by_rows = getattr(self.adapter, "build_batch_rows", None)
            if by_rows is not None and conn.dialect.name == "sqlite":
                # SQLite's own cursor streams, and gives plain tuples: SQLAlchemy's rows on top
                # cost half as much again as the query (~0.15 s a 100,000 items).
                cur = conn.connection.driver_connection.cursor()
                try:
                    cur.execute(f"SELECT {', '.join(BATCH_ROW_FIELDS)} FROM items WHERE order_no = ? "
                                f"AND batch_no = ? ORDER BY seq", (b["order_no"], b["batch_no"]))
                    built = by_rows(spec, iter(lambda: cur.fetchmany(5000), []))
                finally:
                    cur.close()
            else:
                rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
                    select(*(items.c[f] for f in BATCH_ROW_FIELDS))
                    .where(items.c.order_no == b["order_no"], items.c.batch_no == b["batch_no"])
                    .order_by(items.c.seq))
                if by_rows is not None:
                    built = by_rows(spec, rows.partitions())
                else:
                    built = self.adapter.build_batch(spec, (BatchItem(
                        seq=r.seq, name=r.name, id_number=r.id_number, account_no=r.account_no,
                        account_bank=r.account_bank, amount=r.amount, remark=r.remark,
                        orig_batch_no=r.orig_batch_no or "", account_bank_code=r.account_bank_code or "")
                        for r in rows))
        self.ctx.stage("build", began)
        return built

    async def build(self, b: dict) -> None:
        built = await self.db.run_plain_bulk(self._build_document, b)

        def record(conn: Connection) -> None:
            conn.execute(update(batches).where(batches.c.batch_no == b["batch_no"],
                                               batches.c.state == BatchState.BUILDING).values(
                state=BatchState.BUILT, file_name=built.name, file_digest=built.digest,
                file_digest_alg=built.digest_alg or None, file_enc_key=built.key, updated_at=self.at()))
        await self.db.run(record)
        log.info("{bank}: built {file} ({n} items, digest {digest})", bank=self.bank_id, file=built.name,
                 n=built.count, digest=built.digest[:16])

    async def upload(self, b: dict) -> None:
        if not self.adapter.built_exists(b):
            # The work dir lost the file (restored host, say): build it again from the database.
            await self.db.run(lambda c: store.batches.set_(c, b["batch_no"], state=BatchState.BUILDING))
            return
        fence = getattr(self.db, "fence", None)
        if fence is not None:
            # No transaction precedes an upload: the bytes leave only while the lease is ours.
            fence.check()
        self.ctx.stage_began("submit", b["batch_no"])
        await self.adapter.deliver_batch(b, self)
        await self.db.run(lambda conn: store.batches.set_(conn, b["batch_no"], state=BatchState.UPLOADED,
                                                          updated_at=self.at()))

    # --- IBankRecorder: what the adapter journals through ------------------------

    def record(self, entries: list, change=None, alarm=None):
        def run(conn: Connection) -> list[int]:
            ids = [self._journal(conn, e) for e in entries]
            if change is not None:
                change(conn)
            if alarm is not None:
                severity, kind, message, order_no, batch_no = alarm
                self._alarm(conn, severity, kind, message, order_no=order_no, batch_no=batch_no,
                            journal_id=ids[-1] if ids else None)
            return ids
        return self.db.run(run)

    def read(self, fn, *args):
        return self.db.run(fn, *args)

    def journal_in(self, conn: Connection, entry) -> int:
        return self._journal(conn, entry)

    def alarm_in(self, conn: Connection, severity: str, kind: str, message: str, order_no, batch_no,
                 journal_id, key=None) -> None:
        self._alarm(conn, severity, kind, message, order_no=order_no, batch_no=batch_no,
                    journal_id=journal_id, key=key)

    def clear_in(self, conn: Connection, kind: str, order_no=None, batch_no=None, key=None) -> int:
        return clear_alarm(conn, self.at(), kind, bank_id=self.bank_id, order_no=order_no,
                           batch_no=batch_no, key=key)

    def payloads_in(self, conn: Connection, journal_ids) -> dict[int, bytes]:
        from gateway.models import journal as journal_table
        ids = sorted({int(i) for i in journal_ids})
        rows = conn.execute(select(journal_table).where(journal_table.c.id.in_(ids))).all() if ids else []
        return {row.id: self.journal.payload_of(row) for row in rows}

    def statement_in(self, conn: Connection, period: str, source: str, header: dict, lines: list,
                     journal_id) -> int:
        from gateway import statements
        return statements.store_lines(conn, self.bank_id, period, source, header, lines, self.at(), journal_id)

    async def heartbeat(self) -> None:
        """HB01 every `heartbeat_s` (banks whose adapter has heartbeat(); 0 = off): the link is
        watched, and a dead one alarmed (bank-link-down), even when nothing else is said."""
        every = getattr(self.bank.cnbank, "heartbeat_s", 0) if self.bank.cnbank is not None else 0
        beat = getattr(self.adapter, "heartbeat", None)
        last = getattr(self, "_last_heartbeat", float("-inf"))
        if not every or beat is None or self.now() - last < every:
            return
        self._last_heartbeat = self.now()
        await beat(self)

    async def submit(self, b: dict) -> None:
        """BP01. Sent again after E008/E009 (or a send that never left) only after a backoff;
        refused for good, the batch is REFUSED and its items go out again under a new number
        (_refuse), no sooner than the order's refusal backoff allows."""
        now = self.now()
        if (b.get("next_check_at") or 0) > now:
            return
        if await self.db.run(store.batches.refusal_hold, b["order_no"]) > now:
            return

        def mark(conn: Connection) -> None:
            store.batches.mark_submitting(conn, b["batch_no"], self.at())
        reply = await self.adapter.submit_batch(b, self, mark)
        if reply is None:
            return   # outcome unknown: the batch stays SUBMITTING and BQ01 decides (rule 3)
        step = after_submit(reply.outcome)

        def record(conn: Connection) -> bool:
            if step.then is Next.ACCEPT:
                self._accept(conn, b, reply.bank_ref)
            elif step.then is Next.SEND_LATER:
                # Nothing was taken: the batch may be submitted again (a new MsgId, not blind),
                # after a backoff; a refusal for now is alarmed by the adapter (bank-refusing).
                failures = (b.get("failures") or 0) + 1
                store.batches.change_from(
                    conn, b["batch_no"], BatchState.SUBMITTING, state=BatchState.UPLOADED,
                    updated_at=self.at(), failures=failures,
                    next_check_at=backoff.next_at(self.now(), self.bank.status_poll_s, failures))
                if reply.outcome == "retry":   # "unsent" never left: nothing to say
                    log.warn("{bank}: submission of {batch} refused {code} {msg}; sending again later",
                             bank=self.bank_id, batch=b["batch_no"], code=reply.code, msg=reply.message)
            else:
                return self._refuse(conn, b, reply.code, reply.message, reply.journal_id)
            return False
        released = await self.db.run_bulk(record)
        if step.then is not Next.SEND_LATER:   # accepted, or refused for good
            self.ctx.stage_ended("submit", b["batch_no"], well=step.then is Next.ACCEPT)
        if released:
            await self._remove_uploads(b)

    def _refuse(self, conn: Connection, b: dict, code: str, message: str, jid: int | None) -> bool:
        """BP01 refused for good (an E code other than E008/E009): the bank took nothing and does
        not remember the number. The batch is REFUSED (its number spent) and its items released
        (PAY to PENDING, RETRY back to CORRECTED) to go out under a new number, after a backoff
        that doubles with each refused batch of the order; one alarm episode per order, cleared
        when a batch of it is accepted. E004 (the bank holds another batch under this number) is
        the exception: the items stay with the batch for an operator. True when released."""
        n = store.batches.change_from(conn, b["batch_no"], BatchState.SUBMITTING, state=BatchState.REFUSED,
                                      reject_code=code, reject_msg=(message or "")[:500], updated_at=self.at())
        if n != 1:
            return False   # no longer ours to judge (answered meanwhile): nothing to release
        if code == "E004":
            self._alarm(conn, "critical", "batch-refused",
                        f"bank refused batch {b['batch_no']}: E004 {message}: it holds another batch "
                        f"under this number; its {b['total_count']} items stay held with it until an "
                        f"operator has settled with the bank what it holds", order_no=b["order_no"],
                        journal_id=jid)
            return False
        refused = store.batches.refused_count(conn, b["order_no"])
        wait_until = backoff.next_at(self.now(), self.bank.status_poll_s, refused)
        store.batches.set_(conn, b["batch_no"], next_check_at=wait_until)
        pending = ItemStatus.CORRECTED if b["kind"] == "RETRY" else ItemStatus.PENDING
        self._release(conn, b, pending)
        check_conservation(conn, b["order_no"])
        self._alarm(conn, "critical", "batch-refused",
                    f"bank refused batch {b['batch_no']}: {code} {message}; its {b['total_count']} items "
                    f"go out again under a new batch number from {iso(wait_until)} "
                    f"(refused batches of this order: {refused})",
                    order_no=b["order_no"], journal_id=jid)
        return True

    def _release(self, conn: Connection, b: dict, status: str) -> None:
        """The items of a batch the bank did not pay (RJCT, refused) are free to go out again:
        PAY items to PENDING; RETRY items back to CORRECTED, pointing again at the batch they
        failed in, and the order asks for another retry."""
        store.items.release(conn, b["order_no"], b["batch_no"], status, retry=b["kind"] == "RETRY")
        if b["kind"] == "RETRY":
            store.orders.request_retry(conn, b["order_no"])

    async def _remove_uploads(self, b: dict) -> None:
        try:
            await self.adapter.after_results(b)
        except Exception as e:  # noqa: BLE001  (housekeeping only)
            log.warn("{bank}: could not remove uploads of {batch}: {error}", bank=self.bank_id,
                     batch=b["batch_no"], error=e)

    def _accept(self, conn: Connection, b: dict, bank_batch_no: str | None) -> None:
        """The bank holds the batch: its items are SENT, the order DISPATCHED (one transaction)."""
        n = store.items.sent(conn, b["order_no"], b["batch_no"])
        if n != b["total_count"]:
            raise ConservationError(f"batch {b['batch_no']} holds {b['total_count']} items but {n} "
                                    f"were waiting to be sent")
        store.batches.set_(
            conn, b["batch_no"], state=BatchState.ACCEPTED, bank_batch_no=bank_batch_no, updated_at=self.at(),
            next_check_at=int(self.now() + self.bank.status_poll_s), failures=0,
            bank_due=self.article26.working_days_from_today(conn, b, self.bank.result_working_days))
        store.orders.dispatched(conn, b["order_no"], self.at())
        check_conservation(conn, b["order_no"])
        clear_alarm(conn, self.at(), "batch-refused", bank_id=self.bank_id, order_no=b["order_no"])
        b["state"] = BatchState.ACCEPTED
        log.info("{bank}: batch {batch} accepted by the bank", bank=self.bank_id, batch=b["batch_no"])

    async def query(self, b: dict) -> None:
        """What the bank knows of the batch. Always asked before any resend (rule 3).

        Asked no sooner than next_check_at; a question without a usable answer (no verified
        reply, a refusal, a contradiction) is asked again after a backoff (gateway/backoff.py,
        the count kept in `failures`), never sooner than the state's own interval
        (return_poll_s for DONE batches). A refusal that persists is one alarm episode,
        cleared by the next good answer.
        """
        if (b.get("next_check_at") or 0) > self.now():
            return
        was = b["state"]
        interval = self.bank.return_poll_s if was == BatchState.DONE else self.bank.status_poll_s
        failures = (b.get("failures") or 0) + 1
        st = await self.adapter.batch_status(b, self)

        def again_later(conn: Connection) -> None:
            store.batches.set_(conn, b["batch_no"], failures=failures,
                               next_check_at=backoff.next_at(self.now(), interval, failures))
        if st is None:
            await self.db.run(again_later)
            return
        phase = {BatchState.SUBMITTING: Phase.SUBMITTING, BatchState.DONE: Phase.DONE}.get(was, Phase.ACCEPTED)
        step = after_status(phase, st.state, alarmed=st.alarmed)

        def record(conn: Connection) -> None:
            jid = st.journal_id
            if step.then is Next.ASK_LATER:
                again_later(conn)
                if step.alarm:
                    self._alarm(conn, "warning", "status-refused",
                                f"status query for {b['batch_no']} answered {st.code} {st.message}",
                                order_no=b["order_no"], batch_no=b["batch_no"], journal_id=jid)
                return
            if b.get("failures"):
                clear_alarm(conn, self.at(), "status-refused", bank_id=self.bank_id,
                            order_no=b["order_no"], batch_no=b["batch_no"])
            good = {"failures": 0, "next_check_at": int(self.now() + interval)}
            if step.then is Next.SEND_AGAIN:
                # The bank never accepted it: the lost submission may now be sent again.
                store.batches.set_(conn, b["batch_no"], state=BatchState.UPLOADED, updated_at=self.at(),
                                   failures=0, next_check_at=None)
                log.info("{bank}: bank does not know {batch}: it will be submitted again",
                         bank=self.bank_id, batch=b["batch_no"])
                return
            if step.then is Next.FORGOTTEN:
                again_later(conn)
                self._alarm(conn, "critical", "batch-unknown",
                            f"bank says it never accepted {b['batch_no']}, which it had accepted",
                            order_no=b["order_no"], batch_no=b["batch_no"], journal_id=jid)
                return
            if step.accepted_first:
                self._accept(conn, b, None)
            if step.then is Next.RETURNS:
                self.returns.apply(conn, b, st.returns, jid)
                store.batches.set_(conn, b["batch_no"], **good)
            elif step.then is Next.REJECT:
                self._reject(conn, b, st.code, st.message, jid)
            elif step.then is Next.FINISH:
                r = st.results or {}
                store.batches.set_(conn, b["batch_no"], result_ref=r.get("ref"), result_sm3=r.get("digest"),
                                   result_enc_key=r.get("key"), updated_at=self.at(), failures=0)
            else:
                store.batches.set_(conn, b["batch_no"], **good)
        await self.db.run_bulk(record)
        if step.accepted_first:
            self.ctx.stage_ended("submit", b["batch_no"])
        if step.then is Next.FINISH:
            await self.fetch_results(b["batch_no"])
        elif step.then is Next.REJECT:
            await self._remove_uploads(b)

    def _reject(self, conn: Connection, b: dict, code: str, message: str, jid: int | None) -> None:
        """RJCT: nothing of the batch was paid; its items go out again in a new batch (_release)."""
        self._release(conn, b, ItemStatus.SENT)
        store.batches.set_(conn, b["batch_no"], state=BatchState.RJCT, reject_code=code,
                           reject_msg=(message or "")[:500], updated_at=self.at(), failures=0)
        others = store.batches.others_held(conn, b["order_no"], b["batch_no"])
        if not others:
            store.orders.set_(conn, b["order_no"], state=OrderState.LOADED, updated_at=self.at())
        check_conservation(conn, b["order_no"])
        self._alarm(conn, "critical", "batch-rjct",
                    f"bank rejected batch {b['batch_no']} whole: {code} {message}; "
                    f"its items go out again in a new batch",
                    order_no=b["order_no"], batch_no=b["batch_no"], journal_id=jid)

    async def fetch_results(self, batch_no: str) -> None:
        began = self.ctx.started()
        b = await self.db.run(store.batches.get, batch_no)
        try:
            rs = await self.adapter.fetch_results(b, self)
        except ResultsRefused as e:
            try:
                await self._result_refused(b, e.entries, str(e))
            finally:
                await self.db.run_plain(e.cleanup)
            return
        except TransportError as e:
            # The file could not be fetched: ask (BQ01) and fetch again after a backoff.
            failures = (b.get("failures") or 0) + 1
            await self.db.run(lambda c: store.batches.set_(c, batch_no, failures=failures, next_check_at=backoff.next_at(
                self.now(), self.bank.status_poll_s, failures)))
            log.warn("{bank}: results of {batch} not fetched: {error}; will try again",
                     bank=self.bank_id, batch=batch_no, error=e)
            return
        try:
            summary = await self.db.run_bulk(self._apply_results, b, rs)
        except (ResultRejected, ResultsRefused, ConservationError) as e:
            why = str(e) if isinstance(e, ResultsRefused) else f"{type(e).__name__}: {e}"
            await self._result_refused(b, rs.evidence(f"failed: {why}"), why)
            return
        finally:
            await self.db.run_plain_bulk(rs.cleanup)
        self.ctx.stage("apply", began)
        log.info("{bank}: results of {batch} applied: {summary}", bank=self.bank_id, batch=batch_no,
                 summary=summary)
        self.faults.point("results-applied")
        await self._remove_uploads(b)

    async def _result_refused(self, b: dict, entries: list, why: str) -> None:
        def rec(conn: Connection) -> None:
            jid = None
            for e in entries:
                jid = self._journal(conn, e)
            self._alarm(conn, "critical", "result-file-rejected",
                        f"results {b['result_ref']} of {b['batch_no']} rejected, nothing applied: {why}",
                        order_no=b["order_no"], batch_no=b["batch_no"], journal_id=jid)
            # Ask again later, not every tick: bad results are a bank-side fault for operators.
            store.batches.set_(conn, b["batch_no"], next_check_at=int(self.now() + 60 * self.bank.status_poll_s))
        await self.db.run(rec)

    def _apply_results(self, conn: Connection, b: dict, rs: ResultSet) -> dict:
        """Apply verified results in this one transaction, or raise and apply nothing."""
        t = rs.totals
        if t.batch_no != b["batch_no"]:
            raise ResultRejected(f"results name batch {t.batch_no}, expected {b['batch_no']}")
        if t.count != b["total_count"] or t.amount != b["total_amount"]:
            raise ResultRejected(f"results say {t.count} items / {t.amount} fen, the batch "
                                 f"holds {b['total_count']} / {b['total_amount']}")
        order_no, batch_no = b["order_no"], b["batch_no"]
        if STAGED_APPLY[conn.dialect.name]:
            n, matched = _apply_staged(conn, order_no, batch_no, rs.lines())
        else:
            n, matched = _apply_per_line(conn, order_no, batch_no, rs.lines()), None
        # Every line must have matched one SENT item of this batch (seq, amount and account),
        # and every item of the batch must have had a line.
        left = conn.execute(select(func.count()).where(
            items.c.order_no == b["order_no"], items.c.batch_no == b["batch_no"],
            items.c.status == ItemStatus.SENT)).scalar_one()
        per = dict(conn.execute(select(items.c.status, func.count()).where(
            items.c.order_no == b["order_no"], items.c.batch_no == b["batch_no"])
            .group_by(items.c.status)).all())
        applied = per.get(ItemStatus.PAID, 0) + per.get(ItemStatus.FAILED, 0)
        if matched is None:
            matched = applied
        if left or n != b["total_count"] or applied != n or matched != n:
            raise ResultRejected(f"{n} result lines, {min(applied, matched)} matched an item of the "
                                 f"batch, {left} items of the batch have no result")
        paid = per.get(ItemStatus.PAID, 0)
        if paid != t.paid_count:
            raise ResultRejected(f"results say {t.paid_count} paid, lines say {paid}")
        confirm_due, dispute_due = self.article26.deadlines(conn, b)
        conn.execute(update(batches).where(batches.c.batch_no == b["batch_no"]).values(
            state=BatchState.DONE, succ_cnt=t.paid_count, succ_amt=t.paid_amount,
            fail_cnt=t.failed_count, fail_amt=t.failed_amount, updated_at=self.at(),
            done_at=int(self.now()), next_check_at=int(self.now() + self.bank.return_poll_s),
            confirm_due=confirm_due, dispute_due=dispute_due))
        per_order = check_conservation(conn, b["order_no"])
        settled = set(per_order) <= {ItemStatus.PAID, ItemStatus.REFUNDED}
        conn.execute(update(orders).where(orders.c.order_no == b["order_no"]).values(
            results_pending=1, updated_at=self.at(),
            **({"state": OrderState.SETTLED} if settled else {})))
        # Journaled last: the journal head after every row this changes (docs/lock-order.md).
        for e in rs.evidence("ok"):
            self._journal(conn, e)
        return {"lines": n, "paid": t.paid_count, "failed": t.failed_count}


def _staged_rows(lines, count: list[int]):
    for line in lines:
        count[0] += 1
        yield (line.seq, ItemStatus.PAID if line.paid else ItemStatus.FAILED, line.reason_code,
               line.reason_text, line.bank_serial or None, post_date(line.post_date), line.amount,
               line.account_no)


def _apply_staged(conn: Connection, order_no: str, batch_no: str, lines) -> tuple[int, int]:
    """Stage the result lines, apply them with one UPDATE (STAGED_APPLY_SQL), all in conn's
    transaction; (lines read, items updated)."""
    count = [0]
    rows = _staged_rows(lines, count)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(STAGE_SQL + " ON COMMIT DROP")
        copy_rows(conn, "apply_lines", STAGE_COLUMNS, rows)
        conn.exec_driver_sql("ANALYZE apply_lines")   # the planner is told how many lines
    else:
        conn.exec_driver_sql("DROP TABLE IF EXISTS temp.apply_lines")
        conn.exec_driver_sql(STAGE_SQL)
        insert_sql = (f"INSERT INTO apply_lines ({', '.join(STAGE_COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(STAGE_COLUMNS))})")
        chunk: list[tuple] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= APPLY_CHUNK:
                executemany(conn, insert_sql, chunk)
                chunk = []
        executemany(conn, insert_sql, chunk)
    matched = staged_update(conn, order_no, batch_no).rowcount
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql("DROP TABLE temp.apply_lines")
    return count[0], matched


def staged_update(conn: Connection, order_no: str, batch_no: str, explain: str = ""):
    """Run STAGED_APPLY_SQL (prefixed by `explain`, for tests/test_pg_plans.py); its result.

    On PostgreSQL only a merge join is allowed, for the statement alone: whatever the
    statistics say, the lines and the items are each sorted once by seq and joined in that
    order. A nested loop chosen on stale statistics (a fresh items table, "1 row") scans the
    staged lines once per item: 100,000 lines ran into the statement timeout. A hash join
    writes the new row versions and index entries in random order: on a million lines twice
    the WAL and a third longer than in seq order.
    """
    sql = explain + STAGED_APPLY_SQL
    if conn.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    if conn.dialect.name != "postgresql":
        return conn.exec_driver_sql(sql, (order_no, batch_no))
    conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
    conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
    out = conn.exec_driver_sql(sql, (order_no, batch_no))
    conn.exec_driver_sql("RESET enable_hashjoin")   # the rest of the transaction as planned by default
    conn.exec_driver_sql("RESET enable_nestloop")
    return out


def _apply_per_line(conn: Connection, order_no: str, batch_no: str, lines) -> int:
    """One UPDATE (APPLY_SQL) per result line, in chunks of APPLY_CHUNK; the lines read."""
    chunk: list[tuple] = []
    n = 0
    for line in lines:
        n += 1
        chunk.append((ItemStatus.PAID if line.paid else ItemStatus.FAILED,
                      line.reason_code, line.reason_text, line.bank_serial or None,
                      post_date(line.post_date), order_no, line.seq, batch_no,
                      line.amount, line.amount, line.account_no, line.account_no))
        if len(chunk) >= APPLY_CHUNK:
            executemany(conn, APPLY_SQL, chunk)
            chunk = []
    executemany(conn, APPLY_SQL, chunk)
    return n


__all__ = ["BankFlow", "ConservationError", "check_conservation", "iso"]
