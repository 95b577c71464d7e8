"""The monthly report (月度报表): a month's figures per bank and project, and its reconciliation.

`monthly` reads the database on one connection and changes nothing. A month is a
calendar month in China Standard Time. Every time the gateway stores is ISO 8601
text at +08:00 (the core's times too, core-api.md), so a month is a range of that
text; batches' `done_at` are whole seconds and compared as such. What puts a
record in a month:

- an item: its latest result, `items.result_at` (the bank's PostDate for a batch
  result or a late return, the time a refund was confirmed); the item counts as
  paid, refunded or failed (by reason code) by its status now. An item that failed
  in November and was paid in December counts in December only;
- a batch: the time the gateway applied its results (`batches.done_at`; the bank's
  statement puts it in the month of its own DONE date, so a batch done near
  midnight on the last day can fall in the next month on one side: such a batch is
  reported `period_differs`, not missing, when the other month's statement is stored);
- a refund: `refunds.updated_at` of a refund DONE (written when the bank confirmed it);
- a late return: its ReturnDate; an order: `funded_at`; a SETTLED order: the latest
  result of its items.

"Outstanding" and the conservation check are the state now of the orders funded
by the month's end (INVALID orders aside, and orders whose items are not loaded yet).

Reconciliation uses, per bank, the statement of the month (period `M{YYYYMM}`, the
one fetched last) or, if there is none, the daily statements of its days. cnbank
lines are compared per batch (count, amount, paid, failed, returned as of the
statement's fetch) and per refund; ISO entries per EndToEndId (OrderNo-Seq for a
payment and its return, RefundNo for a refund), as multisets: what the gateway
counts as debited in the month is every item paid in a batch done in the month
(including items paid and since returned), every refund done in the month; as
credited, every late return dated in the month.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from typing import Any, Iterable

from sqlalchemy import Connection, and_, func, or_, select

from gateway.models import (BatchState, ItemStatus, OrderState, RefundState, batches, items,
                            late_returns, orders, refunds, statement_lines, statements)
from adapters.cnbank import statements as cnbank_statements
from adapters.statements import LABELS, count_amount, difference  # noqa: F401  (LABELS: report users)
from gateway.rules import CST

MAX_LISTED = 1000     # differences listed per bank; the rest are counted
_CHUNK = 500          # values per IN (...) list


class _Month:
    def __init__(self, year: int, month: int):
        start = datetime.datetime(year, month, 1, tzinfo=CST)
        end = datetime.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=CST)
        self.year, self.month = year, month
        self.text_from, self.text_until = start.isoformat(), end.isoformat()
        self.secs_from, self.secs_until = int(start.timestamp()), int(end.timestamp())
        self.ymd_from, self.ymd_until = start.strftime("%Y%m%d"), end.strftime("%Y%m%d")
        self.yyyymm = f"{year:04d}{month:02d}"

    def text(self, col):
        return and_(col >= self.text_from, col < self.text_until)

    def done(self):
        """A batch DONE in the month: by done_at, or updated_at for one done before done_at existed."""
        return and_(batches.c.state == BatchState.DONE, or_(
            and_(batches.c.done_at >= self.secs_from, batches.c.done_at < self.secs_until),
            and_(batches.c.done_at.is_(None), self.text(batches.c.updated_at))))

    def of_seconds(self, s: int | None) -> str | None:
        return None if s is None else datetime.datetime.fromtimestamp(s, CST).strftime("%Y-%m")

    # The statement that covers the period whole, and the shorter ones that can stand in for it.
    own, part, part_name = "M", "D", "daily"

    @property
    def label(self) -> str:
        return f"{self.yyyymm[:4]}-{self.yyyymm[4:]}"

    @property
    def key(self) -> str:
        return self.yyyymm


class _Year(_Month):
    """A calendar year in China time: the same questions as a month, over twelve of them."""

    own, part, part_name = "Y", "M", "monthly"

    def __init__(self, year: int):
        start = datetime.datetime(year, 1, 1, tzinfo=CST)
        end = datetime.datetime(year + 1, 1, 1, tzinfo=CST)
        self.year, self.month = year, None
        self.text_from, self.text_until = start.isoformat(), end.isoformat()
        self.secs_from, self.secs_until = int(start.timestamp()), int(end.timestamp())
        self.ymd_from, self.ymd_until = start.strftime("%Y%m%d"), end.strftime("%Y%m%d")
        self.yyyymm = f"{year:04d}"

    @property
    def label(self) -> str:
        return self.yyyymm


_ca = count_amount


def _add(d: dict[str, int], count, amount) -> None:
    d["count"] += int(count or 0)
    d["amount"] += int(amount or 0)


def _empty(bank_id: str, project_code: str) -> dict[str, Any]:
    return {"bank_id": bank_id, "project_code": project_code, "project_name": None,
            "orders": {"funded": _ca(), "invalid": _ca(), "settled": 0},
            "batches": {"done": 0, "paid": _ca(), "failed": _ca()},
            "items": {"paid": _ca(), "refunded": _ca(), "failed": {**_ca(), "by_reason": {}}},
            "refunds": {"done": 0, **_ca()},
            "late_returned": {**_ca(), "by_reason": {}},
            "outstanding": {**_ca(), "by_status": {}}}


def _chunks(values: list, n: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


def monthly(conn: Connection, year: int, month: int, bank_id: str | None = None,
            project_code: str | None = None, *, states: "OrderStates | None" = None) -> dict[str, Any]:
    """The month's figures per bank and project, conservation per order, and reconciliation.

    `states` (from `order_states`) answers the "state now" figures from memory: a caller
    making many months' reports (the bound volume) reads the items' states once.
    """
    if not 1 <= month <= 12:
        raise ValueError(f"month {month} is not 1 to 12")
    m = _Month(year, month)
    scope = []
    if bank_id is not None:
        scope.append(orders.c.bank_id == bank_id)
    if project_code is not None:
        scope.append(orders.c.project_code == project_code)
    figures: dict[tuple[str, str], dict] = {}

    def fig(b: str, p: str) -> dict:
        if (b, p) not in figures:
            figures[(b, p)] = _empty(b, p)
        return figures[(b, p)]

    key = (orders.c.bank_id, orders.c.project_code)
    for r in conn.execute(select(*key, orders.c.state, func.count(), func.sum(orders.c.total_amount),
                                 func.max(orders.c.project_name))
                          .where(m.text(orders.c.funded_at), *scope).group_by(*key, orders.c.state)):
        f = fig(r[0], r[1])
        _add(f["orders"]["invalid" if r.state == OrderState.INVALID else "funded"], r[3], r[4])
    last = (select(orders.c.bank_id, orders.c.project_code,
                   func.max(items.c.result_at).label("last"))
            .join(items, items.c.order_no == orders.c.order_no)
            .where(orders.c.state == OrderState.SETTLED, *scope)
            .group_by(orders.c.order_no, orders.c.bank_id, orders.c.project_code).subquery())
    for r in conn.execute(select(last.c.bank_id, last.c.project_code, func.count())
                          .where(m.text(last.c.last)).group_by(last.c.bank_id, last.c.project_code)):
        fig(r[0], r[1])["orders"]["settled"] += r[2]
    for r in conn.execute(select(*key, func.count(), func.sum(batches.c.succ_cnt), func.sum(batches.c.succ_amt),
                                 func.sum(batches.c.fail_cnt), func.sum(batches.c.fail_amt))
                          .join(orders, orders.c.order_no == batches.c.order_no)
                          .where(m.done(), *scope).group_by(*key)):
        f = fig(r[0], r[1])["batches"]
        f["done"] += r[2]
        _add(f["paid"], r[3], r[4])
        _add(f["failed"], r[5], r[6])
    item_rows = (states.items_of_month(m, bank_id, project_code) if states is not None else conn.execute(
        select(*key, items.c.status, items.c.reason_code, func.count(), func.sum(items.c.amount))
        .join(orders, orders.c.order_no == items.c.order_no)
        .where(m.text(items.c.result_at), *scope)
        .group_by(*key, items.c.status, items.c.reason_code)))
    for r in item_rows:
        f = fig(r[0], r[1])["items"]
        if r[2] == ItemStatus.PAID:
            _add(f["paid"], r[4], r[5])
        elif r[2] == ItemStatus.REFUNDED:
            _add(f["refunded"], r[4], r[5])
        else:
            _add(f["failed"], r[4], r[5])
            _add(f["failed"]["by_reason"].setdefault(r[3] or "unknown", _ca()), r[4], r[5])
    for r in conn.execute(select(*key, func.count(), func.sum(refunds.c.total_count),
                                 func.sum(refunds.c.refund_amount))
                          .join(orders, orders.c.order_no == refunds.c.order_no)
                          .where(refunds.c.state == RefundState.DONE, m.text(refunds.c.updated_at), *scope)
                          .group_by(*key)):
        f = fig(r[0], r[1])["refunds"]
        f["done"] += r[2]
        _add(f, r[3], r[4])
    for r in conn.execute(select(*key, late_returns.c.reason_code, func.count(), func.sum(late_returns.c.amount))
                          .join(orders, orders.c.order_no == late_returns.c.order_no)
                          .where(late_returns.c.return_date >= m.ymd_from,
                                 late_returns.c.return_date < m.ymd_until, *scope)
                          .group_by(*key, late_returns.c.reason_code)):
        f = fig(r[0], r[1])["late_returned"]
        _add(f, r[3], r[4])
        _add(f["by_reason"].setdefault(r.reason_code, _ca()), r[3], r[4])

    # The state now of the orders funded by the month's end whose items are loaded.
    loaded = (orders.c.funded_at < m.text_until,
              orders.c.state.in_((OrderState.LOADED, OrderState.DISPATCHED, OrderState.SETTLED)))
    if states is not None:
        conservation = states.month(m, bank_id, project_code, fig)
    else:
        for r in conn.execute(select(*key, items.c.status, func.count(), func.sum(items.c.amount))
                              .join(orders, orders.c.order_no == items.c.order_no)
                              .where(*loaded, *scope,
                                     items.c.status.not_in((ItemStatus.PAID, ItemStatus.REFUNDED)))
                              .group_by(*key, items.c.status)):
            f = fig(r[0], r[1])["outstanding"]
            _add(f, r[3], r[4])
            _add(f["by_status"].setdefault(r.status, _ca()), r[3], r[4])
        conservation = _conservation(conn, m, scope, loaded)
    names = dict(conn.execute(select(orders.c.project_code, func.max(orders.c.project_name)).where(
        *scope).group_by(orders.c.project_code)).all())
    for f in figures.values():
        f["project_name"] = names.get(f["project_code"])

    banks = {b for b, _ in figures}
    banks |= set(conn.execute(select(statements.c.bank_id).where(
        _covering(m), *([statements.c.bank_id == bank_id] if bank_id else [])).distinct()).scalars())
    if bank_id is not None:
        banks = {bank_id}
    return {
        "year": year, "month": month, "period": f"M{m.yyyymm}",
        "from": m.text_from, "until": m.text_until,
        "bank_id": bank_id, "project_code": project_code,
        "basis": {"items": "latest result (items.result_at) in the month, by status now",
                  "batches": "results applied by the gateway (batches.done_at) in the month",
                  "refunds": "refunds DONE, confirmed (updated_at) in the month",
                  "late_returned": "ReturnDate in the month",
                  "outstanding": "items not PAID or REFUNDED now, of orders funded by the month's end"},
        "figures": [figures[k] for k in sorted(figures)],
        "conservation": conservation,
        "reconciliation": {b: _reconcile(conn, m, b, project_code) for b in sorted(banks)},
    }


def _conservation(conn: Connection, m: _Month, scope: list, loaded: tuple) -> dict[str, Any]:
    """Rule 1 per order: its items add up to the total it was funded with."""
    checked, broken = 0, []
    q = (select(orders.c.order_no, orders.c.bank_id, orders.c.project_code, orders.c.total_count,
                orders.c.total_amount, func.count(items.c.seq), func.coalesce(func.sum(items.c.amount), 0))
         .select_from(orders.outerjoin(items, items.c.order_no == orders.c.order_no))
         .where(*loaded, *scope)
         .group_by(orders.c.order_no, orders.c.bank_id, orders.c.project_code, orders.c.total_count,
                   orders.c.total_amount)
         .order_by(orders.c.order_no))
    for r in conn.execute(q):
        checked += 1
        if r[5] != r.total_count or int(r[6]) != r.total_amount:
            broken.append({"order_no": r.order_no, "bank_id": r.bank_id, "project_code": r.project_code,
                           "funded": _ca(r.total_count, r.total_amount), "items": _ca(r[5], r[6])})
    not_loaded = conn.execute(select(func.count()).select_from(orders).where(
        orders.c.funded_at < m.text_until, *scope,
        orders.c.state.in_((OrderState.FUNDED, OrderState.LOADING)))).scalar_one()
    return {"orders_checked": checked, "ok": not broken, "broken": broken[:MAX_LISTED],
            "broken_total": len(broken), "orders_not_loaded": not_loaded}


class OrderStates:
    """Every order's header and its items per status now, read in one pass (see `monthly`'s states).

    The one pass groups the items by order, status, reason and the month of their latest
    result (the first 7 characters of `result_at`, stored at +08:00), so it also answers
    every month's item figures, per (bank, project) and per order, and the year's per
    region: the bound volume reads the year's items once instead of thirteen times.
    """

    _LOADED = (OrderState.LOADED, OrderState.DISPATCHED, OrderState.SETTLED)

    def __init__(self, conn: Connection):
        self.orders = {r.order_no: {"bank_id": r.bank_id, "project_code": r.project_code, "funded_at": r.funded_at,
                                    "state": r.state, "total_count": r.total_count, "total_amount": r.total_amount,
                                    "region": r.region, "by_status": {}}
                       for r in conn.execute(select(orders.c.order_no, orders.c.bank_id, orders.c.project_code,
                                                    orders.c.funded_at, orders.c.state, orders.c.total_count,
                                                    orders.c.total_amount, orders.c.region))}
        month = func.substr(items.c.result_at, 1, 7)
        self.facts: dict[str, list[tuple]] = defaultdict(list)   # "YYYY-MM" -> (order_no, status, reason, n, amt)
        for r in conn.execute(select(items.c.order_no, items.c.status, items.c.reason_code, month, func.count(),
                                     func.sum(items.c.amount))
                              .group_by(items.c.order_no, items.c.status, items.c.reason_code, month)):
            o = self.orders.get(r[0])
            if o is None:
                continue
            n, a = int(r[4]), int(r[5] or 0)
            have = o["by_status"].get(r[1], (0, 0))
            o["by_status"][r[1]] = (have[0] + n, have[1] + a)
            if r[3] is not None:
                self.facts[r[3]].append((r[0], r[1], r[2], n, a))

    def items_of_month(self, m: _Month, bank_id: str | None, project_code: str | None,
                       *, by_order: bool = False) -> list[tuple]:
        """(bank, project, status, reason, count, amount) of items whose latest result is in the month,
        or with by_order (order_no, status, reason, count, amount)."""
        out: dict[tuple, list[int]] = {}
        for no, status, reason, n, a in self.facts.get(m.text_from[:7], []):
            o = self.orders[no]
            if (bank_id is not None and o["bank_id"] != bank_id) or \
                    (project_code is not None and o["project_code"] != project_code):
                continue
            k = (no, status, reason) if by_order else (o["bank_id"], o["project_code"], status, reason)
            c = out.setdefault(k, [0, 0])
            c[0] += n
            c[1] += a
        return [(*k, c[0], c[1]) for k, c in sorted(out.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]

    def _in(self, o: dict, m: _Month, bank_id: str | None, project_code: str | None) -> bool:
        return ((bank_id is None or o["bank_id"] == bank_id)
                and (project_code is None or o["project_code"] == project_code)
                and o["funded_at"] < m.text_until)

    def outstanding(self, order_no: str, m: _Month) -> dict[str, int]:
        """An order's items not PAID or REFUNDED now, if it was funded by the month's end and is loaded."""
        out = _ca()
        o = self.orders[order_no]
        if o["funded_at"] >= m.text_until or o["state"] not in self._LOADED:
            return out
        for status, (n, a) in o["by_status"].items():
            if status not in (ItemStatus.PAID, ItemStatus.REFUNDED):
                _add(out, n, a)
        return out

    def month(self, m: _Month, bank_id: str | None, project_code: str | None, fig) -> dict[str, Any]:  # noqa: ANN001
        """Fill each figure's outstanding and return the conservation check, as the queries would."""
        checked, broken, not_loaded = 0, [], 0
        for no in sorted(self.orders):
            o = self.orders[no]
            if not self._in(o, m, bank_id, project_code):
                continue
            if o["state"] in (OrderState.FUNDED, OrderState.LOADING):
                not_loaded += 1
            if o["state"] not in self._LOADED:
                continue
            for status, (n, a) in sorted(o["by_status"].items()):
                if status not in (ItemStatus.PAID, ItemStatus.REFUNDED):
                    f = fig(o["bank_id"], o["project_code"])["outstanding"]
                    _add(f, n, a)
                    _add(f["by_status"].setdefault(status, _ca()), n, a)
            checked += 1
            n = sum(x[0] for x in o["by_status"].values())
            a = sum(x[1] for x in o["by_status"].values())
            if n != o["total_count"] or a != o["total_amount"]:
                broken.append({"order_no": no, "bank_id": o["bank_id"], "project_code": o["project_code"],
                               "funded": _ca(o["total_count"], o["total_amount"]), "items": _ca(n, a)})
        return {"orders_checked": checked, "ok": not broken, "broken": broken[:MAX_LISTED],
                "broken_total": len(broken), "orders_not_loaded": not_loaded}


