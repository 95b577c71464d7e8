"""Read-only RPC calls are answered while the writer is busy; their journal entries follow.

The real Commands and database (SQLite and PostgreSQL). The writer is held by a
transaction that waits on an event, as the apply of a million results holds it.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import pytest_twisted
from sqlalchemy import select
from twisted.internet import defer, task

from gateway import db as dbmod
from gateway.commands import Commands
from gateway.flow import iso
from gateway.journal import Journal
from gateway.models import journal
from gateway.read_journal import ReadCallJournal
from tests.test_rpc_races import BANK, CALLER, ORDER, seed

CALL_AT = 1_795_000_000


@pytest.fixture
def env(reactor, db_url, tmp_path):
    dbmod.upgrade(db_url)
    engine = dbmod.make_engine(db_url)
    database = dbmod.Database(reactor, engine, threads=1)
    database.start()
    clock = task.Clock()
    clock.advance(CALL_AT)
    commands = Commands(clock, database, Journal(str(tmp_path / "archive")),
                        SimpleNamespace(flows={BANK: None}, tickers={}, core=None))
    yield SimpleNamespace(engine=engine, db=database, commands=commands, reactor=reactor, clock=clock)
    database.stop()


def attach(env, **kw) -> ReadCallJournal:
    rj = ReadCallJournal(env.db.run, env.commands.write_read_entry, **kw)
    env.commands.read_journal = rj
    rj.startService()
    return rj


def hold_writer(env) -> threading.Event:
    """Occupy the writer (one thread) until the event is set, as a long bulk transaction does."""
    release, started = threading.Event(), threading.Event()

    def busy(conn):
        started.set()
        release.wait(60)
    env.held = env.db.run(busy)
    started.wait(10)
    return release


def status_entries(env) -> list:
    with env.engine.connect() as c:
        return c.execute(select(journal.c.at, journal.c.tx_code, journal.c.order_no)
                         .where(journal.c.tx_code == "order.status").order_by(journal.c.id)).all()


async def answered(env, d, within_s: float = 10.0):
    """The call's answer, or TimeoutError if it did not come while the writer stays held."""
    return await d.addTimeout(within_s, env.reactor)


@pytest_twisted.ensureDeferred
async def test_order_status_is_answered_while_the_writer_is_held_and_journaled_after(env):
    """order.status answers from a snapshot without waiting for the writer; its entry is then
    committed with the time of the call, once the writer is free."""
    await env.db.run(seed, 3)
    rj = attach(env)
    release = hold_writer(env)
    try:
        answer = await answered(env, env.commands.call("order.status", {"order_no": ORDER}, CALLER))
        assert answer["order_no"] == ORDER and answer["items"]["FAILED"]["count"] == 3
        assert status_entries(env) == []          # not yet: the writer is still held
    finally:
        release.set()
    await env.held
    env.clock.advance(3600)                        # the entry keeps the call's time, not the commit's
    await rj.drained()
    rows = status_entries(env)
    assert len(rows) == 1 and rows[0].order_no == ORDER
    assert rows[0].at == iso(CALL_AT)


@pytest_twisted.ensureDeferred
async def test_a_full_queue_makes_the_next_read_wait_for_the_writer(env):
    """Past max_pending queued entries a read waits for its entry: a writer that is down cannot
    grow the queue without bound."""
    await env.db.run(seed, 1)
    attach(env, max_pending=1)
    release = hold_writer(env)
    try:
        await answered(env, env.commands.call("order.status", {"order_no": ORDER}, CALLER))
        second = env.commands.call("order.status", {"order_no": ORDER}, CALLER)
        with pytest.raises(defer.TimeoutError):
            await answered(env, second, within_s=1.0)
    finally:
        release.set()
    await env.held
    third = await answered(env, env.commands.call("order.status", {"order_no": ORDER}, CALLER))
    assert third["order_no"] == ORDER


@pytest_twisted.ensureDeferred
async def test_stopping_commits_every_queued_entry_in_call_order(env):
    """stopService fires only once every queued read's entry is committed, in the order of the calls."""
    await env.db.run(seed, 1)
    rj = attach(env, chunk=2)
    release = hold_writer(env)
    for _ in range(5):
        await answered(env, env.commands.call("order.status", {"order_no": ORDER}, CALLER))
        env.clock.advance(1)
    stopped = defer.maybeDeferred(rj.stopService)
    assert not stopped.called
    release.set()
    await env.held
    await stopped
    rows = status_entries(env)
    assert len(rows) == 5
    assert [r.at for r in rows] == sorted(r.at for r in rows)


@pytest_twisted.ensureDeferred
async def test_entries_the_database_refuses_are_counted_as_lost_and_the_queue_goes_on(env):
    """A commit that fails (the write behind the answers raises) is logged and counted through
    `lost(n)` (gateway_read_calls_unjournaled in /metrics); the queue is not stuck: the next
    read's entry is committed."""
    await env.db.run(seed, 1)
    lost: list[int] = []
    fail = {"on": True}

    def write(conn, item):
        if fail["on"]:
            raise RuntimeError("disk full")
        return env.commands.write_read_entry(conn, item)
    rj = ReadCallJournal(env.db.run, write, lost=lost.append)
    env.commands.read_journal = rj
    rj.startService()
    await answered(env, env.commands.call("order.status", {"order_no": ORDER}, CALLER))
    await rj.drained()
    assert lost == [1] and rj.failed == 1 and status_entries(env) == []
    fail["on"] = False
    await answered(env, env.commands.call("order.status", {"order_no": ORDER}, CALLER))
    await rj.drained()
    assert len(status_entries(env)) == 1 and lost == [1]
