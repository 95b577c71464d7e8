"""The tamper-evident journal (报文日志) of every message and file in and out.

Each entry keeps the payload exactly as on the wire (inline when small, else a
read-only file in the archive named by its SM3), its SM3, a masked decoded
view, and the hash of the entry before it. The entry's own hash covers all of
that, so editing, deleting or reordering entries, or changing an archived
file, is found by `verify_chain`, which names the first broken entry.

A hash chain alone does not stop someone who can write to the database: with
the SM3 code in hand they can rewrite an entry and recompute every hash after
it. So each entry also carries a MAC, HMAC-SM3 of its hash under a key the
database does not hold (`[journal] key_file`), and the chain's head is exported
outside the database (`gateway.journal_watch`, `gatewayctl journal head`):
rewriting needs the key, and cutting entries off the end is found against an
exported head (`--expect-head`, the head file). Entries written before a key
was configured carry no MAC; they are protected by the first keyed entry's
hash, which covers them through the chain, and are reported as unkeyed.

`append` runs inside the caller's transaction: the journal entry and the state
change it caused commit together (domain.md rule 5). Appends lock the single
`journal_head` row, which serialises writers on PostgreSQL as well as SQLite.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import Connection, Integer, bindparam, func, insert, select, update

from adapters.interface import Entry  # noqa: F401  (re-exported: adapters describe what they exchanged)
from gateway.models import journal, journal_cuts, journal_head
from protocols.sm import SM3Hasher, sm3_hex
from gateway.journal_key import (KEY_BYTES, JournalKey, JournalKeyError,  # noqa: F401  (re-exported)
                                 generate_key_file, read_key_file)

GENESIS = "0" * 64
def _entry_hash(row: dict) -> str:
    fields = [row["id"], row["at"], row["direction"], row["peer"], row["channel"], row["tx_code"],
              row["msg_id"], row["order_no"], row["batch_no"], row["verified"], row["payload_ref"],
              row["payload_size"], row["payload_sm3"], row["decoded"], row["prev_hash"]]
    return sm3_hex(json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _file_sm3(path: str) -> tuple[str, int]:
    h, n = SM3Hasher(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Built once: building a statement per append cost more than the database work it asks for.
_TAKE_HEAD = update(journal_head).where(journal_head.c.id == 1).values(last_id=journal_head.c.last_id)
_READ_HEAD = (select(journal_head.c.last_id, journal_head.c.last_hash, journal_head.c.keyed_from)
              .where(journal_head.c.id == 1).with_for_update())
_INSERT = insert(journal)
_MOVE_HEAD = update(journal_head).where(journal_head.c.id == 1).values(
    last_id=bindparam("new_id"), last_hash=bindparam("new_hash"),
    keyed_from=func.coalesce(journal_head.c.keyed_from, bindparam("new_keyed_from", type_=Integer)))


class Journal:
    """Appends entries; with a key, each entry carries the MAC of its hash."""

    def __init__(self, archive_dir: str, inline_max_bytes: int = 65536, key: JournalKey | None = None):
        self.archive_dir = Path(archive_dir)
        self.inline_max = inline_max_bytes
        self.key = key

    def _archive(self, src: str | None, data: bytes | None) -> tuple[str, str, int]:
        """Store a payload in the archive by its SM3; returns (ref, sm3, size).

        A file is copied, not hard-linked: a link would share its inode with the caller's work
        file, so the archive would change whenever that file is rewritten in place (a rebuilt
        batch file, a second download) and the chmod would make the work file read-only.
        Hashing while copying archives exactly the bytes that were hashed, and the copy is
        on disk before the entry that names it can commit.
        """
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.archive_dir, suffix=".part")
        try:
            h, size = SM3Hasher(), 0
            with os.fdopen(fd, "wb") as out:
                if data is not None:
                    h.update(data)
                    out.write(data)
                    size = len(data)
                else:
                    with open(src, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            ref = f"{digest[:2]}/{digest}.bin"
            dest = self.archive_dir / ref
            if dest.exists():
                os.unlink(tmp)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o440)
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return ref, digest, size

    def append(self, conn: Connection, e: Entry, at: str) -> int:
        """Append one entry in the caller's transaction; returns its id."""
        payload, ref = e.payload, None
        if e.payload_file is not None or (payload is not None and len(payload) > self.inline_max):
            ref, digest, size = self._archive(e.payload_file, payload)
            payload = None
        else:
            payload = payload or b""
            digest, size = sm3_hex(payload), len(payload)
        # Write to the head row before reading it: on SQLite (pysqlite opens its transaction
        # only at the first write, and ignores FOR UPDATE) this takes the write lock, so two
        # appends wait for each other instead of both reading the same head and colliding.
        conn.execute(_TAKE_HEAD)
        head = conn.execute(_READ_HEAD).one()
        if self.key is None and head.keyed_from is not None:
            # Fail closed: an unkeyed entry after keyed ones is what a forger would write.
            raise JournalKeyError(f"the journal is keyed from entry {head.keyed_from}: "
                                  "this writer has no journal key ([journal] key_file)")
        row = {
            "id": head.last_id + 1, "at": at, "direction": e.direction, "peer": e.peer,
            "channel": e.channel, "tx_code": e.tx_code, "msg_id": e.msg_id,
            "order_no": e.order_no, "batch_no": e.batch_no, "verified": e.verified,
            "payload": payload, "payload_ref": ref, "payload_size": size, "payload_sm3": digest,
            "decoded": e.decoded, "prev_hash": head.last_hash,
        }
        row["hash"] = _entry_hash(row)
        row["mac"] = self.key.entry_mac(row["hash"]) if self.key is not None else None
        conn.execute(_INSERT, row)
        conn.execute(_MOVE_HEAD, {"new_id": row["id"], "new_hash": row["hash"],
                                  "new_keyed_from": row["id"] if self.key is not None else None})
        return row["id"]

    def payload_of(self, row) -> bytes:  # noqa: ANN001
        if row.payload_ref:
            return (self.archive_dir / row.payload_ref).read_bytes()
        return row.payload or b""


