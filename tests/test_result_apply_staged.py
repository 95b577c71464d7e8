"""A result file is applied whole or not at all, by the set-based apply too (domain.md rule 4).

On PostgreSQL the lines are COPYed into a temporary table and applied by one UPDATE joined to
the batch's SENT items (gateway/flow.py STAGED_APPLY_SQL); SQLite applies them line by line
(flow.STAGED_APPLY): the same refusals hold on both. The cnbank parser
already refuses some of these files (a duplicate Seq); here the lines are handed to the
apply directly, so that the apply's own checks are what refuses them: a line that matches
no item, a second line for the same item, a line whose amount or account is not its
item's, a line for an item of another batch. Each is refused whole (ResultRejected), and
nothing of the file is left: every item SENT, the batch ACCEPTED.
"""

from __future__ import annotations

import dataclasses

import pytest
import pytest_twisted

from adapters.interface import ItemResult, ResultSet, ResultTotals
from gateway.rules import ResultRejected
from simulators import harness
from tests.support import in_process

pytestmark = [pytest.mark.loopback]

ORDER, BATCH, OTHER = "STAGE001", "STAGE001-P01", "STAGE001-P02"
AMOUNTS = [100, 250, 399, 1000, 5, 77]           # seq 1..6 in BATCH; seq 7 (500) in OTHER


def _good() -> list[ItemResult]:
    return [ItemResult(seq=i + 1, paid=i != 2, reason_code="" if i != 2 else "R001",
                       reason_text="" if i != 2 else "账户不存在", bank_serial=f"S{i + 1:06d}",
                       post_date="20261128", amount=a, account_no=f"62220000{i + 1:04d}")
            for i, a in enumerate(AMOUNTS)]


def _unknown_seq(lines):
    lines[-1] = dataclasses.replace(lines[-1], seq=99)
    return lines


def _duplicate(lines):
    lines[3] = lines[1]                          # seq 2 twice, seq 4 has no line
    return lines


def _swapped_amounts(lines):
    # Totals still add up: only the per-line check against the item catches it.
    lines[0], lines[1] = (dataclasses.replace(lines[0], amount=lines[1].amount),
                          dataclasses.replace(lines[1], amount=lines[0].amount))
    return lines


def _wrong_account(lines):
    lines[4] = dataclasses.replace(lines[4], account_no="6222000099999")
    return lines


def _other_batch(lines):
    lines[5] = dataclasses.replace(lines[5], seq=7, amount=500, account_no="622200000007")
    return lines


BAD = {"unknown_seq": _unknown_seq, "duplicate_line": _duplicate, "swapped_amounts": _swapped_amounts,
       "wrong_account": _wrong_account, "item_of_another_batch": _other_batch}


async def _setup(env) -> dict:
    at = "2026-11-28T10:00:00+08:00"
    total = sum(AMOUNTS) + 500

    def seed(c):
        from sqlalchemy import text
        c.execute(text(
            "INSERT INTO orders (order_no, bank_id, budget_unit, project_code, project_name, project_short, "
            "region, total_amount, total_count, funded_at, state, created_at, updated_at, results_pending, "
            "retry_requested) VALUES (:o, :bank, 'u', 'p', 'n', 's', 'r', :amt, 7, :at, 'DISPATCHED', :at, "
            ":at, 0, 0)"), {"o": ORDER, "bank": harness.BANK_ID, "amt": total, "at": at})
        for no, n, amt in ((BATCH, 6, sum(AMOUNTS)), (OTHER, 1, 500)):
            c.execute(text(
                "INSERT INTO batches (batch_no, order_no, bank_id, kind, seq, state, total_count, total_amount, "
                "attempts, created_at, updated_at, overdue_alarmed, bank_overdue_alarmed, failures) VALUES "
                "(:b, :o, :bank, 'PAY', 1, 'ACCEPTED', :n, :amt, 1, :at, :at, 0, 0, 0)"),
                {"b": no, "o": ORDER, "bank": harness.BANK_ID, "n": n, "amt": amt, "at": at})
        for seq, amt in enumerate(AMOUNTS + [500], start=1):
            c.execute(text(
                "INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
                "status, batch_no) VALUES (:o, :s, '张三', '340121199001011234', :acct, 'b', :amt, '', 'SENT', "
                ":b)"), {"o": ORDER, "s": seq, "acct": f"62220000{seq:04d}", "amt": amt,
                          "b": BATCH if seq <= 6 else OTHER})
        return dict(c.execute(text("SELECT * FROM batches WHERE batch_no = :b"), {"b": BATCH}).mappings().one())
    return await env.db.run(seed)


