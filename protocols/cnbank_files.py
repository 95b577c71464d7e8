"""The `cnbank` plaintext files: batch (`.req`), result (`.rsp`) and statement, sans-IO.

Writers validate every field as the dialect states it and refuse to finish a
file whose lines do not add up to its H line; readers are the strict mirror,
raising FileFormatError E999 with the line number and field on the first
malformed line and E003 when well-formed lines do not add up. Batch and
result files can hold a million lines, so both are streamed: the reader
returns the H line at once and an iterator over the D lines that holds one
block of text at a time, and only its last step (the totals) says whether the
file as a whole is good, so a caller stages lines and applies nothing until
the iterator is exhausted. Text is decoded block by block and matched with
one regular expression per block, then judged line by line; only a block
that fails the fast match is split up to find the line and field at fault.

Lines are split on the decoded text, never on bytes: in GB18030 the byte `|`
is a legal second byte of many characters (亅, 億, 墊 ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from stdnum.cn import ric

from . import money
from .cnbank_envelope import IDENTIFIER_RE, valid_date, valid_period

SUCCESS = "0000"
SUCCESS_TEXT = "成功"
MAX_LINE_BYTES = 1 << 16
_BLOCK = 1 << 20


class FileFormatError(Exception):
    """A file is refused: E999 malformed, E003 does not add up; names the line and field."""

    def __init__(self, code: str, line_no: int, field: str, message: str) -> None:
        super().__init__(f"line {line_no}, field {field}: {message}")
        self.code = code
        self.line_no = line_no
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"FileFormatError({self.code!r}, {self.line_no}, {self.field!r}, {self.message!r})"


# --- records ------------------------------------------------------------------------

@dataclass
class BatchHeader:
    """The H line of a batch file (代发批次文件头)."""

    batch_no: str
    order_no: str
    payer_acct: str
    payer_name: str
    total_count: int
    total_amount: int  # fen
    submit_date: str  # YYYYMMDD
    proj_short: str  # exactly 4 characters, named in the recipient's SMS


@dataclass(slots=True)
class BatchLine:
    """A D line of a batch file: one item to pay (发放明细)."""

    seq: int
    name: str
    id_no: str
    acct_no: str
    acct_bank: str
    amount: int  # fen
    proj_code: str
    remark: str = ""
    orig_batch_no: str = ""  # RETRY only: the batch in which the item last failed


@dataclass
class ResultHeader:
    """The H line of a result file (回盘文件头)."""

    batch_no: str
    bank_batch_no: str
    total: int
    total_amt: int
    succ_cnt: int
    succ_amt: int
    fail_cnt: int
    fail_amt: int
    proc_date: str


@dataclass(slots=True)
class ResultLine:
    """A D line of a result file: the bank's outcome for one item."""

    seq: int
    acct_no: str
    amount: int
    status: str  # "S" or "F"
    reason_code: str
    reason_text: str
    bank_serial: str
    post_date: str


@dataclass
class StatementHeader:
    """The H line of a statement file (对账单)."""

    period: str
    payer_acct: str
    paid_cnt: int
    paid_amt: int
    return_cnt: int
    return_amt: int
    refund_cnt: int
    refund_amt: int


@dataclass
class StatementBatch:
    """A B line: one batch DONE in the period, figures as of the statement's time."""

    batch_no: str
    order_no: str
    cnt: int
    amt: int
    succ_cnt: int
    succ_amt: int
    fail_cnt: int
    fail_amt: int
    return_cnt: int
    return_amt: int


@dataclass
class StatementRefund:
    """An R line: one refund DONE in the period."""

    refund_no: str
    order_no: str
    cnt: int
    amt: int
    refund_serial: str


@dataclass
class Statement:
    header: StatementHeader
    batches: list[StatementBatch] = field(default_factory=list)
    refunds: list[StatementRefund] = field(default_factory=list)


# --- field rules, shared by writers and readers -----------------------------------------
# A rule takes the field's text and returns its value, raising ValueError
# with a message that does not repeat the field name.

_ID_RE = IDENTIFIER_RE
_ACCT_RE = re.compile(r"[0-9]{8,32}")
_COUNT_RE = re.compile(r"0|[1-9][0-9]{0,17}")
_SEQ_RE = re.compile(r"[1-9][0-9]{0,17}")
_ID_NO_RE = re.compile(r"[0-9]{17}[0-9X]")
# GB 11643's check character indexed by int(first 17 digits, 13) % 11: stdnum's own formula,
# (1 - 2 * int(first 17 digits, 13)) % 11 with 10 written X (13 = 2 mod 11 gives the weights).
_CHECK_CHAR = "".join("X" if (1 - 2 * r) % 11 == 10 else str((1 - 2 * r) % 11) for r in range(11))
_REASON_RE = re.compile(r"R[0-9]{3}")
_FORBIDDEN = re.compile(r"[|\r\n]")