# --- verification --------------------------------------------------------------


@dataclass
class ChainReport:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str = ""
    unkeyed_upto: int | None = None     # entries 1..N carry no MAC (written before the key)
    keyed_from: int | None = None       # the first entry with a MAC
    macs_checked: int = 0               # MACs recomputed with the key (0 without a key)
    macs_unchecked: int = 0             # MACs present but no key to check them with
    last_id: int = 0
    last_hash: str = GENESIS
    marks_checked: list[str] = field(default_factory=list)   # exported heads the chain reaches
    anchor_id: int = 0                  # entries 1..anchor_id were moved to cold files (journal_cuts)
    cold_marks: list["HeadMark"] = field(default_factory=list)   # exported heads inside the cold files


@dataclass(frozen=True)
class HeadMark:
    """A head recorded outside the database: the chain must still pass through it."""

    last_id: int
    head_hash: str
    source: str                 # where it came from, for the message
    keyed_from: int | None = None


class HeadFileError(Exception):
    """The exported-head file is not ours or not in order; the message names the line."""


_HEAD_RX = re.compile(r"([0-9]+):([0-9a-f]{64})")


def parse_expect_head(text: str) -> HeadMark:
    """`ID:HASH` as `gatewayctl journal head` prints it."""
    m = _HEAD_RX.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f"expected ID:HASH (an entry id, a colon, 64 hex digits), got {text!r}")
    return HeadMark(int(m.group(1)), m.group(2), f"--expect-head {m.group(1)}:{m.group(2)[:12]}...")


