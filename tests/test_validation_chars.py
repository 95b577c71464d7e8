"""Validation refuses what XML 1.0 or GB18030 cannot carry (issue 8): control characters, lone
surrogates, non-characters, in items and in the header, naming the seq, the field and the code point."""

from __future__ import annotations

import pytest

from gateway.validation import header_problems, storable, uncarriable
from tests.test_validation import BANK, header, item, run


@pytest.mark.parametrize("char, name", [("\x00", "U+0000"), ("\x01", "U+0001"), ("\t", "U+0009"),
                                        ("\x7f", "U+007F"), ("\x85", "U+0085"), ("\ufdd0", "U+FDD0"),
                                        ("\ufffe", "U+FFFE"), ("\U0010ffff", "U+10FFFF")])
@pytest.mark.parametrize("field", ["name", "account_bank", "remark"])
def test_uncarriable_characters_are_refused_naming_seq_field_and_code_point(char, name, field) -> None:
    """Each of these in a text field makes the item invalid (the fast path lets none through),
    with the seq, the field and the character named."""
    rows, reasons = run([item(1), item(2, **{field: f"张{char}三"})])
    assert rows[0] is not None and rows[1] is None
    assert reasons == [f"seq 2: {field} holds {name}, a control character, surrogate or "
                       f"non-character that XML 1.0 or GB18030 cannot carry"]


def test_a_lone_surrogate_is_refused_and_ordinary_text_is_not() -> None:
    """A lone surrogate (JSON's \\ud800) is refused; CJK beyond the BMP, full-width forms and the
    middle dot of minority names pass."""
    rows, reasons = run([item(1, name="\ud800"), item(2, name="𠀀䶮"), item(3, name="阿依古丽·买买提"),
                         item(4, remark="ＡＢＣ１２３")])
    assert reasons == ["seq 1: name holds a character GB18030 cannot encode"]
    assert all(r is not None for r in rows[1:])


def test_a_header_with_a_control_character_is_refused_and_storable() -> None:
    """A control character in a header text or in funded_at is a header problem; what is stored
    to explain the refusal has it replaced (PostgreSQL refuses a NUL)."""
    problems = header_problems(header(project_name="补贴\x00项目", funded_at="2026-03-02\x01"), BANK)
    assert any(p.startswith("header: project_name holds U+0000") for p in problems)
    assert any(p.startswith("header: funded_at holds U+0001") for p in problems)
    assert storable("补贴\x00项目\ud800") == "补贴\ufffd项目\ufffd"
    assert uncarriable("补贴项目") is None
