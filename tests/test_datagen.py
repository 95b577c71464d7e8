"""Tests of the deterministic order and item generator (simulators/datagen.py)."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

import pytest
from stdnum import luhn
from stdnum.cn import ric

from simulators import datagen
from simulators.datagen import OrderSpec
from simulators.outcomes import REASONS, SUCCESS, outcome_for_account

DEMO_SEED = Path(__file__).resolve().parent.parent / "conf" / "demo" / "orders.toml"
ALL_CODES = sorted(REASONS)


def make_spec(**overrides) -> OrderSpec:
    fields = dict(
        order_no="FS3401212026119001",
        bank_id="cnbank-test",
        count=3000,
        seed=42,
        budget_unit="长丰县农业农村局",
        project_code="NY2026-01",
        project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴",
        region="340121",
        funded_at="2026-11-02T09:30:00+08:00",
        failures={code: 0.01 for code in ALL_CODES},
    )
    fields.update(overrides)
    return OrderSpec(**fields)


@pytest.fixture(scope="module")
def spec() -> OrderSpec:
    return make_spec()


@pytest.fixture(scope="module")
def all_items(spec) -> list[dict]:
    return list(datagen.items(spec))


def test_items_are_a_pure_function_of_seed_order_and_position(spec, all_items):
    """Regenerating gives identical items; any slice equals the same positions of the full run."""
    assert list(datagen.items(make_spec())) == all_items
    assert [datagen.item(spec, p) for p in (1, 1500, 3000)] == [all_items[0], all_items[1499], all_items[2999]]
    assert list(datagen.items(spec, 2001, 2010)) == all_items[2000:2010]
    assert [it["seq"] for it in all_items] == list(range(1, 3001))


def test_a_different_seed_or_order_no_gives_different_people(all_items):
    """Seed and order number both feed the items: changing either changes names, IDs and accounts."""
    for other in (make_spec(seed=43), make_spec(order_no="FS3401212026119002")):
        theirs = list(datagen.items(other, 1, 50))
        assert sum(a["id_number"] == b["id_number"] for a, b in zip(all_items, theirs)) == 0
        assert sum(a["account_no"] == b["account_no"] for a, b in zip(all_items, theirs)) == 0


def test_items_have_the_fields_of_the_core_api_in_order(all_items):
    """Each item has exactly seq, name, id_number, account_no, account_bank, amount, remark, and
    about a quarter also the optional account_bank_code (12 digits), as core-api.md allows."""
    fields = ["seq", "name", "id_number", "account_no", "account_bank", "amount", "remark"]
    coded = 0
    for it in all_items[:400]:
        if "account_bank_code" in it:
            coded += 1
            assert list(it) == fields + ["account_bank_code"]
            assert len(it["account_bank_code"]) == 12 and it["account_bank_code"].isdigit()
        else:
            assert list(it) == fields
    assert 60 <= coded <= 140


def test_every_id_number_is_valid_for_stdnum_and_plausible(spec, all_items):
    """All IDs pass stdnum.cn.ric.validate (check digit, birth date, county); ages are 18..85 at funding."""
    funded = datetime.date(2026, 11, 2)
    regions = Counter()
    for it in all_items:
        number = ric.validate(it["id_number"])
        born = ric.get_birth_date(number)
        age = funded.year - born.year
        assert datagen.MIN_AGE <= age <= datagen.MAX_AGE
        regions[number[:6]] += 1
    # Most recipients are registered in the order's county, some elsewhere.
    assert 0.75 < regions[spec.region] / len(all_items) < 0.95
    assert len(regions) > 5


def test_other_counties_are_accepted_by_stdnum_for_every_generated_birth_year():
    """The fallback county codes are valid in stdnum's table for every year an item can be born in."""
    for code in datagen.OTHER_COUNTIES:
        for year in range(1930, 2020):
            ric.get_birth_place(f"{code}{year}0101000X")


def test_gb18030_only_names_are_present_at_the_configured_share(all_items):
    """About 2% of names hold a character GBK cannot encode but GB18030 can; all other names are GBK."""
    rare = [it["name"] for it in all_items if datagen.is_gb18030_only(it["name"])]
    assert 0.01 < len(rare) / len(all_items) < 0.03
    for name in rare:
        with pytest.raises(UnicodeEncodeError):
            name.encode("gbk")
        assert name.encode("gb18030").decode("gb18030") == name
    for it in all_items:
        if it["name"] not in rare:
            it["name"].encode("gbk")
        assert 2 <= len(it["name"]) <= 4


def test_each_rare_character_is_gb18030_only():
    """The rare-character table only holds characters that fail GBK and round-trip in GB18030."""
    for ch in datagen.RARE_CHARS + "𠮷䶮𡒄䲜":
        assert datagen.is_gb18030_only(ch), ch
    assert not datagen.is_gb18030_only("王芳")