def head_line(key: JournalKey, at: str, last_id: int, head_hash: str, keyed_from: int | None) -> bytes:
    """One line of the head file: time, last id, head hash, keyed_from and their MAC."""
    rec = {"at": at, "last_id": last_id, "head_hash": head_hash, "keyed_from": keyed_from,
           "mac": key.head_mac(at, last_id, head_hash, keyed_from)}
    return (json.dumps(rec, separators=(",", ":")) + "\n").encode("ascii")


def _parse_head_line(raw: bytes, where: str, key: JournalKey | None) -> HeadMark:
    try:
        rec = json.loads(raw)
        at, last_id, head_hash = rec["at"], rec["last_id"], rec["head_hash"]
        keyed_from, mac = rec["keyed_from"], rec["mac"]
        ok = (isinstance(at, str) and isinstance(last_id, int) and isinstance(mac, str)
              and isinstance(head_hash, str) and re.fullmatch(r"[0-9a-f]{64}", head_hash)
              and (keyed_from is None or isinstance(keyed_from, int)))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise HeadFileError(f"{where} is not a head record")
    if key is not None and not hmac.compare_digest(key.head_mac(at, last_id, head_hash, keyed_from), mac):
        raise HeadFileError(f"{where}: its MAC does not match (not written with this journal key)")
    return HeadMark(last_id, head_hash, f"{where} (exported {at})", keyed_from)


class HeadFile:
    """The exported-head file, held under an exclusive flock while a head is checked and appended.

    Opened O_APPEND and created 0600. The lock keeps the file in order even if two daemons on one
    machine were given the same file: each reads the last line under the lock before it appends.
    """

    def __init__(self, path: str, key: JournalKey | None):
        self.path, self.key, self.fd = path, key, -1

    def __enter__(self) -> "HeadFile":
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        if stat.S_IMODE(os.fstat(self.fd).st_mode) & 0o077:
            os.fchmod(self.fd, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)   # and the lock with it

    def last_mark(self) -> HeadMark | None:
        """The last line, MAC checked; None for an empty file."""
        size = os.fstat(self.fd).st_size
        tail = os.pread(self.fd, 8192, max(0, size - 8192))
        lines = [ln for ln in tail.split(b"\n") if ln.strip()]
        if not lines:
            return None
        return _parse_head_line(lines[-1], f"head file {self.path} last line", self.key)

    def append(self, line: bytes) -> None:
        os.write(self.fd, line)   # one write of one line: O_APPEND keeps it whole at the end
        os.fsync(self.fd)


def append_head_line(path: str, line: bytes) -> None:
    """Append one line to the head file (locked, O_APPEND, created 0600, fsynced)."""
    with HeadFile(path, None) as f:
        f.append(line)


def iter_head_file(path: str, key: JournalKey | None, limit: int | None = None) -> Iterator[HeadMark]:
    """The head file's marks in order (the first `limit` lines only, if given: lines the daemon
    appends while a verification runs may name entries its snapshot does not hold); HeadFileError
    names a line that is malformed, whose MAC does not match (when the key is given), or that goes
    backwards."""
    prev: HeadMark | None = None
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if limit is not None and n > limit:
                return
            where = f"head file {path} line {n}"
            mark = _parse_head_line(raw, where, key)
            last_id, head_hash, keyed_from = mark.last_id, mark.head_hash, mark.keyed_from
            if prev is not None:
                if last_id < prev.last_id or (last_id == prev.last_id and head_hash != prev.head_hash):
                    raise HeadFileError(f"{where}: entry {last_id} after entry {prev.last_id} "
                                        "(the exported heads go backwards)")
                if prev.keyed_from is not None and keyed_from != prev.keyed_from:
                    raise HeadFileError(f"{where}: keyed_from {keyed_from} after {prev.keyed_from}")
            prev = mark
            yield mark


def head_file_summary(path: str, key: JournalKey | None) -> tuple[int, HeadMark | None, int | None]:
    """One pass over the head file: (lines, last mark, keyed_from); raises HeadFileError."""
    n, last, keyed_from = 0, None, None
    for mark in iter_head_file(path, key):
        n, last = n + 1, mark
        if keyed_from is None:
            keyed_from = mark.keyed_from
    return n, last, keyed_from


