"""The loader's chunk path (`OrderValidator.check_lines`) accepts only what the thorough check accepts.

A chunk of NDJSON lines is first matched whole against the core's own form of a
valid item; only if every line matches are its rows taken without decoding
each line as JSON. If that path ever gave a row the thorough path
(`json.loads` + `_check_slowly`) would refuse or word differently, a bad item
would reach a bank: hypothesis renders valid and mutated items in the core's
form and in others, corrupts the raw text, and compares the two verdicts.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import ric

from gateway.validation import ITEM_FIELDS, OrderValidator

STATUS = "PENDING"


def valid_id(body17: str) -> str:
    return body17 + ric.calc_check_digit(body17 + "0")


GOOD_ID = valid_id("11010519491231002")
WRONG_CHECK = GOOD_ID[:17] + ("1" if GOOD_ID[17] != "1" else "2")
BASE = {"seq": 5, "name": "张三", "id_number": GOOD_ID, "account_no": "6228480000000000018",
        "account_bank": "中国农业银行", "amount": 1234, "remark": "耕地补贴"}
_core = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode   # the core's own form

SPECIAL = [
    "", "a|b", "x\r\ny", "\ud800", "\ufdd0", "\U0001fffe", "𠮷䶮", "\x7f", "\x85", "·", "1" * 33,
    "1" * 32, "0" * 8, "0" * 7, "a" * 50, "a" * 51, "b" * 100, "b" * 101, valid_id("34012119900101123"),
    WRONG_CHECK, valid_id("34012118790101123"), valid_id("34012119900230123"), GOOD_ID.lower(),
    GOOD_ID[:17] + "x", "11010519491231002Y", "123456789012", "12345678901", "１２３４５６７８", 0, -1,
    10 ** 18, 10 ** 19, 1.0, True, None, "a\"b", "a\\b", "\t", "\x00", "ǅ"]
special_values = st.sampled_from(SPECIAL)
odd_values = st.one_of(
    special_values, special_values, special_values, st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=10 ** 20), st.floats(allow_nan=False), st.text(max_size=60),
    st.text(alphabet=st.characters(min_codepoint=0x7f, max_codepoint=0xa0), max_size=3),
    st.lists(st.integers(), max_size=2))


@st.composite
def item(draw, seq: int):
    it = dict(BASE, seq=seq)
    if draw(st.booleans()):
        it["account_bank_code"] = draw(st.sampled_from([None, "103100000026", "10310000002", "x"]))
    if draw(st.integers(0, 2)) == 0:
        for key in draw(st.lists(st.sampled_from(sorted(it) + ["extra"]), min_size=1, max_size=2,
                                 unique=True)):
            if draw(st.integers(0, 3)) == 0 and key in it:
                del it[key]
            else:
                it[key] = draw(odd_values)
    return it


@st.composite
def line(draw, seq: int) -> bytes:
    it = draw(item(seq))
    how = draw(st.sampled_from(["core"] * 7 + ["spaces", "ascii", "shuffled"]))
    if how == "core":
        text = _core(it)
    elif how == "spaces":
        text = json.dumps(it, ensure_ascii=False)
    elif how == "ascii":
        text = json.dumps(it, separators=(",", ":"))
    else:
        keys = draw(st.permutations(list(it)))
        text = _core({k: it[k] for k in keys})
    if draw(st.integers(0, 9)) == 0:   # a raw edit of the text, not of the value
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(['"', "\\", "|", "{", "}", " ", "1", "X", ",", "\x7f"])) \
            + text[at + draw(st.integers(0, 1)):]
    return text.encode("utf-8", "surrogatepass")


@st.composite
def chunks(draw) -> list[bytes]:
    seqs = sorted(draw(st.lists(st.integers(4, 16), min_size=1, max_size=3, unique=True)))
    if draw(st.integers(0, 9)) == 0:
        seqs = draw(st.permutations(seqs + [seqs[0]]))
    return [draw(line(s)) for s in seqs]


def fresh() -> OrderValidator:
    v = OrderValidator({"order_no": "O1", "total_count": 10, "total_amount": 1})
    v.last_seq = 4
    return v


def thorough(lines: list[bytes]) -> tuple[list[tuple] | None, OrderValidator]:
    """The thorough path's rows for *lines*, or None if it refuses any line."""
    v = fresh()
    rows = []
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            return None, v
        if not isinstance(obj, dict):
            return None, v
        row = v._check_slowly(obj, 1)
        if row is None:
            return None, v
        rows.append((row["order_no"], row["seq"], row["name"], row["id_number"], row["account_no"],
                     row["account_bank"], row["account_bank_code"], row["amount"], row["remark"], STATUS))
    return rows, v


