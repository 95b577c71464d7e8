"""A cnbank statement (RC01's file) as the rows the gateway's statement store keeps.

The statement is parsed whole and verified by the adapter (protocols/cnbank_files.py);
here its H line becomes the header (payer account, the bank's totals) and each batch and
refund line a row, which the adapter hands to `IBankRecorder.statement_in`.
"""

from __future__ import annotations

import json
from typing import Any

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
