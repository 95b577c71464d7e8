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


def test_0019_renames_batch_columns_keeping_values(db_url):
    """0019 renames batches.file_sm3 -> file_digest and result_file -> result_ref with the values
    kept (a batch in flight before the upgrade is delivered and fetched by the same file digest
    and results reference after it), adds file_digest_alg empty, and its downgrade gives them back."""
    import sqlalchemy as sa
    from alembic import command
    cfg = dbmod.alembic_config(db_url)
    command.upgrade(cfg, "0018")
    engine = dbmod.make_engine(db_url)
    row = dict(batch_no="B1", order_no="O1", bank_id="K", kind="PAY", seq=1, state="RESULTS", total_count=1,
               total_amount=100, attempts=0, created_at="t", updated_at="t", overdue_alarmed=0,
               bank_overdue_alarmed=0, failures=0)
    try:
        with engine.begin() as conn:
            cols = ", ".join(list(row) + ["file_sm3", "result_file"])
            conn.execute(sa.text(f"INSERT INTO batches ({cols}) VALUES ("
                                 + ", ".join(f":{k}" for k in row) + ", :d, :r)"),
                         {**row, "d": "ab" * 32, "r": "parts:17"})
        engine.dispose()
        command.upgrade(cfg, "0019")
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT file_digest, file_digest_alg, result_ref FROM batches")).one()
        assert tuple(got) == ("ab" * 32, None, "parts:17")
        engine.dispose()
        command.downgrade(cfg, "0018")
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT file_sm3, result_file FROM batches")).one()
        assert tuple(got) == ("ab" * 32, "parts:17")
    finally:
        engine.dispose()
