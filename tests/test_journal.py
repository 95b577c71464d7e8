"""Tests of the tamper-evident journal (gateway/journal.py) and the migration gate (gateway/db.py).

Every test taking `db_url` runs on SQLite and on PostgreSQL (127.0.0.1:5432).
Tampering is done the way an intruder with database access would: raw SQL on
the journal table, or writes to the archive directory.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import db as dbmod
from gateway.journal import GENESIS, Entry, Journal, verify_chain
from gateway.models import journal, journal_head
from protocols.sm import sm3_hex

AT = "2026-03-02T10:00:00+08:00"
INLINE_MAX = 64


@pytest.fixture
def engine(db_url):
    """An engine on a freshly migrated database."""
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def jr(archive: Path) -> Journal:
    return Journal(str(archive), inline_max_bytes=INLINE_MAX)


def _entry(i: int, payload: bytes | None = None, **kw) -> Entry:
    return Entry("out", "demo-bank", "tcp", "BP01", f"entry {i}: 张三 6222********1234",
                 payload=payload if payload is not None else f"<msg {i}/>".encode(),
                 msg_id=f"M{i:04d}", order_no="ORD1", **kw)


def _append_n(engine, jr: Journal, n: int, payload_for=None) -> list[int]:
    ids = []
    for i in range(1, n + 1):
        with engine.begin() as conn:
            p = payload_for(i) if payload_for else None
            ids.append(jr.append(conn, _entry(i, p), AT))
    return ids


def _verify(engine, archive: Path, **kw):
    with engine.connect() as conn:
        return verify_chain(conn, str(archive), **kw)


def _rows(engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(journal).order_by(journal.c.id)).mappings())


def _head(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(journal_head)).one()


def _sql(engine, text: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(text), params)


# --- appending ---------------------------------------------------------------


def test_appends_chain_each_entry_to_the_one_before(engine, jr, archive) -> None:
    """Ids run 1..n, entry 1 points at the zero hash, each later prev_hash is the previous hash, and the
    head row records the last entry."""
    ids = _append_n(engine, jr, 5)
    assert ids == [1, 2, 3, 4, 5]
    rows = _rows(engine)
    assert [r["id"] for r in rows] == ids
    assert rows[0]["prev_hash"] == GENESIS
    for before, after in zip(rows, rows[1:]):
        assert after["prev_hash"] == before["hash"]
    assert len({r["hash"] for r in rows}) == 5
    head = _head(engine)
    assert (head.last_id, head.last_hash) == (5, rows[-1]["hash"])
    assert rows[2]["payload"] == b"<msg 3/>" and rows[2]["payload_ref"] is None
    assert rows[2]["payload_sm3"] == sm3_hex(b"<msg 3/>") and rows[2]["payload_size"] == 8
    r = _verify(engine, archive)
    assert (r.ok, r.checked, r.first_bad_id) == (True, 5, None)


def test_empty_journal_verifies(engine, archive) -> None:
    """A migrated, empty journal is intact (the head row starts at the zero hash)."""
    r = _verify(engine, archive)
    assert (r.ok, r.checked) == (True, 0)


def test_rolled_back_append_leaves_no_trace(engine, jr, archive) -> None:
    """An append whose transaction rolls back leaves neither an entry nor a moved head (rule 5), and
    the next append continues the chain cleanly."""
    _append_n(engine, jr, 2)
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            jr.append(conn, _entry(99), AT)
            raise RuntimeError("the state change failed")
    assert _head(engine).last_id == 2
    with engine.begin() as conn:
        assert jr.append(conn, _entry(3), AT) == 3
    assert _verify(engine, archive).ok


def test_concurrent_appends_never_fork_the_chain(db_url, engine, jr, archive) -> None:
    """Appends from several connections at once are serialised by the head row: every one succeeds and
    the chain stays a single line."""
    threads, per = 4, 10
    errors: list[BaseException] = []
    go = threading.Barrier(threads)

    def worker(t: int) -> None:
        try:
            go.wait()
            for i in range(per):
                with engine.begin() as conn:
                    # A read first, as a flow does before its state change.
                    conn.execute(sa.select(journal.c.id).limit(1)).all()
                    jr.append(conn, _entry(t * 100 + i), AT)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    r = _verify(engine, archive)
    assert (r.ok, r.checked) == (True, threads * per), r


# --- tampering ---------------------------------------------------------------


def test_edited_decoded_text_is_found(engine, jr, archive) -> None:
    """Changing an entry's decoded text with raw SQL names that entry."""
    _append_n(engine, jr, 5)
    _sql(engine, "UPDATE journal SET decoded = :d WHERE id = 3", d="entry 3: nothing happened")
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 3)
    assert "altered" in r.reason


