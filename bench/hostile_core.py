"""Benchmark: the real gatewayd against a hostile core (issue 8), in two scenarios.

    .venv/bin/python bench/hostile_core.py drip [--tree DIR]
        The core drips one byte a second into every answer. Waits until the daemon has
        had a call in flight for 5 s, sends SIGTERM and prints how long the daemon took
        to exit (killed after 60 s).

    .venv/bin/python bench/hostile_core.py longline [--mib 400] [--tree DIR]
        One funded order whose item stream is a single line of --mib MiB. Prints the
        daemon's RSS before the load and its peak (VmHWM), how long until the order is
        INVALID (or until 120 s), and what is left in work/ with its mode.

--tree runs the daemon from another checkout (PYTHONPATH), to measure the code before
a fix. The cnbank simulator answers the bank side; the core here is a stand-in
twisted.web server. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORDER = "HOSTILE0001"


def _rss_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _LineProducer:
    """Writes {"name":"xxx... (one line of `size` bytes, no newline) in 1 MiB writes, paced by
    the consumer (the transport's back-pressure)."""

    def __init__(self, request, size: int):
        self.request, self.left, self.paused, self.done = request, size, False, False
        self.chunk = b'{"seq":1,"name":"' + b"x" * ((1 << 20) - 17)

    def resumeProducing(self):  # noqa: N802
        self.paused = False
        while not self.paused and self.left > 0 and not self.done:
            piece = self.chunk[:min(len(self.chunk), self.left)]
            self.left -= len(piece)
            self.request.write(piece)
        if self.left <= 0 and not self.done:
            self.done = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self):  # noqa: N802
        self.paused = True

    def stopProducing(self):  # noqa: N802
        self.done = True


def _core_site(mode: str, size: int, seen: list):
    from twisted.internet import reactor
    from twisted.web import resource, server

    header = {"order_no": ORDER, "budget_unit": "长丰县农业农村局", "project_code": "NY2026-01",
              "project_name": "2026年耕地地力保护补贴", "project_short": "耕地补贴", "region": "340121",
              "bank_id": "cnbank-demo", "total_amount": 100, "total_count": 1,
              "funded_at": "2026-11-02T09:30:00+08:00"}

    class Core(resource.Resource):
        isLeaf = True

        def render(self, request):  # noqa: ANN001
            seen.append((time.monotonic(), request.uri.decode()))
            if mode == "drip":
                request.setHeader(b"content-length", b"1000000")

                def drip():
                    if request.finished or request._disconnected:  # noqa: SLF001
                        return
                    request.write(b" ")
                    reactor.callLater(1, drip)
                drip()
                return server.NOT_DONE_YET
            path = request.path.decode()
            if path == "/api/orders":
                request.setHeader(b"content-type", b"application/json")
                return json.dumps({"orders": [header], "next": None}).encode()
            if path.endswith("/items"):
                p = _LineProducer(request, size)
                request.registerProducer(p, True)
                p.resumeProducing()
                return server.NOT_DONE_YET
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
    return server.Site(Core())


async def _run(reactor, args) -> dict:
    from twisted.internet import task
    from simulators import harness

    tmp = Path(tempfile.mkdtemp(prefix="hostile-core-"))
    p = harness.Paths(tmp / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [], token="bench-token")
    seen: list = []
    port = reactor.listenTCP(0, _core_site(args.mode, args.mib << 20, seen), interface="127.0.0.1")
    ports = harness.Ports(port.getHost().port, sims.ports.bank_tcp, sims.ports.bank_sftp)
    cfg = harness.write_config(p, keys, ports, token="bench-token", poll_s=1)
    harness.migrate(cfg)
    env = {"PYTHONPATH": str(Path(args.tree).resolve())} if args.tree else {}
    daemon = harness.Daemon(cfg, p.log, env=env)
    if args.tree:
        os.chdir(args.tree)     # `python -c` puts the working directory first on sys.path
    out: dict = {"mode": args.mode, "tree": args.tree or str(ROOT)}
    try:
        daemon.start()
        pid = daemon.proc.pid

        async def wait(cond, limit):
            end = time.monotonic() + limit
            while not cond() and time.monotonic() < end and daemon.running():
                await task.deferLater(reactor, 0.1, lambda: None)
            return cond()
        if args.mode == "drip":
            await wait(lambda: seen, 30)
            await task.deferLater(reactor, 5, lambda: None)
            out["requests_before_sigterm"] = len(seen)
            t0 = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            await wait(lambda: not daemon.running(), 60)
            out["exit_s_after_sigterm"] = round(time.monotonic() - t0, 2)
            out["exited"] = not daemon.running()
            out["returncode"] = daemon.proc.poll()
        else:
            await wait(lambda: seen, 30)
            out["rss_before_mb"] = round(_rss_kb(pid, "VmRSS") / 1024, 1)
            t0 = time.monotonic()
            import sqlite3

            def state():
                try:
                    with sqlite3.connect(p.gateway_db) as db:
                        row = db.execute("select state, detail from orders").fetchone()
                    return row
                except sqlite3.Error:
                    return None
            peak = [0]

            def invalid():
                peak[0] = max(peak[0], _rss_kb(pid, "VmHWM"))
                row = state()
                return row is not None and row[0] == "INVALID"
            ok = await wait(invalid, 120)
            out["invalid_after_s"] = round(time.monotonic() - t0, 2) if ok else None
            out["order"] = state()
            out["rss_peak_mb"] = round(max(peak[0], _rss_kb(pid, "VmHWM")) / 1024, 1)
            work = p.root / "work"
            out["work_files"] = {f.name: oct(stat.S_IMODE(f.stat().st_mode))
                                 for f in work.iterdir()} if work.is_dir() else {}
            t0 = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            await wait(lambda: not daemon.running(), 60)
            out["exit_s_after_sigterm"] = round(time.monotonic() - t0, 2)
    finally:
        if daemon.running():
            daemon.proc.kill()
            daemon.proc.wait()
        port.stopListening()
        await sims.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["drip", "longline"])
    ap.add_argument("--mib", type=int, default=400)
    ap.add_argument("--tree", default="")
    args = ap.parse_args()
    from twisted.internet import defer, task

    async def go(reactor):
        print(json.dumps(await _run(reactor, args), ensure_ascii=False), flush=True)
    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
