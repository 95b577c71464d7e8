"""Tests of gateway/validation.py: an order's header and its streamed items, every fault with its seq."""

from __future__ import annotations

import pytest
from stdnum.cn.ric import calc_check_digit

from gateway.validation import MAX_REASONS, OrderValidator, header_problems, id_number_problem

BANK = "demo-bank"


def make_id(body17: str) -> str:
    """A resident ID with the right GB 11643 check character (calc_check_digit ignores the last one)."""
    assert len(body17) == 17
    return body17 + calc_check_digit(body17 + "0")


def wrong_check(number: str) -> str:
    other = "0" if number[-1] != "0" else "1"
    return number[:-1] + other


ID_A = make_id("11010519491231002")      # the standard's own example, ends in X
ID_B = make_id("44030619900307851")
ID_C = make_id("32010220000229123")      # born on a leap day


def header(**over) -> dict:
    h = {
        "order_no": "FF2026030001", "budget_unit": "市农业农村局", "project_code": "NJBT2026",
        "project_name": "2026年农机购置补贴", "project_short": "农机补贴", "region": "320102",
        "bank_id": BANK, "total_amount": 60000, "total_count": 3,
        "funded_at": "2026-03-02T09:00:00+08:00",
    }
    h.update(over)
    return h


def item(seq: int, **over) -> dict:
    it = {"seq": seq, "name": "张三", "id_number": ID_B, "account_no": "6222000011112222",
          "account_bank": "示范银行城南支行", "amount": 20000, "remark": ""}
    it.update(over)
    return it


def run(items: list[dict], h: dict | None = None) -> tuple[list[dict | None], list[str]]:
    v = OrderValidator(h or header(total_count=len(items), total_amount=sum(
        i["amount"] for i in items if isinstance(i.get("amount"), int))))
    rows = [v.check_item(it, n) for n, it in enumerate(items, 1)]
    return rows, v.finish()


def test_reference_ids_are_valid() -> None:
    """The IDs used here are valid, cross-checked by an independent weighted sum (GB 11643)."""
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    for n in (ID_A, ID_B, ID_C):
        s = sum(int(c) * w for c, w in zip(n[:17], weights))
        assert n[17] == "10X98765432"[s % 11]
        assert id_number_problem(n) is None
    assert ID_A == "11010519491231002X"


def test_valid_order_passes_and_yields_rows() -> None:
    """A well-formed order has no reasons, and each item becomes a PENDING row of the items table."""
    its = [item(1, id_number=ID_A, remark="第一季度"), item(2, account_bank=None),
           item(5, id_number=ID_C, amount=20000)]
    assert header_problems(header(), BANK) == []
    rows, reasons = run(its, header())
    assert reasons == []
    assert [r["seq"] for r in rows] == [1, 2, 5]
    assert rows[0] == {"order_no": "FF2026030001", "seq": 1, "name": "张三", "id_number": ID_A,
                       "account_no": "6222000011112222", "account_bank": "示范银行城南支行",
                       "account_bank_code": None, "amount": 20000, "remark": "第一季度", "status": "PENDING"}
    assert rows[1]["account_bank"] == ""


def test_account_bank_code_is_optional_twelve_digits_or_null() -> None:
    """core-api.md's optional account_bank_code: 12 digits are carried to the row, null or absent
    give None, and anything else (11 digits, a number, letters) refuses the item naming its seq."""
    good = [item(1, account_bank_code="103100000026"), item(2, account_bank_code=None), item(3)]
    rows, reasons = run(good)
    assert reasons == []
    assert [r["account_bank_code"] for r in rows] == ["103100000026", None, None]
    for bad in ("10310000002", 103100000026, "10310000002X", "1031000000261"):
        rows, reasons = run([item(1), item(2, account_bank_code=bad)])
        assert rows[1] is None, bad
        assert any(r.startswith("seq 2: account_bank_code must be the 12-digit CNAPS code") for r in reasons), reasons


def test_wrong_count_and_wrong_sum() -> None:
    """The header's total_count and total_amount are checked against the items."""
    rows, reasons = run([item(1), item(2)], header(total_count=3, total_amount=40001))
    assert all(rows)
    assert "order: 2 items received, header says total_count 3" in reasons
    assert "order: items add up to 40000 fen, header says total_amount 40001" in reasons
    assert len(reasons) == 2


