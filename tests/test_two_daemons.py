"""Two `gatewayd` processes on one PostgreSQL database: they never act twice.

Real processes, real simulators on loopback, each daemon reaching PostgreSQL through its
own `FreezingProxy` (simulators/freezeproxy.py), so a test can cut one daemon's database
link the way a dead switch port does: nothing forwarded, nothing closed. What "twice"
would look like is read from evidence the gateway does not own: the bank simulator's
ledger (credits, and every BP01 it answered) and the core simulator's results; each
daemon's active intervals come from its own log lines ("leadership: now active ... at T")
and from the database's `lease_terms`.

Settings are the defaults a site gets ([ha] lease_s 8, margin_s 2, retry_s 2), so the
takeover figures printed are the ones an operator would see. Each test takes 40-50 s.
"""

from __future__ import annotations

import re
import time

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import task

from simulators import harness
from simulators.freezeproxy import FreezingProxy
from tests.support import install, spec, wait_for

pytestmark = [pytest.mark.loopback, pytest.mark.postgres, pytest.mark.slow]

LEASE_S, MARGIN_S, RETRY_S = 8.0, 2.0, 2.0
_LINE = re.compile(r"leadership: now (active|standby) for (\S+) epoch (\S+) at ([0-9.]+)")


class Pair:
    """Daemons "a" and "b" of one installation, each through its own proxy to PostgreSQL."""

    def __init__(self, reactor, p, sims, cfg, pg_url):
        self.reactor, self.p, self.sims, self.pg_url = reactor, p, sims, pg_url
        self.proxies, self.daemons, self.ended = {}, {}, {}
        base = cfg.read_text()
        for tag in ("a", "b"):
            proxy = FreezingProxy(reactor, "127.0.0.1", 5432)
            port = proxy.listen()
            # sslmode=disable: the proxy reads each startup message (application_name) in clear
            url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{port}/") + "?sslmode=disable"
            assert url != pg_url
            text = (base.replace(f'url = "{pg_url}"', f'url = "{url}"')
                    .replace('dir = "../work"', f'dir = "../work-{tag}"')
                    .replace(f'"{p.rpc_socket}"', f'"{p.rpc_socket}.{tag}"'))
            text += f"\n[ha]\nlease_s = {LEASE_S}\nmargin_s = {MARGIN_S}\nretry_s = {RETRY_S}\n"
            path = p.conf / f"gateway-{tag}.toml"
            path.write_text(text)
            self.proxies[tag] = proxy
            self.daemons[tag] = harness.Daemon(path, p.root / f"gatewayd-{tag}.log")

    def configure(self, tag: str, extra: str) -> None:
        d = self.daemons[tag]
        d.config.write_text(d.config.read_text() + extra)

    def intervals(self, lease: str = "gateway") -> list[tuple[str, int, float, float]]:
        """(daemon, epoch, from, to) of every active interval on *lease*, from the daemons' own
        logs; an interval still open ends when the daemon ended (killed) or now."""
        out = []
        for tag, d in self.daemons.items():
            opened = None
            for role, name, epoch, at in _LINE.findall(d.log_path.read_text() if d.log_path.exists() else ""):
                if name != lease:
                    continue
                if role == "active":
                    opened = (int(epoch), float(at))
                elif opened is not None:
                    out.append((tag, opened[0], opened[1], float(at)))
                    opened = None
            if opened is not None:
                out.append((tag, opened[0], opened[1], self.ended.get(tag, time.time())))
        return sorted(out, key=lambda x: x[2])

    def active_since(self, tag: str, lease: str = "gateway") -> float | None:
        for t, _e, start, _end in self.intervals(lease):
            if t == tag:
                return start
        return None

    def db(self, sql: str, **params):
        e = sa.create_engine(self.pg_url)
        try:
            with e.connect() as c:
                return [tuple(r) for r in c.execute(sa.text(sql), params)]
        finally:
            e.dispose()

    async def stop(self) -> None:
        for tag, d in self.daemons.items():
            if d.running():
                if self.proxies[tag].frozen:
                    d.proc.kill()            # its database is unreachable: it cannot stop cleanly
                    d.proc.wait()
                else:
                    await d.stop_async(self.reactor, timeout=30)
        for proxy in self.proxies.values():
            await proxy.stop()


async def _setup(reactor, tmp_path, pg_url, n_orders=4, items=40):
    specs = [spec(f"HA{i:04d}", items, seed=i) for i in range(1, n_orders + 1)]
    p, keys, sims, cfg = await install(reactor, tmp_path, specs, pg_url)
    return specs, Pair(reactor, p, sims, cfg, pg_url)


async def _start_a_then_b(reactor, pair: Pair, lease: str = "gateway") -> None:
    """A first, active before B starts, so the test knows which one to cut."""
    pair.daemons["a"].start()

    async def a_active():
        return pair.active_since("a", lease) is not None
    await wait_for(reactor, a_active, 30, "daemon a active", pair.daemons["a"])
    pair.daemons["b"].start()


