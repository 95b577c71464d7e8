"""protocols.cnbank_files: batch, result and statement files, written and read exactly."""

from __future__ import annotations

import io
import tracemalloc

import pytest
from stdnum.cn import ric

from protocols import cnbank_files as cf
from protocols import sm
from protocols.cnbank_files import (
    BatchFileWriter,
    BatchHeader,
    BatchLine,
    FileFormatError,
    ResultFileWriter,
    ResultHeader,
    ResultLine,
    Statement,
    StatementBatch,
    StatementFileWriter,
    StatementHeader,
    StatementRefund,
    read_batch_file,
    read_result_file,
    read_statement_file,
    write_statement_file,
)


def id_no(n: int) -> str:
    """A resident ID number with a valid GB 11643 check character."""
    body = f"11010519{60 + n % 40:02d}{n % 12 + 1:02d}{n % 28 + 1:02d}{n % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


BAD_CHECK = id_no(1)[:-1] + ("1" if id_no(1)[-1] != "1" else "2")
NAMES = ["张三", "𠮷野家", "䶮", "亅億墊", "欧阳·娜娜"]  # GB18030-only, and '|' as a trail byte


def crlf(*lines: str, encoding: str = "gb18030") -> bytes:
    return "".join(line + "\r\n" for line in lines).encode(encoding)


def refused(code: str, line_no: int | None = None, field: str | None = None):
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(FileFormatError)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            r = self.cm.__exit__(*exc)
            e = self.info.value
            assert e.code == code, repr(e)
            if line_no is not None:
                assert e.line_no == line_no, repr(e)
                assert f"line {line_no}" in str(e)
            if field is not None:
                assert e.field == field, repr(e)
                assert field in str(e)
            return r
    return _Ctx()


# --- batch files --------------------------------------------------------------------

def batch_lines(n: int = 5, orig: str = "") -> list[BatchLine]:
    return [BatchLine(seq=i * 3, name=NAMES[i % len(NAMES)], id_no=id_no(i),
                      acct_no=f"62220202{i:08d}", acct_bank="某某银行某支行" if i % 2 else "",
                      amount=i * 1001, proj_code="NB2024-01", remark="春耕补贴" if i % 3 else "",
                      orig_batch_no=orig)
            for i in range(1, n + 1)]


def batch_header(lines: list[BatchLine], **kw) -> BatchHeader:
    h = BatchHeader(batch_no="ORD1-P01", order_no="ORD1", payer_acct="3100201234567890",
                    payer_name="某县财政局", total_count=len(lines),
                    total_amount=sum(x.amount for x in lines), submit_date="20240105",
                    proj_short="耕地补贴")
    for k, v in kw.items():
        setattr(h, k, v)
    return h


def write_batch(lines, header=None, **kw) -> bytes:
    out = io.BytesIO()
    w = BatchFileWriter(out, header or batch_header(lines), **kw)
    for line in lines:
        w.write_line(line)
    w.close()
    return out.getvalue()


def read_all_batch(data, **kw):
    header, it = read_batch_file(data if not isinstance(data, bytes) else io.BytesIO(data), **kw)
    return header, list(it)


def test_batch_round_trip():
    """A batch file written from records reads back as the same records, GB18030 names included."""
    lines = batch_lines()
    data = write_batch(lines)
    header, got = read_all_batch(data)
    assert header == batch_header(lines)
    assert got == lines
    assert "亅".encode("gb18030")[1:] == b"|"  # a '|' byte inside a name, yet one field
    assert data.startswith("H|ORD1-P01|ORD1|3100201234567890|某县财政局|5|150.15|20240105|耕地补贴\r\n"
                           .encode("gb18030"))
    assert "D|6|䶮|".encode("gb18030") in data and data.endswith(b"\r\n")
    assert b"?" not in data


def test_batch_wire_layout():
    """One D line exactly as the spec lays it out, empty optional fields included."""
    line = BatchLine(7, "𠮷", id_no(7), "62220202000000077", "", 100, "P1", "", "")
    data = write_batch([line])
    assert data.split(b"\r\n")[1].decode("gb18030") == f"D|7|𠮷|{id_no(7)}|62220202000000077||1.00|P1||"


