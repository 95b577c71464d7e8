"""A month of one bank's work as the flows leave it in the database, for the paper tests.

November 2026, bank CNB01 (cnbank). Order FS01 (project NY01, 5 items, 1,500 fen):
its PAY batch FS01-P01 (done 2026-11-20) paid seqs 1-3 and failed seq 4 (R001) and
seq 5 (R010); seq 4 was corrected and paid in the RETRY batch FS01-R02 (done
2026-11-25); seq 5 was refunded (FS01-F01, 2026-11-26); seq 2 was returned late
(R004, 2026-11-28) and is FAILED again. FS01-P01 was confirmed on time and disputed;
FS01-R02 is not confirmed. Order FS02 (project NY02, 2 items, 3,000 fen) was paid
whole by FS02-P01 (done 2026-11-21). Every result file is journaled as received.
"""

from __future__ import annotations

import datetime
import json

from sqlalchemy import insert

from gateway.journal import Entry, Journal
from gateway.models import (batches, corrections, disputes, items, late_returns, orders, refund_items,
                            refunds)
from gateway.rules import CST

BANK = "CNB01"
ID_NO = "110101199003078515"


def secs(*a) -> int:
    return int(datetime.datetime(*a, tzinfo=CST).timestamp())


def acct(seq: int, order: int = 1) -> str:
    return f"62220212345{order:02d}{seq:06d}"


def _order(conn, no, project, name, short, region, funded, state, total):
    conn.execute(insert(orders).values(
        order_no=no, bank_id=BANK, budget_unit="长丰县农业农村局", project_code=project, project_name=name,
        project_short=short, region=region, total_amount=total[1], total_count=total[0], funded_at=funded,
        state=state, results_pending=0, retry_requested=0, created_at=funded, updated_at=funded))


def _batch(conn, no, order_no, kind, seq, total, paid, failed, done_at, **kw):
    values = dict(batch_no=no, order_no=order_no, bank_id=BANK, kind=kind, seq=seq, state="DONE",
                  total_count=total[0], total_amount=total[1], succ_cnt=paid[0], succ_amt=paid[1],
                  fail_cnt=failed[0], fail_amt=failed[1], attempts=1, bank_batch_no="BK" + no[-7:],
                  file_name=f"{no}.req", result_ref=f"{no}.rsp", result_sm3="ab" * 32,
                  created_at="2026-11-19T09:00:00+08:00", updated_at="2026-11-19T09:00:00+08:00",
                  done_at=done_at, overdue_alarmed=0, bank_overdue_alarmed=0)
    values.update(kw)
    conn.execute(insert(batches).values(**values))