@pytest.mark.parametrize("seqs, bad_seq, prev", [
    ([1, 2, 2], 2, 2),     # duplicate
    ([1, 3, 2], 2, 3),     # descending
])
def test_duplicate_or_descending_seq(seqs, bad_seq, prev) -> None:
    """A seq not above the one before is a fault of that item, named by its seq."""
    rows, reasons = run([item(s) for s in seqs])
    assert rows[2] is None
    assert reasons == [f"seq {bad_seq}: seq {bad_seq} is not above the previous seq {prev} "
                       "(duplicate or out of order)"]


@pytest.mark.parametrize("seq", [0, -3, "1", 1.0, True, None])
def test_bad_seq_is_named_by_line(seq) -> None:
    """An item whose seq is not a positive integer is named by its line number."""
    rows, reasons = run([item(1), item(seq)])
    assert rows[1] is None
    assert "line 2: seq must be a positive integer" in reasons


@pytest.mark.parametrize("amount", [0, -100, 100.0, 12.34, "100", None, True])
def test_bad_amount(amount) -> None:
    """Amounts must be positive integers of fen: zero, negative, float, string, null and bool fail."""
    rows, reasons = run([item(1), item(2, amount=amount), item(3)], header(total_amount=40000))
    assert rows[1] is None and rows[0] and rows[2]
    assert reasons == ["seq 2: amount must be a positive integer of fen"]


def test_bad_id_check_digit() -> None:
    """An ID number whose check character is wrong is named by its seq."""
    rows, reasons = run([item(1), item(2, id_number=wrong_check(ID_B))])
    assert rows[1] is None
    assert reasons == ["seq 2: id_number check digit is wrong"]


@pytest.mark.parametrize("birth", ["19990230", "20010229", "19901301", "19900100", "18791231"])
def test_impossible_birth_date(birth) -> None:
    """An ID with a correct check character but an impossible birth date is refused."""
    number = make_id("320102" + birth + "123")
    rows, reasons = run([item(1, id_number=number)])
    assert reasons == ["seq 1: id_number holds an impossible birth date"]


@pytest.mark.parametrize("number", [ID_B[:17], ID_B + "1", ID_A.lower(), "3201022000022912A", 320102200002291231])
def test_malformed_id(number) -> None:
    """IDs of the wrong length, with a lower-case x, a letter, or not a string are refused."""
    rows, reasons = run([item(1, id_number=number)])
    assert reasons == ["seq 1: id_number must be 17 digits and a check character (digit or X)"]


@pytest.mark.parametrize("acct", ["1234567", "6222 0000 1111", "62220000abcd2222", "6" * 33, 62220000111122,
                                  "６２２２０００１１１１２２２２"])
def test_bad_account(acct) -> None:
    """Accounts must be 8 to 32 ASCII digits: short, spaced, lettered, too long, a number or full-width fail."""
    rows, reasons = run([item(1, account_no=acct)])
    assert reasons == ["seq 1: account_no must be 8 to 32 digits"]


@pytest.mark.parametrize("name", ["张|三", "张三\r", "张\n三", "\r\n"])
def test_name_with_field_separator_or_line_break(name) -> None:
    """A name holding '|', CR or LF cannot be carried by the bank's files."""
    rows, reasons = run([item(1), item(2, name=name)])
    assert reasons == ["seq 2: name holds '|', CR or LF, which the bank's files cannot carry"]


def test_name_not_encodable_in_gb18030() -> None:
    """A name GB18030 cannot encode (a lone surrogate) is refused; rare CJK outside GBK is accepted."""
    rows, reasons = run([item(1, name="张\ud800"), item(2, name="𠀀䶮")])
    assert reasons == ["seq 1: name holds a character GB18030 cannot encode"]
    assert rows[1] is not None


def test_other_text_faults() -> None:
    """An empty or non-string name, an over-long name or remark, and a bad account_bank are named."""
    rows, reasons = run([item(1, name=""), item(2, name=5), item(3, name="张" * 51),
                         item(4, remark="x" * 101), item(5, account_bank="a|b"), item(6, name="张" * 50)])
    assert reasons == [
        "seq 1: name is required",
        "seq 2: name must be a string",
        "seq 3: name is longer than 50 characters",
        "seq 4: remark is longer than 100 characters",
        "seq 5: account_bank holds '|', CR or LF, which the bank's files cannot carry",
    ]
    assert rows[5] is not None


