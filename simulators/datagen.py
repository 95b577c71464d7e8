"""Deterministic disbursement orders and their items for the core simulator.

An order is described by an :class:`OrderSpec` (usually read from a TOML seed
file with :func:`load_seed`); every item is a pure function of
``(seed, order_no, position)``, so an order of a million items is regenerated
on the fly, in any slice, and never stored. Items look like the real thing
where the gateway could trip over it: common Chinese names with a share that
GBK cannot encode, resident ID numbers with valid county codes, birth dates
and check characters, 19-digit social security card accounts (Luhn-valid) of
which a chosen share is aimed at each bank reason code through
:func:`simulators.outcomes.account_failing_with`, and amounts in int fen. An
order can also be made deliberately bad (``corrupt``) to exercise the
gateway's validation. Pure code: no clock, no I/O except :func:`load_seed`.
"""

from __future__ import annotations

import bisect
from array import array
import calendar
import datetime
import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from stdnum.cn import ric

from simulators.outcomes import REASONS, SUCCESS, account_failing_with, outcome_for_account

CST = datetime.timezone(datetime.timedelta(hours=8))

# corrupt option -> what it breaks (one item, chosen by corrupt_position, or the header)
CORRUPTIONS: dict[str, str] = {
    "count": "header total_count is one more than the items",
    "sum": "header total_amount is one fen more than the items' sum",
    "dup_seq": "the item at the corrupt position repeats the previous item's seq",
    "bad_id": "the item at the corrupt position has a wrong ID check character",
    "short_name": "project_short has 3 characters instead of 4",
    "pipe": "the item at the corrupt position has a '|' in its name",
    "zero_amount": "the item at the corrupt position has amount 0",
}

ORDER_NO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}")

# Ranked by frequency (census order); the weight falls with the rank so that
# 王/李/张 dominate as they do in a real county roll.
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩邓冯曹彭曾肖田董潘袁蔡蒋余于杜叶程"
    "魏苏吕丁任卢姚沈钟姜崔谭陆范汪廖石金韦贾夏付方邹熊白孟秦邱侯江尹薛闫段雷龙黎史陶贺毛郝顾"
    "龚邵万覃武钱戴严莫孔向常"
)
COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "令狐", "慕容")
MALE_CHARS = "伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林阳建国文志海峰庆东兵亮成"
FEMALE_CHARS = "芳娜秀英敏静丽艳娟霞燕玲桂兰萍红梅琳莉雪婷倩慧颖洁佳琴云凤月小春晶蓉欣雯玉珍丹"
# Characters GB18030 encodes and GBK does not (CJK Extension A and B): a bank
# file written in GBK would lose these recipients, which is what the share
# of rare names is there to catch.
RARE_CHARS = "𠮷䶮𡒄䲜㛃𪚥㵘䴉"
VILLAGES = ("张庄村", "李家湾村", "红旗村", "新华村", "和平村", "东风村", "胜利村", "前进村", "太平村", "永安村")

# County codes that stdnum's table knows for every birth year (no validity
# range), so that every generated ID passes stdnum.cn.ric.validate; recipients
# registered outside the order's county are drawn from these.
OTHER_COUNTIES = (
    "140121", "210321", "330127", "340121", "340421", "340621",
    "350121", "360121", "430121", "510121", "610323", "640122",
)
OUTSIDE_COUNTY_PER_MILLE = 150
MIN_AGE, MAX_AGE = 18, 85
_JAN1 = {y: datetime.date(y, 1, 1).toordinal() for y in range(1800, 2200)}

_W64 = 1 << 64
_GOLDEN64 = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: a low-discrepancy step


def _surname_weights() -> tuple[int, ...]:
    acc, out = 0, []
    for rank in range(len(SURNAMES)):
        acc += 10_000 // (rank + 4)
        out.append(acc)
    return tuple(out)


_SURNAME_CUM = _surname_weights()


def is_gb18030_only(text: str) -> bool:
    """True when *text* encodes in GB18030 but not in GBK."""
    try:
        text.encode("gbk")
    except UnicodeEncodeError:
        text.encode("gb18030")
        return True
    return False


