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


# Both commands read through the database driver alone (gateway/quickread.py): no SQLAlchemy.
_ORDER_COLUMNS = ("order_no", "bank_id", "state", "project_code", "project_short", "region",
                  "total_count", "total_amount", "funded_at")


def cmd_orders(cfg, args) -> int:
    from gateway.quickread import reader
    out = []
    where, params = [], []
    if args.state:
        where.append("state = ?")
        params.append(args.state.upper())
    if args.bank:
        where.append("bank_id = ?")
        params.append(args.bank)
    with reader(cfg.database_url, cfg.file) as q:
        for o in q(f"SELECT {', '.join(_ORDER_COLUMNS)} FROM orders"
                   + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at", params):
            per = q("SELECT status, count(*) AS n, sum(amount) AS a FROM items WHERE order_no = ? "
                    "GROUP BY status", (o["order_no"],))
            out.append({k: o[k] for k in _ORDER_COLUMNS}
                       | {"by_status": {r["status"]: {"count": r["n"], "amount": int(r["a"] or 0),
                                                      "yuan": yuan(r["a"])} for r in per},
                          "total_yuan": yuan(o["total_amount"])})
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    for o in out:
        figures = ", ".join(f"{s} {v['count']} / {v['yuan']} 元" for s, v in sorted(o["by_status"].items()))
        print(f"{o['order_no']} [{o['bank_id']}] {o['state']} {o['project_short']} "
              f"{o['total_count']} items {o['total_yuan']} 元 ({o['total_amount']} fen): {figures or '-'}")
    return 0


def cmd_items(cfg, args) -> int:
    from gateway.quickread import reader
    where, params = ["order_no = ?"], [args.order]
    if args.status:
        where.append("status = ?")
        params.append(args.status.upper())
    if args.reason:
        where.append("reason_code = ?")
        params.append(args.reason)
    with reader(cfg.database_url, cfg.file) as q:
        rows = q(f"SELECT * FROM items WHERE {' AND '.join(where)} ORDER BY seq LIMIT ? OFFSET ?",
                 params + [int(args.limit), int(args.offset)])
        seqs = [r["seq"] for r in rows]
        fixes: dict[int, list] = {}
        for i in range(0, len(seqs), 500):
            part = seqs[i:i + 500]
            for c in q(f"SELECT * FROM corrections WHERE order_no = ? AND seq IN ({', '.join('?' * len(part))}) "
                       "ORDER BY id", [args.order, *part]):
                fixes.setdefault(c["seq"], []).append({
                    "at": c["at"], "failed_batch_no": c["failed_batch_no"], "reason_code": c["reason_code"],
                    "confirmed_by": c["confirmed_by"], "approved_by": c["approved_by"],
                    "approval_ref": c["approval_ref"], "caller": c["caller"],
                    "changed": sorted(json.loads(c["new_values"] or "{}"))})
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
