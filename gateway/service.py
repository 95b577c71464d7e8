"""The daemon as one `MultiService`, built by one function from one validated configuration.

`make_service` either builds the whole daemon or raises with a message naming
the file and key at fault: keys unreadable or too open, database not migrated,
unknown dialect. Runnable as `gatewayd` and as the `twist gateway` plugin.
"""

from __future__ import annotations

import json
import random

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway.bankplugins import AdapterError, make_adapter
from adapters.core_http import CoreClient
from adapters.core_interface import ICoreSystem
from gateway import db as dbmod
from gateway.commands import Commands
from gateway.config import GatewayConfig
from gateway.faults import Faults
from gateway.flow import BankFlow
from gateway.journal import Journal
from gateway.leadership import (CORE, SINGLE, LeaseSet, Leadership, claim_work_dir, default_holder,
                                 lease_for_url)
from gateway.scheduler import RetryScheduler

log = Logger()


class StartupError(Exception):
    """The daemon cannot start; the message names the file and key at fault."""


class Ticker(service.Service):
    """Runs an async job every `interval` seconds (+ jitter), never overlapping itself.

    Unlike a bare LoopingCall, an exception is logged and the next run is still
    scheduled. On stop, the run in progress is allowed to finish its step.
    """

    def __init__(self, reactor, name: str, job, interval: float, jitter: float = 0.1,
                 rng: random.Random | None = None):
        self.reactor = reactor
        self.setName(name)
        self.job = job
        self.interval = interval
        self.jitter = jitter
        self.rng = rng or random.Random()
        self._call = None
        self._running: defer.Deferred | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._call = self.reactor.callLater(0, self._run)

    def kick(self) -> None:
        """Run as soon as the current run (if any) is over."""
        if self._call is not None and self._call.active():
            self._call.reset(0)

    def _run(self) -> None:
        self._call = None
        self._running = defer.ensureDeferred(self.job())
        self._running.addErrback(lambda f: log.failure("{name} failed", f, name=self.name))
        self._running.addBoth(self._schedule)

    def _schedule(self, _) -> None:
        self._running = None
        if self.running:
            delay = self.interval * (1 + self.jitter * self.rng.random())
            self._call = self.reactor.callLater(delay, self._run)

    def stopService(self):  # noqa: N802
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._running is not None:
            d = defer.Deferred()
            self._running.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        return None


class InOrder(service.MultiService):
    """A MultiService whose children stop one after another, the last added first, each stop
    waited for before the next begins (twisted's MultiService stops them all at once). A child
    whose stop fails is logged and the next one still stops."""

    @defer.inlineCallbacks
    def stopService(self):  # noqa: N802
        service.Service.stopService(self)
        for child in reversed(list(self)):
            if child.running:
                try:
                    yield defer.maybeDeferred(child.stopService)
                except Exception:  # noqa: BLE001
                    log.failure("stopping {name} failed", name=child.name)


class BankService(service.MultiService):
    """One bank's flow in the service tree: its ticker (a child) runs `flow.tick` while this
    service runs. It is a child of the lease the bank acts under, so it runs only while that
    lease is held. Stopping it lets the step in progress and the bank's core work (poll, load,
    push) finish: the Deferred fires then, and no new step starts meanwhile."""

    def __init__(self, reactor, flow: BankFlow, interval: float):
        super().__init__()
        self.flow = flow
        self.setName(f"bank-{flow.bank_id}")
        self.ticker = Ticker(reactor, f"flow-{flow.bank_id}", flow.tick, interval)
        self.ticker.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802
        self.flow.stopping = False
        super().startService()

    def stopService(self):  # noqa: N802
        self.flow.stopping = True
        d = defer.DeferredList([defer.maybeDeferred(super().stopService), self.flow.core_idle()])
        d.addCallback(lambda _: None)
        return d


class SchedulerService(service.Service):
    """The scheduled retries (gateway/scheduler.py) as a service: a child of the single (or
    "core") lease, so they run on the active daemon only. A job already running finishes on
    its own thread."""

    def __init__(self, scheduler: RetryScheduler):
        self.scheduler = scheduler
        self.setName("scheduler")

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.scheduler.start()

    def stopService(self):  # noqa: N802
        super().stopService()
        self.scheduler.shutdown()


