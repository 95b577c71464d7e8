"""The `late_returns` table: each late return (退票) applied, once per the bank's ReturnSerial."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from gateway.models import late_returns


def seen(conn: Connection, bank_id: str, serial: str) -> bool:
    """Whether this return of the bank has been applied already."""
    return conn.execute(select(late_returns.c.return_serial).where(
        late_returns.c.bank_id == bank_id, late_returns.c.return_serial == serial)).first() is not None


def record(conn: Connection, /, **values) -> None:
    """The return, applied (return_serial, bank_id, batch_no, order_no, seq, amount, ...)."""
    conn.execute(insert(late_returns).values(**values))
