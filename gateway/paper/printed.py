"""The monthly and yearly reports as printable A4 PDF (article 25), and their parts for the bound volume.

Each report is a story of ReportLab flowables built by `monthly_story` or
`yearly_story`, so the bound volume (`volume`) sets the same pages the single
reports print. Amounts are yuan with two decimals from integer fen; labels are
Chinese with English beside them.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.paper import pdf

W = 174 * pdf.mm   # the text width of an A4 page with the margins of gateway.paper.pdf


def _ca(d: dict) -> list[str]:
    return [str(d["count"]), pdf.yuan(d["amount"])]


_PARTS = (("paid", "成功 paid"), ("failed", "失败 failed"), ("returned", "退票 returned"))


def _brief(v: Any) -> str:
    """One side of a difference in words and yuan: '2 笔 30.00; 成功 paid 2 / 30.00; ...'."""
    if v is None:
        return "-"
    if not isinstance(v, dict):
        return str(v)
    out = []
    if "count" in v and "amount" in v:
        out.append(f"{v['count']} 笔 {pdf.yuan(v['amount'])}")
    for k, label in _PARTS:
        if isinstance(v.get(k), dict):
            out.append(f"{label} {v[k]['count']} / {pdf.yuan(v[k]['amount'])}")
    if "amounts" in v:
        out.append(", ".join(pdf.yuan(a) for a in v["amounts"]))
    for k in ("state", "serial", "bank_id", "bank_period", "gateway_month"):
        if v.get(k):
            out.append(f"{k} {v[k]}")
    return "; ".join(out) or json.dumps(v, ensure_ascii=False)[:90]


def reconciliation_flowables(rec_by_bank: dict, st: pdf.Styles, fn: str) -> list:
    out: list = []
    if not rec_by_bank:
        out.append(pdf.Paragraph("无对账单 No statement and no figures in the period.", st.body))
    for bank, rec in rec_by_bank.items():
        s = rec["statement"]
        line = (f"银行 {pdf.esc(bank)}: 对账单 statement {pdf.esc(', '.join(s['periods']))} ({s['coverage']}), "
                f"fetched {pdf.esc(s['fetched_at'])}; 相符 matched {rec['matched']}, 差异 differences "
                f"{rec['differences_total']}" if s else f"银行 {pdf.esc(bank)}: {pdf.esc(rec.get('note', ''))}")
        out.append(pdf.Paragraph(line, st.body))
        if rec["differences"]:
            rows = [["类别 Kind", "编号 Reference", "发放单号 Order", "网关 Gateway", "银行 Bank"]]
            cell = st.cell
            rows += [[pdf.Paragraph(pdf.esc(d["label"].split(":")[0]), cell), pdf.Paragraph(pdf.esc(d["reference"]), cell),
                      d["order_no"] or "", pdf.Paragraph(pdf.esc(_brief(d["gateway"])), st.small),
                      pdf.Paragraph(pdf.esc(_brief(d["bank"])), st.small)] for d in rec["differences"]]
            out.append(pdf.table(rows, [34 * pdf.mm, 30 * pdf.mm, 22 * pdf.mm, 44 * pdf.mm, 44 * pdf.mm], fn))
            if rec["differences_total"] > len(rec["differences"]):
                out.append(pdf.Paragraph(f"... {rec['differences_total'] - len(rec['differences'])} more", st.body))
        out.append(pdf.Spacer(1, 2 * pdf.mm))
    return out


def monthly_story(detail: dict, st: pdf.Styles, fn: str, *, bank_names: dict | None = None,
                  toc: bool = False) -> list:
    rep = detail["report"]
    names = bank_names or {}
    ym = f"{rep['year']}-{rep['month']:02d}"
    title = f"月度报表 Monthly report {ym}"
    story: list = [pdf.heading(title, st.title, title if toc else None),
                   pdf.Paragraph(f"期间 Period {pdf.esc(rep['from'])} – {pdf.esc(rep['until'])} (China time). "
                                 "金额单位 元 Amounts in yuan.", st.body)]
    tot = {k: {"count": 0, "amount": 0} for k in ("funded", "paid", "refunded", "failed", "returned", "outstanding")}
    for f in rep["figures"]:
        bank = f"{names.get(f['bank_id'], '')} {f['bank_id']}".strip()
        story.append(pdf.Paragraph(f"{pdf.esc(bank)} / 项目 {pdf.esc(f['project_code'])} "
                                   f"{pdf.esc(f['project_name'] or '')}", st.h2))
        rows = [["", "笔数 Count", "金额 Amount"],
                ["拨入 Funded (orders)", *_ca(f["orders"]["funded"])],
                ["完成批次 Batches done", str(f["batches"]["done"]), ""],
                ["批次成功 Batch paid", *_ca(f["batches"]["paid"])],
                ["批次失败 Batch failed", *_ca(f["batches"]["failed"])],
                ["支付 Items paid", *_ca(f["items"]["paid"])],
                ["退回原渠道 Refunded", *_ca(f["items"]["refunded"])],
                ["失败 Failed", *_ca(f["items"]["failed"])]]
        rows += [[f"   {code}", *_ca(v)] for code, v in sorted(f["items"]["failed"]["by_reason"].items())]
        rows += [["退票 Returned late", *_ca(f["late_returned"])],
                 ["在途 Outstanding (now)", *_ca(f["outstanding"])]]
        story.append(pdf.table(rows, [70 * pdf.mm, 35 * pdf.mm, 50 * pdf.mm], fn, numeric_from=1))
        for k, src in (("funded", f["orders"]["funded"]), ("paid", f["items"]["paid"]),
                       ("refunded", f["items"]["refunded"]), ("failed", f["items"]["failed"]),
                       ("returned", f["late_returned"]), ("outstanding", f["outstanding"])):
            tot[k]["count"] += src["count"]
            tot[k]["amount"] += src["amount"]
        per = detail["orders"].get((f["bank_id"], f["project_code"]), [])
        if per:
            rows = [["发放单号 Order", "区划 Region", "支付 Paid", "退回 Refunded", "失败 Failed", "在途 Outstanding"]]
            rows += [[o["order_no"], o["region"], pdf.yuan(o["paid"]["amount"]), pdf.yuan(o["refunded"]["amount"]),
                      pdf.yuan(o["failed"]["amount"]), pdf.yuan(o["outstanding"]["amount"])] for o in per]
            story.append(pdf.Spacer(1, 1.5 * pdf.mm))
            story.append(pdf.table(rows, [40 * pdf.mm, 20 * pdf.mm, 28 * pdf.mm, 28 * pdf.mm, 28 * pdf.mm,
                                          30 * pdf.mm], fn, numeric_from=2))
    story.append(pdf.Paragraph("合计 Totals", st.h1))
    rows = [["", "笔数 Count", "金额 Amount"]] + [[label, *_ca(tot[k])] for label, k in (
        ("拨入 Funded (orders)", "funded"), ("支付 Items paid", "paid"), ("退回原渠道 Refunded", "refunded"),
        ("失败 Failed", "failed"), ("退票 Returned late", "returned"), ("在途 Outstanding (now)", "outstanding"))]
    story.append(pdf.table(rows, [70 * pdf.mm, 35 * pdf.mm, 50 * pdf.mm], fn, numeric_from=1))
    cons = rep["conservation"]
    story.append(pdf.Paragraph(
        f"守恒 Conservation (rule 1): {cons['orders_checked']} orders checked, "
        + ("平衡 ok" if cons["ok"] else f"{cons['broken_total']} 不平衡 BROKEN"), st.body))
    story.append(pdf.Paragraph("对账 Reconciliation with the bank statements", st.h1))
    story += reconciliation_flowables(rep["reconciliation"], st, fn)
    return story


def monthly_pdf(detail: dict, *, bank_names: dict | None = None, font_file: str = "") -> bytes:
    fn = pdf.font(font_file)
    rep = detail["report"]
    return pdf.render(monthly_story(detail, pdf.Styles(fn), fn, bank_names=bank_names),
                      title=f"月度报表 {rep['year']}-{rep['month']:02d}", fontname=fn,
                      header=f"月度报表 Monthly report {rep['year']}-{rep['month']:02d}")


def _fig_table(rows_in: list[dict], first: str, key, fn: str) -> Any:
    rows = [[first, "拨入 Funded", "支付 Paid", "退回 Refunded", "失败 Failed", "退票 Returned"]]
    for r in rows_in:
        rows.append([key(r), pdf.yuan(r["funded"]["amount"]), pdf.yuan(r["paid"]["amount"]),
                     pdf.yuan(r["refunded"]["amount"]), pdf.yuan(r["failed"]["amount"]),
                     pdf.yuan(r["late_returned"]["amount"])])
    return pdf.table(rows, [44 * pdf.mm] + [26 * pdf.mm] * 5, fn, numeric_from=1)


def yearly_story(yr: dict, st: pdf.Styles, fn: str, *, toc: bool = False) -> list:
    title = f"年度汇总 Yearly summary {yr['year']}"
    story: list = [pdf.heading(title, st.title, title if toc else None),
                   pdf.Paragraph(f"期间 Period {pdf.esc(yr['from'])} – {pdf.esc(yr['until'])}. 金额单位 元 Amounts in "
                                 "yuan.", st.body),
                   pdf.Paragraph("按月 By month", st.h1),
                   _fig_table(yr["by_month"] + [{**yr["total"], "month": "合计 Total"}], "月份 Month",
                              lambda r: r["month"], fn),
                   pdf.Paragraph("按项目和银行 By project and bank", st.h1),
                   _fig_table(yr["by_project_bank"], "银行/项目 Bank/project",
                              lambda r: f"{r['bank_id']} / {r['project_code']}", fn),
                   pdf.Paragraph("按区划 By region", st.h1),
                   _fig_table(yr["by_region"], "区划 Region", lambda r: r["region"], fn),
                   pdf.Paragraph("一月核对 The January check (article 26): the year against the bank's yearly "
                                 f"statement, due by {yr['january_check']['due_by']}", st.h1)]
    for bank, c in yr["january_check"]["banks"].items():
        story.append(pdf.Paragraph(
            f"银行 {pdf.esc(bank)}: " + ("年度对账单 yearly statement" if c["yearly_statement"] else
                                          "无年度对账单 no yearly statement")
            + f"; 差异 differences {c['differences']}; " + ("核对一致 agrees" if c["ok"] else "待处理 NOT agreed"),
            st.body))
    story += reconciliation_flowables(yr["reconciliation"], st, fn)
    return story


def yearly_pdf(yr: dict, *, font_file: str = "") -> bytes:
    fn = pdf.font(font_file)
    return pdf.render(yearly_story(yr, pdf.Styles(fn), fn), title=f"年度汇总 {yr['year']}", fontname=fn,
                      header=f"年度汇总 Yearly summary {yr['year']}")
