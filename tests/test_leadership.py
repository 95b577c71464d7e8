"""Leadership: leases with an epoch (the fencing token) on PostgreSQL, flock + epoch on SQLite.

The loop runs on a `task.Clock`, and the holder's deadline on a monotonic clock read from
the same Clock; the lease calls are real (a PostgreSQL on 127.0.0.1, files and a child
process on this machine). Expiry by the database's clock is stood for by moving the
lease row's `expires_ms` into the past, so no test waits for a lease to run out.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, task, threads

from gateway import db as dbmod
from gateway.leadership import (ACTIVE, CORE, SINGLE, STANDBY, Deposed, Fence, FileLock, Leadership,
                                LockLease, PgLease, ProcessLock, claim_work_dir, lease_for_url,
                                lease_key, lock_for_url)

RETRY_S = 2.0
LEASE_S = 8.0
MARGIN_S = 2.0
JITTER = 0.2
FULL_PERIOD = RETRY_S * (1 + JITTER) + 0.01   # the longest a standby waits between tries


def _migrated(url: str) -> str:
    dbmod.upgrade(url)
    return url


def _leader(reactor, clock, lease, events=None, tag="x", **kw):
    return Leadership(reactor, lease, retry_s=RETRY_S, lease_s=LEASE_S, margin_s=MARGIN_S,
                      jitter=JITTER, clock=clock, monotonic=clock.seconds,
                      on_active=lambda: events is not None and events.append((tag, ACTIVE)),
                      on_standby=lambda: events is not None and events.append((tag, STANDBY)), **kw)


def _pair(reactor, make_lease):
    """Two daemons' leadership on one database, their loops on one Clock; events recorded."""
    clock = task.Clock()
    events: list[tuple[str, str]] = []
    return clock, _leader(reactor, clock, make_lease("a"), events, "a"), \
        _leader(reactor, clock, make_lease("b"), events, "b"), events


async def _turn(clock, *leaders, by: float = 0.0):
    """Advance the Clock, then wait (for real) until every lease call it started has returned."""
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


def _sql(url: str, sql: str, **params):
    e = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with e.connect() as c:
            r = c.execute(sa.text(sql), params)
            return [tuple(x) for x in r] if r.returns_rows else r.rowcount
    finally:
        e.dispose()


def _expire(url: str, name: str = SINGLE) -> None:
    """Stand for the lease running out on the database's clock."""
    assert _sql(url, "UPDATE leases SET expires_ms = 0 WHERE name = :n", n=name) == 1


def _pg(url, holder, **kw):
    return PgLease(url, SINGLE, holder, lease_s=LEASE_S, **kw)


class _Probe:
    """A table the fenced transactions write to, so a test can see which of them committed."""

    def __init__(self, url):
        self.url = url
        _sql(url, "CREATE TABLE probe (v integer)")

    def values(self) -> list[int]:
        return sorted(r[0] for r in _sql(self.url, "SELECT v FROM probe"))


def _write(v):
    return lambda conn: conn.execute(sa.text("INSERT INTO probe (v) VALUES (:v)"), {"v": v})