async def _until_a_batch_is(reactor, pair: Pair, states: tuple[str, ...], timeout=30) -> None:
    deadline = reactor.seconds() + timeout
    while not _has_batch(pair, states):
        assert reactor.seconds() < deadline, f"no batch reached {states}"
        await task.deferLater(reactor, 0.05, lambda: None)


def _has_batch(pair: Pair, states) -> bool:
    e = sa.create_engine(pair.pg_url)
    try:
        with e.connect() as c:
            return bool(c.execute(sa.text("SELECT count(*) FROM batches WHERE state = ANY(:s)"),
                                  {"s": list(states)}).scalar())
    finally:
        e.dispose()


async def _all_settled(reactor, pair: Pair, specs, timeout=60, daemon=None):
    async def done():
        s = await pair.sims.core.summary()
        return s if all(o["state"] == "SETTLED" and o["reported_items"] == o["item_count"]
                        for o in s["orders"].values()) else None
    return await wait_for(reactor, done, timeout, "every order SETTLED at the core", daemon)


def _check_nothing_twice(pair: Pair, specs, lease: str = "gateway") -> dict:
    """The evidence the gateway does not own, and the overlap; returns figures for the report."""
    bank = pair.sims.bank
    assert not bank.double_credits(), bank.double_credits()
    for s in specs:
        credits = bank.credits(s.order_no)
        assert len(credits) == s.count == len({c.seq for c in credits}), s.order_no
    bp01 = bank.requests("BP01")
    by_batch: dict[str, list[str]] = {}
    for r in bp01:
        by_batch.setdefault(r["number"], []).append(r["ret_code"])
    for batch_no, codes in by_batch.items():
        assert codes.count("0000") == 1, (batch_no, codes)     # accepted once, never replayed
        assert not {"E004", "E006"} & set(codes), (batch_no, codes)
    # each batch's results applied once (one verified result file per batch in the journal)
    applied = pair.db("SELECT batch_no, count(*) FROM journal WHERE tx_code = 'GET' AND verified = 'ok' "
                      "AND decoded LIKE 'result file %' GROUP BY batch_no")
    assert applied and all(n == 1 for _b, n in applied), applied
    assert {b for b, _ in applied} == {b for (b,) in pair.db("SELECT batch_no FROM batches")}
    # overlap zero: from the daemons' logs ...
    iv = pair.intervals(lease)
    for (t1, e1, s1, f1), (t2, e2, s2, f2) in zip(iv, iv[1:]):
        assert f1 < s2, f"daemon {t1} (epoch {e1}) active until {f1:.3f}, {t2} (epoch {e2}) from {s2:.3f}"
    # ... and from the database: each lease term ends before the next begins
    terms = pair.db("SELECT epoch, acquired_ms, expires_ms, released_ms FROM lease_terms "
                    "WHERE name = :n ORDER BY epoch", n=lease)
    for (e1, _a1, x1, r1), (e2, a2, _x2, _r2) in zip(terms, terms[1:]):
        end = min(v for v in (x1, r1) if v is not None)
        assert end < a2, f"epoch {e1} ran to {end}, epoch {e2} began {a2}"
    for tag, d in pair.daemons.items():
        text = d.log_path.read_text()
        assert "duplicate key" not in text and "UniqueViolation" not in text, tag
    gaps = [s2 - f1 for (_t1, _e1, _s1, f1), (_t2, _e2, s2, _f2) in zip(iv, iv[1:])]
    return {"intervals": iv, "gaps_s": gaps, "bp01": len(bp01)}


def _report(name: str, figures: dict) -> None:
    print(f"\n[two daemons] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()
                                                  if k != "intervals"))


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_active_daemon_mid_order_the_standby_takes_over(reactor, tmp_path, pg_url):
    """Daemon a SIGKILLs itself right after the bank accepted a BP01 (mid-order, before it
    recorded the reply); daemon b takes the lease once the database lets a's expire (within
    lease_s + retry_s: under 15 s), asks BQ01 before anything else, and finishes every order:
    each item credited once by the bank, each BP01 accepted once, each result file applied
    once, and a's and b's active intervals do not overlap."""
    specs, pair = await _setup(reactor, tmp_path, pg_url)
    try:
        pair.configure("a", '\n[testing]\ncrash_after = "BP01-reply-received"\n')
        await _start_a_then_b(reactor, pair)
        a = pair.daemons["a"]
        while a.running():
            await task.deferLater(reactor, 0.02, lambda: None)
        pair.ended["a"] = killed_at = time.time()

        async def b_active():
            return pair.active_since("b")
        b_from = await wait_for(reactor, b_active, 20, "daemon b active", pair.daemons["b"])
        takeover = b_from - killed_at
        assert takeover < LEASE_S + RETRY_S * 1.2 + 1.0 < 15
        await _all_settled(reactor, pair, specs, daemon=pair.daemons["b"])
        figures = _check_nothing_twice(pair, specs)
        # b found a SUBMITTING batch and asked about it before any BP01 of its own
        assert pair.sims.bank.requests("BQ01")
        _report("kill -9", {"takeover_s": round(takeover, 2), **figures})
    finally:
        await pair.stop()
        await pair.sims.stop()