def test_rare_name_share_is_configurable():
    """rare_name_share=0 gives no GB18030-only names, 0.5 gives about half."""
    none = make_spec(rare_name_share=0.0, count=1000)
    half = make_spec(rare_name_share=0.5, count=1000)
    assert not any(datagen.is_gb18030_only(it["name"]) for it in datagen.items(none))
    share = sum(datagen.is_gb18030_only(it["name"]) for it in datagen.items(half)) / 1000
    assert 0.4 < share < 0.6


def test_failing_accounts_map_to_the_intended_codes_in_the_intended_shares(spec, all_items):
    """The bank's outcome rule fails each aimed account with its code; every other account succeeds."""
    outcomes = Counter()
    for position, it in enumerate(all_items, 1):
        got = outcome_for_account(it["account_no"])
        assert got == datagen.intended_outcome(spec, position)
        outcomes[got] += 1
    for code in ALL_CODES:
        # 1% of 3000 each, spread by a low-discrepancy sequence: 30 within a couple.
        assert abs(outcomes[code] - 30) <= 2, (code, outcomes[code])
    assert outcomes[SUCCESS] == len(all_items) - sum(outcomes[c] for c in ALL_CODES)


def test_accounts_are_19_digit_luhn_valid_card_numbers(spec, all_items):
    """Every account, failing or not, is 19 digits, starts with the BIN and passes stdnum's Luhn check."""
    for it in all_items:
        acct = it["account_no"]
        assert len(acct) == 19 and acct.isdigit() and acct.startswith(spec.account_bin)
        assert luhn.is_valid(acct)
    assert datagen.luhn_check_digit("622848000000000000") == luhn.calc_check_digit("622848000000000000")


def test_no_failures_configured_means_every_account_succeeds():
    """With no failure shares no account ends in a failing 99NN pattern."""
    clean = make_spec(failures={}, count=2000)
    assert {outcome_for_account(it["account_no"]) for it in datagen.items(clean)} == {SUCCESS}


def test_amounts_are_int_fen_within_bounds(all_items):
    """Amounts are ints between amount_min and amount_max, and not all alike."""
    amounts = [it["amount"] for it in all_items]
    assert all(type(a) is int and 5000 <= a <= 300000 for a in amounts)
    assert len(set(amounts)) > 2000
    assert [datagen.item_amount(make_spec(), p) for p in range(1, 101)] == amounts[:100]


def test_header_totals_match_the_items_and_funded_at_is_normalised(spec, all_items):
    """total_amount is the items' sum, total_count their number; funded_at is given back at +08:00."""
    header = datagen.order_header(spec)
    assert header["total_amount"] == sum(it["amount"] for it in all_items)
    assert header["total_count"] == len(all_items)
    assert list(header) == ["order_no", "budget_unit", "project_code", "project_name", "project_short",
                            "region", "bank_id", "total_amount", "total_count", "funded_at"]
    assert len(header["project_short"]) == 4
    utc = make_spec(funded_at="2026-11-02T01:30:00+00:00", count=1)
    assert utc.funded_at == "2026-11-02T09:30:00+08:00"
    assert datagen.order_header(utc, (1, 100))["total_amount"] == 100


def test_order_profile_splits_totals_by_intended_outcome(spec, all_items):
    """order_profile's totals equal order_totals, and its per-code split matches the accounts."""
    profile = datagen.order_profile(spec)
    assert (profile["count"], profile["amount"]) == datagen.order_totals(spec)
    by_code = Counter()
    for it in all_items:
        by_code[outcome_for_account(it["account_no"])] += it["amount"]
    assert {c: o["amount"] for c, o in profile["outcomes"].items()} == dict(by_code)


def _diff_positions(a: OrderSpec, b: OrderSpec) -> list[int]:
    return [p for p in range(1, a.count + 1) if datagen.item(a, p) != datagen.item(b, p)]


def test_corrupt_count_and_sum_spoil_only_the_header():
    """count: header count one over; sum: header total one fen over; items unchanged."""
    good = make_spec(count=200)
    good_header = datagen.order_header(good)
    for corrupt, key in (("count", "total_count"), ("sum", "total_amount")):
        bad = make_spec(count=200, corrupt=corrupt)
        header = datagen.order_header(bad)
        assert header[key] == good_header[key] + 1
        assert {k: v for k, v in header.items() if k != key} == {k: v for k, v in good_header.items() if k != key}
        assert _diff_positions(good, bad) == []


def test_corrupt_short_name_gives_a_3_character_project_short():
    """short_name: project_short has 3 characters in the header."""
    assert len(datagen.order_header(make_spec(count=5, corrupt="short_name"))["project_short"]) == 3


def test_corrupt_dup_seq_repeats_one_seq():
    """dup_seq: exactly one item carries the previous item's seq, so one seq appears twice."""
    good, bad = make_spec(count=200), make_spec(count=200, corrupt="dup_seq")
    p = datagen.corrupt_position(bad)
    assert _diff_positions(good, bad) == [p]
    seqs = Counter(it["seq"] for it in datagen.items(bad))
    assert [s for s, n in seqs.items() if n > 1] == [p - 1]


