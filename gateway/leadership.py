"""Leadership: of the daemons sharing one database, one acts per lease (主), the others stand by (备).

Two daemons acting at once would both build a batch, both send BP01 and both load an
order, so acting is tied to a *lease*, a row of `leases`, and every transaction of
the flows is *fenced* by the lease's epoch:

- Taking a lease increments its `epoch` in the same transaction that names the new
  holder; a lease is taken only when it is free or expired by the database's clock
  (PostgreSQL `clock_timestamp()`; the daemons' clocks never decide expiry).
- The holder renews it every `renew_s`. It may act only until a local deadline,
  `lease_s - margin_s` after it *sent* its last successful renewal (a monotonic clock),
  which is before the database can let the lease expire: so a leader whose link is cut
  silently stands down by itself before anyone else may take over, and the next holder
  starts only after the old lease's end. Overlap is zero by construction, with `margin_s`
  for clock drift and for the time between a check and the bytes leaving.
- Every transaction of the flows (`FencedDatabase.run`) checks the epoch it holds
  against the database's, inside the transaction: a deposed leader's writes roll back
  (`Deposed`), and a result committed while the local deadline passed is not acted on.
  On PostgreSQL the check takes the lease's advisory lock in shared mode for the whole
  transaction, and taking the lease takes it exclusively: see `PgLease` for why that is
  correct under READ COMMITTED. On SQLite (one machine) a `flock` on `<db>.lock` still
  elects the leader and the epoch check is a write that takes SQLite's write lock.
- Each blocking call has a bound shorter than the lease: the lease's own calls run on a
  thread of their own under a deadline, flow transactions are cancelled when the local
  deadline passes and carry `statement_timeout`, `lock_timeout` and
  `idle_in_transaction_session_timeout`, connections TCP keepalives and a user timeout.

`[ha] mode = "single"` is one lease ("gateway") for everything; `"per-bank"` is one lease
per bank (that bank's flow: its core poll and loads, batches, refunds, pushes) plus
"core" (the scheduled retry times), so several daemons share the banks and take over
each other's.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import random
import socket
import threading
import time
from typing import Callable

from sqlalchemy import create_engine, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway.models import lease_terms, leases
from gateway.rules import iso

log = Logger()

ACTIVE = "active"
STANDBY = "standby"
SINGLE = "gateway"      # the lease of [ha] mode = "single"
CORE = "core"           # in per-bank mode: the scheduled retry times


class Deposed(Exception):
    """This daemon no longer holds the lease its work runs under: nothing of the step may happen."""


# The bound of one statement of a bulk transaction on PostgreSQL (10 minutes): a statement over
# every item of a million-item order takes seconds to tens of seconds, well over a lease.
BULK_STATEMENT_MS = 600_000


def lease_key(name: str) -> int:
    """The signed 64-bit advisory lock key of a lease: every daemon computes the same one."""
    return int.from_bytes(hashlib.sha256(b"subsidy-gateway lease " + name.encode()).digest()[:8],
                          "big", signed=True)


def default_holder() -> str:
    """Who we are, in the lease row and in pg_stat_activity: host, process, and a random tag
    (a restarted process with a recycled pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


# --- the fence ------------------------------------------------------------------------------


class Fence:
    """The epoch this daemon holds for one lease, and until when (monotonic) it may act on it."""

    def __init__(self, name: str, monotonic: Callable[[], float] = time.monotonic):
        self.name = name
        self.key = lease_key(name)
        self.monotonic = monotonic
        self.epoch: int | None = None
        self.deadline = -math.inf
        self.checker = None          # the lease's in-transaction check: checker(conn, fence, epoch)
        self._inflight: set[defer.Deferred] = set()

    def valid(self, epoch: int | None = None) -> bool:
        if self.epoch is None or (epoch is not None and epoch != self.epoch):
            return False
        return self.monotonic() < self.deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.monotonic()) if self.epoch is not None else 0.0

    def check(self, epoch: int | None = None) -> None:
        if not self.valid(epoch):
            raise Deposed(f"lease {self.name!r}: epoch {epoch if epoch is not None else self.epoch} "
                          f"is not held (or its time is up)")

    def check_in(self, conn, epoch: int, bulk: bool = False) -> None:
        """Inside a transaction: raise Deposed unless `epoch` is still the database's. `bulk`:
        a transaction whose statements grow with an order (its statements get a longer bound)."""
        self.check(epoch)
        if self.checker is not None:
            self.checker(conn, self, epoch, bulk)

    def grant(self, epoch: int, deadline: float) -> None:
        self.epoch, self.deadline = epoch, deadline

    def extend(self, deadline: float) -> None:
        self.deadline = max(self.deadline, deadline)

    def revoke(self) -> None:
        """Stand down: no new fenced work, and the fenced work in flight is cancelled (Deposed)."""
        self.epoch, self.deadline = None, -math.inf
        for d in list(self._inflight):
            d.cancel()

    def track(self, d: defer.Deferred) -> defer.Deferred:
        self._inflight.add(d)

        def done(r):
            self._inflight.discard(d)
            return r
        d.addBoth(done)
        return d


