"""The validator's fast path accepts exactly what the thorough path accepts.

`OrderValidator.check_item` tries a one-pass check for the common valid item
and falls back to the thorough check that words every reason. If the fast
path ever accepted an item the thorough path refuses, a bad item would reach
a bank; hypothesis searches for such an item among valid ones and mutations.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import ric

from gateway.validation import OrderValidator


def valid_id(body17: str) -> str:
    # stdnum's calc_check_digit takes the whole number and ignores its last character.
    return body17 + ric.calc_check_digit(body17 + "0")


BASE = {"seq": 5, "name": "张三", "id_number": valid_id("11010519491231002"),
        "account_no": "6228480000000000018", "account_bank": "中国农业银行", "amount": 1234,
        "remark": "耕地补贴"}

odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=10 ** 6), st.floats(allow_nan=False),
    st.text(max_size=60), st.sampled_from(["", "a|b", "x\r\ny", "\ud800", "𠮷䶮", "1" * 33, "0" * 8,
                                           valid_id("34012119900101123"), "11010519491231002Y"]),
    st.lists(st.integers(), max_size=2))


@st.composite
def items(draw):
    item = dict(BASE)
    for key in draw(st.lists(st.sampled_from(sorted(BASE) + ["extra"]), max_size=3, unique=True)):
        action = draw(st.sampled_from(["replace", "delete"]))
        if action == "delete" and key in item:
            del item[key]
        else:
            item[key] = draw(odd_values)
    return item


def fresh() -> OrderValidator:
    v = OrderValidator({"order_no": "O1", "total_count": 1, "total_amount": 1})
    v.last_seq = 4
    return v


@settings(max_examples=400, deadline=None)
@given(items())
def test_fast_path_never_accepts_what_the_thorough_check_refuses(item):
    """For any item, the fast path's verdict is None or the same row the thorough path gives."""
    fast = fresh()._fast(item)
    slow_v = fresh()
    slow = slow_v._check_slowly(item, 1)
    if fast is not None:
        assert slow == fast and not slow_v.reasons, (item, slow_v.reasons)


def test_fast_path_takes_the_plain_valid_item():
    """The unmutated item goes through the fast path (else the optimisation is dead code)."""
    assert fresh()._fast(dict(BASE)) is not None
