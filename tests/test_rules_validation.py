"""Validation at the core boundary (domain.md "Money", rule 1 at load time): the cases the
mutation check (tools/mutate.py) found unguarded in gateway/validation.py.

Each test pins one boundary or one branch whose removal left the older tests green:
text XML or the bank's files cannot carry, the header's own required fields, one fen
and one item as the smallest valid totals, and a duplicate seq after an invalid item.
"""

from __future__ import annotations

from gateway.validation import OrderValidator, header_problems, storable, uncarriable

BANK = "cnbank-demo"
ID = "11010519491231002X"


def header(**over) -> dict:
    h = {"order_no": "FF2026030001", "budget_unit": "市农业农村局", "project_code": "NJBT2026",
         "project_name": "2026年农机购置补贴", "project_short": "农机补贴", "region": "320102",
         "bank_id": BANK, "total_amount": 60000, "total_count": 3,
         "funded_at": "2026-03-02T09:00:00+08:00"}
    h.update(over)
    return h


def item(seq: int, **over) -> dict:
    it = {"seq": seq, "name": "张三", "id_number": ID, "account_no": "6222000011112222",
          "account_bank": "示范银行城南支行", "amount": 20000, "remark": ""}
    it.update(over)
    return it


def test_uncarriable_names_the_first_character_xml_or_gb18030_cannot_carry():
    """A control character is named as U+XXXX; clean text gives None; storable() replaces it
    with U+FFFD so a refused header can still be kept to explain the refusal."""
    assert uncarriable("张\x0b三\x01") == "U+000B"
    assert uncarriable("张三 abc") is None
    assert storable("a\x01b\x0bc") == "a\ufffdb\ufffdc"


def test_an_item_with_a_control_character_in_its_name_is_refused_and_named():
    """The fast path sends it to the slow one, which must refuse it and say which character."""
    v = OrderValidator(header(total_count=1, total_amount=20000))
    assert v.check_item(item(1, name="张\x0b三"), 1) is None
    assert any("U+000B" in r and "name" in r for r in v.reasons), v.reasons


def test_header_text_fields_are_required_and_carriable():
    """An empty budget unit and a funded_at the bank's files cannot carry are each a reason."""
    assert any("budget_unit is required" in p for p in header_problems(header(budget_unit=""), BANK))
    assert any("funded_at" in p for p in header_problems(header(funded_at="2026|03"), BANK))
    assert any("funded_at" in p for p in header_problems(header(funded_at=""), BANK))
    assert header_problems(header(), BANK) == []


def test_one_item_of_one_fen_is_the_smallest_valid_order():
    """total_amount 1 and total_count 1 are valid (positive), 0 is not."""
    assert header_problems(header(total_amount=1, total_count=1), BANK) == []
    assert header_problems(header(total_amount=0, total_count=0), BANK) == [
        "header: total_amount must be a positive integer of fen",
        "header: total_count must be a positive integer"]
    v = OrderValidator(header(total_amount=1, total_count=1))
    assert v.check_item(item(1, amount=1), 1) is not None
    assert v.finish() == []


def test_a_seq_repeated_after_an_invalid_item_is_named_a_duplicate():
    """seq 2 is invalid (bad account) and seq 2 comes again, valid: the second is a duplicate,
    and the sum check still counts the invalid items' amounts (one fen each) against the header."""
    v = OrderValidator(header(total_count=3, total_amount=20003))
    assert v.check_item(item(1), 1) is not None
    assert v.check_item(item(2, account_no="12", amount=1), 2) is None
    assert v.check_item(item(2, amount=1), 3) is None
    reasons = v.finish()
    assert any("seq 2 is not above the previous seq 2" in r for r in reasons), reasons
    assert "order: items add up to 20002 fen, header says total_amount 20003" in reasons, reasons