def pg_fence_check(conn, fence: Fence, epoch: int, *, statement_timeout_ms: int = 5000,
                   lock_timeout_ms: int = 2000, idle_timeout_ms: int = 5000) -> None:
    """The epoch check at the start of a flow transaction on PostgreSQL (two round trips).

    First the lease's advisory lock in shared mode, held to the transaction's end, then a
    fresh read of the epoch. Under READ COMMITTED each statement takes a new snapshot when it
    starts: the second statement starts after the lock was granted, and a takeover commits
    its increment while holding the same lock exclusively (PostgreSQL makes a commit visible
    before it releases the committer's locks), so the read sees every takeover that finished
    before we got the lock; and no takeover can commit until we end, since it waits for our
    shared lock. Hence: if this transaction commits, the epoch was ours from its check to its
    commit. Shared mode lets the leader's own transactions run side by side; nothing is
    written for the check (no row lock, no xid). The local timeouts bound every statement.
    """
    conn.execute(text(
        "SELECT set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true), "
        "set_config('idle_in_transaction_session_timeout', :it, true)"),
        {"st": str(statement_timeout_ms), "lt": str(lock_timeout_ms), "it": str(idle_timeout_ms)})
    conn.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": fence.key})
    now = conn.execute(select(leases.c.epoch).where(leases.c.name == fence.name)).scalar()
    if now != epoch:
        raise Deposed(f"lease {fence.name!r}: epoch {epoch} was superseded by {now}")


def sqlite_fence_check(conn, fence: Fence, epoch: int) -> None:
    """On SQLite the check is a write: it takes the database's write lock (pysqlite begins the
    transaction at the first write), which no other writer can take until we commit or roll
    back; so the epoch it matched stays the database's until this transaction ends."""
    n = conn.execute(update(leases).where(leases.c.name == fence.name, leases.c.epoch == epoch)
                     .values(epoch=leases.c.epoch)).rowcount
    if n != 1:
        raise Deposed(f"lease {fence.name!r}: epoch {epoch} was superseded")


# --- the leases --------------------------------------------------------------------------


_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"


