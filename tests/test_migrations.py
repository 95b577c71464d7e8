"""The Alembic migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway import db as dbmod
from gateway.models import metadata


def test_migrations_match_models(db_url):
    """After `upgrade head` there is no difference between the database and the models
    (a model change without its migration fails here), and the gate accepts the database."""
    dbmod.upgrade(db_url)
    engine = dbmod.make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        dbmod.check_migrated(engine, "gateway.toml")
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(db_url):
    """Every migration can be undone and redone (an operator's way back from a bad release)."""
    from alembic import command
    dbmod.upgrade(db_url)
    command.downgrade(dbmod.alembic_config(db_url), "base")
    engine = dbmod.make_engine(db_url)
    try:
        assert dbmod.current_revision(engine) is None
    finally:
        engine.dispose()
    dbmod.upgrade(db_url)


def test_head_constant_is_alembics_head():
    """gateway.migrations.HEAD (what check_migrated requires without loading Alembic) is the newest
    migration: a new migration without HEAD moved on fails here."""
    from gateway.migrations import HEAD
    assert HEAD == dbmod.head_revision()
