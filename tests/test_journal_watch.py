"""Tests of the journal's watch (gateway/journal_watch.py): the head exported on a schedule and at
stop, the self-check that verifies only what is new, and one `journal-broken` alarm episode per
forgery; and the start-up check of the journal key.

The watch runs on a `task.Clock` with its blocking steps run inline, so every tick is deterministic.
Tests taking `db_url` run on SQLite and on PostgreSQL (127.0.0.1:5432).
"""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from twisted.internet import defer, task

from gateway import db as dbmod
from gateway.config import JournalAuth
from gateway.journal import Journal, JournalKey, iter_head_file, verify_chain
from gateway.journal_watch import ALARM_KIND, JournalWatch, check_at_start
from gateway.models import alarms, journal
from gateway.service import Ticker
from tests.test_journal_keyed import KEY, OTHER_KEY, _correction, _plain, _rehash_from, _sql

AT = "2026-03-02T10:00:00+08:00"
TICK = 70.0          # more than head_export_s (60) plus its 10% jitter


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


class Install:
    def __init__(self, engine, tmp_path: Path, key: JournalKey | None = KEY, self_verify_s: float = 3600.0):
        self.engine, self.clock = engine, task.Clock()
        self.clock.advance(1_772_416_800)          # 2026-03-02 10:00 CST
        self.archive = tmp_path / "archive"
        self.head_file = tmp_path / "journal-heads.jsonl"
        self.journal = Journal(str(self.archive), 64, key=key)
        self.auth = JournalAuth(key, "", str(self.head_file), 60.0, self_verify_s)
        self.watch = JournalWatch(self.clock, engine, self.journal, self.auth,
                                  ticker_factory=lambda job, iv: Ticker(self.clock, "journal-watch", job, iv),
                                  run=lambda fn, *a: defer.maybeDeferred(fn, *a), chunk=4)

    def append(self, *entries) -> None:
        for e in entries:
            with self.engine.begin() as conn:
                self.journal.append(conn, e, AT)

    def lines(self) -> list[tuple[int, str]]:
        if not self.head_file.exists():
            return []
        return [(m.last_id, m.head_hash) for m in iter_head_file(str(self.head_file), KEY)]

    def alarms(self) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(alarms).where(alarms.c.kind == ALARM_KIND)).mappings())

    def broken_entries(self) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(journal).where(journal.c.tx_code == ALARM_KIND)).mappings())


def _ten(inst: Install) -> None:
    inst.append(*[_correction(i) if i == 5 else _plain(i) for i in range(1, 11)])


def test_head_is_exported_when_it_moves_and_at_stop(engine, tmp_path) -> None:
    """A line per export with a moved head (none while it stands still), a last one at stop; the file
    is 0600, every line's MAC verifies, and the chain passes through every exported head."""
    inst = Install(engine, tmp_path)
    inst.append(_plain(1), _plain(2), _plain(3))
    inst.watch.startService()
    inst.clock.advance(0)
    assert [i for i, _ in inst.lines()] == [3]
    assert stat.S_IMODE(inst.head_file.stat().st_mode) == 0o600
    inst.clock.advance(TICK)
    assert [i for i, _ in inst.lines()] == [3]          # unchanged: no line
    inst.append(_plain(4), _plain(5))
    inst.clock.advance(TICK)
    assert [i for i, _ in inst.lines()] == [3, 5]
    inst.append(_plain(6))
    d = inst.watch.stopService()
    assert d.called
    assert [i for i, _ in inst.lines()] == [3, 5, 6]
    with engine.connect() as conn:
        r = verify_chain(conn, str(inst.archive), key=KEY, marks=iter_head_file(str(inst.head_file), KEY))
    assert r.ok and len(r.marks_checked) == 3
    assert inst.alarms() == []


def test_a_restart_continues_the_head_file(engine, tmp_path) -> None:
    """After a restart the watch reads the file's last line back: it appends only a moved head, and a
    head that went back behind that line (entries cut while the daemon was down) is alarmed."""
    inst = Install(engine, tmp_path)
    _ten(inst)
    inst.watch.startService()
    inst.clock.advance(0)
    inst.watch.stopService()
    again = Install(engine, tmp_path)
    again.watch.startService()
    again.clock.advance(0)
    assert [i for i, _ in again.lines()] == [10]
    again.watch.stopService()
    _sql(engine, "DELETE FROM journal WHERE id > 7")
    _rehash_from(engine, 8)
    third = Install(engine, tmp_path)
    third.watch.startService()
    third.clock.advance(0)
    [a] = third.alarms()
    assert "entry 8" in a["message"] and "deleted from the end" in a["message"]
    assert [i for i, _ in third.lines()] == [10]         # the cut head is never exported