class _AdaptersService(service.Service):
    """The banks' adapters: stopped after the leases (so after every flow), it closes their
    connections (an HTTPS pool) once no step can use them."""

    def __init__(self, gw: "Gateway"):
        self.gw = gw
        self.setName("bank-adapters")

    def stopService(self):  # noqa: N802
        super().stopService()
        return defer.DeferredList([defer.maybeDeferred(f.adapter.close) for f in self.gw.flows.values()])


class _DatabaseService(service.Service):
    def __init__(self, database: dbmod.Database):
        self.database = database
        self.setName("database")

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.database.start()

    def stopService(self):  # noqa: N802
        super().stopService()
        self.database.stop()


class _CoreService(service.Service):
    """The core client, and the one "core-unreachable" alarm episode: raised (or updated) when
    a core call fails after its retries, cleared by the next good answer."""

    def __init__(self, core: ICoreSystem, database: dbmod.Database | None = None, reactor=None):
        self.core, self.database, self.reactor = core, database, reactor
        self.setName("core-client")
        self.failing: bool | None = None    # None: not known since start (an old episode may be open)
        from gateway.health import CoreLink
        self.link = CoreLink()              # last success / error, for health and /metrics
        if database is not None:
            core.watch(self._heard)

    def _heard(self, problem) -> None:
        from gateway.flow import error_text, iso
        from gateway.rules import clear_alarm, raise_alarm
        if self.core.closing or not self.running:   # a stop is not an outage
            return
        self.link.heard(self.reactor.seconds(), None if problem is None else error_text(problem))
        if problem is None:
            if self.failing is False:
                return
            self.failing = False
            d = self.database.run(lambda c: clear_alarm(c, iso(self.reactor.seconds()), "core-unreachable"))
        else:
            self.failing = True
            msg = f"the core cannot be reached or answers badly: {error_text(problem)}"[:500]
            d = self.database.run(lambda c: raise_alarm(c, iso(self.reactor.seconds()), "critical",
                                                        "core-unreachable", msg))
        d.addErrback(lambda f: log.failure("could not record the core link's state", f))

    def stopService(self):  # noqa: N802
        super().stopService()
        return self.core.close()


def _refusal_journal(reactor, database: dbmod.Database, journal: Journal):
    """The RPC layer's journal hook: refused and malformed calls get an entry of their own.

    A call that succeeds was journaled by its command, in the transaction of its change.
    """
    from gateway.flow import iso
    from gateway.journal import Entry

    def record(caller, method, params, outcome):
        if "error" not in outcome:
            return None
        payload = json.dumps({"method": method, "params": params, **outcome}, ensure_ascii=False,
                             default=str).encode()
        err = outcome["error"]
        entry = Entry("in", caller.who[:64], "rpc", method or "(malformed)",
                      f"refused {err['code']}: {err['message']}"
                      + (f" [field {err['field']}]" if err.get("field") else ""),
                      payload=payload, order_no=(params.get("order_no") if isinstance(
                          params.get("order_no"), str) else None), verified=f"refused {err['code']}")
        return database.run(lambda conn: journal.append(conn, entry, iso(reactor.seconds())))
    return record


class _RpcService(service.Service):
    """The local RPC (core-api.md "Gateway RPC"): a Unix socket, and 127.0.0.1 with a token if set."""

    def __init__(self, reactor, cfg: GatewayConfig, commands, journal_hook):
        self.reactor, self.cfg, self.commands, self.journal_hook = reactor, cfg, commands, journal_hook
        self.listeners = None
        self.setName("rpc")

    def startService(self) -> None:  # noqa: N802
        from gateway.rpc import listen_rpc, rpc_site
        super().startService()
        r = self.cfg.rpc
        site = rpc_site(self.commands, self.journal_hook, reactor=self.reactor, head_timeout=r.head_timeout_s,
                        body_timeout=r.body_timeout_s, max_connections=r.max_connections, callers=r.callers)
        self.listeners = listen_rpc(self.reactor, site, unix_path=r.unix_socket, unix_mode=r.unix_mode,
                                    tcp_port=r.tcp_port, token_file=r.token_file, tls_listen=r.tls_listen or None,
                                    tls_cert=r.tls_cert, tls_key=r.tls_key, client_ca=r.client_ca)

    def stopService(self):  # noqa: N802
        super().stopService()
        if self.listeners is not None:
            return self.listeners.stop()
        return None


