"""Tests of the keyed journal (gateway/journal.py): MACs under a key the database does not hold,
exported heads, and verification against forgeries made by someone who can write to the database.

Every forgery here is what a database administrator with the SM3 code in hand can do: raw SQL on
the journal and journal_head tables, hashes recomputed with `_entry_hash` for every entry after
the one changed, and the head row fixed to match. What they do not have is the key file.
Tests taking `db_url` run on SQLite and on PostgreSQL (127.0.0.1:5432).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import db as dbmod
from gateway.journal import (GENESIS, Entry, HeadFileError, HeadMark, Journal, JournalKey, JournalKeyError,
                             _entry_hash, append_head_line, current_head, generate_key_file, head_line,
                             iter_head_file, parse_expect_head, read_key_file, verify_chain)
from gateway.models import journal, journal_head

AT = "2026-03-02T10:00:00+08:00"
INLINE_MAX = 64
KEY = JournalKey(bytes(range(32)), "test")
OTHER_KEY = JournalKey(bytes(range(1, 33)), "other")


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def _correction(i: int) -> Entry:
    return Entry("in", "unix:dept", "rpc", "item.correct",
                 f"seq {i}: account 6228****3457, confirmed by 收款人本人, approved by 李科长 NY[2026]17号",
                 payload=b'{"method":"item.correct"}', order_no="ORD1")


def _plain(i: int, payload: bytes | None = None) -> Entry:
    return Entry("out", "demo-bank", "tcp", "BP01", f"entry {i}",
                 payload=payload if payload is not None else f"<msg {i}/>".encode(), order_no="ORD1")


def _append(engine, jr: Journal, entries) -> list[int]:
    ids = []
    for e in entries:
        with engine.begin() as conn:
            ids.append(jr.append(conn, e, AT))
    return ids


def _ten(engine, archive, key=KEY, payload_for=None) -> Journal:
    """Ten keyed entries; entry 5 is an item.correct."""
    jr = Journal(str(archive), INLINE_MAX, key=key)
    _append(engine, jr, [_correction(i) if i == 5 else _plain(i, payload_for(i) if payload_for else None)
                         for i in range(1, 11)])
    return jr


def _verify(engine, archive, **kw):
    with engine.connect() as conn:
        return verify_chain(conn, str(archive), **kw)


def _sql(engine, text: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(text), params)


def _rehash_from(engine, first_id: int) -> None:
    """The DBA's fix-up: recompute every hash from `first_id` on and point the head row at the last."""
    with engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(journal).order_by(journal.c.id)).mappings()]
        prev = GENESIS
        for row in rows:
            if row["id"] >= first_id:
                row["prev_hash"] = prev
                row["hash"] = _entry_hash(row)
                conn.execute(sa.update(journal).where(journal.c.id == row["id"])
                             .values(prev_hash=row["prev_hash"], hash=row["hash"]))
            prev = row["hash"]
        last = rows[-1] if rows else None
        conn.execute(sa.update(journal_head).values(last_id=last["id"] if last else 0, last_hash=prev))


def _head(engine) -> tuple[int, str]:
    with engine.connect() as conn:
        h = conn.execute(sa.select(journal_head)).one()
    return h.last_id, h.last_hash


# --- keyed appends -------------------------------------------------------------


def test_keyed_entries_carry_the_hmac_sm3_of_their_hash(engine, archive) -> None:
    """Each entry's mac is HMAC-SM3(key, label + hash), the head row records the first keyed entry,
    and verification recomputes every MAC."""
    _ten(engine, archive)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(journal).order_by(journal.c.id)).mappings())
        head = conn.execute(sa.select(journal_head)).one()
    assert all(r["mac"] == KEY.entry_mac(r["hash"]) for r in rows)
    assert len({r["mac"] for r in rows}) == 10
    assert head.keyed_from == 1
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.checked, r.macs_checked, r.unkeyed_upto, r.keyed_from) == (True, 10, 10, None, 1)


