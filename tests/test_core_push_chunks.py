"""The result push's chunks as the database builds them (gateway/core_push.py), on SQLite and PostgreSQL.

A chunk is taken by set-based SQL (versions given by one UPDATE, records serialised by one JSON
aggregate) and marked pushed by one UPDATE matching the (seq, version) pairs sent; these tests
hold that SQL to the rules core-api.md and the module docstring state.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, insert, select, update

from gateway import db as dbmod
from gateway.core_push import _mark_chunk, _take_chunk
from gateway.models import items

ORDER = "PUSHCHUNK"
AT = "2026-11-02T10:00:00+08:00"
NOW = "2026-11-03T08:00:00+08:00"


def item(seq: int, status: str, **kw) -> dict:
    row = {"order_no": ORDER, "seq": seq, "name": "张三", "id_number": "340121198001010011",
           "account_no": f"6222{seq:08d}", "account_bank": "中国农业银行", "amount": 100 * seq,
           "remark": "补贴", "status": status, "result_at": AT, "reason_code": None,
           "reason_text": None, "bank_serial": None, "result_version": None, "version_sig": None,
           "pushed_version": None, "pushed": None}
    row.update(kw)
    return row


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    eng = create_engine(db_url)
    sig2 = "FAILED|R001|账户不存在||" + AT
    with eng.begin() as c:
        c.execute(insert(items), [
            item(1, "PAID", bank_serial="S1"),                            # new: version 1
            item(2, "FAILED", reason_code="R001", reason_text="账户不存在",  # pushed already
                 result_version=1, version_sig=sig2, pushed_version=1, pushed="FAILED"),
            item(3, "PAID", bank_serial="S3", result_at=None),             # no time yet: `now`
            item(4, "PAID", bank_serial="S4", result_version=1,            # paid again after FAILED v1
                 version_sig="FAILED|R004|||" + AT, pushed_version=1, pushed="FAILED"),
            item(5, "SENT", result_at=None),                               # no result yet
        ])
    yield eng
    eng.dispose()


def take(eng, after=0, size=10):
    with eng.begin() as c:
        return _take_chunk(c, ORDER, after, size, NOW)


def rows(eng) -> dict:
    with eng.begin() as c:
        return {r.seq: r for r in c.execute(select(items).where(items.c.order_no == ORDER))}


def test_a_chunk_carries_each_unpushed_result_with_its_version_and_a_resend_the_same(engine):
    """Only unpushed results are taken, in seq order, as core-api.md records: a new result gets
    version 1, a result changed since its last push the next version, one without a time gets
    `now`, kept in the database; taking again before the mark (a lost answer) gives the same
    records, the versions committed the first time."""
    chunk = take(engine)
    want = [
        {"seq": 1, "version": 1, "status": "PAID", "reason_code": "", "reason_text": "",
         "bank_serial": "S1", "at": AT},
        {"seq": 3, "version": 1, "status": "PAID", "reason_code": "", "reason_text": "",
         "bank_serial": "S3", "at": NOW},
        {"seq": 4, "version": 2, "status": "PAID", "reason_code": "", "reason_text": "",
         "bank_serial": "S4", "at": AT},
    ]
    assert json.loads(chunk.results_json) == want and chunk.count == 3
    assert (chunk.after, chunk.last) == (0, 5)     # the range: the next 10 items by seq (5 here)
    held = rows(engine)
    assert [(held[s].result_version, held[s].version_sig) for s in (1, 3, 4)] == [
        (1, "PAID|||S1|" + AT), (1, "PAID|||S3|" + NOW), (2, "PAID|||S4|" + AT)]
    assert held[3].result_at == NOW and held[5].result_version is None
    with engine.begin() as c:
        again = _take_chunk(c, ORDER, 0, 10, "2026-11-04T08:00:00+08:00")
    assert json.loads(again.results_json) == want


def test_chunks_page_by_seq(engine):
    """With a chunk size of 2 a range is the next two items by seq (a range of the primary key,
    pushed or not): seqs 1-2 give seq 1 (2 is pushed), 3-4 give 3 and 4; a range with nothing to
    push is passed over (5 has no result); nothing is left after the last."""
    first = take(engine, size=2)
    assert [r["seq"] for r in json.loads(first.results_json)] == [1] and first.last == 2
    second = take(engine, after=first.last, size=2)
    assert [r["seq"] for r in json.loads(second.results_json)] == [3, 4] and second.last == 4
    assert take(engine, after=second.last, size=2) is None
    assert take(engine, after=0, size=1).last == 1 and take(engine, after=1, size=1).last == 3


def test_the_mark_sets_only_the_versions_that_were_sent(engine):
    """Marking a chunk sets pushed_version to the version sent; an item given a newer version
    after the chunk was taken (a later result, taken by another push) is not marked: the core
    has not acknowledged that version. Once marked, nothing is taken again."""
    chunk = take(engine)
    with engine.begin() as c:
        c.execute(update(items).where(items.c.seq == 4).values(
            status="FAILED", reason_code="R004", bank_serial=None, result_version=3,
            version_sig="FAILED|R004|||" + AT))
        _mark_chunk(c, ORDER, chunk)
    held = rows(engine)
    assert [(held[s].pushed_version, held[s].pushed) for s in (1, 2, 3, 4)] == [
        (1, "PAID"), (1, "FAILED"), (1, "PAID"), (1, "FAILED")]
    left = take(engine)
    assert [(r["seq"], r["version"]) for r in json.loads(left.results_json)] == [(4, 3)]
    with engine.begin() as c:
        _mark_chunk(c, ORDER, left)
    assert take(engine) is None
