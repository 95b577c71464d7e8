"""The push stage alone: N applied results pushed to the core simulator, against a raw baseline.

bench/spine.py runs every stage; this runs only the last bulk one, so that it can be
profiled and repeated. The gateway's database is filled directly with N results as the
apply leaves them (status, reason, bank serial, result time; no version yet), the core
simulator runs in this process on loopback, and the push runs in a child process (its
peak RSS is the daemon's): `flow.push_results`, as the ticker calls it. The baseline, in
another child against a fresh core store: the same results read with one SELECT,
serialised with json.dumps in the same chunks and POSTed two at a time with a bare Agent.

    PYTHONPATH=$PWD .venv/bin/python bench/push_stage.py --items 100000 [--profile out.prof]

Prints one JSON line: push_s, baseline_s, ratio, the child's VmHWM before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from simulators import datagen, harness

ORDER = "PUSHBENCH"


def order_spec(n: int) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=ORDER, bank_id=harness.BANK_ID, count=n, seed=42,
        budget_unit="市农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at="2026-11-02T09:30:00+08:00")


def fill(db_path: Path, spec: datagen.OrderSpec) -> None:
    """N items as the apply leaves them: 97.5% PAID with a serial, the rest FAILED with a reason."""
    db = sqlite3.connect(db_path)
    at = "2026-11-02T10:00:00+08:00"
    total = 0

    def rows():
        nonlocal total
        for seq in range(1, spec.count + 1):
            amount = datagen.item_amount(spec, seq)
            total += amount
            failed = seq % 40 == 7
            yield (ORDER, seq, "张三丰", f"34012119800101{seq % 10000:04d}", f"62220202{seq:011d}",
                   "中国农业银行合肥分行", None, amount, "2026年耕地地力保护补贴",
                   "FAILED" if failed else "PAID", f"{ORDER}-P1",
                   "R001" if failed else None, "账户不存在" if failed else None,
                   None if failed else f"CN{seq:018d}", at)
    db.execute("BEGIN")
    db.executemany("INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, "
                   "account_bank_code, amount, remark, status, batch_no, reason_code, reason_text, "
                   "bank_serial, result_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    db.execute("INSERT INTO orders (order_no, bank_id, budget_unit, project_code, project_name, "
               "project_short, region, total_amount, total_count, funded_at, state, results_pending, "
               "retry_requested, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,1,0,?,?)",
               (ORDER, spec.bank_id, spec.budget_unit, spec.project_code, spec.project_name,
                spec.project_short, spec.region, total, spec.count, spec.funded_at, "DISPATCHED",
                spec.funded_at, spec.funded_at))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def malloc_mb() -> dict:
    """glibc's view (mallinfo2): heap arenas' size, what is in use there, and mmapped blocks."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                   "usmblks", "fsmblks", "uordblks", "fordblks",
                                                   "keepcost")]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"arena_mb": round(m.arena / 2**20, 1), "in_use_mb": round(m.uordblks / 2**20, 1),
            "mmapped_mb": round(m.hblkhd / 2**20, 1)}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def child_push(reactor, config_path: str, profile: str | None) -> dict:
    import math

    from gateway import config as configmod
    from gateway.service import make_service
    cfg = configmod.load(config_path)
    gw = make_service(cfg, reactor)
    gw.database.start()
    for lead in gw.leadership:
        lead.fence.grant(lead.lease.acquire(), math.inf)
    flow = next(iter(gw.flows.values()))
    before = peak_rss_mb()
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    samples = []
    sampler = task.LoopingCall(lambda: samples.append((round(rss_mb(), 1), malloc_mb())))
    sampler.start(max(0.5, float(os.environ.get("PUSH_SAMPLE_S", "2"))))
    t = time.perf_counter()
    await flow.push_results()
    took = time.perf_counter() - t
    sampler.stop()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    big = []
    if os.environ.get("PUSH_BIG_OBJECTS"):
        import gc
        gc.collect()
        kinds: dict = {}
        for o in gc.get_objects():
            kinds[type(o).__name__] = kinds.get(type(o).__name__, 0) + 1
            vals = (o if isinstance(o, (list, tuple)) else o.values() if isinstance(o, dict)
                    else vars(o).values() if hasattr(o, "__dict__") and isinstance(vars(o), dict) else ())
            for v in vals:
                if isinstance(v, (bytes, str, bytearray, memoryview)) and len(v) > 100_000:
                    big.append((type(o).__name__, type(v).__name__, len(v), repr(bytes(v[:60]) if not isinstance(v, str) else v[:60])))
        big.append(sorted(kinds.items(), key=lambda kv: -kv[1])[:15])
    gw.database.stop()
    await flow.core.close()
    return {"big": big, "push_s": round(took, 2), "rss_before_mb": round(before, 1), "rss_after_mb": round(peak_rss_mb(), 1),
            "rss_now_mb": round(rss_mb(), 1), "malloc": malloc_mb(), "samples": samples}


