"""A short seeded slice of the fault campaign (`make chaos`, chaos/run.py), part of `make test`.

The real gatewayd on SQLite, both banks and the core behind fault proxies, SIGKILLs aimed at
phases by the database, for about 20 s of faults; then every order must settle and the checks
against the banks' own ledgers must hold. The checks themselves are shown able to fail: a credit
written into the bank's ledger behind the gateway's back is found.
"""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import task

from chaos.proxy import FaultProxy
from chaos.run import Campaign, Plan

pytestmark = [pytest.mark.loopback, pytest.mark.slow]


@pytest_twisted.ensureDeferred
async def test_seeded_slice_holds_and_its_checks_see_a_double_credit(reactor, tmp_path):
    """Seed 5, 15 s of faults (longer until 3 kills landed, aimed at four phases): every order SETTLED, no item credited
    twice or both credited and refunded, no fen lost, the journal verifies, no transient alarm
    left open. Then a second credit of a PAID item, added to the cnbank ledger by hand, makes the
    same checks report it (so a green slice is not green by construction)."""
    plan = Plan(seed=5, duration_s=15, grace_s=60, root=tmp_path, items=(8, 30), live_orders=2,
                kill_wait_s=8, sim_fault_every_s=2, fault_rate=0.2, min_kills=3,
                phases=("building", "submitting", "after_bp01", "push"))
    lines: list[str] = []
    c = Campaign(reactor, plan, log=lines.append)
    closed = False
    try:
        await c.drive()
        await c.check()
        assert c.t.violations == [], "\n".join(c.t.violations + lines) + "\n" + c.p.log.read_text()[-3000:]
        assert sum(c.t.kills.values()) >= 3, (c.t.kills, c.t.missed)
        assert sum(c.t.faults.values()) + sum(p.faults_injected() for p in c.proxies.values()) >= 5
        f = c.t.figures
        assert f["paid"] > 0 and f["double_credits"] == 0 and f["lost_fen"] == 0 and f["not_final"] == 0
        assert f["journal_verify"] == 0

        ledger = c.sims.bank.ledger.path
        with sqlite3.connect(ledger) as conn:
            row = conn.execute("SELECT batch_no, seq, order_no, account, amount, serial, at "
                               "FROM credits LIMIT 1").fetchone()
            conn.execute("INSERT INTO credits VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (row[0] + "X", *row[1:5], row[5] + "X", row[6]))
        c.t.violations = []
        await c.check()
        assert any("credited twice by a bank's own ledger" in v for v in c.t.violations), c.t.violations
        assert any(f"{row[2]}/{row[1]}: PAID at the gateway, credited 2 times" in v
                   for v in c.t.violations), c.t.violations
        await c.close()
        closed = True
    finally:
        if not closed and getattr(c, "proxies", None):
            await c.close()


@pytest_twisted.ensureDeferred
async def test_proxy_faults_reach_the_client_as_named(reactor):
    """Through the fault proxy, to a server that answers b'ANSWER' and closes: pass gives the
    answer, duplicate gives it twice, cut_mid half of it and then a reset, cut_before_reply
    nothing (the server still got the request), reset nothing and the server no request."""
    from twisted.internet import defer, protocol

    got_requests: list[bytes] = []

    class Server(protocol.Protocol):
        def dataReceived(self, data):  # noqa: N802
            got_requests.append(data)
            self.transport.write(b"ANSWER")
            self.transport.loseConnection()

    server = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    plan: list[str] = []
    proxy = FaultProxy(reactor, "t", "127.0.0.1", server.getHost().port, choose=lambda: plan.pop(0))
    port = proxy.listen()

    class Client(protocol.Protocol):
        def connectionMade(self):  # noqa: N802
            self.buf = b""
            self.transport.write(b"REQ")

        def dataReceived(self, data):  # noqa: N802
            self.buf += data

        def connectionLost(self, reason=None):  # noqa: N802
            self.factory.done.callback(self.buf)

    async def one(fault: str) -> bytes:
        plan.append(fault)
        f = protocol.ClientFactory.forProtocol(Client)
        f.done = defer.Deferred()
        reactor.connectTCP("127.0.0.1", port, f)
        return await f.done

    try:
        assert await one("pass") == b"ANSWER"
        assert await one("duplicate") == b"ANSWERANSWER"
        assert await one("cut_mid") == b"ANS"
        before = len(got_requests)
        assert await one("cut_before_reply") == b""
        assert len(got_requests) == before + 1
        before = len(got_requests)
        assert await one("reset") == b""
        assert len(got_requests) == before
        assert proxy.counts["duplicate"] == 1 and proxy.faults_injected() == 4
    finally:
        await proxy.stop()
        await server.stopListening()


@pytest_twisted.ensureDeferred
async def test_gatewayd_that_cannot_start_exits_2_rather_than_hanging(reactor, tmp_path):
    """The real gatewayd whose RPC socket is served by another process says "cannot start" and
    exits 2 within seconds. Found by make chaos (a campaign's orphaned daemon held the socket):
    the daemon logged "Main loop terminated" and then hung for good, its database thread pool
    (started before the RPC listener failed) keeping the process alive."""
    from twisted.internet import protocol

    from simulators import harness
    from tests.support import install

    p, keys, sims, cfg = await install(reactor, tmp_path, [])
    other = reactor.listenUNIX(str(p.rpc_socket), protocol.Factory.forProtocol(protocol.Protocol))
    daemon = harness.Daemon(cfg, p.log)
    try:
        daemon.start()
        deadline = reactor.seconds() + 40
        while daemon.running() and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.2, lambda: None)
        assert not daemon.running(), "gatewayd still running 40 s after it could not start:\n" + \
            p.log.read_text()[-1500:]
        assert daemon.proc.returncode == 2
        assert "another process is serving on this socket" in p.log.read_text()
    finally:
        if daemon.running():
            daemon.proc.kill()
            daemon.proc.wait()
        await other.stopListening()
        await sims.stop()
