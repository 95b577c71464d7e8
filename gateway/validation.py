"""Validation of an order before anything of it goes to a bank.

Streaming: items are checked one by one as they arrive from the core, with
constant memory (seq must ascend strictly, which also proves uniqueness, since
the core sends items in seq order). Every reason is collected; the order is
INVALID if there is any, and nothing of it is sent.

The ID check uses python-stdnum's GB 11643 check-digit function and a birth
date check; stdnum's full `validate` also looks up the birth place in its
region database at ~30 us an ID, which would cost 30 s on a million-item
order and is not what the dialect asks for (cnbank.md: check digit only).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from functools import lru_cache

from stdnum.cn import ric

ORDER_NO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}")   # leaves room for "-P01" in BatchNo
ACCOUNT = re.compile(r"[0-9]{8,32}")
ID17 = re.compile(r"[0-9]{17}[0-9X]")
FORBIDDEN = re.compile(r"[|\r\n]")
MAX_REASONS = 1000

# What XML 1.0 (the ISO dialect's documents) or GB18030 (cnbank's files) cannot carry, or
# should never carry: every control character (C0 including TAB, DEL, C1), lone surrogates
# (JSON's "\ud800" escape decodes to one) and the non-characters U+FDD0..U+FDEF and
# U+xFFFE/U+xFFFF of every plane. A NUL also makes PostgreSQL refuse the insert.
_UNCARRIABLE_SET = ("\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
                    + "".join(f"{chr(p * 0x10000 + 0xfffe)}{chr(p * 0x10000 + 0xffff)}"
                              for p in range(17)))
UNCARRIABLE = re.compile(f"[{_UNCARRIABLE_SET}]")
# The fast path's one search: the bank files' separators and everything above.
_FAST_BAD = re.compile(f"[|{_UNCARRIABLE_SET}]")


# The line path's pattern: one item as the core writes it (core-api.md's field order, compact
# separators, no escapes) whose every string, number and key already passes the fast path's
# checks. A line that differs in any way (whitespace, an escape, another order, a bad value)
# does not match, and its chunk is decoded and checked item by item as before.
_LINE_CHAR = f'[^"\\\\|{_UNCARRIABLE_SET}]'
_LINE = re.compile(
    r'^\{"seq":([1-9][0-9]{0,17}),"name":"(' + _LINE_CHAR + r'{1,50})",'
    r'"id_number":"([0-9]{6}([0-9]{8})[0-9]{3}[0-9X])","account_no":"([0-9]{8,32})",'
    r'"account_bank":(?:"(' + _LINE_CHAR + r'{0,100})"|null),"amount":([1-9][0-9]{0,17}),'
    r'"remark":(?:"(' + _LINE_CHAR + r'{0,100})"|null)'
    r'(?:,"account_bank_code":(?:"([0-9]{12})"|null))?\}$', re.MULTILINE)
# GB 11643's check character indexed by int(first 17 digits, 13) % 11: stdnum's own formula,
# (1 - 2 * int(first 17 digits, 13)) % 11 with 10 written X (13 = 2 mod 11 gives the weights).
_CHECK_CHAR = "".join("X" if (1 - 2 * r) % 11 == 10 else str((1 - 2 * r) % 11) for r in range(11))


def uncarriable(value: str) -> str | None:
    """The first character of *value* that XML 1.0 or GB18030 cannot carry, as 'U+0001', or None."""
    m = UNCARRIABLE.search(value)
    return None if m is None else f"U+{ord(m.group()):04X}"


def storable(value: str) -> str:
    """*value* with every uncarriable character replaced by U+FFFD, for storing a refused header
    (the database must accept what we keep to explain the refusal)."""
    return UNCARRIABLE.sub("\ufffd", value)

HEADER_FIELDS = ("order_no", "budget_unit", "project_code", "project_name", "project_short",
                 "region", "bank_id", "total_amount", "total_count", "funded_at")
ITEM_FIELDS = ("seq", "name", "id_number", "account_no", "account_bank", "amount", "remark")
_ITEM_KEYS = frozenset(ITEM_FIELDS)
# core-api.md: an item may also carry account_bank_code (12-digit CNAPS code), absent or null.
OPTIONAL_ITEM_FIELDS = ("account_bank_code",)
_ITEM_KEYS_CODED = _ITEM_KEYS | frozenset(OPTIONAL_ITEM_FIELDS)
BANK_CODE = re.compile(r"[0-9]{12}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@lru_cache(maxsize=65536)
def _valid_birth_date(yyyymmdd: str) -> bool:
    try:
        d = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return d.year >= 1880


def id_number_problem(number: object) -> str | None:
    """Why *number* is not a valid 18-character resident ID (GB 11643), or None."""
    if not isinstance(number, str) or not ID17.fullmatch(number):
        return "id_number must be 17 digits and a check character (digit or X)"
    if ric.calc_check_digit(number) != number[-1]:
        return "id_number check digit is wrong"
    if not _valid_birth_date(number[6:14]):
        return "id_number holds an impossible birth date"
    return None


def _text_problem(name: str, value: object, *, required: bool, max_len: int) -> str | None:
    if value is None or value == "":
        return f"{name} is required" if required else None
    if not isinstance(value, str):
        return f"{name} must be a string"
    if FORBIDDEN.search(value):
        return f"{name} holds '|', CR or LF, which the bank's files cannot carry"
    if len(value) > max_len:
        return f"{name} is longer than {max_len} characters"
    try:
        value.encode("gb18030")
    except UnicodeEncodeError:
        return f"{name} holds a character GB18030 cannot encode"
    bad = uncarriable(value)
    if bad:
        return f"{name} holds {bad}, a control character, surrogate or non-character that XML 1.0 " \
               f"or GB18030 cannot carry"
    return None


def header_problems(h: dict, bank_id: str) -> list[str]:
    out = []
    for k in HEADER_FIELDS:
        if k not in h:
            out.append(f"header: {k} is missing")
    if out:
        return out
    if not isinstance(h["order_no"], str) or not ORDER_NO.fullmatch(h["order_no"]):
        out.append("header: order_no must be letters, digits, '_' or '-' (at most 60)")
    short = h["project_short"]
    if not isinstance(short, str) or len(short) != 4:
        out.append(f"header: project_short must be exactly 4 characters, got {short!r}")
    for k in ("budget_unit", "project_code", "project_name", "project_short", "region"):
        p = _text_problem(k, h[k], required=True, max_len=200)
        if p:
            out.append("header: " + p)
    p = _text_problem("funded_at", h["funded_at"], required=True, max_len=40)
    if p:
        out.append("header: " + p)
    if not _is_int(h["total_amount"]) or h["total_amount"] <= 0:
        out.append("header: total_amount must be a positive integer of fen")
    if not _is_int(h["total_count"]) or h["total_count"] <= 0:
        out.append("header: total_count must be a positive integer")
    if h["bank_id"] != bank_id:
        out.append(f"header: bank_id {h['bank_id']!r} is not the bank {bank_id!r} it was listed for")
    return out


def _gb18030(text: str) -> bool:
    """Whether GB18030 (the bank files' charset) encodes *text* (ASCII: always)."""
    if text.isascii():
        return True
    try:
        text.encode("gb18030")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class OrderValidator:
    """Checks one order's items as they stream in, and the totals at the end."""

    header: dict
    reasons: list[str] = field(default_factory=list)
    count: int = 0
    amount: int = 0
    last_seq: int = 0
    bad_items: int = 0
    amount_unknown: bool = False
    _suppressed: int = 0

    def _reason(self, text: str) -> None:
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(text)
        else:
            self._suppressed += 1

    def check_item(self, item: dict, line_no: int) -> dict | None:
        """The item as a row for the items table, or None if it is invalid (reasons recorded)."""
        row = self._fast(item)
        if row is not None:
            return row
        return self._check_slowly(item, line_no)

    def _fast(self, item: dict) -> dict | None:
        """The common case, a valid item, in one pass of cheap checks (a million items an order).

        Anything unusual falls through to `_check_slowly`, which finds and words every reason.
        """
        keys = item.keys()
        if keys == _ITEM_KEYS:
            code = None
        elif keys == _ITEM_KEYS_CODED:
            code = item["account_bank_code"]
            if code is not None and (type(code) is not str or not BANK_CODE.fullmatch(code)):
                return None
        else:
            return None
        seq, amount, name, idn, acct = (item["seq"], item["amount"], item["name"], item["id_number"],
                                        item["account_no"])
        bank, remark = item["account_bank"], item["remark"]
        bank = "" if bank is None else bank
        remark = "" if remark is None else remark
        if not (type(seq) is int and seq > self.last_seq and type(amount) is int and amount > 0
                and type(name) is str and type(idn) is str and type(acct) is str
                and type(bank) is str and type(remark) is str
                and 0 < len(name) <= 50 and len(bank) <= 100 and len(remark) <= 100):
            return None
        text = name + " " + bank + " " + remark
        if (_FAST_BAD.search(text) or not ACCOUNT.fullmatch(acct) or not ID17.fullmatch(idn)
                or ric.calc_check_digit(idn) != idn[-1] or not _valid_birth_date(idn[6:14])):
            return None
        if not _gb18030(text):
            return None
        self.count += 1
        self.last_seq = seq
        self.amount += amount
        return {"order_no": self.header["order_no"], "seq": seq, "name": name, "id_number": idn,
                "account_no": acct, "account_bank": bank, "account_bank_code": code, "amount": amount,
                "remark": remark, "status": "PENDING"}

    def check_lines(self, lines: list[bytes], status: str) -> list[tuple] | None:
        """A chunk of NDJSON lines as item rows (order_no, seq, name, id_number, account_no,
        account_bank, account_bank_code, amount, remark, *status*), or None if any line is
        not a valid item in the core's own form (then nothing is recorded: the caller decodes
        and checks the chunk item by item, which finds and words every reason).

        The chunk's pattern match does the fast path's key, type, length, character, account
        and ID-form checks in C; what is left per line is the order of seq, the ID's check
        character and birth date. A row it gives is the row `check_item` gives for the line.
        """
        try:
            text = b"\n".join(lines).decode("utf-8")
        except UnicodeDecodeError:
            return None
        found = _LINE.findall(text)
        if len(found) != len(lines):
            return None
        if not _gb18030(text):
            return None
        order_no = self.header["order_no"]
        last = self.last_seq
        total = 0
        rows = []
        append = rows.append
        check = _CHECK_CHAR
        born = _valid_birth_date
        for seq, name, idn, birth, acct, bank, amount, remark, code in found:
            seq = int(seq)
            if seq <= last or check[int(idn[:17], 13) % 11] != idn[17] or not born(birth):
                return None
            last = seq
            amount = int(amount)
            total += amount
            append((order_no, seq, name, idn, acct, bank, code or None, amount, remark, status))
        self.count += len(rows)
        self.last_seq = last
        self.amount += total
        return rows

    def _check_slowly(self, item: dict, line_no: int) -> dict | None:
        self.count += 1
        problems = []
        for k in ITEM_FIELDS:
            if k not in item:
                problems.append(f"{k} is missing")
        for k in item:
            if k not in ITEM_FIELDS and k not in OPTIONAL_ITEM_FIELDS:
                problems.append(f"unknown field {k!r}")
        code = item.get("account_bank_code")
        if code is not None and (not isinstance(code, str) or not BANK_CODE.fullmatch(code)):
            problems.append("account_bank_code must be the 12-digit CNAPS code of the account's bank, "
                            "or null")
        seq = item.get("seq")
        if not _is_int(seq) or seq <= 0:
            problems.append("seq must be a positive integer")
            seq_label = f"line {line_no}"
        else:
            seq_label = f"seq {seq}"
            if seq <= self.last_seq:
                problems.append(f"seq {seq} is not above the previous seq {self.last_seq} "
                                f"(duplicate or out of order)")
            else:
                self.last_seq = seq
        amount = item.get("amount")
        if not _is_int(amount) or amount <= 0:
            problems.append("amount must be a positive integer of fen")
            self.amount_unknown = True
        else:
            self.amount += amount
        p = _text_problem("name", item.get("name"), required=True, max_len=50)
        if p:
            problems.append(p)
        if "id_number" in item:
            p = id_number_problem(item["id_number"])
            if p:
                problems.append(p)
        acct = item.get("account_no")
        if not isinstance(acct, str) or not ACCOUNT.fullmatch(acct):
            problems.append("account_no must be 8 to 32 digits")
        for k, n in (("account_bank", 100), ("remark", 100)):
            p = _text_problem(k, item.get(k), required=False, max_len=n)
            if p:
                problems.append(p)
        if problems:
            self.bad_items += 1
            for p in problems:
                self._reason(f"{seq_label}: {p}")
            return None
        return {
            "order_no": self.header["order_no"], "seq": seq, "name": item["name"],
            "id_number": item["id_number"], "account_no": acct,
            "account_bank": item.get("account_bank") or "", "account_bank_code": code, "amount": amount,
            "remark": item.get("remark") or "", "status": "PENDING",
        }

    def finish(self) -> list[str]:
        """All reasons, including the header's count and sum against the details."""
        h = self.header
        if self.count != h["total_count"]:
            self._reason(f"order: {self.count} items received, header says total_count "
                         f"{h['total_count']}")
        if self.amount != h["total_amount"] and not self.amount_unknown:
            self._reason(f"order: items add up to {self.amount} fen, header says total_amount "
                         f"{h['total_amount']}")
        if self._suppressed:
            self.reasons.append(f"... and {self._suppressed} more reasons not listed")
        return self.reasons
