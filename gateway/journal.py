"""The tamper-evident journal (报文日志) of every message and file in and out.

Each entry keeps the payload exactly as on the wire (inline when small, else a
read-only file in the archive named by its SM3), its SM3, a masked decoded
view, and the hash of the entry before it. The entry's own hash covers all of
that, so editing, deleting or reordering entries, or changing an archived
file, is found by `verify_chain`, which names the first broken entry.

`append` runs inside the caller's transaction: the journal entry and the state
change it caused commit together (domain.md rule 5). Appends lock the single
`journal_head` row, which serialises writers on PostgreSQL as well as SQLite.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, insert, select, update

from gateway.models import journal, journal_head
from protocols.sm import SM3Hasher, sm3_hex

GENESIS = "0" * 64


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


class Journal:
    def __init__(self, archive_dir: str, inline_max_bytes: int = 65536):
        self.archive_dir = Path(archive_dir)
        self.inline_max = inline_max_bytes

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
        conn.execute(update(journal_head).where(journal_head.c.id == 1)
                     .values(last_id=journal_head.c.last_id))
        head = conn.execute(
            select(journal_head.c.last_id, journal_head.c.last_hash)
            .where(journal_head.c.id == 1).with_for_update()
        ).one()
        row = {
            "id": head.last_id + 1, "at": at, "direction": e.direction, "peer": e.peer,
            "channel": e.channel, "tx_code": e.tx_code, "msg_id": e.msg_id,
            "order_no": e.order_no, "batch_no": e.batch_no, "verified": e.verified,
            "payload": payload, "payload_ref": ref, "payload_size": size, "payload_sm3": digest,
            "decoded": e.decoded, "prev_hash": head.last_hash,
        }
        row["hash"] = _entry_hash(row)
        conn.execute(insert(journal).values(**row))
        conn.execute(update(journal_head).where(journal_head.c.id == 1)
                     .values(last_id=row["id"], last_hash=row["hash"]))
        return row["id"]

    def payload_of(self, row) -> bytes:  # noqa: ANN001
        if row.payload_ref:
            return (self.archive_dir / row.payload_ref).read_bytes()
        return row.payload or b""


@dataclass
class ChainReport:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str = ""


def verify_chain(conn: Connection, archive_dir: str, *, check_payloads: bool = True) -> ChainReport:
    """Walk the journal in id order and report the first entry whose chain, hash or payload fails."""
    prev, expected_id, n = GENESIS, 1, 0
    archive = Path(archive_dir)
    # The head is read before the rows: entries appended while we read (the daemon keeps
    # running) are then beyond the head we hold, not a mismatch that looks like deletion.
    head = conn.execute(select(journal_head).where(journal_head.c.id == 1)).one_or_none()
    if head is None:
        return ChainReport(False, 0, None, "the journal_head row is missing: the journal's end "
                                            "cannot be checked")
    rows = conn.execution_options(yield_per=1000).execute(
        select(journal).order_by(journal.c.id)).mappings()   # streamed: a journal has millions of rows
    for row in rows:
        n += 1
        rid = row["id"]
        if rid != expected_id:
            return ChainReport(False, n, expected_id, f"entry {expected_id} is missing (next is {rid})")
        if row["prev_hash"] != prev:
            return ChainReport(False, n, rid, "prev_hash does not match the entry before it")
        if _entry_hash(dict(row)) != row["hash"]:
            return ChainReport(False, n, rid, "entry was altered: its hash does not match its content")
        if rid == head.last_id and row["hash"] != head.last_hash:
            return ChainReport(False, n, rid, "the head records another hash for this entry")
        if check_payloads:
            if row["payload_ref"]:
                path = archive / row["payload_ref"]
                if not path.exists():
                    return ChainReport(False, n, rid, f"archived payload {path} is missing")
                digest, size = _file_sm3(str(path))
            else:
                data = row["payload"] or b""
                digest, size = sm3_hex(data), len(data)
            if digest != row["payload_sm3"] or size != row["payload_size"]:
                return ChainReport(False, n, rid, "payload was altered: its SM3 does not match")
        prev, expected_id = row["hash"], rid + 1
    if head.last_id > expected_id - 1:
        return ChainReport(False, n, expected_id,
                           f"the chain ends at entry {expected_id - 1} but the head records entry "
                           f"{head.last_id}: entries were deleted from the end")
    return ChainReport(True, n)
