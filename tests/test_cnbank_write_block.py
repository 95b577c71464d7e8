"""BatchFileWriter.write_block writes exactly what write_line writes, line for line.

The block path formats a whole block of D lines, matches it against the
reader's block pattern and encodes it at once; anything unusual goes line by
line through write_line, which names the line and field at fault. Whatever
the lines, the bytes written, the error raised (code, line, field) and what
the writer holds afterwards must be the same as writing them one by one.
"""

from __future__ import annotations

import io
from dataclasses import astuple

from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import ric

from protocols.cnbank_files import BatchFileWriter, BatchHeader, BatchLine, FileFormatError


def id_no(n: int) -> str:
    body = f"11010519{60 + n % 40:02d}{n % 12 + 1:02d}{n % 28 + 1:02d}{n % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


BAD_CHECK = id_no(1)[:-1] + ("1" if id_no(1)[-1] != "1" else "2")
# A name that is a whole line's worth of fields, CRLF, and the start of another line: the
# block's text would still be well-formed lines, one more than were written.
SMUGGLED = f"张三|{id_no(3)}|62220202000000003||3.00|NB2024-01||\r\nD|5|李四"
EDGE = [None, "", " ", "　", "张|三", "a\r\nD|9|x", "a\rb", "a\nb", "𠮷野家", "亅億墊", "欧阳·娜娜", "\udc80",
        "x" * 200, BAD_CHECK, id_no(7), id_no(7)[:17] + "x", id_no(7) + "1", "1234567", "12345678",
        "1" * 33, "ORD1-P01", "ORD1-P00", "O*1", SMUGGLED, 0, -5, 1, 10 ** 18, 10 ** 17, 1.5, True, b"x"]


def line(i: int, orig: str = "") -> BatchLine:
    return BatchLine(seq=i * 2, name=["张三", "𠮷野家", "欧阳·娜娜"][i % 3], id_no=id_no(i),
                     acct_no=f"62220202{i:08d}", acct_bank="某某银行" if i % 2 else "",
                     amount=i * 1001, proj_code="NB2024-01", remark="春耕" if i % 3 else "",
                     orig_batch_no=orig)


