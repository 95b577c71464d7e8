"""The handover register (交接登记簿) of article 26, per batch whose results arrived in a month.

For each batch: when its results were received (the gateway applied them), when
its result sheet was produced, who confirmed it and when (batch.confirm), whether
that was within the working-day deadline (`batches.confirm_due`, counted with
conf/calendar when the results arrived; with a calendar the working days taken are
counted too), the disputes raised and the bank's answer, and when the sheet was
filed with finance. A batch belongs to the month (China time) its results arrived in.
Read-only.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from gateway.models import BatchState, batches, disputes, orders
from gateway.store import result_sheets
from gateway.rules import CST

ANSWER = {"ACCEPTED": "accepted by the bank 银行已受理", "REFUSED": "refused by the bank 银行拒绝",
          "NEW": "not sent yet 待发送", "SUBMITTING": "sent, no answer yet 已发送待答复"}


def _month_range(year: int, month: int) -> tuple[int, int, str, str]:
    if not 1 <= month <= 12:
        raise ValueError(f"month {month} is not 1 to 12")
    start = datetime.datetime(year, month, 1, tzinfo=CST)
    end = datetime.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=CST)
    return int(start.timestamp()), int(end.timestamp()), start.isoformat(), end.isoformat()


def _date(text: str | None) -> datetime.date | None:
    return datetime.date.fromisoformat(text[:10]) if text else None


def register(conn: Connection, year: int, month: int, bank_id: str | None = None, *,
             today: datetime.date, calendar=None) -> dict[str, Any]:  # noqa: ANN001 (WorkCalendar)
    """The month's register rows, one per batch whose results arrived in the month."""
    s_from, s_until, t_from, t_until = _month_range(year, month)
    q = (select(batches, orders.c.project_code, orders.c.project_name)
         .join(orders, orders.c.order_no == batches.c.order_no)
         .where(batches.c.state == BatchState.DONE,
                or_(and_(batches.c.done_at >= s_from, batches.c.done_at < s_until),
                    and_(batches.c.done_at.is_(None), batches.c.updated_at >= t_from,
                         batches.c.updated_at < t_until)))
         .order_by(batches.c.done_at, batches.c.batch_no))
    if bank_id:
        q = q.where(batches.c.bank_id == bank_id)
    rows = []
    for b in conn.execute(q).mappings():
        received = (datetime.datetime.fromtimestamp(b["done_at"], CST).isoformat(timespec="seconds")
                    if b["done_at"] is not None else b["updated_at"])
        sheet = result_sheets.get(conn, b["batch_no"])
        due = b["confirm_due"]
        confirmed = _date(b["confirmed_at"])
        if confirmed is not None:
            on_time: bool | None = due is None or confirmed.isoformat() <= due
        else:
            on_time = False if (due is not None and today.isoformat() > due) else None
        taken = None
        if calendar is not None:
            try:
                taken = calendar.working_days_between(_date(received), confirmed or today)
            except LookupError:
                taken = None
        ds = [{"dispute_no": d["dispute_no"], "seqs": json.loads(d["seqs"]), "reason": d["reason"],
               "raised_by": d["raised_by"], "raised_at": d["created_at"], "due": d["due"],
               "on_time": bool(d["on_time"]) if d["on_time"] is not None else None,
               "state": d["state"], "answer": ANSWER.get(d["state"], d["state"]),
               "answered_at": d["updated_at"] if d["state"] in ("ACCEPTED", "REFUSED") else None}
              for d in conn.execute(select(disputes).where(disputes.c.batch_no == b["batch_no"])
                                    .order_by(disputes.c.dispute_no)).mappings()]
        rows.append({
            "batch_no": b["batch_no"], "order_no": b["order_no"], "bank_id": b["bank_id"], "kind": b["kind"],
            "project_code": b["project_code"], "project_name": b["project_name"],
            "bank_batch_no": b["bank_batch_no"],
            "paid": {"count": b["succ_cnt"] or 0, "amount": b["succ_amt"] or 0},
            "failed": {"count": b["fail_cnt"] or 0, "amount": b["fail_amt"] or 0},
            "results_received_at": received,
            "sheet_produced_at": sheet["produced_at"] if sheet else None,
            "sheet_sha256": sheet["pdf_sha256"] if sheet else None,
            "confirmed_by": b["confirmed_by"], "confirmed_at": b["confirmed_at"], "confirm_due": due,
            "within_deadline": on_time, "working_days_taken": taken,
            "disputes": ds,
            "filed_at": sheet["filed_at"] if sheet else None, "filed_by": sheet["filed_by"] if sheet else None,
        })
    return {"year": year, "month": month, "bank_id": bank_id, "as_of": today.isoformat(),
            "basis": "batches whose results the gateway applied in the month (China time)",
            "batches": rows}


def lines(reg: dict) -> list[str]:
    """The register as text lines for the console (no personal data in it)."""
    out = [f"交接登记簿 Handover register {reg['year']}-{reg['month']:02d}"
           + (f" bank {reg['bank_id']}" if reg["bank_id"] else "") + f" (as of {reg['as_of']})"]
    if not reg["batches"]:
        out.append("  no batch results arrived in this month")
    for r in reg["batches"]:
        ok = {True: "within deadline 按期", False: "LATE 逾期", None: "pending 待核对"}[r["within_deadline"]]
        taken = f", {r['working_days_taken']} working days" if r["working_days_taken"] is not None else ""
        out.append(f"{r['batch_no']} [{r['bank_id']}] {r['kind']} order {r['order_no']} project {r['project_code']}: "
                   f"paid {r['paid']['count']}/{r['paid']['amount']} fen, failed {r['failed']['count']}/"
                   f"{r['failed']['amount']} fen")
        out.append(f"    results received {r['results_received_at']}; sheet "
                   f"{r['sheet_produced_at'] or 'not produced yet'}; confirmed "
                   + (f"by {r['confirmed_by']} at {r['confirmed_at']}" if r["confirmed_by"] else "no")
                   + f" (due {r['confirm_due'] or '-'}: {ok}{taken}); filed with finance "
                   + (f"{r['filed_at']} by {r['filed_by']}" if r["filed_at"] else "no"))
        for d in r["disputes"]:
            out.append(f"    dispute {d['dispute_no']} seqs {d['seqs']} by {d['raised_by']} at {d['raised_at']} "
                       f"(due {d['due'] or '-'}{'' if d['on_time'] in (True, None) else ', LATE'}): "
                       f"{d['reason']} -> {d['answer']}")
    return out