class ChainWalker:
    """Checks entries in id order, one at a time, keeping only the state the next one needs.

    `verify_chain` runs one over the whole journal; the daemon's self-check keeps one
    between runs and feeds it only the entries appended since (gateway.journal_watch).
    `keyed_from` is the first keyed entry as recorded outside the database (the head
    file), if known: an entry from there on without a MAC is a removed MAC.
    """

    def __init__(self, archive_dir: str, key: JournalKey | None, *, check_payloads: bool = True,
                 keyed_from: int | None = None, marks: Iterable[HeadMark] = ()):
        self.archive = Path(archive_dir)
        self.key = key
        self.check_payloads = check_payloads
        self.outside_keyed_from = keyed_from
        self.marks = iter(marks)
        self.mark: HeadMark | None = next(self.marks, None)
        self.report = ChainReport(True, 0)

    @property
    def next_id(self) -> int:
        return self.report.last_id + 1

    def start_at(self, anchor, head) -> ChainReport | None:  # noqa: ANN001
        """Continue from a cut (the journal_cuts row with the highest last_id): the first live entry
        must link to the last entry moved to a cold file. Exported heads at or before the cut are kept
        in `cold_marks` for the cold files' check (gateway.journal_cold); the one at the cut itself is
        checked here. The failed report, or None."""
        r = self.report
        keyed = [k for k in (self.outside_keyed_from, head.keyed_from if head is not None else None) if k is not None]
        # A cut that moved keyed entries was made with the key: it must carry a MAC (one made
        # before the journal was keyed carries none, like the entries of that time).
        if self.key is not None and (anchor.mac is not None or any(anchor.last_id >= k for k in keyed)) \
                and not self.key.entry_mac_ok(cut_digest(anchor), anchor.mac):
            return self.fail(anchor.last_id, f"the cut to cold file {anchor.file} (journal_cuts) was altered: "
                                             f"its MAC {'is missing' if anchor.mac is None else 'does not match'}")
        r.anchor_id, r.last_id, r.last_hash = anchor.last_id, anchor.last_id, anchor.last_hash
        for keyed in (self.outside_keyed_from, head.keyed_from if head is not None else None):
            if keyed is not None and keyed <= anchor.last_id and r.keyed_from is None:
                r.keyed_from = keyed    # the first keyed entry was moved: live entries all carry MACs
        while self.mark is not None and self.mark.last_id <= anchor.last_id:
            if self.mark.last_id == anchor.last_id:
                if self.mark.head_hash != anchor.last_hash:
                    return self.fail(anchor.last_id, f"the cut (journal_cuts) records another hash for entry "
                                                     f"{anchor.last_id} than {self.mark.source}")
                r.marks_checked.append(self.mark.source)
            else:
                r.cold_marks.append(self.mark)
            self.mark = next(self.marks, None)
        return None

    def fail(self, rid: int | None, reason: str) -> ChainReport:
        self.report.ok, self.report.first_bad_id, self.report.reason = False, rid, reason
        return self.report

    def step(self, row, head) -> ChainReport | None:  # noqa: ANN001
        """Check one entry (a mapping) against the one before; the failed report, or None."""
        r, rid = self.report, row["id"]
        if rid != self.next_id:
            return self.fail(self.next_id, f"entry {self.next_id} is missing (next is {rid})")
        if row["prev_hash"] != r.last_hash:
            return self.fail(rid, "prev_hash does not match the entry before it")
        if _entry_hash(dict(row)) != row["hash"]:
            return self.fail(rid, "entry was altered: its hash does not match its content")
        problem = self._mac(rid, row["hash"], row["mac"], head)
        if problem:
            return self.fail(rid, problem)
        if head is not None and rid == head.last_id and row["hash"] != head.last_hash:
            return self.fail(rid, "the head records another hash for this entry")
        while self.mark is not None and self.mark.last_id <= rid:
            if self.mark.last_id == rid and self.mark.head_hash != row["hash"]:
                return self.fail(rid, f"the chain no longer passes through the head in {self.mark.source}: "
                                      "this entry or one before it was rewritten")
            if self.mark.last_id == rid:
                r.marks_checked.append(self.mark.source)
            self.mark = next(self.marks, None)
        if self.check_payloads:
            problem = self._payload(row)
            if problem:
                return self.fail(rid, problem)
        r.checked += 1
        r.last_id, r.last_hash = rid, row["hash"]
        return None

    def _mac(self, rid: int, entry_hash: str, mac: str | None, head) -> str | None:  # noqa: ANN001
        r = self.report
        if mac is None:
            if r.keyed_from is not None:
                return f"entry carries no MAC but entry {r.keyed_from} before it does: its MAC was removed"
            if self.outside_keyed_from is not None and rid >= self.outside_keyed_from:
                return (f"entry carries no MAC but the exported heads record the journal keyed from entry "
                        f"{self.outside_keyed_from}: its MAC was removed")
            if head is not None and head.keyed_from is not None and rid >= head.keyed_from:
                return (f"entry carries no MAC but the head row records the journal keyed from entry "
                        f"{head.keyed_from}: its MAC was removed")
            r.unkeyed_upto = rid
            return None
        if r.keyed_from is None:
            r.keyed_from = rid
            if self.outside_keyed_from is not None and self.outside_keyed_from != rid:
                return ("first entry with a MAC, but the exported heads record the journal keyed from entry "
                        f"{self.outside_keyed_from}")
            # (An entry past the head we read was appended while we read: the head row is older.)
            if head is not None and rid <= head.last_id and head.keyed_from != rid:
                return (f"first entry with a MAC, but the head row records the journal keyed from "
                        f"{'no entry' if head.keyed_from is None else f'entry {head.keyed_from}'}")
        if self.key is None:
            r.macs_unchecked += 1
            return None
        if not self.key.entry_mac_ok(entry_hash, mac):
            return ("MAC does not match: the entry was altered and its hashes recomputed, or it was "
                    "written with another key")
        r.macs_checked += 1
        return None

    def _payload(self, row) -> str | None:  # noqa: ANN001
        if row["payload_ref"]:
            path = self.archive / row["payload_ref"]
            if not path.exists():
                return f"archived payload {path} is missing"
            digest, size = _file_sm3(str(path))
        else:
            data = row["payload"] or b""
            digest, size = sm3_hex(data), len(data)
        if digest != row["payload_sm3"] or size != row["payload_size"]:
            return "payload was altered: its SM3 does not match"
        return None

    def finish(self, head) -> ChainReport:  # noqa: ANN001
        """After the last entry: the head row and every exported head must be reached."""
        r = self.report
        if head is not None and head.last_id > r.last_id:
            return self.fail(r.last_id + 1, f"the chain ends at entry {r.last_id} but the head records entry "
                                            f"{head.last_id}: entries were deleted from the end")
        if self.mark is not None:
            return self.fail(r.last_id + 1, f"the chain ends at entry {r.last_id} but {self.mark.source} "
                                            f"records entry {self.mark.last_id}: entries were deleted from the end")
        if head is not None and head.keyed_from is not None and r.keyed_from is None:
            return self.fail(head.keyed_from, f"the head row records the journal keyed from entry "
                                              f"{head.keyed_from} but no entry carries a MAC")
        if self.outside_keyed_from is not None and r.keyed_from is None:
            return self.fail(self.outside_keyed_from, "the exported heads record the journal keyed from entry "
                                                      f"{self.outside_keyed_from} but no entry carries a MAC")
        return r


