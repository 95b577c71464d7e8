"""958 corrections through the real RPC on a Unix socket: one item.correct at a time vs one item.correct_many.

    python bench/corrections.py [--url sqlite:///var/bench/c.db | postgresql+psycopg://...] [--n 958]

Prints one JSON line: seconds for each way. The RPC journals every call as the daemon
does (a transport entry per call, in its own transaction, besides the method's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url")
    p.add_argument("--n", type=int, default=958)
    args = p.parse_args()
    from sqlalchemy import delete
    from twisted.internet import reactor, task, threads

    from gateway import db as dbmod
    from gateway.commands import Commands
    from gateway.journal import Entry, Journal
    from gateway.models import corrections, items, journal, orders, batches
    from gateway.rpc import listen_rpc, rpc_site
    from gateway.rpc_client import call
    from tests.test_rpc_races import BANK, ORDER, seed

    d = tempfile.mkdtemp(prefix="bench", dir="/tmp")
    url = args.url or f"sqlite:///{d}/c.db"
    dbmod.upgrade(url)
    engine = dbmod.make_engine(url)
    db = dbmod.Database(reactor, engine)
    db.start()
    jr = Journal(os.path.join(d, "archive"))
    commands = Commands(reactor, db, jr, SimpleNamespace(flows={BANK: None}, tickers={}, core=None))

    def hook(caller, method, params, outcome):   # as gateway/service.py journals each call
        e = Entry("in", f"{caller.transport}:{caller.identity}"[:64], "rpc", method or "(malformed)",
                  json.dumps(outcome)[:200], payload=json.dumps(params).encode())
        return db.run(lambda conn: jr.append(conn, e, "2026-12-07T09:00:00+08:00"))
    sock = os.path.join(d, "rpc.sock")
    listeners = listen_rpc(reactor, rpc_site(commands, hook, reactor=reactor), unix_path=sock)

    def reset():
        with engine.begin() as c:
            for t in (corrections, journal, items, batches, orders):
                c.execute(delete(t))
            c.exec_driver_sql("UPDATE journal_head SET last_id = 0, last_hash = '" + "0" * 64 + "'")
            seed(c, args.n)

    def fix(s):
        return {"seq": s, "account_no": f"6222029876543{s:06d}", "confirmed_by": "收款人本人"}

    def run():
        reset()
        t0 = time.perf_counter()
        for s in range(1, args.n + 1):
            call("item.correct", {"order_no": ORDER, **fix(s), "approved_by": "李科长",
                                  "approval_ref": "NY[2026]18号"}, unix_path=sock)
        one = time.perf_counter() - t0
        reset()
        t0 = time.perf_counter()
        r = call("item.correct_many", {"order_no": ORDER, "approved_by": "李科长", "approval_ref": "NY[2026]18号",
                                       "corrections": [fix(s) for s in range(1, args.n + 1)]},
                 unix_path=sock, timeout=300)
        many = time.perf_counter() - t0
        assert r["corrected"] == args.n
        return {"backend": engine.dialect.name, "corrections": args.n, "one_at_a_time_s": round(one, 2),
                "correct_many_s": round(many, 2)}

    async def go():
        try:
            print(json.dumps(await threads.deferToThread(run)))
        finally:
            await listeners.stop()
            db.stop()
            reactor.stop()
    reactor.callWhenRunning(lambda: task.deferLater(reactor, 0, lambda: None).addCallback(
        lambda _: __import__("twisted.internet.defer", fromlist=["x"]).ensureDeferred(go())))
    reactor.run()


if __name__ == "__main__":
    main()