def test_batch_retry_round_trip():
    """A RETRY batch carries OrigBatchNo on every line."""
    lines = batch_lines(3, orig="ORD1-P01")
    h = batch_header(lines, batch_no="ORD1-R02")
    data = write_batch(lines, h, kind="RETRY")
    assert read_all_batch(data, kind="RETRY") == (h, lines)
    assert read_all_batch(data) == (h, lines)


def test_batch_fen_unit():
    """A bank configured for fen gets whole fen, and a yuan amount in its file is E999."""
    lines = batch_lines(2)
    data = write_batch(lines, unit="fen")
    assert b"|1001|" in data
    assert read_all_batch(data, unit="fen")[1] == lines
    with refused("E999", 1, "TotalAmount"):
        read_all_batch(write_batch(lines), unit="fen")


def test_batch_reads_from_any_chunking(monkeypatch):
    """Lines, single bytes or tiny read blocks: same records, same line numbers in errors."""
    lines = batch_lines(7)
    data = write_batch(lines)
    assert read_all_batch(data.splitlines(keepends=True))[1] == lines
    assert read_all_batch(bytes([b]) for b in data)[1] == lines
    monkeypatch.setattr(cf, "_BLOCK", 7)  # lines straddle every block boundary
    assert read_all_batch(data)[1] == lines
    bad = data.replace(b"D|15|", b"D|015|")
    with refused("E999", 6, "Seq"):
        read_all_batch(bad)


def test_batch_hashers_see_every_byte():
    """The reader can digest the file in the same pass (FileSM3, SM2 e)."""
    data = write_batch(batch_lines())
    h = sm.SM3Hasher()
    header, it = read_batch_file(io.BytesIO(data), hashers=[h])
    list(it)
    assert h.hexdigest() == sm.sm3_hex(data)


H_ONE = "H|ORD1-P01|ORD1|3100201234567890|某县财政局|{n}|{amt}|20240105|耕地补贴"


def batch_file(*d_lines: str, n: int | None = None, amt: str | None = None) -> bytes:
    """An H line (counting the D lines as 12.34 each unless told) and the D lines given."""
    count = len(d_lines) if n is None else n
    total = cf.money.format_yuan(1234 * len(d_lines)) if amt is None else amt
    return crlf(H_ONE.format(n=count, amt=total), *d_lines)


def d_line(**kw) -> str:
    fields = {"Seq": "5", "Name": "张三", "IdNo": id_no(5), "AcctNo": "6222020200000005",
              "AcctBank": "银行", "Amount": "12.34", "ProjCode": "P1", "Remark": "备注",
              "OrigBatchNo": ""}
    fields.update(kw)
    return "D|" + "|".join(fields.values())


@pytest.mark.parametrize("kw,field", [
    ({"Seq": "0"}, "Seq"),
    ({"Seq": "-6"}, "Seq"),
    ({"Seq": "06"}, "Seq"),
    ({"Seq": "6a"}, "Seq"),
    ({"Seq": ""}, "Seq"),
    ({"Name": ""}, "Name"),
    ({"Name": "  "}, "Name"),
    ({"IdNo": BAD_CHECK}, "IdNo"),
    ({"IdNo": "11010519491231002x"}, "IdNo"),
    ({"IdNo": "1101051949123100"}, "IdNo"),
    ({"IdNo": "11010519491231002XX"}, "IdNo"),
    ({"AcctNo": "6222020"}, "AcctNo"),
    ({"AcctNo": "6" * 33}, "AcctNo"),
    ({"AcctNo": "6222-0202-0000"}, "AcctNo"),
    ({"Amount": "0.00"}, "Amount"),
    ({"Amount": "1.5"}, "Amount"),
    ({"Amount": "01.00"}, "Amount"),
    ({"Amount": "1.000"}, "Amount"),
    ({"Amount": "-1.00"}, "Amount"),
    ({"Amount": "1,00"}, "Amount"),
    ({"Amount": " 1.00"}, "Amount"),
    ({"Amount": "1e2"}, "Amount"),
    ({"Amount": ""}, "Amount"),
    ({"ProjCode": ""}, "ProjCode"),
    ({"OrigBatchNo": "ORD1-P00"}, "OrigBatchNo"),
    ({"OrigBatchNo": "-bad"}, "OrigBatchNo"),
    ({"Remark": "a|b"}, "Line"),
    ({"Remark": "a\rb"}, "Remark"),
])
def test_batch_reader_refuses_malformed_d_line(kw, field):
    """Each malformed D field is E999 with its line number and field name."""
    data = batch_file(d_line(Seq="1"), d_line(**{"Seq": "5", **kw}))
    with refused("E999", 3, field):
        read_all_batch(data, kind="PAY")