class PgLease:
    """A lease row on PostgreSQL, taken and renewed on a dedicated connection (blocking calls).

    Taking it (one transaction): the row is updated only if it is free or expired by the
    database's clock, with the epoch incremented; then the sessions still holding the lease's
    advisory lock in shared mode (transactions of a deposed leader, frozen or late) are
    terminated, since a server that never notices a dead link would let them hold it forever;
    then the lock is taken exclusively, which waits until none of those transactions can still
    commit. Only then does the new epoch commit. Terminating needs the same database role (or
    pg_signal_backend); without it the takeover waits for the server to drop the dead sessions.
    """

    def __init__(self, url: str, name: str, holder: str, *, lease_s: float, connect_timeout_s: int = 3,
                 statement_timeout_ms: int = 2000, keepalives_idle_s: int = 2):
        self.url = url
        self.name = name
        self.key = lease_key(name)
        self.holder = holder
        self.lease_ms = int(lease_s * 1000)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self.keepalives_idle_s = keepalives_idle_s
        self._conn = None
        self._engine = None

    def describe(self) -> str:
        u = make_url(self.url).render_as_string(hide_password=True)
        return f"lease {self.name!r} on {u} ({self.lease_ms / 1000:g} s, database clock)"

    def checker(self, conn, fence: Fence, epoch: int, bulk: bool = False) -> None:
        # A flow's statements, its lock waits and its idle moments inside a transaction are
        # each bounded well inside the lease; the fence's deadline bounds the whole. A bulk
        # statement (a million items put in a batch, marked SENT, their results applied) takes
        # longer than a lease: its bound is BULK_STATEMENT_MS. That is safe: a takeover ends
        # every session holding the lease's lock before it commits the new epoch (`acquire`),
        # so a deposed leader's long statement cannot commit after it.
        bound = int(self.lease_ms * 0.75)
        pg_fence_check(conn, fence, epoch, statement_timeout_ms=BULK_STATEMENT_MS if bulk else bound,
                       lock_timeout_ms=2000, idle_timeout_ms=bound)

    def _connect(self):
        if self._conn is not None:
            return self._conn
        st = self.statement_timeout_ms
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={
            "connect_timeout": self.connect_timeout_s, "keepalives": 1,
            "keepalives_idle": self.keepalives_idle_s, "keepalives_interval": 1, "keepalives_count": 3,
            "tcp_user_timeout": st + 1000,
            "options": f"-c statement_timeout={st} -c lock_timeout={st} "
                       f"-c idle_in_transaction_session_timeout={st}",
            "application_name": f"gateway lease {self.name} {self.holder}"[:63]})
        try:
            conn = engine.connect()
        except Exception:
            engine.dispose()
            raise
        self._engine, self._conn = engine, conn
        return conn

    def abandon(self) -> None:
        """Forget a connection stuck in a call (its thread still holds it): the next call opens
        a new one. The old one is not closed from here: another thread is blocked in it."""
        self._conn, self._engine = None, None

    def acquire(self) -> int | None:
        """Take the lease if it is free or expired; the new epoch, or None."""
        conn = self._connect()
        try:
            with conn.begin():
                conn.execute(text("INSERT INTO leases (name, epoch) VALUES (:n, 0) ON CONFLICT DO NOTHING"),
                             {"n": self.name})
                row = conn.execute(text(
                    f"UPDATE leases SET epoch = epoch + 1, holder = :h, acquired_ms = {_NOW_MS}, "
                    f"expires_ms = {_NOW_MS} + :l WHERE name = :n AND (holder IS NULL OR expires_ms IS NULL "
                    f"OR expires_ms < {_NOW_MS}) RETURNING epoch, acquired_ms, expires_ms"),
                    {"h": self.holder, "l": self.lease_ms, "n": self.name}).one_or_none()
                if row is None:
                    return None
                hi, lo = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
                killed = conn.execute(text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 1000)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND classid = :hi AND objid = :lo "
                    "AND objsubid = 1 AND pid <> pg_backend_pid() "
                    # this gateway's database only: an advisory lock is per database, and another
                    # gateway on the same server holds the same key (found when the tests ran in
                    # parallel: a takeover in one database ended another's sessions)
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                    {"hi": hi, "lo": lo}).scalar()
                if killed:
                    log.warn("leadership: terminated {n} session(s) of the deposed holder of {lease}",
                             n=killed, lease=self.name)
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.key})
                conn.execute(insert(lease_terms).values(name=self.name, epoch=row.epoch, holder=self.holder,
                                                        acquired_ms=row.acquired_ms,
                                                        expires_ms=row.expires_ms))
                return int(row.epoch)
        except Exception:
            self.close()
            raise

    def renew(self, epoch: int) -> bool:
        """Push the expiry on by lease_s from the database's now; False if the lease is no longer
        ours or already expired (then it must be taken again, under a new epoch)."""
        conn = self._connect()
        try:
            with conn.begin():
                row = conn.execute(text(
                    f"UPDATE leases SET expires_ms = {_NOW_MS} + :l WHERE name = :n AND epoch = :e "
                    f"AND holder = :h AND expires_ms >= {_NOW_MS} RETURNING expires_ms"),
                    {"l": self.lease_ms, "n": self.name, "e": epoch, "h": self.holder}).one_or_none()
                if row is None:
                    return False
                conn.execute(update(lease_terms).where(lease_terms.c.name == self.name,
                                                       lease_terms.c.epoch == epoch)
                             .values(expires_ms=row.expires_ms))
                return True
        except Exception:
            self.close()
            raise

    def release(self, epoch: int | None) -> None:
        """Give the lease up at once (a clean stop): the next holder need not wait for expiry."""
        if epoch is None:
            self.close()
            return
        try:
            conn = self._connect()
            with conn.begin():
                conn.execute(text(f"UPDATE lease_terms SET released_ms = {_NOW_MS}, expires_ms = "
                                  f"LEAST(expires_ms, {_NOW_MS}) WHERE name = :n AND epoch = :e"),
                             {"n": self.name, "e": epoch})
                conn.execute(text(f"UPDATE leases SET holder = NULL, expires_ms = {_NOW_MS} "
                                  f"WHERE name = :n AND epoch = :e AND holder = :h"),
                             {"n": self.name, "e": epoch, "h": self.holder})
        finally:
            self.close()

    def close(self) -> None:
        conn, engine, self._conn, self._engine = self._conn, self._engine, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  (a connection already lost is closed too)
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


