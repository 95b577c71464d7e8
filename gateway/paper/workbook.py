"""The monthly report as an Excel workbook (openpyxl): what finance staff open, sort and total themselves.

Sheets: 汇总 Summary (one row per bank and project, from report.monthly, totals by
SUM formulas); one sheet per bank and project listing its orders with the month's
figures and a totals row of SUM formulas, which must come to the summary's figures;
差异 Differences (the reconciliation with each bank's statement, every difference
on its own line); 台账 Ledger (the month's movements with running balances).
Amounts are yuan written as exact decimals (Decimal(fen) / 100, so the cell holds
"12.34", never a float's approximation) formatted #,##0.00; Excel recomputes the
SUM formulas on opening, and the values it gets are the ones written beside them
in the report. Workbooks are written with fixed document properties, so the same
report gives the same file content (zip timestamps aside).
"""

from __future__ import annotations

import datetime
import io
import json
import re
from decimal import Decimal
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

YUAN = "#,##0.00"
BOLD = Font(bold=True)
HEAD_FILL = PatternFill("solid", fgColor="DDDDDD")
_BAD = re.compile(r"[\[\]:*?/\\]")


def yuan(fen: int) -> Decimal:
    """Exact yuan from integer fen."""
    return Decimal(int(fen)) / 100


def sheet_name(text: str, taken: set[str]) -> str:
    """A legal, unique Excel sheet name (31 characters, none of []:*?/\\)."""
    base = _BAD.sub("_", text)[:31] or "sheet"
    name, n = base, 2
    while name.lower() in taken:
        suffix = f"~{n}"
        name, n = base[:31 - len(suffix)] + suffix, n + 1
    taken.add(name.lower())
    return name


# (title, figure key) pairs: each becomes a count column and an amount column.
ORDER_COLUMNS = [("拨入 Funded", "funded"), ("支付 Paid", "paid"), ("退回 Refunded", "refunded"),
                 ("失败 Failed", "failed"), ("退票 Returned", "late_returned"), ("在途 Outstanding", "outstanding")]


def _summary_values(f: dict) -> dict[str, dict[str, int]]:
    return {"funded": f["orders"]["funded"], "paid": f["items"]["paid"], "refunded": f["items"]["refunded"],
            "failed": {"count": f["items"]["failed"]["count"], "amount": f["items"]["failed"]["amount"]},
            "late_returned": {"count": f["late_returned"]["count"], "amount": f["late_returned"]["amount"]},
            "outstanding": {"count": f["outstanding"]["count"], "amount": f["outstanding"]["amount"]}}


def _header(ws, row: int, first: list[str]) -> None:
    titles = list(first)
    for t, _ in ORDER_COLUMNS:
        titles += [f"{t} 笔数 count", f"{t} 金额 yuan"]
    for c, t in enumerate(titles, 1):
        cell = ws.cell(row=row, column=c, value=t)
        cell.font, cell.fill = BOLD, HEAD_FILL
        cell.alignment = Alignment(wrap_text=True, vertical="center")


def _figure_cells(ws, row: int, col: int, values: dict[str, dict[str, int]]) -> None:
    for _, k in ORDER_COLUMNS:
        ws.cell(row=row, column=col, value=values[k]["count"])
        c = ws.cell(row=row, column=col + 1, value=yuan(values[k]["amount"]))
        c.number_format = YUAN
        col += 2


def _totals(ws, row: int, first_data: int, last_data: int, col: int, label_col: int = 1) -> None:
    ws.cell(row=row, column=label_col, value="合计 Total").font = BOLD
    for i in range(len(ORDER_COLUMNS) * 2):
        letter = get_column_letter(col + i)
        c = ws.cell(row=row, column=col + i, value=f"=SUM({letter}{first_data}:{letter}{last_data})"
                    if last_data >= first_data else 0)
        c.font = BOLD
        if i % 2:
            c.number_format = YUAN


