"""`gatewayctl alarms`: the episodes an operator on duty works through.

`alarms` lists the open ones (not cleared by the daemon), `--all` the history,
`--json` for scripts; `alarms ack ID --comment TEXT` records who saw it and why,
in the alarm and in the journal, in one transaction. Who is the Unix user running
the command unless `--by` names the person (a shared operator account).
"""

from __future__ import annotations

import getpass
import json



def _rows(cfg, everything: bool) -> list[dict]:
    """Through the driver alone (gateway/quickread.py): the first command of a night shift
    answers without loading SQLAlchemy."""
    from gateway import quickread
    where = "" if everything else " WHERE cleared_at IS NULL"
    return quickread.rows(cfg.database_url, cfg.file, f"SELECT * FROM alarms{where} ORDER BY id")


def _line(a: dict) -> str:
    where = " ".join(f"{k}={a[k]}" for k in ("bank_id", "order_no", "batch_no") if a.get(k))
    state = f"cleared {a['cleared_at']}" if a.get("cleared_at") else "OPEN"
    seen = f" seen {a['count']}x, last {a['last_at']}" if (a.get("count") or 1) > 1 else ""
    ack = f" ack by {a['acknowledged_by']}: {a.get('ack_comment') or ''}" if a.get("acknowledged_by") else ""
    last = f"\n      last: {a['last_message']}" if (a.get("count") or 1) > 1 and a.get("last_message") else ""
    return (f"#{a['id']} {a['at']} {a['severity']:8} {a['kind']} [{state}{seen}] {where}\n"
            f"      {a['message']}{last}{ack}")


def cmd_alarms(cfg, args) -> int:
    rows = _rows(cfg, args.all)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    elif not rows:
        print("no open alarms" if not args.all else "no alarms")
    else:
        for a in rows:
            print(_line(a))
    return 0


def cmd_alarms_ack(cfg, args) -> int:
    from gateway import db as dbmod
    from gateway.alarms import acknowledge_alarm
    from gateway.journal import Entry, Journal
    from gateway.rules import iso
    import time

    if not args.comment.strip():
        print("alarms ack: --comment must say why (it is kept with the alarm)")
        return 2
    who = args.by or getpass.getuser()
    engine = dbmod.make_engine(cfg.database_url)
    dbmod.check_migrated(engine, cfg.file)
    journal = Journal(cfg.journal_archive_dir, cfg.journal_inline_max_bytes, key=cfg.journal_auth.key)
    at = iso(time.time())
    with engine.begin() as conn:
        if not acknowledge_alarm(conn, at, args.id, who, args.comment):
            print(f"alarms ack: no alarm #{args.id}")
            return 1
        from gateway.store import alarms
        a = alarms.get(conn, args.id)
        journal.append(conn, Entry(direction="event", peer=f"operator:{who}", channel="cli", tx_code="alarm.ack",
                                   decoded=json.dumps({"alarm": args.id, "kind": a["kind"], "by": who,
                                                       "comment": args.comment}, ensure_ascii=False),
                                   order_no=a["order_no"], batch_no=a["batch_no"]), at)
    print(f"alarm #{args.id} acknowledged by {who}")
    return 0


def add_parser(sub) -> None:
    a = sub.add_parser("alarms", help="alarm episodes: open ones by default; `ack ID --comment`")
    a.add_argument("--all", action="store_true", help="the history too (cleared ones)")
    a.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    a.set_defaults(fn=cmd_alarms)
    asub = a.add_subparsers(dest="cmd")
    ack = asub.add_parser("ack", help="acknowledge an alarm with a comment (journaled with who)")
    ack.add_argument("id", type=int)
    ack.add_argument("--comment", required=True)
    ack.add_argument("--by", help="the person, when the Unix account is shared")
    ack.set_defaults(fn=cmd_alarms_ack)
