"""Money on the wire: yuan with exactly two decimals <-> integer fen.

Amounts live as `int` fen everywhere inside the gateway; files and messages
carry yuan as `(0|[1-9][0-9]*)\\.[0-9]{2}`. Parsing is textual, never through a
float, so 0.07 stays 7 fen and 12345678901234.56 stays exact.
"""

from __future__ import annotations

import re

_YUAN = re.compile(r"(0|[1-9][0-9]*)\.([0-9]{2})")
_FEN = re.compile(r"0|[1-9][0-9]*")


class AmountError(ValueError):
    """An amount on the wire is not in the exact form the dialect requires."""


def parse_yuan(text: str) -> int:
    """'12.34' -> 1234 fen. Anything but digits, one point and two decimals is refused."""
    m = _YUAN.fullmatch(text)
    if m is None:
        raise AmountError(f"amount {text!r} is not yuan with exactly two decimals")
    return int(m.group(1)) * 100 + int(m.group(2))


def format_yuan(fen: int) -> str:
    """1234 fen -> '12.34'. Negative amounts never go on the wire."""
    if not isinstance(fen, int) or isinstance(fen, bool) or fen < 0:
        raise AmountError(f"amount {fen!r} is not a non-negative integer of fen")
    return f"{fen // 100}.{fen % 100:02d}"


def parse_fen(text: str) -> int:
    """'1234' -> 1234, for banks configured to put fen in files."""
    if _FEN.fullmatch(text) is None:
        raise AmountError(f"amount {text!r} is not a whole number of fen")
    return int(text)


def format_fen(fen: int) -> str:
    format_yuan(fen)  # same checks
    return str(fen)


def parser(unit: str):
    """The parse function for a bank's amount unit setting ('yuan' or 'fen')."""
    return {"yuan": parse_yuan, "fen": parse_fen}[unit]


def formatter(unit: str):
    return {"yuan": format_yuan, "fen": format_fen}[unit]