@pytest.mark.parametrize("old,new,field", [
    ("|耕地补贴", "|耕地补", "ProjShort"),
    ("|耕地补贴", "|耕地补贴金", "ProjShort"),
    ("|耕地补贴", "|", "ProjShort"),
    ("|20240105|", "|20240231|", "SubmitDate"),
    ("|20240105|", "|2024015|", "SubmitDate"),
    ("H|ORD1-P01|", "H|-ORD1|", "BatchNo"),
    ("|ORD1|", "|ORD 1|", "OrderNo"),
    ("|3100201234567890|", "|31002|", "PayerAcct"),
    ("|某县财政局|", "||", "PayerName"),
    ("|1|12.34|", "|01|12.34|", "TotalCount"),
    ("|1|12.34|", "|1|12.3|", "TotalAmount"),
    ("H|ORD1", "X|ORD1", "RecordType"),
    ("|耕地补贴", "|耕地补贴|extra", "Line"),
])
def test_batch_reader_refuses_malformed_h_line(old, new, field):
    """Each malformed H field is E999 on line 1, raised before any D line is read."""
    data = batch_file(d_line()).replace(old.encode("gb18030"), new.encode("gb18030"), 1)
    with refused("E999", 1, field):
        read_batch_file(io.BytesIO(data))


def test_proj_short_counts_code_points():
    """Four characters is four code points, whatever their byte length."""
    lines = batch_lines(1)
    for short in ("𠮷𠮷𠮷𠮷", "ABCD", "补贴A1"):
        assert read_all_batch(write_batch(lines, batch_header(lines, proj_short=short)))[0] \
            .proj_short == short


def test_batch_seq_must_ascend():
    """A repeated or descending Seq is E999 on the second occurrence."""
    with refused("E999", 3, "Seq"):
        read_all_batch(batch_file(d_line(Seq="4"), d_line(Seq="4")))
    with refused("E999", 3, "Seq"):
        read_all_batch(batch_file(d_line(Seq="4"), d_line(Seq="3")))


def test_errors_come_in_line_order_after_the_good_lines():
    """The iterator yields the good lines before the first bad one, then raises for it."""
    header, it = read_batch_file(io.BytesIO(batch_file(d_line(Seq="1"), d_line(Seq="2"),
                                                       d_line(Seq="3", Amount="0.00"),
                                                       d_line(Seq="2"))))
    assert [next(it).seq, next(it).seq] == [1, 2]
    with refused("E999", 4, "Amount"):
        next(it)


def test_crlf_required():
    """A line ending in LF alone, a stray CR, or a last line without CRLF is E999."""
    good = batch_file(d_line(Seq="1"), d_line(Seq="2"))
    with refused("E999", 2, "CRLF"):
        read_all_batch(good.replace(b"\r\nD|2", b"\nD|2"))
    with refused("E999", 3, "CRLF"):
        read_all_batch(good[:-2])
    with refused("E999", 3, "CRLF"):
        read_all_batch(good[:-1])
    with refused("E999", 1, "CRLF"):
        read_all_batch(good.replace(b"\r\n", b"\n", 1))
    with refused("E999", 4, "CRLF"):
        read_all_batch(good + b"D|3")
    with refused("E999", 4, "RecordType"):
        read_all_batch(good + b"\r\n")  # a blank line


