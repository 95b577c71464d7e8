"""The `statements` and `statement_lines` tables: a bank's statements (对账单) as it gave them,
one row per (bank, period, source) and one per line (gateway/statements.py checks and shapes them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from gateway.models import statement_lines, statements

LINE_CHUNK = 5000   # lines per executemany INSERT

# Every line row names every column, so one executemany insert fits them all.
_LINE_DEFAULTS = {k: None for k in (
    "order_no", "count", "paid_count", "paid_amount", "failed_count", "failed_amount",
    "returned_count", "returned_amount", "credit", "entry_kind", "bank_ref", "booked")}


def count_of_period(conn: Connection, bank_id: str, period: str) -> int:
    """How many statements of the bank's period are stored (of any source)."""
    return conn.execute(select(func.count()).select_from(statements).where(
        statements.c.bank_id == bank_id, statements.c.period == period)).scalar_one()


def replace(conn: Connection, bank_id: str, period: str, source: str, header: dict[str, Any],
            lines: list[dict[str, Any]]) -> int:
    """Insert the statement or, if it is known, rewrite its header and replace its lines; its id."""
    sid = conn.execute(select(statements.c.id).where(
        statements.c.bank_id == bank_id, statements.c.period == period,
        statements.c.source == source)).scalar_one_or_none()
    values = {**header, "line_count": len(lines)}
    if sid is None:
        sid = conn.execute(insert(statements).values(
            bank_id=bank_id, period=period, source=source, **values)
            .returning(statements.c.id)).scalar_one()
    else:
        conn.execute(update(statements).where(statements.c.id == sid).values(**values))
        conn.execute(delete(statement_lines).where(statement_lines.c.statement_id == sid))
    rows = [{"statement_id": sid, "line_no": no, **_LINE_DEFAULTS, **line}
            for no, line in enumerate(lines, 1)]
    for i in range(0, len(rows), LINE_CHUNK):
        conn.execute(insert(statement_lines), rows[i:i + LINE_CHUNK])
    return sid