def test_edited_entry_with_recomputed_own_hash_is_found_by_the_next(engine, jr, archive) -> None:
    """An intruder who also recomputes the edited entry's own hash is caught by the next entry's prev_hash."""
    from gateway.journal import _entry_hash
    _append_n(engine, jr, 5)
    _sql(engine, "UPDATE journal SET order_no = 'ORD2' WHERE id = 2")
    row = dict(_rows(engine)[1])
    _sql(engine, "UPDATE journal SET hash = :h WHERE id = 2", h=_entry_hash(row))
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 3)
    assert "prev_hash" in r.reason


def test_deleted_middle_entry_is_found(engine, jr, archive) -> None:
    """Deleting an entry in the middle names the missing entry."""
    _append_n(engine, jr, 5)
    _sql(engine, "DELETE FROM journal WHERE id = 3")
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 3)
    assert "missing" in r.reason


def test_deleted_first_entry_is_found(engine, jr, archive) -> None:
    """Deleting entry 1 names entry 1."""
    _append_n(engine, jr, 3)
    _sql(engine, "DELETE FROM journal WHERE id = 1")
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 1)


def test_deleted_last_entry_is_found_by_the_head_row(engine, jr, archive) -> None:
    """Deleting the last entry leaves an intact-looking chain; the head row still records it, so
    verification fails and names the missing entry."""
    _append_n(engine, jr, 5)
    _sql(engine, "DELETE FROM journal WHERE id = 5")
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 5)
    assert "deleted" in r.reason


def test_every_entry_deleted_is_found(engine, jr, archive) -> None:
    """Emptying the journal table is found: the head row says entries existed."""
    _append_n(engine, jr, 3)
    _sql(engine, "DELETE FROM journal")
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 1)


def test_deleted_head_row_is_found(engine, jr, archive) -> None:
    """Deleting the head row (to hide deletions at the end) is itself reported."""
    _append_n(engine, jr, 3)
    _sql(engine, "DELETE FROM journal WHERE id = 3")
    _sql(engine, "DELETE FROM journal_head")
    r = _verify(engine, archive)
    assert not r.ok
    assert "head" in r.reason


def test_changed_inline_payload_is_found(engine, jr, archive) -> None:
    """Changing a small payload stored inline names its entry."""
    _append_n(engine, jr, 4)
    with engine.begin() as conn:
        conn.execute(sa.update(journal).where(journal.c.id == 2).values(payload=b"<msg 9/>"))
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 2)
    assert "payload" in r.reason
    # Payload checks can be skipped (a quick check of the chain alone).
    assert _verify(engine, archive, check_payloads=False).ok


def _big(i: int) -> bytes:
    return f"<big {i}>".encode() + bytes(range(256)) * 2


def test_big_payload_is_archived_read_only_by_sm3(engine, jr, archive) -> None:
    """A payload over inline_max is not stored in the row but in the archive, named by its SM3, mode 0440."""
    data = _big(1)
    assert len(data) > INLINE_MAX
    with engine.begin() as conn:
        jr.append(conn, _entry(1, data), AT)
    row = _rows(engine)[0]
    digest = sm3_hex(data)
    assert row["payload"] is None
    assert row["payload_ref"] == f"{digest[:2]}/{digest}.bin"
    assert (row["payload_sm3"], row["payload_size"]) == (digest, len(data))
    path = archive / row["payload_ref"]
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert jr.payload_of(_row_obj(engine, 1)) == data
    assert not list(archive.rglob("*.part"))
    assert _verify(engine, archive).ok


def _row_obj(engine, rid: int):
    with engine.connect() as conn:
        return conn.execute(sa.select(journal).where(journal.c.id == rid)).one()


def test_payload_file_is_archived_read_only_by_sm3_and_independent_of_the_source(
        engine, jr, archive, tmp_path) -> None:
    """A payload_file entry is archived by SM3, read-only; the caller's file keeps its mode, and
    rewriting that file in place afterwards (a rebuilt batch file) does not change the archive."""
    src = tmp_path / "work" / "B1.req"
    src.parent.mkdir()
    data = b"batch file bytes " * 1000
    src.write_bytes(data)
    os.chmod(src, 0o600)
    with engine.begin() as conn:
        jr.append(conn, Entry("out", "demo-bank", "sftp", "PUT", "B1.req", payload_file=str(src)), AT)
    row = _rows(engine)[0]
    digest = sm3_hex(data)
    assert row["payload_ref"] == f"{digest[:2]}/{digest}.bin" and row["payload"] is None
    assert (row["payload_sm3"], row["payload_size"]) == (digest, len(data))
    archived = archive / row["payload_ref"]
    assert stat.S_IMODE(archived.stat().st_mode) == 0o440
    assert stat.S_IMODE(src.stat().st_mode) == 0o600
    with open(src, "wb") as f:          # in place, same inode, as the batch writer does
        f.write(b"rebuilt")
    assert archived.read_bytes() == data
    assert _verify(engine, archive).ok