class LockLease:
    """A lease held by a lock of this machine (SQLite's flock, or the process for :memory:).

    The lock excludes; the epoch row is still incremented on each take (in the database, in
    the take's transaction) so the flows' transactions are fenced as on PostgreSQL. The lock
    has no expiry: a "renewal" checks that it is still ours.
    """

    def __init__(self, lock, url: str | None, name: str, holder: str):
        self.lock = lock
        self.url = url
        self.name = name
        self.holder = holder
        self._engine = None

    def describe(self) -> str:
        return f"lease {self.name!r} under the {self.lock.describe()}"

    def checker(self, conn, fence: Fence, epoch: int, bulk: bool = False) -> None:
        if self.url is not None:
            sqlite_fence_check(conn, fence, epoch)

    def _db(self):
        if self._engine is None:
            self._engine = create_engine(self.url, connect_args={"timeout": 5})
        return self._engine

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def acquire(self) -> int | None:
        if not self.lock.acquire():
            return None
        if self.url is None:
            return 1
        try:
            with self._db().begin() as conn:
                conn.execute(text("INSERT OR IGNORE INTO leases (name, epoch) VALUES (:n, 0)"), {"n": self.name})
                conn.execute(update(leases).where(leases.c.name == self.name).values(
                    epoch=leases.c.epoch + 1, holder=self.holder, acquired_ms=self._now_ms(), expires_ms=None))
                epoch = conn.execute(select(leases.c.epoch).where(leases.c.name == self.name)).scalar_one()
                conn.execute(insert(lease_terms).values(name=self.name, epoch=epoch, holder=self.holder,
                                                        acquired_ms=self._now_ms()))
                return int(epoch)
        except Exception:
            self.lock.release()
            raise

    def renew(self, epoch: int) -> bool:
        return self.lock.check()

    def release(self, epoch: int | None) -> None:
        try:
            if epoch is not None and self.url is not None and self.lock.check():
                with self._db().begin() as conn:
                    conn.execute(update(lease_terms).where(lease_terms.c.name == self.name,
                                                           lease_terms.c.epoch == epoch)
                                 .values(released_ms=self._now_ms()))
                    conn.execute(update(leases).where(leases.c.name == self.name, leases.c.epoch == epoch)
                                 .values(holder=None))
        finally:
            self.lock.release()
            self.close()

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def lease_for_url(url: str, name: str = SINGLE, holder: str | None = None, *, lease_s: float = 8.0,
                  statement_timeout_ms: int = 2000):
    """The lease *name* on the database named by *url*; ValueError for other databases."""
    holder = holder or default_holder()
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        return PgLease(url, name, holder, lease_s=lease_s, statement_timeout_ms=statement_timeout_ms)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:" or "mode=memory" in url:
            return LockLease(ProcessLock(), None, name, holder)
        suffix = ".lock" if name == SINGLE else f".{name}.lock"
        return LockLease(FileLock(os.path.abspath(u.database) + suffix), url, name, holder)
    raise ValueError(f"leadership needs PostgreSQL or SQLite, not {u.get_backend_name()}")


