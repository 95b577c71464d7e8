"""protocols/iso_feed.py: the report feed page parsed as it arrives, each document capped on its own."""

from __future__ import annotations

import json

import pytest

from protocols.iso_feed import HEAD_BYTES, FeedError, FeedPage

DOC = '<D a="1">\n名字 é \U0001F600 \\ "q"</D>'


def _feed(raw: bytes, chunk: int, cap: int = 1000, **kw) -> FeedPage:
    page = FeedPage(cap, **kw)
    for i in range(0, len(raw), chunk):
        page.feed(raw[i:i + chunk])
    return page


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_documents_come_out_whole_however_the_page_is_cut(ensure_ascii, chunk, decode):
    """Cut at every byte (inside escapes, surrogate pairs and UTF-8 characters), a page gives
    each document exactly as json.loads would, and the next cursor; one over the cap is
    refused with its cursor, its size as it arrived and only its head kept. The same when the
    page leaves its documents undecoded (decode=False, as the HTTPS client takes it on the
    reactor thread) and each is decoded after (FeedReport.decode(), on a thread)."""
    page = {"reports": [{"cursor": "1", "type": "pain.002.001.11", "document": DOC, "extra": [1, {"x": "y"}]},
                        {"type": "camt.054.001.08", "document": "x" * 5000, "cursor": "2"}],
            "next": "2", "pad": "z" * 10_000}
    raw = json.dumps(page, ensure_ascii=ensure_ascii).encode()
    reports, nxt = _feed(raw, chunk, decode=decode).close()
    assert [r.undecoded for r in reports] == [not decode, False]
    reports = [r.decode() for r in reports]
    assert nxt == "2"
    assert reports[0].document == DOC.encode() and reports[0].refused is None
    big = reports[1]
    assert (big.cursor, big.type, big.document, big.size) == ("2", "camt.054.001.08", None, 5000)
    assert "over max_document_bytes 1000" in big.refused and len(big.raw) <= HEAD_BYTES


def test_a_document_over_the_cap_is_not_held():
    """The cap holds while reading: a 3 MB document against a 1 kB cap never holds more than
    its head, and is refused."""
    raw = json.dumps({"reports": [{"cursor": "9", "type": "t", "document": "<a>" + "x" * 3_000_000}],
                      "next": "9"}).encode()
    page = FeedPage(1000)
    for i in range(0, len(raw), 65536):
        page.feed(raw[i:i + 65536])
        assert page._string is None or len(page._string) <= HEAD_BYTES
    (r,), _ = page.close()
    assert r.refused and r.size == 3_000_003


@pytest.mark.parametrize("escaped, why", [
    (b"ab\\ud800cd", "lone surrogate U+D800"),
    (b"ab\\udc00cd", "lone surrogate U+DC00"),
    (b"ab\xffcd", "not UTF-8"),
    (b"ab\\xcd", "not valid JSON"),
])
@pytest.mark.parametrize("decode", [True, False])
def test_a_document_that_does_not_decode_is_refused_alone(escaped, why, decode):
    """A lone surrogate, bytes that are not UTF-8, a bad escape: that document is refused
    with its raw string kept as evidence; the page and its other documents stand."""
    raw = (b'{"reports": [{"cursor": "1", "type": "t", "document": "' + escaped + b'"}, '
           b'{"cursor": "2", "type": "t", "document": "<ok/>"}], "next": "2"}')
    reports, nxt = _feed(raw, 3, decode=decode).close()
    reports = [r.decode() for r in reports]
    assert nxt == "2" and reports[0].document is None and why in reports[0].refused
    assert reports[0].raw == escaped and reports[1].document == b"<ok/>"


def test_a_surrogate_pair_is_one_character():
    """An escaped surrogate pair is the one character it stands for, not two lone halves."""
    raw = b'{"reports": [{"document": "\\ud83d\\ude00", "cursor": "1", "type": "t"}], "next": null}'
    (r,), nxt = _feed(raw, 1).close()
    assert r.document == "\U0001F600".encode() and nxt is None


@pytest.mark.parametrize("bad", [
    b"[]", b'"x"', b'{"reports": {}, "next": "1"}', b'{"reports": [1], "next": "1"}',
    b'{"reports": [], "next": "1"', b'{"reports": [{"cursor": "1"}], "next": "1"}',
    b'{"reports": [], "next": 5}', b'{"next": "1"}', b'{"reports": []}',
    b'{"reports": [], "next": "1"} x', b'{"reports": [{"cursor": "' + b"c" * 5000 + b'"}], "next": "1"}',
])
def test_a_page_not_in_the_feed_shape_is_refused(bad):
    """Anything but {"reports": [{cursor, type, document}...], "next"} is a FeedError."""
    with pytest.raises(FeedError):
        _feed(bad, 4).close()


def test_a_page_stops_once_it_holds_enough():
    """With hold_bytes reached the page is full: later reports are not taken."""
    raw = json.dumps({"reports": [{"cursor": str(i), "type": "t", "document": "d" * 100} for i in range(5)],
                      "next": "4"}).encode()
    page = _feed(raw, 1 << 20, hold_bytes=150)
    assert page.full and [r.cursor for r in page.reports] == ["0", "1"]