@pytest.mark.parametrize("server_notices_after,only", [
    (3.0, None), (11.0, None), (None, None), (None, b"gateway lease")],
    ids=["server-3s", "server-11s", "server-never", "lease-link-only"])
@pytest_twisted.ensureDeferred
async def test_a_frozen_database_link_never_gives_two_active_daemons(reactor, tmp_path, pg_url,
                                                                     server_notices_after, only):
    """Daemon a's database links are frozen (nothing forwarded, nothing closed) while a batch is
    in flight; the server notices after 3 s, after 11 s, or never; or only a's lease link is
    frozen while its flows' links work (the split brain of the advisory lock: a kept acting
    while b took over). a stands down by itself
    before its lease can end (its renewals go unanswered), b takes over once the database
    lets the lease expire, terminating whatever a's sessions still hold, and finishes every
    order; no BP01 accepted twice, no item credited twice, no result file applied twice, and
    the active intervals (a's log, b's log, and lease_terms) never overlap."""
    specs, pair = await _setup(reactor, tmp_path, pg_url)
    try:
        await _start_a_then_b(reactor, pair)
        await _until_a_batch_is(reactor, pair, ("UPLOADED", "SUBMITTING", "ACCEPTED"))
        frozen_at = time.time()
        pair.proxies["a"].freeze(server_notices_after, only=only)

        async def b_active():
            return pair.active_since("b")
        b_from = await wait_for(reactor, b_active, 25, "daemon b active", pair.daemons["b"])
        iv = pair.intervals()
        a_to = max(f for t, _e, _s, f in iv if t == "a")
        assert a_to < b_from, "a stood down before b began"
        assert a_to - frozen_at <= LEASE_S - MARGIN_S + 0.5, "a acted no longer than its lease allowed"
        takeover = b_from - frozen_at
        assert takeover < 15
        await _all_settled(reactor, pair, specs, daemon=pair.daemons["b"])
        figures = _check_nothing_twice(pair, specs)
        _report(f"frozen {'lease link' if only else 'links'}, server notices {server_notices_after}", {
            "takeover_s": round(takeover, 2), "a_stood_down_after_s": round(a_to - frozen_at, 2),
            "no_active_s": round(b_from - a_to, 2), **figures})
    finally:
        await pair.stop()
        await pair.sims.stop()


@pytest_twisted.ensureDeferred
async def test_per_bank_leases_a_daemon_takes_over_the_bank_of_one_killed(reactor, tmp_path, pg_url):
    """[ha] mode = "per-bank": daemon a prefers the bank, b the core lease; each holds its own
    (b leaves the bank to a), and when a is killed mid-order b takes the bank's lease once it
    expires and finishes the orders; nothing twice, and no overlap on either lease."""
    from simulators.harness import BANK_ID
    specs, pair = await _setup(reactor, tmp_path, pg_url)
    try:
        pair.configure("a", f'mode = "per-bank"\nprefer = ["{BANK_ID}"]\n'
                            '\n[testing]\ncrash_after = "BP01-reply-received"\n')
        pair.configure("b", 'mode = "per-bank"\nprefer = ["core"]\n')
        pair.daemons["a"].start()

        async def a_has_bank():
            return pair.active_since("a", BANK_ID) is not None
        await wait_for(reactor, a_has_bank, 30, "daemon a holding the bank", pair.daemons["a"])
        pair.daemons["b"].start()

        async def b_has_core():
            return pair.active_since("b", "core") is not None or not pair.daemons["a"].running()
        await wait_for(reactor, b_has_core, 30, "daemon b holding the core lease or a killed")
        a = pair.daemons["a"]
        while a.running():
            await task.deferLater(reactor, 0.02, lambda: None)
        pair.ended["a"] = killed_at = time.time()

        async def b_has_bank():
            return pair.active_since("b", BANK_ID)
        b_from = await wait_for(reactor, b_has_bank, 25, "daemon b holding the bank", pair.daemons["b"])
        takeover = b_from - killed_at
        assert takeover < 15
        await _all_settled(reactor, pair, specs, daemon=pair.daemons["b"])
        figures = _check_nothing_twice(pair, specs, BANK_ID)
        core_iv = pair.intervals("core")
        for (t1, _e1, _s1, f1), (t2, _e2, s2, _f2) in zip(core_iv, core_iv[1:]):
            assert f1 < s2, core_iv
        _report("per-bank, kill -9 of the bank's holder", {"takeover_s": round(takeover, 2), **figures})
    finally:
        await pair.stop()
        await pair.sims.stop()
