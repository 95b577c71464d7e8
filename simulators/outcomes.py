"""Which result the simulated bank gives an account: decided by the account number.

Shared by the data generator (to aim orders at every reason code) and the
bank simulators (to decide each item). An account whose last four digits are
``99NN`` with NN one of 01..10 or 99 fails with reason ``R0NN``; every other
account is credited. Deterministic, so a test can aim at any reason code.
"""

from __future__ import annotations

# cnbank item reason codes (cnbank.md, "Codes") with their text and ISO 20022 code.
REASONS: dict[str, tuple[str, str]] = {
    "R001": ("账号不存在", "AC01"),
    "R002": ("户名不符", "BE01"),
    "R003": ("证件号不符", "BE17"),
    "R004": ("账户已销户", "AC04"),
    "R005": ("账户冻结/止付", "AC06"),
    "R006": ("睡眠户/久悬户", "AC06"),
    "R007": ("卡已挂失", "AC06"),
    "R008": ("非个人结算账户", "AG01"),
    "R009": ("重复明细", "AM05"),
    "R010": ("账户人已故", "MD07"),
    "R099": ("其他", "NARR"),
}
SUCCESS = "0000"
SUCCESS_TEXT = "成功"


def outcome_for_account(account_no: str) -> str:
    """'0000' for an account the bank credits, else the cnbank reason code it fails with."""
    tail = account_no[-4:]
    if len(tail) == 4 and tail[:2] == "99":
        code = "R0" + tail[2:]
        if code in REASONS:
            return code
    return SUCCESS


def account_failing_with(prefix: str, code: str) -> str:
    """An account number (prefix + '99NN') that the simulated bank fails with *code*."""
    if code not in REASONS:
        raise ValueError(f"unknown reason code {code!r}")
    return f"{prefix}99{code[2:]}"