def test_hmac_sm3_matches_openssl() -> None:
    """The MAC primitive is standard HMAC with SM3: OpenSSL computes the same value for the same bytes."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    entry_hash = "ab" * 32
    data = b"subsidy-gateway journal entry\x00" + entry_hash.encode()
    out = subprocess.run(["openssl", "mac", "-digest", "SM3", "-macopt", f"hexkey:{bytes(range(32)).hex()}",
                          "HMAC"], input=data, capture_output=True, check=True).stdout
    assert out.decode().strip().lower() == KEY.entry_mac(entry_hash)


def test_entries_before_the_key_are_reported_unkeyed_and_protected_by_the_first_keyed_one(
        engine, archive) -> None:
    """A journal written before the key existed stays verifiable: its entries are reported as unkeyed up
    to the last of them; rewriting one of them (hashes recomputed) is found at the first keyed entry,
    whose MAC covers them through the chain."""
    _append(engine, Journal(str(archive), INLINE_MAX), [_plain(i) for i in (1, 2, 3)])
    _append(engine, Journal(str(archive), INLINE_MAX, key=KEY), [_plain(i) for i in (4, 5, 6)])
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.unkeyed_upto, r.keyed_from, r.macs_checked) == (True, 3, 4, 3)
    _sql(engine, "UPDATE journal SET decoded = 'entry 2 (forged)' WHERE id = 2")
    _rehash_from(engine, 2)
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 4)
    assert "MAC does not match" in r.reason


def test_a_writer_without_the_key_cannot_append_to_a_keyed_journal(engine, archive) -> None:
    """Once an entry carries a MAC, an append without the key is refused and writes nothing (an unkeyed
    entry after keyed ones is what a forger would write)."""
    _append(engine, Journal(str(archive), INLINE_MAX, key=KEY), [_plain(1)])
    with pytest.raises(JournalKeyError, match="keyed from entry 1"):
        _append(engine, Journal(str(archive), INLINE_MAX), [_plain(2)])
    assert _head(engine)[0] == 1
    assert _verify(engine, archive, key=KEY).ok


# --- the forgeries of issue 8 ------------------------------------------------------


def test_forged_approver_with_recomputed_hashes_is_found_by_the_mac(engine, archive) -> None:
    """The issue's forgery: the approver of an item.correct entry changed in its decoded text and every
    hash from there recomputed, head fixed. The unkeyed chain cannot see it; the MAC names the entry."""
    _ten(engine, archive)
    _sql(engine, "UPDATE journal SET decoded = REPLACE(decoded, '李科长', '王局长') WHERE id = 5")
    _rehash_from(engine, 5)
    assert _verify(engine, archive).ok          # what an unkeyed check says: why the key is needed
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 5)
    assert "MAC does not match" in r.reason


def test_deleted_last_three_entries_with_the_head_fixed_are_found_by_an_exported_head(
        engine, archive, tmp_path) -> None:
    """The issue's second forgery: the last three entries deleted and journal_head pointed at the new
    last one. Nothing in the database shows it; the head exported before (a --expect-head value or a
    line of the head file) names the first deleted entry."""
    _ten(engine, archive)
    last_id, last_hash = _head(engine)
    head_file = tmp_path / "journal-heads.jsonl"
    append_head_line(str(head_file), head_line(KEY, AT, last_id, last_hash, 1))
    _sql(engine, "DELETE FROM journal WHERE id > 7")
    _rehash_from(engine, 8)       # only fixes the head row: entries 1-7 are untouched
    assert _verify(engine, archive, key=KEY).ok   # the database alone cannot tell
    r = _verify(engine, archive, key=KEY, marks=[parse_expect_head(f"{last_id}:{last_hash}")])
    assert (r.ok, r.first_bad_id) == (False, 8)
    assert "deleted from the end" in r.reason and "--expect-head 10:" in r.reason
    r = _verify(engine, archive, key=KEY, marks=iter_head_file(str(head_file), KEY), keyed_from=1)
    assert (r.ok, r.first_bad_id) == (False, 8)
    assert "line 1" in r.reason


def test_reordered_entries_are_found(engine, archive) -> None:
    """Swapping the content of two entries (MACs swapped too, hashes recomputed) names the first of them:
    a MAC covers the entry's id and its place in the chain."""
    _ten(engine, archive)
    cols = ["at", "direction", "peer", "channel", "tx_code", "msg_id", "order_no", "batch_no", "verified",
            "payload", "payload_ref", "payload_size", "payload_sm3", "decoded", "mac"]
    with engine.begin() as conn:
        a, b = (dict(conn.execute(sa.select(journal).where(journal.c.id == i)).mappings().one()) for i in (4, 5))
        conn.execute(sa.update(journal).where(journal.c.id == 4).values(**{c: b[c] for c in cols}))
        conn.execute(sa.update(journal).where(journal.c.id == 5).values(**{c: a[c] for c in cols}))
    _rehash_from(engine, 4)
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 4)
    assert "MAC" in r.reason


