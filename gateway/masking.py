"""Masking of personal data (rule 6): moved to protocols/masking.py (pure, used by adapters and daemon).

Re-exported here so existing imports keep working.
"""

from protocols.masking import SENSITIVE_FIELDS, _SENSITIVE, mask, mask_fields, mask_text  # noqa: F401