@st.composite
def blocks(draw):
    orig = draw(st.sampled_from(["", "ORD1-P00"]))
    n = draw(st.integers(1, 8))
    lines = [list(astuple(line(i, orig))) for i in range(1, n + 1)]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, n - 1))
        lines[at][draw(st.integers(0, 8))] = draw(st.sampled_from(EDGE))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=2)))
    parts = [lines[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    return draw(st.sampled_from([None, "PAY", "RETRY"])), [[tuple(t) for t in p] for p in parts]


def header(parts, unit: str) -> BatchHeader:
    good = [t for p in parts for t in p]
    amount = sum(t[5] for t in good if type(t[5]) is int and t[5] > 0)
    return BatchHeader(batch_no="ORD1-P01", order_no="ORD1", payer_acct="3100201234567890",
                       payer_name="某县财政局", total_count=len(good), total_amount=amount,
                       submit_date="20240105", proj_short="耕地补贴")


def run(parts, kind, unit, encoding, by_block: bool):
    out = io.BytesIO()
    w = BatchFileWriter(out, header(parts, unit), unit=unit, encoding=encoding, kind=kind)
    error = None
    try:
        for p in parts:
            if by_block:
                w.write_block(p)
            else:
                for t in p:
                    w.write_line(BatchLine(*t))
        w.close()
    except FileFormatError as e:
        error = (e.code, e.line_no, e.field, e.message)
    except (TypeError, ValueError) as e:
        error = (type(e).__name__,)
    w._w.flush()
    return out.getvalue(), error, (w.count, w.amount, w._prev, w._kind, w._w.line_no)


@settings(max_examples=600, deadline=None)
@given(blocks(), st.sampled_from(["yuan", "fen"]), st.sampled_from(["gb18030", "gbk"]))
def test_write_block_is_write_line_for_each(kind_parts, unit, encoding):
    """Same bytes, same error (code, line, field, message), same counts and kind afterwards."""
    kind, parts = kind_parts
    assert run(parts, kind, unit, encoding, True) == run(parts, kind, unit, encoding, False)


def test_every_edge_value_in_every_field():
    """Each edge value in each field of the third of five lines: as write_line for each."""
    for orig in ("", "ORD1-P00"):
        for col in range(9):
            for value in EDGE:
                lines = [list(astuple(line(i, orig))) for i in range(1, 6)]
                lines[2][col] = value
                parts = [[tuple(t) for t in lines]]
                for unit in ("yuan", "fen"):
                    assert run(parts, None, unit, "gb18030", True) == \
                        run(parts, None, unit, "gb18030", False), (col, value, unit)


def test_a_good_block_takes_the_block_path():
    """Valid lines are formatted as a block (else the optimisation is dead code)."""
    w = BatchFileWriter(io.BytesIO(), header([[astuple(line(1))]], "yuan"))
    assert w._block([astuple(line(i)) for i in range(1, 50)]) is not None
    w = BatchFileWriter(io.BytesIO(), header([[astuple(line(1))]], "yuan"), kind="RETRY")
    assert w._block([astuple(line(i, "ORD1-P00")) for i in range(1, 50)]) is not None


def test_golden_batch_lines_as_one_block_are_the_golden_bytes():
    """The hand-written golden .req plaintext (tests/golden/cnbank), written as one block."""
    from tests.test_golden_wire import BATCH, BATCH_HEADER, BATCH_LINES, G
    out = io.BytesIO()
    w = BatchFileWriter(out, BATCH_HEADER, kind="PAY")
    w.write_block([astuple(x) for x in BATCH_LINES])
    w.close()
    assert out.getvalue() == (G / f"{BATCH}.req.plain").read_bytes()


def _link(tmp_path, ours, theirs):
    from types import SimpleNamespace

    from adapters.cnbank.link import CnBankLink
    lk = CnBankLink.__new__(CnBankLink)   # only what write_batch_file needs: no sockets, no SFTP
    lk.bank = SimpleNamespace(cnbank=SimpleNamespace(amount_unit="yuan", encoding="gb18030",
                                                     signature_encoding="raw", sm2_cipher_order="C1C3C2"))
    lk.our_key, lk.bank_key, lk.uid, lk.work_dir = ours, theirs.public_key, b"1234567812345678", str(tmp_path)
    return lk


def test_batch_file_is_encrypted_as_written_and_opens_to_the_plaintext(tmp_path):
    """write_batch_file encrypts while writing: the .req decrypts, under the key||iv the bank
    unwraps from FileEncKey, to the plaintext write_line gives; FileSM3 and the .sig are of
    that plaintext; no plaintext or partial file is left in the work dir."""
    import base64

    from protocols import sm
    ours, theirs = sm.generate_keypair(), sm.generate_keypair()
    lk = _link(tmp_path, ours, theirs)
    lines = [line(i) for i in range(1, 3000)]
    head = header([[astuple(x) for x in lines]], "yuan")
    built = lk.write_batch_file(head, lines[:10], blocks=[[astuple(x) for x in lines[10:1000]],
                                                          [astuple(x) for x in lines[1000:]]])
    plain = io.BytesIO()
    w = BatchFileWriter(plain, head)
    for x in lines:
        w.write_line(x)
    w.close()
    plain = plain.getvalue()
    kiv = sm.sm2_decrypt(theirs, base64.b64decode(built.enc_key))
    cipher = (tmp_path / built.name).read_bytes()
    assert sm.sm4_cbc_decrypt(kiv[:16], kiv[16:], cipher) == plain
    assert built.sm3 == sm.sm3_hex(plain)
    assert sm.sm2_verify(ours.public_key, plain, (tmp_path / f"{built.name}.sig").read_bytes(),
                         b"1234567812345678")
    assert sorted(p.name for p in tmp_path.iterdir()) == [built.name, f"{built.name}.gwkey",
                                                          f"{built.name}.sig"]


def test_a_refused_batch_file_leaves_nothing_in_the_work_dir(tmp_path):
    """The writer refuses the file (its lines do not add up to the H line): no .req, no part."""
    import pytest

    from protocols import sm
    lk = _link(tmp_path, sm.generate_keypair(), sm.generate_keypair())
    lines = [astuple(line(i)) for i in range(1, 20)]
    with pytest.raises(FileFormatError):
        lk.write_batch_file(header([lines + [astuple(line(30))]], "yuan"), [], blocks=[lines])
    assert list(tmp_path.iterdir()) == []