def test_forged_approver_raises_one_alarm_episode_naming_the_entry(engine, tmp_path) -> None:
    """The issue's forgery (approver rewritten, hashes recomputed, head fixed) under a running daemon:
    the next export finds the head's MAC wrong, the walk names entry 5, one journal-broken alarm and
    one journal entry; later checks update that one episode, and no forged head is exported."""
    inst = Install(engine, tmp_path)
    _ten(inst)
    inst.watch.startService()
    inst.clock.advance(0)
    assert inst.alarms() == [] and inst.watch.caught_up
    _sql(engine, "UPDATE journal SET decoded = REPLACE(decoded, '李科长', '王局长') WHERE id = 5")
    _rehash_from(engine, 5)
    inst.clock.advance(TICK)
    [a] = inst.alarms()
    assert a["severity"] == "critical" and a["cleared_at"] is None
    assert "entry 5" in a["last_message"] and "MAC does not match" in a["last_message"]
    for _ in range(3):
        inst.clock.advance(TICK)
    inst.clock.advance(3600)
    [a] = inst.alarms()
    assert a["count"] >= 2
    assert len(inst.broken_entries()) == 1
    assert [i for i, _ in inst.lines()] == [10]
    inst.watch.stopService()
    assert [i for i, _ in inst.lines()] == [10]          # broken: nothing exported at stop either


def test_self_check_reads_only_new_entries_and_clears_the_alarm_when_the_journal_is_whole_again(
        engine, tmp_path) -> None:
    """After the first full walk each self-check verifies only the entries appended since (each entry is
    checked once); an entry edited in place is found by the daily full walk, alarmed once, and the
    episode is cleared once the entry is restored."""
    inst = Install(engine, tmp_path, self_verify_s=600)
    _ten(inst)
    inst.watch.startService()
    inst.clock.advance(0)
    assert inst.watch.walker.report.checked == 10
    inst.append(_plain(11), _plain(12))
    for _ in range(10):
        inst.clock.advance(TICK)
    assert inst.watch.walker.report.checked == 12
    assert inst.watch.entries_walked == 12              # 10 + 2 read, not 10 + 12 + 12 ...
    with engine.connect() as conn:
        original = conn.execute(sa.select(journal.c.decoded).where(journal.c.id == 3)).scalar()
    _sql(engine, "UPDATE journal SET decoded = 'entry 3: nothing happened' WHERE id = 3")
    inst.clock.advance(600)
    assert inst.alarms() == []                          # the incremental check does not re-read entry 3
    inst.clock.advance(86400)
    [a] = inst.alarms()
    assert "entry 3" in a["message"] and a["cleared_at"] is None
    _sql(engine, "UPDATE journal SET decoded = :d WHERE id = 3", d=original)
    inst.clock.advance(600)
    [a] = inst.alarms()
    assert a["cleared_at"] is not None
    assert len(inst.broken_entries()) == 1
    inst.watch.stopService()


def test_start_refuses_a_keyed_journal_without_its_key_or_with_another(engine, tmp_path) -> None:
    """The daemon does not start on a keyed journal without a key (its entries would be refused) or with
    a key that does not produce the head entry's MAC (every new entry would fail verification)."""
    def cfg(key):
        return SimpleNamespace(file="/etc/gateway/gateway.toml",
                               journal_auth=JournalAuth(key, "/etc/gateway/journal.key"))
    assert check_at_start(engine, cfg(None)) is None            # empty, unkeyed: fine
    Install(engine, tmp_path).append(_plain(1))
    assert check_at_start(engine, cfg(KEY)) is None
    assert "keyed from entry 1" in check_at_start(engine, cfg(None))
    msg = check_at_start(engine, cfg(OTHER_KEY))
    assert "journal.key_file" in msg and "MAC does not match" in msg


def test_a_forged_head_found_at_start_is_never_exported(engine, tmp_path) -> None:
    """A journal forged while the daemon was down (approver rewritten, hashes recomputed) and no head
    exported yet: the first export finds the head's MAC wrong and writes nothing; the alarm names
    entry 5."""
    inst = Install(engine, tmp_path)
    _ten(inst)
    _sql(engine, "UPDATE journal SET decoded = REPLACE(decoded, '李科长', '王局长') WHERE id = 5")
    _rehash_from(engine, 5)
    inst.watch.startService()
    inst.clock.advance(0)
    assert inst.lines() == []
    [a] = inst.alarms()
    assert "entry 5" in a["last_message"]
    inst.watch.stopService()
    assert inst.lines() == []


def test_a_head_file_that_cannot_be_written_is_one_alarm_episode_cleared_when_it_can(engine, tmp_path) -> None:
    """When the head file cannot be appended to (its folder gone, a full disk) each export attempt updates
    one journal-head-export alarm instead of failing silently; the next export that succeeds clears it."""
    inst = Install(engine, tmp_path)
    inst.auth = JournalAuth(KEY, "", str(tmp_path / "gone" / "heads.jsonl"), 60.0, 0.0)
    inst.watch = JournalWatch(inst.clock, engine, inst.journal, inst.auth,
                              ticker_factory=lambda job, iv: Ticker(inst.clock, "journal-watch", job, iv),
                              run=lambda fn, *a: defer.maybeDeferred(fn, *a))
    inst.append(_plain(1))
    inst.watch.startService()
    inst.clock.advance(0)
    inst.append(_plain(2))
    inst.clock.advance(TICK)

    def export_alarms():
        with engine.connect() as conn:
            return list(conn.execute(sa.select(alarms).where(alarms.c.kind == "journal-head-export")).mappings())
    [a] = export_alarms()
    assert a["count"] == 2 and a["cleared_at"] is None and "gone" in a["message"]
    (tmp_path / "gone").mkdir()
    inst.clock.advance(TICK)
    [a] = export_alarms()
    assert a["cleared_at"] is not None
    assert [m.last_id for m in iter_head_file(str(tmp_path / "gone" / "heads.jsonl"), KEY)] == [2]
    inst.watch.stopService()