def test_corrupt_bad_id_breaks_one_check_character():
    """bad_id: one item's ID fails stdnum only on its checksum; everything else is unchanged."""
    good, bad = make_spec(count=200), make_spec(count=200, corrupt="bad_id")
    p = datagen.corrupt_position(bad)
    assert _diff_positions(good, bad) == [p]
    broken = datagen.item(bad, p)["id_number"]
    with pytest.raises(ric.InvalidChecksum):
        ric.validate(broken)
    assert broken[:17] == datagen.item(good, p)["id_number"][:17]


def test_corrupt_pipe_and_zero_amount_spoil_one_item():
    """pipe puts '|' in one name; zero_amount makes one amount 0 (and the header sum follows the items)."""
    pipe = make_spec(count=200, corrupt="pipe")
    names = [it["name"] for it in datagen.items(pipe)]
    assert [i + 1 for i, n in enumerate(names) if "|" in n] == [datagen.corrupt_position(pipe)]
    zero = make_spec(count=200, corrupt="zero_amount")
    amounts = [it["amount"] for it in datagen.items(zero)]
    assert amounts.count(0) == 1 and amounts.index(0) + 1 == datagen.corrupt_position(zero)
    assert datagen.order_header(zero)["total_amount"] == sum(amounts)


@pytest.mark.parametrize("field, value, message", [
    ("project_short", "耕地", "project_short"),
    ("count", 0, "count"),
    ("region", "110111", "region"),  # 房山区: stdnum only knows it from 1986
    ("region", "34012", "region"),
    ("failures", {"R123": 0.1}, "failures.R123"),
    ("failures", {"R001": 0.7, "R002": 0.7}, "failures"),
    ("corrupt", "nonsense", "corrupt"),
    ("funded_at", "2026-11-02T09:30:00", "funded_at"),
    ("order_no", "bad/no", "order_no"),
    ("amount_max", 10, "amount_max"),
])
def test_bad_specs_are_refused_naming_the_field(field, value, message):
    """OrderSpec refuses a bad value with a message that starts with the field's name."""
    with pytest.raises(ValueError, match=f"^{message}:"):
        make_spec(**{field: value})


def test_demo_seed_loads_with_every_reason_code_and_one_invalid_order():
    """conf/demo/orders.toml: a few thousand items for the cnbank and the iso20022 demo banks, all 11
    codes aimed at, one 'sum' order."""
    specs = datagen.load_seed(DEMO_SEED)
    assert {s.bank_id for s in specs} == {"cnbank-demo", "isobank-demo"}
    assert 2000 <= sum(s.count for s in specs) <= 5000
    assert [s.corrupt for s in specs].count("sum") == 1
    assert all(s.corrupt in (None, "sum") for s in specs)
    codes = Counter()
    for s in specs:
        for code, o in datagen.order_profile(s)["outcomes"].items():
            codes[code] += o["count"]
    assert set(ALL_CODES) <= set(codes)
    failing = sum(n for c, n in codes.items() if c != SUCCESS)
    assert 0.05 < failing / sum(codes.values()) < 0.07


def test_load_seed_reports_every_fault_with_file_order_and_key(tmp_path):
    """Unknown, missing and bad keys are all reported together, each naming the file, order and key."""
    seed = tmp_path / "bad.toml"
    seed.write_text("""
[defaults]
bank_id = "b"
[[order]]
order_no = "A1"
count = 10
seed = 1
budget_unit = "u"
project_code = "p"
project_name = "n"
project_short = "四个字儿"
region = "340121"
funded_at = 2026-11-02T09:30:00+08:00
colour = "blue"
[[order]]
order_no = "A2"
seed = 2
budget_unit = "u"
project_code = "p"
project_name = "n"
project_short = "三个字"
region = "340121"
funded_at = 2026-11-02T09:30:00+08:00
count = 5
[[order]]
order_no = "A3"
""", encoding="utf-8")
    with pytest.raises(datagen.SeedError) as e:
        datagen.load_seed(seed)
    text = str(e.value)
    assert f"{seed}: order[0] (A1): unknown key 'colour'" in text
    assert f"{seed}: order[1] (A2): project_short: must be exactly 4 characters" in text
    assert f"{seed}: order[2] (A3): missing key 'count'" in text


def test_load_seed_accepts_a_minimal_file_with_toml_datetimes(tmp_path):
    """A seed with only the required keys loads; the TOML datetime becomes ISO 8601 at +08:00."""
    seed = tmp_path / "ok.toml"
    seed.write_text("""
[[order]]
order_no = "A1"
bank_id = "b"
count = 3
seed = 1
budget_unit = "u"
project_code = "p"
project_name = "n"
project_short = "耕地补贴"
region = "340121"
funded_at = 2026-11-02T01:30:00Z
""", encoding="utf-8")
    [spec] = datagen.load_seed(seed)
    assert spec.funded_at == "2026-11-02T09:30:00+08:00"
    assert spec.failures == () and spec.corrupt is None
