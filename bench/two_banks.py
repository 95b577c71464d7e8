"""Two banks at once (issue 13): a big `cnbank` order and an `iso20022` order through the real daemon.

    python bench/two_banks.py [--cn 1000000] [--iso 100000] [--db postgresql://...] [--only alone|cn|iso|together]

Three runs, each a fresh loopback installation with both banks configured (so the daemon
does the same polling in each): the cnbank order alone, the iso20022 order alone, then both
funded at once. The real `gatewayd` (its own process) does everything; the core simulator
and the cnbank bank simulator (TCP + SFTP) run in this process on loopback, the iso20022 bank
simulator (HTTPS, mutual TLS) in its own (simulators/isobank/main.py; --iso-in-process puts it
here too, where all three share one interpreter lock). The clock starts when the daemon is started (the orders
are rendered and totalled by the core simulator before); an order is done when the core
simulator has stored a result for every one of its items (counted by wrapping the core
simulator's results handler on the instance, so nothing polls the daemon). Reported per
order: `results_s` (all results at the core), `state`/`state_s` (the last order state the
core had received by then: DISPATCHED while some items failed, SETTLED if none did) and the
daemon's peak RSS (VmHWM, read just before it is stopped); per run, the daemon's CPU seconds and
this process's (the simulators'), which on two cores say how much the two orders compete.

Target: together, each order done within 1.3x of the slower order alone
(`together_vs_slower_alone` <= 1.3). The last line printed is one JSON object; a markdown
table precedes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402

from simulators import datagen, harness  # noqa: E402
from simulators.isobank import install as isoinstall  # noqa: E402


HTTPS_TIMEOUT_S = 600


def cn_spec(n: int) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=f"CN{n}", bank_id=harness.BANK_ID, count=n, seed=42,
        budget_unit="市农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.01})


def iso_spec(n: int) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=f"ISO{n}", bank_id=isoinstall.ISO_BANK_ID, count=n, seed=43,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:31:00+08:00",
        failures={"R001": 0.01})


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """A process's user + system CPU seconds so far (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, IndexError, ValueError):
        return None


class IsoSimProcess:
    """The iso20022 bank simulator as its own process (simulators/isobank/main.py), so that it
    does not share this process's interpreter lock with the core and cnbank simulators."""

    def __init__(self, root: Path, pki: isoinstall.IsoPki, result_delay_s: float):
        import socket
        import subprocess
        d = root / "iso-sim"
        d.mkdir(parents=True, exist_ok=True)
        files = {"server-key": pki.server_key_pem, "server-cert": pki.server_cert_pem, "ca": pki.ca_pem,
                 "bank-key": pki.bank_key_pem, "bank-cert": pki.bank_cert_pem,
                 "gateway-cert": pki.gateway_cert_pem}
        for name, pem in files.items():
            (d / f"{name}.pem").write_bytes(pem)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(d / "iso-sim.log", "ab")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulators.isobank.main", "--https", f"127.0.0.1:{self.port}",
             *[a for name in files for a in (f"--{name}", str(d / f"{name}.pem"))],
             "--holding-account", isoinstall.ISO_HOLDING, "--holding-name", "市财政局惠民惠农补贴专户（ISO）",
             "--result-delay", str(result_delay_s), "--log-format", "text"],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})

    async def ready(self, reactor, timeout_s: float = 30) -> None:
        import socket
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"iso-sim exited {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            await task.deferLater(reactor, 0.1, lambda: None)
        raise SystemExit("iso-sim did not listen")

    def cpu_s(self) -> float | None:
        return cpu_s(self.proc.pid)

    async def stop(self, reactor) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            end = time.perf_counter() + 10
            while self.proc.poll() is None and time.perf_counter() < end:
                await task.deferLater(reactor, 0.05, lambda: None)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def reset_db(db: str) -> None:
    from sqlalchemy import create_engine, text
    e = create_engine(db, isolation_level="AUTOCOMMIT")
    with e.connect() as c:
        c.execute(text("DROP SCHEMA public CASCADE"))
        c.execute(text("CREATE SCHEMA public"))
    e.dispose()


