"""Read-only SQL for gatewayctl's quickest commands, through the database driver alone.

Loading SQLAlchemy costs a command about 0.2-0.3 s; what an operator on duty types first
(`gatewayctl alarms`) reads one table, so it opens the driver directly (sqlite3, or psycopg
for PostgreSQL), checks the schema revision as `gateway.db.check_migrated` does, and reads
read-only. Everything that writes, or reads more than a table, uses SQLAlchemy as the daemon
does.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


class NotMigrated(Exception):
    """As gateway.db.NotMigrated: the schema is not at the revision this gatewayctl needs."""


def connect(url: str):
    """A DB-API connection (read-only where the driver allows) for a configured database URL."""
    if url.startswith("sqlite:///"):
        import sqlite3
        path = url[len("sqlite:///"):]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        return conn
    import psycopg
    from psycopg.rows import dict_row
    u = urlsplit(url)
    conn = psycopg.connect(host=u.hostname or None, port=u.port, user=unquote(u.username or "") or None,
                           password=unquote(u.password) if u.password else None,
                           dbname=u.path.lstrip("/") or None, connect_timeout=5, row_factory=dict_row,
                           autocommit=True)
    conn.read_only = True
    return conn


def check_migrated(conn, url: str, config_file: str) -> None:
    from gateway.migrations import HEAD
    try:
        have = _rows(conn, "SELECT version_num FROM alembic_version")
    except Exception:  # noqa: BLE001 - no table: an empty database
        have = []
    rev = have[0]["version_num"] if have else None
    if rev != HEAD:
        shown = url.split("@")[-1] if "@" in url else url
        raise NotMigrated(
            f"database {shown} is at schema revision {rev or '(none: empty database)'}, this "
            f"gatewayctl needs {HEAD}. Migrate it with: gatewayctl --config {config_file} db upgrade")


def _rows(conn, sql: str, params: tuple = ()) -> list[dict]:
    if not hasattr(conn, "row_factory") or conn.__class__.__module__.startswith("sqlite3"):
        cur = conn.execute(sql, params)
        return [dict(r) for r in cur.fetchall()]
    with conn.cursor() as cur:
        cur.execute(sql.replace("?", "%s"), params)
        return list(cur.fetchall())


def rows(url: str, config_file: str, sql: str, params: tuple = ()) -> list[dict]:
    """The rows of one read-only query (`?` placeholders), after the schema check."""
    with reader(url, config_file) as q:
        return q(sql, params)


class reader:  # noqa: N801 - used as a function: `with reader(url, file) as q: q(sql, params)`
    """A checked read-only connection for a few queries; `q(sql, params)` gives their rows."""

    def __init__(self, url: str, config_file: str):
        self.url, self.config_file = url, config_file

    def __enter__(self):
        self.conn = _open_checked(self.url, self.config_file)
        return lambda sql, params=(): _rows(self.conn, sql, tuple(params))

    def __exit__(self, *exc) -> None:
        self.conn.close()


def _open_checked(url: str, config_file: str):
    if url.startswith("sqlite:///"):
        import os
        if not os.path.exists(url[len("sqlite:///"):]):
            from gateway.migrations import HEAD
            raise NotMigrated(f"database {url} does not exist yet (no file), this gatewayctl needs "
                              f"schema revision {HEAD}. Create and migrate it with: "
                              f"gatewayctl --config {config_file} db upgrade")
    conn = connect(url)
    try:
        check_migrated(conn, url, config_file)
    except BaseException:
        conn.close()
        raise
    return conn
