"""The core simulator's own record of what the gateway reported, in SQLite.

Blocking code, meant to run on one dedicated thread (the simulator calls it
through a single-thread pool, which also serialises writers). Results are
kept as events, one row per (order_no, seq, version) — the key the core API is
idempotent on — with a counter for repeats; a repeat whose content differs is
refused whole (ResultConflict, answered 409) and counted on the event it
contradicts. `results` keeps, per (order_no, seq), the result with the highest
version: a lower version arriving late is kept as an event and changes nothing. Order
states are kept as a history. Each call is one transaction, committed with
the WAL fsync'd, so whatever the simulator has acknowledged survives a crash.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from simulators.core.validate import ItemResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS result_events (
    id INTEGER PRIMARY KEY,
    order_no TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason_code TEXT,
    reason_text TEXT,
    bank_serial TEXT,
    at TEXT NOT NULL,
    amount INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    duplicates INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (order_no, seq, version)
);
CREATE TABLE IF NOT EXISTS results (
    order_no TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (order_no, seq)
) WITHOUT ROWID;
-- Kept by record_results (once a trigger, one statement per row: dropped from older files).
DROP TRIGGER IF EXISTS results_highest;
CREATE TABLE IF NOT EXISTS state_events (
    id INTEGER PRIMARY KEY,
    order_no TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    received_at TEXT NOT NULL,
    repeats INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS state_events_order ON state_events (order_no, id);
"""

_INSERT_NEW = """
INSERT INTO result_events
    (order_no, seq, version, status, reason_code, reason_text, bank_serial, at, amount, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (order_no, seq, version) DO NOTHING
"""
# A request that repeats results, staged for the two set-based statements below (per connection).
_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS incoming (
    seq INTEGER NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, reason_code TEXT,
    reason_text TEXT, bank_serial TEXT, at TEXT NOT NULL, amount INTEGER NOT NULL)
"""
_STAGE = "INSERT INTO temp.incoming VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# The (seq, version) already held with other content, in the request's order (IS NOT: null-safe).
_CONFLICTS = """
SELECT i.seq, i.version FROM temp.incoming i JOIN result_events e
    ON e.order_no = ? AND e.seq = i.seq AND e.version = i.version
WHERE e.status IS NOT i.status OR e.reason_code IS NOT i.reason_code
   OR e.reason_text IS NOT i.reason_text OR e.bank_serial IS NOT i.bank_serial OR e.at IS NOT i.at
ORDER BY i.rowid
"""
# A repeat of (order_no, seq, version) changes nothing but its counter (the
# content was checked equal before: a different one is a conflict, refused).
# "WHERE true": SQLite's upsert after a SELECT needs a WHERE to parse.
_INSERT_RESULTS = """
INSERT INTO result_events
    (order_no, seq, version, status, reason_code, reason_text, bank_serial, at, amount, received_at)
SELECT ?1, seq, version, status, reason_code, reason_text, bank_serial, at, amount, ?2
FROM temp.incoming WHERE true ORDER BY rowid
ON CONFLICT (order_no, seq, version) DO UPDATE SET duplicates = duplicates + 1
"""
# The new events (id above ?2) that are their item's highest version become its result.
_KEEP_HIGHEST = """
INSERT OR REPLACE INTO results (order_no, seq, event_id, version, status, amount)
SELECT e.order_no, e.seq, e.id, e.version, e.status, e.amount FROM result_events e
WHERE e.id > ?2
  AND NOT EXISTS (SELECT 1 FROM result_events h WHERE h.order_no = e.order_no AND h.seq = e.seq
                  AND h.version > e.version AND h.id > ?2)
  AND e.version > coalesce((SELECT version FROM results r
                            WHERE r.order_no = ?1 AND r.seq = e.seq), 0)