@dataclass(frozen=True)
class OrderSpec:
    """How to generate one order (发放单) and its items.

    ``failures`` maps reason codes (R001..R010, R099) to the share of items
    whose account the simulated bank fails with that code. ``corrupt`` is one
    of :data:`CORRUPTIONS` or None.
    """

    order_no: str
    bank_id: str
    count: int
    seed: int
    budget_unit: str
    project_code: str
    project_name: str
    project_short: str
    region: str
    funded_at: str
    failures: tuple[tuple[str, float], ...] = ()
    rare_name_share: float = 0.02
    amount_min: int = 5000
    amount_max: int = 300000
    account_bank: str = "中国农业银行"
    account_bin: str = "622848"
    # core-api.md: some items carry the account bank's 12-digit CNAPS code, the rest none.
    account_bank_code: str = "103100000026"
    bank_code_share: float = 0.25
    corrupt: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.failures, Mapping):
            object.__setattr__(self, "failures", tuple(sorted(self.failures.items())))
        problems = spec_problems(vars(self))
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "funded_at", _iso_cst(self.funded_at, "funded_at"))

    @cached_property
    def _plan(self) -> _Plan:
        return _Plan.of(self)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _iso_cst(value: Any, name: str) -> str:
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an ISO 8601 date-time") from None
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        raise ValueError(f"{name}: must be a date-time with a UTC offset")
    return value.astimezone(CST).isoformat()


def _county_valid_for_birth_years(code: str, years: range) -> bool:
    # stdnum decides validity per birth year (codes were created and retired
    # over time): ask it about each year an item can be born in.
    for year in years:
        try:
            ric.get_birth_place(f"{code}{year}0101000X")
        except Exception:
            return False
    return True


def _birth_years(funded_year: int) -> range:
    return range(funded_year - MAX_AGE, funded_year - MIN_AGE + 1)


def spec_problems(values: Mapping[str, Any]) -> list[str]:
    """Every fault of an order spec given as field values, each naming its field."""
    v = {name: f.default for name, f in OrderSpec.__dataclass_fields__.items() if f.default is not MISSING}
    v.update(values)
    missing = [k for k in OrderSpec.__dataclass_fields__ if k not in v]
    if missing:
        return [f"{k}: missing" for k in missing]
    out = []
    if not isinstance(v["order_no"], str) or not ORDER_NO_RE.fullmatch(v["order_no"]):
        out.append(f"order_no: {v['order_no']!r} does not match {ORDER_NO_RE.pattern}")
    for name in ("bank_id", "budget_unit", "project_code", "project_name", "account_bank"):
        if not isinstance(v[name], str) or not v[name] or "|" in v[name]:
            out.append(f"{name}: must be a non-empty string without '|'")
    if not _is_int(v["count"]) or v["count"] < 1:
        out.append("count: must be an integer >= 1")
    if not _is_int(v["seed"]):
        out.append("seed: must be an integer")
    if not isinstance(v["project_short"], str) or len(v["project_short"]) != 4:
        out.append("project_short: must be exactly 4 characters")
    funded = None
    try:
        funded = datetime.datetime.fromisoformat(_iso_cst(v["funded_at"], "funded_at"))
    except ValueError as e:
        out.append(str(e))
    if not isinstance(v["region"], str) or not re.fullmatch(r"\d{6}", v["region"]):
        out.append("region: must be a 6-digit county code")
    elif funded and not _county_valid_for_birth_years(v["region"], _birth_years(funded.year)):
        out.append(f"region: {v['region']} is not a county code stdnum accepts for births "
                   f"{MIN_AGE}..{MAX_AGE} years before funded_at")
    if not isinstance(v["account_bin"], str) or not re.fullmatch(r"\d{6}", v["account_bin"]):
        out.append("account_bin: must be 6 digits")
    failures = v["failures"]
    failures = failures.items() if isinstance(failures, Mapping) else failures
    total = 0.0
    for code, share in failures:
        if code not in REASONS:
            out.append(f"failures.{code}: unknown reason code")
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            out.append(f"failures.{code}: share must be a number in [0, 1]")
        else:
            total += share
    if total > 1:
        out.append("failures: shares add up to more than 1")
    if not isinstance(v["account_bank_code"], str) or not re.fullmatch(r"\d{12}", v["account_bank_code"]):
        out.append("account_bank_code: must be 12 digits (a CNAPS code)")
    code_share = v["bank_code_share"]
    if not isinstance(code_share, (int, float)) or isinstance(code_share, bool) or not 0 <= code_share <= 1:
        out.append("bank_code_share: must be a number in [0, 1]")
    share = v["rare_name_share"]
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
        out.append("rare_name_share: must be a number in [0, 1]")
    lo, hi = v["amount_min"], v["amount_max"]
    if not _is_int(lo) or lo < 1:
        out.append("amount_min: must be an integer number of fen >= 1")
    if not _is_int(hi) or not _is_int(lo) or hi < lo:
        out.append("amount_max: must be an integer number of fen >= amount_min")
    if v["corrupt"] is not None and v["corrupt"] not in CORRUPTIONS:
        out.append(f"corrupt: {v['corrupt']!r} is not one of {sorted(CORRUPTIONS)}")
    if v["corrupt"] == "dup_seq" and _is_int(v["count"]) and v["count"] < 2:
        out.append("corrupt: dup_seq needs count >= 2")
    return out


