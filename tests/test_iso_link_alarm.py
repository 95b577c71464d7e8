"""bank-link-down for an iso20022 bank on the real gatewayd: its simulator stopped, then restarted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import threads

from simulators import datagen, harness, sftp_server
from simulators.isobank import install as isoinstall
from tests.support import install, wait_for

pytestmark = [pytest.mark.loopback]
ISO = isoinstall.ISO_BANK_ID


def _ctl(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def _iso_spec(order_no: str) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=order_no, bank_id=ISO, count=3, seed=3, budget_unit="长丰县民政局", project_code="MZ2026-03",
        project_name="2026年高龄津贴", project_short="高龄津贴", region="340121",
        funded_at="2026-11-02T09:30:00+08:00", failures={}, corrupt=None)


@pytest.mark.parametrize("transport", ["https", "sftp"])
@pytest_twisted.ensureDeferred
async def test_iso_bank_down_raises_one_episode_and_its_return_clears_it(reactor, tmp_path, transport):
    """An ISO bank (over HTTPS, or SFTP) accepts a batch and holds its results, so the gateway keeps asking its
    report feed. The simulator stops: past link_alarm_after_s (1 s) `gatewayctl alarms` shows one
    critical bank-link-down episode of that bank naming since when and the last error, and
    `gatewayctl health` shows its link failing (consecutive failures, last error, last success).
    The simulator starts again on the same port: the first answer clears the episode and health
    shows the link up."""
    p, keys, sims, cfg = await install(reactor, tmp_path, [_iso_spec("ISOL0001")])
    pki = isoinstall.make_pki(p.keys)
    iso_bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=3600)
    sftp_root, client_keys = str(tmp_path / "iso-sftp"), [sftp_server.public_key_line(keys.gw_ssh)]

    def listen(port: int) -> int:
        if transport == "https":
            return iso_bank.listen_https(port, server_key_pem=pki.server_key_pem,
                                         server_cert_pem=pki.server_cert_pem, ca_pem=pki.ca_pem).getHost().port
        return iso_bank.listen_sftp(sftp_root, port, authorized_keys=client_keys,
                                    host_key_path=keys.bank_host).getHost().port
    if transport == "sftp":
        port = listen(0)
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.2, iso_extra="link_alarm_after_s = 1",
                               sftp=(keys.gw_ssh, sftp_server.public_key_line(keys.bank_host + ".pub"))
                               if transport == "sftp" else None)
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()

    async def link_alarms(everything=False):
        r = await threads.deferToThread(_ctl, cfg, "alarms", "--json", *(["--all"] if everything else []))
        return [a for a in json.loads(r.stdout) if a["kind"] == "bank-link-down"]

    async def iso_link():
        r = await threads.deferToThread(_ctl, cfg, "health", "--json")
        assert r.stdout.startswith("{"), (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)["banks"][ISO]["link"]
    try:
        async def accepted():
            return iso_bank.payments_received("ISOL0001-P01") == 1
        await wait_for(reactor, accepted, 60, "the ISO bank took the batch", daemon)
        async def up():
            return (await iso_link()).get("up") is True
        await wait_for(reactor, up, 30, "the ISO link up", daemon)
        assert not await link_alarms()

        await iso_bank.stop()

        async def down():
            return await link_alarms() or None
        rows = await wait_for(reactor, down, 30, "bank-link-down for the ISO bank", daemon)
        assert len(rows) == 1
        a = rows[0]
        assert a["bank_id"] == ISO and a["severity"] == "critical"
        assert f"from the bank {ISO} since 20" in a["message"] and "GET reports" in a["message"]
        link = await iso_link()
        assert link["up"] is False and link["failures"] >= 2 and link["last_error"]
        assert link["last_ok_at"] and link["failing_since"] and link["last_error_at"]
        r = await threads.deferToThread(_ctl, cfg, "health")
        assert r.returncode == 1 and f"bank {ISO} (iso20022)" in r.stdout and "LINK FAILING since" in r.stdout

        assert listen(port) == port

        async def cleared():
            rows = await link_alarms(everything=True)
            return rows if rows and all(x["cleared_at"] for x in rows) else None
        rows = await wait_for(reactor, cleared, 30, "bank-link-down cleared", daemon)
        assert len(rows) == 1 and rows[0]["count"] >= 1
        link = await iso_link()
        assert link["up"] is True and link["failures"] == 0
    finally:
        rc = await daemon.stop_async(reactor)
        await iso_bank.stop()
        await sims.stop()
    assert rc == 0
