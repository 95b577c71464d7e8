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
    """The schema revision Alembic recorded (None: an empty database), read without importing Alembic."""
    from sqlalchemy import inspect, text
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url: str) -> None:
    """Bring the schema to head (`gatewayctl db upgrade`)."""
    from alembic import command
    command.upgrade(alembic_config(url), "head")


def check_migrated(engine: Engine, config_file: str) -> None:
    from gateway.migrations import HEAD   # not head_revision(): Alembic's script loading costs gatewayctl 0.1 s
    have, want = current_revision(engine), HEAD
    if have != want:
        raise NotMigrated(
            f"database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{have or '(none: empty database)'}, the daemon needs {want}. "
            f"Migrate it with: gatewayctl --config {config_file} db upgrade"
        )


class Database:
    """An engine and the thread pools its work runs on.

    Three kinds of work, so that no single thread is what everything waits on:

    - `run`: a short transaction (a state change, an RPC call, a bank's step): the writer pool,
      `threads` threads (1 by default: every state change of the flows in one order);
    - `run_bulk` / `run_plain_bulk`: the work that grows with an order (items loaded, a batch
      file built, results applied, results marked pushed). On PostgreSQL it has a pool of its own
      (`bulk_threads`), so a million-item apply never holds up the RPC or another bank's steps;
      on SQLite, which has one writer, it stays on the writer's thread (a second thread would only
      wait on SQLite's lock), and the bulk steps commit in chunks where the rules allow;
    - `read`: a read-only snapshot (a consistent view across its statements) on a pool of its own
      (`read_threads`): on SQLite in WAL mode and on PostgreSQL alike it runs beside a writer.

    With `metrics` (gateway/metrics.py), each job's wait for a pool thread, from the moment it
    is queued on the reactor thread until a pool thread starts it, is observed as
    gateway_db_wait_seconds: the figure that says a pool is too small or a job too long.
    """

    def __init__(self, reactor, engine: Engine, threads: int = 1, *, bulk_threads: int = 2,
                 read_threads: int = 2, metrics=None):
        self.reactor = reactor
        self.metrics = metrics
        from twisted.python.threadpool import ThreadPool
        self.engine = engine
        self.sqlite = engine.url.get_backend_name() == "sqlite"
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="gateway-db")
        self.bulk_pool = (self.pool if self.sqlite or bulk_threads < 1 else
                          ThreadPool(minthreads=1, maxthreads=bulk_threads, name="gateway-db-bulk"))
        self.read_pool = ThreadPool(minthreads=1, maxthreads=max(read_threads, 1), name="gateway-db-read")
        self._trigger = None

    def _pools(self):
        return [self.pool] + ([self.bulk_pool] if self.bulk_pool is not self.pool else []) + [self.read_pool]

    def start(self) -> None:
        for p in self._pools():
            p.start()
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
        for p in self._pools():
            if not p.joined:      # a pool a caller stopped by hand is not stopped twice
                p.stop()
        self.engine.dispose()

    def _tx(self, fn: Callable[..., T], *args: Any, **kw: Any) -> Callable[[], T]:
        def work() -> T:
            with self.engine.begin() as conn:
                return fn(conn, *args, **kw)
        return work

    def submit(self, pool, fn: Callable[..., T], *args: Any, **kw: Any):
        """Queue fn(*args) on `pool`, its wait for a thread observed; a Deferred of its result."""
        metrics = self.metrics
        if metrics is None:
            return deferToThreadPool(self.reactor, pool, fn, *args, **kw)
        queued = metrics.clock()

        def timed() -> T:
            metrics.db_waited(queued)
            return fn(*args, **kw)
        return deferToThreadPool(self.reactor, pool, timed)

    def run(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run fn(conn, *args, **kw) in one transaction on the pool; a Deferred of its result."""
        return self.submit(self.pool, self._tx(fn, *args, **kw))

    def run_plain(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run fn(*args) on the pool without a connection (file work that must stay in order)."""
        return self.submit(self.pool, fn, *args, **kw)

    def run_bulk(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """As `run`, for work that grows with an order: on the bulk pool."""
        return self.submit(self.bulk_pool, self._tx(fn, *args, **kw))

    def run_plain_bulk(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """As `run_plain`, for work that grows with an order (a batch file built): the bulk pool."""
        return self.submit(self.bulk_pool, fn, *args, **kw)

    def read(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Run fn(conn, *args, **kw) on a read-only snapshot, beside the writer; nothing it
        does is kept (the transaction is rolled back)."""
        def work() -> T:
            with self.engine.connect() as conn:
                if self.sqlite:
                    # pysqlite begins a transaction only before a write: begin here, so that every
                    # statement of fn reads the same snapshot (WAL: the writer goes on meanwhile).
                    conn.exec_driver_sql("BEGIN")
                else:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                                  postgresql_readonly=True)
                try:
                    return fn(conn, *args, **kw)
                finally:
                    conn.rollback()
        return self.submit(self.read_pool, work)


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
        return self._run(self.database.pool, False, fn, *args, **kw)

    def run_bulk(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """A transaction whose statements grow with an order: on the bulk pool, and on PostgreSQL
        each statement bounded by leadership.BULK_STATEMENT_MS instead of a fraction of the lease."""
        return self._run(self.database.bulk_pool, True, fn, *args, **kw)

    def run_plain(self, fn: Callable[..., T], *args: Any, **kw: Any):
        return self._run_plain(self.database.pool, fn, *args, **kw)

    def run_plain_bulk(self, fn: Callable[..., T], *args: Any, **kw: Any):
        return self._run_plain(self.database.bulk_pool, fn, *args, **kw)

    def read(self, fn: Callable[..., T], *args: Any, **kw: Any):
        """Reading needs no lease (a standby answers too)."""
        return self.database.read(fn, *args, **kw)

    def _run(self, pool, bulk: bool, fn: Callable[..., T], *args: Any, **kw: Any):
        from twisted.internet import defer
        from gateway.leadership import Deposed
        fence = self.fence
        epoch = fence.epoch
        if not fence.valid(epoch):
            return defer.fail(Deposed(f"lease {fence.name!r} not held"))

        def work() -> T:
            with self.engine.begin() as conn:
                fence.check_in(conn, epoch, bulk)
                out = fn(conn, *args, **kw)
                fence.check(epoch)      # the deadline passed while we worked: roll back
                return out
        return self._after(fence.track(self.database.submit(pool, work)), epoch)

    def _run_plain(self, pool, fn: Callable[..., T], *args: Any, **kw: Any):
        from twisted.internet import defer
        from gateway.leadership import Deposed
        fence = self.fence
        epoch = fence.epoch
        if not fence.valid(epoch):
            return defer.fail(Deposed(f"lease {fence.name!r} not held"))
        # Not cancelled when the lease is lost: file work (a batch being built) runs to its end,
        # so the step, and with it the stand-down, waits for it; this daemon takes no new epoch
        # while a file of the old one is still being written.
        return self._after(self.database.submit(pool, fn, *args, **kw), epoch)

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


def copy_rows(conn: Connection, table: str, columns: tuple[str, ...], rows) -> int:
    """PostgreSQL: rows into `table` with COPY ... FROM STDIN, in conn's transaction.

    Through psycopg's own connection (SQLAlchemy's Connection has no COPY), so it commits or
    rolls back with everything else the transaction did; a row the database refuses fails
    the whole COPY. Its errors come out as SQLAlchemy's (a value too long is
    sqlalchemy.exc.DataError, as from executemany), so callers catch one kind. The count of
    rows written.
    """
    from sqlalchemy import exc as sa_exc
    raw = conn.connection.dbapi_connection
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    n = 0
    try:
        with raw.cursor() as cur, cur.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
                n += 1
    except conn.dialect.loaded_dbapi.Error as e:
        raise sa_exc.DBAPIError.instance(sql, None, e, conn.dialect.loaded_dbapi.Error) from e
    return n
