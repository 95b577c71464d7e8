"""The result sheet (交易结果) of a batch whose results are in, sealed with the gateway's SM2 key (article 26).

Produced lazily: `ensure_sheet` makes the sheet the first time anyone needs it
(`gatewayctl sheet make`, the handover register, the archive export) from what
the database and the journal hold, and keeps it: the PDF and its detached
signature are journal payloads (hash-chained, archived by SM3) and a
`result_sheets` row names them, so the sheet issued once is the sheet shown
forever. Nothing here runs in the bank flows.

The failed items are those the batch's results reported failed: items still
carrying the batch's failure, plus items corrected since (each correction keeps
the batch it failed in, its reason and the old account), less items that were
paid in the batch and returned later (a late return is not a failure of the
batch). The list is checked against the batch's own totals from the result
file, and the sheet says whether they agree.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import Any

from sqlalchemy import Connection, select

from gateway.journal import Entry, Journal
from gateway.masking import mask
from gateway.models import BatchState, ItemStatus, batches, corrections, items, journal, late_returns, orders
from gateway.paper import pdf
from gateway.store import result_sheets as sheet_store
from gateway.paper.seal import Seal, openssl_command
from gateway.rules import CST
from protocols.sm import sm3_hex

REASON_TEXT = {
    "R001": "账号不存在", "R002": "户名不符", "R003": "证件号不符", "R004": "账户已销户",
    "R005": "账户冻结/止付", "R006": "睡眠户/久悬户", "R007": "卡已挂失", "R008": "非个人结算账户",
    "R009": "重复明细", "R010": "账户人已故", "R099": "其他",
    "AC01": "账号错误", "AC04": "账户已销户", "AC06": "账户冻结", "AG01": "账户类型不允许",
    "BE01": "户名不符", "BE17": "证件号不符", "AM05": "重复", "MD07": "账户人已故", "NARR": "其他",
}
TX_SHEET, TX_SIG = "result-sheet", "result-sheet.sig"


class SheetError(Exception):
    """No sheet can be made for this batch (unknown, or its results are not in)."""


def _when(b: dict) -> str:
    if b["done_at"] is not None:
        return datetime.datetime.fromtimestamp(b["done_at"], CST).isoformat(timespec="seconds")
    return b["updated_at"]


def failed_items(conn: Connection, b: dict) -> list[dict]:
    """The items the batch's results reported failed, by seq, masked, with what became of them."""
    order_no, batch_no = b["order_no"], b["batch_no"]
    returned = set(conn.execute(select(late_returns.c.seq).where(
        late_returns.c.order_no == order_no, late_returns.c.batch_no == batch_no)).scalars())
    first_fix: dict[int, dict] = {}
    for c in conn.execute(select(corrections).where(corrections.c.order_no == order_no,
                                                    corrections.c.failed_batch_no == batch_no)
                          .order_by(corrections.c.id)).mappings():
        first_fix.setdefault(c["seq"], dict(c))
    seqs = set(first_fix)
    rows: dict[int, dict] = {}
    current = {r["seq"]: dict(r) for r in conn.execute(select(
        items.c.seq, items.c.name, items.c.account_no, items.c.amount, items.c.status, items.c.batch_no,
        items.c.reason_code, items.c.reason_text).where(
        items.c.order_no == order_no,
        ((items.c.batch_no == batch_no) & (items.c.status != ItemStatus.PAID))
        | items.c.seq.in_(sorted(seqs) or [-1]))).mappings()}
    for seq, it in sorted(current.items()):
        if seq in returned:
            continue
        fix = first_fix.get(seq)
        if fix is None and it["batch_no"] != batch_no:
            continue
        old = json.loads(fix["old_values"]) if fix else {}
        code = (fix["reason_code"] if fix else it["reason_code"]) or ""
        text = it["reason_text"] if (fix is None or code == it["reason_code"]) and it["reason_text"] else ""
        rows[seq] = {"seq": seq, "name": old.get("name", it["name"]),
                     "account": mask(old.get("account_no", it["account_no"])), "amount": it["amount"],
                     "reason_code": code, "reason_text": text or REASON_TEXT.get(code, ""),
                     "now": it["status"] + (f" ({it['batch_no']})" if it["batch_no"] != batch_no else "")}
    return [rows[s] for s in sorted(rows)]


def _evidence(conn: Connection, b: dict) -> dict | None:
    """The journal entry of the bank's results: the result file's (cnbank), or the pain.002
    the batch was settled by (iso20022, whose `result_ref` is that entry's id, "parts:<id>"
    for a batch sent as several messages: the last part's report)."""
    cols = (journal.c.id, journal.c.at, journal.c.verified, journal.c.payload_sm3, journal.c.tx_code,
            journal.c.decoded)
    ref = re.fullmatch(r"(parts:)?([0-9]{1,18})", b["result_ref"] or "")
    if ref:
        r = conn.execute(select(*cols).where(journal.c.id == int(ref[2]))).mappings().one_or_none()
        return {**r, "parts": bool(ref[1])} if r else None
    r = conn.execute(select(*cols)
                     .where(journal.c.batch_no == b["batch_no"],
                            ((journal.c.direction == "in") & journal.c.decoded.like("result file %"))
                            | (journal.c.tx_code == "results"))
                     .order_by(journal.c.id.desc()).limit(1)).mappings().one_or_none()
    return {**r, "parts": False} if r else None


