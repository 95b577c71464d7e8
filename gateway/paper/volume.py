"""The year's bound volume (年终打印装订成册, article 25): one A4 PDF to print and bind.

A cover, a table of contents, the twelve monthly reports (each starting on a new
page) and the yearly summary with the January check, every page numbered
"第 n 页 共 m 页". The monthly and yearly pages are the same stories the single
reports print (`printed`). ReportLab lays it out twice (`multiBuild`) so the
table of contents carries the final page numbers.
"""

from __future__ import annotations

from reportlab.platypus.tableofcontents import TableOfContents

from gateway import reports
from gateway.paper import figures, ledger, pdf, printed


def bound_volume(conn, year: int, *, bank_names: dict | None = None, font_file: str = "",  # noqa: ANN001
                 produced_at: str = "") -> bytes:
    fn = pdf.font(font_file)
    st = pdf.Styles(fn)
    names = bank_names or {}
    story: list = [pdf.Spacer(1, 60 * pdf.mm),
                   pdf.Paragraph(f"惠民惠农财政补贴资金“一卡通” {year} 年度报表", st.title),
                   pdf.Paragraph(f"Subsidy one-card payments: the reports of {year}", st.title),
                   pdf.Spacer(1, 20 * pdf.mm),
                   pdf.Paragraph("装订本 Bound volume: 月度报表 twelve monthly reports, 年度汇总 the yearly summary "
                                 "and 一月核对 the January check (articles 25-26)", st.body)]
    if names:
        story.append(pdf.Paragraph("代发银行 Agent banks: " + pdf.esc(", ".join(f"{v} ({k})" for k, v in
                                                                             sorted(names.items()))), st.body))
    if produced_at:
        story.append(pdf.Paragraph(f"生成 Produced {pdf.esc(produced_at)} by the subsidy bank gateway", st.body))
    story.append(pdf.PageBreak())
    story.append(pdf.Paragraph("目录 Contents", st.title))
    toc = TableOfContents()
    toc.levelStyles = [st.toc]
    toc.dotsMinLevel = 0
    story += [toc, pdf.PageBreak()]
    # The items' states now and the ledgers are read once for the twelve months.
    states = reports.order_states(conn)
    ledgers = ledger.ledger(conn)
    for month in range(1, 13):
        detail = figures.month_detail(conn, year, month, states=states, ledgers=ledgers)
        story += printed.monthly_story(detail, st, fn, bank_names=names, toc=True)
        story.append(pdf.PageBreak())
    story += printed.yearly_story(reports.yearly(conn, year, states=states), st, fn, toc=True)
    return pdf.render(story, title=f"{year} 年度报表 装订本", fontname=fn, header=f"{year} 年度报表 Bound volume",
                      toc=True)