def test_batch_totals_are_e003():
    """Well-formed lines that do not add up to the H line are E003, after every line was read."""
    header, it = read_batch_file(io.BytesIO(batch_file(d_line(Seq="1"), d_line(Seq="2"), n=3)))
    assert len([next(it), next(it)]) == 2
    with refused("E003", 1, "TotalCount"):
        next(it)
    with refused("E003", 1, "TotalAmount"):
        read_all_batch(batch_file(d_line(Seq="1"), d_line(Seq="2"), amt="24.67"))


def test_more_lines_than_announced_stops_early():
    """A file with more D lines than TotalCount is refused at the first line too many."""
    with refused("E003", 4, "TotalCount"):
        read_all_batch(batch_file(d_line(Seq="1"), d_line(Seq="2"), d_line(Seq="3"),
                                  d_line(Seq="4"), n=2))


def test_retry_needs_orig_batch_no():
    """In a RETRY batch every D line names OrigBatchNo; in a PAY batch none does."""
    retry = batch_file(d_line(Seq="1", OrigBatchNo="ORD1-P00"), d_line(Seq="2"))
    with refused("E999", 3, "OrigBatchNo"):
        read_all_batch(retry, kind="RETRY")
    with refused("E999", 3, "OrigBatchNo"):
        read_all_batch(retry)  # kind taken from the first line
    with refused("E999", 2, "OrigBatchNo"):
        read_all_batch(batch_file(d_line(Seq="1")), kind="RETRY")
    with refused("E999", 2, "OrigBatchNo"):
        read_all_batch(batch_file(d_line(Seq="1", OrigBatchNo="ORD1-P01")))  # itself


def test_undecodable_bytes_name_the_field():
    """Bytes that are not GB18030 are E999 naming the line and the field they sit in."""
    data = batch_file(d_line(Seq="1"), d_line(Seq="2")).replace("|张三|".encode("gb18030"),
                                                                b"|\x81\x20|", 1)
    with refused("E999", 2, "Name"):
        read_all_batch(data)


def test_other_record_types_and_empty_file():
    """A second H, an unknown record type or an empty file are E999."""
    with refused("E999", 3, "RecordType"):
        read_all_batch(batch_file(d_line(Seq="1"), H_ONE.format(n=1, amt="12.34")))
    with refused("E999", 1, "RecordType"):
        read_batch_file(io.BytesIO(b""))


def test_endless_line_is_refused():
    """A line that never ends is refused once it passes the cap, not buffered without bound."""
    def endless():
        yield crlf(H_ONE.format(n=1, amt="12.34"))
        while True:
            yield b"D" * 65536
    with refused("E999", 2, "Line"):
        header, it = read_batch_file(endless())  # the H line's block already holds the excess
        next(it)


def test_empty_batch_header_only():
    """An H line announcing nothing, with nothing after it, is a well-formed empty file."""
    assert read_all_batch(batch_file(amt="0.00"))[1] == []


# --- batch writer ---------------------------------------------------------------------

def one(**kw) -> BatchLine:
    base = dict(seq=1, name="张三", id_no=id_no(1), acct_no="6222020200000001", acct_bank="",
                amount=100, proj_code="P1", remark="", orig_batch_no="")
    base.update(kw)
    return BatchLine(**base)


@pytest.mark.parametrize("kw,field", [
    ({"seq": 0}, "Seq"),
    ({"seq": "1"}, "Seq"),
    ({"id_no": BAD_CHECK}, "IdNo"),
    ({"id_no": "11010519491231002x"}, "IdNo"),
    ({"acct_no": "1234567"}, "AcctNo"),
    ({"amount": 0}, "Amount"),
    ({"amount": 1.5}, "Amount"),
    ({"amount": -100}, "Amount"),
    ({"name": "张|三"}, "Name"),
    ({"name": ""}, "Name"),
    ({"remark": "a\r\nb"}, "Remark"),
    ({"acct_bank": "x|y"}, "AcctBank"),
    ({"proj_code": ""}, "ProjCode"),
    ({"orig_batch_no": "ORD1-P00"}, "OrigBatchNo"),
])
def test_batch_writer_refuses(kw, field):
    """The writer refuses each malformed field by name, before writing the line."""
    out = io.BytesIO()
    w = BatchFileWriter(out, batch_header([one()]), kind="PAY")
    with refused("E999", 2, field):
        w.write_line(one(**kw))
    w.write_line(one())  # the bad line left nothing behind
    w.close()
    assert read_all_batch(out.getvalue())[1] == [one()]


