"""Masking of personal data (rule 6): ID and account numbers keep their first 4 and last 4.

Used for everything an operator sees by default: logs, the console, the CLI
and the journal's decoded view. The clear text stays only in the raw payload
and in the items table.
"""

from __future__ import annotations

import re

# Free-text fallback: 18-character IDs and card-length digit runs (15+). Shorter
# accounts are masked by field name where the structure is known (mask_fields);
# a blanket 8-digit rule would also hide dates, which operators need to read.
_SENSITIVE = re.compile(r"(?<![0-9A-Za-z])([0-9]{17}[0-9Xx]|[0-9]{15,32})(?![0-9A-Za-z])")

SENSITIVE_FIELDS = frozenset({
    "IdNo", "AcctNo", "ReturnedTo", "PayerAcct", "id_number", "account_no",
})


def mask(value: str | None) -> str:
    """'110101199003078515' -> '1101**********8515'; short values are masked whole."""
    if not value:
        return value or ""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_text(text: str) -> str:
    """Mask every ID-number-like or account-like digit run in free text (decoded messages)."""
    return _SENSITIVE.sub(lambda m: mask(m.group(1)), text)


def mask_fields(fields: dict) -> dict:
    """A copy of a decoded record with its sensitive fields masked, recursively."""
    out: dict = {}
    for k, v in fields.items():
        if isinstance(v, dict):
            out[k] = mask_fields(v)
        elif isinstance(v, list):
            out[k] = [mask_fields(x) if isinstance(x, dict)
                      else mask(str(x)) if k in SENSITIVE_FIELDS and isinstance(x, (str, int))
                      else x for x in v]
        elif k in SENSITIVE_FIELDS and isinstance(v, (str, int)) and not isinstance(v, bool):
            # An account sent as a JSON number is still an account number.
            out[k] = mask(str(v))
        else:
            out[k] = v
    return out