class Gateway(InOrder):
    """The whole daemon, a tree of services stopped in the reverse of the order they were added,
    each waited for (InOrder): the leases (under each, what runs while it is held: the banks'
    flows, each a BankService with its ticker, and the scheduler), then the banks' adapters,
    the console, /metrics, the RPC, the core client, the watches, the database.

    The flows and the scheduler run only while `leadership` says this daemon is active for
    their lease; a standby daemon serves the RPC and nothing else.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flows: dict[str, BankFlow] = {}
        self.banks: dict[str, BankService] = {}
        self.tickers: dict[str, Ticker] = {}      # each bank's BankService.ticker
        self.database: dbmod.Database | None = None
        self.core: ICoreSystem | None = None
        self.core_link = None           # gateway.health.CoreLink: the core as last seen
        self.commands = None
        self.leadership: LeaseSet | None = None
        self.leases: service.MultiService | None = None    # the Leadership services' parent
        self.scheduler: RetryScheduler | None = None
        self.disk_watch = None          # gateway.disk_watch.DiskWatch: free space, disk-space-low
        self.stopping = False
        self.build: dict | None = None          # what reload() needs to make flows (make_service)
        self._reload_lock: defer.DeferredLock | None = None

    def kick(self, bank_id: str) -> None:
        """Wake a bank's flow now (if this daemon runs it)."""
        ticker = self.tickers.get(bank_id)
        if ticker is not None and ticker.running:
            ticker.kick()

    def lease_changed(self) -> None:
        """A lease was taken or let go (its children are started or stopped by Leadership)."""
        from gateway.metrics import METRICS
        METRICS.active.set(1 if self.leadership is not None and self.leadership.active else 0)

    # --- SIGHUP: conf/banks/ read again -----------------------------------------------------
    def reload(self) -> defer.Deferred:
        """Read the configuration's bank files again and apply them without a restart: a bank
        added gets its flow (and, per bank, its lease), a bank removed has its flow finish its
        step and stop (its lease released), a bank changed is stopped and started again with
        the new file. The new configuration is checked whole first (every file and key, each
        new or changed bank's adapter: keys opened); if anything is wrong nothing changes, the
        running banks go on, and one "config-reload-refused" alarm episode names the file and
        key (cleared by the next good reload). Of the daemon's own file only the disk-space
        thresholds ([work] min_free_mb, critical_free_mb) apply at once (and are checked at
        once); its other settings (database, core, rpc, ...) take effect at the next restart.
        Fires with a summary dict."""
        if self._reload_lock is None:
            self._reload_lock = defer.DeferredLock()
        return self._reload_lock.run(lambda: defer.ensureDeferred(self._reload()))

    async def _reload(self) -> dict:
        import dataclasses

        from gateway import config as configmod
        from gateway.flow import iso
        from gateway.rules import clear_alarm, raise_alarm
        ctx = self.build
        if ctx is None or not self.running or self.stopping:
            return {"ok": False, "errors": ["the daemon is not running"]}
        reactor, old = ctx["reactor"], ctx["cfg"]
        adapters: dict = {}
        try:
            new = configmod.load(old.file)
            # the daemon's own settings stay, but for the disk thresholds (monitoring only)
            running = dataclasses.replace(old, banks=new.banks, disk=new.disk)
            added = [b for b in new.banks if b not in old.banks]
            removed = [b for b in old.banks if b not in new.banks]
            changed = [b for b in new.banks if b in old.banks and new.banks[b] != old.banks[b]]
            errors = []
            for b in added + changed:
                try:
                    adapters[b] = _timed(make_adapter(reactor, new.banks[b], running, ctx["faults"]))
                except AdapterError as e:
                    errors.append(str(e))
                except Exception as e:  # noqa: BLE001  (a plugin's surprise refuses the reload too)
                    errors.append(f"{new.banks[b].file}: {type(e).__name__}: {e}")
            if errors:
                raise configmod.ConfigError(errors)
        except configmod.ConfigError as e:
            for a in adapters.values():
                await defer.maybeDeferred(a.close)
            msg = ("reload of the configuration refused, the running banks go on unchanged: "
                   + "; ".join(e.errors))[:2000]
            log.error("reload refused: {errors}", errors="; ".join(e.errors))
            await self.database.run(lambda c: raise_alarm(c, iso(reactor.seconds()), "critical",
                                                          "config-reload-refused", msg))
            return {"ok": False, "errors": e.errors}
        await self.database.run(lambda c: clear_alarm(c, iso(reactor.seconds()), "config-reload-refused"))
        for b in removed + changed:
            await self._remove_bank(b)
        ctx["cfg"] = running
        if self.disk_watch is not None and self.disk_watch.settings != new.disk:
            self.disk_watch.settings = new.disk
            self.disk_watch.ticker.kick()
        for b in changed + added:
            self._add_bank(running, new.banks[b], adapters[b])
        if self.scheduler is not None:
            self.scheduler.bank_ids = tuple(self.flows)
        log.info("configuration reloaded: banks added {added}, changed {changed}, removed {removed}",
                 added=added or "none", changed=changed or "none", removed=removed or "none")
        return {"ok": True, "added": added, "changed": changed, "removed": removed}

    async def _remove_bank(self, bank_id: str) -> None:
        """The bank's flow finishes its step and stops (its BankService leaves the tree; per
        bank, with its lease, released after), then its adapter is closed."""
        flow, bank = self.flows[bank_id], self.banks[bank_id]
        lead = self.leadership.leaders.pop(bank_id, None) if self.leadership is not None else None
        await defer.maybeDeferred((lead or bank).disownServiceParent)
        await defer.maybeDeferred(flow.adapter.close)
        del self.flows[bank_id], self.banks[bank_id], self.tickers[bank_id]

    def _add_bank(self, cfg, bank, adapter) -> None:
        ctx = self.build
        lead = ctx["make_leader"](bank.bank_id) if ctx["per_bank"] else None
        fence = lead.fence if lead is not None else self.leadership.leaders[SINGLE].fence
        flow = BankFlow(ctx["reactor"], cfg, bank, dbmod.FencedDatabase(self.database, fence), ctx["journal"],
                        self.core, adapter, ctx["faults"])
        bank_service = self._bank_service(flow, min(bank.status_poll_s, cfg.core.poll_interval_s))
        if lead is not None:
            self.leadership.leaders[bank.bank_id] = lead
            bank_service.setServiceParent(lead)
            lead.setServiceParent(self.leases)   # started: it takes the lease, then starts the flow
        else:
            bank_service.setServiceParent(self.leadership.leaders[SINGLE])   # starts if active

    def _bank_service(self, flow: BankFlow, interval: float) -> BankService:
        bank_service = BankService(self.build["reactor"], flow, interval)
        self.flows[flow.bank_id] = flow
        self.banks[flow.bank_id] = bank_service
        self.tickers[flow.bank_id] = bank_service.ticker
        return bank_service

    def stopService(self):  # noqa: N802
        """Stop the tree (InOrder): the leases first, each letting its flows finish their step."""
        log.info("stopping: letting each bank's current step finish")
        self.stopping = True
        if self.core is not None:
            self.core.close()   # a call waiting to retry or in flight (a stream too) ends now
        d = super().stopService()
        d.addCallback(lambda _: log.info("stopped"))
        return d


