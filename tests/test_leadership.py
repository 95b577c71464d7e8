"""Leadership: one active daemon per database (PostgreSQL advisory lock, SQLite flock).

The retry loop runs on a `task.Clock`; the lock calls are real (a PostgreSQL on
127.0.0.1, files and a child process on this machine). The daemon test builds the
real service on loopback simulators and uses real time only to see a standby
become active once the lock is free.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import task

from gateway.leadership import (ACTIVE, LOCK_KEY, STANDBY, FileLock, Leadership, PgAdvisoryLock,
                                ProcessLock, lock_for_url)

RETRY_S = 5.0
JITTER = 0.2
FULL_PERIOD = RETRY_S * (1 + JITTER) + 0.01   # the longest a retry or a check waits


def _pair(reactor, make_lock):
    """Two daemons' leadership on one database, their retries on one Clock; events recorded."""
    clock = task.Clock()
    events: list[tuple[str, str]] = []

    def one(name):
        return Leadership(reactor, make_lock(), retry_s=RETRY_S, jitter=JITTER, clock=clock,
                          on_active=lambda: events.append((name, ACTIVE)),
                          on_standby=lambda: events.append((name, STANDBY)))
    return clock, one("a"), one("b"), events


async def _turn(clock, *leaders, by: float = 0.0):
    """Advance the Clock, then wait (for real) until every lock call it started has returned."""
    clock.advance(by)
    for lead in leaders:
        await lead.settled()


async def _start_both(clock, a, b):
    a.startService()
    b.startService()
    await _turn(clock, a, b)
    assert sorted([a.role, b.role]) == [ACTIVE, STANDBY], "exactly one daemon is active"
    return (a, b) if a.active else (b, a)


async def _stop(*leaders):
    for lead in leaders:
        if lead.running:
            await lead.stopService()


def _lock_holder_pid(url: str) -> int:
    e = sa.create_engine(url)
    try:
        with e.connect() as c:
            return c.execute(sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :hi AND objid = :lo AND objsubid = 1"),
                {"hi": (LOCK_KEY >> 32) & 0xFFFFFFFF, "lo": LOCK_KEY & 0xFFFFFFFF}).scalar_one()
    finally:
        e.dispose()


