"""`health` that tells the truth: the bank's link, the core's, the database, for people and supervisors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import threads

from gateway import health
from simulators import harness
from tests.support import install, spec, wait_for


def _ctl(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _report(**over) -> dict:
    r = {"database": {"ok": True}, "role": "active", "core": {"link": health.link_view(None)},
         "banks": {"b1": {"link": health.link_view({"last_ok_at": 10.0, "last_error_at": None, "last_error": None,
                                                     "failures": 0, "failing_since": None}),
                          "acting": True, "flow_running": True, "open_alarms": []}},
         "open_alarms_other": []}
    r.update(over)
    return r


def test_judge_names_what_is_wrong():
    """ok with a working link; degraded naming the bank and its error when the link fails, or a
    critical alarm is open, or the bank's lease is held but its flow stopped; down when the
    database cannot be read, whatever else holds."""
    assert health.judge(_report()) == (health.OK, [])
    bad = _report()
    bad["banks"]["b1"]["link"] = health.link_view({"last_ok_at": 10.0, "last_error_at": 70.0,
                                                   "last_error": "HB01: connection refused", "failures": 4,
                                                   "failing_since": 40.0})
    status, why = health.judge(bad)
    assert status == health.DEGRADED and "bank b1" in why[0] and "connection refused" in why[0]
    stopped = _report()
    stopped["banks"]["b1"]["flow_running"] = False
    assert health.judge(stopped)[0] == health.DEGRADED
    alarmed = _report()
    alarmed["banks"]["b1"]["open_alarms"] = [{"id": 3, "severity": "critical", "kind": "bank-refusing",
                                             "since": "x", "message": "E009"}]
    assert health.judge(alarmed)[0] == health.DEGRADED
    warned = _report()
    warned["banks"]["b1"]["open_alarms"] = [{"id": 3, "severity": "warning", "kind": "x", "since": "x",
                                            "message": "m"}]
    assert health.judge(warned)[0] == health.OK
    assert health.judge(_report(database={"ok": False, "error": "timeout"}))[0] == health.DOWN


def test_core_link_counts_failures_and_forgets_them_on_success():
    """CoreLink: consecutive failures and since when, reset by the next good answer (the
    last error and its time stay, for health)."""
    c = health.CoreLink()
    c.heard(1.0, "HTTP 503")
    c.heard(5.0, "timeout")
    assert c.state() == {"last_ok_at": None, "last_error_at": 5.0, "last_error": "timeout", "failures": 2,
                         "failing_since": 1.0}
    c.heard(9.0, None)
    assert c.state()["failures"] == 0 and c.state()["failing_since"] is None and c.state()["last_ok_at"] == 9.0
    assert c.state()["last_error"] == "timeout"


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_real_daemon_bank_down_is_alarmed_shown_and_cleared(reactor, tmp_path):
    """The issue's "done when", on the real gatewayd: an order is paid; the bank's message link
    stops answering; within link_alarm_after_s (2 s, HB01 every 0.5 s) `gatewayctl alarms`
    shows one bank-link-down episode naming the bank, `gatewayctl health` exits 1 naming the
    bank, since when and the error, /metrics says gateway_bank_link_up 0 and one open
    bank-link-down alarm, /readyz stays 200 (the daemon can still work); the bank comes back
    and the alarm clears itself, health exits 0 and the link is up again."""
    p, keys, sims, cfg = await install(reactor, tmp_path, [spec("HLT0001", 5)])
    port = _free_port()
    with open(cfg, "a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\nrefresh_s = 0.2\n')
    bank_file = p.banks / f"{harness.BANK_ID}.toml"
    bank_file.write_text(bank_file.read_text().replace("[cnbank]\n", "[cnbank]\nheartbeat_s = 0.5\n"
                                                       "link_alarm_after_s = 2\n"))
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    bank = sims.bank
    try:
        async def settled():
            return (await sims.core.summary())["orders"]["HLT0001"]["state"] == "SETTLED"
        await wait_for(reactor, settled, 60, "order settled", daemon)

        async def healthy():
            r = await threads.deferToThread(_ctl, cfg, "health", "--json")
            return r if r.returncode == 0 else None
        ok = await wait_for(reactor, healthy, 20, "health ok", daemon)
        h = json.loads(ok.stdout)
        assert h["banks"][harness.BANK_ID]["link"]["up"] is True
        assert h["core"]["link"]["up"] is True and h["database"]["ok"] and h["version"]

        # The bank's message link goes away: its port closes and open connections are dropped.
        tcp = next(lp for lp in bank._ports if lp.getHost().port == sims.ports.bank_tcp)  # noqa: SLF001
        await tcp.stopListening()
        bank._ports.remove(tcp)  # noqa: SLF001
        for conn in list(bank._connections):  # noqa: SLF001
            conn.transport.abortConnection()
        down_at = reactor.seconds()

        async def alarmed():
            r = await threads.deferToThread(_ctl, cfg, "alarms", "--json")
            rows = [a for a in json.loads(r.stdout) if a["kind"] == "bank-link-down"]
            return rows or None
        rows = await wait_for(reactor, alarmed, 20, "bank-link-down in gatewayctl alarms", daemon)
        assert reactor.seconds() - down_at < 10
        assert len(rows) == 1 and rows[0]["bank_id"] == harness.BANK_ID and rows[0]["at"]
        r = await threads.deferToThread(_ctl, cfg, "health")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "DEGRADED" in r.stdout and f"bank {harness.BANK_ID}" in r.stdout and "LINK FAILING since" in r.stdout
        r = await threads.deferToThread(_ctl, cfg, "health", "--json")
        link = json.loads(r.stdout)["banks"][harness.BANK_ID]["link"]
        assert link["up"] is False and link["failures"] >= 2 and link["failing_since"] and link["last_error"]
        assert json.loads(r.stdout)["banks"][harness.BANK_ID]["open_alarms"][0]["kind"] == "bank-link-down"

        from tests.test_metrics import _get, _scrape

        async def scraped():
            s = await threads.deferToThread(_scrape, port)
            return s if (_get(s, "gateway_bank_link_up", bank=harness.BANK_ID) == 0 and _get(
                s, "gateway_alarms_open_by_kind", kind="bank-link-down", bank=harness.BANK_ID) == 1) else None
        s = await wait_for(reactor, scraped, 10, "the link down in /metrics", daemon)
        assert _get(s, "gateway_bank_last_success_timestamp_seconds", bank=harness.BANK_ID) > 0
        assert _get(s, "gateway_leader_epoch") >= 1
        code, body = await threads.deferToThread(_http, f"http://127.0.0.1:{port}/readyz")
        assert code == 200 and json.loads(body)["ready"] is True
        code, _ = await threads.deferToThread(_http, f"http://127.0.0.1:{port}/healthz")
        assert code == 200
        r = await threads.deferToThread(_ctl, cfg, "health", "--ready")
        assert r.returncode == 0 and json.loads(r.stdout)["ready"] is True

        bank.listen_tcp(sims.ports.bank_tcp)      # the bank is back

        async def cleared():
            r = await threads.deferToThread(_ctl, cfg, "alarms", "--json")
            return not [a for a in json.loads(r.stdout) if a["kind"] == "bank-link-down"]
        await wait_for(reactor, cleared, 20, "the alarm to clear itself", daemon)
        ok = await wait_for(reactor, healthy, 20, "health ok again", daemon)
        assert json.loads(ok.stdout)["banks"][harness.BANK_ID]["link"]["up"] is True
        r = await threads.deferToThread(_ctl, cfg, "alarms", "--all", "--json")
        episodes = [a for a in json.loads(r.stdout) if a["kind"] == "bank-link-down"]
        assert len(episodes) == 1 and episodes[0]["cleared_at"]
        s = await wait_for(reactor, lambda: threads.deferToThread(
            lambda: (lambda d: d if _get(d, "gateway_bank_link_up", bank=harness.BANK_ID) == 1 else None)(
                _scrape(port))), 10, "link up in /metrics", daemon)
    finally:
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0
    r = await threads.deferToThread(_ctl, cfg, "health")
    assert r.returncode == 2 and "DOWN" in r.stdout


@pytest_twisted.ensureDeferred
async def test_iso_link_state_follows_the_bank_client():
    """The iso20022 adapter's client notes every call like cnbank's link: no answer or a 5xx is
    a failure (counted, since when), an answer below 500 (a refusal included) is the link up."""
    from twisted.internet.task import Clock

    from adapters.https import HttpsError
    from adapters.iso20022.adapter import _WatchedClient

    class Bank:
        def __init__(self):
            self.next = []

        async def reports(self, since, limit):
            r = self.next.pop(0)
            if isinstance(r, Exception):
                raise r
            return r
    clock, bank = Clock(), Bank()
    c = _WatchedClient(bank, clock, "https")
    bank.next = [HttpsError("connection refused"), HttpsError("bad gateway", status=502),
                 HttpsError("refused", status=400), ([], None)]
    for t in (10, 20):
        clock.advance(t - clock.seconds())
        with pytest.raises(HttpsError):
            await c.reports(None)
    assert c.state["failures"] == 2 and c.state["failing_since"] == 10 and "bad gateway" in c.state["last_error"]
    clock.advance(10)
    with pytest.raises(HttpsError):
        await c.reports(None)
    assert c.state["failures"] == 0 and c.state["last_ok_at"] == 30 and c.state["last_error_at"] == 20
    assert await c.reports(None) == ([], None)
