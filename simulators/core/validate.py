"""Parsing and checking of what the gateway POSTs to the core, as pure functions.

The simulator is as strict as a real counterpart should be: a body that
does not follow core-api.md is refused whole with a :class:`FieldError`
naming the first field at fault (``results[3].status``), so that nothing
from a malformed request is ever recorded. Fed bytes, returns records.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any, NamedTuple

RESULT_STATUSES = ("PAID", "FAILED", "REFUNDED")
ORDER_STATES = ("DISPATCHED", "SETTLED", "CLOSED", "INVALID")
RESULT_KEYS = frozenset({"seq", "version", "status", "reason_code", "reason_text", "bank_serial", "at"})
MAX_RESULTS_PER_POST = 50_000
MAX_DETAIL_BYTES = 64 * 1024

_REASON_CODE_RE = re.compile(r"[A-Za-z0-9]{1,16}")
_SERIAL_RE = re.compile(r"[\x21-\x7e]{1,64}")


class FieldError(ValueError):
    """A request body that breaks the contract; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def as_json(self) -> dict[str, str]:
        return {"error": "invalid", "field": self.field, "message": self.message}


class ItemResult(NamedTuple):
    """One item result as the gateway reported it (a named tuple: a million are made per order)."""

    seq: int
    status: str
    reason_code: str | None
    reason_text: str | None
    bank_serial: str | None
    at: str
    version: int = 1


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FieldError("body", f"not UTF-8 JSON ({e.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise FieldError("body", "must be a JSON object")
    return doc


def _optional_str(value: Any, field: str, pattern: re.Pattern[str] | None, limit: int) -> str | None:
    # null and "" both mean "none": the contract does not say which a client sends.
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError(field, "must be a string or null")
    if len(value) > limit:
        raise FieldError(field, f"longer than {limit} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise FieldError(field, f"does not match {pattern.pattern}")
    return value


def _timestamp(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FieldError(field, "must be an ISO 8601 date-time string")
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise FieldError(field, "must be an ISO 8601 date-time string") from None
    if when.tzinfo is None:
        raise FieldError(field, "must carry a UTC offset")
    return value


def parse_results(body: bytes, item_count: int) -> list[ItemResult]:
    """The results of a ``POST .../results`` body, for an order of *item_count* items.

    Rules: ``results`` is a non-empty list of objects with exactly the keys
    seq, version, status, reason_code, reason_text, bank_serial, at; seq an integer in
    1..item_count; version a positive integer; one (seq, version) at most once; status PAID, FAILED or REFUNDED; reason_code 1-16
    letters/digits, required for FAILED; reason_text a string of at most 256
    characters; bank_serial 1-64 printable ASCII, required for PAID; at an
    ISO 8601 date-time with offset. An optional string may be null or "".
    """
    doc = _json_object(body)
    extra = sorted(set(doc) - {"results"})
    if extra:
        raise FieldError(extra[0], "unknown field")
    results = doc.get("results")
    if not isinstance(results, list):
        raise FieldError("results", "must be a list")
    if not results:
        raise FieldError("results", "must not be empty")
    if len(results) > MAX_RESULTS_PER_POST:
        raise FieldError("results", f"more than {MAX_RESULTS_PER_POST} in one request")
    out = []
    seen: set[tuple[int, int]] = set()
    good_at: set[str] = set()     # timestamps already checked (a chunk repeats a few)
    codes, serials, statuses = _REASON_CODE_RE.fullmatch, _SERIAL_RE.fullmatch, RESULT_STATUSES
    for i, r in enumerate(results):
        # The common case in one expression; anything else goes through _result_at, which
        # applies the same rules one by one and names the first field at fault.
        if type(r) is dict and r.keys() == RESULT_KEYS:
            seq, version, status = r["seq"], r["version"], r["status"]
            code, text, serial, at = r["reason_code"], r["reason_text"], r["bank_serial"], r["at"]
            if (type(seq) is int and 0 < seq <= item_count and type(version) is int
                    and 0 < version < 2**31 and (seq, version) not in seen and status in statuses
                    and (code is None or code == "" or (type(code) is str and codes(code)))
                    and (text is None or text == "" or (type(text) is str and len(text) <= 256))
                    and (serial is None or serial == "" or (type(serial) is str and serials(serial)))
                    and (code or status != "FAILED") and (serial or status != "PAID")
                    and type(at) is str):
                if at not in good_at:
                    _timestamp(at, f"results[{i}].at")
                    good_at.add(at)
                seen.add((seq, version))
                out.append(ItemResult(seq, status, code or None, text or None, serial or None, at,
                                      version))
                continue
        out.append(_result_at(i, r, item_count, seen))
    return out


def _result_at(i: int, r: Any, item_count: int, seen: set[tuple[int, int]]) -> ItemResult:
    """results[i] checked rule by rule (parse_results' slow path): FieldError names the first fault."""
    where = f"results[{i}]"
    if not isinstance(r, dict):
        raise FieldError(where, "must be an object")
    for key in sorted(RESULT_KEYS - set(r)):
        raise FieldError(f"{where}.{key}", "missing")
    for key in sorted(set(r) - RESULT_KEYS):
        raise FieldError(f"{where}.{key}", "unknown field")
    seq = r["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= item_count:
        raise FieldError(f"{where}.seq", f"must be an integer in 1..{item_count}")
    version = r["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        raise FieldError(f"{where}.version", "must be a positive integer")
    if (seq, version) in seen:
        raise FieldError(f"{where}.version", f"seq {seq} version {version} appears twice")
    seen.add((seq, version))
    status = r["status"]
    if status not in RESULT_STATUSES:
        raise FieldError(f"{where}.status", f"must be one of {', '.join(RESULT_STATUSES)}")
    reason_code = _optional_str(r["reason_code"], f"{where}.reason_code", _REASON_CODE_RE, 16)
    if status == "FAILED" and reason_code is None:
        raise FieldError(f"{where}.reason_code", "required for FAILED")
    reason_text = _optional_str(r["reason_text"], f"{where}.reason_text", None, 256)
    bank_serial = _optional_str(r["bank_serial"], f"{where}.bank_serial", _SERIAL_RE, 64)
    if status == "PAID" and bank_serial is None:
        raise FieldError(f"{where}.bank_serial", "required for PAID")
    at = _timestamp(r["at"], f"{where}.at")
    return ItemResult(seq, status, reason_code, reason_text, bank_serial, at, version)


def parse_state(body: bytes) -> tuple[str, Any]:
    """(state, detail) of a ``POST .../state`` body; detail is any JSON value (null if absent)."""
    doc = _json_object(body)
    extra = sorted(set(doc) - {"state", "detail"})
    if extra:
        raise FieldError(extra[0], "unknown field")
    if "state" not in doc:
        raise FieldError("state", "missing")
    state = doc["state"]
    if state not in ORDER_STATES:
        raise FieldError("state", f"must be one of {', '.join(ORDER_STATES)}")
    detail = doc.get("detail")
    if len(json.dumps(detail, ensure_ascii=False).encode()) > MAX_DETAIL_BYTES:
        raise FieldError("detail", f"larger than {MAX_DETAIL_BYTES} bytes")
    return state, detail
