"""Tests of `gatewayctl journal verify|head` and `gatewayctl keys generate-journal`, run as the real
command in its own process (so an exit code of 0 on a broken chain cannot pass).

The installation is the loopback one the demo and the end-to-end tests use (simulators/harness.py),
with its journal key and head file; the journal is written in-process with that key, then forged
with raw SQL as a database administrator would (hashes recomputed with the SM3 code, head row
fixed). SQLite only: the verification itself runs on both backends in test_journal_keyed.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import config as configmod
from gateway import db as dbmod
from gateway.journal import Journal, append_head_line, current_head, head_line
from simulators import harness
from tests.test_journal_keyed import _correction, _plain, _rehash_from, _sql

GATEWAYCTL = str(Path(sys.executable).parent / "gatewayctl")


@pytest.fixture
def inst(tmp_path):
    p = harness.Paths(tmp_path / "gw")
    keys = harness.make_keys(p)
    config = harness.write_config(p, keys, harness.Ports(18480, 18481, 18482))
    cfg = configmod.load(config)
    dbmod.upgrade(cfg.database_url)
    engine = dbmod.make_engine(cfg.database_url)
    jr = Journal(cfg.journal_archive_dir, key=cfg.journal_auth.key)
    for e in [_correction(i) if i == 5 else _plain(i) for i in range(1, 11)]:
        with engine.begin() as conn:
            jr.append(conn, e, "2026-03-02T10:00:00+08:00")
    yield config, cfg, engine
    engine.dispose()


def ctl(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([GATEWAYCTL, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=60)


def _export_head(cfg, engine) -> str:
    """What the daemon's watch does: append the current head to the head file; returns ID:HASH."""
    with engine.connect() as conn:
        h = current_head(conn, cfg.journal_auth.key)
    append_head_line(cfg.journal_auth.head_file, head_line(cfg.journal_auth.key, "2026-03-02T10:01:00+08:00",
                                                           h.last_id, h.last_hash, h.keyed_from))
    return f"{h.last_id}:{h.last_hash}"


def test_verify_exits_0_on_an_intact_keyed_journal_and_1_naming_the_forged_approver(inst) -> None:
    """`journal verify` exits 0 with MACs checked on the intact journal; after the approver of the
    item.correct entry is rewritten and the hashes recomputed it exits 1 naming entry 5."""
    config, cfg, engine = inst
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "journal intact: 10 entries, chain, MACs and payloads verified" in r.stdout
    _sql(engine, "UPDATE journal SET decoded = REPLACE(decoded, '李科长', '王局长') WHERE id = 5")
    _rehash_from(engine, 5)
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "JOURNAL BROKEN at entry 5: MAC does not match" in r.stdout


def test_verify_finds_the_cut_tail_by_the_head_file_and_by_expect_head(inst) -> None:
    """The last three entries deleted and the head row fixed: `journal verify` exits 1 naming entry 8,
    from the configured head file by default and from --expect-head alone."""
    config, cfg, engine = inst
    expected = _export_head(cfg, engine)
    assert ctl(config, "journal", "verify").returncode == 0
    _sql(engine, "DELETE FROM journal WHERE id > 7")
    _rehash_from(engine, 8)
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "JOURNAL BROKEN at entry 8" in r.stdout and "deleted from the end" in r.stdout
    r = ctl(config, "journal", "verify", "--no-head-file", "--expect-head", expected)
    assert r.returncode == 1 and "JOURNAL BROKEN at entry 8" in r.stdout
    r = ctl(config, "journal", "verify", "--no-head-file")
    assert r.returncode == 0 and "entries cut off the end cannot be seen" in r.stdout


