"""Database access off the reactor thread, and the migration gate.

All database work runs on a dedicated thread pool through `Database.run`,
each call one transaction: a state change and the journal entry that caused
it commit together or not at all. SQLite runs in WAL mode with full fsync;
PostgreSQL is chosen by URL. The daemon refuses to start on a database whose
schema is not at the migrations' head, and says which command migrates it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import Connection, Engine

# alembic, SQLAlchemy and twisted are imported where they are used: gatewayctl's quick
# commands (--help, --version, health) start without them.

T = TypeVar("T")


def deferToThreadPool(*args, **kw):  # noqa: N802  (twisted's name, imported when first used)
    from twisted.internet.threads import deferToThreadPool as defer_to_thread_pool
    return defer_to_thread_pool(*args, **kw)


class NotMigrated(Exception):
    """The database schema is not at the head revision of the migrations."""


def make_engine(url: str) -> Engine:
    from sqlalchemy import create_engine, event
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return engine
    # A link that dies silently fails the next call within seconds instead of the kernel's two
    # hours: keepalives for an idle connection, a user timeout for unacknowledged data.
    return create_engine(url, pool_pre_ping=True, connect_args={
        "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
        "keepalives_count": 3, "tcp_user_timeout": 10000})


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "gateway:migrations")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> None:
    """Bring the schema to head (`gatewayctl db upgrade`)."""
    from alembic import command
    command.upgrade(alembic_config(url), "head")


def check_migrated(engine: Engine, config_file: str) -> None:
    have, want = current_revision(engine), head_revision()
    if have != want:
        raise NotMigrated(
            f"database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{have or '(none: empty database)'}, the daemon needs {want}. "
            f"Migrate it with: gatewayctl --config {config_file} db upgrade"
        )


class Database:
    """An engine and the thread pool its work runs on.

    With `metrics` (gateway/metrics.py), each job's wait for a pool thread, from the moment it
    is queued on the reactor thread until a pool thread starts it, is observed as
    gateway_db_wait_seconds: the figure that says the pool is too small or a job too long.
    """

    def __init__(self, reactor, engine: Engine, threads: int = 1, metrics=None):
        self.reactor = reactor
        self.metrics = metrics
        from twisted.python.threadpool import ThreadPool
        self.engine = engine
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="gateway-db")
        self._trigger = None

    def start(self) -> None:
        self.pool.start()
        # A pool left running keeps the process alive: stop it with the reactor at the latest.
        self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        if getattr(self, "_trigger", None) is None:
            return
        try:
            self.reactor.removeSystemEventTrigger(self._trigger)
        except (ValueError, KeyError):
            pass   # the trigger is what is calling us, during shutdown
        self._trigger = None
        self.pool.stop()
        self.engine.dispose()

    def run(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run fn(conn, *args, **kw) in one transaction on the pool; a Deferred of its result."""
        def work() -> T:
            with self.engine.begin() as conn:
                return fn(conn, *args, **kw)
        return self.submit(work)

    def run_plain(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run fn(*args) on the pool without a connection (file work that must stay in order)."""
        return self.submit(fn, *args, **kw)

    def submit(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Queue fn(*args) on the pool, its wait for a thread observed; a Deferred of its result."""
        metrics = self.metrics
        if metrics is None:
            return deferToThreadPool(self.reactor, self.pool, fn, *args, **kw)
        queued = metrics.clock()

        def timed() -> T:
            metrics.db_waited(queued)
            return fn(*args, **kw)
        return deferToThreadPool(self.reactor, self.pool, timed)


class FencedDatabase:
    """The same `run`/`run_plain` as Database, for the flows: every transaction is fenced.

    A transaction starts only while the fence (gateway/leadership.py) is held and its local
    deadline has not passed; inside, it first checks the epoch against the database's (a
    deposed leader's transaction raises Deposed and rolls back), and it re-checks the local
    deadline before committing. A result that comes back after the deadline is not handed
    to the flow (Deposed): what committed was committed under a valid epoch, and the state
    machine resumes from it (a SUBMITTING batch is asked about first), but nothing is sent
    on the strength of it. When the lease is lost, the calls in flight are cancelled.
    """

    def __init__(self, database: "Database", fence):
        self.database = database
        self.fence = fence
        self.reactor = database.reactor
        self.engine = database.engine
        self.pool = database.pool

    def run(self, fn: Callable[..., T], *args: Any, **kw: Any):
        from twisted.internet import defer
        from gateway.leadership import Deposed
        fence = self.fence
        epoch = fence.epoch
        if not fence.valid(epoch):
            return defer.fail(Deposed(f"lease {fence.name!r} not held"))

        def work() -> T:
            with self.engine.begin() as conn:
                fence.check_in(conn, epoch)
                out = fn(conn, *args, **kw)
                fence.check(epoch)      # the deadline passed while we worked: roll back
                return out
        return self._after(fence.track(self.database.submit(work)), epoch)

    def run_plain(self, fn: Callable[..., T], *args: Any, **kw: Any):
        from twisted.internet import defer
        from gateway.leadership import Deposed
        fence = self.fence
        epoch = fence.epoch
        if not fence.valid(epoch):
            return defer.fail(Deposed(f"lease {fence.name!r} not held"))
        # Not cancelled when the lease is lost: file work (a batch being built) runs to its end,
        # so the step, and with it the stand-down, waits for it; this daemon takes no new epoch
        # while a file of the old one is still being written.
        return self._after(self.database.submit(fn, *args, **kw), epoch)

    def _after(self, d, epoch):
        from twisted.internet import defer
        from gateway.leadership import Deposed
        fence = self.fence

        def ok(result):
            fence.check(epoch)
            return result

        def cancelled(f):
            f.trap(defer.CancelledError)
            raise Deposed(f"lease {fence.name!r} lost while the call was in flight")
        d.addCallbacks(ok, cancelled)
        return d


def begin(engine: Engine) -> Connection:
    return engine.begin()


def executemany(conn: Connection, sql: str, rows: list[tuple]) -> None:
    """Run one statement for many rows straight through the DB-API driver.

    For the million-row paths (items in, results applied, results marked pushed)
    SQLAlchemy's per-row parameter processing costs more than the database; the
    statement is written with `?` placeholders and adapted to the driver here.
    """
    if not rows:
        return
    if conn.dialect.paramstyle in ("format", "pyformat"):
        sql = sql.replace("?", "%s")
    conn.exec_driver_sql(sql, rows)
