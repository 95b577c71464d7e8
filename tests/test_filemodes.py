"""Files on disk: the daemon's umask, its data folders 0700 and files 0600 (gateway/filemodes.py).

The process tests start the real `gatewayd` (and build the `twist gateway` plugin's
service) under the permissive umask a shell gives (0022), on an installation whose
database is not migrated yet: start-up stops there (exit 2), after it has opened the
SQLite file, which is then what it created.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config as configmod
from gateway import filemodes
from simulators import harness


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secure_data_dirs_creates_0700_and_tightens_what_is_open(tmp_path):
    """Missing folders are made 0700; an open work folder, its files and subfolders, the archive's fan-out
    folders and the SQLite file with its WAL lose group/other access; the database's own folder, when it
    exists, is left as the site made it; links are not followed."""
    work, journal, dbdir = tmp_path / "work", tmp_path / "journal", tmp_path / "state"
    assert filemodes.secure_data_dirs(str(work), str(journal), f"sqlite:///{dbdir}/g.db") == []
    assert (mode(work), mode(journal), mode(dbdir)) == (0o700, 0o700, 0o700)
    (work / "bank1").mkdir(mode=0o755)
    (work / "bank1" / "FS01-P01.txt").write_text("张三|110101199003078515")
    os.chmod(work / "bank1" / "FS01-P01.txt", 0o644)
    os.chmod(work, 0o755)
    (journal / "ab").mkdir()
    os.chmod(journal / "ab", 0o755)
    outside = tmp_path / "outside"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    (work / "link").symlink_to(outside)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    (shared / "g.db").write_bytes(b"")
    (shared / "g.db-wal").write_bytes(b"")
    os.chmod(shared / "g.db", 0o644)
    os.chmod(shared / "g.db-wal", 0o664)
    changed = filemodes.secure_data_dirs(str(work), str(journal), f"sqlite:///{shared}/g.db")
    assert mode(work) == 0o700 and mode(work / "bank1") == 0o700
    assert mode(work / "bank1" / "FS01-P01.txt") == 0o600 and mode(journal / "ab") == 0o700
    assert mode(shared / "g.db") == 0o600 and mode(shared / "g.db-wal") == 0o600
    assert mode(shared) == 0o755 and mode(outside) == 0o644
    assert len(changed) == 6 and all("-> 0" in c for c in changed)


@pytest.fixture
def unmigrated(tmp_path):
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    cfg_path = harness.write_config(p, keys, harness.Ports(1, 2, 3), token="t")
    return p, cfg_path, configmod.load(cfg_path)


def test_gatewayd_creates_its_files_0600_and_folders_0700_under_a_shell_umask(unmigrated):
    """`gatewayd` started with umask 0022 creates the SQLite database 0600 and the work and journal folders
    0700 (before: 0644 and 0755, readable by every local user, and they hold full ID numbers)."""
    p, cfg_path, cfg = unmigrated
    repo = Path(__file__).resolve().parents[1]   # this tree's gateway, as the gatewayd script runs it
    proc = subprocess.run([sys.executable, "-c", "import sys; from gateway.cli import gatewayd_main; "
                           "sys.argv[0] = 'gatewayd'; gatewayd_main()", "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=60, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 2 and "db upgrade" in proc.stderr, proc.stderr[-2000:]
    assert mode(p.gateway_db) == 0o600
    assert mode(cfg.work_dir) == 0o700 and mode(cfg.journal_archive_dir) == 0o700


def test_the_twist_plugin_sets_the_umask_before_it_builds_the_service(unmigrated):
    """`twist gateway`'s makeService sets umask 0077 first (twist itself sets none) and secures the folders."""
    from gateway import plugin
    from gateway.service import StartupError
    p, cfg_path, cfg = unmigrated
    before = os.umask(0o022)
    try:
        with pytest.raises((StartupError, SystemExit)):
            plugin.makeService({"config": str(cfg_path)})
        now = os.umask(0o022)
    finally:
        os.umask(before)
    assert now == 0o077
    assert mode(cfg.work_dir) == 0o700 and mode(cfg.journal_archive_dir) == 0o700
    assert mode(p.gateway_db) == 0o600
