"""The figures behind the printed and spreadsheet reports: `reports.monthly` plus its breakdown per order.

`month_detail` adds to the month's report (per bank and project) the same figures
per order, on the same basis, so a sheet can list the orders and total them with
formulas that must come to the report's figures; and the month's ledger movements.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from gateway import reports
from gateway.models import ItemStatus, OrderState, items, late_returns, orders
from gateway.paper import ledger as ledgermod


def _ca(c=0, a=0) -> dict[str, int]:
    return {"count": int(c or 0), "amount": int(a or 0)}


def per_order(conn: Connection, year: int, month: int, bank_id: str | None = None,
              project_code: str | None = None, *, states: reports.OrderStates | None = None
              ) -> dict[tuple[str, str], list[dict]]:
    """(bank, project) -> one row per order with a figure in the month, on report.monthly's basis."""
    m = reports._Month(year, month)   # noqa: SLF001  (the same month boundaries as the report)
    scope = []
    if bank_id is not None:
        scope.append(orders.c.bank_id == bank_id)
    if project_code is not None:
        scope.append(orders.c.project_code == project_code)
    rows: dict[str, dict] = {}
    meta = {}

    def row(no: str) -> dict:
        if no not in rows:
            rows[no] = {"order_no": no, "funded": _ca(), "paid": _ca(), "refunded": _ca(), "failed": _ca(),
                        "late_returned": _ca(), "outstanding": _ca()}
        return rows[no]
    for o in conn.execute(select(orders.c.order_no, orders.c.bank_id, orders.c.project_code, orders.c.region,
                                 orders.c.budget_unit).where(*scope)):
        meta[o.order_no] = o
    for r in conn.execute(select(orders.c.order_no, orders.c.total_count, orders.c.total_amount)
                          .where(m.text(orders.c.funded_at), orders.c.state != OrderState.INVALID, *scope)):
        row(r.order_no)["funded"] = _ca(1, r.total_amount)   # counted in orders, as report.monthly does
    item_rows = ([(no, st, n, a) for no, st, _, n, a in states.items_of_month(m, bank_id, project_code, by_order=True)]
                 if states is not None else
                 conn.execute(select(items.c.order_no, items.c.status, func.count(), func.sum(items.c.amount))
                              .join(orders, orders.c.order_no == items.c.order_no)
                              .where(m.text(items.c.result_at), *scope).group_by(items.c.order_no, items.c.status)))
    for r in item_rows:
        what = {ItemStatus.PAID: "paid", ItemStatus.REFUNDED: "refunded"}.get(r[1], "failed")
        f = row(r[0])[what]
        f["count"] += r[2]
        f["amount"] += int(r[3] or 0)
    for r in conn.execute(select(late_returns.c.order_no, func.count(), func.sum(late_returns.c.amount))
                          .join(orders, orders.c.order_no == late_returns.c.order_no)
                          .where(late_returns.c.return_date >= m.ymd_from, late_returns.c.return_date < m.ymd_until,
                                 *scope).group_by(late_returns.c.order_no)):
        row(r.order_no)["late_returned"] = _ca(r[1], r[2])
    if states is not None:
        for no in meta:
            held = states.outstanding(no, m)
            if held["count"]:
                row(no)["outstanding"] = held
    else:
        for r in conn.execute(select(items.c.order_no, func.count(), func.sum(items.c.amount))
                              .join(orders, orders.c.order_no == items.c.order_no)
                              .where(orders.c.funded_at < m.text_until,
                                     orders.c.state.in_((OrderState.LOADED, OrderState.DISPATCHED,
                                                         OrderState.SETTLED)),
                                     items.c.status.not_in((ItemStatus.PAID, ItemStatus.REFUNDED)), *scope)
                              .group_by(items.c.order_no)):
            row(r.order_no)["outstanding"] = _ca(r[1], r[2])
    out: dict[tuple[str, str], list[dict]] = {}
    for no in sorted(rows):
        o = meta[no]
        out.setdefault((o.bank_id, o.project_code), []).append(
            {**rows[no], "region": o.region, "budget_unit": o.budget_unit})
    return out


def month_detail(conn: Connection, year: int, month: int, bank_id: str | None = None,
                 project_code: str | None = None, *, states: reports.OrderStates | None = None,
                 ledgers: dict | None = None) -> dict[str, Any]:
    """The month's report, its per-order rows and its ledger movements (with the balances carried in).

    `states` and `ledgers` (`ledger.ledger(...)`) read once serve many months (the bound volume).
    """
    report = reports.monthly(conn, year, month, bank_id, project_code, states=states)
    start = f"{year:04d}-{month:02d}-01"
    until = f"{year + month // 12:04d}-{month % 12 + 1:02d}-01"
    led = []
    if ledgers is None:
        ledgers = ledgermod.ledger(conn, bank_id=bank_id, project_code=project_code)
    for lg in ledgers["ledgers"]:
        before = [m for m in lg["movements"] if m["date"] < start]
        inside = [m for m in lg["movements"] if start <= m["date"] < until]
        if inside:
            led.append({**lg, "opening": before[-1]["balance"] if before else 0, "movements": inside,
                        "closing": inside[-1]["balance"]})
    return {"report": report, "orders": per_order(conn, year, month, bank_id, project_code, states=states),
            "ledgers": led}
