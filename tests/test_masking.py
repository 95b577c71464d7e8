"""Tests of gateway/masking.py (domain rule 6): ID and account numbers keep only their first and last 4."""

from __future__ import annotations

import pytest

from gateway.masking import SENSITIVE_FIELDS, mask, mask_fields, mask_text

ID = "11010519491231002X"
CARD = "6222021234567890123"      # 19-digit card


def test_mask_keeps_first_four_and_last_four() -> None:
    """The middle is replaced by as many stars, so the length stays visible."""
    assert mask("110101199003078515") == "1101**********8515"
    assert mask(ID) == "1101**********002X"
    assert mask(CARD) == "6222***********0123"
    assert mask("123456789") == "1234*6789"
    assert len(mask(CARD)) == len(CARD)


@pytest.mark.parametrize("value", ["12345678", "1234", "1"])
def test_short_values_are_masked_whole(value) -> None:
    """Eight characters or fewer would show everything if first and last 4 were kept: all are hidden."""
    assert mask(value) == "*" * len(value)


@pytest.mark.parametrize("value, out", [("", ""), (None, "")])
def test_empty_values(value, out) -> None:
    """Nothing to hide gives an empty string."""
    assert mask(value) == out


def test_mask_text_masks_ids_and_card_numbers() -> None:
    """IDs (with X or x) and card-length digit runs are masked wherever they stand in free text."""
    text = (f"D|1|张三|{ID}|{CARD}|示范银行|200.00|NJBT|\r\n"
            f'{{"id_number":"110101199003078515","account_no":"6222000011112222"}} '
            f"<IdNo>11010519491231002x</IdNo> 身份证{ID}，卡号{CARD}。")
    out = mask_text(text)
    for clear in (ID, CARD, "110101199003078515", "6222000011112222", "11010519491231002x"):
        assert clear not in out
    assert "D|1|张三|1101**********002X|6222***********0123|示范银行|200.00|NJBT|\r\n" in out
    assert '"account_no":"6222********2222"' in out
    assert "<IdNo>1101**********002x</IdNo>" in out
    assert "身份证1101**********002X，卡号6222***********0123。" in out


@pytest.mark.parametrize("text", [
    "SubmitDate 20260302, ProcDate=20260303",
    "D|3|6222000011112222|200.00|F|R001|账号不存在||20260303",
    "2026-03-02T10:00:00+08:00",
    "20260302100000",                # 14-digit timestamp
    "amount 12345678901234 fen",     # 14 digits: below card length
    "BatchNo FF2026030001-P01",
])
def test_mask_text_leaves_dates_and_short_numbers(text) -> None:
    """8-digit dates, 14-digit timestamps and shorter numbers stay readable for operators."""
    out = mask_text(text)
    for d in ("20260302", "20260303", "20260302100000", "12345678901234", "FF2026030001-P01"):
        if d in text:
            assert d in out
    if "6222000011112222" in text:
        assert "6222********2222" in out and "6222000011112222" not in out


def test_mask_text_leaves_hex_digests() -> None:
    """A digit run inside a hex digest (bounded by letters) is not an account: an SM3 stays whole."""
    digest = "a" + "1234567890123456" + "f" * 47
    assert mask_text(f"FileSM3 {digest}") == f"FileSM3 {digest}"


def test_mask_fields_masks_nested_sensitive_fields() -> None:
    """IdNo, AcctNo and the other sensitive names are masked at any depth, in dicts and lists of dicts;
    other fields and non-string values are kept, and the input is not changed."""
    record = {
        "BatchNo": "FF2026030001-P01",
        "PayerAcct": "6222000011112222",
        "TotalAmount": "600.00",
        "Items": [
            {"Seq": "1", "Name": "张三", "IdNo": ID, "AcctNo": CARD},
            {"Seq": "2", "Name": "李四", "IdNo": "110101199003078515", "AcctNo": "62220000"},
        ],
        "Refund": {"Status": "DONE", "ReturnedTo": "6222000099998888", "Detail": {"AcctNo": "6222000011113333"}},
        "item": {"id_number": ID, "account_no": CARD, "amount": 20000},
        "Seqs": ["1", "2"],
    }
    before = repr(record)
    out = mask_fields(record)
    assert repr(record) == before
    assert out["BatchNo"] == "FF2026030001-P01"
    assert out["PayerAcct"] == "6222********2222"
    assert out["TotalAmount"] == "600.00"
    assert out["Items"][0] == {"Seq": "1", "Name": "张三", "IdNo": "1101**********002X",
                               "AcctNo": "6222***********0123"}
    assert out["Items"][1]["IdNo"] == "1101**********8515"
    assert out["Items"][1]["AcctNo"] == "********"
    assert out["Refund"]["ReturnedTo"] == "6222********8888"
    assert out["Refund"]["Detail"]["AcctNo"] == "6222********3333"
    assert out["item"] == {"id_number": "1101**********002X", "account_no": "6222***********0123",
                           "amount": 20000}
    assert out["Seqs"] == ["1", "2"]
    for clear in (ID, CARD, "6222000011112222", "110101199003078515", "6222000099998888"):
        assert clear not in repr(out)


def test_sensitive_field_names() -> None:
    """The field names masked by structure cover the dialect's and the core's names for IDs and accounts."""
    assert {"IdNo", "AcctNo", "ReturnedTo", "PayerAcct", "id_number", "account_no"} <= SENSITIVE_FIELDS
