"""Rows whose primary key is the next number of their parent (refunds `{order}-Fnn`,
disputes `{batch}-Dnn`), taken with a plain INSERT on the key."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select

ATTEMPTS = 5


def insert_numbered(conn: Connection, table: Table, key: str, make_no: Callable[[int], str],
                    count_of: Select, values: dict) -> str | None:
    """INSERT a row whose primary key is the next number of its parent; returns the number,
    or None when every one of `ATTEMPTS` numbers was taken by a concurrent call.

    The number is count + 1 of the rows already there. Under the caller's locks two calls
    on the same parent cannot interleave on SQLite; on PostgreSQL two calls locking
    different items of one order can, and the second INSERT then fails on the key (after
    waiting for the first to commit): it is retried with the next number in a savepoint.
    """
    for _ in range(ATTEMPTS):
        n = conn.execute(count_of).scalar_one()
        no = make_no(n + 1)
        if conn.dialect.name == "sqlite":
            conn.execute(insert(table).values(**{key: no}, **values))
            return no
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(**{key: no}, **values))
            return no
        except IntegrityError:
            continue
    return None
