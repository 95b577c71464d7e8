"""Leadership: of the daemons sharing one database, exactly one is active (主), the others stand by (备).

Two daemons on one database would both poll the core, both build batches and both
send BP01, so only the daemon holding a lock on the database runs the flows and the
scheduler; the other keeps serving the RPC and tries for the lock every `[ha] retry_s`
seconds (with jitter). On PostgreSQL the lock is a session advisory lock
(`pg_try_advisory_lock`) held on a dedicated connection kept open: it belongs to the
session, so a leader that crashes, or whose connection the server drops, frees it with
no timeout to wait for. On SQLite it is an exclusive `flock` on `<database file>.lock`,
which only excludes daemons on the same machine (SQLite over a network file system is
not supported anyway). The holder checks its lock every `retry_s` seconds and steps
down at once when it finds it lost. Every lock call blocks, so each runs on a
one-thread pool of its own, never on the reactor thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
from typing import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from twisted.application import service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway.rules import iso

log = Logger()

ACTIVE = "active"
STANDBY = "standby"

# One constant per installation kind: every daemon of the subsidy gateway on one
# PostgreSQL database competes for this key (a signed 64-bit advisory lock key).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"subsidy-gateway").digest()[:8], "big", signed=True)


class PgAdvisoryLock:
    """A session advisory lock on a dedicated PostgreSQL connection (blocking calls)."""

    # pg_locks shows a bigint key as classid (high 32 bits) and objid (low 32 bits), objsubid 1.
    _HELD = text("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                 "AND pid = pg_backend_pid() AND classid = :hi AND objid = :lo AND objsubid = 1)")

    def __init__(self, url: str, key: int = LOCK_KEY, connect_timeout_s: int = 5):
        self.url = url
        self.key = key
        self.connect_timeout_s = connect_timeout_s
        self._engine = None
        self._conn = None

    def describe(self) -> str:
        u = make_url(self.url).render_as_string(hide_password=True)
        return f"PostgreSQL advisory lock {self.key} on {u}"

    def acquire(self) -> bool:
        self.release()
        # Keepalives and a TCP user timeout make a silently dead link fail the next check
        # within seconds instead of the kernel's two hours.
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={
            "connect_timeout": self.connect_timeout_s, "keepalives": 1, "keepalives_idle": 5,
            "keepalives_interval": 2, "keepalives_count": 3, "tcp_user_timeout": 10000,
            "application_name": "subsidy-gateway leadership"})
        try:
            conn = engine.connect()
        except Exception:
            engine.dispose()
            raise
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar_one())
        except Exception:
            conn.close()
            engine.dispose()
            raise
        if not got:
            conn.close()
            engine.dispose()
            return False
        self._engine, self._conn = engine, conn
        return True

    def check(self) -> bool:
        """True while our session is alive and still holds the key."""
        if self._conn is None:
            return False
        return bool(self._conn.execute(self._HELD, {"hi": (self.key >> 32) & 0xFFFFFFFF,
                                                    "lo": self.key & 0xFFFFFFFF}).scalar_one())

    def release(self) -> None:
        """Close the session: the server frees the lock with it."""
        conn, engine, self._conn, self._engine = self._conn, self._engine, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  (a connection already lost is released too)
                pass
        if engine is not None:
            engine.dispose()


class FileLock:
    """An exclusive `flock` on a file: excludes processes on this machine only (blocking calls)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def describe(self) -> str:
        return f"flock on {self.path} (this machine only)"

    def acquire(self) -> bool:
        self.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())   # for the operator: who holds it
        self.fd = fd
        return True

    def check(self) -> bool:
        """True while our descriptor is open and still the file at `path`.

        A lock file deleted or replaced under us would let another daemon lock the new
        file, so that counts as lost.
        """
        if self.fd is None:
            return False
        try:
            ours, there = os.fstat(self.fd), os.stat(self.path)
        except OSError:
            return False
        return (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)   # closing frees the flock; the file stays (unlinking it would race)
            except OSError:
                pass


class ProcessLock:
    """For an in-memory SQLite database: private to this process, so always ours."""

    def __init__(self) -> None:
        self.held = False

    def describe(self) -> str:
        return "in-memory database (no other daemon can share it)"

    def acquire(self) -> bool:
        self.held = True
        return True

    def check(self) -> bool:
        return self.held

    def release(self) -> None:
        self.held = False