async def scenario(reactor, specs: list[datagen.OrderSpec], db: str | None, root: Path,
                   timeout_s: float, iso_apart: bool = True) -> dict:
    """One installation, the given orders funded; seconds from the daemon's start to each done."""
    if root.exists():
        shutil.rmtree(root)
    p = harness.Paths(root)
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, specs, token="bench",
                                          processing_delay_s=0.1, core_cache=True)
    for s in specs:
        await sims.core.header(s.order_no)       # rendered and totalled before the clock starts
    cfg = harness.write_config(p, keys, sims.ports, db_url=db, token="bench", poll_s=0.2,
                               status_poll_s=0.2, results_chunk=10000)
    pki = isoinstall.make_pki(p.keys)
    if iso_apart:
        iso_bank = IsoSimProcess(root, pki, result_delay_s=0.1)
        await iso_bank.ready(reactor)
        iso_port = iso_bank.port
    else:
        iso_bank, iso_port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=0.1)
    bank_file = isoinstall.write_bank_file(p.banks, pki, iso_port, status_poll_s=0.2)
    # The simulator XSD-validates a pain.001 before it answers 202: at 100,000 transfers (46 MB)
    # that is tens of seconds on a busy machine, past the demo's 30 s, and the POST would be
    # sent again and again. A bank's own answer time is not what this measures.
    text = bank_file.read_text()
    assert "timeout_s = 30\n" in text, "the iso20022 bank file's [https] timeout_s moved"
    bank_file.write_text(text.replace("timeout_s = 30\n", f"timeout_s = {HTTPS_TIMEOUT_S}\n", 1))
    if db:
        reset_db(db)
    harness.migrate(cfg)

    want = {s.order_no: s.count for s in specs}
    got = dict.fromkeys(want, 0)
    done: dict[str, float] = {}
    states: dict[str, tuple[str, float]] = {}
    t0 = [0.0]
    post_results, post_state = sims.core._post_results, sims.core._post_state

    async def counted(request, spec):
        out = await post_results(request, spec)
        got[spec.order_no] = got.get(spec.order_no, 0) + out.get("new", 0)
        if spec.order_no in want and spec.order_no not in done and got[spec.order_no] >= want[spec.order_no]:
            done[spec.order_no] = time.perf_counter() - t0[0]
        return out

    async def stated(request, spec):
        out = await post_state(request, spec)
        states[spec.order_no] = (out.get("state"), time.perf_counter() - t0[0])
        return out
    sims.core._post_results, sims.core._post_state = counted, stated

    daemon = harness.Daemon(cfg, p.log)
    rss = daemon_cpu = iso_cpu = None
    t0[0] = time.perf_counter()
    sims_cpu = time.process_time()
    daemon.start()
    try:
        while len(done) < len(want):
            if not daemon.running():
                raise SystemExit(f"gatewayd exited:\n{p.log.read_text()[-3000:]}")
            if time.perf_counter() - t0[0] > timeout_s:
                raise SystemExit(f"not done within {timeout_s} s: results so far {got}\n"
                                 f"{p.log.read_text()[-2000:]}")
            await task.deferLater(reactor, 0.05, lambda: None)
        rss, daemon_cpu = peak_rss_mb(daemon.proc.pid), cpu_s(daemon.proc.pid)
        sims_cpu = round(time.process_time() - sims_cpu, 1)
        if iso_apart:
            iso_cpu = iso_bank.cpu_s()
    finally:
        await daemon.stop_async(reactor)
        if iso_apart:
            await iso_bank.stop(reactor)
        else:
            await iso_bank.stop()
        await sims.stop()
    return {"orders": {no: {"items": want[no], "results_s": round(done[no], 1),
                            "state": states.get(no, (None, None))[0],
                            "state_s": round(states[no][1], 1) if no in states else None}
                       for no in want},
            "daemon_peak_rss_mb": rss, "daemon_cpu_s": daemon_cpu, "simulators_cpu_s": sims_cpu, "iso_sim_process_cpu_s": iso_cpu,
            "wall_s": round(max(done.values()), 1)}