def order_states(conn: Connection) -> OrderStates:
    return OrderStates(conn)


# --- reconciliation ---------------------------------------------------------------------

def _covering(m: _Month):
    return or_(statements.c.period == f"{m.own}{m.key}", statements.c.period.like(f"{m.part}{m.key}%"))


def _chosen_statements(conn: Connection, m: _Month, bank_id: str) -> list[dict]:
    """The month's statement fetched last or, without one, the last of each day's."""
    rows = [dict(r) for r in conn.execute(select(statements).where(
        statements.c.bank_id == bank_id, _covering(m))
        .order_by(statements.c.fetched_at, statements.c.id)).mappings()]
    whole = [r for r in rows if r["period"].startswith(m.own)]
    if whole:
        return [whole[-1]]
    per_day = {r["period"]: r for r in rows}
    return [per_day[p] for p in sorted(per_day)]


_diff = difference


def _elsewhere(conn: Connection, bank_id: str, chosen: list[int], refs: list[str]) -> dict[str, str]:
    """reference -> the period of another stored statement of this bank that lists it."""
    found: dict[str, str] = {}
    for part in _chunks(sorted(refs)):
        for r in conn.execute(select(statement_lines.c.reference, statements.c.period)
                              .join(statements, statements.c.id == statement_lines.c.statement_id)
                              .where(statements.c.bank_id == bank_id, statements.c.id.not_in(chosen),
                                     statement_lines.c.reference.in_(part))
                              .order_by(statements.c.period)):
            found.setdefault(r.reference, r.period)
    return found


