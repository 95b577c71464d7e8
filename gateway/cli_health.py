"""`gatewayctl health [--json] [--live | --ready]`: the daemon's `health` over its RPC.

Exit 0 ok, 1 degraded, 2 down (a daemon that cannot be reached is down). `--live` asks
only whether the process turns, `--ready` whether it can work (the database answers):
the short answers a supervisor wants.
"""

from __future__ import annotations

import json
import sys


def _line(name: str, link: dict) -> str:
    if not link.get("known"):
        return f"  {name}: link not used yet"
    if link.get("up"):
        return f"  {name}: link up, last success {link.get('last_ok_at')}"
    return (f"  {name}: LINK FAILING since {link.get('failing_since')}, {link.get('failures')} consecutive "
            f"failure(s), last error at {link.get('last_error_at')}: {link.get('last_error')}"
            + (f"; last success {link['last_ok_at']}" if link.get("last_ok_at") else "; no success since start"))


def render(h: dict, out) -> None:
    from gateway.masking import mask_text
    print(f"{h['status'].upper()}  version {h['version']}  at {h['at']}  role {h['role']} since "
          f"{h['role_since']}", file=out)
    for r in h["reasons"]:
        print(f"  ! {mask_text(r)}", file=out)
    db = h["database"]
    print(f"database: {'ok' if db['ok'] else 'DOWN'}"
          + (f" ({db['seconds']} s)" if db.get("ok") else f": {db.get('error')}"), file=out)
    print(_line(f"core {h['core']['base_url']}", h["core"]["link"]).strip(), file=out)
    for name, lease in sorted(h.get("leases", {}).items()):
        print(f"lease {name}: {lease['role']} epoch {lease.get('epoch')} since {lease.get('since')} "
              f"acts for {lease.get('acts_for_s')} s", file=out)
    for bank_id, b in sorted(h["banks"].items()):
        print(f"bank {bank_id} ({b['dialect']}): flow {'running' if b['flow_running'] else 'not running here'}",
              file=out)
        print(mask_text(_line("", b["link"])).replace("  : ", "  "), file=out)
        oldest = b.get("oldest_waiting")
        print(f"  batches waiting: {b['batches_waiting']}"
              + (f", oldest {oldest['batch_no']} {oldest['state']} since {oldest['created_at']}" if oldest else ""),
              file=out)
        for a in b["open_alarms"]:
            print(f"  alarm #{a['id']} {a['severity']} {a['kind']} since {a['since']} (x{a['count']}): "
                  f"{mask_text(a['message'])}", file=out)
    for a in h.get("open_alarms_other", []):
        print(f"alarm #{a['id']} {a['severity']} {a['kind']} since {a['since']} (x{a['count']}): "
              f"{mask_text(a['message'])}", file=out)


def cmd_health(cfg, args) -> int:
    from gateway.health import DOWN, EXIT_CODES
    from gateway.rpc_client import RpcError, RpcUnavailable, call
    check = "live" if args.live else "ready" if args.ready else None
    try:
        h = call("health", {"check": check} if check else {},
                 unix_path=cfg.rpc.unix_socket if cfg.rpc else None, timeout=args.timeout)
    except (RpcUnavailable, RpcError, ValueError) as e:
        h = {"status": DOWN, "reasons": [f"the daemon does not answer: {e}"]}
        if check:
            h[check] = False
        print(json.dumps(h) if args.json else f"DOWN: {h['reasons'][0]}", file=sys.stdout)
        return EXIT_CODES[DOWN]
    if args.json or check:
        print(json.dumps(h, ensure_ascii=False, indent=None if check else 2))
    else:
        render(h, sys.stdout)
    return EXIT_CODES.get(h.get("status"), 2)


def add_parser(sub) -> None:
    p = sub.add_parser("health", help="the daemon's health: per bank link, alarms, waiting batches; core; "
                                      "database; leases (exit 0 ok, 1 degraded, 2 down)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--live", action="store_true", help="only: does the process answer (for a supervisor)")
    g.add_argument("--ready", action="store_true", help="only: can it work (started, database answering)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.set_defaults(fn=cmd_health)
