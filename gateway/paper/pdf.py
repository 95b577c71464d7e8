"""PDF typesetting shared by every printed document: the font, yuan amounts, A4 pages numbered "第 n 页 共 m 页".

ReportLab with its built-in CID font STSong-Light by default: nothing to embed or
download, so a sheet renders the same on any machine and stays small; a PDF
reader supplies the glyphs (Acrobat, Foxit and WPS ship Adobe-GB1 fonts; poppler
uses any installed CJK font through fontconfig). A site that wants the glyphs
inside the file names a TrueType font in `[paper] font_file` (e.g. Debian's
fonts-wqy-zenhei), which is embedded as a subset. Output is byte-for-byte
repeatable for the same input (ReportLab's invariant mode): no creation time or
random document id, so a sealed sheet can be rendered again and compared.
"""

from __future__ import annotations

import io
from typing import Any, Iterable

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas
from reportlab.platypus import (BaseDocTemplate, Frame, PageBreak, PageTemplate, Paragraph, Spacer, Table,
                                TableStyle)

BUILTIN_FONT = "STSong-Light"
_registered: dict[str, str] = {}


def font(font_file: str = "") -> str:
    """Register the font once per process and return its name."""
    key = font_file or BUILTIN_FONT
    if key not in _registered:
        if font_file:
            from reportlab.pdfbase.ttfonts import TTFont
            name = "PaperFont"
            pdfmetrics.registerFont(TTFont(name, font_file, subfontIndex=0))
        else:
            name = BUILTIN_FONT
            pdfmetrics.registerFont(UnicodeCIDFont(BUILTIN_FONT))
        _registered[key] = name
    return _registered[key]


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals and thousands separators, exact: -123456 -> '-1,234.56'."""
    if fen is None:
        return ""
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise TypeError(f"an amount is an int of fen, got {type(fen).__name__} {fen!r}")
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


class Styles:
    def __init__(self, name: str):
        self.title = ParagraphStyle("title", fontName=name, fontSize=16, leading=22, alignment=1,
                                    spaceAfter=4 * mm)
        self.h1 = ParagraphStyle("h1", fontName=name, fontSize=13, leading=18, spaceBefore=3 * mm,
                                 spaceAfter=2 * mm)
        self.h2 = ParagraphStyle("h2", fontName=name, fontSize=11, leading=15, spaceBefore=2 * mm,
                                 spaceAfter=1 * mm)
        self.body = ParagraphStyle("body", fontName=name, fontSize=9, leading=13)
        self.small = ParagraphStyle("small", fontName=name, fontSize=7.5, leading=10)
        self.cell = ParagraphStyle("cell", fontName=name, fontSize=8, leading=10)
        self.toc = ParagraphStyle("toc", fontName=name, fontSize=10, leading=16)


def esc(text: Any) -> str:
    """Text for a Paragraph: its markup characters escaped."""
    return (str(text if text is not None else "").replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def table(rows: list[list[Any]], widths: list[float], fontname: str, *, header_rows: int = 1,
          numeric_from: int | None = None, bold_last: bool = False) -> Table:
    """A ruled table; columns from `numeric_from` on are right-aligned (amounts and counts)."""
    style = [("FONT", (0, 0), (-1, -1), fontname, 8), ("GRID", (0, 0), (-1, -1), 0.4, colors.black),
             ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("BACKGROUND", (0, 0), (-1, header_rows - 1),
                                                      colors.Color(0.9, 0.9, 0.9)),
             ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]
    if numeric_from is not None:
        style.append(("ALIGN", (numeric_from, header_rows), (-1, -1), "RIGHT"))
    if bold_last:
        style.append(("BACKGROUND", (0, -1), (-1, -1), colors.Color(0.95, 0.95, 0.95)))
    t = Table(rows, colWidths=widths, repeatRows=header_rows)
    t.setStyle(TableStyle(style))
    return t


def _numbered_canvas(fontname: str, header: str):
    """A canvas that writes "第 n 页 共 m 页" on each page once it knows m (at save)."""

    class NumberedCanvas(canvas.Canvas):
        def __init__(self, *args, **kw):
            kw.setdefault("invariant", 1)
            super().__init__(*args, **kw)
            self._pages: list[dict] = []

        def showPage(self):  # noqa: N802 (ReportLab's name)
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._pages)
            for n, state in enumerate(self._pages, 1):
                self.__dict__.update(state)
                self.setFont(fontname, 8)
                self.drawCentredString(A4[0] / 2, 10 * mm, f"第 {n} 页 共 {total} 页  (page {n} of {total})")
                if header:
                    self.drawString(18 * mm, A4[1] - 10 * mm, header)
                super().showPage()
            super().save()
    return NumberedCanvas


class _Doc(BaseDocTemplate):
    def __init__(self, buf, title: str, toc_style: ParagraphStyle | None, **kw):
        super().__init__(buf, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
                         bottomMargin=18 * mm, title=title, author="subsidy bank gateway", **kw)
        frame = Frame(self.leftMargin, self.bottomMargin, self.width, self.height, id="f")
        self.addPageTemplates([PageTemplate(id="p", frames=[frame])])
        self.toc_style = toc_style

    def afterFlowable(self, flowable):  # noqa: N802 (ReportLab's name)
        if getattr(flowable, "toc_entry", None):
            self.notify("TOCEntry", (0, flowable.toc_entry, self.page))


def heading(text: str, style: ParagraphStyle, toc_entry: str | None = None) -> Paragraph:
    """A heading; with toc_entry it is listed in the table of contents."""
    p = Paragraph(esc(text), style)
    p.toc_entry = toc_entry
    return p


def render(story: Iterable, *, title: str, fontname: str, header: str = "", toc: bool = False) -> bytes:
    """The story typeset on A4 pages; with toc, a table of contents flowable in it is filled (two passes)."""
    buf = io.BytesIO()
    doc = _Doc(buf, title, None)
    maker = _numbered_canvas(fontname, header)
    story = list(story)
    if toc:
        doc.multiBuild(story, canvasmaker=maker)
    else:
        doc.build(story, canvasmaker=maker)
    return buf.getvalue()


__all__ = ["A4", "BUILTIN_FONT", "PageBreak", "Paragraph", "Spacer", "Styles", "esc", "font", "heading",
           "mm", "render", "table", "yuan"]
