"""Alarms are episodes: a condition that persists is one row, cleared when it ends."""

from sqlalchemy import select

from gateway import db as dbmod
from gateway.alarms import acknowledge_alarm, clear_alarm, open_alarms, raise_alarm
from gateway.models import alarms


def _engine(db_url):
    dbmod.upgrade(db_url)
    return dbmod.make_engine(db_url)


def test_repeated_raise_is_one_episode_until_cleared(db_url):
    """Raising the same condition 50 times leaves one open alarm seen 50 times with the
    last message; once cleared, the next raise opens a second episode."""
    engine = _engine(db_url)
    with engine.begin() as conn:
        first = raise_alarm(conn, "t0", "warning", "status-refused", "E009 1", bank_id="B1", batch_no="X-P01")
        for i in range(2, 51):
            assert raise_alarm(conn, f"t{i}", "warning", "status-refused", f"E009 {i}",
                               bank_id="B1", batch_no="X-P01") == first
        rows = conn.execute(select(alarms)).mappings().all()
        assert len(rows) == 1 and rows[0]["count"] == 50
        assert rows[0]["message"] == "E009 1" and rows[0]["last_message"] == "E009 50"
        assert rows[0]["last_at"] == "t50"
        assert clear_alarm(conn, "t51", "status-refused", bank_id="B1", batch_no="X-P01") == 1
        assert open_alarms(conn) == []
        second = raise_alarm(conn, "t52", "warning", "status-refused", "E009 again", bank_id="B1", batch_no="X-P01")
        assert second != first
        assert [a["id"] for a in open_alarms(conn)] == [second]
    engine.dispose()


def test_episode_identity_separates_banks_batches_and_keys(db_url):
    """Different bank, batch or key are different episodes; clearing one leaves the others;
    a critical raise on an open warning escalates it; an acknowledgement keeps who and why."""
    engine = _engine(db_url)
    with engine.begin() as conn:
        a = raise_alarm(conn, "t0", "warning", "link-down", "m", bank_id="B1")
        b = raise_alarm(conn, "t0", "warning", "link-down", "m", bank_id="B2")
        c = raise_alarm(conn, "t0", "warning", "link-down", "m", bank_id="B1", key="sftp")
        assert len({a, b, c}) == 3
        raise_alarm(conn, "t1", "critical", "link-down", "worse", bank_id="B1")
        assert clear_alarm(conn, "t2", "link-down", bank_id="B2") == 1
        left = {r["id"]: r for r in open_alarms(conn)}
        assert set(left) == {a, c} and left[a]["severity"] == "critical"
        assert acknowledge_alarm(conn, "t3", a, "ops-wang", "bank says maintenance until 22:00")
        assert not acknowledge_alarm(conn, "t3", 999999, "ops-wang", "none")
        row = conn.execute(select(alarms).where(alarms.c.id == a)).mappings().one()
        assert (row["acknowledged_by"], row["ack_comment"]) == ("ops-wang", "bank says maintenance until 22:00")
    engine.dispose()