@dataclass(frozen=True)
class _Plan:
    """What every item of an order shares, computed once per spec."""

    offset: int
    bounds: tuple[tuple[int, str], ...]  # (upper bound on the 2**64 circle, code)
    rare_per_million: int
    corrupt_position: int
    funded: datetime.date

    @classmethod
    def of(cls, spec: OrderSpec) -> _Plan:
        h = _digest(spec, "order")
        acc, bounds = 0.0, []
        for code, share in spec.failures:
            if share > 0:
                acc += share
                bounds.append((min(_W64, round(acc * _W64)), code))
        first = 2 if spec.corrupt == "dup_seq" else 1
        return cls(
            offset=h % _W64,
            bounds=tuple(bounds),
            rare_per_million=round(spec.rare_name_share * 1_000_000),
            corrupt_position=first + (h >> 64) % (spec.count - first + 1),
            funded=datetime.datetime.fromisoformat(spec.funded_at).date(),
        )


def _digest(spec: OrderSpec, what: str | int) -> int:
    key = f"{spec.seed}|{spec.order_no}|{what}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=64, person=b"core-sim-item").digest(), "big")


def corrupt_position(spec: OrderSpec) -> int | None:
    """Position (1-based) of the item a per-item ``corrupt`` option spoils, else None."""
    if spec.corrupt in ("dup_seq", "bad_id", "pipe", "zero_amount"):
        return spec._plan.corrupt_position
    return None


def intended_outcome(spec: OrderSpec, position: int) -> str:
    """The reason code the item at *position* is aimed at ('0000' for success).

    Failing items are picked by where ``position * golden`` falls on a circle
    cut into one arc per code, so every code gets its share within a couple of
    items at any order size, and the choice needs no pass over the order.
    """
    plan = spec._plan
    u = (position * _GOLDEN64 + plan.offset) % _W64
    for bound, code in plan.bounds:
        if u < bound:
            return code
    return SUCCESS


class _Draw:
    """Uniform choices taken one after another from a big hash integer."""

    __slots__ = ("h",)

    def __init__(self, h: int) -> None:
        self.h = h

    def __call__(self, n: int) -> int:
        self.h, r = divmod(self.h, n)
        return r


def _amount(spec: OrderSpec, draw: _Draw) -> int:
    return spec.amount_min + draw(spec.amount_max - spec.amount_min + 1)


def item(spec: OrderSpec, position: int) -> dict[str, Any]:
    """The item at *position* (1..count): seq, name, id_number, account_no, account_bank, amount, remark."""
    if not 1 <= position <= spec.count:
        raise IndexError(f"position {position} outside 1..{spec.count}")
    plan = spec._plan
    draw = _Draw(_digest(spec, position))
    # The amount is drawn first so that item_amount() can stop there.
    amount = _amount(spec, draw)
    male = draw(2) == 1
    name = _name(draw, male, rare=draw(1_000_000) < plan.rare_per_million)
    id_number = _id_number(spec, plan, draw, male)
    code = intended_outcome(spec, position)
    account_no = _account(spec, draw, code)
    remark = "" if draw(4) == 0 else VILLAGES[draw(len(VILLAGES))]

    seq = position
    if position == plan.corrupt_position and spec.corrupt is not None:
        if spec.corrupt == "dup_seq":
            seq = position - 1
        elif spec.corrupt == "bad_id":
            alphabet = "0123456789X"
            id_number = id_number[:17] + alphabet[(alphabet.index(id_number[17]) + 1) % 11]
        elif spec.corrupt == "pipe":
            name = name[:1] + "|" + name[1:]
        elif spec.corrupt == "zero_amount":
            amount = 0
    out = {
        "seq": seq,
        "name": name,
        "id_number": id_number,
        "account_no": account_no,
        "account_bank": spec.account_bank,
        "amount": amount,
        "remark": remark,
    }
    # Drawn last, so every other field is what it was before items carried the code.
    if draw(1_000_000) < round(spec.bank_code_share * 1_000_000):
        out["account_bank_code"] = spec.account_bank_code
    return out


