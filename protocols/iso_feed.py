"""The ISO 20022 report feed page (`GET /reports`), parsed as it arrives, sans-IO.

A page is `{"reports": [{"cursor", "type", "document"}, ...], "next": cursor}`
with each XML document as a JSON string. Parsing the page whole (json.loads)
holds every document at once, several times over, before anything can be
judged: one 500 MB report took the daemon past 4 GB. Here the page is fed
in chunks as the network delivers them; each document string is collected only
up to `max_document_bytes` (counted as it arrives, in its JSON form) and past
that skipped to its end without being kept, so a report too large, or one whose
string does not decode (a lone surrogate `\\ud800`, bytes that are not UTF-8, a
bad escape), is refused on its own and its cursor is still learnt: the feed can
move past it. Once the documents held reach `hold_bytes`, the page stops being
taken after the current report (`full`): the caller drops the connection and
asks again from the last cursor taken.

Only the shape above is understood; anything else (an unclosed structure, a
field of the wrong type, a field longer than `max_field_bytes`) makes the page
as a whole unusable (FeedError), which the caller alarms.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# A run of complete string content: plain bytes, or backslash + one byte. Stops at the
# closing quote, at the buffer's end, or at a backslash that is the buffer's last byte.
_STRING_RUN = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
_SCALAR = re.compile(rb'-?[0-9][0-9.eE+-]*|true|false|null')
_WS = b" \t\r\n"
HEAD_BYTES = 64 * 1024     # kept of a document refused for its size, for the journal


class FeedError(Exception):
    """The page is not a report feed page (its shape, or a field too long)."""


@dataclass
class FeedReport:
    """One report of the page. `document` is the XML (UTF-8) when the string decoded and
    fits the cap, else None and `refused` says why; `raw` is the string as it arrived
    (JSON-escaped; for a document over the cap, its first HEAD_BYTES only); `size` the
    string's length as it arrived."""

    cursor: str | None = None
    type: str | None = None
    document: bytes | None = None
    raw: bytes = b""
    size: int = 0
    refused: str | None = None
    undecoded: bool = False      # `raw` holds the document string, not decoded yet (decode())

    def decode(self) -> "FeedReport":
        """Decode a document left undecoded by FeedPage(decode=False): work that grows with
        the document, for a worker thread, not the reactor that fed the page."""
        if self.undecoded:
            self.document, self.refused = decode_document(self.raw)
            if self.document is not None:
                self.raw = b""      # the document itself is the evidence
            self.undecoded = False
        return self