def _result_name(b: dict, ev: dict | None) -> str:
    """What the sheet calls the bank's results: the file's name, or the message and its entry."""
    if ev is not None and b["result_ref"] and b["result_ref"].removeprefix("parts:") == str(ev["id"]):
        return (f"{ev['tx_code']} (报文日志 journal #{ev['id']}"
                + ("; 分多个报文 last of several messages" if ev["parts"] else "") + ")")
    return b["result_ref"] or (ev["tx_code"] if ev else "-")


def sheet_data(conn: Connection, batch_no: str) -> dict[str, Any]:
    """Everything a batch's sheet shows, from the database and the journal."""
    b = conn.execute(select(batches).where(batches.c.batch_no == batch_no)).mappings().one_or_none()
    if b is None:
        raise SheetError(f"no batch {batch_no!r}")
    b = dict(b)
    if b["state"] != BatchState.DONE:
        raise SheetError(f"batch {batch_no} is {b['state']}: a result sheet needs its results (DONE)")
    o = dict(conn.execute(select(orders).where(orders.c.order_no == b["order_no"])).mappings().one())
    failed = failed_items(conn, b)
    ev = _evidence(conn, b)
    f_cnt, f_amt = len(failed), sum(x["amount"] for x in failed)
    return {"batch": b, "order": o, "received_at": _when(b), "failed": failed, "evidence": ev,
            "result_sm3": b["result_sm3"] or (ev and ev["payload_sm3"]) or "",
            "result_name": _result_name(b, ev),
            "failed_list_matches": (f_cnt, f_amt) == (b["fail_cnt"] or 0, b["fail_amt"] or 0),
            "failed_list": {"count": f_cnt, "amount": f_amt}}


def render_sheet(d: dict, *, fingerprint: str, signer_id: str, produced_at: str, bank_name: str = "",
                 font_file: str = "") -> bytes:
    """The sheet as PDF bytes (A4; the same input gives the same bytes)."""
    fn = pdf.font(font_file)
    st = pdf.Styles(fn)
    b, o = d["batch"], d["order"]
    P = lambda t, s=st.cell: pdf.Paragraph(pdf.esc(t), s)  # noqa: E731
    story: list = [pdf.Paragraph(f"交易结果 Transaction results  {pdf.esc(b['batch_no'])}", st.title)]
    info = [
        ["代发银行 Agent bank", f"{bank_name} ({b['bank_id']})" if bank_name else b["bank_id"],
         "批次 Batch", f"{b['batch_no']} ({b['kind']})"],
        ["发放单号 Order", o["order_no"], "银行批次号 BankBatchNo", b["bank_batch_no"] or "-"],
        ["项目 Project", f"{o['project_code']} {o['project_name']}", "项目简称 Short name", o["project_short"]],
        ["预算单位 Budget unit", o["budget_unit"], "区划 Region", o["region"]],
        ["批次创建 Created", b["created_at"], "结果收到 Results received", d["received_at"]],
        ["核对期限 Check due", b["confirm_due"] or "-", "异议期限 Dispute due", b["dispute_due"] or "-"],
    ]
    w = [32 * pdf.mm, 55 * pdf.mm, 34 * pdf.mm, 53 * pdf.mm]
    story.append(pdf.table([[P(c) for c in r] for r in info], w, fn, header_rows=0))
    story.append(pdf.Spacer(1, 4 * pdf.mm))
    story.append(pdf.Paragraph("金额汇总 Figures (元 yuan)", st.h2))
    fig = [["", "笔数 Count", "金额 Amount"],
           ["本批合计 Batch total", str(b["total_count"]), pdf.yuan(b["total_amount"])],
           ["成功 Paid", str(b["succ_cnt"] or 0), pdf.yuan(b["succ_amt"] or 0)],
           ["失败 Failed", str(b["fail_cnt"] or 0), pdf.yuan(b["fail_amt"] or 0)]]
    story.append(pdf.table(fig, [60 * pdf.mm, 40 * pdf.mm, 50 * pdf.mm], fn, numeric_from=1))
    ev = d["evidence"]
    story.append(pdf.Paragraph("银行结果文件 The bank's results", st.h2))
    res = [["结果文件 Result file", d["result_name"]],
           ["SM3", d["result_sm3"] or "-"],
           ["验签 Bank signature", (ev["verified"] if ev else "not journaled")
            + (f"  (报文日志 journal #{ev['id']}, {ev['at']})" if ev else "")],
           ["失败明细核对 Failed list vs totals",
            ("一致 agrees" if d["failed_list_matches"] else "不一致 DIFFERS")
            + f": {d['failed_list']['count']} 笔 / {pdf.yuan(d['failed_list']['amount'])} 元"]]
    story.append(pdf.table([[P(c) for c in r] for r in res], [45 * pdf.mm, 129 * pdf.mm], fn, header_rows=0))
    story.append(pdf.Paragraph(f"失败明细 Failed items ({len(d['failed'])})", st.h2))
    if d["failed"]:
        rows = [["序号 Seq", "姓名 Name", "账号 Account", "金额 Amount", "原因 Reason", "现状 Now"]]
        rows += [[str(x["seq"]), P(x["name"]), x["account"], pdf.yuan(x["amount"]),
                  P(f"{x['reason_code']} {x['reason_text']}"), P(x["now"])] for x in d["failed"]]
        rows.append(["合计 Total", "", "", pdf.yuan(d["failed_list"]["amount"]), "", ""])
        story.append(pdf.table(rows, [16 * pdf.mm, 24 * pdf.mm, 40 * pdf.mm, 24 * pdf.mm, 38 * pdf.mm,
                                      32 * pdf.mm], fn, numeric_from=3, bold_last=True))
    else:
        story.append(pdf.Paragraph("无 None", st.body))
    story.append(pdf.Paragraph("电子签章 Electronic seal", st.h2))
    seal = [["签章 Seal", f"SM2-with-SM3, signer ID {signer_id}, detached: {b['batch_no']}.pdf.sig (DER)"],
            ["签章人公钥指纹 Signer (SHA-256)", P(fingerprint, st.small)],
            ["生成时间 Produced", produced_at],
            ["验证 Verify", P(openssl_command(f"{b['batch_no']}.pdf", f"{b['batch_no']}.pdf.sig",
                                              "seal.pub.pem", signer_id), st.small)]]
    story.append(pdf.table([[P(c) if isinstance(c, str) else c for c in r] for r in seal],
                           [45 * pdf.mm, 129 * pdf.mm], fn, header_rows=0))
    story.append(pdf.Spacer(1, 8 * pdf.mm))
    story.append(pdf.Paragraph("业务科室核对 Checked by the department: ________________ "
                               "日期 Date: ____________  (盖章 stamp)", st.body))
    return pdf.render(story, title=f"交易结果 {b['batch_no']}", fontname=fn,
                      header=f"交易结果 {b['batch_no']}")