def test_unknown_item_field() -> None:
    """A field the contract does not define is a fault (a renamed field must not pass silently)."""
    rows, reasons = run([item(1, acct_no="6222000011112222")])
    assert rows[0] is None
    assert reasons == ["seq 1: unknown field 'acct_no'"]


@pytest.mark.parametrize("field", ["id_number", "remark", "account_bank"])
def test_missing_item_field(field) -> None:
    """Every contract field must be present, even those that may be empty."""
    it = item(1)
    del it[field]
    rows, reasons = run([it])
    assert rows[0] is None
    assert f"seq 1: {field} is missing" in reasons


def test_several_faults_of_one_item_are_all_listed() -> None:
    """An item with several faults lists each, all under its seq."""
    rows, reasons = run([item(7, amount=-1, account_no="123", id_number=wrong_check(ID_A), name="a|b")],
                        header(total_count=1, total_amount=1))
    assert reasons == [
        "seq 7: amount must be a positive integer of fen",
        "seq 7: name holds '|', CR or LF, which the bank's files cannot carry",
        "seq 7: id_number check digit is wrong",
        "seq 7: account_no must be 8 to 32 digits",
    ]


def test_reasons_are_capped_with_a_count_of_the_rest() -> None:
    """At most MAX_REASONS reasons are kept; one more line says how many were left out."""
    n = MAX_REASONS + 250
    rows, reasons = run([item(s, account_no="1") for s in range(1, n + 1)])
    assert not any(rows)
    assert len(reasons) == MAX_REASONS + 1
    assert reasons[0] == "seq 1: account_no must be 8 to 32 digits"
    assert reasons[MAX_REASONS - 1] == f"seq {MAX_REASONS}: account_no must be 8 to 32 digits"
    assert reasons[-1] == "... and 250 more reasons not listed"


def test_no_cap_line_below_the_cap() -> None:
    """Exactly MAX_REASONS reasons are listed whole, with no '... more' line."""
    rows, reasons = run([item(s, account_no="1") for s in range(1, MAX_REASONS + 1)])
    assert len(reasons) == MAX_REASONS
    assert not any(r.startswith("...") for r in reasons)


# --- the header ----------------------------------------------------------------


@pytest.mark.parametrize("short", ["农机补", "农机购置补"])
def test_project_short_must_be_four_characters(short) -> None:
    """The SMS names the project by exactly 4 characters: 3 and 5 are refused."""
    assert header_problems(header(project_short=short), BANK) == [
        f"header: project_short must be exactly 4 characters, got {short!r}"]


def test_project_short_counts_code_points() -> None:
    """Four characters outside the BMP are four characters, not eight UTF-16 units."""
    assert header_problems(header(project_short="𠀀𠀁𠀂𠀃"), BANK) == []


def test_bank_id_mismatch() -> None:
    """An order listed for one bank but naming another is refused."""
    assert header_problems(header(bank_id="other-bank"), BANK) == [
        "header: bank_id 'other-bank' is not the bank 'demo-bank' it was listed for"]


def test_missing_header_fields() -> None:
    """Every missing header field is named (and nothing else is judged on a partial header)."""
    h = header()
    del h["region"], h["funded_at"]
    assert header_problems(h, BANK) == ["header: region is missing", "header: funded_at is missing"]


@pytest.mark.parametrize("over, problem", [
    ({"total_amount": 0}, "header: total_amount must be a positive integer of fen"),
    ({"total_amount": 100.0}, "header: total_amount must be a positive integer of fen"),
    ({"total_amount": "60000"}, "header: total_amount must be a positive integer of fen"),
    ({"total_count": -1}, "header: total_count must be a positive integer"),
    ({"total_count": True}, "header: total_count must be a positive integer"),
    ({"order_no": "FF 2026"}, "header: order_no must be letters, digits, '_' or '-' (at most 60)"),
    ({"order_no": "F" * 61}, "header: order_no must be letters, digits, '_' or '-' (at most 60)"),
    ({"project_name": "补贴|项目"}, "header: project_name holds '|', CR or LF, which the bank's files cannot carry"),
    ({"budget_unit": ""}, "header: budget_unit is required"),
])
def test_header_faults(over, problem) -> None:
    """Each header fault is named."""
    assert header_problems(header(**over), BANK) == [problem]
