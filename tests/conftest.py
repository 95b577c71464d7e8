"""Shared fixtures: the reactor, and databases on SQLite and on PostgreSQL.

`db_url` is parametrized, so every test that takes it runs on both: SQLite
in a temporary file, and a fresh PostgreSQL database on 127.0.0.1:5432 that
is dropped afterwards. PostgreSQL being absent fails the test under CI=true
and skips it elsewhere.
"""

from __future__ import annotations

import os
import uuid

import pytest
import pytest_twisted

PG_ADMIN = os.environ.get("GATEWAY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def reactor():
    from twisted.internet import reactor as r
    return r


def _pg_available() -> bool:
    import sqlalchemy as sa
    try:
        e = sa.create_engine(PG_ADMIN)
        with e.connect():
            pass
        e.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test."""
    import sqlalchemy as sa
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (CI needs it)")
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    name = "gw_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """The gateway's database URL: each test taking it runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


__all__ = ["pytest_twisted"]