def _results(lines: list[ItemResult]) -> ResultSet:
    paid = [ln for ln in _good() if ln.paid]   # the file's H line: totals as the bank states them
    totals = ResultTotals(batch_no=BATCH, count=len(AMOUNTS), amount=sum(AMOUNTS),
                          paid_count=len(paid), paid_amount=sum(ln.amount for ln in paid),
                          failed_count=len(AMOUNTS) - len(paid),
                          failed_amount=sum(AMOUNTS) - sum(ln.amount for ln in paid))
    return ResultSet(totals=totals, lines=lambda: iter(lines), evidence=lambda verified: [],
                     cleanup=lambda: None)


@pytest.fixture(autouse=True, params=["as-configured", "staged-on-sqlite-too"])
def apply_path(request, monkeypatch):
    """Each test once with flow.STAGED_APPLY as shipped (per-line on SQLite) and once with the
    staged path on SQLite as well, so the SQLite branch of `_apply_staged` (kept as the measured
    alternative) is held to the same refusals."""
    from gateway import flow
    if request.param != "as-configured":
        monkeypatch.setitem(flow.STAGED_APPLY, "sqlite", True)
    return request.param


@pytest.mark.parametrize("case", sorted(BAD))
@pytest_twisted.ensureDeferred
async def test_a_result_line_that_does_not_match_its_item_refuses_the_file_whole(reactor, tmp_path,
                                                                                    db_url, case):
    """Unknown seq, a line twice, swapped amounts, a wrong account, an item of another batch:
    the staged apply raises ResultRejected and the transaction leaves every item SENT (no
    result on any), both batches ACCEPTED."""
    env = await in_process(reactor, tmp_path, [], db_url=db_url)
    try:
        b = await _setup(env)
        with pytest.raises(ResultRejected, match="matched an item"):
            await env.db.run_bulk(env.flow._apply_results, b, _results(BAD[case](_good())))
        rows = await env.query("select status, count(*) n, count(result_at) r from items group by status")
        assert rows == [{"status": "SENT", "n": 7, "r": 0}]
        assert {r["state"] for r in await env.query("select state from batches")} == {"ACCEPTED"}
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_matching_results_are_applied_by_the_staged_update(reactor, tmp_path, db_url):
    """The same set-up with the right lines is applied (so the refusals above are for the
    damage, not the set-up): each item gets its line's status, reason and serial; a line
    that does not repeat amount and account (iso20022 results) still matches by seq; the
    other batch's item is untouched."""
    env = await in_process(reactor, tmp_path, [], db_url=db_url)
    try:
        b = await _setup(env)
        lines = _good()
        lines[5] = dataclasses.replace(lines[5], amount=None, account_no=None)
        summary = await env.db.run_bulk(env.flow._apply_results, b, _results(lines))
        assert summary == {"lines": 6, "paid": 5, "failed": 1}
        rows = await env.query("select seq, status, reason_code, bank_serial from items order by seq")
        assert [(r["seq"], r["status"], r["reason_code"], r["bank_serial"]) for r in rows] == [
            (1, "PAID", "", "S000001"), (2, "PAID", "", "S000002"), (3, "FAILED", "R001", "S000003"),
            (4, "PAID", "", "S000004"), (5, "PAID", "", "S000005"), (6, "PAID", "", "S000006"),
            (7, "SENT", None, None)]
        assert (await env.query("select state from batches where batch_no = :b", b=BATCH)) == [
            {"state": "DONE"}]
    finally:
        await env.close()
