"""The simulated bank's own durable ledger, in SQLite.

What a real agent bank keeps on its side of the link: the batches it accepted
(and what became of them), the replies it must repeat to a resent number, the
MsgIds it has seen, every credit it posted, the late returns, refunds and
disputes, the orders' funding, and a log of every request it answered. A
credit is recorded, never prevented: paying an item twice is a fault of the
gateway, and the ledger is where a test finds it (`double_credits`).

All writes run on one dedicated thread with one connection, each operation
one transaction; because that thread is the only writer, a check and the act
that depends on it (a BatchNo's idempotency, an order's funds) cannot
interleave with another request's. The test hooks (`accepted_count`,
`credits`, ...) read synchronously through their own short-lived connection,
which WAL mode lets run beside the writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS funds (
    order_no TEXT PRIMARY KEY, amount INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_no TEXT PRIMARY KEY, kind TEXT NOT NULL, order_no TEXT NOT NULL,
    file_sm3 TEXT NOT NULL, total_count INTEGER NOT NULL, total_amount INTEGER NOT NULL,
    bank_batch_no TEXT NOT NULL UNIQUE, status TEXT NOT NULL, payer_acct TEXT NOT NULL,
    plain_path TEXT NOT NULL, accepted_at REAL NOT NULL, planned_reject TEXT,
    result_file TEXT, result_sm3 TEXT, result_enc_key TEXT, proc_date TEXT, done_date TEXT,
    succ_cnt INTEGER, succ_amt INTEGER, fail_cnt INTEGER, fail_amt INTEGER,
    reject_code TEXT, reject_msg TEXT);
CREATE INDEX IF NOT EXISTS batches_order ON batches (order_no);
CREATE TABLE IF NOT EXISTS remembered (
    kind TEXT NOT NULL, number TEXT NOT NULL, fingerprint TEXT NOT NULL, rsp BLOB NOT NULL,
    PRIMARY KEY (kind, number));
CREATE TABLE IF NOT EXISTS msg_ids (
    sender_id TEXT NOT NULL, tx_date TEXT NOT NULL, msg_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (sender_id, tx_date, msg_id)) WITHOUT ROWID;
-- One index only, led by the order: it serves every lookup (the batch's order is
-- known) and keeps a million-credit insert at a few seconds.
CREATE TABLE IF NOT EXISTS credits (
    batch_no TEXT NOT NULL, seq INTEGER NOT NULL, order_no TEXT NOT NULL,
    account TEXT NOT NULL, amount INTEGER NOT NULL, serial TEXT NOT NULL, at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS credits_item ON credits (order_no, seq, batch_no);
CREATE TABLE IF NOT EXISTS failures (
    batch_no TEXT NOT NULL, seq INTEGER NOT NULL, account TEXT NOT NULL,
    amount INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (batch_no, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS returns (
    serial TEXT PRIMARY KEY, batch_no TEXT NOT NULL, seq INTEGER NOT NULL,
    order_no TEXT NOT NULL, amount INTEGER NOT NULL, reason TEXT NOT NULL,
    return_date TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS returns_batch ON returns (batch_no, seq);
CREATE TABLE IF NOT EXISTS refunds (
    refund_no TEXT PRIMARY KEY, order_no TEXT NOT NULL, total_count INTEGER NOT NULL,
    total_amount INTEGER NOT NULL, status TEXT NOT NULL, accepted_at REAL NOT NULL,
    planned_reject TEXT, refund_serial TEXT, returned_to TEXT, done_date TEXT,
    reject_code TEXT, reject_msg TEXT);
CREATE TABLE IF NOT EXISTS refund_items (
    refund_no TEXT NOT NULL, seq INTEGER NOT NULL, batch_no TEXT NOT NULL,
    amount INTEGER NOT NULL, PRIMARY KEY (refund_no, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS disputes (
    dispute_no TEXT PRIMARY KEY, batch_no TEXT NOT NULL, seqs TEXT NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, tx_code TEXT NOT NULL, msg_id TEXT NOT NULL,
    sender_id TEXT NOT NULL, number TEXT NOT NULL, ret_code TEXT NOT NULL,
    ret_msg TEXT NOT NULL, note TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS requests_number ON requests (number, tx_code);
"""

