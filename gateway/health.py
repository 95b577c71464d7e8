"""What `health` answers (the RPC method, `gatewayctl health`, /healthz and /readyz).

One report, built from what the daemon knows in memory and one short database probe:

- per bank: the link as its adapter last saw it (`link_state()`: last success, last error
  and when, consecutive failures, failing since), whether its flow runs here, its open
  alarms, and the batches waiting (not yet DONE/RJCT/REFUSED) with the oldest;
- the core link (last good answer, last failure, consecutive failures: `CoreLink`);
- the database (a probe bounded by a timeout: a hung database answers "down", not never);
- leadership (role and each lease) and the version.

Status: "down" when the database cannot be read (nothing can progress), "degraded" when a
link fails, a flow that should run does not, or a critical alarm is open; else "ok".
`gatewayctl health` exits 0 / 1 / 2 for ok / degraded / down.

Liveness answers whether the process still turns (the reactor answered); readiness
whether it can do its work: started, not stopping, the database answering. A standby
daemon is ready (it serves the RPC; the leases decide who acts).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any
from protocols import chinatime

if TYPE_CHECKING:   # SQLAlchemy is imported where it is used: gatewayctl health needs only the constants
    from sqlalchemy import Connection

OK, DEGRADED, DOWN = "ok", "degraded", "down"
EXIT_CODES = {OK: 0, DEGRADED: 1, DOWN: 2}
PROBE_TIMEOUT_S = 5.0


iso = chinatime.iso   # China time, as everywhere else (it was the host's zone)


class CoreLink:
    """The core link as last seen: fed every call's outcome by `CoreClient.watch`."""

    def __init__(self) -> None:
        self.last_ok_at: float | None = None
        self.last_error_at: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.failing_since: float | None = None

    def heard(self, now: float, problem: Exception | str | None) -> None:
        if problem is None:
            self.last_ok_at, self.failures, self.failing_since = now, 0, None
        else:
            self.last_error_at, self.last_error = now, str(problem)[:300]
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = now

    def state(self) -> dict:
        return {"last_ok_at": self.last_ok_at, "last_error_at": self.last_error_at,
                "last_error": self.last_error, "failures": self.failures,
                "failing_since": self.failing_since}


def link_view(state: dict | None) -> dict:
    """A link_state() for people: times in ISO 8601 with the offset, `up` judged."""
    if state is None:
        return {"known": False, "up": None}
    s = dict(state)
    for k in ("last_ok_at", "last_error_at", "failing_since"):
        s[k] = iso(s.get(k))
    s["known"] = state.get("last_ok_at") is not None or state.get("last_error_at") is not None
    s["up"] = (state.get("failures", 0) == 0) if s["known"] else None
    return s


def database_facts(conn: Connection) -> dict:
    """Open alarms and waiting batches, per bank (key None: alarms of no bank)."""
    from gateway.store import alarms, batches
    out: dict[Any, dict] = {}

    def bank(b):
        return out.setdefault(b, {"open_alarms": [], "batches_waiting": 0, "oldest_waiting": None})
    for r in alarms.open_brief(conn):
        bank(r["bank_id"])["open_alarms"].append(
            {"id": r["id"], "severity": r["severity"], "kind": r["kind"], "since": r["at"],
             "last_at": r["last_at"], "count": r["count"], "message": (r["message"] or "")[:300],
             "order_no": r["order_no"], "batch_no": r["batch_no"]})
    rows = batches.waiting_per_bank(conn)
    for b, n, oldest in rows:
        entry = bank(b)
        entry["batches_waiting"] = n
        entry["oldest_waiting"] = batches.oldest_live(conn, b)
    return out


