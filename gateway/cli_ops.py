"""`gatewayctl orders` and `gatewayctl items`: what an operator asks first about an order.

Amounts are shown in yuan (元, exact from integer fen) beside the fen; `--json` gives the
same as one JSON document for scripts. ID and account numbers are masked (rule 6): an
operator who needs the clear text uses an audited path, not this command.
"""

from __future__ import annotations

import json


from gateway.masking import mask


def yuan(fen: int | None) -> str:
    fen = int(fen or 0)
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def _engine(cfg):
    from gateway import db as dbmod
    engine = dbmod.make_engine(cfg.database_url)
    dbmod.check_migrated(engine, cfg.file)
    return engine


def cmd_orders(cfg, args) -> int:
    from sqlalchemy import func, select
    from gateway.models import items, orders
    engine = _engine(cfg)
    out = []
    with engine.connect() as conn:
        q = select(orders).order_by(orders.c.created_at)
        if args.state:
            q = q.where(orders.c.state == args.state.upper())
        if args.bank:
            q = q.where(orders.c.bank_id == args.bank)
        for o in conn.execute(q).mappings():
            per = conn.execute(select(items.c.status, func.count(), func.sum(items.c.amount))
                               .where(items.c.order_no == o["order_no"]).group_by(items.c.status)).all()
            out.append({k: o[k] for k in ("order_no", "bank_id", "state", "project_code", "project_short",
                                          "region", "total_count", "total_amount", "funded_at")}
                       | {"by_status": {s: {"count": n, "amount": int(a or 0), "yuan": yuan(a)}
                                        for s, n, a in per},
                          "total_yuan": yuan(o["total_amount"])})
    engine.dispose()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    for o in out:
        figures = ", ".join(f"{s} {v['count']} / {v['yuan']} 元" for s, v in sorted(o["by_status"].items()))
        print(f"{o['order_no']} [{o['bank_id']}] {o['state']} {o['project_short']} "
              f"{o['total_count']} items {o['total_yuan']} 元 ({o['total_amount']} fen): {figures or '-'}")
    return 0


def cmd_items(cfg, args) -> int:
    from sqlalchemy import select
    from gateway.models import corrections, items
    engine = _engine(cfg)
    with engine.connect() as conn:
        q = select(items).where(items.c.order_no == args.order).order_by(items.c.seq)
        if args.status:
            q = q.where(items.c.status == args.status.upper())
        if args.reason:
            q = q.where(items.c.reason_code == args.reason)
        rows = [dict(r) for r in conn.execute(q.limit(args.limit).offset(args.offset)).mappings()]
        seqs = [r["seq"] for r in rows]
        fixes: dict[int, list] = {}
        if seqs:
            for c in conn.execute(select(corrections).where(corrections.c.order_no == args.order,
                                                            corrections.c.seq.in_(seqs))
                                  .order_by(corrections.c.id)).mappings():
                fixes.setdefault(c["seq"], []).append({
                    "at": c["at"], "failed_batch_no": c["failed_batch_no"], "reason_code": c["reason_code"],
                    "confirmed_by": c["confirmed_by"], "approved_by": c["approved_by"],
                    "approval_ref": c["approval_ref"], "caller": c["caller"],
                    "changed": sorted(json.loads(c["new_values"] or "{}"))})
    engine.dispose()
    out = [{"seq": r["seq"], "name": r["name"][:1] + "*" * max(0, len(r["name"]) - 1),
            "id_number": mask(r["id_number"]), "account_no": mask(r["account_no"]),
            "amount": r["amount"], "yuan": yuan(r["amount"]), "status": r["status"], "batch_no": r["batch_no"],
            "reason_code": r["reason_code"], "reason_text": r["reason_text"], "bank_serial": r["bank_serial"],
            "corrections": fixes.get(r["seq"], [])} for r in rows]
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    if not out:
        print(f"no items of {args.order} match")
    for i in out:
        why = f" {i['reason_code']} {i['reason_text'] or ''}" if i["reason_code"] and i["reason_code"] != "0000" else ""
        print(f"{args.order}#{i['seq']} {i['status']:14} {i['yuan']:>12} 元 {i['name']} {i['account_no']} "
              f"batch={i['batch_no'] or '-'}{why}")
        for c in i["corrections"]:
            print(f"      corrected {c['at']} ({', '.join(c['changed'])}) confirmed by {c['confirmed_by']}, "
                  f"approved by {c['approved_by']} ({c['approval_ref']}), via {c['caller']}")
    return 0


def add_parsers(sub) -> None:
    o = sub.add_parser("orders", help="orders with counts and amounts (元 and fen) per item state")
    o.add_argument("--state")
    o.add_argument("--bank")
    o.add_argument("--json", action="store_true")
    o.set_defaults(fn=cmd_orders)
    i = sub.add_parser("items", help="an order's items: state, reason, corrections (masked)")
    i.add_argument("--order", required=True)
    i.add_argument("--status", help="PAID, FAILED, CORRECTED, REFUNDED ...")
    i.add_argument("--reason", help="a reason code, e.g. R001 or AC01")
    i.add_argument("--limit", type=int, default=200)
    i.add_argument("--offset", type=int, default=0)
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_items)
