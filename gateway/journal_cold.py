"""Journal retention: old entries move to cold archive files, the chain continuous across the move.

`gatewayctl journal archive [--before DATE]` moves the oldest journal entries, those written
before the cut-off (`[journal] retain_days` before today, or --before), into cold archive files
in `[journal] cold_dir`, one file per calendar month (China time) of the entries' `at` (a month
of more than MAX_FILE_ENTRIES entries in several). A cold
file has the format of `gatewayctl archive export` (gateway/paper/archive.py): every entry with
its payload as on the wire, the chain segment from the file's first entry to its last (its
"head"), the manifest with SHA-256 and SM3 of every member, sealed with the gateway's SM2 key
([paper] seal_key). `gatewayctl archive verify FILE` checks one offline.

Only a prefix of the journal moves (the live chain must start where the cold files end), so the
cut stops before the first entry that something still needs:

- an entry of an order (its order_no, or the batch_no of one of its batches) that is not
  SETTLED or INVALID: its flows may still read it (a resend, a BQ01, a dispute);
- an entry whose payload a live row reads back: a result sheet's PDF or seal
  (result_sheets), a bank's report document (bank_reports), a bank statement (statements);
- the journal's last entry (the head row names it, and appends link to it).

Each file is written to a temporary name (0600, folder 0700), fsynced and renamed, then read
back and verified (signature, hashes, chain, every entry of the span present, the head it
ends at being the live entry's hash); only then, in one transaction that holds the journal's
head lock, is a `journal_cuts` row inserted (span, the hash before it and of its last entry,
file name, SHA-256, SM3, and a MAC of the row under the journal key) and the span deleted
from `journal`, with one journal entry saying so. The row with the highest last_id is the
anchor: `gatewayctl journal verify` walks the live chain from it, and checks the cuts among
themselves (contiguous, each MAC) and each cold file against its cut row (present, digest,
seal, chain, linked to the next file and to the anchor). Payload files in [journal]
archive_dir stay where they are (content-addressed, a live entry may share one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, func, insert, or_, select

from gateway.journal import (GENESIS, HeadMark, Journal, JournalKey, _TAKE_HEAD, cut_digest, read_anchor,
                             read_head_row)
from gateway.models import (OrderState, bank_reports, batches, journal, journal_cuts, orders, result_sheets,
                            statements)
from protocols.sm import SM3Hasher

TZ = "+08:00"     # the journal's `at` convention (gateway.rules.iso)
# A month with more entries is split over several files: `archive verify` holds every member's
# header in memory (two members per entry), so a file's size bounds what checking it needs.
MAX_FILE_ENTRIES = 50_000


class ColdError(Exception):
    """The move cannot be done (or was not): the message says why; nothing was deleted."""


def _next_month(y: int, m: int) -> str:
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}-01T00:00:00{TZ}"


def cutoff_for(today: dt.date, retain_days: int, before: dt.date | None) -> str:
    """The `at` before which entries may move: --before, or `retain_days` before today; never later
    than retention allows when it is on."""
    if before is None and not retain_days:
        raise ColdError("retention is off ([journal] retain_days = 0): say up to when with --before YYYY-MM-DD")
    limit = today - dt.timedelta(days=retain_days) if retain_days else None
    if before is not None and limit is not None and before > limit:
        raise ColdError(f"--before {before} would move entries younger than [journal] retain_days = "
                        f"{retain_days} (the latest allowed is {limit})")
    return f"{(before or limit).isoformat()}T00:00:00{TZ}"


def _needed(conn: Connection):
    """A condition on journal rows: the entry is still needed live (see the module's rule)."""
    live_orders = select(orders.c.order_no).where(orders.c.state.not_in((OrderState.SETTLED, OrderState.INVALID)))
    live_batches = select(batches.c.batch_no).where(batches.c.order_no.in_(live_orders))
    return or_(journal.c.order_no.in_(live_orders), journal.c.batch_no.in_(live_batches),
               journal.c.id.in_(select(result_sheets.c.journal_id)),
               journal.c.id.in_(select(result_sheets.c.sig_journal_id)),
               journal.c.id.in_(select(bank_reports.c.journal_id)),
               journal.c.id.in_(select(statements.c.journal_id).where(statements.c.journal_id.is_not(None))))


@dataclass
class Plan:
    first_id: int                 # the first entry that would move (the anchor's last_id + 1)
    last_id: int                  # the last one; last_id < first_id: nothing moves
    prev_hash: str
    stopped_by: str = ""          # why the cut stops where it does
    months: list[tuple[str, int, int]] = field(default_factory=list)   # (YYYY-MM, first id, last id)


def plan(conn: Connection, cutoff: str, max_file_entries: int = MAX_FILE_ENTRIES) -> Plan:
    """Which entries would move, split by month (and within a month into files of at most
    `max_file_entries`); reads only."""
    anchor = read_anchor(conn)
    head = read_head_row(conn)
    first = (anchor.last_id if anchor else 0) + 1
    prev = anchor.last_hash if anchor else GENESIS
    if head is None or head.last_id < first:
        return Plan(first, first - 1, prev, "the journal is empty")
    young = conn.execute(select(func.min(journal.c.id)).where(journal.c.id >= first, journal.c.at >= cutoff)).scalar()
    last, why = head.last_id - 1, f"entry {head.last_id} is the journal's head (it stays)"
    if young is not None and young - 1 < last:
        last, why = young - 1, f"entry {young} was written on or after the cut-off {cutoff}"
    pinned = conn.execute(select(func.min(journal.c.id)).where(journal.c.id >= first, journal.c.id <= last,
                                                               _needed(conn))).scalar()
    if pinned is not None:
        row = conn.execute(select(journal.c.order_no, journal.c.batch_no, journal.c.tx_code)
                           .where(journal.c.id == pinned)).one()
        last, why = pinned - 1, (f"entry {pinned} ({row.tx_code}, order {row.order_no or '-'}, batch "
                                 f"{row.batch_no or '-'}) is still needed: its order is not SETTLED/INVALID "
                                 "or a live row reads its payload")
    p = Plan(first, last, prev, why)
    at = first
    while at <= last:
        month = conn.execute(select(journal.c.at).where(journal.c.id == at)).scalar_one()[:7]
        y, m = int(month[:4]), int(month[5:7])
        nxt = conn.execute(select(func.min(journal.c.id)).where(journal.c.id > at, journal.c.id <= last,
                                                                journal.c.at >= _next_month(y, m))).scalar()
        end = min(last if nxt is None else nxt - 1, at + max_file_entries - 1)
        p.months.append((month, at, end))
        at = end + 1
    return p


def _digests(path: Path) -> tuple[int, str, str]:
    sha, sm3, n = hashlib.sha256(), SM3Hasher(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            sm3.update(chunk)
            n += len(chunk)
    return n, sha.hexdigest(), sm3.hexdigest()


def file_name(month: str, first: int, last: int) -> str:
    return f"journal-{month}-{first:010d}-{last:010d}.tar.gz"


@dataclass
class Moved:
    file: str
    first_id: int
    last_id: int
    entries: int


def archive_old(engine: Engine, jr: Journal, seal, key: JournalKey | None, cold_dir: str,  # noqa: ANN001
                cutoff: str, at: str, *, who: str = "operator",
                max_file_entries: int = MAX_FILE_ENTRIES) -> tuple[Plan, list[Moved]]:
    """Move what `plan` says, one month's file at a time (each file is its own transaction: an
    interruption leaves whole months moved and the rest live). Raises ColdError before deleting
    anything of a month whose file does not verify."""
    import fcntl
    folder = Path(cold_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    lock = os.open(folder / ".journal-archive.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ColdError(f"another `journal archive` is writing to {folder}: try again when it ends") from None
        return _archive_locked(engine, jr, seal, key, folder, cutoff, at, who, max_file_entries)
    finally:
        os.close(lock)


def _archive_locked(engine: Engine, jr: Journal, seal, key: JournalKey | None, folder: Path,  # noqa: ANN001
                    cutoff: str, at: str, who: str, max_file_entries: int) -> tuple[Plan, list[Moved]]:
    from gateway.journal import Entry
    from gateway.paper.archive import export_archive, verify_archive
    with engine.connect() as conn:
        p = plan(conn, cutoff, max_file_entries)
    moved: list[Moved] = []
    prev = p.prev_hash
    for month, first, last in p.months:
        name = file_name(month, first, last)
        path = folder / name
        with engine.connect() as conn:
            if conn.execute(select(journal_cuts.c.id).where(journal_cuts.c.file == name)).first() is not None:
                raise ColdError(f"{path} is already recorded as a cut: nothing was moved")
            # (A file of that name that no cut records was left by a run that stopped before its
            # cut committed: it is written again.)
            r = export_archive(conn, jr, seal, str(path), at=at, span=(first, last),
                               scope_extra={"month": month, "cutoff": cutoff})
        v = verify_archive(str(path), public_key=seal.public_key, journal_key=key)
        problem = (v.problem if not v.ok else
                   f"it holds {v.entries} entries, not {last - first + 1}" if v.entries != last - first + 1 else
                   "its chain does not start where the live chain ends" if v.segment["prev_hash"] != prev else "")
        if problem:
            path.unlink()
            raise ColdError(f"cold file {path} did not verify after writing ({problem}): it was removed and "
                            "nothing was moved")
        size, sha, sm3 = _digests(path)
        cut = {"first_id": first, "last_id": last, "prev_hash": prev, "last_hash": r.head["last_hash"],
               "entries": last - first + 1, "file": name, "file_size": size, "file_sha256": sha,
               "file_sm3": sm3, "at": at}
        cut["mac"] = key.entry_mac(cut_digest(cut)) if key is not None else None
        with engine.begin() as conn:
            conn.execute(_TAKE_HEAD)   # appends wait; a second `journal archive` waits here too
            anchor = read_anchor(conn)
            if (anchor.last_id if anchor else 0) != first - 1:
                path.unlink()
                raise ColdError(f"another cut was made meanwhile (the anchor is at entry "
                                f"{anchor.last_id if anchor else 0}): {path} was removed; run it again")
            live = conn.execute(select(func.count(), func.max(journal.c.id)).where(
                journal.c.id >= first, journal.c.id <= last)).one()
            last_hash = conn.execute(select(journal.c.hash).where(journal.c.id == last)).scalar()
            if live[0] != last - first + 1 or last_hash != r.head["last_hash"]:
                path.unlink()
                raise ColdError(f"entries {first}..{last} changed while {path} was written: nothing was moved")
            conn.execute(insert(journal_cuts).values(**cut))
            conn.execute(delete(journal).where(journal.c.id >= first, journal.c.id <= last))
            jr.append(conn, Entry("event", f"operator:{who}", "cli", "journal.archive", json.dumps(
                {"file": name, "first_id": first, "last_id": last, "entries": last - first + 1,
                 "sha256": sha, "sm3": sm3, "cutoff": cutoff}, ensure_ascii=False)), at)
        moved.append(Moved(name, first, last, last - first + 1))
        prev = cut["last_hash"]
    return p, moved


def _segment(path: Path) -> list[list]:
    with tarfile.open(path, "r:*") as tar:
        raw = tar.extractfile("archive/chain/segment.jsonl").read()
    return [json.loads(x) for x in raw.splitlines() if x.strip()]


@dataclass
class ColdReport:
    ok: bool
    problem: str = ""
    files: int = 0
    entries: int = 0
    anchor_id: int = 0
    checked_files: bool = True
    marks_checked: int = 0


def verify_cold(conn: Connection, cold_dir: str, key: JournalKey | None, *,  # noqa: ANN001
                check_files: bool = True, public_key=None, marks: list[HeadMark] = (),
                keyed_from: int | None = None) -> ColdReport:
    """The cuts among themselves (contiguous from entry 1, each MAC under the key), and with
    `check_files` each cold file against its cut: present, its digest the recorded one, its seal,
    hashes and chain (gateway.paper.archive.verify_archive), every entry of the span present, its
    chain starting at the previous file's last hash and ending at the cut's; the exported heads
    (`marks`) inside the cold range must be on those chains. A cut must carry a MAC once one before
    it does, or when it moved entries from `keyed_from` on (it was made with the key). Names the
    first thing wrong."""
    from gateway.paper.archive import verify_archive
    cuts = conn.execute(select(journal_cuts).order_by(journal_cuts.c.last_id)).all()
    rep = ColdReport(True, anchor_id=cuts[-1].last_id if cuts else 0, checked_files=check_files)
    pending = sorted(marks, key=lambda m: m.last_id)
    prev_last, prev_hash, macs = 0, GENESIS, False
    for c in cuts:
        if c.first_id != prev_last + 1 or c.prev_hash != prev_hash or c.last_id < c.first_id \
                or c.entries != c.last_id - c.first_id + 1:
            return _bad(rep, f"the cut to {c.file} (journal_cuts, entries {c.first_id}..{c.last_id}) does not "
                             f"follow the one before it (entry {prev_last}): a cut was deleted or edited")
        needs_mac = macs or c.mac is not None or (keyed_from is not None and c.last_id >= keyed_from)
        if key is not None and needs_mac and not key.entry_mac_ok(cut_digest(c), c.mac):
            return _bad(rep, f"the cut to {c.file} (journal_cuts) was altered: its MAC "
                             f"{'is missing' if c.mac is None else 'does not match'}")
        macs = macs or needs_mac
        if check_files:
            problem = _check_file(Path(cold_dir) / c.file, c, key, public_key, pending, verify_archive)
            if problem:
                return _bad(rep, problem)
            rep.files += 1
        rep.entries += c.entries
        prev_last, prev_hash = c.last_id, c.last_hash
    if check_files and pending:
        m = pending[0]
        return _bad(rep, f"{m.source} records entry {m.last_id}, which lies in no cold file")
    rep.marks_checked = len(marks) if check_files else 0
    return rep


def _bad(rep: ColdReport, problem: str) -> ColdReport:
    rep.ok, rep.problem = False, problem
    return rep


def _check_file(path: Path, c, key, public_key, pending: list[HeadMark], verify_archive) -> str:  # noqa: ANN001
    if not path.exists():
        return f"cold file {path} (entries {c.first_id}..{c.last_id}) is missing"
    size, sha, sm3 = _digests(path)
    if (size, sha, sm3) != (c.file_size, c.file_sha256, c.file_sm3):
        return f"cold file {path} was altered or replaced: its SHA-256/SM3 is not the one its cut recorded"
    v = verify_archive(str(path), public_key=public_key, journal_key=key)
    if not v.ok:
        return f"cold file {path}: {v.problem}"
    seg = v.segment
    if seg["first_id"] != c.first_id or seg["prev_hash"] != c.prev_hash or v.head.get("last_id") != c.last_id \
            or v.head.get("last_hash") != c.last_hash or v.entries != c.entries:
        return (f"cold file {path} does not hold entries {c.first_id}..{c.last_id} linked as its cut records "
                "(first entry, the hash before it, its last hash, or the number of entries)")
    if pending and pending[0].last_id <= c.last_id:
        hashes = {rid: h for rid, h, _mac in _segment(path)}
        while pending and pending[0].last_id <= c.last_id:
            m = pending.pop(0)
            if hashes.get(m.last_id) != m.head_hash:
                return f"cold file {path}: entry {m.last_id} does not have the hash {m.source} records"
    return ""