def existing(conn: Connection, batch_no: str) -> dict | None:
    return sheet_store.get(conn, batch_no)


def ensure_sheet(conn: Connection, jr: Journal, seal: Seal, batch_no: str, at: str, *,
                 bank_name: str = "", font_file: str = "") -> dict:
    """The batch's sheet row, producing, sealing and journaling the sheet the first time (in conn's transaction)."""
    row = existing(conn, batch_no)
    if row is not None:
        return row
    d = sheet_data(conn, batch_no)
    b = d["batch"]
    data = render_sheet(d, fingerprint=seal.fingerprint, signer_id=seal.signer_id, produced_at=at,
                        bank_name=bank_name, font_file=font_file)
    sig = seal.sign(data)
    sha = hashlib.sha256(data).hexdigest()
    ref = {"order_no": b["order_no"], "batch_no": batch_no}
    jid = jr.append(conn, Entry("event", "gateway", "daemon", TX_SHEET,
                                f"result sheet {batch_no}.pdf: {len(data)} bytes, SHA-256 {sha}, "
                                f"paid {b['succ_cnt']} / {b['succ_amt']} fen, failed {b['fail_cnt']} / "
                                f"{b['fail_amt']} fen, sealed by {seal.fingerprint}",
                                payload=data, verified="ok", **ref), at)
    sid = jr.append(conn, Entry("event", "gateway", "daemon", TX_SIG,
                                f"seal of result sheet {batch_no}.pdf (SM2-with-SM3, DER, signer ID "
                                f"{seal.signer_id}) by {seal.fingerprint}", payload=sig, verified="ok", **ref), at)
    row = {"batch_no": batch_no, "order_no": b["order_no"], "bank_id": b["bank_id"], "produced_at": at,
           "pdf_sm3": sm3_hex(data), "pdf_sha256": sha, "pdf_size": len(data), "signer": seal.fingerprint,
           "journal_id": jid, "sig_journal_id": sid, "filed_at": None, "filed_by": None}
    sheet_store.add(conn, row)
    return row


def sheet_files(conn: Connection, jr: Journal, batch_no: str) -> tuple[bytes, bytes]:
    """The stored sheet's PDF and signature bytes, from the journal."""
    row = existing(conn, batch_no)
    if row is None:
        raise SheetError(f"batch {batch_no} has no result sheet yet (gatewayctl sheet make --batch {batch_no})")
    out = []
    for jid in (row["journal_id"], row["sig_journal_id"]):
        j = conn.execute(select(journal).where(journal.c.id == jid)).one()
        out.append(jr.payload_of(j))
    return out[0], out[1]


def done_batches_without_sheet(conn: Connection, *, bank_id: str | None = None,
                               order_no: str | None = None) -> list[str]:
    return sheet_store.done_batches_without(conn, bank_id=bank_id, order_no=order_no)
