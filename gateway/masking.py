"""Masking of personal data (rule 6): moved to protocols/masking.py (pure, used by adapters and daemon).

Re-exported here so existing imports keep working; `mask_record` masks a whole RPC record
(here, not in gateway.rpc, so that `gatewayctl rpc` and `health` need no Twisted).
"""

from typing import Any

from protocols.masking import SENSITIVE_FIELDS, _SENSITIVE, mask, mask_fields, mask_text  # noqa: F401


def mask_record(record: dict) -> dict:
    """mask_fields, also for an ID or account number sent as a JSON number (mask_fields masks strings only)."""
    def textual(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (str(v) if k in SENSITIVE_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
                        else textual(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [textual(v) for v in value]
        return value
    return mask_fields(textual(record))