def _big(i: int) -> bytes:
    return f"<big {i}>".encode() + bytes(range(256)) * 2


def test_edited_archived_payload_is_found_even_with_its_sm3_and_hashes_recomputed(engine, archive) -> None:
    """An archived payload file rewritten is named by its SM3; rewriting the entry's payload_sm3 and
    recomputing the hashes too is named by the MAC."""
    _ten(engine, archive, payload_for=_big)
    with engine.connect() as conn:
        ref = conn.execute(sa.select(journal.c.payload_ref).where(journal.c.id == 3)).scalar()
    path = archive / ref
    os.chmod(path, 0o640)
    forged = _big(3)[:-1] + b"!"
    path.write_bytes(forged)
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 3) and "payload" in r.reason
    from protocols.sm import sm3_hex
    _sql(engine, "UPDATE journal SET payload_sm3 = :d WHERE id = 3", d=sm3_hex(forged))
    _rehash_from(engine, 3)
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 3) and "MAC" in r.reason


def test_removed_macs_are_found(engine, archive, tmp_path) -> None:
    """Removing the MACs of the last entries (to forge them as 'unkeyed') is named at the first one;
    removing every MAC and the head row's keyed_from is found against the exported heads."""
    _ten(engine, archive)
    _sql(engine, "UPDATE journal SET mac = NULL WHERE id >= 8")
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 8) and "MAC was removed" in r.reason
    assert "entry 1 before it does" in r.reason
    head_file = tmp_path / "heads.jsonl"
    append_head_line(str(head_file), head_line(KEY, AT, 6, _hash_of(engine, 6), 1))
    _sql(engine, "UPDATE journal SET mac = NULL")
    _sql(engine, "UPDATE journal_head SET keyed_from = NULL")
    r = _verify(engine, archive, key=KEY)
    assert r.ok and r.unkeyed_upto == 10        # the database alone now looks like an old journal
    r = _verify(engine, archive, key=KEY, marks=iter_head_file(str(head_file), KEY), keyed_from=1)
    assert (r.ok, r.first_bad_id) == (False, 1) and "MAC was removed" in r.reason


def _hash_of(engine, rid: int) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(journal.c.hash).where(journal.c.id == rid)).scalar()


def test_another_key_is_refused(engine, archive) -> None:
    """A journal verified with a key other than the one it was written with fails at its first keyed
    entry; without any key its MACs are counted as unchecked, never as verified."""
    _ten(engine, archive)
    r = _verify(engine, archive, key=OTHER_KEY)
    assert (r.ok, r.first_bad_id) == (False, 1) and "another key" in r.reason
    r = _verify(engine, archive)
    assert (r.ok, r.macs_checked, r.macs_unchecked) == (True, 0, 10)


def test_head_row_keyed_from_moved_is_found(engine, archive) -> None:
    """A head row claiming the journal was keyed later than it was (to pass off entries as unkeyed)
    is found at the first keyed entry."""
    _ten(engine, archive)
    _sql(engine, "UPDATE journal_head SET keyed_from = 4")
    r = _verify(engine, archive, key=KEY)
    assert (r.ok, r.first_bad_id) == (False, 1) and "keyed from entry 4" in r.reason


def test_current_head_vouches_only_for_an_authentic_head(engine, archive) -> None:
    """`current_head` returns the head with its MAC; a head entry forged with recomputed hashes, or a
    head row naming a missing entry, is reported as a problem."""
    _ten(engine, archive)
    with engine.connect() as conn:
        h = current_head(conn, KEY)
    assert (h.last_id, h.mac, h.problem) == (10, KEY.entry_mac(h.last_hash), None)
    _sql(engine, "UPDATE journal SET decoded = 'forged' WHERE id = 10")
    _rehash_from(engine, 10)
    with engine.connect() as conn:
        assert "MAC does not match" in current_head(conn, KEY).problem
    _sql(engine, "DELETE FROM journal WHERE id = 10")
    with engine.connect() as conn:
        assert "missing" in current_head(conn, KEY).problem


# --- the head file and the key file -------------------------------------------------