# --- PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_one_active_and_the_other_takes_over_when_the_leader_stops(reactor, pg_url):
    """Two daemons on one PostgreSQL database: exactly one holds the lease and keeps it by
    renewing; stopping it releases the lease (on_standby first), and the other takes it at
    its next try, under the next epoch."""
    url = _migrated(pg_url)
    clock, a, b, events = _pair(reactor, lambda tag: _pg(url, tag))
    try:
        leader, other = await _start_both(clock, a, b)
        first_epoch = leader.epoch
        for _ in range(4):                                   # 4 renewals, one lease's worth
            await _turn(clock, a, b, by=LEASE_S / 4 * 1.21)
        assert (leader.role, other.role) == (ACTIVE, STANDBY)
        assert other.attempts >= 2 and leader.fence.valid()

        await leader.stopService()
        assert leader.role == STANDBY and not leader.fence.valid()
        await _turn(clock, other, by=FULL_PERIOD)
        assert other.role == ACTIVE and other.epoch == first_epoch + 1
        first, second = ("a", "b") if leader is a else ("b", "a")
        assert events == [(first, ACTIVE), (first, STANDBY), (second, ACTIVE)]
        terms = _sql(url, "SELECT epoch, holder, released_ms IS NOT NULL FROM lease_terms ORDER BY epoch")
        assert terms == [(first_epoch, first, True), (first_epoch + 1, second, False)]
    finally:
        await _stop(a, b)


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_a_lease_is_taken_only_once_the_database_says_it_expired(reactor, pg_url):
    """The standby cannot take a lease the database still counts as running, however long it
    tries; once the row's expiry is past by the database's clock it takes it with the epoch
    incremented, and the old holder's next renewal is refused, so it stands down."""
    url = _migrated(pg_url)
    clock, a, b, events = _pair(reactor, lambda tag: _pg(url, tag))
    try:
        leader, other = await _start_both(clock, a, b)
        e0 = leader.epoch
        # The leader's loop is frozen: it neither renews nor stands down. Both its timers go:
        # with its expiry left armed it stood down at the Clock's 6 s, went back to trying as a
        # standby, and now and then took the expired lease itself (this test was flaky so).
        leader._call.cancel()
        leader._expiry.cancel()
        for _ in range(3):
            await _turn(clock, other, leader, by=FULL_PERIOD)
        assert other.role == STANDBY and leader.role == ACTIVE
        _expire(url)
        await _turn(clock, other, leader, by=FULL_PERIOD)
        assert other.role == ACTIVE and other.epoch == e0 + 1
        assert not await defer.ensureDeferred(_renews(leader))
    finally:
        await _stop(a, b)


async def _renews(lead) -> bool:
    return await lead._call_lease(lead.lease.renew, lead.epoch, timeout=5)


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_a_deposed_leaders_transactions_roll_back(reactor, pg_url):
    """The fencing token: a transaction run through FencedDatabase under epoch e commits while
    e is the database's epoch; once another daemon took the lease (e+1), the same leader's
    next transaction raises Deposed and writes nothing, although its local deadline has not
    passed (a daemon that does not know it lost the lease cannot write)."""
    url = _migrated(pg_url)
    probe = _Probe(url)
    database = dbmod.Database(reactor, dbmod.make_engine(url))
    database.start()
    a, b = _pg(url, "a"), _pg(url, "b")
    try:
        fence = Fence(SINGLE)
        fence.checker = a.checker
        fence.grant(a.acquire(), math.inf)
        fenced = dbmod.FencedDatabase(database, fence)
        await fenced.run(_write(1))
        _expire(url)
        assert b.acquire() == fence.epoch + 1
        with pytest.raises(Deposed, match="superseded"):
            await fenced.run(_write(2))
        assert probe.values() == [1]
    finally:
        a.close()
        b.close()
        database.stop()


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_takeover_ends_a_deposed_leaders_open_transaction(reactor, pg_url):
    """A deposed leader's transaction that passed the check and then hangs (its link frozen, the
    server never told) cannot commit after the takeover: taking the lease terminates the
    session that holds the lease's lock in shared mode and only then commits the new epoch;
    the hanging transaction's commit fails, and the takeover takes bounded time."""
    url = _migrated(pg_url)
    probe = _Probe(url)
    a, b = _pg(url, "a"), _pg(url, "b")
    fence = Fence(SINGLE)
    fence.grant(a.acquire(), math.inf)
    engine = sa.create_engine(url)
    conn = engine.connect()
    try:
        tx = conn.begin()
        a.checker(conn, fence, fence.epoch)      # checked: holds the lock in shared mode
        _write(7)(conn)
        _expire(url)
        started = reactor.seconds()
        got = await defer.ensureDeferred(_blocking(reactor, b.acquire))
        assert got == fence.epoch + 1
        assert reactor.seconds() - started < 5
        with pytest.raises(sa.exc.DBAPIError):
            tx.commit()
        assert probe.values() == []
    finally:
        conn.invalidate()
        engine.dispose()
        a.close()
        b.close()


