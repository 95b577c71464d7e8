"""Operator commands: `gatewayd` runs the daemon, `gatewayctl` inspects and maintains it.

Both read the same configuration file. Exit codes: 0 ok, 1 a check failed
(journal broken), 2 the configuration or start-up is wrong (message names the
file and key). Personal data is shown masked.
"""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import func, select

from gateway import config as configmod
from gateway import db as dbmod


def _load(path: str) -> configmod.GatewayConfig:
    try:
        return configmod.load(path)
    except configmod.ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(fmt: str) -> None:
    from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                                globalLogBeginner, jsonFileLogObserver, textFileLogObserver)
    if fmt == "json" or (fmt == "auto" and not sys.stdout.isatty()):
        obs = jsonFileLogObserver(sys.stdout)
    else:
        obs = textFileLogObserver(sys.stdout)
    pred = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    # Conch says "Disconnecting with error, code 10" at info on every clean SFTP close.
    for ns in ("adapters.sftp._ClientTransport", "twisted.conch"):
        pred.setLogLevelForNamespace(ns, LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(obs, [pred])], redirectStandardIO=False)


def gatewayd_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gatewayd", description="Run the bank gateway daemon in the foreground.")
    p.add_argument("--config", required=True, help="the daemon's TOML file, e.g. conf/gateway.toml")
    p.add_argument("--log-format", choices=("auto", "text", "json"), help="overrides [log] format")
    args = p.parse_args(argv)
    cfg = _load(args.config)
    from twisted.internet import reactor

    from gateway.service import StartupError, make_service
    try:
        gw = make_service(cfg, reactor)
    except StartupError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(args.log_format or cfg.log_format)
    exit_code = [0]

    def start() -> None:
        # Start whole or not at all: a listener that cannot open stops the daemon with 2.
        try:
            gw.startService()
        except Exception as e:  # noqa: BLE001
            print(f"cannot start: {e}", file=sys.stderr)
            exit_code[0] = 2
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", gw.stopService)
    reactor.callWhenRunning(start)
    reactor.run()
    raise SystemExit(exit_code[0])


# --- gatewayctl -----------------------------------------------------------------

def _engine(cfg):
    return dbmod.make_engine(cfg.database_url)


def cmd_db_upgrade(cfg, args) -> int:
    dbmod.upgrade(cfg.database_url)
    print(f"database at revision {dbmod.head_revision()}")
    return 0


def cmd_journal_verify(cfg, args) -> int:
    from gateway.journal import verify_chain
    engine = _engine(cfg)
    dbmod.check_migrated(engine, cfg.file)
    with engine.connect() as conn:
        r = verify_chain(conn, cfg.journal_archive_dir)
    if r.ok:
        print(f"journal intact: {r.checked} entries, chain and payloads verified")
        return 0
    print(f"JOURNAL BROKEN at entry {r.first_bad_id}: {r.reason} ({r.checked} entries read)")
    return 1


def cmd_journal_show(cfg, args) -> int:
    from gateway.models import journal
    engine = _engine(cfg)
    q = select(journal.c.id, journal.c.at, journal.c.direction, journal.c.peer, journal.c.channel,
               journal.c.tx_code, journal.c.order_no, journal.c.batch_no, journal.c.verified,
               journal.c.payload_size, journal.c.decoded).order_by(journal.c.id.desc()).limit(args.limit)
    if args.order:
        q = q.where(journal.c.order_no == args.order)
    if args.batch:
        q = q.where(journal.c.batch_no == args.batch)
    with engine.connect() as conn:
        rows = list(conn.execute(q))
    for r in reversed(rows):
        print(f"#{r.id} {r.at} {r.direction:5} {r.peer}/{r.channel} {r.tx_code} "
              f"order={r.order_no or '-'} batch={r.batch_no or '-'} verified={r.verified} "
              f"{r.payload_size}B  {r.decoded[:300]}")
    return 0


def cmd_orders(cfg, args) -> int:
    from gateway.models import items, orders
    engine = _engine(cfg)
    with engine.connect() as conn:
        for o in conn.execute(select(orders).order_by(orders.c.created_at)).mappings():
            per = conn.execute(select(items.c.status, func.count(), func.sum(items.c.amount))
                               .where(items.c.order_no == o["order_no"]).group_by(items.c.status)).all()
            figures = ", ".join(f"{s} {n}/{int(a or 0)}" for s, n, a in per)
            print(f"{o['order_no']} [{o['bank_id']}] {o['state']} {o['project_short']} "
                  f"{o['total_count']} items {o['total_amount']} fen: {figures}")
    return 0


def cmd_alarms(cfg, args) -> int:
    from gateway.models import alarms
    engine = _engine(cfg)
    with engine.connect() as conn:
        for a in conn.execute(select(alarms).order_by(alarms.c.id)).mappings():
            print(f"#{a['id']} {a['at']} {a['severity']} {a['kind']} {a['message']}")
    return 0


def cmd_rpc(cfg, args) -> int:
    from gateway.rpc_client import rpc_cli_main
    return rpc_cli_main(args.rest, unix_path=cfg.rpc.unix_socket if cfg.rpc else None)


def gatewayctl_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gatewayctl", description="Inspect and maintain the bank gateway.")
    p.add_argument("--config", required=True, help="the daemon's TOML file")
    sub = p.add_subparsers(dest="group", required=True)
    d = sub.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    d.add_parser("upgrade", help="apply the migrations (alembic upgrade head)").set_defaults(fn=cmd_db_upgrade)
    j = sub.add_parser("journal", help="the message journal").add_subparsers(dest="cmd", required=True)
    j.add_parser("verify", help="check the hash chain and archived payloads").set_defaults(fn=cmd_journal_verify)
    show = j.add_parser("show", help="recent entries, masked")
    show.add_argument("--order")
    show.add_argument("--batch")
    show.add_argument("--limit", type=int, default=50)
    show.set_defaults(fn=cmd_journal_show)
    sub.add_parser("orders", help="orders with counts and amounts per item state").set_defaults(fn=cmd_orders)
    r = sub.add_parser("rpc", help="call the daemon's RPC: gatewayctl rpc METHOD key=value ...",
                       add_help=False)
    r.add_argument("rest", nargs=argparse.REMAINDER)
    r.set_defaults(fn=cmd_rpc)
    sub.add_parser("alarms", help="alarms raised").set_defaults(fn=cmd_alarms)
    sub.add_parser("check-config", help="validate the configuration and exit").set_defaults(
        fn=lambda cfg, a: (print(json.dumps({"ok": True, "banks": sorted(cfg.banks)})), 0)[1])
    args = p.parse_args(argv)
    cfg = _load(args.config)
    try:
        raise SystemExit(args.fn(cfg, args))
    except dbmod.NotMigrated as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