def _reconcile(conn: Connection, m: _Month, bank_id: str, project_code: str | None) -> dict[str, Any]:
    chosen = _chosen_statements(conn, m, bank_id)
    if not chosen:
        return {"statement": None,
                "note": f"no statement of bank {bank_id} is stored for {m.label} "
                        f"({m.own}{m.key}, or {m.part_name} {m.part}{m.key}..): nothing reconciled yet",
                "matched": 0, "differences": [], "differences_total": 0, "by_kind": {}}
    ids = [s["id"] for s in chosen]
    fetched = {s["id"]: s["fetched_at"] for s in chosen}
    lines = [dict(r) for r in conn.execute(select(statement_lines).where(
        statement_lines.c.statement_id.in_(ids))
        .order_by(statement_lines.c.statement_id, statement_lines.c.line_no)).mappings()]
    if project_code is not None:
        # A line of another project is not this report's; a line of an unknown order is kept.
        # An entry names its order by its EndToEndId: OrderNo-Seq, or a RefundNo OrderNo-Fnn.
        for ln in lines:
            ln["of"] = ln["order_no"] or ln["reference"].rpartition("-")[0]
        projects = _projects(conn, {ln["of"] for ln in lines if ln["of"]})
        lines = [ln for ln in lines if projects.get(ln["of"], project_code) == project_code]
    diffs: list[dict] = []
    matched = 0
    dialects = {s["dialect"] for s in chosen}
    if "cnbank" in dialects:
        n, d = _reconcile_cnbank(conn, m, bank_id, project_code, lines, fetched, ids)
        matched += n
        diffs += d
    if "entries" in dialects:
        n, d = _reconcile_entries(conn, m, bank_id, project_code,
                                  [ln for ln in lines if ln["kind"] == "entry"], ids)
        matched += n
        diffs += d
    by_kind: dict[str, int] = defaultdict(int)
    for d in diffs:
        by_kind[d["kind"]] += 1
    days = [s["period"] for s in chosen if s["period"].startswith(m.part)]
    statement = {"periods": [s["period"] for s in chosen], "sources": [s["source"] for s in chosen],
                 "fetched_at": max(s["fetched_at"] for s in chosen),
                 "coverage": ("days" if m.part == "D" else "months") if days else
                             ("month" if m.own == "M" else "year"), "lines": len(lines)}
    if len(chosen) == 1 and chosen[0]["totals"]:
        statement["totals"] = json.loads(chosen[0]["totals"])
    for k in ("account", "opening_balance", "closing_balance"):
        if len(chosen) == 1 and chosen[0][k] is not None:
            statement[k] = chosen[0][k]
    out = {"statement": statement, "matched": matched, "differences": diffs[:MAX_LISTED],
           "differences_total": len(diffs), "by_kind": dict(by_kind)}
    if days:
        out["note"] = (f"no statement {m.own}{m.key} is stored; reconciled against the {m.part_name} "
                       f"statements of {len(days)} {'days' if m.part == 'D' else 'months'}")
    return out


