"""A cnbank statement (RC01's file): the rows the gateway's statement store keeps, and the
line-by-line comparison with the gateway's records that report.monthly makes.

The statement is parsed whole and verified by the adapter (protocols/cnbank_files.py);
here its H line becomes the header (payer account, the bank's totals) and each batch and
refund line a row, which the adapter hands to `IBankRecorder.statement_in`. `compare` takes
those rows back with the gateway's batches and refunds of the period (plain dicts, read by
the gateway) and says what matches and what differs; the gateway places what only one
side lists in its period.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from adapters.statements import count_amount as _ca, difference as _diff

from protocols.cnbank_files import Statement


def statement_rows(statement: Statement, period: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, lines) of *statement*; ValueError when *period* is not the statement's own."""
    h = statement.header
    if h.period != period:
        raise ValueError(f"period {period!r} is not the statement's Period {h.period!r}")
    totals = {"paid_cnt": h.paid_cnt, "paid_amt": h.paid_amt, "return_cnt": h.return_cnt,
              "return_amt": h.return_amt, "refund_cnt": h.refund_cnt, "refund_amt": h.refund_amt}
    lines = [{"kind": "batch", "reference": b.batch_no, "order_no": b.order_no, "count": b.cnt,
              "amount": b.amt, "paid_count": b.succ_cnt, "paid_amount": b.succ_amt,
              "failed_count": b.fail_cnt, "failed_amount": b.fail_amt,
              "returned_count": b.return_cnt, "returned_amount": b.return_amt}
             for b in statement.batches]
    lines += [{"kind": "refund", "reference": r.refund_no, "order_no": r.order_no, "count": r.cnt,
               "amount": r.amt, "bank_ref": r.refund_serial} for r in statement.refunds]
    return ({"dialect": "cnbank", "account": h.payer_acct, "opening_balance": None, "closing_balance": None,
             "totals": json.dumps(totals)}, lines)


def bank_view(s: dict) -> dict:
    """A statement row as report.monthly shows the bank's side."""
    if s["kind"] == "refund":
        return {**_ca(s["count"], s["amount"]), "serial": s["bank_ref"]}
    return {"count": s["count"], "amount": s["amount"], "paid": _ca(s["paid_count"], s["paid_amount"]),
            "failed": _ca(s["failed_count"], s["failed_amount"]),
            "returned": _ca(s["returned_count"], s["returned_amount"])}


@dataclass
class Comparison:
    matched: int = 0
    differences: list[dict] = field(default_factory=list)
    gateway_only_batches: dict[str, dict] = field(default_factory=dict)
    bank_only_batches: dict[str, dict] = field(default_factory=dict)
    gateway_only_refunds: dict[str, dict] = field(default_factory=dict)
    bank_only_refunds: dict[str, dict] = field(default_factory=dict)


def compare(lines: list[dict], batches: dict[str, dict], refunds: dict[str, dict],
            returned: dict[str, list[tuple[str, int]]], fetched: dict[int, str]) -> Comparison:
    """Batches and refunds, line by line. `lines`: the statement rows (batch and refund kinds);
    `batches`/`refunds`: the gateway's of the period by number (rows of its batches/refunds);
    `returned`: per batch, (return date YYYYMMDD, amount) of each late return the gateway
    applied; `fetched`: statement id -> when it was fetched (a return after that is not on it)."""
    out = Comparison()
    sb: dict[str, dict] = {}
    sr: dict[str, dict] = {}
    for ln in lines:
        into = sb if ln["kind"] == "batch" else sr if ln["kind"] == "refund" else None
        if into is None:
            continue
        if ln["reference"] in into:   # listed on two daily statements
            out.differences.append(_diff("duplicate", ln["kind"], ln["reference"], ln["order_no"], None,
                                         bank_view(ln)))
            continue
        into[ln["reference"]] = ln

    for ref in sorted(set(batches) & set(sb)):
        g, s = batches[ref], sb[ref]
        asof = fetched[s["statement_id"]][:10].replace("-", "")
        rets = [a for d, a in returned.get(ref, []) if d <= asof]
        gv = {"count": g["total_count"], "amount": g["total_amount"], "paid": _ca(g["succ_cnt"], g["succ_amt"]),
              "failed": _ca(g["fail_cnt"], g["fail_amt"]), "returned": _ca(len(rets), sum(rets))}
        bv = bank_view(s)
        found = []
        if (gv["count"], gv["paid"]["count"], gv["failed"]["count"]) != (
                bv["count"], bv["paid"]["count"], bv["failed"]["count"]):
            found.append("count_differs")
        if (gv["amount"], gv["paid"]["amount"], gv["failed"]["amount"]) != (
                bv["amount"], bv["paid"]["amount"], bv["failed"]["amount"]):
            found.append("amount_differs")
        if gv["returned"] != bv["returned"]:
            found.append("returns_differ")
        for kind in found:
            out.differences.append(_diff(kind, "batch", ref, g["order_no"], gv, bv))
        out.matched += not found
    out.gateway_only_batches = {k: v for k, v in batches.items() if k not in sb}
    out.bank_only_batches = {k: v for k, v in sb.items() if k not in batches}

    for ref in sorted(set(refunds) & set(sr)):
        g, s = refunds[ref], sr[ref]
        gv = _ca(g["total_count"], g["refund_amount"])
        bv = _ca(s["count"], s["amount"])
        found = [k for k, same in (("count_differs", gv["count"] == bv["count"]),
                                   ("amount_differs", gv["amount"] == bv["amount"])) if not same]
        for kind in found:
            out.differences.append(_diff(kind, "refund", ref, g["order_no"], gv, {**bv, "serial": s["bank_ref"]}))
        out.matched += not found
    out.gateway_only_refunds = {k: v for k, v in refunds.items() if k not in sr}
    out.bank_only_refunds = {k: v for k, v in sr.items() if k not in refunds}
    return out