"""


class ResultConflict(Exception):
    """The same (seq, version) as one already held, with different content: nothing recorded."""

    def __init__(self, order_no: str, seqs: list[tuple[int, int]]) -> None:
        self.seqs = seqs
        first = seqs[0]
        super().__init__(f"order {order_no}: seq {first[0]} version {first[1]} is already held with "
                         f"different content" + (f" (and {len(seqs) - 1} more)" if len(seqs) > 1 else ""))


class Store:
    """SQLite file of reported results and states. Use from one thread at a time."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            # Opened on first use, on the thread that will keep using it.
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA temp_store=MEMORY")
            db.executescript(SCHEMA)
            db.execute(_INCOMING)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def record_results(self, order_no: str, results: Iterable[tuple[ItemResult, int]], received_at: str) -> dict[str, int]:
        """Record (result, item amount) pairs in one transaction; returns new/duplicate counts.

        Raises ResultConflict, recording nothing, if a (seq, version) is already held with
        other content; the held events count the conflict.
        """
        db = self._conn()
        rows = [
            (order_no, r.seq, r.version, r.status, r.reason_code, r.reason_text, r.bank_serial, r.at,
             amount, received_at)
            for r, amount in results
        ]
        db.execute("BEGIN IMMEDIATE")
        try:
            # Ids only grow, so the rows above the old maximum are the new ones.
            top = db.execute("SELECT coalesce(max(id), 0) FROM result_events").fetchone()[0]
            # The usual request holds only results not seen before: inserted as they are.
            changes = db.total_changes
            db.executemany(_INSERT_NEW, rows)
            new = db.total_changes - changes
            if new < len(rows):
                # Some (seq, version) are held already: start again, comparing each with what is
                # held, through a temporary table (one statement each, not one per result).
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM temp.incoming")
                db.executemany(_STAGE, (row[1:9] for row in rows))
                conflicts = db.execute(_CONFLICTS, (order_no,)).fetchall()
                if conflicts:
                    db.executemany("UPDATE result_events SET conflicts = conflicts + 1 "
                                   "WHERE order_no = ? AND seq = ? AND version = ?",
                                   [(order_no, s, v) for s, v in conflicts])
                    db.execute("DELETE FROM temp.incoming")
                    db.execute("COMMIT")
                    raise ResultConflict(order_no, conflicts)
                db.execute(_INSERT_RESULTS, (order_no, received_at))
                new = db.execute("SELECT count(*) FROM result_events WHERE id > ?", (top,)).fetchone()[0]
                db.execute("DELETE FROM temp.incoming")
            if new:
                db.execute(_KEEP_HIGHEST, (order_no, top))
            db.execute("COMMIT")
        except ResultConflict:
            raise     # committed: only the conflict counters
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"received": len(rows), "new": new, "duplicates": len(rows) - new}

    def record_state(self, order_no: str, state: str, detail: Any, received_at: str) -> bool:
        """Append a state report; a repeat of the latest (same state and detail) only counts. True if new."""
        db = self._conn()
        detail_json = json.dumps(detail, ensure_ascii=False, sort_keys=True)
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute(
                "SELECT id, state, detail FROM state_events WHERE order_no = ? ORDER BY id DESC LIMIT 1",
                (order_no,),
            ).fetchone()
            if last is not None and last[1] == state and last[2] == detail_json:
                db.execute("UPDATE state_events SET repeats = repeats + 1 WHERE id = ?", (last[0],))
                new = False
            else:
                db.execute(
                    "INSERT INTO state_events (order_no, state, detail, received_at) VALUES (?, ?, ?, ?)",
                    (order_no, state, detail_json, received_at),
                )
                new = True
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return new

    def latest_states(self) -> dict[str, str]:
        """order_no -> the last state reported for it."""
        rows = self._conn().execute(
            "SELECT order_no, state FROM state_events WHERE id IN (SELECT max(id) FROM state_events GROUP BY order_no)"
        )
        return dict(rows.fetchall())

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per order that has any report: state history, latest results per status, repeat counters."""
        db = self._conn()
        out: dict[str, dict[str, Any]] = {}

        def entry(order_no: str) -> dict[str, Any]:
            return out.setdefault(order_no, {
                "state_history": [],
                "results": {},
                "reported_items": 0,
                "result_events": 0,
                "duplicates": 0,
                "conflicts": 0,
                "state_repeats": 0,
            })

        for order_no, state, detail, received_at, repeats in db.execute(
            "SELECT order_no, state, detail, received_at, repeats FROM state_events ORDER BY id"
        ):
            e = entry(order_no)
            e["state_history"].append({"state": state, "detail": json.loads(detail), "received_at": received_at})
            e["state_repeats"] += repeats
        for order_no, status, count, amount in db.execute(
            "SELECT order_no, status, count(*), sum(amount) FROM results GROUP BY order_no, status"
        ):
            e = entry(order_no)
            e["results"][status] = {"count": count, "amount": amount}
            e["reported_items"] += count
        for order_no, events, dups, conflicts in db.execute(
            "SELECT order_no, count(*), sum(duplicates), sum(conflicts) FROM result_events GROUP BY order_no"
        ):
            e = entry(order_no)
            e["result_events"], e["duplicates"], e["conflicts"] = events, dups, conflicts
        return out

    def results(self, order_no: str) -> dict[int, dict[str, Any]]:
        """seq -> the result of that item with the highest version, the statuses of its versions in
        order, and its counters."""
        db = self._conn()
        out: dict[int, dict[str, Any]] = {}
        for (seq, version, status, code, text, serial, at, amount, received_at, dups, conflicts,
             latest) in db.execute(
            """SELECT e.seq, e.version, e.status, e.reason_code, e.reason_text, e.bank_serial, e.at,
                      e.amount, e.received_at, e.duplicates, e.conflicts, e.id = r.event_id
               FROM result_events e JOIN results r ON r.order_no = e.order_no AND r.seq = e.seq
               WHERE e.order_no = ? ORDER BY e.seq, e.version""",
            (order_no,),
        ):
            rec = out.setdefault(seq, {"statuses": [], "duplicates": 0, "conflicts": 0})
            rec["statuses"].append(status)
            rec["duplicates"] += dups
            rec["conflicts"] += conflicts
            if latest:
                rec.update(version=version, status=status, reason_code=code, reason_text=text, bank_serial=serial,
                           at=at, amount=amount, received_at=received_at)
        return out