def judge(report: dict) -> tuple[str, list[str]]:
    """The report's status and the reasons for it (each names the bank, link or lease)."""
    reasons: list[str] = []
    if not report["database"]["ok"]:
        return DOWN, [f"database: {report['database'].get('error')}"]
    active = report["role"] == "active"
    for b, part in report["banks"].items():
        link = part["link"]
        if link.get("known") and not link.get("up"):
            reasons.append(f"bank {b}: link failing since {link.get('failing_since')} "
                           f"({link.get('failures')} failures): {link.get('last_error')}")
        if part["acting"] and not part["flow_running"]:
            reasons.append(f"bank {b}: its lease is held but its flow is not running")
        for a in part["open_alarms"]:
            if a["severity"] == "critical":
                reasons.append(f"bank {b}: alarm #{a['id']} {a['kind']} since {a['since']}: {a['message']}")
    core = report["core"]["link"]
    if active and core.get("known") and not core.get("up"):
        reasons.append(f"core: failing since {core.get('failing_since')} ({core.get('failures')} failures): "
                       f"{core.get('last_error')}")
    for a in report.get("open_alarms_other", []):
        if a["severity"] == "critical":
            reasons.append(f"alarm #{a['id']} {a['kind']} since {a['since']}: {a['message']}")
    return (DEGRADED if reasons else OK), reasons


async def probe_database(gw, reactor, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[dict, dict]:
    """({ok, error?, seconds}, facts): one read of the database, bounded by *timeout_s*."""
    from twisted.internet import defer
    t0 = reactor.seconds()
    try:
        d = gw.database.run(database_facts)
        d.addTimeout(timeout_s, reactor)
        facts = await d
    except defer.TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout_s:g} s"}, {}
    except Exception as e:  # noqa: BLE001  (health reports, it does not raise)
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}, {}
    return {"ok": True, "seconds": round(reactor.seconds() - t0, 3)}, facts


def live(gw) -> dict:
    """The process turns: this answer was computed on the reactor."""
    return {"live": True, "status": OK}


async def ready(gw, reactor, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """Started, not stopping, and the database answers within *timeout_s*."""
    db, _ = await probe_database(gw, reactor, timeout_s)
    why = []
    if not gw.running:
        why.append("not started")
    if gw.stopping:
        why.append("stopping")
    if not db["ok"]:
        why.append(f"database: {db['error']}")
    return {"ready": not why, "status": OK if not why else DOWN, "reasons": why}


async def report(gw, reactor, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """The whole health report (see the module's docstring)."""
    from gateway import __version__
    db, facts = await probe_database(gw, reactor, timeout_s)
    lead = getattr(gw, "leadership", None)
    role = lead.status() if lead is not None else {"role": "active", "since": None}
    leases = role.get("leases", {})
    banks = {}
    for bank_id, flow in gw.flows.items():
        ticker = gw.tickers.get(bank_id)
        state = getattr(flow.adapter, "link_state", None)
        f = facts.get(bank_id, {"open_alarms": [], "batches_waiting": 0, "oldest_waiting": None})
        acting = (leases[bank_id]["role"] == "active" if bank_id in leases
                  else role["role"] == "active")
        banks[bank_id] = {"dialect": getattr(flow.adapter, "dialect", None),
                          "link": link_view(state() if state is not None else None),
                          "acting": acting, "flow_running": bool(ticker is not None and ticker.running),
                          **f}
    core_link = getattr(gw, "core_link", None)
    sched = getattr(gw, "scheduler", None)
    out = {"version": __version__, "at": iso(reactor.seconds()),
           "role": role["role"], "role_since": role["since"], "leases": leases,
           "database": db, "banks": banks,
           "core": {"base_url": gw.core.base if gw.core is not None else None,
                    "link": link_view(core_link.state() if core_link is not None else None)},
           "open_alarms_other": [a for b, f in facts.items() if b not in gw.flows for a in f["open_alarms"]],
           "schedule": {"retry_times": list(sched.retry_times) if sched else [],
                        "next_run_times": sched.next_run_times() if sched else []}}
    out["status"], out["reasons"] = judge(out)
    return out