def test_same_payload_twice_is_archived_once(engine, jr, archive) -> None:
    """Two entries with the same big payload share one archive file and both verify."""
    data = _big(7)
    for _ in range(2):
        with engine.begin() as conn:
            jr.append(conn, _entry(7, data), AT)
    refs = {r["payload_ref"] for r in _rows(engine)}
    assert len(refs) == 1
    assert len(list(archive.rglob("*.bin"))) == 1
    assert _verify(engine, archive).ok


def test_changed_archived_payload_is_found(engine, jr, archive) -> None:
    """Rewriting an archived payload file names the entry that refers to it."""
    _append_n(engine, jr, 4, payload_for=_big)
    ref = _rows(engine)[2]["payload_ref"]
    path = archive / ref
    os.chmod(path, 0o640)
    path.write_bytes(_big(3)[:-1] + b"!")
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 3)
    assert "payload" in r.reason


def test_removed_archived_payload_is_found(engine, jr, archive) -> None:
    """Removing an archived payload file names the entry that refers to it."""
    _append_n(engine, jr, 4, payload_for=_big)
    os.unlink(archive / _rows(engine)[1]["payload_ref"])
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 2)
    assert "missing" in r.reason


def test_append_during_verification_is_not_reported_as_tampering(engine, jr, archive) -> None:
    """`gatewayctl journal verify` runs beside the live daemon: an entry appended while it reads must
    not look like a deletion (the head and the rows are read by different statements)."""
    _append_n(engine, jr, 3)
    fired = []

    def after(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if not fired:
            fired.append(statement)
            with engine.begin() as other:
                jr.append(other, _entry(4), AT)

    with engine.connect() as conn:
        sa.event.listen(conn, "after_cursor_execute", after)
        r = verify_chain(conn, str(archive))
    assert fired, "the hook did not run"
    assert r.ok, r
    assert _verify(engine, archive).checked == 4


def test_edited_head_hash_is_found(engine, jr, archive) -> None:
    """A head row whose hash does not match the entry it names is reported at that entry."""
    _append_n(engine, jr, 3)
    _sql(engine, "UPDATE journal_head SET last_hash = :h", h="1" * 64)
    r = _verify(engine, archive)
    assert (r.ok, r.first_bad_id) == (False, 3)
    assert "head" in r.reason


# --- the migration gate ------------------------------------------------------


def test_check_migrated_refuses_an_empty_database_and_names_the_command(db_url) -> None:
    """An empty database is refused with the gatewayctl command that migrates it; after upgrade it passes."""
    e = dbmod.make_engine(db_url)
    try:
        with pytest.raises(dbmod.NotMigrated) as ei:
            dbmod.check_migrated(e, "/etc/gateway/gateway.toml")
        msg = str(ei.value)
        assert "gatewayctl --config /etc/gateway/gateway.toml db upgrade" in msg
        assert "empty database" in msg
        assert dbmod.head_revision() in msg
        dbmod.upgrade(db_url)
        dbmod.check_migrated(e, "/etc/gateway/gateway.toml")
        assert dbmod.current_revision(e) == dbmod.head_revision()
        dbmod.upgrade(db_url)        # idempotent
        dbmod.check_migrated(e, "/etc/gateway/gateway.toml")
    finally:
        e.dispose()


def test_check_migrated_hides_the_database_password(pg_url) -> None:
    """The NotMigrated message shows the database URL without its password."""
    url = pg_url.replace("postgres@", "postgres:pa55word@", 1)
    e = dbmod.make_engine(url)
    try:
        with pytest.raises(dbmod.NotMigrated) as ei:
            dbmod.check_migrated(e, "gw.toml")
        assert "pa55word" not in str(ei.value)
    finally:
        e.dispose()


def test_migrations_build_the_schema_the_models_declare(engine) -> None:
    """The migrations at head produce exactly the tables, columns and indexes in gateway/models.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from gateway.models import metadata
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
