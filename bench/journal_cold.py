"""What journal retention costs: moving old entries to cold files, and verifying across the cut.

    .venv/bin/python bench/journal_cold.py [--entries 100000] [--db URL]   (default: SQLite, temp dir)

Appends `--entries` keyed entries (480-byte inline payloads, 1,000 per transaction), half
dated January and half February 2026, and a few in December; then times, in-process:
`journal_cold.archive_old` moving January and February (two cold files: written, fsynced,
read back and verified, then the cut committed), `verify_chain` of the live rest from the
anchor, and `verify_cold` of the cold files (digests, seals, chains). Prints one JSON
object with the seconds, the cold files' sizes and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway import db as dbmod  # noqa: E402
from gateway import journal_cold  # noqa: E402
from gateway.journal import Entry, Journal, JournalKey, verify_chain  # noqa: E402
from gateway.paper.seal import Seal  # noqa: E402
from protocols import sm  # noqa: E402


def _entry(i: int) -> Entry:
    return Entry("out", "cnbank-demo", "tcp", "BP01", f"batch B{i:06d}: 3 items, 张** 6222********1234",
                 payload=(f"<BP01 n='{i}'>" + "x" * 400 + "</BP01>").encode(), msg_id=f"M{i:08d}",
                 order_no=f"FS{i // 100:012d}", batch_no=f"B{i:06d}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--db", help="an empty database URL; default SQLite in a temp dir")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="journal-cold-bench-")
    url = args.db or f"sqlite:///{tmp}/j.db"
    dbmod.upgrade(url)
    engine = dbmod.make_engine(url)
    key = JournalKey(os.urandom(32))
    jr = Journal(f"{tmp}/archive", key=key)
    seal = Seal(sm.generate_keypair())
    n = args.entries
    t = time.perf_counter()
    for i in range(0, n + 10, 1000):
        with engine.begin() as conn:
            for k in range(i, min(n + 10, i + 1000)):
                at = ("2026-01-15T10:00:00+08:00" if k < n // 2 else "2026-02-10T10:00:00+08:00" if k < n
                      else "2026-12-01T10:00:00+08:00")
                jr.append(conn, _entry(k), at)
    seeded = time.perf_counter() - t
    t = time.perf_counter()
    plan, moved = journal_cold.archive_old(engine, jr, seal, key, f"{tmp}/cold", "2026-03-01T00:00:00+08:00",
                                           "2026-12-08T09:00:00+08:00")
    archived = time.perf_counter() - t
    t = time.perf_counter()
    with engine.connect() as conn:
        live = verify_chain(conn, jr.archive_dir, key=key)
    live_s = time.perf_counter() - t
    t = time.perf_counter()
    with engine.connect() as conn:
        cold = journal_cold.verify_cold(conn, f"{tmp}/cold", key, public_key=seal.public_key)
    cold_s = time.perf_counter() - t
    assert live.ok and cold.ok, (live.reason, cold.problem)
    print(json.dumps({
        "db": url.split(":")[0], "entries": n, "seed_s": round(seeded, 1),
        "moved": [(m.first_id, m.last_id) for m in moved], "archive_s": round(archive_s := archived, 1),
        "archive_entries_per_s": round(n / archive_s), "verify_live_s": round(live_s, 2),
        "live_entries": live.checked, "verify_cold_s": round(cold_s, 1),
        "cold_entries_per_s": round(cold.entries / cold_s),
        "cold_file_mb": [round(os.path.getsize(f"{tmp}/cold/{m.file}") / 1e6, 1) for m in moved],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