@settings(max_examples=800, deadline=None)
@given(chunks())
def test_chunk_path_never_accepts_what_the_thorough_check_refuses(lines):
    """Any chunk: check_lines gives None (and records nothing), or exactly the thorough path's
    rows, count, sum and last seq, with no reason."""
    v = fresh()
    rows = v.check_lines(lines, STATUS)
    if rows is None:
        assert (v.count, v.amount, v.last_seq, v.reasons) == (0, 0, 4, [])
        return
    want, slow = thorough(lines)
    assert want is not None and not slow.reasons, (lines, slow.reasons)
    assert rows == want
    assert (v.count, v.amount, v.last_seq) == (slow.count, slow.amount, slow.last_seq)


def test_every_special_value_in_every_field_in_the_core_form():
    """Each edge value (separators, control and non-characters, lengths at and past the limits,
    wrong ID forms, numbers at the edges) in each field of a core-form line, next to a valid
    line: the chunk path's verdict is None or the thorough path's rows."""
    checked = taken = 0
    for key in sorted(BASE) + ["account_bank_code"]:
        for value in SPECIAL:
            edited = dict(BASE, seq=6)
            edited[key] = value
            lines = [_core(dict(BASE, seq=5)).encode(), _core(edited).encode("utf-8", "surrogatepass")]
            v = fresh()
            rows = v.check_lines(lines, STATUS)
            want, slow = thorough(lines)
            checked += 1
            if rows is not None:
                taken += 1
                assert rows == want and not slow.reasons, (key, value, slow.reasons)
    assert checked > 300 and taken > 20


def test_chunk_path_takes_the_core_form_of_valid_items():
    """Valid items as the core writes them, with and without a bank code (null or not), go
    through the chunk path (else the optimisation is dead code)."""
    lines = [_core(dict(BASE, seq=5)).encode(),
             _core(dict(BASE, seq=6, account_bank_code="103100000026")).encode(),
             _core(dict(BASE, seq=9, account_bank_code=None, account_bank=None, remark=None)).encode()]
    v = fresh()
    rows = v.check_lines(lines, STATUS)
    assert rows is not None and [r[1] for r in rows] == [5, 6, 9]
    assert rows[1][6] == "103100000026" and rows[0][6] is None and rows[2][5:9] == ("", None, 1234, "")
    assert (v.count, v.amount, v.last_seq) == (3, 3 * 1234, 9)


def test_one_bad_line_sends_the_whole_chunk_to_the_thorough_path():
    """A wrong check character, a seq not above the last, or an impossible birth date in one
    line of an otherwise valid chunk: nothing of the chunk is taken."""
    good = [_core(dict(BASE, seq=s)).encode() for s in (5, 6, 7)]
    for bad in (dict(BASE, seq=8, id_number=WRONG_CHECK), dict(BASE, seq=6),
                dict(BASE, seq=8, id_number=valid_id("34012119900230123")),
                dict(BASE, seq=8, id_number=valid_id("34012118790101123"))):
        v = fresh()
        assert v.check_lines(good + [_core(bad).encode()], STATUS) is None, bad
        assert (v.count, v.amount, v.last_seq) == (0, 0, 4)
    assert fresh().check_lines([_core(dict(BASE, seq=4)).encode()], STATUS) is None   # = last seq
    assert set(ITEM_FIELDS) <= set(BASE)
