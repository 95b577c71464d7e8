"""Helpers shared by the loopback tests: a whole installation, and bounded waiting."""

from __future__ import annotations

from twisted.internet import defer, task

from simulators import datagen, harness

ALL_CODES = {f"R0{n:02d}": 0.02 for n in range(1, 11)} | {"R099": 0.02}


def spec(order_no: str, count: int, *, failures=None, corrupt=None, seed=7) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=order_no, bank_id=harness.BANK_ID, count=count, seed=seed,
        budget_unit="长丰县农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures=failures or {}, corrupt=corrupt)


async def wait_for(reactor, check, timeout: float, what: str, daemon=None):
    """Poll *check* (an async callable) until truthy; bounded by *timeout* seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        result = await check()
        if result:
            return result
        if daemon is not None and not daemon.running():
            raise AssertionError(f"gatewayd exited ({daemon.proc.returncode}) while waiting for {what}; "
                                 f"log:\n{daemon.log_path.read_text()[-3000:]}")
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, 0.25, lambda: None)


async def install(reactor, tmp_path, specs, db_url=None, crash_after=""):
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, specs, token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, db_url=db_url, token="test-token",
                               crash_after=crash_after, poll_s=0.3, status_poll_s=0.2)
    harness.migrate(cfg)
    return p, keys, sims, cfg


def hold_leases(gw) -> None:
    """Take every lease of a service built in the test's process, for good: its flows are then
    driven tick by tick without the leadership loop (their transactions are still fenced)."""
    import math
    for lead in gw.leadership:
        epoch = lead.lease.acquire()
        assert epoch is not None, f"lease {lead.lease_name} is held elsewhere"
        lead.fence.grant(epoch, math.inf)


class InProcess:
    """The daemon's service built in the test's reactor, its flow driven tick by tick."""

    def __init__(self, reactor, p, keys, sims, cfg_path, core=None):
        from gateway import config as configmod
        from gateway.service import make_service
        self.reactor, self.p, self.keys, self.sims = reactor, p, keys, sims
        self.cfg = configmod.load(cfg_path)
        self.gw = make_service(self.cfg, reactor, core=core)
        self.gw.database.start()
        hold_leases(self.gw)
        self.flow = self.gw.flows[harness.BANK_ID]
        self.db = self.gw.database

    async def until(self, check, timeout: float = 60, what: str = "the condition"):
        """Tick the flow until *check()* (sync or async) is truthy; bounded by *timeout* seconds."""
        deadline = self.reactor.seconds() + timeout
        while True:
            await self.flow.tick()
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            if self.reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await task.deferLater(self.reactor, 0.1, lambda: None)

    def query(self, sql: str, **params):
        from sqlalchemy import text
        return self.db.run(lambda c: [dict(r) for r in c.execute(text(sql), params).mappings()])

    def execute(self, sql: str, **params):
        """Change the database behind the daemon's back (to stand for time passing, say)."""
        from sqlalchemy import text
        return self.db.run(lambda c: c.execute(text(sql), params).rowcount)

    async def close(self):
        for flow in self.gw.flows.values():
            await defer.maybeDeferred(flow.adapter.close)
        self.gw.database.stop()
        await self.gw.core.close()
        await self.sims.stop()


async def in_process(reactor, tmp_path, specs, db_url=None, core=None, **config) -> InProcess:
    """An installation whose daemon service is built in this reactor (not started): tick it.
    `core`: an ICoreSystem in place of the HTTP client (the HTTP core simulator still runs)."""
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, specs, token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, db_url=db_url, token="test-token",
                               poll_s=0.2, status_poll_s=0.1, **config)
    harness.migrate(cfg)
    return InProcess(reactor, p, keys, sims, cfg, core=core)