def test_batch_writer_seq_order():
    """Seq must ascend in the writer too."""
    w = BatchFileWriter(io.BytesIO(), batch_header([one(), one(seq=2)]))
    w.write_line(one(seq=2))
    with refused("E999", 3, "Seq"):
        w.write_line(one(seq=2))
    with refused("E999", 3, "Seq"):
        w.write_line(one(seq=1))


@pytest.mark.parametrize("short", ["耕地补", "耕地补贴金", "耕|补贴"])
def test_batch_writer_refuses_proj_short(short):
    """ProjShort must be exactly 4 characters without '|'."""
    with refused("E999", 1):
        BatchFileWriter(io.BytesIO(), batch_header([one()], proj_short=short))


def test_batch_writer_close_checks_totals():
    """close() refuses a file whose lines do not add up to the H line: E003."""
    w = BatchFileWriter(io.BytesIO(), batch_header([one(), one(seq=2)]))
    w.write_line(one())
    with refused("E003", 1, "TotalCount"):
        w.close()
    w = BatchFileWriter(io.BytesIO(), batch_header([one()], total_amount=101))
    w.write_line(one())
    with refused("E003", 1, "TotalAmount"):
        w.close()


def test_batch_writer_retry_kind():
    """A RETRY writer refuses a line without OrigBatchNo; an inferred kind holds for later lines."""
    w = BatchFileWriter(io.BytesIO(), batch_header([one()]), kind="RETRY")
    with refused("E999", 2, "OrigBatchNo"):
        w.write_line(one())
    w = BatchFileWriter(io.BytesIO(), batch_header([one(), one(seq=2)]))
    w.write_line(one(orig_batch_no="ORD1-P00"))
    with refused("E999", 3, "OrigBatchNo"):
        w.write_line(one(seq=2))


def test_unencodable_name_is_refused_never_question_marked():
    """A bank on GBK cannot take 𠮷: the item is refused naming Name, never written as '?'."""
    out = io.BytesIO()
    w = BatchFileWriter(out, batch_header([one()]), encoding="gbk")
    with refused("E999", 2, "Name"):
        w.write_line(one(name="𠮷野"))
    with refused("E999", 1, "PayerName"):
        BatchFileWriter(io.BytesIO(), batch_header([one()], payer_name="䶮县"), encoding="gbk")


# --- result files -------------------------------------------------------------------------

def result_lines() -> list[ResultLine]:
    return [ResultLine(2, "62220202000000002", 10000, "S", "0000", "成功", "BS0002", "20240106"),
            ResultLine(5, "62220202000000005", 250, "F", "R001", "账号不存在", "", "20240106"),
            ResultLine(9, "62220202000000099", 1, "S", "0000", "成功", "BS0009", "20240105"),
            ResultLine(11, "62220202000009910", 700, "F", "R010", "账户人已故", "", "20240106")]


def result_header(lines, **kw) -> ResultHeader:
    s = [x for x in lines if x.status == "S"]
    f = [x for x in lines if x.status == "F"]
    h = ResultHeader("ORD1-P01", "BB20240106001", len(lines), sum(x.amount for x in lines),
                     len(s), sum(x.amount for x in s), len(f), sum(x.amount for x in f),
                     "20240106")
    for k, v in kw.items():
        setattr(h, k, v)
    return h


def write_result(lines, header=None, **kw) -> bytes:
    out = io.BytesIO()
    w = ResultFileWriter(out, header or result_header(lines), **kw)
    for line in lines:
        w.write_line(line)
    w.close()
    return out.getvalue()


def read_all_result(data, **kw):
    header, it = read_result_file(io.BytesIO(data) if isinstance(data, bytes) else data, **kw)
    return header, list(it)