async def _blocking(reactor, fn):
    from twisted.internet.threads import deferToThread
    return await deferToThread(fn)


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_a_leader_that_cannot_renew_stands_down_before_its_lease_can_end(reactor, pg_url):
    """A leader whose renewals hang (a frozen link) stands down by itself at lease_s - margin_s
    after its last renewal was sent, by its own monotonic clock, without waiting for the
    database: the fence is revoked then, and a fenced call still in flight fails Deposed
    at that moment instead of whenever its link wakes up."""
    url = _migrated(pg_url)
    gate = threading.Event()

    class Frozen(PgLease):
        frozen = False

        def renew(self, epoch):
            if self.frozen:
                gate.wait(30)
                raise ConnectionError("link frozen")
            return super().renew(epoch)

    clock = task.Clock()
    events = []
    lease = Frozen(url, SINGLE, "a", lease_s=LEASE_S)
    lead = _leader(reactor, clock, lease, events, "a")
    database = dbmod.Database(reactor, dbmod.make_engine(url))
    database.start()
    hung = threading.Event()
    try:
        lead.startService()
        await _turn(clock, lead)
        assert lead.active
        taken_at = clock.seconds()
        lease.frozen = True
        fenced = dbmod.FencedDatabase(database, lead.fence)
        in_flight = fenced.run(lambda conn: hung.wait(30))
        clock.advance(LEASE_S / 4 * 1.21)         # a renewal goes out and hangs
        clock.advance(LEASE_S - MARGIN_S - clock.seconds() + taken_at - 0.01)
        assert lead.active, "not before its deadline"
        clock.advance(0.02)
        assert not lead.fence.valid()
        assert in_flight.called, "failed at the deadline, not when its link wakes"
        with pytest.raises(Deposed):
            await in_flight
        hung.set()
        gate.set()
        await lead.settled()
        await _turn(clock, lead, by=0.01)
        assert lead.role == STANDBY and events == [("a", ACTIVE), ("a", STANDBY)]
        # the database still counts the lease as running: nobody else could have taken it yet
        assert _sql(url, f"SELECT expires_ms > {_now_ms()} FROM leases") == [(True,)]
    finally:
        gate.set()
        hung.set()
        await _stop(lead)
        database.stop()


def _now_ms() -> str:
    return "(extract(epoch from clock_timestamp()) * 1000)::bigint"


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_unreachable_stays_standby_and_keeps_trying(reactor):
    """A database that cannot be reached leaves the daemon standby, trying again each period
    (the loop survives the error)."""
    clock = task.Clock()
    lead = _leader(reactor, clock, PgLease("postgresql+psycopg://nobody@127.0.0.1:1/none", SINGLE, "a",
                                           lease_s=LEASE_S, connect_timeout_s=1))
    try:
        lead.startService()
        await _turn(clock, lead)
        await _turn(clock, lead, by=FULL_PERIOD)
        assert lead.role == STANDBY and lead.attempts == 2
    finally:
        await _stop(lead)


# --- SQLite: flock + epoch --------------------------------------------------------------


def _flock_lease(url, path, tag):
    return LockLease(FileLock(path), url, SINGLE, tag)


@pytest_twisted.ensureDeferred
async def test_sqlite_flock_one_active_and_the_other_takes_over_when_the_leader_stops(reactor, tmp_path):
    """Two daemons on one SQLite file: one holds the flock on <file>.lock; stopping it frees
    the lock and the other is active after one retry period, under the next epoch."""
    url = _migrated(f"sqlite:///{tmp_path}/gateway.db")
    lock_path = str(tmp_path / "gateway.db.lock")
    clock, a, b, events = _pair(reactor, lambda tag: _flock_lease(url, lock_path, tag))
    try:
        leader, other = await _start_both(clock, a, b)
        e0 = leader.epoch
        await _turn(clock, a, b, by=FULL_PERIOD)
        assert (leader.role, other.role) == (ACTIVE, STANDBY)
        await leader.stopService()
        await _turn(clock, other, by=FULL_PERIOD)
        assert other.role == ACTIVE and leader.role == STANDBY and other.epoch == e0 + 1
        assert [e[1] for e in events] == [ACTIVE, STANDBY, ACTIVE]
    finally:
        await _stop(a, b)


@pytest_twisted.ensureDeferred
async def test_the_lease_renews_while_the_reactors_thread_pool_is_full(reactor, tmp_path):
    """Bulk work saturating the reactor's shared thread pool (deferToThread: an adapter judging
    or parsing a 100,000-transfer report, every worker busy) never delays a renewal: each lease
    call runs on a thread of its own, so the leader renews on every period and stays active,
    one term, while every worker of the pool is held. Fails (the renewal waits for a worker,
    times out, the lease runs out: standby) if the lease's calls go through deferToThread."""
    url = _migrated(f"sqlite:///{tmp_path}/gateway.db")
    clock = task.Clock()
    lead = _leader(reactor, clock, _flock_lease(url, str(tmp_path / "gateway.db.lock"), "a"))
    pool = reactor.getThreadPool()
    release = threading.Event()
    held = [threads.deferToThread(release.wait, 30) for _ in range(pool.max + 2)]
    try:
        lead.startService()
        await _turn(clock, lead)
        assert lead.role == ACTIVE
        renewals = 0
        for _ in range(4 * math.ceil(LEASE_S / lead.renew_s)):    # four lease lengths
            await _turn(clock, lead, by=lead.renew_s * (1 + JITTER) + 0.01)
            renewals += 1
            assert lead.role == ACTIVE, f"stood down after {renewals} renewal periods"
        assert len(lead.terms) == 1 and not release.is_set()
    finally:
        release.set()
        await defer.DeferredList(held)
        await _stop(lead)