# --- PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_one_active_and_the_other_takes_over_when_the_leader_stops(reactor, pg_url):
    """Two daemons on one PostgreSQL database: exactly one is active and stays so while it
    holds the advisory lock; when it stops, it calls on_standby and the other is active
    after one retry period, not before."""
    clock, a, b, events = _pair(reactor, lambda: PgAdvisoryLock(pg_url))
    try:
        leader, other = await _start_both(clock, a, b)
        await _turn(clock, a, b, by=FULL_PERIOD)    # the leader checks, the other retries
        assert (leader.role, other.role) == (ACTIVE, STANDBY)
        assert other.attempts == 2

        await leader.stopService()
        assert leader.role == STANDBY
        await _turn(clock, other, by=FULL_PERIOD / 2)
        assert other.role == STANDBY, "not before its retry"
        await _turn(clock, other, by=FULL_PERIOD / 2)
        assert other.role == ACTIVE
        first = "a" if leader is a else "b"
        second = "b" if first == "a" else "a"
        assert events == [(first, ACTIVE), (first, STANDBY), (second, ACTIVE)]
    finally:
        await _stop(a, b)


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_leader_whose_connection_dies_steps_down_and_the_other_takes_over(reactor, pg_url):
    """The server ending the leader's session (as when it crashes or its link dies) frees the
    lock: within one period the leader finds its lock gone and steps down, and the standby
    becomes active; afterwards exactly one is active."""
    clock, a, b, events = _pair(reactor, lambda: PgAdvisoryLock(pg_url))
    try:
        leader, other = await _start_both(clock, a, b)
        admin = sa.create_engine(pg_url)
        with admin.connect() as c:
            # With a timeout it returns once the backend has exited (and freed the lock).
            assert c.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"),
                             {"p": _lock_holder_pid(pg_url)}).scalar_one()
        admin.dispose()
        await _turn(clock, a, b, by=FULL_PERIOD)
        assert (leader.role, other.role) == (STANDBY, ACTIVE)
        assert sorted(e[1] for e in events) == [ACTIVE, ACTIVE, STANDBY]
        await _turn(clock, a, b, by=FULL_PERIOD)    # the old leader retries: the lock is taken
        assert (leader.role, other.role) == (STANDBY, ACTIVE)
    finally:
        await _stop(a, b)


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_unreachable_stays_standby_and_keeps_trying(reactor):
    """A database that cannot be reached leaves the daemon standby, trying again each period
    (the loop survives the error)."""
    clock = task.Clock()
    lead = Leadership(reactor, PgAdvisoryLock("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                              connect_timeout_s=1), retry_s=RETRY_S, clock=clock)
    try:
        lead.startService()
        await _turn(clock, lead)
        await _turn(clock, lead, by=FULL_PERIOD)
        assert lead.role == STANDBY and lead.attempts == 2
    finally:
        await _stop(lead)


# --- SQLite: flock -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sqlite_flock_one_active_and_the_other_takes_over_when_the_leader_stops(reactor, tmp_path):
    """Two daemons on one SQLite file: one holds the flock on <file>.lock; stopping it frees
    the lock and the other is active after one retry period."""
    lock_path = str(tmp_path / "gateway.db.lock")
    clock, a, b, events = _pair(reactor, lambda: FileLock(lock_path))
    try:
        leader, other = await _start_both(clock, a, b)
        await _turn(clock, a, b, by=FULL_PERIOD)
        assert (leader.role, other.role) == (ACTIVE, STANDBY)
        await leader.stopService()
        await _turn(clock, other, by=FULL_PERIOD)
        assert other.role == ACTIVE and leader.role == STANDBY
        assert [e[1] for e in events] == [ACTIVE, STANDBY, ACTIVE]
    finally:
        await _stop(a, b)


@pytest_twisted.ensureDeferred
async def test_sqlite_flock_of_a_killed_process_is_freed(reactor, tmp_path):
    """A daemon process killed with SIGKILL holds the flock no longer: the standby here is
    refused while it lives and active one period after it dies."""
    lock_path = str(tmp_path / "gateway.db.lock")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gateway.leadership import FileLock; "
                               f"ok = FileLock({lock_path!r}).acquire(); print(ok, flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "True"
        clock = task.Clock()
        lead = Leadership(reactor, FileLock(lock_path), retry_s=RETRY_S, clock=clock)
        lead.startService()
        await _turn(clock, lead)
        assert lead.role == STANDBY
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        await _turn(clock, lead, by=FULL_PERIOD)
        assert lead.role == ACTIVE
        await lead.stopService()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


@pytest_twisted.ensureDeferred
async def test_sqlite_lock_file_replaced_under_the_leader_makes_it_step_down(reactor, tmp_path):
    """If the lock file is deleted (so another daemon can lock a new file of that name), the
    leader counts its lock as lost and steps down: never two active daemons for long."""
    lock_path = str(tmp_path / "gateway.db.lock")
    clock, a, b, events = _pair(reactor, lambda: FileLock(lock_path))
    try:
        leader, other = await _start_both(clock, a, b)
        os.unlink(lock_path)
        await _turn(clock, a, b, by=FULL_PERIOD)
        assert (leader.role, other.role) == (STANDBY, ACTIVE)
        assert [e[1] for e in events] == [ACTIVE, STANDBY, ACTIVE] or \
            [e[1] for e in events] == [ACTIVE, ACTIVE, STANDBY]   # the two happen in either order
    finally:
        await _stop(a, b)


def test_lock_chosen_from_the_database_url(tmp_path):
    """PostgreSQL URLs get the advisory lock, SQLite files a flock beside the file, in-memory
    SQLite a process lock; any other database is refused with a message."""
    assert isinstance(lock_for_url("postgresql+psycopg://gw@db/gw"), PgAdvisoryLock)
    f = lock_for_url(f"sqlite:///{tmp_path}/g.db")
    assert isinstance(f, FileLock) and f.path == f"{tmp_path}/g.db.lock"
    assert isinstance(lock_for_url("sqlite://"), ProcessLock)
    with pytest.raises(ValueError, match="PostgreSQL or SQLite"):
        lock_for_url("mysql://gw@db/gw")
    assert -(2 ** 63) <= LOCK_KEY < 2 ** 63


# --- the daemon -----------------------------------------------------------------------


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_standby_daemon_never_polls_the_core_until_it_becomes_active(reactor, tmp_path):
    """The real service (make_service, loopback simulators, SQLite) started while another
    daemon holds the database's lock: it stays standby, its flow never calls the core and
    `health` says "standby"; once the lock is free it becomes active and polls the core."""
    from gateway import config as configmod
    from gateway.service import make_service
    from tests.support import install, spec, wait_for

    p, keys, sims, cfg_path = await install(reactor, tmp_path, [spec("FS3401212026110001", 5)])
    with open(cfg_path, "a") as f:
        f.write("\n[ha]\nretry_s = 0.2\n")
    cfg = configmod.load(cfg_path)
    other = FileLock(lock_for_url(cfg.database_url).path)   # the other, active, daemon
    assert other.acquire()
    gw = make_service(cfg, reactor)
    try:
        gw.startService()

        async def tried_twice():
            return gw.leadership.attempts >= 2
        await wait_for(reactor, tried_twice, 30, "two tries for the lock")
        from gateway.rpc_api import Caller
        health = await gw.commands.call("health", {}, Caller("unix", "test"))
        assert health["role"] == STANDBY and health["role_since"]
        assert sims.core.api_requests == 0
        assert not any(t.running for t in gw.tickers.values())

        other.release()

        async def polled():
            return sims.core.api_requests > 0
        await wait_for(reactor, polled, 30, "the daemon, now active, to poll the core")
        assert gw.leadership.role == ACTIVE
        assert all(t.running for t in gw.tickers.values())
        health = await gw.commands.call("health", {}, Caller("unix", "test"))
        assert health["role"] == ACTIVE
    finally:
        other.release()
        if gw.running:
            await gw.stopService()
        await sims.stop()
