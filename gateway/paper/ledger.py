"""The per-project ledger (按项目设立台账, article 26): every movement of an order's money, with a running balance.

One ledger per project and bank. The balance is the money the bank holds for the
project: it rises when an order is funded and when a paid item comes back (a late
return), and falls when a batch's payments are booked (PAY or RETRY) and when a
refund goes back to the original channel. Failures and corrections move no money
and are listed with a zero effect so the ledger tells the whole story. At any date
the balance equals what is still in flight (rule 1, conservation), which
`ledger` reports as `held_now` and `balanced` for the ledger's end.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, func, select

from gateway.models import (BatchState, ItemStatus, OrderState, batches, corrections, items, late_returns,
                            orders, refunds)
from gateway.rules import CST

KINDS = {  # kind -> (label, order within a day)
    "funded": ("拨入 funded", 0), "paid": ("支付 paid", 1), "retried": ("重发支付 paid on retry", 2),
    "failed": ("失败 failed", 3), "corrected": ("更正 corrected", 4), "returned": ("退票 returned", 5),
    "refunded": ("退回原渠道 refunded", 6),
}


def _day(s: int | None, text: str) -> str:
    return datetime.datetime.fromtimestamp(s, CST).date().isoformat() if s is not None else text[:10]


def movements(conn: Connection, *, bank_id: str | None = None, project_code: str | None = None,
              order_no: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Every movement (date YYYY-MM-DD up to `until` exclusive), unsorted, with its effect in fen."""
    scope = [orders.c.state != OrderState.INVALID]
    if bank_id:
        scope.append(orders.c.bank_id == bank_id)
    if project_code:
        scope.append(orders.c.project_code == project_code)
    if order_no:
        scope.append(orders.c.order_no == order_no)
    out: list[dict] = []

    def add(kind, date, o, ref, count, amount, effect):
        out.append({"date": date, "kind": kind, "label": KINDS[kind][0], "bank_id": o.bank_id,
                    "project_code": o.project_code, "order_no": o.order_no, "reference": ref,
                    "count": int(count or 0), "amount": int(amount or 0), "effect": int(effect or 0)})

    cols = (orders.c.bank_id, orders.c.project_code, orders.c.order_no)
    for o in conn.execute(select(*cols, orders.c.funded_at, orders.c.total_count, orders.c.total_amount)
                          .where(*scope, orders.c.state.not_in((OrderState.FUNDED, OrderState.LOADING)))):
        add("funded", o.funded_at[:10], o, o.order_no, o.total_count, o.total_amount, o.total_amount)
    for b in conn.execute(select(*cols, batches.c.batch_no, batches.c.kind, batches.c.done_at,
                                 batches.c.updated_at, batches.c.succ_cnt, batches.c.succ_amt, batches.c.fail_cnt,
                                 batches.c.fail_amt)
                          .join(orders, orders.c.order_no == batches.c.order_no)
                          .where(batches.c.state == BatchState.DONE, *scope)):
        d = _day(b.done_at, b.updated_at)
        add("retried" if b.kind == "RETRY" else "paid", d, b, b.batch_no, b.succ_cnt, b.succ_amt, -(b.succ_amt or 0))
        if b.fail_cnt:
            add("failed", d, b, b.batch_no, b.fail_cnt, b.fail_amt, 0)
    day = func.substr(corrections.c.at, 1, 10)
    for c in conn.execute(select(*cols, day, func.count(), func.sum(items.c.amount))
                          .select_from(corrections.join(orders, orders.c.order_no == corrections.c.order_no)
                                       .join(items, (items.c.order_no == corrections.c.order_no)
                                             & (items.c.seq == corrections.c.seq)))
                          .where(*scope).group_by(*cols, day)):
        add("corrected", c[3], c, f"{c[4]} items", c[4], c[5], 0)
    for r in conn.execute(select(*cols, late_returns.c.return_serial, late_returns.c.return_date,
                                 late_returns.c.amount)
                          .join(orders, orders.c.order_no == late_returns.c.order_no).where(*scope)):
        d = r.return_date
        add("returned", f"{d[:4]}-{d[4:6]}-{d[6:]}", r, r.return_serial, 1, r.amount, r.amount)
    for r in conn.execute(select(*cols, refunds.c.refund_no, refunds.c.updated_at, refunds.c.total_count,
                                 refunds.c.refund_amount)
                          .join(orders, orders.c.order_no == refunds.c.order_no)
                          .where(refunds.c.state == "DONE", *scope)):
        add("refunded", r.updated_at[:10], r, r.refund_no, r.total_count, r.refund_amount, -(r.refund_amount or 0))
    if until:
        out = [m for m in out if m["date"] < until]
    return out


def ledger(conn: Connection, *, year: int | None = None, bank_id: str | None = None,
           project_code: str | None = None) -> dict[str, Any]:
    """The ledgers per (bank, project), optionally of one year with its opening balance carried in."""
    start = f"{year:04d}-01-01" if year else None
    until = f"{year + 1:04d}-01-01" if year else None
    per: dict[tuple, list[dict]] = defaultdict(list)
    for m in movements(conn, bank_id=bank_id, project_code=project_code, until=until):
        per[(m["bank_id"], m["project_code"])].append(m)
    names = dict(conn.execute(select(orders.c.project_code, func.max(orders.c.project_name))
                              .group_by(orders.c.project_code)).all())
    held = {(r[0], r[1]): int(r[2] or 0) for r in conn.execute(
        select(orders.c.bank_id, orders.c.project_code, func.sum(items.c.amount))
        .join(items, items.c.order_no == orders.c.order_no)
        .where(orders.c.state.in_((OrderState.LOADED, OrderState.DISPATCHED, OrderState.SETTLED)),
               items.c.status.not_in((ItemStatus.PAID, ItemStatus.REFUNDED)))
        .group_by(orders.c.bank_id, orders.c.project_code))}
    out = []
    for (b, p), ms in sorted(per.items()):
        ms.sort(key=lambda m: (m["date"], KINDS[m["kind"]][1], m["order_no"], m["reference"]))
        balance, opening, shown = 0, 0, []
        for m in ms:
            balance += m["effect"]
            if start and m["date"] < start:
                opening = balance
                continue
            shown.append({**m, "balance": balance})
        out.append({"bank_id": b, "project_code": p, "project_name": names.get(p), "opening": opening,
                    "movements": shown, "closing": balance, "held_now": held.get((b, p), 0),
                    # the ledger's end is now only without a year: then it must equal what is in flight
                    "balanced": (balance == held.get((b, p), 0)) if year is None else None})
    return {"year": year, "bank_id": bank_id, "project_code": project_code, "ledgers": out}
