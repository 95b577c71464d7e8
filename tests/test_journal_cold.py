"""Journal retention: `gatewayctl journal archive` moves old entries to cold archive files, and
`gatewayctl journal verify` follows the chain through them.

The installation is the loopback one (simulators/harness.py) with its journal key and head file,
plus [paper] seal_key and [journal] cold_dir; the journal is written in-process with that key
(ten entries in January 2026, ten in February, five in December), then the commands run as real
processes, on SQLite and PostgreSQL. The forgeries are raw SQL and file edits, as someone with
the database and the disk would make them.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select

from gateway import config as configmod
from gateway import db as dbmod
from gateway.journal import (ChainWalker, Entry, Journal, append_head_line, current_head, head_line,
                             read_head_row, verify_chain)
from gateway.journal_watch import JournalWatch
from gateway.models import journal, journal_cuts, result_sheets
from gateway.paper import archive
from gateway.paper.seal import Seal
from protocols import keyfile, sm
from simulators import harness
from tests import paper_seed

GATEWAYCTL = str(Path(sys.executable).parent / "gatewayctl")
SEAL = Seal(sm.generate_keypair())
JAN, FEB, DEC = "2026-01-15T10:00:00+08:00", "2026-02-10T10:00:00+08:00", "2026-12-01T10:00:00+08:00"


def _entry(i: int, order_no: str = "ORD1", batch_no: str | None = None) -> Entry:
    return Entry("out", "demo-bank", "tcp", "BP01", f"entry {i}", payload=f"<msg {i}/>".encode(),
                 order_no=order_no, batch_no=batch_no)


@pytest.fixture
def inst(tmp_path, db_url):
    p = harness.Paths(tmp_path / "gw")
    keys = harness.make_keys(p)
    config = harness.write_config(p, keys, harness.Ports(18490, 18491, 18492), db_url=db_url)
    seal_key = tmp_path / "seal.pem"
    keyfile.write_private_key_file(seal_key, SEAL.key)
    text = config.read_text().replace('head_file = "../journal-heads.jsonl"\n',
                                      'head_file = "../journal-heads.jsonl"\ncold_dir = "../journal-cold"\n')
    config.write_text(text + f'\n[paper]\nseal_key = "{seal_key}"\nout_dir = "{tmp_path / "paper"}"\n')
    cfg = configmod.load(config)
    dbmod.upgrade(cfg.database_url)
    engine = dbmod.make_engine(cfg.database_url)
    jr = Journal(cfg.journal_archive_dir, key=cfg.journal_auth.key)
    yield config, cfg, engine, jr
    engine.dispose()


def _write(engine, jr, n: int, at: str, **kw) -> list[int]:
    ids = []
    for i in range(n):
        with engine.begin() as conn:
            ids.append(jr.append(conn, _entry(i, **kw), at))
    return ids


def _standard(engine, jr) -> None:
    _write(engine, jr, 10, JAN)
    _write(engine, jr, 10, FEB)
    _write(engine, jr, 5, DEC)


def ctl(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([GATEWAYCTL, "--config", str(config), *args], capture_output=True, text=True,
                          timeout=120)


def _export_head(cfg, engine) -> None:
    with engine.connect() as conn:
        h = current_head(conn, cfg.journal_auth.key)
    append_head_line(cfg.journal_auth.head_file, head_line(cfg.journal_auth.key, "2026-02-28T10:00:00+08:00",
                                                           h.last_id, h.last_hash, h.keyed_from))


def _sql(engine, text: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(text))


def _cold(cfg) -> list[Path]:
    return sorted(Path(cfg.journal_cold_dir).glob("journal-*.tar.gz"))


def _archived(config, cfg, engine, jr):
    # Heads exported at entries 12 (inside the February file after the cut), 20 (the cut) and 25 (live).
    _write(engine, jr, 10, JAN)
    _write(engine, jr, 2, FEB)
    _export_head(cfg, engine)
    _write(engine, jr, 8, FEB)
    _export_head(cfg, engine)
    _write(engine, jr, 5, DEC)
    _export_head(cfg, engine)
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_archive_moves_january_and_february_and_verify_follows_the_chain(inst) -> None:
    """Entries of January and February go to one cold file each (0600, folder 0700), sealed, in
    `archive export`'s format (verify_archive passes on each); they are gone from the journal, the
    cuts link 1..10, 11..20 and the live chain at entry 21; the move is journaled; `journal verify`
    exits 0 with the cold files and the exported head inside them checked; the next run moves nothing."""
    config, cfg, engine, jr = inst
    r = _archived(config, cfg, engine, jr)
    assert "moved entries 1..10 (10)" in r.stdout and "moved entries 11..20 (10)" in r.stdout, r.stdout
    files = _cold(cfg)
    assert [f.name for f in files] == ["journal-2026-01-0000000001-0000000010.tar.gz",
                                       "journal-2026-02-0000000011-0000000020.tar.gz"]
    assert stat.S_IMODE(os.stat(cfg.journal_cold_dir).st_mode) == 0o700
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        v = archive.verify_archive(str(f), public_key=SEAL.public_key, journal_key=cfg.journal_auth.key)
        assert v.ok and v.entries == 10, v.problem
    assert not list(Path(cfg.journal_cold_dir).glob("*.part"))
    with engine.connect() as conn:
        ids = list(conn.execute(select(journal.c.id).order_by(journal.c.id)).scalars())
        cuts = conn.execute(select(journal_cuts).order_by(journal_cuts.c.last_id)).all()
        moves = conn.execute(select(journal.c.decoded).where(journal.c.tx_code == "journal.archive")).all()
        first_live = conn.execute(select(journal.c.prev_hash).where(journal.c.id == 21)).scalar()
    assert ids[0] == 21 and len(ids) == 5 + 2
    assert [(c.first_id, c.last_id) for c in cuts] == [(1, 10), (11, 20)]
    assert cuts[1].prev_hash == cuts[0].last_hash and first_live == cuts[1].last_hash
    assert len(moves) == 2 and all(c.mac for c in cuts)
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "journal intact: 7 entries" in r.stdout
    assert "entries 1..20 in 2 cold file(s)" in r.stdout and "reaches 3 exported head(s)" in r.stdout, r.stdout
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0 and "nothing to move" in r.stdout, r.stdout + r.stderr
    r = ctl(config, "journal", "show", "--id", "12")
    assert r.returncode == 1 and "moved to the cold archive file journal-2026-02-0000000011" in r.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_tampered_cold_file_is_named(inst) -> None:
    """One byte of the January file changed: `journal verify` exits 1 naming that file (its digest is
    not the one its cut recorded). Checked to fail with verify_cold's file check removed."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    jan = _cold(cfg)[0]
    data = bytearray(jan.read_bytes())
    data[len(data) // 2] ^= 0x01
    jan.write_bytes(bytes(data))
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cold file {jan} was altered or replaced" in r.stdout, r.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_cold_file_replaced_by_another_sealed_one_is_named(inst) -> None:
    """The February file replaced by the January one (sealed by the real key, so `archive verify` of
    the file alone passes): its digest is not the one February's cut recorded, so `journal verify`
    exits 1 naming it. Checked to fail with the digest comparison in _check_file removed (the link
    check then names it instead, so that mutation needs both removed: the test asserts the digest's
    message)."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    feb = _cold(cfg)[1]
    with tarfile.open(feb) as tar:
        assert b'"journal_span"' in tar.extractfile("archive/MANIFEST.json").read()
    feb.write_bytes(_cold(cfg)[0].read_bytes())
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cold file {feb} was altered or replaced" in r.stdout, r.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_missing_cold_file_is_named_and_no_cold_skips_the_files(inst) -> None:
    """The January file deleted: `journal verify` exits 1 naming it; with --no-cold it exits 0 and says
    the cold files were not checked."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    jan = _cold(cfg)[0]
    jan.unlink()
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cold file {jan} (entries 1..10) is missing" in r.stdout, r.stdout
    r = ctl(config, "journal", "verify", "--no-cold")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NOT checked (--no-cold)" in r.stdout


def test_an_edited_or_deleted_anchor_is_found(inst) -> None:
    """The anchor's last_hash edited: verify exits 1, the cut's MAC does not match (a matching MAC
    needs the journal key). The last cut deleted: the live chain no longer starts where the cuts end
    (entry 11 is missing). A MAC removed (the anchor's, with its hash put back, or an earlier cut's)
    is found too: a cut that moved keyed entries was made with the key. Checked to fail with
    start_at's MAC check removed (the edit is then found by the first live entry's prev_hash,
    another message) and with MAC-less cuts accepted (needs_mac / the anchor's condition False)."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    with engine.connect() as conn:
        anchor = conn.execute(select(journal_cuts).where(journal_cuts.c.last_id == 20)).one()
        jan_mac = conn.execute(select(journal_cuts.c.mac).where(journal_cuts.c.last_id == 10)).scalar_one()
    _sql(engine, "UPDATE journal_cuts SET last_hash = '" + "1" * 64 + "' WHERE last_id = 20")
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "JOURNAL BROKEN at entry 20: the cut to cold file journal-2026-02-" in r.stdout
    assert "its MAC does not match" in r.stdout
    _sql(engine, f"UPDATE journal_cuts SET last_hash = '{anchor.last_hash}', mac = NULL WHERE last_id = 20")
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "JOURNAL BROKEN at entry 20: the cut to cold file journal-2026-02-" in r.stdout
    assert "its MAC is missing" in r.stdout
    with engine.begin() as conn:    # the anchor put back as it was; an earlier cut's MAC removed
        conn.execute(sa.update(journal_cuts).where(journal_cuts.c.last_id == 20).values(mac=anchor.mac))
        conn.execute(sa.update(journal_cuts).where(journal_cuts.c.last_id == 10).values(mac=None))
    r = ctl(config, "journal", "verify", "--no-cold")
    assert r.returncode == 1 and "the cut to journal-2026-01-0000000001-0000000010.tar.gz (journal_cuts) was " \
                                 "altered: its MAC is missing" in r.stdout, r.stdout + r.stderr
    _sql(engine, f"UPDATE journal_cuts SET mac = '{jan_mac}' WHERE last_id = 10")
    _sql(engine, "DELETE FROM journal_cuts WHERE last_id = 20")
    r = ctl(config, "journal", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "JOURNAL BROKEN at entry 11: entry 11 is missing (next is 21)" in r.stdout, r.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_edited_cut_without_a_key_breaks_the_link_to_the_live_chain(inst) -> None:
    """Without the journal key (no MACs to check), an anchor whose last_hash was edited no longer links
    to the first live entry's prev_hash: verify_chain names entry 21."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    _sql(engine, "UPDATE journal_cuts SET last_hash = '" + "1" * 64 + "' WHERE last_id = 20")
    with engine.connect() as conn:
        r = verify_chain(conn, cfg.journal_archive_dir, key=None)
    assert not r.ok and r.first_bad_id == 21 and "prev_hash does not match" in r.reason


def test_the_first_live_entry_deleted_after_the_cut_is_named(inst) -> None:
    """Entry 21, the first live one, deleted right after the cut: verify exits 1 naming it. Checked to
    fail with the walker not started at the anchor (it then reports entry 1 missing instead)."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    _sql(engine, "DELETE FROM journal WHERE id = 21")
    r = ctl(config, "journal", "verify", "--no-head-file")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "JOURNAL BROKEN at entry 21: entry 21 is missing (next is 22)" in r.stdout, r.stdout


def test_entries_still_needed_stop_the_cut(inst) -> None:
    """The cut is a prefix and stops before the first entry still needed: an entry of a DISPATCHED
    order (entry 4), then, once the order is SETTLED, an entry a result sheet reads its PDF from
    (entry 7), then the entry its seal is read from (entry 8); with that row gone everything before
    March moves. Checked to fail with each condition of `_needed` removed in turn (the order's, the
    sheet's PDF)."""
    config, cfg, engine, jr = inst
    _write(engine, jr, 3, JAN)
    _write(engine, jr, 1, JAN, order_no="FS01")                       # entry 4
    _write(engine, jr, 2, JAN)
    _write(engine, jr, 1, JAN, order_no="X", batch_no="FS01-P01")     # entry 7: the sheet's PDF
    _write(engine, jr, 3, FEB)
    _write(engine, jr, 2, DEC)
    with engine.begin() as conn:
        paper_seed._order(conn, "FS01", "NY01", "耕地地力保护补贴", "耕保", "长丰县", paper_seed.secs(2026, 1, 2),
                          "DISPATCHED", (1, 100))
        conn.execute(insert(result_sheets).values(
            batch_no="FS01-P01", order_no="FS01", bank_id="CNB01", produced_at=JAN, pdf_sm3="0" * 64,
            pdf_sha256="0" * 64, pdf_size=1, signer="x", journal_id=7, sig_journal_id=8))
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "moved entries 1..3 (3)" in r.stdout and "the cut stops at entry 3: entry 4 (BP01, order FS01" in r.stdout
    _sql(engine, "UPDATE orders SET state = 'SETTLED'")
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "moved entries 4..6 (3)" in r.stdout and "the cut stops at entry 6: entry 7 " in r.stdout, r.stdout
    _sql(engine, "UPDATE result_sheets SET journal_id = 1")
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "moved entries 7..7 (1)" in r.stdout and "the cut stops at entry 7: entry 8 " in r.stdout, r.stdout
    _sql(engine, "DELETE FROM result_sheets")
    r = ctl(config, "journal", "archive", "--before", "2026-03-01", "--dry-run")
    assert "would move entries 8..10 (2026-02)" in r.stdout, r.stdout
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "moved entries 8..10 (3)" in r.stdout
    assert [f.name[8:15] for f in _cold(cfg)] == ["2026-01", "2026-01", "2026-01", "2026-02"]
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "entries 1..10 in 4 cold file(s)" in r.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_cut_off_respects_retention(inst) -> None:
    """Without retain_days, --before is required; with retain_days = 400, a --before that would move
    younger entries is refused (exit 2) and nothing moves; retain_days without cold_dir is a
    configuration error."""
    config, cfg, engine, jr = inst
    _standard(engine, jr)
    r = ctl(config, "journal", "archive")
    assert r.returncode == 2 and "retention is off" in r.stderr
    config.write_text(config.read_text().replace('cold_dir = "../journal-cold"\n',
                                                 'cold_dir = "../journal-cold"\nretain_days = 400\n'))
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 2 and "would move entries younger than [journal] retain_days = 400" in r.stderr
    r = ctl(config, "journal", "archive")
    assert r.returncode == 0 and "nothing to move" in r.stdout, r.stdout + r.stderr
    config.write_text(config.read_text().replace('cold_dir = "../journal-cold"\n', ""))
    with pytest.raises(configmod.ConfigError, match="retain_days: needs journal.cold_dir"):
        configmod.load(config)


def test_the_daemon_self_check_and_head_export_go_on_across_a_cut(inst) -> None:
    """The daemon's journal watch: a walker that had verified up to entry 25 before the cut, and a
    fresh one, both check the live chain from the anchor without a false alarm; the head export
    still appends (its last exported head, entry 20, was moved: the cut's hash stands for it).
    Checked to fail with the anchor handling in _verify_chunk removed (a fresh walker reports entry
    1 missing) and in _check_head removed (entry 20 "no longer has the hash exported")."""
    config, cfg, engine, jr = inst
    _write(engine, jr, 10, JAN)
    _write(engine, jr, 10, FEB)
    _export_head(cfg, engine)          # entry 20: the cut, once it is made
    _write(engine, jr, 5, DEC)
    watch = JournalWatch(None, engine, jr, cfg.journal_auth, ticker_factory=lambda *a: None,
                         run=lambda fn, *a: fn(*a))
    before = ChainWalker(cfg.journal_archive_dir, cfg.journal_auth.key)
    assert watch._verify_chunk(before) == (True, None)   # noqa: SLF001
    assert before.report.last_id == 25
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0, r.stdout + r.stderr
    _write(engine, jr, 2, DEC)
    assert watch._verify_chunk(before) == (True, None)   # noqa: SLF001
    fresh = ChainWalker(cfg.journal_archive_dir, cfg.journal_auth.key)
    assert watch._verify_chunk(fresh) == (True, None)    # noqa: SLF001
    assert fresh.report.checked == 5 + 2 + 2 and fresh.report.anchor_id == 20
    import time
    from gateway.rules import iso
    assert watch._export(iso(time.time())) is None       # noqa: SLF001
    with engine.connect() as conn:
        head = read_head_row(conn)
    assert watch.last_mark.last_id == head.last_id
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_one_archive_at_a_time_and_a_file_left_by_a_crash_is_written_again(inst) -> None:
    """While another `journal archive` holds the cold folder's lock, a second one exits 1 and moves
    nothing. A file of January's name left by a run that stopped before its cut committed (here:
    garbage) is not trusted: it is written again, the move completes and verify passes. Checked to
    fail with the flock not taken (the second run moves the entries)."""
    import fcntl
    config, cfg, engine, jr = inst
    _standard(engine, jr)
    folder = Path(cfg.journal_cold_dir)
    folder.mkdir(mode=0o700)
    fd = os.open(folder / ".journal-archive.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = ctl(config, "journal", "archive", "--before", "2026-03-01")
        assert r.returncode == 1 and "another `journal archive` is writing to" in r.stderr, r.stdout + r.stderr
    finally:
        os.close(fd)
    with engine.connect() as conn:
        assert conn.execute(select(sa.func.min(journal.c.id))).scalar() == 1
    (folder / "journal-2026-01-0000000001-0000000010.tar.gz").write_bytes(b"left by a crash")
    r = ctl(config, "journal", "archive", "--before", "2026-03-01")
    assert r.returncode == 0 and "moved entries 1..10 (10)" in r.stdout, r.stdout + r.stderr
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0 and "entries 1..20 in 2 cold file(s)" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_big_month_is_split_over_files_of_bounded_size(inst) -> None:
    """With at most 4 entries a file, January's ten entries go to three files (1..4, 5..8, 9..10),
    each linked to the one before, and `journal verify` follows them. Checked to fail with the
    max_file_entries bound dropped from plan (one January file)."""
    from gateway import journal_cold
    config, cfg, engine, jr = inst
    _standard(engine, jr)
    _, moved = journal_cold.archive_old(engine, jr, SEAL, cfg.journal_auth.key, cfg.journal_cold_dir,
                                        "2026-03-01T00:00:00+08:00", "2026-12-08T09:00:00+08:00", max_file_entries=4)
    assert [(m.first_id, m.last_id) for m in moved] == [(1, 4), (5, 8), (9, 10), (11, 14), (15, 18), (19, 20)]
    r = ctl(config, "journal", "verify")
    assert r.returncode == 0 and "entries 1..20 in 6 cold file(s)" in r.stdout, r.stdout + r.stderr


def test_an_archive_export_after_the_cut_links_to_the_cuts_hash(inst, tmp_path) -> None:
    """December's `archive export` after the cut: its first entry is the first live one (21), whose
    predecessor is in a cold file; the segment starts from the cut's hash and the export verifies
    offline. Checked to fail with export_archive reading entry 20's hash from the journal table
    (NoResultFound)."""
    config, cfg, engine, jr = inst
    _archived(config, cfg, engine, jr)
    out = tmp_path / "2026-12.tar.gz"
    with engine.connect() as conn:
        r = archive.export_archive(conn, jr, SEAL, str(out), at="2026-12-08T09:00:00+08:00", month=(2026, 12))
        cut = conn.execute(select(journal_cuts.c.last_hash).where(journal_cuts.c.last_id == 20)).scalar_one()
    assert r.segment[0] == 21
    v = archive.verify_archive(str(out), public_key=SEAL.public_key, journal_key=cfg.journal_auth.key)
    assert v.ok and v.segment["prev_hash"] == cut, v.problem
