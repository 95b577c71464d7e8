"""How long the core simulator takes to check and store N results (no HTTP, no gateway).

The same work its POST .../results does, in the same order: parse_results (every rule of
core-api.md), the item amounts looked up, Store.record_results, in chunks of 10,000.

    PYTHONPATH=$PWD .venv/bin/python bench/core_sim_results.py --items 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from simulators import datagen
from simulators.core.store import Store
from simulators.core.validate import parse_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    args = ap.parse_args()
    n, at = args.items, "2026-11-02T10:00:00+08:00"
    spec = datagen.OrderSpec(order_no="SIMBENCH", bank_id="b", count=n, seed=1, budget_unit="市农业农村局",
                             project_code="NY2026-01", project_name="2026年耕地地力保护补贴", project_short="耕地补贴", region="340121",
                             funded_at=at)
    t = time.perf_counter()
    amounts = datagen.order_profile(spec, amounts=True)["amounts"]   # done before the bench times
    profile_s = time.perf_counter() - t
    bodies = [json.dumps({"results": [
        {"seq": s, "version": 1, "status": "FAILED" if s % 40 == 7 else "PAID",
         "reason_code": "R001" if s % 40 == 7 else "", "reason_text": "账户不存在" if s % 40 == 7 else "",
         "bank_serial": "" if s % 40 == 7 else f"CN{s:018d}", "at": at}
        for s in range(a, min(n, a + args.chunk - 1) + 1)]}, ensure_ascii=False).encode()
        for a in range(1, n + 1, args.chunk)]
    with tempfile.TemporaryDirectory() as d:
        store = Store(os.path.join(d, "core.db"))
        parse_s = store_s = 0.0
        for body in bodies:
            t = time.perf_counter()
            rows = [(r, amounts[r.seq - 1]) for r in parse_results(body, n)]
            parse_s += time.perf_counter() - t
            t = time.perf_counter()
            store.record_results(spec.order_no, rows, at)
            store_s += time.perf_counter() - t
        held = store.summary()[spec.order_no]["reported_items"]
        store.close()
    assert held == n, held
    print(json.dumps({"items": n, "profile_s (before)": round(profile_s, 2), "parse_s": round(parse_s, 2),
                      "store_s": round(store_s, 2), "total_s": round(parse_s + store_s, 2)}))


if __name__ == "__main__":
    main()