@pytest_twisted.ensureDeferred
async def test_sqlite_a_stale_epoch_cannot_write(reactor, tmp_path):
    """SQLite gets the epoch check too: a transaction fenced with an epoch the database no
    longer holds raises Deposed and writes nothing; with the current epoch it commits."""
    url = _migrated(f"sqlite:///{tmp_path}/gateway.db")
    _sql(url, "CREATE TABLE probe (v integer)")
    database = dbmod.Database(reactor, dbmod.make_engine(url))
    database.start()
    first = _flock_lease(url, str(tmp_path / "gateway.db.lock"), "a")
    try:
        fence = Fence(SINGLE)
        fence.checker = first.checker
        fence.grant(first.acquire(), math.inf)
        fenced = dbmod.FencedDatabase(database, fence)
        await fenced.run(_write(1))
        first.release(fence.epoch)
        second = _flock_lease(url, str(tmp_path / "gateway.db.lock"), "b")
        assert second.acquire() == fence.epoch + 1
        with pytest.raises(Deposed):
            await fenced.run(_write(2))
        assert sorted(r[0] for r in _sql(url, "SELECT v FROM probe")) == [1]
        second.release(fence.epoch + 1)
    finally:
        database.stop()


@pytest_twisted.ensureDeferred
async def test_sqlite_flock_of_a_killed_process_is_freed(reactor, tmp_path):
    """A daemon process killed with SIGKILL holds the flock no longer: the standby here is
    refused while it lives and active one period after it dies."""
    url = _migrated(f"sqlite:///{tmp_path}/gateway.db")
    lock_path = str(tmp_path / "gateway.db.lock")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from gateway.leadership import FileLock; "
                               f"ok = FileLock({lock_path!r}).acquire(); print(ok, flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "True"
        clock = task.Clock()
        lead = _leader(reactor, clock, _flock_lease(url, lock_path, "a"))
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
    leader counts its lease as lost at its next renewal and steps down."""
    url = _migrated(f"sqlite:///{tmp_path}/gateway.db")
    lock_path = str(tmp_path / "gateway.db.lock")
    clock, a, b, events = _pair(reactor, lambda tag: _flock_lease(url, lock_path, tag))
    try:
        leader, other = await _start_both(clock, a, b)
        os.unlink(lock_path)
        await _turn(clock, a, b, by=FULL_PERIOD)
        assert (leader.role, other.role) == (STANDBY, ACTIVE)
    finally:
        await _stop(a, b)


def test_lease_chosen_from_the_database_url(tmp_path):
    """PostgreSQL URLs get a lease row with expiry, SQLite files a flock beside the file (one
    per lease in per-bank mode), in-memory SQLite a process lock; any other database is
    refused with a message; every daemon computes the same lock key per lease name."""
    assert isinstance(lease_for_url("postgresql+psycopg://gw@db/gw", SINGLE, "a"), PgLease)
    f = lease_for_url(f"sqlite:///{tmp_path}/g.db", SINGLE, "a")
    assert isinstance(f, LockLease) and f.lock.path == f"{tmp_path}/g.db.lock"
    assert lease_for_url(f"sqlite:///{tmp_path}/g.db", "bank-1", "a").lock.path == f"{tmp_path}/g.db.bank-1.lock"
    assert isinstance(lease_for_url("sqlite://", SINGLE, "a").lock, ProcessLock)
    with pytest.raises(ValueError, match="PostgreSQL or SQLite"):
        lease_for_url("mysql://gw@db/gw")
    assert lease_key(CORE) == lease_key(CORE) != lease_key(SINGLE)
    assert -(2 ** 63) <= lease_key(SINGLE) < 2 ** 63


def test_a_work_folder_is_claimed_by_one_daemon(tmp_path):
    """Two daemons never share a work folder on one machine: a second process claiming it is
    refused naming the folder (the claim is held by this process for its life)."""
    work = tmp_path / "work"
    claim_work_dir(str(work))
    claim_work_dir(str(work))          # the same process may build its service again
    out = subprocess.run([sys.executable, "-c", "from gateway.leadership import claim_work_dir; "
                          f"claim_work_dir({str(work)!r})"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "in use by another daemon" in out.stderr


def test_margin_must_leave_room_in_the_lease(tmp_path):
    """[ha] margin_s more than half the lease is refused naming the key; mode is one of the two."""
    from gateway import config as configmod
    from simulators import harness
    p = harness.Paths(tmp_path / "inst")
    cfg_path = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3))
    base = cfg_path.read_text()
    cfg_path.write_text(base + '\n[ha]\nmode = "per-bank"\nlease_s = 10\nmargin_s = 2\nprefer = ["x"]\n')
    cfg = configmod.load(cfg_path)
    assert (cfg.ha_mode, cfg.ha_lease_s, cfg.ha_margin_s, cfg.ha_prefer) == ("per-bank", 10.0, 2.0, ("x",))
    cfg_path.write_text(base + '\n[ha]\nmode = "both"\nlease_s = 3\nmargin_s = 2\n')
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(cfg_path)
    text = str(e.value)
    assert "ha.margin_s" in text and "ha.mode" in text


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


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_per_bank_mode_makes_a_core_lease_and_one_per_bank(reactor, tmp_path):
    """[ha] mode = "per-bank": the service holds "core" and one lease per bank; each bank's
    flow is fenced by its own bank's lease, holding the bank's lease is what starts it, and
    `health` lists each lease with its role and epoch."""
    from gateway import config as configmod
    from gateway.service import make_service
    from simulators import harness
    from tests.support import install, spec, wait_for

    p, keys, sims, cfg_path = await install(reactor, tmp_path, [spec("FS3401212026110002", 5)])
    with open(cfg_path, "a") as f:
        f.write('\n[ha]\nretry_s = 0.2\nmode = "per-bank"\n')
    cfg = configmod.load(cfg_path)
    gw = make_service(cfg, reactor)
    try:
        assert sorted(lead.lease_name for lead in gw.leadership) == sorted([CORE, harness.BANK_ID])
        bank_lead = gw.leadership.leaders[harness.BANK_ID]
        assert gw.flows[harness.BANK_ID].db.fence is bank_lead.fence
        gw.startService()

        async def polled():
            return sims.core.api_requests > 0
        await wait_for(reactor, polled, 30, "the bank's lease to start its flow")
        assert bank_lead.active and gw.tickers[harness.BANK_ID].running
        from gateway.rpc_api import Caller
        health = await gw.commands.call("health", {}, Caller("unix", "test"))
        assert health["role"] == ACTIVE
        lease = health["leases"][harness.BANK_ID]
        assert lease["role"] == ACTIVE and lease["epoch"] == bank_lead.epoch and lease["acts_for_s"] > 0
        assert set(health["leases"]) == {CORE, harness.BANK_ID}
    finally:
        if gw.running:
            await gw.stopService()
        await sims.stop()


# --- one work folder per daemon ---------------------------------------------------------------


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_batch_built_in_another_daemons_work_folder_is_rebuilt_or_restored(reactor, tmp_path):
    """Each daemon has its own work folder, so after a takeover the batch's file is not here.
    UPLOADED (nothing submitted yet): it is built here again and submitted. SUBMITTING (the
    POST may have reached the bank): the same bytes are put back from the journal and asked
    with again, so the bank answers with its first answer (not DU01) and pays once."""
    from simulators.isobank import install as isoinstall
    from tests.support import InProcess
    from tests.test_iso_refusals import _order

    from simulators import harness
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [_order()], token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0)
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1)
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    work = ip.flow.adapter.work_dir

    def state_is(*states):
        async def check():
            rows = await ip.query("SELECT batch_no, file_name, state FROM batches")
            return rows if rows and rows[0]["state"] in states else None
        return check
    try:
        (b,) = await ip.until(state_is("UPLOADED"), 30, "an uploaded batch")
        os.unlink(os.path.join(work, b["file_name"]))          # built by the other daemon
        # taken over after the POST left and before its answer was recorded
        await ip.until(state_is("ACCEPTED"), 30, "the batch accepted, results not applied")
        await ip.execute("UPDATE batches SET state = 'SUBMITTING'")
        await ip.execute("UPDATE items SET status = 'PENDING'")
        os.unlink(os.path.join(work, b["file_name"]))
        await ip.until(state_is("DONE"), 30, "the batch asked about with the same bytes and done")
        items = await ip.query("SELECT status, count(*) AS n FROM items GROUP BY status")
        conflicts = await ip.query("SELECT * FROM alarms WHERE kind = 'message-id-conflict'")
        posts = [r for r in bank.requests() if r[:2] == ("POST", "/payments")]
        taken = bank.payments_received(b["batch_no"])
    finally:
        try:
            await bank.stop()
        finally:
            await ip.close()
    assert items == [{"status": "PAID", "n": 6}] and not conflicts
    assert taken == 1 and len(posts) >= 2       # asked again with the same bytes, paid once


@pytest_twisted.ensureDeferred
async def test_a_lease_call_that_raises_fails_its_deferred_with_that_error(reactor):
    """A lease call raising in its thread (a terminated backend: OperationalError) fails the
    Deferred with that very error at once. Found by the fault campaign (make chaos, PostgreSQL,
    pg_terminate_backend): the callback named the except clause's `e` after Python had deleted
    it, so the reactor logged a NameError, the Deferred never fired and the leader stood down
    at its deadline instead of hearing the error."""
    from gateway.leadership import _in_thread

    class Terminated(Exception):
        pass

    def call():
        raise Terminated("terminating connection due to administrator command")

    # Whether the reactor ran the callback before the thread left the except clause was a
    # race (about one call in four got through): twenty calls in a row must all fail properly.
    for _ in range(20):
        with pytest.raises(Terminated):
            await _in_thread(reactor, call).addTimeout(3, reactor)


@pytest.mark.postgres
@pytest_twisted.ensureDeferred
async def test_postgres_a_bulk_statement_may_outlast_the_lease_bound_an_ordinary_one_may_not(reactor, pg_url):
    """Each fenced statement is bounded inside the lease (3/4 of it: 1.5 s for a 2 s lease), so a
    statement of an ordinary step cannot hang on; a bulk one (a million items put in a batch)
    is bounded by BULK_STATEMENT_MS instead. At a million items on PostgreSQL the batch was
    never created: its one UPDATE was cancelled at 6 s, again and again (bench/concurrency.py)."""
    from sqlalchemy import exc as sa_exc
    url = _migrated(pg_url)
    database = dbmod.Database(reactor, dbmod.make_engine(url))
    database.start()
    lease = PgLease(url, SINGLE, "a", lease_s=2.0)
    try:
        fence = Fence(SINGLE)
        fence.checker = lease.checker
        fence.grant(lease.acquire(), math.inf)
        fenced = dbmod.FencedDatabase(database, fence)
        slow = lambda conn: conn.execute(sa.text("SELECT pg_sleep(2.0)")).scalar()  # noqa: E731
        with pytest.raises(sa_exc.OperationalError, match="statement timeout"):
            await fenced.run(slow)
        await fenced.run_bulk(slow)
    finally:
        lease.close()
        database.stop()


@pytest.mark.postgres
def test_postgres_a_takeover_ends_only_its_own_databases_sessions(pg_url):
    """Two gateways' databases on one server hold the same lease key. A takeover ends the
    sessions holding the lease's lock in its own database, never another's: before the fix a
    takeover in one database terminated the other gateway's sessions (seen when the tests ran
    in parallel)."""
    from tests.conftest import PG_ADMIN
    import uuid
    url = _migrated(pg_url)
    other_name = "gw_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{other_name}"'))
    other = _migrated(PG_ADMIN.rsplit("/", 1)[0] + "/" + other_name)
    theirs = sa.create_engine(other)
    holder = theirs.connect()
    a, b = _pg(url, "a"), _pg(url, "b")
    try:
        tx = holder.begin()
        holder.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": lease_key(SINGLE)})
        first = a.acquire()
        _expire(url)
        assert b.acquire() == first + 1          # a takeover in our database...
        assert holder.execute(sa.text("SELECT 1")).scalar() == 1   # ...left the other's session alone
        tx.rollback()
    finally:
        holder.close()
        theirs.dispose()
        a.close()
        b.close()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)'))
        admin.dispose()