LIVE = ("RCVD", "PROC")


class Refused(Exception):
    """The ledger refuses a request: `code` is the RetCode (E003, E004, E005, E007, E010...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Credit:
    """One credit posted to a recipient's account (入账)."""

    batch_no: str
    order_no: str
    seq: int
    account: str
    amount: int  # fen
    serial: str
    at: str  # PostDate, YYYYMMDD


@dataclass(frozen=True)
class DoubleCredit:
    """An item of an order credited more often than it was returned, plus one."""

    order_no: str
    seq: int
    credits: int
    returns: int
    batch_nos: tuple[str, ...]
    serials: tuple[str, ...]


def fingerprint(fields: dict[str, Any]) -> str:
    """The content a remembered number is compared on, as canonical text."""
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Ledger:
    """The bank's books. Every write method returns a Deferred and runs on the ledger thread."""

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="cnbank-ledger")
        self._conn: sqlite3.Connection | None = None

    # --- plumbing ---------------------------------------------------------------------

    def open(self):
        """Start the ledger thread and create the schema; fires when ready."""
        self._pool.start()
        # Like the reactor's own pool: a ledger nobody closed must not keep the process alive.
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown",
                                                            self._pool.stop)
        return self._call(self._open)

    def close(self):
        """Close the connection and stop the ledger thread; fires when done."""
        d = self._call(self._close)

        def stop(result):
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._pool.stop()
            return result
        return d.addBoth(stop)

    def _open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any):
        return deferToThreadPool(self._reactor, self._pool, fn, *args, **kw)

    def _tx(self, fn: Callable[..., Any], *args: Any, **kw: Any):
        """Run fn(conn, ...) as one IMMEDIATE transaction on the ledger thread."""

        def run():
            conn = self._conn
            if conn is None:
                raise RuntimeError("the ledger is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args, **kw)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        return self._call(run)

    @staticmethod
    def _next(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        n = (row[0] if row else 0) + 1
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, n))
        return n

    # --- funding, MsgIds, the request log -----------------------------------------------

    def fund(self, order_no: str, amount: int, at: float):
        """The treasury paid *amount* fen for *order_no* (replaces an earlier figure)."""
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise ValueError("amount is a non-negative int of fen")

        def run(conn):
            conn.execute("INSERT INTO funds (order_no, amount, at) VALUES (?, ?, ?) "
                         "ON CONFLICT (order_no) DO UPDATE SET amount = excluded.amount, "
                         "at = excluded.at", (order_no, amount, at))
        return self._tx(run)

    def claim_msg_id(self, sender_id: str, tx_date: str, msg_id: str, at: float):
        """Fires True if the MsgId is new for this sender and date (and is now taken), else False."""

        def run(conn):
            cur = conn.execute("INSERT OR IGNORE INTO msg_ids VALUES (?, ?, ?, ?)",
                               (sender_id, tx_date, msg_id, at))
            return cur.rowcount == 1
        return self._tx(run)

    def log_request(self, at: float, tx_code: str, msg_id: str, sender_id: str, number: str,
                    ret_code: str, ret_msg: str, note: str = ""):
        def run(conn):
            conn.execute("INSERT INTO requests (at, tx_code, msg_id, sender_id, number, ret_code,"
                         " ret_msg, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (at, tx_code, msg_id, sender_id, number, ret_code, ret_msg, note))
        return self._tx(run)

    # --- remembered replies -------------------------------------------------------------

    def recall(self, kind: str, number: str, content: str):
        """The remembered reply for *number* if *content* is the same; Refused E004 if not;
        None if the number was never answered 0000."""
        return self._tx(self._recall, kind, number, content)

    @staticmethod
    def _recall(conn, kind: str, number: str, content: str) -> bytes | None:
        row = conn.execute("SELECT fingerprint, rsp FROM remembered WHERE kind = ? AND number = ?",
                           (kind, number)).fetchone()
        if row is None:
            return None
        if row[0] != content:
            raise Refused("E004", f"{number} was accepted before with different content")
        return bytes(row[1])

    @staticmethod
    def _remember(conn, kind: str, number: str, content: str, rsp: bytes) -> None:
        conn.execute("INSERT INTO remembered (kind, number, fingerprint, rsp) VALUES (?, ?, ?, ?)",
                     (kind, number, content, rsp))

    # --- funds --------------------------------------------------------------------------

    @staticmethod
    def _funded(conn, order_no: str) -> int | None:
        row = conn.execute("SELECT amount FROM funds WHERE order_no = ?", (order_no,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _committed(conn, order_no: str) -> int:
        """What has left, or may yet leave, the order's funds: paid less returned, plus batches
        still being processed, plus refunds not rejected."""
        (total,) = conn.execute(
            """SELECT
                 COALESCE((SELECT SUM(succ_amt) FROM batches
                           WHERE order_no = :o AND status = 'DONE'), 0)
               + COALESCE((SELECT SUM(total_amount) FROM batches
                           WHERE order_no = :o AND status IN ('RCVD', 'PROC')), 0)
               - COALESCE((SELECT SUM(amount) FROM returns WHERE order_no = :o), 0)
               + COALESCE((SELECT SUM(total_amount) FROM refunds
                           WHERE order_no = :o AND status <> 'RJCT'), 0)""",
            {"o": order_no}).fetchone()
        return total

    def _check_funds(self, conn, order_no: str, amount: int, auto_fund_at: float | None,
                     what: str) -> None:
        funded = self._funded(conn, order_no)
        if funded is None and auto_fund_at is not None:
            conn.execute("INSERT INTO funds (order_no, amount, at) VALUES (?, ?, ?)",
                         (order_no, amount, auto_fund_at))
            funded = amount
        if funded is None:
            raise Refused("E005", f"no funds received for order {order_no}")
        committed = self._committed(conn, order_no)
        if committed + amount > funded:
            raise Refused("E005", f"{what} of {amount} fen would exceed the funds of order "
                          f"{order_no}: {funded} fen received, {committed} fen committed")

    # --- batches ------------------------------------------------------------------------

    def accept_batch(self, *, batch_no: str, kind: str, order_no: str, file_sm3: str,
                     total_count: int, total_amount: int, payer_acct: str, plain_path: str,
                     orig_batch_nos: Iterable[str], content: str, at: float, date: str,
                     bank_id: str, planned_reject: Callable[[], str | None],
                     make_rsp: Callable[[str], bytes], auto_fund: bool):
        """Decide a BP01 whose file was found good, in one transaction.

        Fires ("replay", rsp) when an identical BP01 won the race, ("ok", rsp)
        when accepted; Refused for E004, E005, E010 and an unknown OrigBatchNo.
        *planned_reject* is called only once the batch is sure to be accepted.
        """

        def run(conn):
            rsp = self._recall(conn, "batch", batch_no, content)
            if rsp is not None:
                return "replay", rsp
            # A batch number refused before is not remembered; one accepted before is.
            for orig in sorted(set(orig_batch_nos)):
                row = conn.execute("SELECT order_no, status FROM batches WHERE batch_no = ?",
                                   (orig,)).fetchone()
                if row is None or row[0] != order_no or row[1] in LIVE:
                    raise Refused("E999", f"OrigBatchNo {orig} is not a processed batch of "
                                  f"order {order_no}")
            if kind == "PAY":
                row = conn.execute("SELECT batch_no, status FROM batches WHERE order_no = ? AND "
                                   "kind = 'PAY' AND status <> 'RJCT'", (order_no,)).fetchone()
                if row is not None:
                    raise Refused("E010", f"order {order_no} already has PAY batch {row[0]} "
                                  f"({row[1]})")
            self._check_funds(conn, order_no, total_amount, at if auto_fund else None,
                              f"batch {batch_no}")
            n = self._next(conn, "bank_batch")
            bank_batch_no = f"{bank_id}{date}{n:08d}"
            rsp = make_rsp(bank_batch_no)
            conn.execute(
                "INSERT INTO batches (batch_no, kind, order_no, file_sm3, total_count, "
                "total_amount, bank_batch_no, status, payer_acct, plain_path, accepted_at, "
                "planned_reject) VALUES (?, ?, ?, ?, ?, ?, ?, 'RCVD', ?, ?, ?, ?)",
                (batch_no, kind, order_no, file_sm3, total_count, total_amount, bank_batch_no,
                 payer_acct, plain_path, at, planned_reject()))
            self._remember(conn, "batch", batch_no, content, rsp)
            return "ok", rsp
        return self._tx(run)

    def batch(self, batch_no: str):
        """Fires with the batch's row as a dict, or None."""
        return self._tx(lambda conn: _batch_row(conn, batch_no))

    def start_processing(self, batch_no: str):
        """RCVD -> PROC; fires with the batch row (whatever its status)."""

        def run(conn):
            conn.execute("UPDATE batches SET status = 'PROC' WHERE batch_no = ? AND "
                         "status = 'RCVD'", (batch_no,))
            return _batch_row(conn, batch_no)
        return self._tx(run)

    def finish_batch(self, batch_no: str, *, credits: Iterable[tuple], failures: Iterable[tuple],
                     result_file: str, result_sm3: str, result_enc_key: str, proc_date: str,
                     succ_cnt: int, succ_amt: int, fail_cnt: int, fail_amt: int):
        """PROC -> DONE with every credit and failure, in one transaction.

        *credits* yields (seq, account, amount, serial, post_date), *failures*
        (seq, account, amount, reason); both may be generators over a file of
        a million lines. Fires False (and changes nothing) if the batch was not PROC.
        """

        def run(conn):
            row = conn.execute("SELECT order_no, status FROM batches WHERE batch_no = ?",
                               (batch_no,)).fetchone()
            if row is None or row[1] != "PROC":
                return False
            order_no = row[0]
            conn.executemany(
                "INSERT INTO credits (batch_no, seq, order_no, account, amount, serial, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((batch_no, seq, order_no, acct, amount, serial, post)
                 for seq, acct, amount, serial, post in credits))
            conn.executemany(
                "INSERT INTO failures (batch_no, seq, account, amount, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                ((batch_no, seq, acct, amount, reason) for seq, acct, amount, reason in failures))
            conn.execute(
                "UPDATE batches SET status = 'DONE', result_file = ?, result_sm3 = ?, "
                "result_enc_key = ?, proc_date = ?, done_date = ?, succ_cnt = ?, succ_amt = ?, "
                "fail_cnt = ?, fail_amt = ? WHERE batch_no = ?",
                (result_file, result_sm3, result_enc_key, proc_date, proc_date, succ_cnt,
                 succ_amt, fail_cnt, fail_amt, batch_no))
            return True
        return self._tx(run)

    def reject_batch(self, batch_no: str, code: str, message: str, date: str):
        """RCVD/PROC -> RJCT: nothing of the batch is paid; its number stays spent."""

        def run(conn):
            cur = conn.execute(
                "UPDATE batches SET status = 'RJCT', reject_code = ?, reject_msg = ?, "
                "done_date = ? WHERE batch_no = ? AND status IN ('RCVD', 'PROC')",
                (code, message, date, batch_no))
            return cur.rowcount == 1
        return self._tx(run)

    def pending(self):
        """Fires with (batches RCVD/PROC, refunds PROC) to resume after a restart."""

        def run(conn):
            batches = [_dict(conn, r) for r in conn.execute(
                "SELECT * FROM batches WHERE status IN ('RCVD', 'PROC') ORDER BY accepted_at")]
            refunds = [_dict(conn, r) for r in conn.execute(
                "SELECT * FROM refunds WHERE status = 'PROC' ORDER BY accepted_at")]
            return batches, refunds
        return self._tx(run)

    def returns_of(self, batch_no: str):
        """Fires with the late returns of a batch, oldest first, as dicts."""

        def run(conn):
            return [_dict(conn, r) for r in conn.execute(
                "SELECT * FROM returns WHERE batch_no = ? ORDER BY at, serial", (batch_no,))]
        return self._tx(run)

    def add_return(self, batch_no: str, seq: int, reason: str, return_date: str, at: float):
        """Record that a credited item came back (e.g. R004 closed account); fires with its row."""

        def run(conn):
            credit = conn.execute(
                "SELECT c.order_no, c.amount FROM batches b JOIN credits c ON c.order_no = "
                "b.order_no AND c.seq = ? AND c.batch_no = b.batch_no WHERE b.batch_no = ?",
                (seq, batch_no)).fetchone()
            if credit is None:
                raise Refused("E007", f"item {seq} of {batch_no} was not credited")
            if conn.execute("SELECT 1 FROM returns WHERE batch_no = ? AND seq = ?",
                            (batch_no, seq)).fetchone():
                raise Refused("E004", f"item {seq} of {batch_no} was already returned")
            bank_batch_no = conn.execute("SELECT bank_batch_no FROM batches WHERE batch_no = ?",
                                         (batch_no,)).fetchone()[0]
            serial = f"RT{bank_batch_no}-{seq}"
            conn.execute("INSERT INTO returns VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (serial, batch_no, seq, credit[0], credit[1], reason, return_date, at))
            return _dict(conn, conn.execute("SELECT * FROM returns WHERE serial = ?",
                                            (serial,)).fetchone())
        return self._tx(run)

    # --- refunds ------------------------------------------------------------------------

    def accept_refund(self, *, refund_no: str, order_no: str, total_count: int,
                      total_amount: int, items: list[dict], content: str, at: float,
                      planned_reject: Callable[[], str | None], make_rsp: Callable[[], bytes]):
        """Decide an RF01 in one transaction; fires ("ok"|"replay", rsp) or raises Refused."""

        def run(conn):
            rsp = self._recall(conn, "refund", refund_no, content)
            if rsp is not None:
                return "replay", rsp
            for i, item in enumerate(items, 1):
                path = f"Items/Item[{i}]"
                b = conn.execute("SELECT order_no, status FROM batches WHERE batch_no = ?",
                                 (item["BatchNo"],)).fetchone()
                if b is None or b[0] != order_no:
                    raise Refused("E007", f"{path}/BatchNo: no batch {item['BatchNo']} of "
                                  f"order {order_no}")
                if b[1] != "DONE":
                    raise Refused("E999", f"{path}/BatchNo: batch {item['BatchNo']} is {b[1]}, "
                                  "not DONE")
                failed = conn.execute("SELECT amount FROM failures WHERE batch_no = ? AND seq = ?",
                                      (item["BatchNo"], item["Seq"])).fetchone()
                if failed is None:
                    failed = conn.execute("SELECT amount FROM returns WHERE batch_no = ? AND "
                                          "seq = ?", (item["BatchNo"], item["Seq"])).fetchone()
                if failed is None:
                    raise Refused("E999", f"{path}/Seq: item {item['Seq']} neither failed nor "
                                  f"was returned in batch {item['BatchNo']}")
                if failed[0] != item["Amount"]:
                    raise Refused("E999", f"{path}/Amount: {item['Amount']} fen, but the item "
                                  f"was {failed[0]} fen in batch {item['BatchNo']}")
            self._check_funds(conn, order_no, total_amount, None, f"refund {refund_no}")
            conn.execute(
                "INSERT INTO refunds (refund_no, order_no, total_count, total_amount, status, "
                "accepted_at, planned_reject) VALUES (?, ?, ?, ?, 'PROC', ?, ?)",
                (refund_no, order_no, total_count, total_amount, at, planned_reject()))
            conn.executemany("INSERT INTO refund_items VALUES (?, ?, ?, ?)",
                             [(refund_no, it["Seq"], it["BatchNo"], it["Amount"]) for it in items])
            rsp = make_rsp()
            self._remember(conn, "refund", refund_no, content, rsp)
            return "ok", rsp
        return self._tx(run)

    def refund(self, refund_no: str):
        return self._tx(lambda conn: _row(conn, "SELECT * FROM refunds WHERE refund_no = ?",
                                          (refund_no,)))

    def finish_refund(self, refund_no: str, date: str, bank_id: str):
        """PROC -> DONE (or RJCT if one was planned); fires with the refund row."""

        def run(conn):
            row = _row(conn, "SELECT * FROM refunds WHERE refund_no = ?", (refund_no,))
            if row is None or row["status"] != "PROC":
                return row
            if row["planned_reject"]:
                conn.execute("UPDATE refunds SET status = 'RJCT', reject_code = ?, "
                             "reject_msg = ?, done_date = ? WHERE refund_no = ?",
                             (row["planned_reject"], reject_text(row["planned_reject"]), date,
                              refund_no))
            else:
                payer = conn.execute("SELECT payer_acct FROM batches WHERE order_no = ? "
                                     "ORDER BY accepted_at LIMIT 1",
                                     (row["order_no"],)).fetchone()[0]
                n = self._next(conn, "refund")
                conn.execute("UPDATE refunds SET status = 'DONE', refund_serial = ?, "
                             "returned_to = ?, done_date = ? WHERE refund_no = ?",
                             (f"RF{bank_id}{date}{n:08d}", payer, date, refund_no))
            return _row(conn, "SELECT * FROM refunds WHERE refund_no = ?", (refund_no,))
        return self._tx(run)

    # --- disputes -----------------------------------------------------------------------

    def accept_dispute(self, *, dispute_no: str, batch_no: str, seqs: list[int], reason: str,
                       content: str, at: float, make_rsp: Callable[[], bytes]):
        def run(conn):
            rsp = self._recall(conn, "dispute", dispute_no, content)
            if rsp is not None:
                return "replay", rsp
            b = conn.execute("SELECT status, order_no FROM batches WHERE batch_no = ?",
                             (batch_no,)).fetchone()
            if b is None:
                raise Refused("E007", f"no batch {batch_no}")
            if b[0] != "DONE":
                raise Refused("E999", f"BatchNo: batch {batch_no} is {b[0]}, not DONE")
            for i, seq in enumerate(seqs, 1):
                if not (conn.execute("SELECT 1 FROM credits WHERE order_no = ? AND seq = ? AND "
                                     "batch_no = ?", (b[1], seq, batch_no)).fetchone()
                        or conn.execute("SELECT 1 FROM failures WHERE batch_no = ? AND seq = ?",
                                        (batch_no, seq)).fetchone()):
                    raise Refused("E999", f"Seqs/Seq[{i}]: item {seq} is not in batch {batch_no}")
            conn.execute("INSERT INTO disputes VALUES (?, ?, ?, ?, ?)",
                         (dispute_no, batch_no, json.dumps(seqs), reason, at))
            rsp = make_rsp()
            self._remember(conn, "dispute", dispute_no, content, rsp)
            return "ok", rsp
        return self._tx(run)

    # --- statements ---------------------------------------------------------------------

    def statement_rows(self, first_date: str, last_date: str):
        """Fires with (batches DONE, refunds DONE) between two dates inclusive, figures as of now."""

        def run(conn):
            batches = [_dict(conn, r) for r in conn.execute(
                """SELECT b.batch_no, b.order_no, b.payer_acct, b.total_count, b.total_amount,
                          b.succ_cnt, b.succ_amt, b.fail_cnt, b.fail_amt,
                          COUNT(r.serial) AS return_cnt, COALESCE(SUM(r.amount), 0) AS return_amt
                   FROM batches b LEFT JOIN returns r ON r.batch_no = b.batch_no
                   WHERE b.status = 'DONE' AND b.done_date BETWEEN ? AND ?
                   GROUP BY b.batch_no ORDER BY b.done_date, b.accepted_at""",
                (first_date, last_date))]
            refunds = [_dict(conn, r) for r in conn.execute(
                "SELECT * FROM refunds WHERE status = 'DONE' AND done_date BETWEEN ? AND ? "
                "ORDER BY done_date, accepted_at", (first_date, last_date))]
            return batches, refunds
        return self._tx(run)

    # --- synchronous reads for tests and the demo ------------------------------------------

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def accepted_count(self, number: str, tx: str = "BP01") -> int:
        """How many *tx* requests for *number* were answered 0000 (replays and lost replies count)."""
        return self._read("SELECT COUNT(*) FROM requests WHERE tx_code = ? AND number = ? AND "
                          "ret_code = '0000'", (tx, number))[0][0]

    def requests(self, tx: str | None = None, number: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM requests WHERE 1 = 1", []
        if tx is not None:
            sql, args = sql + " AND tx_code = ?", args + [tx]
        if number is not None:
            sql, args = sql + " AND number = ?", args + [number]
        return [dict(r) for r in self._read(sql + " ORDER BY id", tuple(args))]

    def credits(self, order_no: str) -> list[Credit]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return [Credit(*r) for r in conn.execute(
                "SELECT batch_no, order_no, seq, account, amount, serial, at FROM credits "
                "WHERE order_no = ? ORDER BY seq, batch_no", (order_no,))]
        finally:
            conn.close()

    def double_credits(self) -> list[DoubleCredit]:
        """Items credited more than once, net of late returns (a returned item may be paid again)."""
        rows = self._read(
            """SELECT c.order_no, c.seq, COUNT(*) AS n, GROUP_CONCAT(c.batch_no, ' ') AS batches,
                      GROUP_CONCAT(c.serial, ' ') AS serials,
                      (SELECT COUNT(*) FROM returns r
                       WHERE r.order_no = c.order_no AND r.seq = c.seq) AS returned
               FROM credits c GROUP BY c.order_no, c.seq HAVING COUNT(*) - returned > 1
               ORDER BY c.order_no, c.seq""")
        return [DoubleCredit(r["order_no"], r["seq"], r["n"], r["returned"],
                             tuple(r["batches"].split(" ")), tuple(r["serials"].split(" ")))
                for r in rows]

    def batch_now(self, batch_no: str) -> dict | None:
        rows = self._read("SELECT * FROM batches WHERE batch_no = ?", (batch_no,))
        return dict(rows[0]) if rows else None

    def disputes(self) -> list[dict]:
        return [dict(r) for r in self._read("SELECT * FROM disputes ORDER BY at, dispute_no")]


_REJECT_TEXT = {"E005": "funds not received or exceeded"}


def reject_text(code: str) -> str:
    return _REJECT_TEXT.get(code, "refused by the bank")


def _dict(conn, row: sqlite3.Row) -> dict:
    return dict(row)


def _row(conn, sql: str, args: tuple) -> dict | None:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else dict(row)


def _batch_row(conn, batch_no: str) -> dict | None:
    return _row(conn, "SELECT * FROM batches WHERE batch_no = ?", (batch_no,))
