"""Prometheus metrics (/metrics): what the daemon is doing, for dashboards and alert rules.

Three kinds of figures. Durations and errors are observed where the work happens: a flow
stage when it ends (`stage`), each request to a bank or the core when its answer is in (the
adapters and the core client time them through the `RequestTiming` the daemon gives them:
`bank_timing`, `core_timing`), each database job when a pool thread takes it (`db_waited`).
All of them are read on one monotonic clock (`clock`), in whichever thread the work runs.
What the daemon holds in memory (each bank's link state, the core
link, the leadership epoch) is read by `observe` on the reactor thread. Figures that live in
the database (items and amounts by state per bank, batches by state, open alarms by
severity, journal size) come from a snapshot that a ticker refreshes off the reactor
thread every `refresh_s`; a scrape only reads the last snapshot, so scraping never
waits on the database and a slow database never stalls a scrape.

Served by `prometheus_client`'s Twisted resource on `[metrics] listen` (loopback by
default). The alert rules in conf/prometheus/alerts.yml are written against these names.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Connection, func, select

from adapters.interface import RequestTiming
from gateway import __version__

# A stage runs from well under a second (a small batch built) to minutes (a million items
# loaded or applied); a request from milliseconds (loopback) to the call deadlines (60 s).
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Snapshot:
    """Collector over the last database snapshot (a dict of family -> [(labels, value)])."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, list[str], list[tuple[tuple, float]]]] = {}

    def collect(self):
        for name, (doc, labels, samples) in self.families.items():
            g = GaugeMetricFamily(name, doc, labels=labels)
            for lv, v in samples:
                g.add_metric(list(lv), v)
            yield g