def lock_for_url(url: str):
    """The lock that elects one daemon per database named by *url*; ValueError for other databases."""
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        return PgAdvisoryLock(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:" or "mode=memory" in url:
            return ProcessLock()
        return FileLock(os.path.abspath(u.database) + ".lock")
    raise ValueError(f"leadership needs PostgreSQL or SQLite, not {u.get_backend_name()}")


class Leadership(service.Service):
    """Holds the database's lock while it can; `role` is "active" (主) or "standby" (备).

    `on_active()` is called on winning the lock and `on_standby()` on losing or releasing
    it (each may return a Deferred, which is waited for before the lock is touched again).
    On stop, an active daemon calls `on_standby()` first and releases the lock after, so
    the next leader never overlaps a step still in progress here.
    """

    def __init__(self, reactor, lock, *, retry_s: float = 5.0, jitter: float = 0.2, clock=None,
                 rng: random.Random | None = None, on_active: Callable | None = None,
                 on_standby: Callable | None = None):
        self.reactor = reactor           # runs the lock's thread results
        self.clock = clock or reactor    # schedules the retries and checks
        self.lock = lock
        self.retry_s = retry_s
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.on_active = on_active
        self.on_standby = on_standby
        self.role = STANDBY
        self.since = self.clock.seconds()
        self.attempts = 0                # tries for the lock so far
        self.setName("leadership")
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="gateway-leadership")
        self._call = None
        self._busy: defer.Deferred | None = None

    @property
    def active(self) -> bool:
        return self.role == ACTIVE

    def status(self) -> dict:
        """For `health`: the role, and since when (ISO 8601, +08:00)."""
        return {"role": self.role, "since": iso(self.since), "lock": self.lock.describe()}

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._pool.start()
        self.since = self.clock.seconds()
        log.info("leadership: standby, trying for the {lock}", lock=self.lock.describe())
        self._call = self.clock.callLater(0, self._step)

    def settled(self) -> defer.Deferred:
        """Fires once no lock call is in flight (tests drive the retry loop with a Clock)."""
        d = defer.Deferred()
        if self._busy is None:
            d.callback(None)
        else:
            self._busy.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def _run(self, fn):
        return deferToThreadPool(self.reactor, self._pool, fn)

    def _step(self) -> None:
        self._call = None
        self._busy = defer.ensureDeferred(self._once())
        self._busy.addErrback(lambda f: log.failure("leadership step failed", f))
        self._busy.addBoth(self._next)

    async def _once(self) -> None:
        if self.role == ACTIVE:
            try:
                held = await self._run(self.lock.check)
                why = "the lock is no longer ours"
            except Exception as e:  # noqa: BLE001  (a lost connection is a lost lock)
                held, why = False, f"lost the connection holding the lock: {e}"
            if not held:
                log.error("leadership: stepping down to standby: {why}", why=why)
                await self._run(self.lock.release)
                await self._become(STANDBY)
        else:
            self.attempts += 1
            try:
                got = await self._run(self.lock.acquire)
            except Exception as e:  # noqa: BLE001  (database unreachable: stay standby, try again)
                log.warn("leadership: cannot take the {lock}: {error}", lock=self.lock.describe(), error=e)
                return
            if got and self.running:
                await self._become(ACTIVE)
            elif got:
                await self._run(self.lock.release)   # stopped while acquiring

    async def _become(self, role: str) -> None:
        self.role = role
        self.since = self.clock.seconds()
        log.info("leadership: now {role}", role=role)
        cb = self.on_active if role == ACTIVE else self.on_standby
        if cb is not None:
            try:
                await defer.maybeDeferred(cb)
            except Exception:  # noqa: BLE001
                log.failure("leadership: on_{role} failed", role=role)

    def _next(self, _) -> None:
        self._busy = None
        if self.running:
            delay = self.retry_s * (1 + self.jitter * self.rng.random())
            self._call = self.clock.callLater(delay, self._step)

    def stopService(self):  # noqa: N802
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.settled()
        if self.role == ACTIVE:
            await self._become(STANDBY)
        await self._run(self.lock.release)
        self._pool.stop()