async def child_baseline(reactor, db_path: str, url: str, token: str, chunk: int) -> dict:
    """Serialise and POST the same results: one SELECT, json.dumps per chunk, two POSTs in flight."""
    from twisted.web import client
    from twisted.web.http_headers import Headers

    from adapters.bodies import BytesProducer
    before = peak_rss_mb()
    t = time.perf_counter()
    pool = client.HTTPConnectionPool(reactor, persistent=True)
    agent = client.Agent(reactor, pool=pool)
    headers = Headers({b"Authorization": [f"Bearer {token}".encode()],
                       b"Content-Type": [b"application/json"]})

    def chunks():
        db = sqlite3.connect(db_path)
        cur = db.execute("SELECT seq, status, reason_code, reason_text, bank_serial, result_at "
                         "FROM items WHERE order_no = ? ORDER BY seq", (ORDER,))
        while rows := cur.fetchmany(chunk):
            yield json.dumps({"results": [
                {"seq": s, "version": 1, "status": st, "reason_code": rc or "", "reason_text": rt or "",
                 "bank_serial": bs or "", "at": at} for s, st, rc, rt, bs, at in rows]},
                ensure_ascii=False, separators=(",", ":")).encode()
    slots = defer.DeferredSemaphore(2)

    async def post(body: bytes) -> None:
        resp = await agent.request(b"POST", url.encode(), headers, BytesProducer(body))
        await client.readBody(resp)
        if resp.code != 200:
            raise SystemExit(f"baseline POST answered {resp.code}")
    posts = []
    for body in chunks():
        await slots.acquire()
        d = defer.ensureDeferred(post(body))
        d.addBoth(lambda r: (slots.release(), r)[1])
        posts.append(d)
    await defer.gatherResults(posts, consumeErrors=True)
    took = time.perf_counter() - t
    await pool.closeCachedConnections()
    return {"baseline_s": round(took, 2), "rss_before_mb": round(before, 1),
            "rss_after_mb": round(peak_rss_mb(), 1)}


async def run(reactor, n: int, root: Path, profile: str | None, chunk: int, env_extra: dict,
              no_baseline: bool = False) -> dict:
    from simulators.core.server import CoreSimulator
    spec = order_spec(n)
    p = harness.Paths(root)
    prepared = root / f"prepared-{n}.db"
    keys = harness.make_keys(p)
    cfg = harness.write_config(p, keys, harness.Ports(1, 1, 1), token="bench", results_chunk=chunk)
    if not prepared.exists():
        for f in root.glob("gateway.db*"):
            f.unlink()
        harness.migrate(cfg)
        await deferToThread(fill, p.gateway_db, spec)
        shutil.copy(p.gateway_db, prepared)
    out: dict = {"items": n, "chunk": chunk}
    for what in ("push",) if no_baseline else ("baseline", "push"):
        for f in list(root.glob("gateway.db*")) + list(root.glob("core-sim.db*")):
            f.unlink()
        shutil.copy(prepared, p.gateway_db)
        core = CoreSimulator(reactor, [spec], str(p.core_db), "bench")
        port = core.listen().getHost().port
        cfg = harness.write_config(p, keys, harness.Ports(port, 1, 1), token="bench", results_chunk=chunk)
        if what == "push":
            args = ["push", str(cfg), profile or ""]
        else:
            args = ["baseline", str(p.gateway_db), f"http://127.0.0.1:{port}/api/orders/{ORDER}/results",
                    "bench", str(chunk)]
        proc = await deferToThread(subprocess.run, [sys.executable, __file__, "--child", *args],
                                   capture_output=True, text=True,
                                   env={**os.environ, "PYTHONPATH": str(Path.cwd()), **env_extra})
        if proc.returncode != 0:
            raise SystemExit(f"{what} child failed:\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        summary = (await core.summary())["orders"].get(ORDER, {})
        got = summary.get("reported_items", 0)
        await core.close()
        if got != n:
            raise SystemExit(f"{what}: the core holds {got} results, not {n}")
        out[what] = child
    if not no_baseline:
        out["ratio"] = round(out["push"]["push_s"] / max(out["baseline"]["baseline_s"], 1e-9), 2)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, rest = sys.argv[2], sys.argv[3:]

        async def go_child(reactor):
            if kind == "push":
                res = await child_push(reactor, rest[0], rest[1] or None)
            else:
                res = await child_baseline(reactor, rest[0], rest[1], rest[2], int(rest[3]))
            print(json.dumps(res), flush=True)
        task.react(lambda r: defer.ensureDeferred(go_child(r)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dir", default="/tmp/push-stage")
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--profile", help="cProfile the push child into this file")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the children")
    ap.add_argument("--no-baseline", action="store_true", help="the push alone")
    args = ap.parse_args()
    env_extra = dict(e.split("=", 1) for e in args.env)

    async def go(reactor):
        res = await run(reactor, args.items, Path(args.dir).resolve(), args.profile, args.chunk, env_extra,
                        args.no_baseline)
        print(json.dumps(res, ensure_ascii=False), flush=True)
    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    main()
