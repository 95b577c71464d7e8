"""Booked entries (ISO camt.053 and the like) as the rows of a statement, checked whole;
and what a reconciliation difference looks like, for every dialect.

A dialect whose bank reports its account as booked entries turns them into the
(header, lines) that `IBankRecorder.statement_in` stores; nothing is written
unless every entry passes. A dialect that compares its statements line by line
(adapters/cnbank/statements.py:compare) reports each difference with `difference`.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

# The kinds of difference report.monthly lists, with the words operators read (对账差异).
LABELS = {
    "gateway_only": "gateway_only 网关有银行无: recorded by the gateway, not on the bank's statement",
    "bank_only": "bank_only 银行有网关无: on the bank's statement, not recorded by the gateway",
    "count_differs": "count_differs 笔数不符: both sides list it with different counts",
    "amount_differs": "amount_differs 金额不符: both sides list it with different amounts",
    "returns_differ": "returns_differ 退票不符: the returns of a batch differ",
    "period_differs": "period_differs 账期不同: both sides have it, in different periods",
    "duplicate": "duplicate 重复入账: the bank booked it more times than the gateway recorded",
}


def count_amount(count: int = 0, amount: int = 0) -> dict[str, int]:
    return {"count": int(count or 0), "amount": int(amount or 0)}


def difference(kind: str, line: str, reference: str, order_no: str | None, gateway, bank, **extra) -> dict:
    """One difference between the gateway's records and the bank's statement."""
    return {"kind": kind, "label": LABELS[kind], "line": line, "reference": reference,
            "order_no": order_no, "gateway": gateway, "bank": bank, **extra}


_REFERENCE = re.compile(r"[^|\r\n]{1,64}")
_DATE = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}")


def entry_rows(entries: list[dict], *, account: str | None = None, opening_balance: int | None = None,
               closing_balance: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, lines) of a statement of booked entries; ValueError naming the entry and key.

    Each entry is {reference, amount_fen, credit, booking_date, kind}: reference is the
    EndToEndId (OrderNo-Seq for a payment or its return, RefundNo for a refund),
    amount_fen a non-negative int, credit True for money coming back to the holding
    account, booking_date "YYYY-MM-DD", kind a word ("payment", "return", "refund";
    default from credit). Optional keys: order_no, bank_ref.
    """
    if not isinstance(entries, list):
        raise ValueError("entries must be a list")
    lines = [_entry(i, e) for i, e in enumerate(entries)]
    for key, v in (("opening_balance", opening_balance), ("closing_balance", closing_balance)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ValueError(f"{key} must be an integer of fen")
    if account is not None and (not isinstance(account, str) or len(account) > 34):
        raise ValueError("account must be a string of at most 34 characters")
    return ({"dialect": "entries", "account": account, "opening_balance": opening_balance,
             "closing_balance": closing_balance, "totals": None}, lines)


def _entry(i: int, e: Any) -> dict[str, Any]:
    """One entry dict checked and turned into a line row; ValueError names the entry and key."""
    where = f"entries[{i}]"
    if not isinstance(e, dict):
        raise ValueError(f"{where} must be a dict")
    unknown = set(e) - {"reference", "amount_fen", "credit", "booking_date", "kind", "order_no",
                        "bank_ref"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    ref = e.get("reference")
    if not isinstance(ref, str) or not _REFERENCE.fullmatch(ref):
        raise ValueError(f"{where}.reference must be 1 to 64 characters without '|', CR or LF")
    amount = e.get("amount_fen")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise ValueError(f"{where}.amount_fen must be a non-negative integer of fen")
    credit = e.get("credit")
    if not isinstance(credit, bool):
        raise ValueError(f"{where}.credit must be true (credit) or false (debit)")
    booked = e.get("booking_date")
    if isinstance(booked, datetime.date):
        booked = booked.isoformat()
    if not isinstance(booked, str) or not _DATE.fullmatch(booked):
        raise ValueError(f"{where}.booking_date must be a date, YYYY-MM-DD")
    booked = booked.replace("-", "")
    booked = f"{booked[:4]}-{booked[4:6]}-{booked[6:]}"
    try:
        datetime.date.fromisoformat(booked)
    except ValueError:
        raise ValueError(f"{where}.booking_date {e['booking_date']!r} is not a calendar date") from None
    kind = e.get("kind") or ("return" if credit else "payment")
    if not isinstance(kind, str) or not 0 < len(kind) <= 16:
        raise ValueError(f"{where}.kind must be a word of at most 16 characters")
    for key, n in (("order_no", 64), ("bank_ref", 64)):
        v = e.get(key)
        if v is not None and (not isinstance(v, str) or len(v) > n):
            raise ValueError(f"{where}.{key} must be a string of at most {n} characters")
    return {"kind": "entry", "reference": ref, "order_no": e.get("order_no"), "count": 1,
            "amount": amount, "credit": int(credit), "entry_kind": kind, "bank_ref": e.get("bank_ref"),
            "booked": booked}