def lock_for_url(url: str):
    """The machine-local lock of an SQLite database (kept for operators' tools and tests)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:" or "mode=memory" in url:
            return ProcessLock()
        return FileLock(os.path.abspath(u.database) + ".lock")
    raise ValueError(f"no machine-local lock for {u.get_backend_name()}")


_WORK_DIRS: dict[str, FileLock] = {}


def claim_work_dir(path: str) -> None:
    """Hold `<work dir>/.owner.lock` for this process's life: two daemons on one machine never
    share a work folder, where they would write the same files (a batch built twice under two
    keys, then refused by the bank). Daemons on other machines need their own folder too: the
    README says so. Claimed once per process (a process may build the service more than once)."""
    path = os.path.abspath(path)
    if path in _WORK_DIRS:
        return
    os.makedirs(path, exist_ok=True)
    lock = FileLock(os.path.join(path, ".owner.lock"))
    if not lock.acquire():
        raise RuntimeError(f"work folder {path} is in use by another daemon (pid in "
                           f"{lock.path}): give each daemon its own [work] dir")
    _WORK_DIRS[path] = lock


# --- the service ------------------------------------------------------------------------------


def _in_thread(reactor, fn, *args) -> defer.Deferred:
    """Run a blocking lease call on a daemon thread of its own: a call stuck on a dead link
    keeps only its thread, never the next call (nor the process's exit)."""
    d = defer.Deferred()

    def work():
        try:
            r = fn(*args)
        except BaseException as e:  # noqa: BLE001
            # bound now: Python deletes `e` when the except clause ends, before the reactor runs this
            reactor.callFromThread(lambda e=e: d.called or d.errback(e))
        else:
            reactor.callFromThread(lambda: d.called or d.callback(r))
    threading.Thread(target=work, name="gateway-lease", daemon=True).start()
    return d


class Leadership(service.MultiService):
    """Holds one lease while it can; `role` is "active" (主) or "standby" (备).

    Its children are what runs under the lease (a bank's flow, the scheduler): they run
    only while it is active, not while it merely runs. On taking the lease they are started,
    then `on_active()` is called; on losing, letting go of or outliving it they are stopped
    (together) and their stops waited for, then `on_standby()` is called (it may return a
    Deferred, waited for too), all before the lease is touched again: a step still in flight
    here must end before this daemon takes a new epoch. On stop, an active daemon stands
    down that way first and releases the lease after. A child added while active starts at
    once; a child removed is stopped (removeService's Deferred fires when it has).
    """

    def __init__(self, reactor, lease, *, retry_s: float = 2.0, lease_s: float = 8.0,
                 margin_s: float = 2.0, renew_s: float | None = None, jitter: float = 0.2,
                 clock=None, monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, on_active: Callable | None = None,
                 on_standby: Callable | None = None, name: str | None = None,
                 patience: float = 1.0):
        if margin_s >= lease_s:
            raise ValueError("margin_s must be shorter than lease_s")
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.clock = clock or reactor
        self.lease = lease
        self.retry_s = retry_s * patience   # a lease this daemon does not prefer: tried less often
        self.patience = patience
        self.lease_s = lease_s
        self.margin_s = margin_s
        self.renew_s = renew_s if renew_s is not None else lease_s / 4
        self.jitter = jitter
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.on_active = on_active
        self.on_standby = on_standby
        self.lease_name = name or getattr(lease, "name", SINGLE)
        self.fence = Fence(self.lease_name, monotonic)
        self.fence.checker = getattr(lease, "checker", None)
        self.role = STANDBY
        self.since = self.clock.seconds()
        self.epoch: int | None = None
        self.attempts = 0
        self.terms: list[dict] = []      # this process's active intervals, for tests and health
        self.setName(f"leadership-{self.lease_name}")
        self._call = None
        self._expiry = None
        self._busy: defer.Deferred | None = None

    @property
    def active(self) -> bool:
        return self.role == ACTIVE

    def status(self) -> dict:
        return {"role": self.role, "since": iso(self.since), "lease": self.lease_name,
                "epoch": self.epoch, "lock": self.lease.describe(),
                "acts_for_s": round(self.fence.remaining(), 3) if self.active else 0.0}

    # --- the children: started with the lease, not with the service ---------------------
    def privilegedStartService(self) -> None:  # noqa: N802
        service.Service.privilegedStartService(self)

    def addService(self, child) -> None:  # noqa: N802
        if child.name is not None:
            if child.name in self.namedServices:
                raise RuntimeError(f"cannot have two services named {child.name!r} under {self.name}")
            self.namedServices[child.name] = child
        self.services.append(child)
        if self.running and self.active:
            child.privilegedStartService()
            child.startService()

    def removeService(self, child):  # noqa: N802
        if child.name is not None:
            del self.namedServices[child.name]
        self.services.remove(child)
        return child.stopService() if child.running else None

    def _start_children(self) -> None:
        for child in self:
            if not child.running:
                child.startService()

    def _stop_children(self) -> defer.Deferred:
        return defer.DeferredList([defer.maybeDeferred(c.stopService) for c in reversed(list(self))
                                   if c.running])

    def startService(self) -> None:  # noqa: N802
        service.Service.startService(self)
        self.since = self.clock.seconds()
        log.info("leadership: standby, trying for the {lease}", lease=self.lease.describe())
        first = 0 if self.patience <= 1 else self.retry_s
        self._call = self.clock.callLater(first, self._step)

    def settled(self) -> defer.Deferred:
        """Fires once no lease call is in flight (tests drive the loop with a Clock)."""
        d = defer.Deferred()
        if self._busy is None:
            d.callback(None)
        else:
            self._busy.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def _call_lease(self, fn, *args, timeout: float):
        """A lease call bounded by `timeout` seconds; a call that outlives it abandons its
        connection and fails (TimeoutError)."""
        d = _in_thread(self.reactor, fn, *args)
        timer = self.reactor.callLater(max(timeout, 0.05), lambda: d.called or d.errback(
            TimeoutError(f"lease call took longer than {timeout:.1f} s")))

        def done(r):
            if timer.active():
                timer.cancel()
            return r
        d.addBoth(done)

        def abandon(f):
            if f.check(TimeoutError):
                self.lease.abandon()
            return f
        d.addErrback(abandon)
        return d

    def _step(self) -> None:
        self._call = None
        self._busy = defer.ensureDeferred(self._once())
        self._busy.addErrback(lambda f: log.failure("leadership step failed", f))
        self._busy.addBoth(self._next)

    async def _once(self) -> None:
        if self.role == ACTIVE:
            await self._renew()
        else:
            await self._acquire()

    async def _acquire(self) -> None:
        self.attempts += 1
        t0 = self.monotonic()
        try:
            epoch = await self._call_lease(self.lease.acquire, timeout=self.lease_s - self.margin_s)
        except Exception as e:  # noqa: BLE001  (database unreachable: stay standby, try again)
            log.warn("leadership: cannot take the {lease}: {error}", lease=self.lease.describe(), error=e)
            return
        if epoch is None:
            return
        if not self.running:
            await self._call_lease(self.lease.release, epoch, timeout=self.lease_s)
            return
        deadline = t0 + self.lease_s - self.margin_s
        if self.monotonic() >= deadline:
            log.warn("leadership: took {lease} epoch {epoch} too slowly to act on it",
                     lease=self.lease_name, epoch=epoch)
            return
        self.epoch = epoch
        self.fence.grant(epoch, deadline)
        self._arm_expiry()
        await self._become(ACTIVE)

    async def _renew(self) -> None:
        epoch = self.epoch
        t0 = self.monotonic()
        try:
            ok = await self._call_lease(self.lease.renew, epoch,
                                        timeout=min(self.renew_s, max(self.fence.remaining(), 0.05)))
        except Exception as e:  # noqa: BLE001  (keep trying until the local deadline)
            log.warn("leadership: cannot renew {lease} epoch {epoch} ({left:.1f} s left): {error}",
                     lease=self.lease_name, epoch=epoch, left=self.fence.remaining(), error=e)
            return
        if self.epoch != epoch or self.role != ACTIVE or self.fence.epoch != epoch:
            return     # stood down (or the fence revoked) while the call was out
        if not ok:
            await self._stand_down(f"lease {self.lease_name} epoch {epoch} is no longer ours")
            return
        self.fence.extend(t0 + self.lease_s - self.margin_s)
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self.clock.callLater(max(self.fence.remaining(), 0), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if self.role != ACTIVE:
            return
        if self.fence.valid():      # renewed meanwhile
            self._arm_expiry()
            return
        log.error("leadership: lease {lease} epoch {epoch} not renewed in time: standing down",
                  lease=self.lease_name, epoch=self.epoch)
        self.fence.revoke()        # fenced calls in flight fail now, not when their link wakes
        if self._busy is None:
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None
            self._busy = defer.ensureDeferred(self._stand_down("lease expired"))
            self._busy.addErrback(lambda f: log.failure("leadership stand-down failed", f))
            self._busy.addBoth(self._next)
        # else: the step in flight (a renewal waiting on a dead link) ends by its timeout and
        # the next step stands down (the role is still active, the fence revoked).

    async def _stand_down(self, why: str) -> None:
        log.error("leadership: stepping down to standby: {why}", why=why)
        self.fence.revoke()
        await self._become(STANDBY)

    async def _become(self, role: str) -> None:
        now = self.clock.seconds()
        if role == ACTIVE:
            self.terms.append({"epoch": self.epoch, "from": time.time(), "to": None})
        elif self.terms and self.terms[-1]["to"] is None:
            self.terms[-1]["to"] = time.time()
        self.role = role
        self.since = now
        # One structured line per change, with the wall time: tests read each daemon's active
        # intervals from these.
        log.info("leadership: now {role} for {lease} epoch {epoch} at {at:.3f}", role=role,
                 lease=self.lease_name, epoch=self.epoch, at=time.time())
        if role == STANDBY:
            self.epoch = None
            await self._stop_children()
        elif self.running:
            self._start_children()
        cb = self.on_active if role == ACTIVE else self.on_standby
        if cb is not None:
            try:
                await defer.maybeDeferred(cb)
            except Exception:  # noqa: BLE001
                log.failure("leadership: on_{role} failed", role=role)

    def _next(self, _) -> None:
        self._busy = None
        if not self.running:
            return
        if self.role == ACTIVE and not self.fence.valid():
            self._busy = defer.ensureDeferred(self._stand_down("lease expired"))
            self._busy.addErrback(lambda f: log.failure("leadership stand-down failed", f))
            self._busy.addBoth(self._next)
            return
        base = self.renew_s if self.role == ACTIVE else self.retry_s
        delay = base * (1 + self.jitter * self.rng.random())
        self._call = self.clock.callLater(delay, self._step)

    def stopService(self):  # noqa: N802
        service.Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.settled()
        epoch = self.epoch if self.role == ACTIVE else None
        if self.role == ACTIVE:
            await self._become(STANDBY)       # the children (flows) finish their step first
        else:
            await self._stop_children()       # none should run; none is left running
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self.fence.revoke()
        try:
            await self._call_lease(self.lease.release, epoch, timeout=self.lease_s)
        except Exception as e:  # noqa: BLE001  (it expires by itself)
            log.warn("leadership: could not release {lease}: {error}", lease=self.lease_name, error=e)


class LeaseSet:
    """The daemon's leases seen as one, for `health` and tests: active if it holds any."""

    def __init__(self, leaders: dict[str, Leadership]):
        self.leaders = leaders

    @property
    def role(self) -> str:
        return ACTIVE if self.active else STANDBY

    @property
    def active(self) -> bool:
        return any(lead.active for lead in self.leaders.values())

    @property
    def attempts(self) -> int:
        return sum(lead.attempts for lead in self.leaders.values())

    def status(self) -> dict:
        held = [lead for lead in self.leaders.values() if lead.active]
        since = max((lead.since for lead in (held or self.leaders.values())), default=0.0)
        return {"role": self.role, "since": iso(since),
                "leases": {name: lead.status() for name, lead in self.leaders.items()}}

    def __iter__(self):
        return iter(self.leaders.values())