class _MetricsService(service.Service):
    """/metrics on [metrics] listen, and the ticker that reads the database figures for it."""

    def __init__(self, reactor, settings, database: dbmod.Database, dirs: dict[str, str], gw=None):
        from gateway.metrics import METRICS
        self.reactor, self.settings, self.metrics, self.dirs = reactor, settings, METRICS, dirs
        self.gw = gw        # its links and leases, and /healthz /readyz
        self.port = None
        self.ticker = Ticker(reactor, "metrics-snapshot", self._refresh, settings.refresh_s)
        self.database = database

    async def _refresh(self) -> None:
        def read(now: float) -> None:
            # its own read-only connection: figures are read on a standby too, and never
            # count as a state change for leadership's fencing
            with self.database.engine.connect() as conn:
                self.metrics.refresh(conn, now, self.dirs)
        if self.gw is not None:
            self.metrics.observe(self.gw)
        await self.database.run_plain(read, self.reactor.seconds())

    def startService(self) -> None:  # noqa: N802
        from gateway.metrics import metrics_site
        super().startService()
        self.port = self.reactor.listenTCP(self.settings.port, metrics_site(self.metrics, self.gw, self.reactor),
                                           interface=self.settings.host)
        self.ticker.startService()
        log.info("metrics on http://{host}:{port}/metrics", host=self.settings.host,
                 port=self.port.getHost().port)

    def stopService(self):  # noqa: N802
        super().stopService()
        d = defer.maybeDeferred(self.ticker.stopService)
        if self.port is not None:
            port, self.port = self.port, None
            d.addBoth(lambda _: port.stopListening())
        return d