def item_amount(spec: OrderSpec, position: int) -> int:
    """The amount of the item at *position*, in fen, without building the rest of it."""
    if spec.corrupt == "zero_amount" and position == spec._plan.corrupt_position:
        return 0
    return _amount(spec, _Draw(_digest(spec, position)))


def items(spec: OrderSpec, start: int = 1, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Items at positions start..stop (inclusive, default to the last), in order."""
    last = spec.count if stop is None else min(stop, spec.count)
    for position in range(max(1, start), last + 1):
        yield item(spec, position)


def order_totals(spec: OrderSpec) -> tuple[int, int]:
    """(item count, sum of item amounts in fen): one pass over the amounts."""
    return spec.count, sum(item_amount(spec, p) for p in range(1, spec.count + 1))


def order_profile(spec: OrderSpec, amounts: bool = False) -> dict[str, Any]:
    """One pass over the order: {"count", "amount", "outcomes": {code: {"count", "amount"}}}.

    ``count``/``amount`` are :func:`order_totals`; ``outcomes`` splits them by
    the reason code each item's account is aimed at ('0000' for success), so a
    caller can check the bank failed exactly the items it should have. With
    *amounts*, also "amounts": every item's :func:`item_amount`, by position - 1
    (an ``array`` of 8 bytes an item).
    """
    outcomes: dict[str, dict[str, int]] = {}
    total = 0
    kept = array("q")
    for position in range(1, spec.count + 1):
        amount = item_amount(spec, position)
        if amounts:
            kept.append(amount)
        total += amount
        o = outcomes.setdefault(intended_outcome(spec, position), {"count": 0, "amount": 0})
        o["count"] += 1
        o["amount"] += amount
    profile = {"count": spec.count, "amount": total, "outcomes": dict(sorted(outcomes.items()))}
    if amounts:
        profile["amounts"] = kept
    return profile


def order_header(spec: OrderSpec, totals: tuple[int, int] | None = None) -> dict[str, Any]:
    """The order header as the core publishes it (corruptions applied).

    *totals* is :func:`order_totals` of the spec, computed here when not given
    (a pass over every item: cache it for big orders).
    """
    count, amount = totals if totals is not None else order_totals(spec)
    if spec.corrupt == "count":
        count += 1
    elif spec.corrupt == "sum":
        amount += 1
    short = spec.project_short[:3] if spec.corrupt == "short_name" else spec.project_short
    return {
        "order_no": spec.order_no,
        "budget_unit": spec.budget_unit,
        "project_code": spec.project_code,
        "project_name": spec.project_name,
        "project_short": short,
        "region": spec.region,
        "bank_id": spec.bank_id,
        "total_amount": amount,
        "total_count": count,
        "funded_at": spec.funded_at,
    }


def _name(draw: _Draw, male: bool, rare: bool) -> str:
    if draw(100) == 0:
        surname = COMPOUND_SURNAMES[draw(len(COMPOUND_SURNAMES))]
    else:
        surname = SURNAMES[bisect.bisect_right(_SURNAME_CUM, draw(_SURNAME_CUM[-1]))]
    chars = MALE_CHARS if male else FEMALE_CHARS
    given = chars[draw(len(chars))]
    if draw(10) < 7:
        given += chars[draw(len(chars))]
    if rare:
        rare_char = RARE_CHARS[draw(len(RARE_CHARS))]
        given = rare_char + given[1:] if draw(2) else given[:1] + rare_char
    return surname + given


def _id_number(spec: OrderSpec, plan: _Plan, draw: _Draw, male: bool) -> str:
    if draw(1000) < OUTSIDE_COUNTY_PER_MILLE:
        county = OTHER_COUNTIES[draw(len(OTHER_COUNTIES))]
    else:
        county = spec.region
    year = plan.funded.year - MIN_AGE - draw(MAX_AGE - MIN_AGE + 1)
    birth = datetime.date.fromordinal(_JAN1[year] + draw(366 if calendar.isleap(year) else 365))
    # GB 11643: the order code's last digit is odd for men, even for women.
    order_code = 1 + 2 * draw(500) if male else 2 + 2 * draw(499)
    body = f"{county}{year}{birth.month:02d}{birth.day:02d}{order_code:03d}"
    return body + ric.calc_check_digit(body + "X")


_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")  # digit sum of 2*d


def luhn_check_digit(body: str) -> str:
    """The Luhn check digit to append to the digit string *body*."""
    r = body[::-1]
    total = sum(map(int, r[0::2].translate(_LUHN_DOUBLE))) + sum(map(int, r[1::2]))
    return str(-total % 10)


def _account(spec: OrderSpec, draw: _Draw, code: str) -> str:
    middle = f"{draw(10**8):08d}"
    if code != SUCCESS:
        # The tail 99NN is fixed by the reason code; one free digit before it
        # makes the whole number Luhn-valid like a real card number.
        for d in "0123456789":
            acct = account_failing_with(spec.account_bin + middle + d, code)
            if luhn_check_digit(acct[:-1]) == acct[-1]:
                return acct
        raise AssertionError("unreachable: one digit always fixes the Luhn sum")
    body = spec.account_bin + middle + f"{draw(10_000):04d}"
    acct = body + luhn_check_digit(body)
    if outcome_for_account(acct) != SUCCESS:
        # The tail happened to read 99NN: break the 99 and recompute.
        body = body[:-2] + "0" + body[-1]
        acct = body + luhn_check_digit(body)
    return acct


# --- seed files ------------------------------------------------------------

_REQUIRED = ("order_no", "bank_id", "count", "seed", "budget_unit", "project_code",
             "project_name", "project_short", "region", "funded_at")
_OPTIONAL = ("failures", "rare_name_share", "amount_min", "amount_max", "account_bank",
             "account_bin", "corrupt", "account_bank_code", "bank_code_share")


class SeedError(ValueError):
    """A seed file that cannot be used; the message lists every fault with file and key."""


def load_seed(path: str | Path) -> list[OrderSpec]:
    """Read ``[[order]]`` tables (with an optional ``[defaults]`` table merged into each).

    Unknown keys, missing keys and bad values are collected and raised
    together as one :class:`SeedError` naming the file, order and key.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SeedError(f"{path}: {e}") from e
    errors: list[str] = []
    for key in doc:
        if key not in ("defaults", "order"):
            errors.append(f"{path}: unknown top-level key {key!r}")
    defaults = doc.get("defaults", {})
    orders = doc.get("order", [])
    if not isinstance(defaults, dict):
        errors.append(f"{path}: defaults must be a table")
        defaults = {}
    if not isinstance(orders, list) or not orders:
        errors.append(f"{path}: needs at least one [[order]] table")
        orders = []
    specs: list[OrderSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(orders):
        where = f"{path}: order[{i}]"
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a table")
            continue
        merged = {**defaults, **raw}
        where = f"{path}: order[{i}] ({merged.get('order_no', '?')})"
        bad = [k for k in merged if k not in _REQUIRED + _OPTIONAL]
        missing = [k for k in _REQUIRED if k not in merged]
        errors += [f"{where}: unknown key {k!r}" for k in bad]
        errors += [f"{where}: missing key {k!r}" for k in missing]
        if bad or missing:
            continue
        if "failures" in merged and not isinstance(merged["failures"], dict):
            errors.append(f"{where}: failures must be a table of reason code = share")
            continue
        problems = spec_problems(merged)
        if problems:
            errors += [f"{where}: {p}" for p in problems]
            continue
        spec = OrderSpec(**merged)
        if spec.order_no in seen:
            errors.append(f"{where}: order_no {spec.order_no} appears twice")
        seen.add(spec.order_no)
        specs.append(spec)
    if errors:
        raise SeedError("\n".join(errors))
    return specs


__all__ = [
    "CORRUPTIONS", "OrderSpec", "SeedError", "corrupt_position", "intended_outcome",
    "is_gb18030_only", "item", "luhn_check_digit", "item_amount", "items", "load_seed", "order_header",
    "order_profile", "order_totals", "spec_problems",
]
