"""Free space where the daemon writes: one `disk-space-low` alarm episode per file system.

The work dir (batch files), the journal archive (payloads) and the SQLite database file
fill up over the months; when one of their file systems is full the next batch file,
archived payload or transaction fails. Every `[work] disk_check_s` seconds the free
space (statvfs, as an unprivileged process sees it) of each file system is compared
with `[work] min_free_mb` (a warning) and `critical_free_mb` (critical); folders on the
same file system make one episode naming all of them. The check runs on the database's
thread (statvfs can block on a hung network file system), the episode is raised, updated
while the space stays low, and cleared by the first check that finds enough space again.
An episode's key names this host, so two daemons sharing a database keep their own.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

from twisted.application import service
from twisted.logger import Logger

log = Logger()

ALARM_KIND = "disk-space-low"
MB = 1 << 20


def sqlite_file(database_url: str) -> str | None:
    """The SQLite database's file for a sqlite:/// URL, else None (PostgreSQL, in-memory)."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = database_url[len("sqlite:///"):].split("?", 1)[0]
    return path or None


def watched_dirs(work_dir: str, journal_archive_dir: str, database_url: str) -> dict[str, str]:
    """What to watch, label -> folder: the work dir, the journal archive, the SQLite database's folder."""
    dirs = {"work": work_dir, "journal": journal_archive_dir}
    db = sqlite_file(database_url)
    if db:
        dirs["database"] = os.path.dirname(os.path.abspath(db))
    return dirs


def free_bytes(dirs: dict[str, str]) -> dict[str, tuple[int, int]]:
    """label -> (free bytes for an unprivileged user, total bytes); a folder that cannot be read is left out."""
    out = {}
    for label, path in dirs.items():
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        out[label] = (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    return out


def file_systems(dirs: dict[str, str]) -> list[tuple[list[str], dict[str, str]]]:
    """The folders grouped by file system (same st_dev): [(labels, {label: folder})]."""
    groups: dict[int | str, list[str]] = {}
    for label, path in dirs.items():
        try:
            dev: int | str = os.stat(path).st_dev
        except OSError:
            dev = f"unreadable:{label}"
        groups.setdefault(dev, []).append(label)
    return [(labels, {label: dirs[label] for label in labels}) for labels in groups.values()]


def judge(free: int, min_free_mb: int, critical_free_mb: int) -> str | None:
    """The severity for *free* bytes: "critical", "warning" or None (enough)."""
    if free < critical_free_mb * MB:
        return "critical"
    if free < min_free_mb * MB:
        return "warning"
    return None


class DiskWatch(service.Service):
    """The periodic check (a Ticker made by *ticker_factory*) of the watched folders' free space."""

    def __init__(self, reactor, database, dirs: dict[str, str], settings,
                 ticker_factory: Callable, host: str | None = None):
        self.reactor, self.database, self.dirs, self.settings = reactor, database, dirs, settings
        self.host = host or socket.gethostname()
        # An episode of a former run may be open: the first check clears it if space is back.
        self._maybe_open = {"+".join(labels) for labels, _ in file_systems(dirs)}
        self.ticker = ticker_factory(self.check, settings.check_s)

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.ticker.startService()

    def stopService(self):  # noqa: N802
        super().stopService()
        return self.ticker.stopService()

    async def check(self) -> dict[str, str | None]:
        """One check; returns {labels: severity or None} (for the log and tests)."""
        from gateway.rules import iso
        return await self.database.run(self._check_in, iso(self.reactor.seconds()))

    def _check_in(self, conn, at: str) -> dict[str, str | None]:
        from gateway.alarms import clear_alarm, raise_alarm
        s, out = self.settings, {}
        for labels, dirs in file_systems(self.dirs):
            name = "+".join(labels)
            key = f"{self.host}:{name}"[:200]
            space = free_bytes(dirs)
            if not space:
                continue     # nothing readable: the folders' own users fail loudly enough
            free, total = min(space.values())
            severity = judge(free, s.min_free_mb, s.critical_free_mb)
            out[name] = severity
            if severity is None:
                if name in self._maybe_open:
                    clear_alarm(conn, at, ALARM_KIND, key=key)
                    self._maybe_open.discard(name)
                continue
            limit = s.critical_free_mb if severity == "critical" else s.min_free_mb
            folders = ", ".join(f"{label} {path}" for label, path in dirs.items())
            raise_alarm(conn, at, severity, ALARM_KIND,
                        f"disk space low (磁盘空间不足) on {self.host}: {free // MB} MiB free of "
                        f"{total // MB} MiB, under [work] "
                        f"{'critical_free_mb' if severity == 'critical' else 'min_free_mb'} = {limit}; "
                        f"folders: {folders}", key=key)
            self._maybe_open.add(name)
        return out
