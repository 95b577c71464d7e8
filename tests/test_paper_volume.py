"""The year's bound volume (装订成册, article 25): cover, contents, twelve months, the yearly summary, A4.

Read back with pdftotext page by page and pdfinfo: every page carries "第 n 页 共 m 页"
with the right n and m, the contents name the page each report really starts on, and
the figures are the reports' own.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from gateway import db as dbmod
from gateway import reports
from gateway.journal import Journal
from gateway.paper import figures, volume
from tests import paper_seed
from tests.test_paper_sheets import need_tool


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


def test_bound_volume_pages_contents_and_figures(engine, tmp_path):
    """The volume's pages are A4 and numbered n of m; the contents list the twelve monthly reports and
    the yearly summary at the pages where their titles are; November's page shows its figures; the
    reports read from one pass over the items' states equal those read month by month."""
    with engine.begin() as conn:
        paper_seed.seed(conn, Journal(str(tmp_path / "archive")))
    with engine.connect() as conn:
        data = volume.bound_volume(conn, 2026, bank_names={"CNB01": "示范代发银行"}, produced_at="2027-01-05")
        states = reports.order_states(conn)
        for m in (1, 11, 12):
            assert figures.month_detail(conn, 2026, m, states=states) == figures.month_detail(conn, 2026, m)
            assert figures.month_detail(conn, 2026, m, "CNB01", "NY01", states=states) == \
                figures.month_detail(conn, 2026, m, "CNB01", "NY01")
        assert reports.yearly(conn, 2026, states=states) == reports.yearly(conn, 2026)
    pdf = tmp_path / "volume.pdf"
    pdf.write_bytes(data)
    info = subprocess.run([need_tool("pdfinfo"), str(pdf)], capture_output=True, text=True, check=True).stdout
    n_pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    assert "(A4)" in info and n_pages >= 15
    text = subprocess.run([need_tool("pdftotext"), "-layout", str(pdf), "-"], capture_output=True,
                          check=True).stdout.decode()
    pages = [re.sub(r"[ \t]+", " ", p) for p in text.split("\f")[:n_pages]]
    for n, page in enumerate(pages, 1):
        assert f"第 {n} 页 共 {n_pages} 页" in page, n
    assert "2026 年度报表" in pages[0] and "目录 Contents" in pages[1]
    toc = dict(re.findall(r"((?:月度报表 Monthly report 2026-\d\d)|(?:年度汇总 Yearly summary 2026))[ .]+(\d+)", pages[1]))
    assert len(toc) == 13
    for title, page in toc.items():
        assert title in pages[int(page) - 1], title
    nov = pages[int(toc["月度报表 Monthly report 2026-11"]) - 1]
    assert "支付 Items paid 5 38.00" in nov and "拨入 Funded (orders) 2 45.00" in nov
    year = "".join(pages[int(toc["年度汇总 Yearly summary 2026"]) - 1:])
    assert "2026-11 45.00 38.00 5.00 2.00 2.00" in year and "一月核对" in year