def seed(conn, jr: Journal) -> None:
    _order(conn, "FS01", "NY01", "耕地地力保护补贴", "耕地补贴", "340121", "2026-11-02T09:30:00+08:00",
           "DISPATCHED", (5, 1500))
    rows = [  # seq, amount, status, batch, reason, result_at, orig
        (1, 100, "PAID", "FS01-P01", "0000", "2026-11-20T00:00:00+08:00", None),
        (2, 200, "FAILED", "FS01-P01", "R004", "2026-11-28T00:00:00+08:00", None),
        (3, 300, "PAID", "FS01-P01", "0000", "2026-11-20T00:00:00+08:00", None),
        (4, 400, "PAID", "FS01-R02", "0000", "2026-11-25T00:00:00+08:00", "FS01-P01"),
        (5, 500, "REFUNDED", "FS01-P01", "R010", "2026-11-26T10:00:00+08:00", None)]
    conn.execute(insert(items), [
        {"order_no": "FS01", "seq": s, "name": f"张{s}", "id_number": ID_NO,
         "account_no": acct(s) if s != 4 else acct(99), "account_bank": "", "amount": a, "remark": "",
         "status": st, "batch_no": b, "reason_code": rc, "reason_text": None, "bank_serial": None,
         "result_at": at, "pushed": None, "orig_batch_no": orig} for s, a, st, b, rc, at, orig in rows])
    _batch(conn, "FS01-P01", "FS01", "PAY", 1, (5, 1500), (3, 600), (2, 900), secs(2026, 11, 20, 10),
           confirm_due="2026-11-27", dispute_due="2026-12-02", confirmed_by="王科员",
           confirmed_at="2026-11-24T15:00:00+08:00")
    _batch(conn, "FS01-R02", "FS01", "RETRY", 2, (1, 400), (1, 400), (0, 0), secs(2026, 11, 25, 10),
           confirm_due="2026-12-02", dispute_due="2026-12-05")
    conn.execute(insert(corrections).values(
        order_no="FS01", seq=4, at="2026-11-22T10:00:00+08:00", failed_batch_no="FS01-P01", reason_code="R001",
        old_values=json.dumps({"account_no": acct(4)}), new_values=json.dumps({"account_no": acct(99)}),
        confirmed_by="收款人本人", approved_by="李科长", approval_ref="NY[2026]17号", caller="unix:uid=0",
        journal_id=1))
    conn.execute(insert(refunds).values(
        refund_no="FS01-F01", order_no="FS01", bank_id=BANK, state="DONE", total_count=1, total_amount=500,
        reason="账户人已故", approved_by="李科长", caller="unix:uid=0", refund_serial="RSF01",
        returned_to="6222000011112222", refund_amount=500, attempts=1,
        created_at="2026-11-23T09:00:00+08:00", updated_at="2026-11-26T10:00:00+08:00"))
    conn.execute(insert(refund_items).values(refund_no="FS01-F01", seq=5, order_no="FS01",
                                             batch_no="FS01-P01", amount=500))
    conn.execute(insert(late_returns).values(
        return_serial="RT0001", bank_id=BANK, batch_no="FS01-P01", order_no="FS01", seq=2, amount=200,
        reason_code="R004", return_date="20261128", applied_at="2026-11-28T10:00:00+08:00", journal_id=1))
    conn.execute(insert(disputes).values(
        dispute_no="FS01-P01-D01", batch_no="FS01-P01", order_no="FS01", bank_id=BANK, seqs="[5]",
        reason="户名有误请核实", raised_by="王科员", state="ACCEPTED", due="2026-12-02", on_time=1, attempts=1,
        created_at="2026-11-24T16:00:00+08:00", updated_at="2026-11-24T16:05:00+08:00"))

    _order(conn, "FS02", "NY02", "农机购置补贴", "农机补贴", "340122", "2026-11-03T09:00:00+08:00",
           "SETTLED", (2, 3000))
    conn.execute(insert(items), [
        {"order_no": "FS02", "seq": s, "name": f"李{s}", "id_number": ID_NO, "account_no": acct(s, 2),
         "account_bank": "", "amount": a, "remark": "", "status": "PAID", "batch_no": "FS02-P01",
         "reason_code": "0000", "reason_text": "成功", "bank_serial": f"S{s}", "result_at": "2026-11-21T00:00:00+08:00",
         "pushed": None, "orig_batch_no": None} for s, a in ((1, 1000), (2, 2000))])
    _batch(conn, "FS02-P01", "FS02", "PAY", 1, (2, 3000), (2, 3000), (0, 0), secs(2026, 11, 21, 10),
           confirm_due="2026-11-28", dispute_due="2026-12-03")

    for no, at in (("FS01-P01", "2026-11-20T10:00:00+08:00"), ("FS01-R02", "2026-11-25T10:00:00+08:00"),
                   ("FS02-P01", "2026-11-21T10:00:00+08:00")):
        order_no = no.split("-")[0]
        jr.append(conn, Entry("in", BANK, "sftp", "GET", f"{no}.rsp.sig", payload=b"\x01" * 64,
                              order_no=order_no, batch_no=no, verified="ok"), at)
        jr.append(conn, Entry("in", BANK, "sftp", "GET", f"result file {no}.rsp: lines ...",
                              payload=f"ciphertext of {no}".encode(), order_no=order_no, batch_no=no,
                              verified="ok"), at)