def _timed(adapter):
    """An adapter that times its requests (a `timing` attribute, adapters/interface.py) gets one
    feeding /metrics (gateway_bank_request_*); one without is left as it is, untimed."""
    from adapters.interface import RequestTiming
    from gateway.metrics import METRICS
    if isinstance(getattr(adapter, "timing", None), RequestTiming):
        adapter.timing = METRICS.bank_timing(adapter.bank_id)
    return adapter


def _make_adapters(reactor, cfg: GatewayConfig, faults: Faults) -> dict:
    """One verified adapter per bank, found by its dialect; every problem reported together."""
    adapters, errors = {}, []
    for bank_id, bank in cfg.banks.items():
        try:
            adapters[bank_id] = _timed(make_adapter(reactor, bank, cfg, faults))
        except AdapterError as e:
            errors.append(str(e))
    if errors:
        raise StartupError("cannot start:\n  " + "\n  ".join(errors))
    return adapters


def make_service(cfg: GatewayConfig, reactor=None, core=None) -> Gateway:
    """The daemon's service tree; `core` (an ICoreSystem) replaces the HTTP client of
    [core] (tests give simulators/memory_core.py:MemoryCore)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor
        reactor = _reactor
    from gateway.allocator import fix_thresholds
    fix_thresholds()    # big buffers go back to the system when freed (gateway/allocator.py)
    try:
        faults = Faults(cfg.crash_after)
    except ValueError as e:
        raise StartupError(f"{cfg.file}: {e}") from None
    adapters = _make_adapters(reactor, cfg, faults)
    engine = dbmod.make_engine(cfg.database_url)
    try:
        dbmod.check_migrated(engine, cfg.file)
    except dbmod.NotMigrated as e:
        engine.dispose()
        raise StartupError(str(e)) from None
    except Exception as e:  # noqa: BLE001  (cannot connect: say which URL)
        engine.dispose()
        raise StartupError(f"{cfg.file}: database.url: cannot open "
                           f"{engine.url.render_as_string(hide_password=True)}: {e}") from None
    from gateway.journal_watch import JournalWatch, check_at_start
    problem = check_at_start(engine, cfg)
    if problem:
        engine.dispose()
        raise StartupError(problem)
    if cfg.calendar is not None:
        from gateway.workdays import warn_provisional
        warn_provisional(cfg.calendar)   # configuration loading leaves it to the daemon
    from gateway.metrics import METRICS
    gw = Gateway()
    database = dbmod.Database(reactor, engine, cfg.db_threads, bulk_threads=cfg.db_bulk_threads,
                              read_threads=cfg.db_read_threads, metrics=METRICS)
    gw.database = database
    _DatabaseService(database).setServiceParent(gw)
    journal = Journal(cfg.journal_archive_dir, cfg.journal_inline_max_bytes, key=cfg.journal_auth.key)
    # Right after the database: stopped just before it, so its last head export comes after
    # every other service (the RPC too) has stopped appending.
    JournalWatch(reactor, engine, journal, cfg.journal_auth,
                 ticker_factory=lambda job, interval: Ticker(reactor, "journal-watch", job, interval)
                 ).setServiceParent(gw)
    from gateway.disk_watch import DiskWatch, watched_dirs
    disk_dirs = watched_dirs(cfg.work_dir, cfg.journal_archive_dir, cfg.database_url)
    gw.disk_watch = DiskWatch(reactor, database, disk_dirs, cfg.disk,
                              ticker_factory=lambda job, interval: Ticker(reactor, "disk-watch", job, interval))
    gw.disk_watch.setServiceParent(gw)
    if core is None:
        core = CoreClient(reactor, cfg.core.base_url, cfg.core.token.value, timeout_s=cfg.core.timeout_s,
                          max_delay_s=cfg.core.retry_max_delay_s, call_deadline_s=cfg.core.call_deadline_s,
                          stream_window_s=cfg.core.stream_window_s,
                          stream_min_bytes_per_s=cfg.core.stream_min_bytes_per_s,
                          timing=METRICS.core_timing())
    gw.core = core
    core_service = _CoreService(core, database, reactor)
    core_service.setServiceParent(gw)
    gw.core_link = core_service.link
    gw.commands = Commands(reactor, database, journal, gw)
    # Before the RPC: stopped after it, so the last answers' entries are committed before the
    # database stops.
    from gateway.read_journal import ReadCallJournal
    gw.commands.read_journal = ReadCallJournal(database.run, gw.commands.write_read_entry,
                                               lost=METRICS.read_calls_unjournaled.inc)
    gw.commands.read_journal.setServiceParent(gw)
    if cfg.rpc is not None:
        _RpcService(reactor, cfg, gw.commands, _refusal_journal(reactor, database, journal)
                    ).setServiceParent(gw)
    # Leases (gateway/leadership.py): one for everything, or "core" plus one per bank; each
    # bank's flow runs its transactions through a database fenced by its lease.
    try:
        claim_work_dir(cfg.work_dir)
    except RuntimeError as e:
        engine.dispose()
        raise StartupError(f"{cfg.file}: work.dir: {e}") from None
    holder = default_holder()
    if cfg.ha_mode == "per-bank":
        groups = [(CORE, [])] + [(b, [b]) for b in cfg.banks]
    else:
        groups = [(SINGLE, list(cfg.banks))]
    leaders, fence_of = {}, {}

    def make_leader(name) -> Leadership:
        lease = lease_for_url(cfg.database_url, name, holder, lease_s=cfg.ha_lease_s)
        eager = cfg.ha_mode == "single" or not cfg.ha_prefer or name in cfg.ha_prefer
        return Leadership(
            reactor, lease, name=name, retry_s=cfg.ha_retry_s, lease_s=cfg.ha_lease_s,
            margin_s=cfg.ha_margin_s, patience=1.0 if eager else 2.0,
            on_active=gw.lease_changed, on_standby=gw.lease_changed)
    for name, bank_ids in groups:
        try:
            leaders[name] = make_leader(name)
        except ValueError as e:
            engine.dispose()
            raise StartupError(f"{cfg.file}: database.url: {e}") from None
        for b in bank_ids:
            fence_of[b] = leaders[name].fence
    if cfg.metrics is not None:
        _MetricsService(reactor, cfg.metrics, database, disk_dirs, gw).setServiceParent(gw)
    if cfg.console is not None:
        from gateway.console.auth import UsersFileError
        from gateway.console.service import ConsoleService
        try:
            ConsoleService(reactor, cfg.console, cfg.database_url, gw, journal,
                           cfg.journal_auth.key).setServiceParent(gw)
        except UsersFileError as e:
            engine.dispose()
            raise StartupError(f"{cfg.file}: console.users_file: {e}") from None
    _AdaptersService(gw).setServiceParent(gw)
    gw.build = {"reactor": reactor, "cfg": cfg, "faults": faults, "journal": journal,
                "make_leader": make_leader, "per_bank": cfg.ha_mode == "per-bank"}
    # What runs under each lease is its child: the scheduler under the single or "core" lease,
    # each bank's flow under the single lease or its own.
    gw.scheduler = RetryScheduler(reactor, database.engine, journal, cfg.calendar, cfg.retry_times,
                                  cfg.banks, gw.kick)
    main = leaders[CORE if cfg.ha_mode == "per-bank" else SINGLE]
    gw.scheduler.fence = main.fence
    SchedulerService(gw.scheduler).setServiceParent(main)
    for bank_id, bank in cfg.banks.items():
        flow = BankFlow(reactor, cfg, bank, dbmod.FencedDatabase(database, fence_of[bank_id]), journal,
                        core, adapters[bank_id], faults)
        interval = min(bank.status_poll_s, cfg.core.poll_interval_s)
        gw._bank_service(flow, interval).setServiceParent(leaders[bank_id if cfg.ha_mode == "per-bank"
                                                                  else SINGLE])
    # The last child, so the first stopped: each lease stops its flows (their steps finished)
    # and the scheduler, then is released; the leases stop together.
    gw.leadership = LeaseSet(leaders)
    gw.leases = service.MultiService()
    gw.leases.setName("leases")
    for lead in leaders.values():
        lead.setServiceParent(gw.leases)
    gw.leases.setServiceParent(gw)
    return gw