def decode_document(raw: bytes) -> tuple[bytes | None, str | None]:
    """A JSON string's content as UTF-8 bytes, or (None, why) when it cannot be one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"the document is not UTF-8 (byte {e.start} of the string)"
    try:
        value = json.JSONDecoder(strict=False).decode('"' + text + '"')
    except ValueError as e:
        return None, f"the document string is not valid JSON: {e}"
    try:
        return value.encode("utf-8"), None
    except UnicodeEncodeError as e:
        return None, (f"the document holds a lone surrogate U+{ord(value[e.start]):04X} "
                      f"(character {e.start}): not a Unicode text")


class FeedPage:
    """Feed the page's bytes with `feed()`, then `close()`; `reports` fills as they complete."""

    def __init__(self, max_document_bytes: int, *, hold_bytes: int | None = None,
                 max_field_bytes: int = 4096, decode: bool = True) -> None:
        self.max_document = max_document_bytes
        self.decode = decode         # False: documents stay undecoded (FeedReport.decode())
        self.hold = hold_bytes if hold_bytes is not None else max_document_bytes
        self.max_field = max_field_bytes
        self.reports: list[FeedReport] = []
        self.next: str | None = None
        self.has_next = False
        self.full = False            # holding enough: stop after the current report
        self.held = 0
        self.received = 0
        self._buf = b""
        # Container stack: each entry [kind, key or index, expecting], kind '{' or '['.
        self._stack: list[list] = []
        self._expect = "value"       # value | key | colon | comma_or_end | done
        self._string: bytearray | None = None   # collecting a string (None: not in one)
        self._string_size = 0
        self._string_role = ""       # key | cursor | type | document | next | other
        self._report: FeedReport | None = None
        self._skipping = False       # a document over the cap: skipped to its end
        self._saw_reports = False

    # --- where we are ---------------------------------------------------------------

    def _path(self) -> tuple:
        return tuple(e[1] for e in self._stack)

    def _role(self) -> str:
        """What the string value starting here is."""
        p = self._path()
        if p == ("next",):
            return "next"
        if len(p) == 3 and p[0] == "reports" and isinstance(p[1], int) and p[2] in ("cursor", "type", "document"):
            return p[2]
        return "other"

    # --- input ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.full:
            return
        self.received += len(data)
        self._buf += data
        pos = 0
        buf = self._buf
        n = len(buf)
        while pos < n and not self.full:
            if self._string is not None or self._skipping:
                pos = self._in_string(buf, pos)
                if pos < 0:     # needs more bytes
                    pos = -pos - 1
                    break
                continue
            c = buf[pos]
            if c in _WS:
                pos += 1
                continue
            if self._expect == "done":
                raise FeedError(f"bytes after the page's end at {self.received - n + pos}")
            if c == 0x22:  # "
                pos += 1
                self._start_string()
                continue
            if self._expect == "colon":
                if c != 0x3A:
                    raise FeedError("':' expected after a key")
                self._expect = "value"
                pos += 1
                continue
            if self._expect == "comma_or_end":
                top = self._stack[-1] if self._stack else None
                if c == 0x2C and top is not None:
                    if top[0] == "[":
                        top[1] += 1
                        self._expect = "value"
                    else:
                        self._expect = "key"
                    pos += 1
                    continue
                if top is not None and c == (0x7D if top[0] == "{" else 0x5D):
                    self._close()
                    pos += 1
                    continue
                raise FeedError("',' or the end of a structure expected")
            if self._expect == "key":
                if c == 0x7D and self._stack and self._stack[-1][1] is None:   # {}
                    self._close()
                    pos += 1
                    continue
                raise FeedError("a key expected")
            # a value
            if c == 0x7B:   # {
                self._begin("{")
                self._expect = "key"
                pos += 1
                continue
            if c == 0x5B:   # [
                self._begin("[")
                pos += 1
                continue
            if c == 0x5D and self._stack and self._stack[-1][0] == "[" and self._stack[-1][2] == "empty":
                self._close()
                pos += 1
                continue
            m = _SCALAR.match(buf, pos)
            if m is None or (m.end() == n):
                rest = buf[pos:]
                if m is not None or any(w.startswith(rest) for w in (b"true", b"false", b"null")):
                    break           # the token may go on in the next chunk
                raise FeedError(f"unexpected byte {bytes([c])!r}")
            self._scalar(m.group())
            pos = m.end()
        self._buf = buf[pos:]
        if len(self._buf) > max(self.max_field, 64) + 16 and self._string is None and not self._skipping:
            raise FeedError("a token too long")

    def close(self) -> tuple[list[FeedReport], str | None]:
        """The page is complete: (reports, next cursor). FeedError if it is not a whole page."""
        if self._expect != "done" or self._string is not None or self._skipping or self._buf.strip():
            raise FeedError("the page ends before its structure is closed")
        if not self._saw_reports or not self.has_next:
            raise FeedError("the page lacks a reports list and a next cursor")
        return self.reports, self.next

    # --- structure ----------------------------------------------------------------------

    def _begin(self, kind: str) -> None:
        depth = len(self._stack)
        if depth == 0 and kind != "{":
            raise FeedError("the page is not a JSON object")
        if self._path() == ("reports",):
            if kind != "[":
                raise FeedError("reports is not a list")
            self._saw_reports = True
        if len(self._path()) == 2 and self._path()[0] == "reports":
            if kind != "{":
                raise FeedError(f"reports[{self._path()[1]}] is not an object")
            self._report = FeedReport()
        if depth >= 16:
            raise FeedError("nested too deep")
        if kind == "[":
            self._stack.append(["[", 0, "empty"])
            self._expect = "value"
        else:
            self._stack.append(["{", None, "key"])

    def _close(self) -> None:
        kind, _key, _ = self._stack.pop()
        p = self._path()
        if kind == "{" and len(p) == 2 and p[0] == "reports" and self._report is not None:
            r = self._report
            self._report = None
            if r.cursor is None or r.type is None or (r.document is None and r.refused is None
                                                      and not r.undecoded):
                raise FeedError(f"reports[{p[1]}] lacks cursor, type or document")
            self.reports.append(r)
            if r.document is not None:
                self.held += len(r.document)
            elif r.undecoded:
                self.held += len(r.raw)
            if self.held >= self.hold:
                self.full = True
        self._after_value()

    def _not_a_report(self) -> None:
        p = self._path()
        if len(p) == 2 and p[0] == "reports":
            raise FeedError(f"reports[{p[1]}] is not an object")

    def _after_value(self) -> None:
        if not self._stack:
            self._expect = "done"
            return
        top = self._stack[-1]
        top[2] = "more"
        self._expect = "comma_or_end"

    def _scalar(self, token: bytes) -> None:
        if not self._stack:
            raise FeedError("the page is not a JSON object")
        self._not_a_report()
        role = self._role()
        if role == "next" and token == b"null":
            self.next, self.has_next = None, True
        elif role != "other" or self._path() == ("reports",):
            raise FeedError(f"{'.'.join(map(str, self._path()))} must be a string")
        self._after_value()

    # --- strings --------------------------------------------------------------------------

    def _start_string(self) -> None:
        if self._expect == "key":
            self._string_role = "key"
        elif self._expect == "value":
            if not self._stack:
                raise FeedError("the page is not a JSON object")
            self._string_role = self._role()
            if self._path() == ("reports",):
                raise FeedError("reports is not a list")
            self._not_a_report()
        else:
            raise FeedError("a string where none may be")
        self._string = bytearray()
        self._string_size = 0
        self._skipping = False

    def _limit(self) -> int:
        return self.max_document if self._string_role == "document" else self.max_field

    def _in_string(self, buf: bytes, pos: int) -> int:
        """Consume string content from pos; the position after it, or -(pos+1) for more input."""
        m = _STRING_RUN.match(buf, pos)
        end = m.end()
        run = end - pos
        self._string_size += run
        if not self._skipping:
            if self._string_role == "other":
                self._skipping = True           # a field we do not read: never kept
            elif self._string_size > self._limit():
                if self._string_role != "document":
                    raise FeedError(f"a {self._string_role} longer than {self.max_field} bytes")
                # Too large: keep the head for the journal, drop the rest as it comes.
                head = bytes(self._string[:HEAD_BYTES])
                if len(head) < HEAD_BYTES:
                    head += buf[pos:pos + HEAD_BYTES - len(head)]
                self._string = bytearray(head)
                self._skipping = True
            else:
                self._string += buf[pos:end]
        if end == len(buf) or buf[end] == 0x5C:   # more to come (or a backslash cut at the end)
            return -(end + 1)
        # buf[end] is the closing quote
        self._end_string()
        return end + 1

    def _end_string(self) -> None:
        raw = bytes(self._string)
        size = self._string_size
        skipped = self._skipping
        self._string = None
        self._skipping = False
        role = self._string_role
        if role == "key":
            key, why = decode_document(raw)
            if key is None:
                raise FeedError(f"a key that does not decode: {why}")
            top = self._stack[-1]
            top[1] = key.decode("utf-8")
            self._expect = "colon"
            return
        if role == "document":
            r = self._report
            r.size = size
            r.raw = raw
            if skipped:
                r.refused = (f"the document is {size} bytes as it arrived, over max_document_bytes "
                             f"{self.max_document}: not read further, not parsed")
            elif self.decode:
                r.document, r.refused = decode_document(raw)
                if r.document is not None:
                    r.raw = b""      # the document itself is the evidence
            else:
                r.undecoded = True
        elif role in ("cursor", "type", "next"):
            value, why = decode_document(raw)
            if value is None:
                raise FeedError(f"{role} does not decode: {why}")
            text = value.decode("utf-8")
            if role == "next":
                self.next, self.has_next = text, True
            else:
                setattr(self._report, role, text)
        self._after_value()


__all__ = ["FeedError", "FeedPage", "FeedReport", "decode_document", "HEAD_BYTES"]