def _projects(conn: Connection, order_nos: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in _chunks(sorted(order_nos)):
        found.update(conn.execute(select(orders.c.order_no, orders.c.project_code)
                                  .where(orders.c.order_no.in_(part))).all())
    return found


def _reconcile_cnbank(conn, m: _Month, bank_id, project_code, lines, fetched, ids):
    """The gateway's batches and refunds of the month, with the returns it knew of, compared
    with a cnbank statement's lines by the cnbank package; what only one side lists is placed
    in its period here."""
    proj = [orders.c.project_code == project_code] if project_code is not None else []
    gb = {r["batch_no"]: dict(r) for r in conn.execute(
        select(batches).join(orders, orders.c.order_no == batches.c.order_no)
        .where(batches.c.bank_id == bank_id, m.done(), *proj)).mappings()}
    gr = {r["refund_no"]: dict(r) for r in conn.execute(
        select(refunds).join(orders, orders.c.order_no == refunds.c.order_no)
        .where(refunds.c.bank_id == bank_id, refunds.c.state == RefundState.DONE,
               m.text(refunds.c.updated_at), *proj)).mappings()}
    listed = {ln["reference"] for ln in lines if ln["kind"] == "batch"}
    returned: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for part in _chunks(sorted(set(gb) & listed)):
        for r in conn.execute(select(late_returns.c.batch_no, late_returns.c.return_date,
                                     late_returns.c.amount).where(
                late_returns.c.bank_id == bank_id, late_returns.c.batch_no.in_(part))):
            returned[r.batch_no].append((r.return_date, r.amount))
    c = cnbank_statements.compare(lines, gb, gr, returned, fetched)
    diffs = c.differences
    diffs += _one_sided(conn, m, bank_id, ids, "batch", c.gateway_only_batches, c.bank_only_batches)
    diffs += _one_sided(conn, m, bank_id, ids, "refund", c.gateway_only_refunds, c.bank_only_refunds)
    return c.matched, diffs


_bank_view = cnbank_statements.bank_view


def _one_sided(conn, m: _Month, bank_id, ids, line: str, gateway: dict, bank: dict) -> list[dict]:
    """Differences of what only one side lists this month: missing, or in another period."""
    diffs = []
    other = _elsewhere(conn, bank_id, ids, list(gateway))
    for ref, g in sorted(gateway.items()):
        gv = ({"count": g["total_count"], "amount": g["total_amount"]} if line == "batch"
              else _ca(g["total_count"], g["refund_amount"]))
        if ref in other:
            diffs.append(_diff("period_differs", line, ref, g["order_no"], gv, None,
                               bank_period=other[ref]))
        else:
            diffs.append(_diff("gateway_only", line, ref, g["order_no"], gv, None))
    table, col = (batches, batches.c.batch_no) if line == "batch" else (refunds, refunds.c.refund_no)
    known: dict[str, dict] = {}
    for part in _chunks(sorted(bank)):
        for r in conn.execute(select(table).where(col.in_(part))).mappings():
            known[r[col.name]] = dict(r)
    for ref, s in sorted(bank.items()):
        k = known.get(ref)
        if k is not None and k["bank_id"] != bank_id:
            diffs.append(_diff("bank_only", line, ref, s["order_no"],
                               {"state": k["state"], "bank_id": k["bank_id"]}, _bank_view(s)))
        elif k is not None and k["state"] == "DONE":
            when = (m.of_seconds(k["done_at"]) if line == "batch" and k["done_at"] is not None
                    else k["updated_at"][:7])
            diffs.append(_diff("period_differs", line, ref, s["order_no"], {"state": k["state"]},
                               _bank_view(s), gateway_month=when))
        else:
            diffs.append(_diff("bank_only", line, ref, s["order_no"],
                               {"state": k["state"]} if k is not None else None, _bank_view(s)))
    return diffs


def _reconcile_entries(conn, m: _Month, bank_id, project_code, lines, ids):
    """Booked entries, as multisets of amounts per EndToEndId, debits and credits apart."""
    proj = [orders.c.project_code == project_code] if project_code is not None else []
    done = (select(batches.c.batch_no).join(orders, orders.c.order_no == batches.c.order_no)
            .where(batches.c.bank_id == bank_id, m.done(), *proj))
    debited: dict[tuple, int] = {}
    for r in conn.execute(select(items.c.order_no, items.c.seq, items.c.batch_no, items.c.amount)
                          .where(items.c.status == ItemStatus.PAID, items.c.batch_no.in_(done))):
        debited[(r.order_no, r.seq, r.batch_no)] = r.amount
    for r in conn.execute(select(late_returns.c.order_no, late_returns.c.seq, late_returns.c.batch_no,
                                 late_returns.c.amount).where(late_returns.c.bank_id == bank_id,
                                                              late_returns.c.batch_no.in_(done))):
        debited[(r.order_no, r.seq, r.batch_no)] = r.amount
    g_debit: dict[str, list[int]] = defaultdict(list)
    for (order_no, seq, _), amount in debited.items():
        g_debit[f"{order_no}-{seq}"].append(amount)
    orders_of: dict[str, str] = {}
    for r in conn.execute(select(refunds.c.refund_no, refunds.c.order_no, refunds.c.refund_amount)
                          .join(orders, orders.c.order_no == refunds.c.order_no)
                          .where(refunds.c.bank_id == bank_id, refunds.c.state == RefundState.DONE,
                                 m.text(refunds.c.updated_at), *proj)):
        g_debit[r.refund_no].append(r.refund_amount)
        orders_of[r.refund_no] = r.order_no
    g_credit: dict[str, list[int]] = defaultdict(list)
    for r in conn.execute(select(late_returns.c.order_no, late_returns.c.seq, late_returns.c.amount)
                          .join(orders, orders.c.order_no == late_returns.c.order_no)
                          .where(late_returns.c.bank_id == bank_id, late_returns.c.return_date >= m.ymd_from,
                                 late_returns.c.return_date < m.ymd_until, *proj)):
        g_credit[f"{r.order_no}-{r.seq}"].append(r.amount)
    s_debit: dict[str, list[int]] = defaultdict(list)
    s_credit: dict[str, list[int]] = defaultdict(list)
    for ln in lines:
        (s_credit if ln["credit"] else s_debit)[ln["reference"]].append(ln["amount"])

    diffs: list[dict] = []
    matched = 0
    for line, g_side, s_side in (("debit", g_debit, s_debit), ("credit", g_credit, s_credit)):
        missing = []
        for ref in sorted(set(g_side) | set(s_side)):
            g, s = sorted(g_side.get(ref, [])), sorted(s_side.get(ref, []))
            order_no = orders_of.get(ref) or ref.rpartition("-")[0] or None
            if g == s:
                matched += 1
            elif not s:
                missing.append((ref, order_no, g))
            elif not g:
                diffs.append(_diff("bank_only", line, ref, order_no, None, {"amounts": s}))
            elif len(s) > len(g) and all(s.count(a) >= g.count(a) for a in g):
                diffs.append(_diff("duplicate", line, ref, order_no, {"amounts": g}, {"amounts": s}))
            else:
                diffs.append(_diff("amount_differs", line, ref, order_no, {"amounts": g}, {"amounts": s}))
        other = _elsewhere(conn, bank_id, ids, [ref for ref, _, _ in missing])
        for ref, order_no, g in missing:
            if ref in other:
                diffs.append(_diff("period_differs", line, ref, order_no, {"amounts": g}, None,
                                   bank_period=other[ref]))
            else:
                diffs.append(_diff("gateway_only", line, ref, order_no, {"amounts": g}, None))
    return matched, diffs


# --- the yearly report and the January check (article 26) ----------------------------------

def _fig_row(bank_id: str, project_code: str, region: str, month: str) -> dict[str, Any]:
    return {"bank_id": bank_id, "project_code": project_code, "region": region, "month": month,
            "funded": _ca(), "paid": _ca(), "refunded": _ca(), "failed": _ca(),
            "batches_done": 0, "batch_paid": _ca(), "batch_failed": _ca(),
            "refunds_done": _ca(), "late_returned": _ca()}


_SUMMED = ("funded", "paid", "refunded", "failed", "batch_paid", "batch_failed", "refunds_done", "late_returned")


def _sum_rows(rows: Iterable[dict], **key) -> dict[str, Any]:
    out = {**key, **{k: _ca() for k in _SUMMED}, "batches_done": 0}
    for r in rows:
        for k in _SUMMED:
            _add(out[k], r[k]["count"], r[k]["amount"])
        out["batches_done"] += r["batches_done"]
    return out


def yearly(conn: Connection, year: int, bank_id: str | None = None,
           project_code: str | None = None, *, states: OrderStates | None = None) -> dict[str, Any]:
    """The year's figures per project, bank, region and month (China time), and the January check.

    Each figure is put in its month on the same basis as `monthly` (an item by its latest
    result and its status now, a batch by the time its results were applied, a refund
    when confirmed, a late return by its ReturnDate, an order by funded_at; INVALID orders
    aside), so the twelve monthly reports add up to the year. The reconciliation uses the
    bank's yearly statement (period Y{year}: cnbank RC01 with a Y period, or a camt.053
    over the year) or, without one, its monthly statements, and lists every difference.
    """
    y = _Year(year)
    scope = []
    if bank_id is not None:
        scope.append(orders.c.bank_id == bank_id)
    if project_code is not None:
        scope.append(orders.c.project_code == project_code)
    key = (orders.c.bank_id, orders.c.project_code, orders.c.region)
    rows: dict[tuple, dict] = {}

    def row(r, month: str) -> dict:
        k = (r[0], r[1], r[2], month)
        if k not in rows:
            rows[k] = _fig_row(*k)
        return rows[k]

    month_of = func.substr
    fm = month_of(orders.c.funded_at, 1, 7)
    for r in conn.execute(select(*key, fm, func.count(), func.sum(orders.c.total_amount))
                          .where(y.text(orders.c.funded_at), orders.c.state != OrderState.INVALID, *scope)
                          .group_by(*key, fm)):
        _add(row(r, r[3])["funded"], r[4], r[5])
    if states is not None:
        item_rows = []
        for mon in range(1, 13):
            ym = f"{year:04d}-{mon:02d}"
            for no, status, _, n, a in states.facts.get(ym, []):
                o = states.orders[no]
                if (bank_id is None or o["bank_id"] == bank_id) and \
                        (project_code is None or o["project_code"] == project_code):
                    item_rows.append((o["bank_id"], o["project_code"], o["region"], ym, status, n, a))
    else:
        im = month_of(items.c.result_at, 1, 7)
        item_rows = conn.execute(select(*key, im, items.c.status, func.count(), func.sum(items.c.amount))
                                 .join(orders, orders.c.order_no == items.c.order_no)
                                 .where(y.text(items.c.result_at), *scope).group_by(*key, im, items.c.status))
    for r in item_rows:
        what = {ItemStatus.PAID: "paid", ItemStatus.REFUNDED: "refunded"}.get(r[4], "failed")
        _add(row(r, r[3])[what], r[5], r[6])
    for r in conn.execute(select(*key, batches.c.done_at, batches.c.updated_at, batches.c.succ_cnt,
                                 batches.c.succ_amt, batches.c.fail_cnt, batches.c.fail_amt)
                          .join(orders, orders.c.order_no == batches.c.order_no)
                          .where(y.done(), *scope)):
        f = row(r, y.of_seconds(r.done_at) if r.done_at is not None else r.updated_at[:7])
        f["batches_done"] += 1
        _add(f["batch_paid"], r.succ_cnt, r.succ_amt)
        _add(f["batch_failed"], r.fail_cnt, r.fail_amt)
    rm = month_of(refunds.c.updated_at, 1, 7)
    for r in conn.execute(select(*key, rm, func.sum(refunds.c.total_count), func.sum(refunds.c.refund_amount))
                          .join(orders, orders.c.order_no == refunds.c.order_no)
                          .where(refunds.c.state == RefundState.DONE, y.text(refunds.c.updated_at), *scope)
                          .group_by(*key, rm)):
        _add(row(r, r[3])["refunds_done"], r[4], r[5])
    lm = month_of(late_returns.c.return_date, 1, 6)
    for r in conn.execute(select(*key, lm, func.count(), func.sum(late_returns.c.amount))
                          .join(orders, orders.c.order_no == late_returns.c.order_no)
                          .where(late_returns.c.return_date >= y.ymd_from, late_returns.c.return_date < y.ymd_until,
                                 *scope).group_by(*key, lm)):
        _add(row(r, f"{r[3][:4]}-{r[3][4:]}")["late_returned"], r[4], r[5])

    ordered = [rows[k] for k in sorted(rows)]
    names = dict(conn.execute(select(orders.c.project_code, func.max(orders.c.project_name)).where(
        *scope).group_by(orders.c.project_code)).all())
    for r in ordered:
        r["project_name"] = names.get(r["project_code"])

    def totals(by: tuple[str, ...]) -> list[dict]:
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in ordered:
            groups[tuple(r[k] for k in by)].append(r)
        return [_sum_rows(groups[k], **dict(zip(by, k))) for k in sorted(groups)]

    banks = {r["bank_id"] for r in ordered}
    banks |= set(conn.execute(select(statements.c.bank_id).where(
        _covering(y), *([statements.c.bank_id == bank_id] if bank_id else [])).distinct()).scalars())
    if bank_id is not None:
        banks = {bank_id}
    recon = {b: _reconcile(conn, y, b, project_code) for b in sorted(banks)}
    check = {b: {"statement": (r["statement"] or {}).get("periods"),
                 "yearly_statement": bool(r["statement"]) and f"Y{year}" in r["statement"]["periods"],
                 "differences": r["differences_total"],
                 "ok": bool(r["statement"]) and f"Y{year}" in r["statement"]["periods"]
                 and r["differences_total"] == 0}
             for b, r in recon.items()}
    return {
        "year": year, "period": f"Y{year}", "from": y.text_from, "until": y.text_until,
        "bank_id": bank_id, "project_code": project_code,
        "basis": {"months": "China time; each figure in its month on the basis of report.monthly",
                  "funded": "orders funded in the month (INVALID aside): count of orders, amount"},
        "rows": ordered,
        "by_project_bank": totals(("bank_id", "project_code")),
        "by_region": totals(("region",)),
        "by_month": totals(("month",)),
        "total": _sum_rows(ordered),
        "reconciliation": recon,
        "january_check": {"due_by": f"{year + 1}-01-31", "banks": check,
                          "ok": bool(check) and all(c["ok"] for c in check.values())},
    }