def test_verify_names_a_reordered_entry_and_an_edited_archive_file(inst) -> None:
    """Two entries swapped (MACs too, hashes recomputed) and an archived payload edited each make
    `journal verify` exit 1 naming the entry."""
    config, cfg, engine = inst
    big = b"<big>" + bytes(range(256)) * 300
    with engine.begin() as conn:
        Journal(cfg.journal_archive_dir, 1024, key=cfg.journal_auth.key).append(
            conn, _plain(11, big), "2026-03-02T10:00:00+08:00")
        ref = conn.execute(sa.text("SELECT payload_ref FROM journal WHERE id = 11")).scalar()
    path = Path(cfg.journal_archive_dir) / ref
    os.chmod(path, 0o640)
    path.write_bytes(big[:-1] + b"!")
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1 and "JOURNAL BROKEN at entry 11: payload was altered" in r.stdout
    path.write_bytes(big)
    assert ctl(config, "journal", "verify").returncode == 0
    with engine.begin() as conn:
        a, b = (conn.execute(sa.text(f"SELECT decoded, mac FROM journal WHERE id = {i}")).one() for i in (3, 4))
        conn.execute(sa.text("UPDATE journal SET decoded = :d, mac = :m WHERE id = 3"), {"d": b[0], "m": b[1]})
        conn.execute(sa.text("UPDATE journal SET decoded = :d, mac = :m WHERE id = 4"), {"d": a[0], "m": a[1]})
    _rehash_from(engine, 3)
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1 and "JOURNAL BROKEN at entry 3" in r.stdout


def test_journal_head_prints_the_authentic_head_and_refuses_a_forged_one(inst) -> None:
    """`journal head` prints id, hash, MAC and the ID:HASH line for --expect-head (exit 0); when the
    head entry was rewritten with its hash recomputed it says so and exits 1."""
    config, cfg, engine = inst
    r = ctl(config, "journal", "head")
    assert r.returncode == 0, r.stderr
    with engine.connect() as conn:
        h = current_head(conn, cfg.journal_auth.key)
    assert f"  {h.last_id}:{h.last_hash}" in r.stdout.splitlines()
    assert h.mac in r.stdout
    assert ctl(config, "journal", "verify", "--expect-head", f"{h.last_id}:{h.last_hash}").returncode == 0
    _sql(engine, "UPDATE journal SET decoded = 'forged' WHERE id = 10")
    _rehash_from(engine, 10)
    r = ctl(config, "journal", "head")
    assert r.returncode == 1 and "HEAD NOT AUTHENTIC" in r.stderr


def test_verify_without_the_key_of_a_keyed_journal_exits_2(inst, tmp_path) -> None:
    """A configuration without [journal] key_file cannot authenticate a keyed journal: exit 2, never 0;
    a malformed --expect-head is exit 2 too."""
    config, cfg, engine = inst
    text = Path(config).read_text()
    Path(config).write_text(text.replace('key_file = "../keys/journal.key"\n', "")
                            .replace('head_file = "../journal-heads.jsonl"\n', ""))
    r = ctl(config, "journal", "verify")
    assert r.returncode == 2 and "cannot authenticate" in r.stderr
    assert ctl(config, "journal", "verify", "--expect-head", "12:zz").returncode == 2


def test_keys_generate_journal_writes_0600_and_never_overwrites(tmp_path) -> None:
    """`gatewayctl keys generate-journal --out F` writes a 0600 key the configuration accepts; a second
    run exits 2 and leaves the key as it was."""
    f = tmp_path / "journal.key"
    r = subprocess.run([GATEWAYCTL, "keys", "generate-journal", "--out", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    before = f.read_bytes()
    r = subprocess.run([GATEWAYCTL, "keys", "generate-journal", "--out", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and "never overwritten" in r.stderr
    assert f.read_bytes() == before


def test_an_operator_command_that_journals_keeps_a_keyed_journal_verifiable(inst) -> None:
    """`alarms ack` appends to the journal from the command line: on a keyed journal it appends a keyed
    entry (an unkeyed writer would be refused), and `journal verify` still exits 0."""
    from gateway.rules import raise_alarm
    config, cfg, engine = inst
    with engine.begin() as conn:
        aid = raise_alarm(conn, "2026-03-02T10:05:00+08:00", "critical", "bank-link-down", "refused")
    r = ctl(config, "alarms", "ack", str(aid), "--comment", "bank maintenance", "--by", "ops")
    assert r.returncode == 0, r.stdout + r.stderr
    with engine.connect() as conn:
        mac = conn.execute(sa.text("SELECT mac FROM journal WHERE tx_code = 'alarm.ack'")).scalar()
    assert mac is not None
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0 and "11 entries" in r.stdout, r.stdout