def test_head_file_lines_are_authenticated_and_in_order(tmp_path) -> None:
    """Head lines are appended 0600; a line with a forged value, or one going backwards, is refused
    naming its line."""
    f = tmp_path / "heads.jsonl"
    append_head_line(str(f), head_line(KEY, AT, 5, "a" * 64, 1))
    append_head_line(str(f), head_line(KEY, AT, 9, "b" * 64, 1))
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [(m.last_id, m.head_hash) for m in iter_head_file(str(f), KEY)] == [(5, "a" * 64), (9, "b" * 64)]
    with pytest.raises(HeadFileError, match="line 1: its MAC"):
        list(iter_head_file(str(f), OTHER_KEY))
    lines = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(lines[0] + lines[1].replace(b'"last_id":9', b'"last_id":12'))
    with pytest.raises(HeadFileError, match="line 2: its MAC"):
        list(iter_head_file(str(f), KEY))
    f.write_bytes(lines[1] + lines[0])
    with pytest.raises(HeadFileError, match="line 2: entry 5 after entry 9"):
        list(iter_head_file(str(f), KEY))


def test_expect_head_parsing() -> None:
    """--expect-head takes ID:HASH as `journal head` prints it, and refuses anything else."""
    m = parse_expect_head(f"12:{'C' * 64}")
    assert (m.last_id, m.head_hash) == (12, "c" * 64) and isinstance(m, HeadMark)
    for bad in ("12", f"x:{'c' * 64}", f"12:{'c' * 63}", f"12 {'c' * 64}"):
        with pytest.raises(ValueError):
            parse_expect_head(bad)


def test_key_file_is_generated_0600_never_overwritten_and_refused_when_open(tmp_path) -> None:
    """The key file is 64 hex digits, mode 0600 even under a permissive umask; generating over it is
    refused; reading refuses group/other access and malformed content; the key never shows in repr."""
    f = tmp_path / "journal.key"
    old = os.umask(0)
    try:
        generate_key_file(f)
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    before = f.read_bytes()
    with pytest.raises(JournalKeyError, match="never overwritten"):
        generate_key_file(f)
    assert f.read_bytes() == before
    key = read_key_file(f)
    assert before.strip().decode() not in repr(key) and "redacted" in repr(key)
    os.chmod(f, 0o640)
    with pytest.raises(JournalKeyError, match="mode 0640.*chmod 600"):
        read_key_file(f)
    os.chmod(f, 0o600)
    f.write_text("not a key\n")
    with pytest.raises(JournalKeyError, match="64 hex digits"):
        read_key_file(f)


def test_head_file_read_stops_at_the_lines_counted_before_the_database_was_read(tmp_path) -> None:
    """`journal verify` runs beside the daemon: a line appended after it counted the file (naming an
    entry its database snapshot may not hold) is not read as a head the chain must reach."""
    f = tmp_path / "heads.jsonl"
    append_head_line(str(f), head_line(KEY, AT, 5, "a" * 64, 1))
    append_head_line(str(f), head_line(KEY, AT, 9, "b" * 64, 1))
    assert [m.last_id for m in iter_head_file(str(f), KEY, limit=1)] == [5]


def test_configuration_reads_the_journal_key_and_names_each_fault(tmp_path) -> None:
    """[journal] key_file is read at load (a file others may read is refused naming the key and the
    chmod), head_file needs a key and an existing folder; all faults are reported together."""
    from gateway import config as configmod
    from simulators import harness
    p = harness.Paths(tmp_path / "gw")
    config = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    cfg = configmod.load(config)
    assert cfg.journal_auth.key is not None and cfg.journal_auth.head_file.endswith("journal-heads.jsonl")
    assert "redacted" in repr(cfg.journal_auth)
    os.chmod(p.keys / "journal.key", 0o644)
    text = config.read_text()
    config.write_text(text.replace('head_file = "../journal-heads.jsonl"', 'head_file = "../nowhere/heads.jsonl"'))
    with pytest.raises(configmod.ConfigError) as ei:
        configmod.load(config)
    msg = str(ei.value)
    assert "journal.key_file:" in msg and "chmod 600" in msg
    assert "journal.head_file:" in msg and "nowhere does not exist" in msg
    config.write_text(text.replace('key_file = "../keys/journal.key"\n', ""))
    with pytest.raises(configmod.ConfigError, match="journal.head_file: needs journal.key_file"):
        configmod.load(config)