def test_result_round_trip():
    """A result file written from records reads back as the same records."""
    lines = result_lines()
    data = write_result(lines)
    assert data.splitlines()[0] == b"H|ORD1-P01|BB20240106001|4|109.51|2|100.01|2|9.50|20240106"
    assert "D|5|62220202000000005|2.50|F|R001|账号不存在||20240106\r\n".encode("gb18030") in data
    assert read_all_result(data) == (result_header(lines), lines)
    assert read_all_result(write_result(lines, unit="fen"), unit="fen")[1] == lines
    assert read_all_result(data.splitlines(keepends=True))[1] == lines


RH = "H|ORD1-P01|BB1|{n}|{amt}|{sn}|{sa}|{fn}|{fa}|20240106"
S_LINE = "D|{seq}|62220202000000002|1.00|S|0000|成功|BS{seq}|20240106"
F_LINE = "D|{seq}|62220202000000005|1.00|F|R001|账号不存在||20240106"


def result_file(*d: str, succ: int | None = None, fail: int | None = None) -> bytes:
    """An H line counting the given lines (1.00 each) as S or F by their status field."""
    s = sum(1 for x in d if x.split("|")[4] == "S") if succ is None else succ
    f = sum(1 for x in d if x.split("|")[4] != "S") if fail is None else fail
    y = cf.money.format_yuan
    return crlf(RH.format(n=s + f, amt=y(100 * (s + f)), sn=s, sa=y(100 * s), fn=f,
                          fa=y(100 * f)), *d)


def s_line(seq=3, **kw) -> str:
    return _edit(S_LINE.format(seq=seq), kw)


def f_line(seq=3, **kw) -> str:
    return _edit(F_LINE.format(seq=seq), kw)


def _edit(line: str, kw) -> str:
    names = ["Seq", "AcctNo", "Amount", "Status", "ReasonCode", "ReasonText", "BankSerial",
             "PostDate"]
    parts = line.split("|")
    for k, v in kw.items():
        parts[names.index(k) + 1] = v
    return "|".join(parts)


@pytest.mark.parametrize("line,field", [
    (s_line(BankSerial=""), "BankSerial"),
    (s_line(ReasonCode="R001"), "ReasonCode"),
    (s_line(ReasonText="OK"), "ReasonText"),
    (s_line(PostDate="20240230"), "PostDate"),
    (s_line(PostDate="2024016"), "PostDate"),
    (f_line(BankSerial="BS3"), "BankSerial"),
    (f_line(PostDate="20240105"), "PostDate"),
    (f_line(ReasonCode="0000"), "ReasonCode"),
    (f_line(ReasonCode="X001"), "ReasonCode"),
    (f_line(ReasonText=""), "ReasonText"),
    (s_line(Status="X"), "Status"),
    (s_line(Status=""), "Status"),
    (s_line(Amount="0.00"), "Amount"),
    (s_line(Amount="1.5"), "Amount"),
    (s_line(Amount="01.00"), "Amount"),
    (s_line(AcctNo="1234"), "AcctNo"),
    (s_line(Seq="03"), "Seq"),
    (s_line(seq=1), "Seq"),
    (s_line(seq=2), "Seq"),
    (s_line() + "|", "Line"),
])
def test_result_reader_refuses(line, field):
    """S lines need 0000/成功/serial/date; F lines a reason, no serial, PostDate = ProcDate."""
    data = result_file(s_line(seq=2), line)
    with refused("E999", 3, field):
        read_all_result(data)


def test_result_totals_e003():
    """H totals that the lines do not make are E003 once every line is read."""
    data = result_file(s_line(seq=2), f_line(seq=3), succ=2, fail=0)  # H: 2 S, 0 F
    header, it = read_result_file(io.BytesIO(data))
    assert [x.seq for x in (next(it), next(it))] == [2, 3]
    with refused("E003", 1, "SuccCnt"):
        next(it)
    with refused("E003", 1, "Total"):
        read_all_result(result_file(s_line(seq=2), succ=2, fail=0))


def test_result_header_must_add_up_by_itself():
    """SuccCnt + FailCnt must be Total (and amounts likewise), checked before any D line."""
    data = crlf("H|ORD1-P01|BB1|3|3.00|1|1.00|1|1.00|20240106", s_line(), f_line())
    with refused("E003", 1, "Total"):
        read_result_file(io.BytesIO(data))
    data = crlf("H|ORD1-P01|BB1|2|3.00|1|1.00|1|1.00|20240106", s_line(), f_line())
    with refused("E003", 1, "TotalAmt"):
        read_result_file(io.BytesIO(data))