def monthly_workbook(detail: dict[str, Any], *, bank_names: dict[str, str] | None = None,
                     generated_at: str = "") -> bytes:
    """The workbook of `figures.month_detail(...)` as XLSX bytes."""
    rep = detail["report"]
    names = bank_names or {}
    wb = Workbook()
    wb.properties.creator = "subsidy bank gateway"
    fixed = datetime.datetime(rep["year"], rep["month"], 1)
    wb.properties.created = wb.properties.modified = fixed
    taken: set[str] = set()
    ws = wb.active
    ws.title = sheet_name("汇总 Summary", taken)
    ws["A1"] = f"月度报表 Monthly report {rep['year']}-{rep['month']:02d}"
    ws["A1"].font = Font(bold=True, size=14)
    ws["A2"] = f"期间 Period {rep['from']} – {rep['until']}; 生成 generated {generated_at}"
    _header(ws, 4, ["银行 Bank", "项目 Project", "项目名称 Project name", "批次 Batches done"])
    r = 5
    for f in rep["figures"]:
        ws.cell(row=r, column=1, value=f"{names.get(f['bank_id'], '')} {f['bank_id']}".strip())
        ws.cell(row=r, column=2, value=f["project_code"])
        ws.cell(row=r, column=3, value=f["project_name"])
        ws.cell(row=r, column=4, value=f["batches"]["done"])
        _figure_cells(ws, r, 5, _summary_values(f))
        r += 1
    _totals(ws, r, 5, r - 1, 5)
    ws.cell(row=r + 2, column=1, value="守恒 Conservation (rule 1)").font = BOLD
    cons = rep["conservation"]
    ws.cell(row=r + 2, column=2, value=f"{cons['orders_checked']} orders checked, "
                                       + ("ok 平衡" if cons["ok"] else f"{cons['broken_total']} BROKEN 不平衡"))
    ws.column_dimensions["A"].width = 22
    ws.column_dimensions["C"].width = 20

    for (bank, project), rows in sorted(detail["orders"].items()):
        ps = wb.create_sheet(sheet_name(f"{bank} {project}", taken))
        fig = next((f for f in rep["figures"] if (f["bank_id"], f["project_code"]) == (bank, project)), None)
        ps["A1"] = (f"{names.get(bank, '')} {bank} · 项目 {project} "
                    f"{fig['project_name'] if fig else ''} · {rep['year']}-{rep['month']:02d}")
        ps["A1"].font = Font(bold=True, size=12)
        _header(ps, 3, ["发放单号 Order", "区划 Region", "预算单位 Budget unit"])
        r = 4
        for o in rows:
            ps.cell(row=r, column=1, value=o["order_no"])
            ps.cell(row=r, column=2, value=o["region"])
            ps.cell(row=r, column=3, value=o["budget_unit"])
            _figure_cells(ps, r, 4, o)
            r += 1
        _totals(ps, r, 4, r - 1, 4)
        ps.column_dimensions["A"].width = 24
        ps.column_dimensions["C"].width = 22

    ds = wb.create_sheet(sheet_name("差异 Differences", taken))
    ds["A1"] = f"对账差异 Differences against the bank statements {rep['year']}-{rep['month']:02d}"
    ds["A1"].font = Font(bold=True, size=12)
    heads = ["银行 Bank", "类别 Kind", "说明 Label", "行 Line", "编号 Reference", "发放单号 Order",
             "网关 Gateway", "银行 Bank statement"]
    for c, t in enumerate(heads, 1):
        cell = ds.cell(row=3, column=c, value=t)
        cell.font, cell.fill = BOLD, HEAD_FILL
    r = 4
    for bank, rec in rep["reconciliation"].items():
        st = rec["statement"]
        ds.cell(row=r, column=1, value=bank)
        ds.cell(row=r, column=2, value="statement 对账单")
        ds.cell(row=r, column=3, value=(f"{', '.join(st['periods'])} ({st['coverage']}), fetched {st['fetched_at']}, "
                                        f"{rec['matched']} matched 相符, {rec['differences_total']} differences 差异")
                if st else rec.get("note", "no statement"))
        r += 1
        for d in rec["differences"]:
            for c, v in enumerate([bank, d["kind"], d["label"], d["line"], d["reference"], d["order_no"],
                                   json.dumps(d["gateway"], ensure_ascii=False) if d["gateway"] is not None else "",
                                   json.dumps(d["bank"], ensure_ascii=False) if d["bank"] is not None else ""], 1):
                ds.cell(row=r, column=c, value=v)
            r += 1
        if rec["differences_total"] > len(rec["differences"]):
            ds.cell(row=r, column=3, value=f"... and {rec['differences_total'] - len(rec['differences'])} more")
            r += 1
    if not rep["reconciliation"]:
        ds.cell(row=r, column=3, value="无对账单 no statement and no figures this month")
    for col, w in zip("ABCDEFGH", (12, 16, 50, 8, 22, 18, 40, 40)):
        ds.column_dimensions[col].width = w

    ls = wb.create_sheet(sheet_name("台账 Ledger", taken))
    ls["A1"] = f"台账 Ledger {rep['year']}-{rep['month']:02d}: movements and running balance per project and bank"
    ls["A1"].font = Font(bold=True, size=12)
    heads = ["银行 Bank", "项目 Project", "日期 Date", "事项 Movement", "发放单号 Order", "编号 Reference",
             "笔数 Count", "金额 Amount", "变动 Effect", "余额 Balance"]
    for c, t in enumerate(heads, 1):
        cell = ls.cell(row=3, column=c, value=t)
        cell.font, cell.fill = BOLD, HEAD_FILL
    r = 4
    for lg in detail["ledgers"]:
        ls.cell(row=r, column=1, value=lg["bank_id"])
        ls.cell(row=r, column=2, value=lg["project_code"])
        ls.cell(row=r, column=4, value="期初 Opening balance")
        c = ls.cell(row=r, column=10, value=yuan(lg["opening"]))
        c.number_format = YUAN
        r += 1
        for m in lg["movements"]:
            for col, v in enumerate([m["bank_id"], m["project_code"], m["date"], m["label"], m["order_no"],
                                     m["reference"], m["count"], yuan(m["amount"]), yuan(m["effect"]),
                                     yuan(m["balance"])], 1):
                cell = ls.cell(row=r, column=col, value=v)
                if col >= 8:
                    cell.number_format = YUAN
            r += 1
    for col, w in zip("ABCDEFGHIJ", (10, 10, 12, 22, 18, 20, 8, 14, 14, 14)):
        ls.column_dimensions[col].width = w
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