def markdown(r: dict) -> str:
    cn, iso = r["cn_order"], r["iso_order"]
    lines = [f"Two banks ({r['db']}): cnbank {r['cn']:,} items, iso20022 {r['iso']:,} transfers; seconds from "
             f"the daemon's start to every result at the core",
             "", "| run | cnbank order s | iso20022 order s | daemon peak RSS MB | daemon CPU s | "
             "core + cnbank sims' CPU s | iso sim's CPU s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("cn_alone", "iso_alone", "together"):
        if name not in r:
            continue
        o = r[name]["orders"]
        lines.append(f"| {name.replace('_', ' ')} | {o[cn]['results_s'] if cn in o else '-'} | "
                     f"{o[iso]['results_s'] if iso in o else '-'} | {r[name]['daemon_peak_rss_mb']} | "
                     f"{r[name]['daemon_cpu_s']} | {r[name]['simulators_cpu_s']} | "
                     f"{r[name]['iso_sim_process_cpu_s'] if r[name]['iso_sim_process_cpu_s'] is not None else 'in the former'} |")
    if "together_vs_slower_alone" in r:
        lines += ["", f"Together / slower alone: {r['together_vs_slower_alone']} (target <= 1.3); per order: "
                  + ", ".join(f"{k} {v}" for k, v in r["together_vs_alone"].items())]
    return "\n".join(lines)


async def run(reactor, cn: int, iso: int, db: str | None, root: Path, *, only: str | None = None,
              timeout_s: float = 3600, iso_apart: bool = True) -> dict:
    a, b = cn_spec(cn), iso_spec(iso)
    out: dict = {"cn": cn, "iso": iso, "db": "postgresql" if db else "sqlite",
                 "cn_order": a.order_no, "iso_order": b.order_no}
    if only in (None, "alone", "cn"):
        out["cn_alone"] = await scenario(reactor, [a], db, root / "cn", timeout_s, iso_apart)
    if only in (None, "alone", "iso"):
        out["iso_alone"] = await scenario(reactor, [b], db, root / "iso", timeout_s, iso_apart)
    if only in (None, "together"):
        out["together"] = await scenario(reactor, [a, b], db, root / "both", timeout_s, iso_apart)
    if "cn_alone" in out and "iso_alone" in out and "together" in out:
        alone = {a.order_no: out["cn_alone"]["orders"][a.order_no]["results_s"],
                 b.order_no: out["iso_alone"]["orders"][b.order_no]["results_s"]}
        together = {no: o["results_s"] for no, o in out["together"]["orders"].items()}
        out["together_vs_alone"] = {no: round(together[no] / alone[no], 2) for no in alone}
        out["together_vs_slower_alone"] = round(max(together.values()) / max(alone.values()), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="a cnbank order and an iso20022 order, alone and together")
    ap.add_argument("--cn", type=int, default=1_000_000, help="items of the cnbank order")
    ap.add_argument("--iso", type=int, default=100_000, help="transfers of the iso20022 order")
    ap.add_argument("--db", default=None,
                    help="a PostgreSQL URL (its public schema is emptied); SQLite if not given or 'sqlite'")
    ap.add_argument("--only", choices=("alone", "cn", "iso", "together"), default=None,
                    help="one part: both alone, the cnbank order alone, the iso20022 one alone, or together")
    ap.add_argument("--dir", default="var/bench-two-banks")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run before giving up")
    ap.add_argument("--iso-in-process", action="store_true",
                    help="run the iso20022 bank simulator in this process (default: its own process)")
    a = ap.parse_args()
    result: dict = {}

    async def go(reactor):
        db = None if a.db in (None, "", "sqlite") else a.db
        result.update(await run(reactor, a.cn, a.iso, db, Path(a.dir).resolve(), only=a.only,
                                timeout_s=a.timeout, iso_apart=not a.iso_in_process))
    try:
        task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    except SystemExit as e:      # react ends the process with the result's exit code
        if e.code not in (0, None):
            raise
    print(markdown(result), flush=True)
    print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