def test_result_more_lines_than_total():
    """Lines beyond Total are refused at the first one too many."""
    data = result_file(s_line(seq=2), s_line(seq=3), s_line(seq=4), succ=2, fail=0)
    with refused("E003", 4, "Total"):
        read_all_result(data)


@pytest.mark.parametrize("kw,field", [
    ({"bank_serial": ""}, "BankSerial"),
    ({"reason_code": "R001"}, "ReasonCode"),
    ({"reason_text": "成 功"}, "ReasonText"),
    ({"status": "F"}, "ReasonCode"),
    ({"status": "s"}, "Status"),
    ({"post_date": "2024-01-06"}, "PostDate"),
    ({"amount": 0}, "Amount"),
    ({"bank_serial": "A|B"}, "BankSerial"),
])
def test_result_writer_refuses(kw, field):
    """The result writer holds S lines to the same rules as the reader."""
    base = dict(seq=1, acct_no="62220202000000001", amount=100, status="S", reason_code="0000",
                reason_text="成功", bank_serial="BS1", post_date="20240106")
    base.update(kw)
    w = ResultFileWriter(io.BytesIO(), result_header(result_lines()))
    with refused("E999", 2, field):
        w.write_line(ResultLine(**base))


def test_result_writer_f_rules_and_totals():
    """F lines carry no serial and post on ProcDate; close() checks every H total."""
    w = ResultFileWriter(io.BytesIO(), result_header(result_lines()))
    with refused("E999", 2, "BankSerial"):
        w.write_line(ResultLine(1, "62220202000000001", 100, "F", "R001", "x", "BS1", "20240106"))
    with refused("E999", 2, "PostDate"):
        w.write_line(ResultLine(1, "62220202000000001", 100, "F", "R001", "x", "", "20240107"))
    lines = result_lines()
    w = ResultFileWriter(io.BytesIO(), result_header(lines, succ_cnt=3, fail_cnt=1))
    for x in lines:
        w.write_line(x)
    with refused("E003", 1, "SuccCnt"):
        w.close()
    with refused("E003", 1, "Total"):
        ResultFileWriter(io.BytesIO(), result_header(lines, total=5))


def test_result_stream_constant_memory(monkeypatch):
    """The reader holds one block at a time: 4x the lines, the same peak memory.

    Blocks are shrunk to 64 KiB so that a few tens of thousands of lines span
    many of them (tracemalloc is slow); the production block is 1 MiB.
    """
    monkeypatch.setattr(cf, "_BLOCK", 1 << 16)

    def source(n):
        y = cf.money.format_yuan
        yield crlf(RH.format(n=n, amt=y(100 * n), sn=n, sa=y(100 * n), fn=0, fa="0.00"))
        for start in range(1, n + 1, 500):
            yield "".join(S_LINE.format(seq=i) + "\r\n"
                          for i in range(start, min(n, start + 499) + 1)).encode("gb18030")

    def peak(n):
        tracemalloc.start()
        try:
            header, it = read_result_file(source(n))
            count = sum(1 for _ in it)
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small_n, small = peak(10_000)  # about 11 blocks
    big_n, big = peak(40_000)  # about 44 blocks, 2.8 MB of file
    assert (small_n, big_n) == (10_000, 40_000)
    assert big < small * 1.25 + 256 * 1024


# --- statement files ------------------------------------------------------------------------

def statement() -> Statement:
    batches = [StatementBatch("ORD1-P01", "ORD1", 10, 10000, 8, 8000, 2, 2000, 1, 1000),
               StatementBatch("ORD2-R02", "ORD2", 3, 300, 3, 300, 0, 0, 0, 0)]
    refunds = [StatementRefund("ORD1-F01", "ORD1", 2, 2000, "RF0001"),
               StatementRefund("ORD3-F01", "ORD3", 1, 5, "RF0002")]
    header = StatementHeader("M202401", "3100201234567890", 11, 8300, 1, 1000, 3, 2005)
    return Statement(header, batches, refunds)


