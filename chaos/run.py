"""`make chaos`: the real daemon driven through faults on loopback, checked against evidence it
does not own.

One run: a cnbank bank (framed TCP + SFTP), an ISO 20022 bank (HTTPS, mutual TLS) and the core
simulator in this process's reactor, each behind a chaos.proxy.FaultProxy; the daemon as its own
process (`gatewayd --config`) on SQLite or PostgreSQL. For DURATION seconds, orders keep arriving,
failed items are refunded through the RPC (as a department would), and, drawn from one seeded
generator:

- every connection to a peer may meet a fault (reset, answer lost, RST after the answer, cut
  mid-stream, answer delayed past the timeout, answer twice, bytes dripped);
- the core answers 5xx for a while; the cnbank bank acts on a BP01/RF01 and drops the reply, is
  restarted mid-batch (same ledger, new ports), its SFTP server loses an upload it answered OK,
  serves a result file half-written or with a flipped byte;
- on PostgreSQL the daemon's backends are terminated (pg_terminate_backend) mid-transaction; the
  server itself is never restarted (other tests share it);
- the daemon is SIGKILLed in every phase in turn, each kill aimed by what the database shows
  (an order LOADING, a batch BUILDING/BUILT, UPLOADED/SUBMITTING, ACCEPTED, a result the bank
  has published for an ACCEPTED batch, results_pending, a live refund), then restarted.

Then the faults stop and the run waits (GRACE seconds at most) for every order to be final, stops
the daemon and checks: the banks' ledgers (no item credited twice, none both credited and
refunded, every PAID item credited once and nothing else credited), money per order across the
gateway, the banks and the core, every order SETTLED (or INVALID) at the gateway and the core,
`gatewayctl journal verify`, and no transient alarm (core-unreachable, bank-link-down...) left
open. It prints a table and exits 1 on any violation.

The seed fixes every choice the campaign makes (which fault, which phase next, order sizes);
the daemon's own timing is not seeded, so a seed reproduces the same fault plan, not the same
interleaving to the millisecond.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from chaos.proxy import FaultProxy
from simulators import datagen, harness

PHASES = ("loading", "building", "submitting", "after_bp01", "apply", "push", "refund")
# Alarms about a condition that ends with the faults: one still open at the end is a violation.
TRANSIENT_ALARMS = ("core-unreachable", "bank-link-down", "bank-refusing", "bank-clock-skew",
                    "status-refused", "refund-status-refused", "gateway-db", "step-failed")
CN_FAILURES = {"R001": 0.08, "R002": 0.04, "R010": 0.03}
ISO_FAILURES = {"R001": 0.1, "R010": 0.05}

_PHASE_SQL = {
    "loading": "SELECT order_no AS n FROM orders WHERE state = 'LOADING'",
    "building": "SELECT batch_no AS n FROM batches WHERE state IN ('BUILDING', 'BUILT')",
    "submitting": "SELECT batch_no AS n FROM batches WHERE state IN ('UPLOADED', 'SUBMITTING')",
    "after_bp01": "SELECT batch_no AS n FROM batches WHERE state = 'ACCEPTED'",
    "apply": "SELECT batch_no AS n FROM batches WHERE state = 'ACCEPTED' AND bank_id = :cn",
    "push": "SELECT order_no AS n FROM orders WHERE results_pending = 1",
    "refund": "SELECT refund_no AS n FROM refunds WHERE state IN ('NEW', 'SUBMITTING', 'ACCEPTED')",
}


@dataclass
class Plan:
    """What one run does; every number here is part of what the seed reproduces."""

    seed: int = 1
    duration_s: float = 120
    grace_s: float = 300
    db: str = "sqlite"
    root: Path = Path("var/chaos")
    live_orders: int = 3            # per bank, kept arriving while the faults run
    items: tuple[int, int] = (30, 300)
    fault_rate: float = 0.15        # of connections, while the faults run
    kill_wait_s: float = 20         # a phase not seen within this is counted missed
    sim_fault_every_s: float = 4    # one bank/core/database fault drawn this often
    keep: bool = False
    snapshot: bool = False          # the daemon runs from a copy of the sources taken at start
    phases: tuple[str, ...] = PHASES   # the phases kills are aimed at, in a seeded order
    min_up_s: tuple[float, float] = (2.0, 6.0)   # a restarted daemon lives this long at least
    min_kills: int = 25             # the faults go on past duration_s (up to 3x) until this many


@dataclass
class Tally:
    kills: collections.Counter = field(default_factory=collections.Counter)
    missed: collections.Counter = field(default_factory=collections.Counter)
    faults: collections.Counter = field(default_factory=collections.Counter)
    self_exits: list = field(default_factory=list)
    refunds_asked: int = 0
    violations: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)


class Campaign:
    def __init__(self, reactor, plan: Plan, log=print) -> None:
        self.reactor, self.plan, self.log = reactor, plan, log
        self.rng = random.Random(plan.seed)
        self.t = Tally()
        self.faults_on = False
        self.feeding = False
        self.orders: dict[str, datagen.OrderSpec] = {}
        self.next_no = collections.Counter()
        self.daemon: harness.Daemon | None = None
        self.started_at = 0.0
        self.engine = None
        self.admin_engine = None
        self.pg_db = None
        self._fault_deck: list[str] = []

    # --- set-up -----------------------------------------------------------------------------

    async def setup(self) -> None:
        from simulators.isobank import install as isoinstall
        plan = self.plan
        name = f"{plan.db.split(':')[0]}-seed{plan.seed}"
        root = Path(plan.root) / name
        if root.exists():
            shutil.rmtree(root)
        self.p = p = harness.Paths(root)
        self.keys = keys = harness.make_keys(p)
        self.token = "chaos-token"
        self.sims = await harness.start_simulators(self.reactor, p, keys, [], token=self.token,
                                                   processing_delay_s=1.5)
        self.pki = isoinstall.make_pki(p.keys)
        self.iso_bank, iso_port = isoinstall.start_iso_bank(self.reactor, self.pki, result_delay_s=1.5)
        bank_faults = ["reset", "cut_before_reply", "cut_after_reply", "cut_mid", "delay", "duplicate", "drip"]
        self.proxies = {
            "core-http": self._proxy("core-http", self.sims.ports.core,
                                     ["reset", "cut_before_reply", "cut_mid", "delay", "drip"], rate=4),
            "cnbank-tcp": self._proxy("cnbank-tcp", self.sims.ports.bank_tcp, bank_faults),
            "cnbank-sftp": self._proxy("cnbank-sftp", self.sims.ports.bank_sftp,
                                       ["reset", "cut_mid", "cut_after_reply"], rate=0.5),
            "iso-https": self._proxy("iso-https", iso_port, bank_faults, rate=3),
        }
        ports = {k: v.listen() for k, v in self.proxies.items()}
        db_url = None if plan.db == "sqlite" else self._make_pg_database(plan.db)
        cfg = harness.write_config(p, keys, harness.Ports(ports["core-http"], ports["cnbank-tcp"],
                                                          ports["cnbank-sftp"]),
                                   db_url=db_url, token=self.token, poll_s=0.5, status_poll_s=0.3)
        # Timeouts short enough that a delayed answer outlives them within the run.
        g = (p.conf / "gateway.toml").read_text().replace("timeout_s = 60", "timeout_s = 5")
        (p.conf / "gateway.toml").write_text(g)
        b = p.banks / f"{harness.BANK_ID}.toml"
        b.write_text(b.read_text().replace("read_timeout_s = 30", "read_timeout_s = 4"))
        iso_file = isoinstall.write_bank_file(p.banks, self.pki, ports["iso-https"], status_poll_s=0.3)
        iso_file.write_text(iso_file.read_text().replace("timeout_s = 30", "timeout_s = 5"))
        for proxy in self.proxies.values():
            proxy.delay_s = 7.0
        self.cfg = cfg
        self.src = None
        if plan.snapshot:
            # A 20-minute run restarts the daemon dozens of times: from a copy of the sources, so
            # edits made meanwhile in the checkout (others work in it) cannot change what runs.
            self.src = str(root / "src")
            for d in ("gateway", "adapters", "protocols"):
                shutil.copytree(Path(__file__).resolve().parent.parent / d, os.path.join(self.src, d),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.gatewayctl("db", "upgrade", check=True)
        import sqlalchemy as sa
        from gateway import config as configmod
        self.db_url = configmod.load(cfg).database_url
        # Named, so that pg_terminate_backend spares the campaign's own connections.
        self.engine = sa.create_engine(self.db_url, pool_size=2, pool_pre_ping=True, **(
            {"connect_args": {"application_name": "chaos"}} if self.pg_db else {}))
        self.daemon = harness.Daemon(cfg, p.log, cwd=self.src,
                                     env={"PYTHONPATH": self.src} if self.src else {})

    def gatewayctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                            "--config", str(self.cfg), *args], capture_output=True, text=True, timeout=600,
                           cwd=self.src, env={**os.environ, **({"PYTHONPATH": self.src} if self.src else {})})
        if check and r.returncode != 0:
            raise RuntimeError(f"gatewayctl {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def _proxy(self, name: str, port: int, faults: list[str], rate: float = 1.0) -> FaultProxy:
        rng = random.Random(f"{self.plan.seed}-{name}")

        def choose() -> str:
            if self.faults_on and rng.random() < self.plan.fault_rate * rate:
                return rng.choice(faults)
            return "pass"
        return FaultProxy(self.reactor, name, "127.0.0.1", port, choose=choose)

    def _make_pg_database(self, url: str) -> str:
        import sqlalchemy as sa
        base = sa.engine.make_url(url)
        if base.drivername == "postgresql":
            base = base.set(drivername="postgresql+psycopg")
        self.pg_db = f"chaos_{self.plan.seed}_{os.getpid()}"
        self.admin_engine = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with self.admin_engine.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.pg_db}"'))
            c.execute(sa.text(f'CREATE DATABASE "{self.pg_db}"'))
        return base.set(database=self.pg_db).render_as_string(hide_password=False)

    # --- orders and the department ------------------------------------------------------------

    def _new_order(self, bank: str) -> None:
        from simulators.isobank import install as isoinstall
        iso = bank == "iso"
        self.next_no[bank] += 1
        no = f"{'ISO' if iso else 'CNB'}{self.plan.seed % 1000:03d}{self.next_no[bank]:05d}"
        count = self.rng.randint(*self.plan.items)
        spec = datagen.OrderSpec(
            order_no=no, bank_id=isoinstall.ISO_BANK_ID if iso else harness.BANK_ID, count=count,
            seed=self.rng.randint(1, 10**6), budget_unit="长丰县农业农村局", project_code="NY2026-01",
            project_name="2026年耕地地力保护补贴", project_short="耕地补贴", region="340121",
            funded_at=f"2026-11-02T09:{30 + self.next_no[bank] // 60 % 30:02d}:{self.next_no[bank] % 60:02d}+08:00",
            failures=dict(ISO_FAILURES if iso else CN_FAILURES), corrupt=None)
        self.orders[no] = spec
        self.sims.specs.append(spec)
        self.sims.core.add_order(spec)

    def _query(self, sql: str, **params) -> list[dict]:
        import sqlalchemy as sa
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.text(sql), params).mappings()]

    async def query(self, sql: str, **params) -> list[dict]:
        return await deferToThread(self._query, sql, **params)

    async def department(self) -> None:
        """Refund what failed (all_failed) once an order has results and no live refund."""
        try:
            rows = await self.query(
                "SELECT o.order_no FROM orders o WHERE o.state = 'DISPATCHED' "
                "AND EXISTS (SELECT 1 FROM items i WHERE i.order_no = o.order_no AND i.status = 'FAILED') "
                "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.order_no = o.order_no "
                "AND i.status IN ('PENDING', 'SENT', 'CORRECTED'))")
        except Exception as e:  # noqa: BLE001 - the database may be mid-fault
            self.log(f"  department: {type(e).__name__}")
            return
        from gateway import rpc_client
        for r in rows:
            try:
                await deferToThread(rpc_client.call, "refund.request",
                                    {"order_no": r["order_no"], "seqs": "all_failed",
                                     "reason": "无法入账，原渠道退回", "approved_by": "王科长"},
                                    unix_path=str(self.p.rpc_socket), timeout=10)
                self.t.refunds_asked += 1
            except Exception:  # noqa: BLE001 - daemon down or refund already live: next round
                pass

    # --- the daemon ------------------------------------------------------------------------

    def start_daemon(self) -> None:
        if self.started_at == 0.0:
            # However the campaign ends (SIGTERM, an error), its daemon does not outlive it.
            self.reactor.addSystemEventTrigger("before", "shutdown", self._kill_daemon)
        self.daemon.start()
        self.started_at = self.reactor.seconds()

    def _kill_daemon(self) -> None:
        if self.daemon is not None and self.daemon.running():
            self.daemon.proc.kill()
            self.daemon.proc.wait()

    def ensure_daemon(self) -> None:
        if not self.daemon.running():
            rc = self.daemon.proc.returncode if self.daemon.proc else None
            if rc is not None and rc != -9:
                self.t.self_exits.append(rc)
                self.log(f"  gatewayd exited by itself ({rc}); restarted")
            self.start_daemon()

    async def phase_seen(self, phase: str) -> bool:
        rows = await self.query(_PHASE_SQL[phase], cn=harness.BANK_ID)
        if not rows:
            return False
        if phase == "apply":
            done = {r["batch_no"] for r in await deferToThread(
                _bank_read, self.sims.bank, "SELECT batch_no FROM batches WHERE status = 'DONE'")}
            return any(r["n"] in done for r in rows)
        return True

    async def killer(self) -> None:
        """SIGKILL the daemon in each phase in turn, aimed by polling the database."""
        order = list(self.plan.phases)
        self.rng.shuffle(order)
        i = 0
        while self.faults_on:
            phase = order[i % len(order)]
            i += 1
            try:
                await self._kill_in(phase)
            except Exception as e:  # noqa: BLE001 - the campaign must go on; say why
                self.log(f"  killer: {type(e).__name__}: {e}")
            await sleep(self.reactor, self.rng.uniform(0.2, 1.5))
            self.ensure_daemon()

    async def _kill_in(self, phase: str) -> None:
        deadline = self.reactor.seconds() + self.plan.kill_wait_s
        # A phase left behind by the last kill is still in the database when the daemon comes
        # back: the daemon gets a few seconds to start and take it up before it may be killed
        # again, or it would be killed on every start and never move on.
        up_s = self.rng.uniform(*self.plan.min_up_s)
        while self.faults_on and self.reactor.seconds() < deadline:
            self.ensure_daemon()
            if self.reactor.seconds() - self.started_at < up_s:
                await sleep(self.reactor, 0.1)
                continue
            try:
                seen = self.daemon.running() and await self.phase_seen(phase)
            except Exception as e:  # noqa: BLE001 - a terminated backend of ours, say
                self.log(f"  phase poll: {type(e).__name__}")
                seen = False
            if seen and self.daemon.running():
                self.daemon.proc.send_signal(signal.SIGKILL)
                await deferToThread(self.daemon.proc.wait, 30)
                self.t.kills[phase] += 1
                return
            await sleep(self.reactor, 0.03)
        if self.faults_on:
            self.t.missed[phase] += 1

    # --- faults outside the proxies ------------------------------------------------------------

    async def sim_fault(self) -> None:
        if not self._fault_deck:
            kinds = ["core-5xx", "bank-drop-bp01", "bank-drop-rf01", "bank-restart", "sftp-lose-upload",
                     "sftp-short-read", "sftp-corrupt-read", "results-late", "link-flap", "link-flap"]
            if self.pg_db:
                kinds += ["pg-terminate", "pg-terminate", "pg-terminate"]
            self.rng.shuffle(kinds)
            self._fault_deck = kinds
        kind = self._fault_deck.pop()   # each kind once per round, in a seeded order
        self.t.faults[kind] += 1
        bank = self.sims.bank
        if kind == "core-5xx":
            self.sims.core.fail_every = 2
            self.reactor.callLater(self.rng.uniform(2, 8), setattr, self.sims.core, "fail_every", 0)
        elif kind == "bank-drop-bp01":
            bank.drop_reply_after("BP01")
        elif kind == "bank-drop-rf01":
            bank.drop_reply_after("RF01")
        elif kind == "bank-restart":
            await self.restart_bank()
        elif kind == "sftp-lose-upload":
            bank._sftp_factory.faults.lose_uploads += 1
        elif kind == "sftp-short-read":
            bank._sftp_factory.faults.short_reads += 1
        elif kind == "sftp-corrupt-read":
            bank._sftp_factory.faults.corrupt_reads += 1
        elif kind == "results-late":
            bank.processing_delay_s = 12.0
            self.reactor.callLater(15, setattr, bank, "processing_delay_s", 1.5)
        elif kind == "link-flap":
            name = self.rng.choice(["core-http", "iso-https", "cnbank-sftp"])
            self.t.faults[f"link-flap {name} (connections cut)"] += self.proxies[name].cut_all()
        elif kind == "pg-terminate":
            n = await deferToThread(self._pg_terminate)
            self.t.faults["pg-backends-terminated"] += n

    def _pg_terminate(self) -> int:
        import sqlalchemy as sa
        with self.admin_engine.connect() as c:
            rows = c.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db "
                "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'chaos%'"),
                {"db": self.pg_db}).fetchall()
        return len(rows)

    async def restart_bank(self) -> None:
        """The cnbank bank restarted mid-batch: same ledger and folders, new ports."""
        from simulators.cnbank.bank import CnBankSimulator
        from simulators import sftp_server
        old = self.sims.bank
        try:
            await old.stop().addTimeout(20, self.reactor)
        except defer.TimeoutError:
            self.log("  bank restart: the old bank did not stop within 20 s; started anew anyway")
            self.t.faults["bank-restart (old bank stuck)"] += 1
        bank = CnBankSimulator(self.reactor, data_dir=str(self.p.bank_data), bank_key=self.keys.bank_sm2,
                               gateway_key=self.keys.gw_sm2.public_key, bank_id=harness.BANK_RECEIVER,
                               settings=harness.envelope_settings(), sftp_root=str(self.p.sftp_root),
                               processing_delay_s=1.5, auto_fund=True, payer_acct=harness.PAYER_ACCT)
        await bank.ready
        tcp = bank.listen_tcp()
        sftp = bank.listen_sftp(authorized_keys=[sftp_server.public_key_line(self.keys.gw_ssh)],
                                host_key_path=self.keys.bank_host, username="gateway")
        self.proxies["cnbank-tcp"].retarget(tcp.getHost().port)
        self.proxies["cnbank-sftp"].retarget(sftp.getHost().port)
        self.sims.bank = bank

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        """The whole run: faults, settling, checks, the table; 0 when no violation."""
        t0 = time.monotonic()
        await self.drive()
        await self.check()
        await self.close()
        self.t.figures["wall_s"] = round(time.monotonic() - t0)
        self.report()
        return 1 if self.t.violations else 0

    async def drive(self) -> None:
        """Set up, run the faults for duration_s, let every order finish, stop the daemon."""
        plan = self.plan
        t0 = time.monotonic()
        await self.setup()
        self.log(f"chaos: seed {plan.seed}, {plan.duration_s:.0f} s of faults on {plan.db}, "
                 f"installation {self.p.root}")
        for _ in range(plan.live_orders):
            self._new_order("cn")
            self._new_order("iso")
        self.start_daemon()
        self.faults_on = True
        killer = defer.ensureDeferred(self.killer())
        start = self.reactor.seconds()
        next_progress = start + 60
        end = self.reactor.seconds() + plan.duration_s
        next_fault = self.reactor.seconds() + plan.sim_fault_every_s
        try:
            while self.reactor.seconds() < end or (
                    sum(self.t.kills.values()) < plan.min_kills
                    and self.reactor.seconds() < end + 2 * plan.duration_s):
                await self.feed()
                await self.department()
                if self.reactor.seconds() >= next_progress:
                    next_progress = self.reactor.seconds() + 60
                    self.log(f"  {self.reactor.seconds() - start:.0f} s: {len(self.orders)} orders, "
                             f"kills {dict(self.t.kills)}, missed {dict(self.t.missed)}, "
                             f"daemon {'up' if self.daemon.running() else 'down'}")
                if self.reactor.seconds() >= next_fault:
                    self.log(f"  fault: {self._fault_deck[-1] if self._fault_deck else 'next round'}")
                    await self.sim_fault()
                    next_fault = self.reactor.seconds() + plan.sim_fault_every_s * self.rng.uniform(0.5, 1.5)
                await sleep(self.reactor, 1.0)
        finally:
            self.faults_on = False
            await killer
        self.sims.core.fail_every = 0
        self.sims.bank.processing_delay_s = 1.5
        self.ensure_daemon()
        self.log(f"chaos: faults stopped after {time.monotonic() - t0:.0f} s; waiting up to "
                 f"{plan.grace_s:.0f} s for every order to be final")
        settled = await self.wait_final()
        self.t.figures["settle_s"] = round(time.monotonic() - t0 - plan.duration_s)
        rc = await self.daemon.stop_async(self.reactor)
        if rc != 0:
            self.t.violations.append(f"gatewayd stopped with {rc} on SIGTERM")
        if not settled:
            self.t.violations.append("not every order final within the grace period")

    async def feed(self) -> None:
        """Keep live_orders orders per bank not yet final (those the daemon has not seen count)."""
        from simulators.isobank import install as isoinstall
        try:
            rows = await self.query("SELECT bank_id, SUM(CASE WHEN state IN ('SETTLED', 'INVALID') "
                                    "THEN 0 ELSE 1 END) AS live, COUNT(*) AS seen FROM orders GROUP BY bank_id")
        except Exception:  # noqa: BLE001 - the database may be mid-fault
            return
        got = {r["bank_id"]: r for r in rows}
        for bank, key in ((harness.BANK_ID, "cn"), (isoinstall.ISO_BANK_ID, "iso")):
            known = sum(1 for s in self.orders.values() if s.bank_id == bank)
            r = got.get(bank, {"live": 0, "seen": 0})
            if (r["live"] or 0) + known - r["seen"] < self.plan.live_orders:
                self._new_order(key)

    async def wait_final(self) -> bool:
        deadline = self.reactor.seconds() + self.plan.grace_s
        while self.reactor.seconds() < deadline:
            self.ensure_daemon()
            await self.department()
            try:
                summary = await self.sims.core.summary()
                done = all(o["state"] in ("SETTLED", "INVALID") and o["reported_items"] == o["item_count"]
                           for no, o in summary["orders"].items() if no in self.orders)
                if done and len(summary["orders"]) >= len(self.orders):
                    return True
            except Exception:  # noqa: BLE001
                pass
            await sleep(self.reactor, 1.0)
        return False

    # --- the checks ---------------------------------------------------------------------------

    async def check(self) -> None:
        """Every check against the banks' ledgers, the core, the journal and the alarms; each
        failure is appended to t.violations."""
        v = self.t.violations
        items = await self.query("SELECT order_no, seq, amount, status FROM items")
        orders = {o["order_no"]: o for o in await self.query("SELECT order_no, bank_id, state, total_amount FROM orders")}
        refunds = await self.query("SELECT r.refund_no, r.order_no, r.state, r.refund_amount, ri.seq "
                                   "FROM refunds r JOIN refund_items ri ON ri.refund_no = r.refund_no")
        by_order: dict[str, list] = collections.defaultdict(list)
        for i in items:
            by_order[i["order_no"]].append(i)
        bank = self.sims.bank
        cn_credits = collections.defaultdict(list)
        for r in await deferToThread(_bank_read, bank, "SELECT order_no, seq, amount, batch_no FROM credits"):
            cn_credits[(r["order_no"], r["seq"])].append(r)
        cn_returns = collections.Counter((r["order_no"], r["seq"]) for r in await deferToThread(
            _bank_read, bank, "SELECT order_no, seq FROM returns"))
        cn_refunded = {(r["order_no"], r["seq"]): r["amount"] for r in await deferToThread(
            _bank_read, bank, "SELECT f.order_no, ri.seq, ri.amount FROM refund_items ri "
                              "JOIN refunds f ON f.refund_no = ri.refund_no WHERE f.status = 'DONE'")}
        iso_credits = collections.defaultdict(list)
        for c in self.iso_bank.credits():
            if c.get("returned") is None:
                iso_credits[c.get("end_to_end_id") or c.get("e2e")].append(c)
        doubles = len(bank.double_credits()) + len(self.iso_bank.double_credits())
        both = 0
        lost = 0
        not_final = 0
        mismatch = 0
        for no, spec in self.orders.items():
            o = orders.get(no)
            if o is None:
                v.append(f"{no}: never loaded by the gateway")
                not_final += 1
                continue
            its = by_order[no]
            total = spec_total(spec)
            if o["total_amount"] != total or sum(i["amount"] for i in its) != total:
                v.append(f"{no}: gateway total {o['total_amount']} / items {sum(i['amount'] for i in its)}, "
                         f"core funded {total}")
            paid = sum(i["amount"] for i in its if i["status"] == "PAID")
            refunded = sum(i["amount"] for i in its if i["status"] == "REFUNDED")
            if o["state"] != "SETTLED":
                not_final += 1
                v.append(f"{no}: {o['state']} at the gateway at the end")
            else:
                lost += total - paid - refunded
            iso = o["bank_id"] != harness.BANK_ID
            bank_paid = 0
            for i in its:
                key = (no, i["seq"])
                if iso:
                    live = len(iso_credits.get(f"{no}-{i['seq']}", []))
                    bank_paid += sum(c["amount"] for c in iso_credits.get(f"{no}-{i['seq']}", []))
                    refunded_at_bank = False
                else:
                    live = len(cn_credits.get(key, [])) - cn_returns.get(key, 0)
                    bank_paid += sum(c["amount"] for c in cn_credits.get(key, [])) if live > 0 else 0
                    refunded_at_bank = key in cn_refunded
                want = 1 if i["status"] == "PAID" else 0
                if live != want:
                    mismatch += 1
                    v.append(f"{no}/{i['seq']}: {i['status']} at the gateway, credited {live} times at the bank")
                if live > 0 and (refunded_at_bank or i["status"] == "REFUNDED"):
                    both += 1
                    v.append(f"{no}/{i['seq']}: both credited and refunded")
                if i["status"] == "REFUNDED" and not iso and not refunded_at_bank:
                    v.append(f"{no}/{i['seq']}: REFUNDED at the gateway, in no DONE refund at the bank")
            if bank_paid != paid:
                v.append(f"{no}: bank credited {bank_paid} fen, gateway PAID {paid} fen")
            core = await self.sims.core.results(no)
            core_paid = sum(r["amount"] for r in core.values() if r["status"] == "PAID")
            core_ref = sum(r["amount"] for r in core.values() if r["status"] == "REFUNDED")
            if (core_paid, core_ref) != (paid, refunded):
                v.append(f"{no}: core has paid {core_paid} refunded {core_ref}, gateway {paid} / {refunded}")
        refund_sum = collections.defaultdict(int)
        for r in refunds:
            refund_sum[r["refund_no"]] = r["refund_amount"] or 0
        if doubles:
            v.append(f"{doubles} items credited twice by a bank's own ledger")
        verify = await deferToThread(self.gatewayctl, "journal", "verify")
        if verify.returncode != 0:
            v.append(f"journal verify exited {verify.returncode}: {(verify.stdout + verify.stderr)[-300:]}")
        open_alarms = await self.query("SELECT kind, COUNT(*) AS n FROM alarms WHERE cleared_at IS NULL "
                                       "GROUP BY kind ORDER BY kind")
        for a in open_alarms:
            if a["kind"] in TRANSIENT_ALARMS:
                v.append(f"alarm {a['kind']} still open ({a['n']}) after the faults stopped")
        self.t.figures.update(
            orders=len(self.orders), items=len(items),
            paid=sum(1 for i in items if i["status"] == "PAID"),
            refunded=sum(1 for i in items if i["status"] == "REFUNDED"),
            double_credits=doubles, credited_and_refunded=both, lost_fen=lost, not_final=not_final,
            ledger_mismatches=mismatch, journal_verify=verify.returncode,
            open_alarms={a["kind"]: a["n"] for a in open_alarms})

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await defer.maybeDeferred(proxy.stop)
        await self.iso_bank.stop()
        await self.sims.stop()
        self.engine.dispose()
        if self.admin_engine is not None:
            import sqlalchemy as sa
            if not self.t.violations and not self.plan.keep:
                with self.admin_engine.connect() as c:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)'))
            self.admin_engine.dispose()

    def report(self) -> None:
        t, out = self.t, []
        out.append(f"chaos seed={self.plan.seed} db={self.plan.db.split('://')[0]} "
                   f"duration={self.plan.duration_s:.0f}s wall={t.figures.get('wall_s')}s")
        out.append("")
        out.append(f"{'scenario':<44}{'count':>8}")
        for name, proxy in self.proxies.items():
            for fault, n in sorted(proxy.counts.items()):
                if fault != "pass":
                    out.append(f"{name + ' ' + fault:<44}{n:>8}")
            out.append(f"{name + ' connections':<44}{sum(proxy.counts.values()):>8}")
        for kind, n in sorted(t.faults.items()):
            out.append(f"{kind:<44}{n:>8}")
        out.append(f"{'refunds asked (RPC)':<44}{t.refunds_asked:>8}")
        out.append("")
        out.append(f"{'kill phase':<16}{'kills':>8}{'missed':>8}")
        for ph in PHASES:
            out.append(f"{ph:<16}{t.kills[ph]:>8}{t.missed[ph]:>8}")
        out.append(f"{'total':<16}{sum(t.kills.values()):>8}{sum(t.missed.values()):>8}")
        out.append(f"gatewayd exits other than SIGKILL: {t.self_exits or 'none'}")
        out.append("")
        for k, val in t.figures.items():
            out.append(f"{k:<24}{val}")
        out.append("")
        out.append("outcome: " + ("PASS" if not t.violations else f"FAIL ({len(t.violations)} violations)"))
        for line in t.violations[:50]:
            out.append(f"  - {line}")
        self.log("\n".join(out))
        summary = {"seed": self.plan.seed, "db": self.plan.db.split("://")[0],
                   "duration_s": self.plan.duration_s, "kills": dict(t.kills), "missed": dict(t.missed),
                   "faults": dict(t.faults) | {f"{n} {f}": c for n, p in self.proxies.items()
                                                for f, c in p.counts.items() if f != "pass"},
                   "figures": t.figures, "violations": t.violations, "self_exits": t.self_exits}
        (self.p.root / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        self.summary = summary


def spec_total(spec: datagen.OrderSpec) -> int:
    return sum(datagen.item(spec, pos)["amount"] for pos in range(1, spec.count + 1))


def _bank_read(bank, sql: str) -> list[dict]:
    conn = sqlite3.connect(f"file:{bank.ledger.path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def sleep(reactor, seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "1") or 1))
    ap.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", "120") or 120))
    ap.add_argument("--grace", type=float, default=None, help="seconds to wait for final states (default: 300)")
    ap.add_argument("--db", default=os.environ.get("DB", "sqlite") or "sqlite",
                    help="sqlite, or a PostgreSQL URL of the server (a fresh database is made on it)")
    ap.add_argument("--root", default="var/chaos")
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL database after a green run")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the daemon from the checkout rather than a copy taken at start")
    a = ap.parse_args(argv)
    plan = Plan(seed=a.seed, duration_s=a.duration, grace_s=a.grace if a.grace is not None else 300,
                db=a.db, root=Path(a.root).resolve(), keep=a.keep, snapshot=not a.no_snapshot)
    from twisted.internet import reactor
    result: dict = {}

    async def go():
        result["rc"] = await Campaign(reactor, plan, log=lambda line: print(line, flush=True)).run()

    d = defer.ensureDeferred(go())
    d.addErrback(lambda f: (f.printTraceback(), result.setdefault("rc", 2)))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    return result.get("rc", 2)


if __name__ == "__main__":
    sys.exit(main())