class Metrics:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock      # monotonic seconds: every duration below is read on it
        r = self.registry = CollectorRegistry()
        self.snapshot = _Snapshot()
        r.register(self.snapshot)
        Gauge("gateway_build_info", "the running release", ["version"], registry=r).labels(__version__).set(1)
        self.last_core_ok = Gauge("gateway_core_last_success_timestamp_seconds",
                                  "when the core last answered a call well", registry=r)
        self.last_bank_ok = Gauge("gateway_bank_last_success_timestamp_seconds",
                                  "when a bank last answered well", ["bank"], registry=r)
        self.link_up = Gauge("gateway_bank_link_up", "1 while the bank's link answers, 0 while it fails",
                             ["bank"], registry=r)
        self.active = Gauge("gateway_leader_active", "1 on the daemon that acts, 0 on a standby", registry=r)
        self.epoch = Gauge("gateway_leader_epoch", "the leadership epoch this daemon last held", registry=r)
        self.snapshot_at = Gauge("gateway_snapshot_timestamp_seconds",
                                 "when the database figures were last read", registry=r)
        self.stage_seconds = Histogram(
            "gateway_stage_duration_seconds",
            "how long a flow stage took, per bank: load (an order pulled from the core, validated "
            "and stored), build (a batch file built, signed, encrypted), submit (from the upload's "
            "start until the bank accepted the batch), apply (results fetched, verified, applied), "
            "push (an order's results posted to the core), refund (from the first RF01 until the bank "
            "accepted the refund)", ["bank", "stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.bank_seconds = Histogram(
            "gateway_bank_request_duration_seconds",
            "latency of one request to a bank (a message such as BP01, or an SFTP session, an HTTPS "
            "call) by outcome: ok, refused (answered with a refusal), error (no usable answer)",
            ["bank", "tx", "outcome"], buckets=_REQUEST_BUCKETS, registry=r)
        self.bank_errors = Counter(
            "gateway_bank_request_errors",
            "requests to a bank not answered well, by code: the bank's return code (E009, HTTP409) "
            "or the failure's class (connect_failed, timeout, unverified, ...)",
            ["bank", "tx", "code"], registry=r)
        self.core_seconds = Histogram(
            "gateway_core_request_duration_seconds",
            "latency of one request to the core by endpoint and outcome (ok: 2xx; error)",
            ["endpoint", "outcome"], buckets=_REQUEST_BUCKETS, registry=r)
        self.core_errors = Counter(
            "gateway_core_request_errors",
            "requests to the core not answered well, by code: the HTTP status or the failure's class",
            ["endpoint", "code"], registry=r)
        self.read_calls_unjournaled = Counter(
            "gateway_read_calls_unjournaled",
            "read-only RPC calls answered whose journal entry could not be committed (the database "
            "refused the write behind the answer; see the log)", registry=r)
        self.db_wait = Histogram(
            "gateway_db_wait_seconds",
            "how long a database job waited for a pool thread before it ran",
            buckets=_WAIT_BUCKETS, registry=r)

    # --- observed where the work happens ------------------------------------------------------
    def stage(self, bank: str, stage: str, started: float) -> None:
        """A stage of `bank` that began at `started` (on `clock`) ended well now."""
        self.stage_seconds.labels(bank, stage).observe(max(0.0, self.clock() - started))

    def bank_timing(self, bank: str) -> RequestTiming:
        """What a bank's adapter times its requests with."""
        def observe(tx: str, seconds: float, outcome: str, code: str) -> None:
            self.bank_seconds.labels(bank, tx, outcome).observe(seconds)
            if outcome != "ok":
                self.bank_errors.labels(bank, tx, code or outcome).inc()
        return RequestTiming(observe, self.clock)

    def core_timing(self) -> RequestTiming:
        """What the core client times its requests with (tx: the endpoint)."""
        def observe(endpoint: str, seconds: float, outcome: str, code: str) -> None:
            self.core_seconds.labels(endpoint, outcome).observe(seconds)
            if outcome != "ok":
                self.core_errors.labels(endpoint, code or outcome).inc()
        return RequestTiming(observe, self.clock)

    def db_waited(self, queued: float) -> None:
        """A database job queued at `queued` (on `clock`) is starting now, on its pool thread."""
        self.db_wait.observe(max(0.0, self.clock() - queued))

    # --- the links and leases as the daemon holds them in memory -------------------------------
    def observe(self, gw) -> None:
        """Each bank's link (its adapter's link_state(), the same one `health` shows), the core
        link, and the leadership epoch: read on the reactor before each snapshot."""
        for bank_id, flow in gw.flows.items():
            state = getattr(flow.adapter, "link_state", None)
            lk = state() if state is not None else None
            if lk is None or (lk.get("last_ok_at") is None and lk.get("last_error_at") is None):
                continue        # not known yet: no figure rather than a guess
            self.link_up.labels(bank_id).set(1 if lk.get("failures", 0) == 0 else 0)
            if lk.get("last_ok_at") is not None:
                self.last_bank_ok.labels(bank_id).set(lk["last_ok_at"])
        core = getattr(gw, "core_link", None)
        if core is not None and core.last_ok_at is not None:
            self.last_core_ok.set(core.last_ok_at)
        lead = getattr(gw, "leadership", None)
        if lead is not None:
            epochs = [le.epoch for le in lead if le.active and le.epoch is not None]
            if epochs:
                self.epoch.set(max(epochs))

    # --- the database snapshot ----------------------------------------------------------------
    def refresh(self, conn: Connection, now: float, dirs: dict[str, str] | None = None) -> None:
        """Read the figures that live in the database and on disk (run off the reactor thread)."""
        from gateway.models import alarms, batches, items, journal, orders
        fam: dict = {}
        rows = conn.execute(select(orders.c.bank_id, items.c.status, func.count(), func.sum(items.c.amount))
                            .select_from(items.join(orders, items.c.order_no == orders.c.order_no))
                            .group_by(orders.c.bank_id, items.c.status)).all()
        fam["gateway_items"] = ("items by state per bank", ["bank", "state"],
                                [((b, s), n) for b, s, n, _ in rows])
        fam["gateway_items_amount_fen"] = ("amount of items by state per bank, in fen", ["bank", "state"],
                                           [((b, s), int(a or 0)) for b, s, _, a in rows])
        rows = conn.execute(select(orders.c.bank_id, orders.c.state, func.count())
                            .group_by(orders.c.bank_id, orders.c.state)).all()
        fam["gateway_orders"] = ("orders by state per bank", ["bank", "state"], [((b, s), n) for b, s, n in rows])
        rows = conn.execute(select(batches.c.bank_id, batches.c.state, func.count())
                            .group_by(batches.c.bank_id, batches.c.state)).all()
        fam["gateway_batches"] = ("batches by state per bank", ["bank", "state"], [((b, s), n) for b, s, n in rows])
        rows = conn.execute(select(alarms.c.severity, func.count()).where(alarms.c.cleared_at.is_(None))
                            .group_by(alarms.c.severity)).all()
        per = {"warning": 0, "critical": 0} | {s: n for s, n in rows}
        fam["gateway_alarms_open"] = ("open alarm episodes by severity", ["severity"],
                                      [((s,), n) for s, n in per.items()])
        rows = conn.execute(select(alarms.c.kind, alarms.c.bank_id, func.count())
                            .where(alarms.c.cleared_at.is_(None))
                            .group_by(alarms.c.kind, alarms.c.bank_id)).all()
        fam["gateway_alarms_open_by_kind"] = ("open alarm episodes by kind and bank", ["kind", "bank"],
                                              [((k, b or ""), n) for k, b, n in rows])
        n, size = conn.execute(select(func.count(), func.sum(journal.c.payload_size))).one()
        fam["gateway_journal_entries"] = ("entries in the journal", [], [((), n)])
        fam["gateway_journal_payload_bytes"] = ("bytes of payload kept by the journal", [], [((), int(size or 0))])
        from gateway.disk_watch import free_bytes
        free = [((label,), space[0]) for label, space in free_bytes(dirs or {}).items()]
        fam["gateway_dir_free_bytes"] = ("free bytes on the file system of the work and journal folders "
                                         "and of the SQLite database", ["dir"], free)
        self.snapshot.families = fam
        self.snapshot_at.set(now)


METRICS = Metrics()


def metrics_site(metrics: Metrics = METRICS, gw=None, reactor=None):
    """/metrics, and with *gw* the supervisor's /healthz (the process turns) and /readyz
    (started, not stopping, the database answers): 200 or 503 with a JSON body."""
    from prometheus_client.twisted import MetricsResource
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    if gw is not None:
        root.putChild(b"healthz", _Probe(gw, reactor, ready=False))
        root.putChild(b"readyz", _Probe(gw, reactor, ready=True))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site


def _probe_resource():
    import json

    from twisted.internet import defer
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    class Probe(Resource):
        isLeaf = True

        def __init__(self, gw, reactor, ready: bool):
            super().__init__()
            self.gw, self.reactor, self.ready = gw, reactor, ready

        def render_GET(self, request):  # noqa: N802
            from gateway import health
            request.setHeader(b"Content-Type", b"application/json")
            if not self.ready:
                return json.dumps(health.live(self.gw)).encode() + b"\n"

            def answer(r):
                request.setResponseCode(200 if r["ready"] else 503)
                request.write(json.dumps(r).encode() + b"\n")
                request.finish()
            d = defer.ensureDeferred(health.ready(self.gw, self.reactor, timeout_s=2.0))
            d.addCallback(answer)
            d.addErrback(lambda f: (request.setResponseCode(503), request.write(b'{"ready": false}\n'),
                                    request.finish()))
            return NOT_DONE_YET
    return Probe


def _Probe(gw, reactor, ready: bool):  # noqa: N802
    return _probe_resource()(gw, reactor, ready)
