"""What the daemon's files on disk may show to other local users: nothing.

The database, the work files and the journal archive hold full ID and account
numbers. `secure_process` sets the process umask to 0077 before anything is
created, so every file the daemon (and the libraries it runs: SQLite, the SFTP
client, the journal) creates is 0600 and every folder 0700, whatever umask the
shell or service manager gave it. `secure_data_dirs` creates the data folders
0700 and tightens the ones a previous version (or an operator) left open: the
work folder and everything in it, the journal archive folder and its fan-out
folders, the SQLite database file and its -wal/-shm companions. The folder that
holds a SQLite database is created 0700 when missing but never changed: a site
may keep it somewhere shared (the file itself is tightened).

Both entry points call them: `gatewayd` (gateway/cli.py) and the `twist gateway`
plugin (gateway/plugin.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DAEMON_UMASK = 0o077


def secure_process() -> int:
    """Set the umask to 0077; returns the previous one."""
    return os.umask(DAEMON_UMASK)


def _tighten(path: Path, mode: int, changed: list[str]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return   # never follow a link out of our folders
    have = stat.S_IMODE(st.st_mode)
    if have & 0o077:
        os.chmod(path, have & ~0o077 & mode if not stat.S_ISDIR(st.st_mode) else mode)
        changed.append(f"{path}: mode {have:04o} -> {stat.S_IMODE(os.lstat(path).st_mode):04o}")


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def secure_data_dirs(work_dir: str, journal_dir: str, database_url: str) -> list[str]:
    """Create the data folders 0700 and take group/other access away from what is there; what changed."""
    changed: list[str] = []
    for d in (Path(work_dir), Path(journal_dir)):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tighten(d, 0o700, changed)
    # Work files: every one (they are few and short-lived, and hold whole orders).
    for root, dirs, files in os.walk(work_dir):
        for name in dirs:
            _tighten(Path(root) / name, 0o700, changed)
        for name in files:
            _tighten(Path(root) / name, 0o600, changed)
    # The archive can hold millions of files, each 0440 in a 0700 tree: its folders suffice.
    for sub in Path(journal_dir).iterdir():
        if sub.is_dir() and not sub.is_symlink():
            _tighten(sub, 0o700, changed)
    db = _sqlite_path(database_url)
    if db is not None:
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
            _tighten(Path(str(db) + suffix), 0o600, changed)
    return changed
