"""PostgreSQL looks each item up by its primary key in the per-item statements, even while its
statistics are stale (a batch's million items just turned SENT, no ANALYZE since).

The counts index ix_items_order_counts (order_no, status, reason_code, seq, amount) matches
`order_no = ? AND status = ? AND seq = ?` too; with statistics that still said no item was
SENT, PostgreSQL chose it for each result line and scanned every SENT item of the order: a
million results took over 8 minutes (bench/concurrency.py). The statements compare
`status || ''`, which no index serves.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gateway import db as dbmod
from gateway.flow import APPLY_SQL

ORDER = "PLAN0001"


def _plan(conn, sql: str, params: dict) -> str:
    return "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + sql), params))


@pytest.mark.postgres
def test_the_apply_goes_by_the_primary_key_while_statistics_are_stale(pg_url):
    dbmod.upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO orders (order_no, bank_id, budget_unit, project_code, project_name, "
                "project_short, region, total_amount, total_count, funded_at, state, created_at, "
                "updated_at, results_pending) VALUES (:o, 'b', 'u', 'p', 'n', 's', 'r', 2000000, 20000, "
                "'2026-11-02T09:30:00+08:00', 'DISPATCHED', 'x', 'x', 0)"), {"o": ORDER})
            c.execute(sa.text(
                "INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
                "status, batch_no) SELECT :o, g, 'n', 'i', 'a', '', 100, '', 'PENDING', :b "
                "FROM generate_series(1, 20000) g"), {"o": ORDER, "b": ORDER + "-P01"})
        with engine.connect() as c:
            c.execute(sa.text("ANALYZE items"))
            c.commit()
        with engine.begin() as c:      # the batch accepted: every item SENT, statistics not told
            c.execute(sa.text("UPDATE items SET status = 'SENT' WHERE order_no = :o"), {"o": ORDER})
        with engine.connect() as c:
            params = {"o": ORDER, "s": 5, "b": ORDER + "-P01"}
            naive = _plan(c, "UPDATE items SET status = 'PAID' WHERE order_no = :o AND seq = :s "
                             "AND batch_no = :b AND status = 'SENT'", params)
            sql = APPLY_SQL
            for name in ("st", "rc", "rt", "bs", "at", "o", "s", "b", "a1", "a2", "n1", "n2"):
                sql = sql.replace("?", f":{name}", 1)
            ours = _plan(c, sql, {"st": "PAID", "rc": "", "rt": "", "bs": "1", "at": "x", "o": ORDER,
                                  "s": 5, "b": ORDER + "-P01", "a1": None, "a2": None, "n1": None,
                                  "n2": None})
        assert "items_pkey" in ours, ours
        # The hazard this guards against is real on this server (else the test proves nothing).
        assert "ix_items_order_counts" in naive, naive
    finally:
        engine.dispose()


def _captured_plan(engine, status: str, run) -> str:
    """EXPLAIN of the statement `run(conn)` sends (captured as the driver gets it, then rolled
    back), while the items' statistics still say PENDING and every item is now *status*."""
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("UPDATE ITEMS"):
            sent.append((statement, parameters))
    with engine.begin() as c:
        c.execute(sa.text("UPDATE items SET status = :st WHERE order_no = :o"), {"st": status, "o": ORDER})
    with engine.connect() as c:
        sa.event.listen(c, "before_cursor_execute", capture)
        with c.begin() as t:
            run(c)
            t.rollback()
        sa.event.remove(c, "before_cursor_execute", capture)
        assert len(sent) == 1, sent
        statement, parameters = sent[0]
        return "\n".join(r[0] for r in c.exec_driver_sql("EXPLAIN " + statement, parameters))