def read_head_row(conn: Connection):
    return conn.execute(select(journal_head).where(journal_head.c.id == 1)).one_or_none()


CUT_FIELDS = ("first_id", "last_id", "prev_hash", "last_hash", "entries", "file", "file_size", "file_sha256",
              "file_sm3", "at")


def cut_digest(cut) -> str:  # noqa: ANN001
    """SM3 of a journal_cuts row's fields (a mapping or a row); its MAC is the journal key's over this."""
    get = cut.__getitem__ if isinstance(cut, dict) else (lambda k: getattr(cut, k))
    return sm3_hex(json.dumps([get(k) for k in CUT_FIELDS], separators=(",", ":")).encode("utf-8"))


def read_anchor(conn: Connection):
    """The last cut (entries up to its last_id are in cold files), or None: the chain starts at entry 1."""
    return conn.execute(select(journal_cuts).order_by(journal_cuts.c.last_id.desc()).limit(1)).one_or_none()


def hash_before(conn: Connection, entry_id: int) -> str:
    """The hash of the entry before `entry_id`: live, or the cut's when that entry was moved; GENESIS for 1."""
    if entry_id <= 1:
        return GENESIS
    h = conn.execute(select(journal.c.hash).where(journal.c.id == entry_id - 1)).scalar()
    if h is None:
        h = conn.execute(select(journal_cuts.c.last_hash).where(journal_cuts.c.last_id == entry_id - 1)).scalar()
    if h is None:
        raise LookupError(f"journal entry {entry_id - 1} is neither live nor the last entry of a cut")
    return h


