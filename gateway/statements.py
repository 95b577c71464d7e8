"""Storing a bank's statement (对账单) so the monthly report can reconcile against it.

A statement is kept as the bank gave it, one row per statement and one per line,
in either of two shapes: cnbank's RC01 file lists each batch DONE in the period
(with its success and failure counts and amounts, and what was returned since)
and each refund DONE; ISO camt.053 lists booked entries on the holding account
(a debit per payment or refund, a credit per return) named by their EndToEndId.
A statement is identified by (bank, period, source): storing it again replaces
its lines in the caller's transaction, so a re-fetched file never doubles a line.
Nothing here judges the figures; `gateway.reports` compares them. The tables are written
by gateway/store/statements.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from gateway.store import statements as statement_store
from protocols.cnbank_envelope import valid_period
from protocols.cnbank_files import Statement as CnbankStatement



def _check_common(bank_id: str, period: str, source: str, at: str) -> None:
    if not isinstance(bank_id, str) or not 0 < len(bank_id) <= 32:
        raise ValueError(f"bank_id {bank_id!r} must be 1 to 32 characters")
    if not isinstance(period, str) or not valid_period(period):
        raise ValueError(f"period {period!r} must be DYYYYMMDD, MYYYYMM or YYYYY")
    if not isinstance(source, str) or not 0 < len(source) <= 200:
        raise ValueError(f"source {source!r} must be 1 to 200 characters")
    if not isinstance(at, str) or not at:
        raise ValueError("at must be an ISO 8601 time")


def store_lines(conn: Connection, bank_id: str, period: str, source: str, header: dict[str, Any],
                lines: list[dict[str, Any]], at: str, journal_id: int | None = None) -> int:
    """Store a statement a dialect turned into rows (IBankRecorder.statement_in); its id.

    *header*: dialect, account, opening_balance, closing_balance, totals; *lines*: statement_lines
    rows without statement_id and line_no. Storing the same (bank, period, source) again replaces
    the lines stored before.
    """
    _check_common(bank_id, period, source, at)
    return statement_store.replace(conn, bank_id, period, source,
                                   {**header, "fetched_at": at, "journal_id": journal_id}, lines)


def store_cnbank_statement(conn: Connection, bank_id: str, period: str, statement: CnbankStatement,
                           source: str, at: str, journal_id: int | None = None) -> int:
    """Store a cnbank statement read by `protocols.cnbank_files.read_statement_file`; its id.

    The rows are the dialect's (adapters/cnbank/statements.py); *period* must be the statement's
    own (its H line); *source* names where it came from, e.g. "cnbank:STMT_M202611.txt".
    """
    from adapters.cnbank.statements import statement_rows
    _check_common(bank_id, period, source, at)
    header, lines = statement_rows(statement, period)
    return store_lines(conn, bank_id, period, source, header, lines, at, journal_id)


def store_entries(conn: Connection, bank_id: str, period: str, source: str, entries: list[dict],
                  at: str, journal_id: int | None = None, *, account: str | None = None,
                  opening_balance: int | None = None, closing_balance: int | None = None) -> int:
    """Store a statement of booked entries (ISO camt.053 and the like); its id.

    Each entry is {reference, amount_fen, credit, booking_date, kind}: reference is the
    EndToEndId (OrderNo-Seq for a payment or its return, RefundNo for a refund),
    amount_fen a non-negative int, credit True for money coming back to the holding
    account, booking_date "YYYY-MM-DD", kind a word ("payment", "return", "refund";
    default from credit). Optional keys: order_no, bank_ref. Every entry is checked
    before anything is written. *source* is e.g. "camt.053:<MsgId>".
    """
    from adapters.statements import entry_rows
    _check_common(bank_id, period, source, at)
    header, lines = entry_rows(entries, account=account, opening_balance=opening_balance,
                               closing_balance=closing_balance)
    return store_lines(conn, bank_id, period, source, header, lines, at, journal_id)