def _identifier(text: str) -> str:
    if not _ID_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not an identifier [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")
    return text


def _account(text: str) -> str:
    if not _ACCT_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not an account number of 8 to 32 digits")
    return text


def _count(text: str) -> int:
    if not _COUNT_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a non-negative integer without leading zeros")
    return int(text)


def _seq(text: str) -> int:
    if not _SEQ_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a positive integer without leading zeros")
    return int(text)


def _date(text: str) -> str:
    if not valid_date(text):
        raise ValueError(f"{text!r} is not a date YYYYMMDD")
    return text


def _period(text: str) -> str:
    if not valid_period(text):
        raise ValueError(f"{text!r} is not a period DYYYYMMDD, MYYYYMM or YYYYY")
    return text


def _text(text: str) -> str:
    """Required free text: not blank."""
    if not text.strip():
        raise ValueError("is empty")
    return text


def _opt_text(text: str) -> str:
    return text


def _id_no(text: str) -> str:
    if not _ID_NO_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not 17 digits and a check character (digit or X)")
    if ric.calc_check_digit(text) != text[-1]:
        raise ValueError(f"{text!r} fails the GB 11643 check digit")
    return text


def _proj_short(text: str) -> str:
    if len(text) != 4:
        raise ValueError(f"{text!r} is {len(text)} characters, not exactly 4")
    if not text.strip():
        raise ValueError("is blank")
    return text


def _reason_code(text: str) -> str:
    if text != SUCCESS and not _REASON_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not 0000 or a reason code Rnnn")
    return text


def _status(text: str) -> str:
    if text not in ("S", "F"):
        raise ValueError(f"{text!r} is not S or F")
    return text


def _opt_identifier(text: str) -> str:
    return _identifier(text) if text else text


def _amount_rule(unit: str, positive: bool) -> Callable[[str], int]:
    parse = money.parser(unit)

    def rule(text: str) -> int:
        try:
            fen = parse(text)
        except money.AmountError as e:
            raise ValueError(str(e)) from None
        if positive and fen <= 0:
            raise ValueError(f"{text!r} is not greater than zero")
        return fen
    return rule


def _layout(unit: str) -> dict[str, list[tuple[str, Callable[[str], Any]]]]:
    """(field name, rule) of every record type, in line order, for an amount *unit*."""
    amount = _amount_rule(unit, positive=True)
    total = _amount_rule(unit, positive=False)
    return {
        "batch H": [("BatchNo", _identifier), ("OrderNo", _identifier), ("PayerAcct", _account),
                    ("PayerName", _text), ("TotalCount", _count), ("TotalAmount", total),
                    ("SubmitDate", _date), ("ProjShort", _proj_short)],
        "batch D": [("Seq", _seq), ("Name", _text), ("IdNo", _id_no), ("AcctNo", _account),
                    ("AcctBank", _opt_text), ("Amount", amount), ("ProjCode", _text),
                    ("Remark", _opt_text), ("OrigBatchNo", _opt_identifier)],
        "result H": [("BatchNo", _identifier), ("BankBatchNo", _text), ("Total", _count),
                     ("TotalAmt", total), ("SuccCnt", _count), ("SuccAmt", total),
                     ("FailCnt", _count), ("FailAmt", total), ("ProcDate", _date)],
        "result D": [("Seq", _seq), ("AcctNo", _account), ("Amount", amount),
                     ("Status", _status), ("ReasonCode", _reason_code), ("ReasonText", _text),
                     ("BankSerial", _opt_text), ("PostDate", _date)],
        "statement H": [("Period", _period), ("PayerAcct", _account), ("PaidCnt", _count),
                        ("PaidAmt", total), ("ReturnCnt", _count), ("ReturnAmt", total),
                        ("RefundCnt", _count), ("RefundAmt", total)],
        "statement B": [("BatchNo", _identifier), ("OrderNo", _identifier), ("Cnt", _count),
                        ("Amt", total), ("SuccCnt", _count), ("SuccAmt", total),
                        ("FailCnt", _count), ("FailAmt", total), ("ReturnCnt", _count),
                        ("ReturnAmt", total)],
        "statement R": [("RefundNo", _identifier), ("OrderNo", _identifier), ("Cnt", _count),
                        ("Amt", total), ("RefundSerial", _text)],
    }


_LAYOUTS = {unit: _layout(unit) for unit in ("yuan", "fen")}


def _layouts(unit: str):
    try:
        return _LAYOUTS[unit]
    except KeyError:
        raise ValueError(f"amount unit must be 'yuan' or 'fen', not {unit!r}") from None


def _fields(record: str, tag: str, parts: list[str], line_no: int, unit: str) -> list[Any]:
    """The values of one split line (tag included in *parts*), or FileFormatError E999."""
    layout = _layouts(unit)[record]
    if parts[0] != tag:
        raise FileFormatError("E999", line_no, "RecordType",
                              f"record type is {parts[0]!r}, expected {tag}")
    if len(parts) != len(layout) + 1:
        raise FileFormatError("E999", line_no, "Line",
                              f"{record} line has {len(parts) - 1} fields, expected {len(layout)}")
    values = []
    for (name, rule), text in zip(layout, parts[1:]):
        try:
            values.append(rule(text))
        except ValueError as e:
            raise FileFormatError("E999", line_no, name, str(e)) from None
    return values


# --- reading: blocks of whole lines ---------------------------------------------------

def _names(family: str) -> dict[str, list[str]]:
    """Field names by record tag, for naming the field at fault in a line not yet split."""
    out = {}
    for record, layout in _LAYOUTS["yuan"].items():
        fam, tag = record.split()
        if fam == family:
            out[tag] = ["RecordType"] + [name for name, _ in layout]
    return out


def _field_name(names: dict[str, list[str]], parts: list[str]) -> str:
    """The name of the last of *parts* (a line split so far), by its record type."""
    layout = names.get(parts[0])
    index = len(parts) - 1
    if index == 0:
        return "RecordType"
    if layout is None or index >= len(layout):
        return f"field {index}"
    return layout[index]


def _pieces(src: BinaryIO | Iterable[bytes], hashers) -> Iterator[bytes]:
    read = getattr(src, "read", None)
    if read is not None:
        while True:
            piece = read(_BLOCK)
            if not piece:
                return
            for h in hashers:
                h.update(piece)
            yield piece
    else:
        for piece in src:
            if not isinstance(piece, (bytes, bytearray, memoryview)):
                raise TypeError("a file is read from bytes, not " + type(piece).__name__)
            piece = bytes(piece)
            for h in hashers:
                h.update(piece)
            yield piece


def _blocks(src, encoding: str, hashers, names: dict[str, list[str]],
            max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(number of the first line, decoded text of whole lines each ending in LF), streamed.

    LF (0x0A) never occurs inside a GB18030 or GBK character, so bytes are cut
    at the last LF of about a megabyte and decoded a block at a time. Memory
    stays bounded: a line that has not ended after *max_line* bytes is
    refused. Whether each line ends CRLF is left to the caller (one count per
    block on the fast path).
    """
    line_no = 1
    carry = b""
    pending: list[bytes] = []
    size = 0

    def emit(data: bytes) -> tuple[bytes, tuple[int, str] | None]:
        nonlocal line_no
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        n = data.count(b"\n", 0, end)
        if len(rest) > max_line:
            raise FileFormatError("E999", line_no + n, "Line", f"is longer than {max_line} bytes")
        if not end:
            return rest, None
        try:
            text = str(memoryview(data)[:end], encoding)  # no copy of the block's bytes
        except UnicodeDecodeError as e:
            bad = line_no + data.count(b"\n", 0, e.start)
            start = data.rfind(b"\n", 0, e.start) + 1
            parts = data[start:e.start].decode(encoding, "replace").split("|")
            raise FileFormatError("E999", bad, _field_name(names, parts),
                                  f"bytes {data[e.start:e.end]!r} are not valid {encoding}"
                                  ) from None
        first = line_no
        line_no += n
        return rest, (first, text)

    for piece in _pieces(src, hashers):
        pending.append(piece)
        size += len(piece)
        if size < _BLOCK:
            continue
        carry, out = emit(b"".join([carry, *pending]))
        pending, size = [], 0
        if out is not None:
            yield out
    carry, out = emit(b"".join([carry, *pending]))
    if out is not None:
        yield out
    if carry:
        raise FileFormatError("E999", line_no, "CRLF", "the last line does not end with CRLF")


def _split_line(line: str, line_no: int, names: dict[str, list[str]]) -> list[str]:
    """The fields of one line ending in LF, after checking its CRLF and stray CRs."""
    if not line.endswith("\r\n"):
        raise FileFormatError("E999", line_no, "CRLF", "line does not end with CRLF")
    parts = line[:-2].split("|")
    for i, part in enumerate(parts):
        if "\r" in part:
            raise FileFormatError("E999", line_no, _field_name(names, parts[:i + 1]),
                                  "holds a CR")
    return parts


def _lines(blocks: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for first, text in blocks:
        # Not str.splitlines: it also splits on VT, FF, NEL, U+2028...; only LF ends a line.
        for i, line in enumerate(text.split("\n")[:-1]):
            yield first + i, line + "\n"


def _first_line(blocks: Iterator[tuple[int, str]]) -> tuple[str, Iterator[tuple[int, str]]]:
    """The H line's text and the blocks holding everything after it."""
    for first, text in blocks:
        end = text.find("\n") + 1
        rest = text[end:]
        after = chain([(first + 1, rest)] if rest else [], blocks)
        return text[:end], after
    raise FileFormatError("E999", 1, "RecordType", "the file is empty: expected an H line")


_NAMES = {family: _names(family) for family in ("batch", "result", "statement")}


# --- writing --------------------------------------------------------------------------

class _Writer:
    """Buffers encoded lines and writes them in blocks; checks text fields on the way."""

    _FLUSH = 1 << 18

    def __init__(self, out: BinaryIO, unit: str, encoding: str) -> None:
        _layouts(unit)  # an unknown unit fails here, not on the first line
        self._out = out
        self._unit = unit
        self._fmt = money.formatter(unit)
        self._encoding = encoding
        self._buf: list[bytes] = []
        self._size = 0
        self.line_no = 0
        self.closed = False

    def _amount(self, value: Any, name: str, positive: bool) -> str:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FileFormatError("E999", self.line_no + 1, name,
                                  f"{value!r} is not a non-negative integer of fen")
        if positive and value == 0:
            raise FileFormatError("E999", self.line_no + 1, name, "amount is not greater than zero")
        return self._fmt(value)

    def _int(self, value: Any, name: str) -> str:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FileFormatError("E999", self.line_no + 1, name,
                                  f"{value!r} is not a non-negative integer")
        return str(value)

    def _emit(self, record: str, tag: str, values: tuple, fast: re.Pattern | None = None) -> None:
        """Write one line after running the reader's own rules on its text.

        *values* are the fields' texts in line order (None for an empty
        optional field). With *fast*, a line the reader's fast pattern accepts
        skips the field-by-field rules; anything else goes through them, so
        that the error names its field.
        """
        if self.closed:
            raise ValueError("the writer is closed")
        line_no = self.line_no + 1
        line = None
        if fast is not None:
            try:
                line = tag + "|" + "|".join(values) + "\r\n"
            except TypeError:
                line = None
            if line is not None and fast.fullmatch(line) is None:
                line = None
        if line is None:
            names = _NAMES[record.split()[0]][tag][1:]
            texts = []
            for name, value in zip(names, values):
                if value is None:
                    value = ""
                if not isinstance(value, str):
                    raise FileFormatError("E999", line_no, name,
                                          f"must be str, not {type(value).__name__}")
                if _FORBIDDEN.search(value):
                    raise FileFormatError("E999", line_no, name, "holds '|', CR or LF")
                texts.append(value)
            # The reader's rules are the definition of a good line: apply them here too.
            _fields(record, tag, [tag, *texts], line_no, self._unit)
            values = texts
            line = tag + "|" + "|".join(texts) + "\r\n"
        try:
            data = line.encode(self._encoding)
        except UnicodeEncodeError:
            names = _NAMES[record.split()[0]][tag][1:]
            for name, text in zip(names, values):
                try:
                    text.encode(self._encoding)
                except UnicodeEncodeError as e:
                    raise FileFormatError(
                        "E999", line_no, name,
                        f"{text[e.start:e.end]!r} cannot be encoded in {self._encoding}") from None
            raise
        self._buf.append(data)
        self._size += len(data)
        self.line_no = line_no
        if self._size >= self._FLUSH:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._out.write(b"".join(self._buf))
            self._buf, self._size = [], 0

    def _finish(self, checks: list[tuple[str, int, int]]) -> None:
        """Flush, then refuse the file unless each (field, header value, counted) agrees."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        for name, expected, counted in checks:
            if expected != counted:
                raise FileFormatError("E003", 1, name,
                                      f"H says {expected}, the lines add up to {counted}")


class BatchFileWriter:
    """Writes `{BatchNo}.req` line by line; close() refuses a file that does not add up.

    *kind* is "PAY" (OrigBatchNo empty), "RETRY" (OrigBatchNo required) or
    None to take it from the first line and hold every later line to it.
    The caller owns *out* and closes it.
    """

    def __init__(self, out: BinaryIO, header: BatchHeader, *, unit: str = "yuan",
                 encoding: str = "gb18030", kind: str | None = None) -> None:
        if kind not in (None, "PAY", "RETRY"):
            raise ValueError(f"kind must be PAY, RETRY or None, not {kind!r}")
        self._w = _Writer(out, unit, encoding)
        self._fast = _BATCH_SHAPE[unit].line
        self._fast_block = _BATCH_SHAPE[unit].block
        self.header = header
        self._kind = kind
        self._prev = 0
        self.count = 0
        self.amount = 0
        w = self._w
        w._emit("batch H", "H", (
            header.batch_no, header.order_no, header.payer_acct, header.payer_name,
            w._int(header.total_count, "TotalCount"),
            w._amount(header.total_amount, "TotalAmount", False),
            header.submit_date, header.proj_short))

    def write_line(self, line: BatchLine) -> None:
        w = self._w
        no = w.line_no + 1
        if not isinstance(line.seq, int) or isinstance(line.seq, bool) or line.seq <= 0:
            raise FileFormatError("E999", no, "Seq", f"{line.seq!r} is not a positive integer")
        if line.seq <= self._prev:
            raise FileFormatError("E999", no, "Seq",
                                  f"{line.seq} does not ascend after {self._prev}")
        orig = line.orig_batch_no
        if orig is None:
            orig = ""
        if not isinstance(orig, str):
            raise FileFormatError("E999", no, "OrigBatchNo",
                                  f"must be str, not {type(orig).__name__}")
        if not isinstance(line.name, str) or not line.name.strip():
            raise FileFormatError("E999", no, "Name", "is empty")
        if not isinstance(line.proj_code, str) or not line.proj_code.strip():
            raise FileFormatError("E999", no, "ProjCode", "is empty")
        id_no = line.id_no
        # The fast pattern checks the IdNo's shape, not its check digit.
        if isinstance(id_no, str) and _ID_NO_RE.fullmatch(id_no) \
                and ric.calc_check_digit(id_no) != id_no[-1]:
            raise FileFormatError("E999", no, "IdNo", f"{id_no!r} fails the GB 11643 check digit")
        kind = _check_orig(self._kind, orig, self.header.batch_no, no)
        w._emit("batch D", "D", (
            str(line.seq), line.name, id_no, line.acct_no,
            "" if line.acct_bank is None else line.acct_bank,
            w._amount(line.amount, "Amount", True), line.proj_code,
            "" if line.remark is None else line.remark, orig),
            self._fast)
        self._kind = kind
        self._prev = line.seq
        self.count += 1
        self.amount += line.amount

    def write_block(self, lines: list[tuple]) -> None:
        """write_line for each of *lines*, tuples in BatchLine's field order, in one step.

        A block whose every line passes write_line's checks is formatted, matched against the
        reader's block pattern and encoded whole (a million lines a batch); a block with
        anything unusual is written line by line, so that the error names its line and field.
        """
        w = self._w
        if not w.closed and lines:
            data = self._block(lines)
            if data is not None:
                count, amount, last, kind, data = data
                w._buf.append(data)
                w._size += len(data)
                w.line_no += count
                self._kind = kind
                self._prev = last
                self.count += count
                self.amount += amount
                if w._size >= w._FLUSH:
                    w.flush()
                return
        for t in lines:
            self.write_line(BatchLine(*t))

    def _block(self, lines: list[tuple]) -> tuple[int, int, int, str, bytes] | None:
        """(count, amount, last seq, kind, encoded lines) of a block write_line would take
        line by line without error, else None."""
        w = self._w
        prev = self._prev
        total = 0
        first_orig = lines[0][8]
        kind = "RETRY" if first_orig else "PAY"
        if self._kind not in (None, kind):
            return None
        yuan = w._unit == "yuan"
        fmt = w._fmt
        check = _CHECK_CHAR
        out = []
        append = out.append
        try:
            for seq, name, id_no, acct, bank, amount, proj, remark, orig in lines:
                if (type(seq) is not int or seq <= prev or type(amount) is not int or amount <= 0
                        or type(name) is not str or type(id_no) is not str or type(acct) is not str
                        or type(bank) is not str or type(proj) is not str or type(remark) is not str
                        or type(orig) is not str or not name.strip() or not proj.strip()
                        or bool(orig) is not bool(first_orig) or orig == self.header.batch_no
                        or check[int(id_no[:17], 13) % 11] != id_no[17:]):
                    return None
                prev = seq
                total += amount
                append(f"D|{seq}|{name}|{id_no}|{acct}|{bank}|"
                       f"{f'{amount // 100}.{amount % 100:02d}' if yuan else fmt(amount)}|"
                       f"{proj}|{remark}|{orig}\r\n")
        except (ValueError, IndexError):   # an IdNo int() cannot read: not of the ID's shape
            return None
        text = "".join(out)
        # One line per item (no field holds a line break), each of the reader's shape: so no
        # field holds '|' either, and every field passes the reader's rules.
        if text.count("\n") != len(lines) or self._fast_block.fullmatch(text) is None:
            return None
        try:
            data = text.encode(w._encoding)
        except UnicodeEncodeError:
            return None
        return len(lines), total, prev, kind, data

    def close(self) -> None:
        """Write what is buffered; E003 unless the lines add up to the H line."""
        self._w._finish([("TotalCount", self.header.total_count, self.count),
                         ("TotalAmount", self.header.total_amount, self.amount)])


def _check_orig(kind: str | None, orig: str, batch_no: str, line_no: int) -> str:
    """The batch kind after checking one line's OrigBatchNo against it."""
    line_kind = "RETRY" if orig else "PAY"
    if kind is None:
        kind = line_kind
    elif kind != line_kind:
        if kind == "RETRY":
            raise FileFormatError("E999", line_no, "OrigBatchNo", "is required in a RETRY batch")
        raise FileFormatError("E999", line_no, "OrigBatchNo", "must be empty in a PAY batch")
    if orig and orig == batch_no:
        raise FileFormatError("E999", line_no, "OrigBatchNo", "names this very batch")
    return kind


class ResultFileWriter:
    """Writes `{BatchNo}.rsp` line by line; close() refuses a file that does not add up."""

    def __init__(self, out: BinaryIO, header: ResultHeader, *, unit: str = "yuan",
                 encoding: str = "gb18030") -> None:
        self._w = _Writer(out, unit, encoding)
        self.header = header
        self._prev = 0
        self.counts = {"S": [0, 0], "F": [0, 0]}
        w = self._w
        w._emit("result H", "H", (
            header.batch_no, header.bank_batch_no, w._int(header.total, "Total"),
            w._amount(header.total_amt, "TotalAmt", False), w._int(header.succ_cnt, "SuccCnt"),
            w._amount(header.succ_amt, "SuccAmt", False), w._int(header.fail_cnt, "FailCnt"),
            w._amount(header.fail_amt, "FailAmt", False), header.proc_date))
        _check_result_header(header, 1)

    def write_line(self, line: ResultLine) -> None:
        w = self._w
        no = w.line_no + 1
        if not isinstance(line.seq, int) or isinstance(line.seq, bool) or line.seq <= 0:
            raise FileFormatError("E999", no, "Seq", f"{line.seq!r} is not a positive integer")
        if line.seq <= self._prev:
            raise FileFormatError("E999", no, "Seq",
                                  f"{line.seq} does not ascend after {self._prev}")
        values = (str(line.seq), line.acct_no, w._amount(line.amount, "Amount", True),
                  line.status, line.reason_code, line.reason_text, line.bank_serial,
                  line.post_date)
        if all(isinstance(v, str) for v in values) and line.status in ("S", "F"):
            _check_result_line(line.status, line.reason_code, line.reason_text, line.bank_serial,
                               line.post_date, self.header.proc_date, no)
        w._emit("result D", "D", values, _RESULT_SHAPE[w._unit].line)
        self._prev = line.seq
        c = self.counts[line.status]
        c[0] += 1
        c[1] += line.amount

    def close(self) -> None:
        s, f = self.counts["S"], self.counts["F"]
        h = self.header
        self._w._finish([("Total", h.total, s[0] + f[0]), ("TotalAmt", h.total_amt, s[1] + f[1]),
                         ("SuccCnt", h.succ_cnt, s[0]), ("SuccAmt", h.succ_amt, s[1]),
                         ("FailCnt", h.fail_cnt, f[0]), ("FailAmt", h.fail_amt, f[1])])


def _check_result_header(h: ResultHeader, line_no: int) -> None:
    if h.succ_cnt + h.fail_cnt != h.total:
        raise FileFormatError("E003", line_no, "Total",
                              f"SuccCnt {h.succ_cnt} + FailCnt {h.fail_cnt} is not Total {h.total}")
    if h.succ_amt + h.fail_amt != h.total_amt:
        raise FileFormatError("E003", line_no, "TotalAmt",
                              f"SuccAmt {h.succ_amt} + FailAmt {h.fail_amt} fen "
                              f"is not TotalAmt {h.total_amt}")


def _check_result_line(status: str, code: str, text: str, serial: str, post: str,
                       proc_date: str, line_no: int) -> None:
    """The S/F rules of one result line (formats already checked)."""
    if status == "S":
        if code != SUCCESS:
            raise FileFormatError("E999", line_no, "ReasonCode",
                                  f"is {code!r} on an S line, not 0000")
        if text != SUCCESS_TEXT:
            raise FileFormatError("E999", line_no, "ReasonText",
                                  f"is {text!r} on an S line, not {SUCCESS_TEXT}")
        if not serial.strip():
            raise FileFormatError("E999", line_no, "BankSerial", "is empty on an S line")
        if not valid_date(post):
            raise FileFormatError("E999", line_no, "PostDate", f"{post!r} is not a date YYYYMMDD")
    else:
        if not _REASON_RE.fullmatch(code):
            raise FileFormatError("E999", line_no, "ReasonCode",
                                  f"is {code!r} on an F line, not a reason code Rnnn")
        if not text.strip():
            raise FileFormatError("E999", line_no, "ReasonText", "is empty on an F line")
        if serial:
            raise FileFormatError("E999", line_no, "BankSerial", "is set on an F line")
        if post != proc_date:
            raise FileFormatError("E999", line_no, "PostDate",
                                  f"is {post} on an F line, not the ProcDate {proc_date}")


class StatementFileWriter:
    """Writes `STMT_{Period}.txt`: B and R lines in any order; close() checks the H line."""

    def __init__(self, out: BinaryIO, header: StatementHeader, *, unit: str = "yuan",
                 encoding: str = "gb18030") -> None:
        self._w = _Writer(out, unit, encoding)
        self.header = header
        self._sums = _StatementSums()
        w = self._w
        w._emit("statement H", "H", (
            header.period, header.payer_acct, w._int(header.paid_cnt, "PaidCnt"),
            w._amount(header.paid_amt, "PaidAmt", False), w._int(header.return_cnt, "ReturnCnt"),
            w._amount(header.return_amt, "ReturnAmt", False),
            w._int(header.refund_cnt, "RefundCnt"),
            w._amount(header.refund_amt, "RefundAmt", False)))

    def write_batch(self, b: StatementBatch) -> None:
        w = self._w
        no = w.line_no + 1
        values = (b.batch_no, b.order_no, w._int(b.cnt, "Cnt"), w._amount(b.amt, "Amt", False),
                  w._int(b.succ_cnt, "SuccCnt"), w._amount(b.succ_amt, "SuccAmt", False),
                  w._int(b.fail_cnt, "FailCnt"), w._amount(b.fail_amt, "FailAmt", False),
                  w._int(b.return_cnt, "ReturnCnt"), w._amount(b.return_amt, "ReturnAmt", False))
        self._sums.check_batch(b, no)
        w._emit("statement B", "B", values)
        self._sums.add_batch(b, no)

    def write_refund(self, r: StatementRefund) -> None:
        w = self._w
        no = w.line_no + 1
        values = (r.refund_no, r.order_no, w._int(r.cnt, "Cnt"), w._amount(r.amt, "Amt", False),
                  r.refund_serial)
        self._sums.check_refund(r, no)
        w._emit("statement R", "R", values)
        self._sums.add_refund(r, no)

    def close(self) -> None:
        self._w._finish(self._sums.checks(self.header))


def write_statement_file(out: BinaryIO, statement: Statement, *, unit: str = "yuan",
                         encoding: str = "gb18030") -> None:
    """The whole statement: its B lines, then its R lines."""
    w = StatementFileWriter(out, statement.header, unit=unit, encoding=encoding)
    for b in statement.batches:
        w.write_batch(b)
    for r in statement.refunds:
        w.write_refund(r)
    w.close()


class _StatementSums:
    def __init__(self) -> None:
        self.paid = [0, 0]
        self.returned = [0, 0]
        self.refunded = [0, 0]
        self.batch_nos: set[str] = set()
        self.refund_nos: set[str] = set()

    def check_batch(self, b: StatementBatch, no: int) -> None:
        if b.batch_no in self.batch_nos:
            raise FileFormatError("E999", no, "BatchNo", f"batch {b.batch_no} is listed twice")
        if b.succ_cnt + b.fail_cnt != b.cnt:
            raise FileFormatError("E003", no, "Cnt",
                                  f"SuccCnt {b.succ_cnt} + FailCnt {b.fail_cnt} is not Cnt {b.cnt}")
        if b.succ_amt + b.fail_amt != b.amt:
            raise FileFormatError("E003", no, "Amt", f"SuccAmt {b.succ_amt} + FailAmt "
                                  f"{b.fail_amt} fen is not Amt {b.amt}")
        if b.return_cnt > b.succ_cnt or b.return_amt > b.succ_amt:
            raise FileFormatError("E003", no, "ReturnCnt",
                                  "more returned than was paid in the batch")

    def add_batch(self, b: StatementBatch, no: int) -> None:
        self.check_batch(b, no)
        self.batch_nos.add(b.batch_no)
        self.paid[0] += b.succ_cnt
        self.paid[1] += b.succ_amt
        self.returned[0] += b.return_cnt
        self.returned[1] += b.return_amt

    def check_refund(self, r: StatementRefund, no: int) -> None:
        if r.refund_no in self.refund_nos:
            raise FileFormatError("E999", no, "RefundNo", f"refund {r.refund_no} is listed twice")
        if (r.cnt == 0) != (r.amt == 0):
            raise FileFormatError("E003", no, "Amt", f"Cnt {r.cnt} with Amt {r.amt} fen")

    def add_refund(self, r: StatementRefund, no: int) -> None:
        self.check_refund(r, no)
        self.refund_nos.add(r.refund_no)
        self.refunded[0] += r.cnt
        self.refunded[1] += r.amt

    def checks(self, h: StatementHeader) -> list[tuple[str, int, int]]:
        return [("PaidCnt", h.paid_cnt, self.paid[0]), ("PaidAmt", h.paid_amt, self.paid[1]),
                ("ReturnCnt", h.return_cnt, self.returned[0]),
                ("ReturnAmt", h.return_amt, self.returned[1]),
                ("RefundCnt", h.refund_cnt, self.refunded[0]),
                ("RefundAmt", h.refund_amt, self.refunded[1])]


# --- reading --------------------------------------------------------------------------

def _read_header(src, family: str, unit: str, encoding: str, hashers):
    _layouts(unit)
    names = _NAMES[family]
    blocks = _blocks(src, encoding, hashers, names)
    line, rest = _first_line(blocks)
    values = _fields(f"{family} H", "H", _split_line(line, 1, names), 1, unit)
    return values, rest


def _amount_re(unit: str) -> str:
    if unit == "yuan":
        return r"(?:0|[1-9][0-9]{0,15})\.[0-9]{2}"
    return r"(?:0|[1-9][0-9]{0,17})"


_ANY = r"[^|\r\n]*"
_SOME = r"[^|\r\n]+"


class _Shape:
    """The shape of a well-formed D line as one pattern, and of a block of them as another.

    Matching a whole block without capture groups and then splitting it on
    CRLF and '|' costs about 0.9 us a line here, against 1.25 us for a
    findall with groups: it is most of the reader's time.
    """

    def __init__(self, fields: list[str]) -> None:
        line = r"\|".join(["D", *fields]) + r"\r\n"
        self.line = re.compile(line)
        self.block = re.compile(f"(?:{line})*")


_RESULT_SHAPE = {unit: _Shape([r"[1-9][0-9]{0,17}", r"[0-9]{8,32}", _amount_re(unit), "[SF]",
                               _ANY, _ANY, _ANY, r"[0-9]{8}"])
                 for unit in ("yuan", "fen")}
_BATCH_SHAPE = {unit: _Shape([r"[1-9][0-9]{0,17}", _SOME, r"[0-9]{17}[0-9X]", r"[0-9]{8,32}",
                              _ANY, _amount_re(unit), _SOME, _ANY,
                              r"(?:[A-Za-z0-9][A-Za-z0-9_-]{0,63})?"])
                for unit in ("yuan", "fen")}


def _rows(blocks, shape: _Shape, record: str, unit: str):
    """(number of the first line, D lines without their CRLF) of well-shaped lines.

    For the first line of the wrong shape it yields the good lines before it,
    then (None, the FileFormatError that names its field), so that the caller
    reports errors in line order.
    """
    for first, text in blocks:
        if shape.block.fullmatch(text) is not None:
            lines = text.split("\r\n")
            lines.pop()  # the empty string after the last CRLF
            yield first, lines
            continue
        # Something in this block is wrong: walk it line by line.
        good = []
        for no, line in _lines([(first, text)]):
            if shape.line.fullmatch(line) is not None:
                good.append(line[:-2])
                continue
            yield first, good
            yield None, _diagnose(line, no, record, unit)
            return
        yield first, good  # not reached: the block did not match for a reason


def _diagnose(line: str, line_no: int, record: str, unit: str) -> FileFormatError:
    family, tag = record.split()
    try:
        parts = _split_line(line, line_no, _NAMES[family])
        _fields(record, tag, parts, line_no, unit)
    except FileFormatError as e:
        return e
    return FileFormatError("E999", line_no, "Line", "is malformed")


def read_result_file(src: BinaryIO | Iterable[bytes], *, unit: str = "yuan",
                     encoding: str = "gb18030", hashers: Iterable[Any] = ()
                     ) -> tuple[ResultHeader, Iterator[ResultLine]]:
    """The H line now and the D lines as they are read; see the module doc on staging.

    *src* is a binary file or an iterable of byte chunks (lines will do). Each
    object in *hashers* gets `.update(chunk)` with every byte read.
    """
    hashers = tuple(hashers)
    values, rest = _read_header(src, "result", unit, encoding, hashers)
    header = ResultHeader(*values)
    _check_result_header(header, 1)
    return header, _result_lines(rest, header, unit)


def _result_lines(blocks, header: ResultHeader, unit: str) -> Iterator[ResultLine]:
    # The hot loop of the gateway's biggest input: one fast match per block,
    # then only comparisons per line; the full rules run only on a suspect line.
    shape = _RESULT_SHAPE[unit]
    yuan = unit == "yuan"
    proc = header.proc_date
    total = header.total
    prev = 0
    n = 0
    succ_cnt = succ_amt = all_amt = 0
    dates: set[str] = set()
    make = ResultLine
    for first, rows in _rows(blocks, shape, "result D", unit):
        if first is None:
            raise rows
        over = None
        if len(rows) > total - n:  # more lines than H announces: stop where it is exceeded
            over = first + total - n
            rows = rows[:total - n]
        n += len(rows)
        no = first - 1
        for row in rows:
            no += 1
            _, seq, acct, amt, st, code, text, serial, post = row.split("|")
            s = int(seq)
            if s <= prev:
                raise FileFormatError("E999", no, "Seq", f"{seq} does not ascend after {prev}"
                                      if s < prev else f"{seq} is repeated")
            amount = int(amt.replace(".", "")) if yuan else int(amt)
            if not amount:
                raise FileFormatError("E999", no, "Amount", "is not greater than zero")
            if st == "S":
                if code != SUCCESS or text != SUCCESS_TEXT or not serial or post not in dates:
                    _check_result_line(st, code, text, serial, post, proc, no)
                    dates.add(post)
                succ_cnt += 1
                succ_amt += amount
            elif serial or post != proc or not _REASON_RE.fullmatch(code) or not text.strip():
                _check_result_line(st, code, text, serial, post, proc, no)
            all_amt += amount
            prev = s
            yield make(s, acct, amount, st, code, text, serial, post)
        if over is not None:
            raise FileFormatError("E003", over, "Total", f"more D lines than Total {total}")
    for name, expected, counted in (
            ("Total", total, n), ("TotalAmt", header.total_amt, all_amt),
            ("SuccCnt", header.succ_cnt, succ_cnt), ("SuccAmt", header.succ_amt, succ_amt),
            ("FailCnt", header.fail_cnt, n - succ_cnt),
            ("FailAmt", header.fail_amt, all_amt - succ_amt)):
        if expected != counted:
            raise FileFormatError("E003", 1, name,
                                  f"H says {expected}, the lines add up to {counted}")


def read_batch_file(src: BinaryIO | Iterable[bytes], *, unit: str = "yuan",
                    encoding: str = "gb18030", kind: str | None = None,
                    hashers: Iterable[Any] = ()) -> tuple[BatchHeader, Iterator[BatchLine]]:
    """The H line now and the D lines as they are read; *kind* as for BatchFileWriter."""
    if kind not in (None, "PAY", "RETRY"):
        raise ValueError(f"kind must be PAY, RETRY or None, not {kind!r}")
    hashers = tuple(hashers)
    values, rest = _read_header(src, "batch", unit, encoding, hashers)
    header = BatchHeader(*values)
    return header, _batch_lines(rest, header, unit, kind)


def _batch_lines(blocks, header: BatchHeader, unit: str, kind: str | None) -> Iterator[BatchLine]:
    shape = _BATCH_SHAPE[unit]
    yuan = unit == "yuan"
    check_digit = ric.calc_check_digit
    batch_no = header.batch_no
    total = header.total_count
    prev = 0
    n = 0
    amount_sum = 0
    make = BatchLine
    for first, rows in _rows(blocks, shape, "batch D", unit):
        if first is None:
            raise rows
        no = first - 1
        for row in rows:
            no += 1
            _, seq, name, id_no, acct, bank, amt, proj, remark, orig = row.split("|")
            s = int(seq)
            if s <= prev:
                raise FileFormatError("E999", no, "Seq", f"{seq} does not ascend after {prev}"
                                      if s < prev else f"{seq} is repeated")
            if not name.strip():
                raise FileFormatError("E999", no, "Name", "is empty")
            if check_digit(id_no) != id_no[-1]:
                raise FileFormatError("E999", no, "IdNo",
                                      f"{id_no!r} fails the GB 11643 check digit")
            amount = int(amt.replace(".", "")) if yuan else int(amt)
            if not amount:
                raise FileFormatError("E999", no, "Amount", "is not greater than zero")
            if not proj.strip():
                raise FileFormatError("E999", no, "ProjCode", "is empty")
            if kind is None or bool(orig) != (kind == "RETRY") or orig == batch_no:
                kind = _check_orig(kind, orig, batch_no, no)
            n += 1
            if n > total:
                raise FileFormatError("E003", no, "TotalCount",
                                      f"more D lines than TotalCount {total}")
            amount_sum += amount
            prev = s
            yield make(s, name, id_no, acct, bank, amount, proj, remark, orig)
    if n != total:
        raise FileFormatError("E003", 1, "TotalCount", f"H says {total}, the file has {n} D lines")
    if amount_sum != header.total_amount:
        raise FileFormatError("E003", 1, "TotalAmount", f"H says {header.total_amount} fen, "
                              f"the lines add up to {amount_sum}")


def read_statement_file(src: BinaryIO | Iterable[bytes], *, unit: str = "yuan",
                        encoding: str = "gb18030", period: str | None = None,
                        hashers: Iterable[Any] = (), max_lines: int = 1_000_000) -> Statement:
    """The whole statement, or FileFormatError: a statement is taken or rejected whole.

    *period*, if given, must be the H line's (the one in the file name).
    """
    hashers = tuple(hashers)
    values, rest = _read_header(src, "statement", unit, encoding, hashers)
    st = Statement(StatementHeader(*values))
    if period is not None and st.header.period != period:
        raise FileFormatError("E999", 1, "Period", f"is {st.header.period}, expected {period}")
    sums = _StatementSums()
    for no, line in _lines(rest):
        if no > max_lines:
            raise FileFormatError("E999", no, "Line", f"more than {max_lines} lines")
        parts = _split_line(line, no, _NAMES["statement"])
        if parts[0] == "B":
            b = StatementBatch(*_fields("statement B", "B", parts, no, unit))
            sums.add_batch(b, no)
            st.batches.append(b)
        elif parts[0] == "R":
            r = StatementRefund(*_fields("statement R", "R", parts, no, unit))
            sums.add_refund(r, no)
            st.refunds.append(r)
        else:
            raise FileFormatError("E999", no, "RecordType", f"record type is {parts[0]!r}, "
                                  "expected B or R")
    for name, expected, counted in sums.checks(st.header):
        if expected != counted:
            raise FileFormatError("E003", 1, name,
                                  f"H says {expected}, the lines add up to {counted}")
    return st