def write_stmt(st: Statement, **kw) -> bytes:
    out = io.BytesIO()
    write_statement_file(out, st, **kw)
    return out.getvalue()


def test_statement_round_trip():
    """A statement reads back whole: H, B lines and R lines."""
    data = write_stmt(statement())
    assert data.splitlines()[0] == b"H|M202401|3100201234567890|11|83.00|1|10.00|3|20.05"
    assert b"B|ORD1-P01|ORD1|10|100.00|8|80.00|2|20.00|1|10.00\r\n" in data
    assert b"R|ORD3-F01|ORD3|1|0.05|RF0002\r\n" in data
    assert read_statement_file(io.BytesIO(data), period="M202401") == statement()
    assert read_statement_file(io.BytesIO(write_stmt(statement(), unit="fen")),
                               unit="fen") == statement()


@pytest.mark.parametrize("old,new,field", [
    (b"H|M202401|3100201234567890|11|", b"H|M202401|3100201234567890|12|", "PaidCnt"),
    (b"|11|83.00|", b"|11|83.01|", "PaidAmt"),
    (b"|1|10.00|3|20.05", b"|2|10.00|3|20.05", "ReturnCnt"),
    (b"|1|10.00|3|20.05", b"|1|10.00|3|20.06", "RefundAmt"),
    (b"|1|10.00|3|20.05", b"|1|10.00|2|20.05", "RefundCnt"),
])
def test_statement_h_must_be_the_sum(old, new, field):
    """A statement whose H line is not the sum of its lines is rejected whole: E003."""
    data = write_stmt(statement()).replace(old, new, 1)
    with refused("E003", 1, field):
        read_statement_file(io.BytesIO(data))


@pytest.mark.parametrize("old,new,code,line,field", [
    (b"B|ORD1-P01|ORD1|10|100.00|8|", b"B|ORD1-P01|ORD1|11|100.00|8|", "E003", 2, "Cnt"),
    (b"|8|80.00|2|20.00|1|10.00", b"|8|80.00|2|20.01|1|10.00", "E003", 2, "Amt"),
    (b"|0|0.00|0|0.00\r\n", b"|0|0.00|4|0.00\r\n", "E003", 3, "ReturnCnt"),
    (b"B|ORD2-R02|", b"B|ORD1-P01|", "E999", 3, "BatchNo"),
    (b"R|ORD3-F01|", b"R|ORD1-F01|", "E999", 5, "RefundNo"),
    (b"R|ORD3-F01|ORD3|1|0.05|RF0002", b"R|ORD3-F01|ORD3|1|0.05|", "E999", 5, "RefundSerial"),
    (b"R|ORD3-F01|", b"X|ORD3-F01|", "E999", 5, "RecordType"),
    (b"|1|0.05|", b"|1|0.5|", "E999", 5, "Amt"),
    (b"H|M202401|", b"H|M202413|", "E999", 1, "Period"),
])
def test_statement_line_errors(old, new, code, line, field):
    """B lines must add up in themselves; numbers are unique; fields are well-formed."""
    data = write_stmt(statement())
    assert old in data
    with refused(code, line, field):
        read_statement_file(io.BytesIO(data.replace(old, new, 1)))


def test_statement_period_must_match_the_file_name():
    """The caller's expected period (from STMT_{Period}.txt) is held against the H line."""
    with refused("E999", 1, "Period"):
        read_statement_file(io.BytesIO(write_stmt(statement())), period="M202402")


def test_statement_writer_checks_h():
    """The writer refuses a statement whose H does not add up, and a repeated batch."""
    st = statement()
    st.header.paid_amt += 1
    with refused("E003", 1, "PaidAmt"):
        write_stmt(st)
    w = StatementFileWriter(io.BytesIO(), statement().header)
    w.write_batch(statement().batches[0])
    with refused("E999", 3, "BatchNo"):
        w.write_batch(statement().batches[0])


def test_empty_statement():
    """A period with nothing DONE is an H line of zeros."""
    st = Statement(StatementHeader("D20240105", "3100201234567890", 0, 0, 0, 0, 0, 0))
    assert read_statement_file(io.BytesIO(write_stmt(st))) == st