@pytest.mark.postgres
def test_the_stores_per_item_updates_go_by_the_primary_key_while_statistics_are_stale(pg_url):
    """gateway/store/items.py's one-item updates (item.correct's `correct`, a late return's
    `returned_late`) compare `status || ''` and so take items_pkey, not the counts index,
    when the statistics have not seen the items' new status. Fails if `+ ""` is dropped from
    either (checked by hand: with plain `items.c.status ==` in `correct`, or in `returned_late`,
    the plan is an index scan of ix_items_order_counts and this test fails)."""
    from gateway.store import items as item_store
    dbmod.upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO orders (order_no, bank_id, budget_unit, project_code, project_name, "
                "project_short, region, total_amount, total_count, funded_at, state, created_at, "
                "updated_at, results_pending) VALUES (:o, 'b', 'u', 'p', 'n', 's', 'r', 2000000, 20000, "
                "'2026-11-02T09:30:00+08:00', 'DISPATCHED', 'x', 'x', 0)"), {"o": ORDER})
            c.execute(sa.text(
                "INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
                "status, batch_no) SELECT :o, g, 'n', 'i', 'a', '', 100, '', 'PENDING', :b "
                "FROM generate_series(1, 20000) g"), {"o": ORDER, "b": ORDER + "-P01"})
        with engine.connect() as c:
            c.execute(sa.text("ANALYZE items"))
            c.commit()
        correct = _captured_plan(engine, "FAILED", lambda c: item_store.correct(
            c, ORDER, 5, {"account_no": "6222000000000005"}))
        late = _captured_plan(engine, "PAID", lambda c: item_store.returned_late(
            c, ORDER, 5, ORDER + "-P01", 100, reason_code="R001", reason_text="late", serial="S1",
            result_at="2026-11-03T00:00:00+08:00"))
        assert "items_pkey" in correct, correct
        assert "items_pkey" in late, late
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("analyzed", [False, True], ids=["never-analyzed", "analyzed-before-sent"])
def test_the_staged_apply_is_one_merge_join_in_seq_order_whatever_the_statistics(pg_url, analyzed):
    """The set-based apply (gateway/flow.py staged_update) joins the staged lines to the items by a
    merge join, on a fresh items table that was never analyzed (the planner's "1 row": a nested
    loop over the staged lines per item ran 100,000 lines into the statement timeout) and on one
    analyzed while its items were PENDING. Not by hash either: a hash join writes the million
    new row versions in random order (twice the WAL)."""
    from gateway.flow import STAGE_SQL, staged_update
    dbmod.upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
                "status, batch_no) SELECT :o, g, 'n', 'i', 'a', '', 100, '', 'PENDING', :b "
                "FROM generate_series(1, 20000) g"), {"o": ORDER, "b": ORDER + "-P01"})
        if analyzed:
            with engine.connect() as c:
                c.execute(sa.text("ANALYZE items"))
                c.commit()
        with engine.begin() as c:
            c.execute(sa.text("UPDATE items SET status = 'SENT' WHERE order_no = :o"), {"o": ORDER})
            c.exec_driver_sql(STAGE_SQL + " ON COMMIT DROP")
            c.exec_driver_sql("INSERT INTO apply_lines (seq, status) SELECT g, 'PAID' "
                              "FROM generate_series(1, 20000) g")
            c.exec_driver_sql("ANALYZE apply_lines")
            plan = "\n".join(r[0] for r in staged_update(c, ORDER, ORDER + "-P01", explain="EXPLAIN "))
            # The settings were for that statement alone.
            assert c.exec_driver_sql("SHOW enable_nestloop").scalar() == "on"
        assert "Merge Join" in plan and "Nested Loop" not in plan and "Hash Join" not in plan, plan
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_result_push_reads_each_chunk_by_the_primary_key_while_statistics_are_stale(pg_url):
    """gateway/core_push.py takes a chunk as a range of the primary key: with statistics taken
    while the items were SENT and every item now PAID, none of the chunk's statements scans the
    console's counts index or the whole table (each did, per chunk: a million-item push on
    PostgreSQL took 87 s, quadratic in the order's size). Fails with `status` compared bare in
    `_unpushed`, or with the range taken over unpushed results only (checked by hand)."""
    from gateway.core_push import _take_chunk
    dbmod.upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO orders (order_no, bank_id, budget_unit, project_code, project_name, "
                "project_short, region, total_amount, total_count, funded_at, state, created_at, "
                "updated_at, results_pending) VALUES (:o, 'b', 'u', 'p', 'n', 's', 'r', 2000000, 20000, "
                "'2026-11-02T09:30:00+08:00', 'DISPATCHED', 'x', 'x', 1)"), {"o": ORDER})
            c.execute(sa.text(
                "INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
                "status, batch_no) SELECT :o, g, 'n', 'i', 'a', '', 100, '', 'SENT', :b "
                "FROM generate_series(1, 20000) g"), {"o": ORDER, "b": ORDER + "-P01"})
        with engine.connect() as c:
            c.execute(sa.text("ANALYZE items"))
            c.commit()
        with engine.begin() as c:
            c.execute(sa.text("UPDATE items SET status = 'PAID', result_at = '2026-11-03T00:00:00+08:00' "
                              "WHERE order_no = :o"), {"o": ORDER})
        sent: list[tuple[str, object]] = []

        def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
            if "items" in statement and statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
                sent.append((statement, parameters))
        with engine.connect() as c:
            sa.event.listen(c, "before_cursor_execute", capture)
            with c.begin() as t:
                chunk = _take_chunk(c, ORDER, 5000, 1000, "2026-11-03T00:00:00+08:00")
                t.rollback()
            sa.event.remove(c, "before_cursor_execute", capture)
            assert chunk is not None and chunk.count == 1000 and (chunk.after, chunk.last) == (5000, 6000)
            assert len(sent) >= 3, sent
            for statement, parameters in sent:
                plan = "\n".join(r[0] for r in c.exec_driver_sql("EXPLAIN " + statement, parameters))
                assert "ix_items_order_counts" not in plan and "Seq Scan on items" not in plan, plan
    finally:
        engine.dispose()