def verify_chain(conn: Connection, archive_dir: str, *, check_payloads: bool = True,
                 key: JournalKey | None = None, marks: Iterable[HeadMark] = (),
                 keyed_from: int | None = None) -> ChainReport:
    """Walk the journal in id order and report the first entry whose chain, hash, MAC or payload
    fails, or that an exported head (`marks`, in id order) no longer matches."""
    # The head is read before the rows: entries appended while we read (the daemon keeps
    # running) are then beyond the head we hold, not a mismatch that looks like deletion.
    head = read_head_row(conn)
    if head is None:
        return ChainReport(False, 0, None, "the journal_head row is missing: the journal's end "
                                            "cannot be checked")
    walker = ChainWalker(archive_dir, key, check_payloads=check_payloads, keyed_from=keyed_from, marks=marks)
    anchor = read_anchor(conn)
    if anchor is not None:
        failed = walker.start_at(anchor, head)
        if failed is not None:
            return failed
    rows = conn.execution_options(yield_per=1000).execute(
        select(journal).order_by(journal.c.id)).mappings()   # streamed: a journal has millions of rows
    for row in rows:
        failed = walker.step(row, head)
        if failed is not None:
            rows.close()
            return failed
    return walker.finish(head)


@dataclass
class Head:
    last_id: int
    last_hash: str
    mac: str | None
    keyed_from: int | None
    problem: str | None = None     # why this head cannot be vouched for


def current_head(conn: Connection, key: JournalKey | None) -> Head:
    """The head row, checked against its entry and that entry's MAC (cheap: two rows)."""
    head = read_head_row(conn)
    if head is None:
        return Head(0, GENESIS, None, None, "the journal_head row is missing")
    if head.last_id == 0:
        return Head(0, GENESIS, None, head.keyed_from,
                    None if head.last_hash == GENESIS else "an empty journal's head must be the zero hash")
    row = conn.execute(select(journal.c.hash, journal.c.mac).where(journal.c.id == head.last_id)).one_or_none()
    out = Head(head.last_id, head.last_hash, row.mac if row else None, head.keyed_from)
    if row is None:
        out.problem = f"entry {head.last_id}, which the head row names, is missing"
    elif row.hash != head.last_hash:
        out.problem = f"entry {head.last_id}'s hash is not the one the head row records"
    elif head.keyed_from is not None and key is None:
        out.problem = f"the journal is keyed from entry {head.keyed_from}: no key to check the head's MAC"
    elif head.keyed_from is not None and not key.entry_mac_ok(row.hash, row.mac):
        out.problem = f"entry {head.last_id}'s MAC does not match"
    return out
