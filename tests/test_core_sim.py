"""Tests of the core-system simulator over real loopback HTTP (twisted.web.client.Agent)."""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from simulators import datagen
from simulators.core import CoreSimulator
from simulators.outcomes import REASONS

pytestmark = [
    pytest.mark.loopback,
    # Twisted warns when readBody gets a body that had already arrived whole; harmless here.
    pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning"),
]

TOKEN = "t0ken-for-tests"
BANK = "cnbank-test"
ALL_CODES = {code: 0.01 for code in REASONS}


def spec(order_no: str, funded_at: str, count: int, bank: str = BANK, **kw: Any) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=order_no, bank_id=bank, count=count, seed=zlib.crc32(order_no.encode()),
        budget_unit="长丰县农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at=funded_at, failures=ALL_CODES, **kw)


# Listed out of order on purpose: the API must sort by funded_at, then order_no.
SPECS = [
    spec("O1", "2026-11-03T09:00:00+08:00", 30),
    spec("O2", "2026-11-01T09:00:00+08:00", 2500),
    spec("O4", "2026-11-02T09:00:00+08:00", 10),
    spec("O3", "2026-11-02T01:00:00+00:00", 20, corrupt="sum"),  # same instant as O4
    spec("O5", "2026-11-04T09:00:00+08:00", 5),
    spec("X1", "2026-11-01T08:00:00+08:00", 5, bank="other-bank"),
]
BY_NO = {s.order_no: s for s in SPECS}


@dataclass
class Env:
    sim: CoreSimulator
    base: str
    agent: Agent
    reactor: Any

    async def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN,
                   raw: bytes | None = None) -> tuple[int, Headers, bytes]:
        headers = Headers()
        if token is not None:
            headers.addRawHeader(b"authorization", b"Bearer " + token.encode())
        if body is not None:
            raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        producer = FileBodyProducer(BytesIO(raw)) if raw is not None else None
        resp = await self.agent.request(method.encode(), (self.base + path).encode(), headers, producer)
        return resp.code, resp.headers, await readBody(resp)

    async def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        code, _, data = await self.call(method, path, body, **kw)
        return code, json.loads(data)


def start(reactor, tmp_path, **kw: Any) -> Env:
    kw.setdefault("page_size", 2)
    kw.setdefault("chunk_items", 100)
    sim = CoreSimulator(reactor, SPECS, str(tmp_path / "core.db"), TOKEN, **kw)
    port = sim.listen()
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    return Env(sim, f"http://127.0.0.1:{port.getHost().port}", agent, reactor)


@pytest.fixture
def env(reactor, tmp_path):
    e = start(reactor, tmp_path)
    yield e
    pytest_twisted.blockon(e.sim.close())


def result(seq: int, status: str = "PAID", **kw: Any) -> dict[str, Any]:
    r = {"seq": seq, "version": 1, "status": status, "reason_code": "0000", "reason_text": "成功",
         "bank_serial": f"BS{seq:0>8}", "at": "2026-11-05T10:00:00+08:00"}
    if status == "FAILED":
        r.update(reason_code="R001", reason_text="账号不存在", bank_serial="")
    r.update(kw)
    return r


# --- listing and headers ---------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_funded_orders_are_paged_oldest_first_per_bank(env):
    """Pages of page_size follow funded_at (ties by order_no), carry a cursor, end with next null, one bank only."""
    seen, cursor, pages = [], None, 0
    while True:
        path = f"/api/orders?state=funded&bank={BANK}" + (f"&after={cursor}" if cursor else "")
        code, page = await env.json("GET", path)
        assert code == 200
        pages += 1
        assert len(page["orders"]) <= 2
        seen += [o["order_no"] for o in page["orders"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ["O2", "O3", "O4", "O1", "O5"]
    assert pages == 3
    code, other = await env.json("GET", "/api/orders?state=funded&bank=other-bank")
    assert [o["order_no"] for o in other["orders"]] == ["X1"] and other["next"] is None
    code, none = await env.json("GET", "/api/orders?state=funded&bank=nobody")
    assert (code, none) == (200, {"orders": [], "next": None})


@pytest_twisted.ensureDeferred
async def test_listed_and_single_headers_equal_the_generator(env):
    """Each listed header, and GET /api/orders/{no}, is datagen.order_header of the spec (corruption included)."""
    _, page = await env.json("GET", f"/api/orders?state=funded&bank={BANK}")
    for header in page["orders"]:
        assert header == datagen.order_header(BY_NO[header["order_no"]])
    code, o3 = await env.json("GET", "/api/orders/O3")
    assert code == 200
    assert o3["total_amount"] == datagen.order_totals(BY_NO["O3"])[1] + 1
    assert o3["funded_at"] == "2026-11-02T09:00:00+08:00"
    code, err = await env.json("GET", "/api/orders/NOPE")
    assert code == 404 and err["error"] == "not_found"


@pytest.mark.parametrize("query, field", [
    ("bank=cnbank-test", "state"),
    ("state=settled&bank=cnbank-test", "state"),
    ("state=funded", "bank"),
    ("state=funded&bank=cnbank-test&limit=5", "limit"),
    ("state=funded&bank=cnbank-test&bank=x", "bank"),
    ("state=funded&bank=cnbank-test&after=%21%21", "after"),
    ("state=funded&bank=cnbank-test&after=Tk9QRQ", "after"),  # base64 of an unknown order
])
@pytest_twisted.ensureDeferred
async def test_listing_refuses_a_bad_query_naming_the_parameter(env, query, field):
    """A malformed listing query is a 400 whose JSON names the parameter at fault."""
    code, err = await env.json("GET", "/api/orders?" + query)
    assert code == 400
    assert err["field"] == field


# --- items -----------------------------------------------------------------

class Lines(Protocol):
    """Collects an NDJSON body line by line."""

    def __init__(self, done: Deferred, keep: bool = True) -> None:
        self.done, self.keep = done, keep
        self.buf = b""
        self.items: list[dict] = []
        self.count = self.amount = self.last_seq = 0
        self.in_order = True
        self.bytes = 0

    def dataReceived(self, data: bytes) -> None:
        self.bytes += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            item = json.loads(line)
            self.count += 1
            self.amount += item["amount"]
            self.in_order &= item["seq"] == self.last_seq + 1
            self.last_seq = item["seq"]
            if self.keep:
                self.items.append(item)

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone, PotentialDataLoss) and not self.buf:
            self.done.callback(self)
        else:
            self.done.errback(reason)


async def stream(env: Env, order_no: str, protocol_factory=Lines, **kw: Any):
    headers = Headers({b"authorization": [b"Bearer " + TOKEN.encode()]})
    resp = await env.agent.request(b"GET", f"{env.base}/api/orders/{order_no}/items".encode(), headers)
    assert resp.code == 200
    done: Deferred = Deferred()
    proto = protocol_factory(done, **kw)
    resp.deliverBody(proto)
    return resp, await done


@pytest_twisted.ensureDeferred
async def test_items_stream_as_ndjson_equal_to_the_generator(env):
    """GET items sends every item as one JSON line, in seq order, equal to datagen, adding up to the header."""
    resp, lines = await stream(env, "O2")
    assert resp.headers.getRawHeaders(b"content-type") == [b"application/x-ndjson; charset=utf-8"]
    spec_ = BY_NO["O2"]
    assert lines.items == list(datagen.items(spec_))
    header = datagen.order_header(spec_)
    assert (lines.count, lines.amount) == (header["total_count"], header["total_amount"])
    assert any(datagen.is_gb18030_only(i["name"]) for i in lines.items)


@pytest_twisted.ensureDeferred
async def test_items_of_a_corrupt_order_do_not_add_up_to_its_header(env):
    """For corrupt='sum' the streamed items sum to one fen less than the header says."""
    _, lines = await stream(env, "O3")
    _, header = await env.json("GET", "/api/orders/O3")
    assert lines.amount == header["total_amount"] - 1


class Quitter(Protocol):
    """Reads the first bytes of a body, then drops the connection."""

    def __init__(self, done: Deferred) -> None:
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        if not self.done.called:
            self.transport.stopProducing()
            self.done.callback(len(data))

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(0)


@pytest_twisted.ensureDeferred
async def test_a_reader_that_goes_away_stops_the_stream(env):
    """Dropping the connection mid-stream ends the server's producer instead of leaving it running."""
    _, got = await stream(env, "O2", Quitter)
    assert got > 0
    await env.sim.when_streams_idle()
    assert env.sim.active_streams == 0
    # The server still answers afterwards.
    code, _ = await env.json("GET", "/api/orders/O2")
    assert code == 200


# --- results -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_results_are_recorded_once_per_seq_and_version(env):
    """Posting the same chunk twice records it once and counts the repeats; amounts come from the items."""
    chunk = [result(s) for s in range(1, 11)] + [result(11, "FAILED")]
    code, ack = await env.json("POST", "/api/orders/O1/results", {"results": chunk})
    assert (code, ack) == (200, {"order_no": "O1", "received": 11, "new": 11, "duplicates": 0})
    code, ack = await env.json("POST", "/api/orders/O1/results", {"results": chunk})
    assert (code, ack["new"], ack["duplicates"]) == (200, 0, 11)

    recorded = await env.sim.results("O1")
    assert sorted(recorded) == list(range(1, 12))
    assert recorded[3]["status"] == "PAID" and recorded[3]["bank_serial"] == "BS00000003"
    assert recorded[11]["status"] == "FAILED" and recorded[11]["bank_serial"] is None
    assert recorded[3]["amount"] == datagen.item(BY_NO["O1"], 3)["amount"]
    assert recorded[3]["duplicates"] == 1

    o1 = (await env.sim.summary())["orders"]["O1"]
    paid = sum(datagen.item(BY_NO["O1"], s)["amount"] for s in range(1, 11))
    assert o1["results"]["PAID"] == {"count": 10, "amount": paid}
    assert o1["results"]["FAILED"] == {"count": 1, "amount": datagen.item(BY_NO["O1"], 11)["amount"]}
    assert o1["results"]["REFUNDED"] == {"count": 0, "amount": 0}
    assert (o1["reported_items"], o1["result_events"], o1["duplicates"], o1["conflicts"]) == (11, 11, 11, 0)


@pytest_twisted.ensureDeferred
async def test_the_highest_version_is_kept_and_a_late_lower_one_changes_nothing(env):
    """FAILED version 1 then PAID version 2 leaves PAID; version 1 arriving again later is a repeat,
    acknowledged, and changes nothing."""
    await env.json("POST", "/api/orders/O1/results", {"results": [result(5, "FAILED")]})
    await env.json("POST", "/api/orders/O1/results", {"results": [result(5, "PAID", version=2)]})
    code, ack = await env.json("POST", "/api/orders/O1/results", {"results": [result(5, "FAILED")]})
    assert (code, ack["new"], ack["duplicates"]) == (200, 0, 1)
    rec = (await env.sim.results("O1"))[5]
    assert rec["status"] == "PAID" and rec["version"] == 2 and rec["statuses"] == ["FAILED", "PAID"]
    o1 = (await env.sim.summary())["orders"]["O1"]
    assert o1["results"]["PAID"]["count"] == 1 and o1["results"]["FAILED"]["count"] == 0


@pytest_twisted.ensureDeferred
async def test_paid_returned_and_paid_again_ends_paid_with_version_3(env):
    """An item PAID (v1), returned late (FAILED, v2) and paid again by a RETRY (PAID, v3, another
    bank serial): the core holds PAID version 3 with the new serial, even when v2 arrives after v3
    (a lower version is acknowledged and ignored); no conflict."""
    await env.json("POST", "/api/orders/O1/results", {"results": [result(4)]})
    await env.json("POST", "/api/orders/O1/results",
                   {"results": [result(4, "PAID", version=3, bank_serial="BS-RETRY-4")]})
    code, ack = await env.json("POST", "/api/orders/O1/results",
                               {"results": [result(4, "FAILED", version=2, reason_code="R004")]})
    assert code == 200 and ack["new"] == 1
    rec = (await env.sim.results("O1"))[4]
    assert (rec["status"], rec["version"], rec["bank_serial"]) == ("PAID", 3, "BS-RETRY-4")
    assert rec["statuses"] == ["PAID", "FAILED", "PAID"] and rec["conflicts"] == 0


@pytest_twisted.ensureDeferred
async def test_a_repeat_with_different_content_is_a_409_naming_the_seq(env):
    """The same (seq, version) with another bank serial is refused 409 naming the seq and version;
    nothing of that POST is recorded (not even the good result beside it); the conflict is counted."""
    await env.json("POST", "/api/orders/O1/results", {"results": [result(7)]})
    code, err = await env.json("POST", "/api/orders/O1/results",
                               {"results": [result(8), result(7, bank_serial="OTHER")]})
    assert code == 409 and (err["seq"], err["version"]) == (7, 1) and "seq 7" in err["message"]
    recorded = await env.sim.results("O1")
    assert recorded[7]["bank_serial"] == "BS00000007" and recorded[7]["conflicts"] == 1
    assert 8 not in recorded
    assert (await env.sim.summary())["orders"]["O1"]["conflicts"] == 1
    code, ack = await env.json("POST", "/api/orders/O1/results", {"results": [result(7)]})
    assert code == 200 and ack["duplicates"] == 1     # the answer lost and sent again: idempotent


BAD_RESULTS = [
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b"\xff\xfe", "body"),
    ({}, "results"),
    ({"results": {}}, "results"),
    ({"results": []}, "results"),
    ({"results": [result(1)], "extra": 1}, "extra"),
    ({"results": [result(1), 5]}, "results[1]"),
    ({"results": [result(1), {k: v for k, v in result(2).items() if k != "seq"}]}, "results[1].seq"),
    ({"results": [result(1), {**result(2), "colour": "red"}]}, "results[1].colour"),
    ({"results": [result(1), result(0)]}, "results[1].seq"),
    ({"results": [result(1), result(31)]}, "results[1].seq"),
    ({"results": [result(1), result("2")]}, "results[1].seq"),
    ({"results": [result(1), result(True)]}, "results[1].seq"),
    ({"results": [result(1), result(2.0)]}, "results[1].seq"),
    ({"results": [result(1), result(2, "SENT")]}, "results[1].status"),
    ({"results": [result(1), result(2, "FAILED", reason_code=None)]}, "results[1].reason_code"),
    ({"results": [result(1), result(2, reason_code="R 01")]}, "results[1].reason_code"),
    ({"results": [result(1), result(2, reason_text=5)]}, "results[1].reason_text"),
    ({"results": [result(1), result(2, reason_text="长" * 257)]}, "results[1].reason_text"),
    ({"results": [result(1), result(2, bank_serial="")]}, "results[1].bank_serial"),
    ({"results": [result(1), result(2, bank_serial="a b")]}, "results[1].bank_serial"),
    ({"results": [result(1), result(2, at="2026-11-05T10:00:00")]}, "results[1].at"),
    ({"results": [result(1), result(2, at="yesterday")]}, "results[1].at"),
    ({"results": [result(1), result(2, at=None)]}, "results[1].at"),
    ({"results": [result(1), {k: v for k, v in result(2).items() if k != "version"}]}, "results[1].version"),
    ({"results": [result(1), result(2, version=0)]}, "results[1].version"),
    ({"results": [result(1), result(2, version="1")]}, "results[1].version"),
    ({"results": [result(1), result(1)]}, "results[1].version"),
]


@pytest.mark.parametrize("body, field", BAD_RESULTS)
@pytest_twisted.ensureDeferred
async def test_malformed_results_are_refused_whole_naming_the_field(env, body, field):
    """Each malformed shape is a 400 naming the field, and not even the valid results before it are recorded."""
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    code, _, data = await env.call("POST", "/api/orders/O1/results", raw=raw)
    assert code == 400
    err = json.loads(data)
    assert err["error"] == "invalid" and err["field"] == field
    assert await env.sim.results("O1") == {}


@pytest_twisted.ensureDeferred
async def test_results_for_an_unknown_order_are_404(env):
    """Results for an order the core never funded are refused with 404."""
    code, err = await env.json("POST", "/api/orders/NOPE/results", {"results": [result(1)]})
    assert code == 404 and "NOPE" in err["message"]


@pytest_twisted.ensureDeferred
async def test_wrong_methods_are_405(env):
    """GET on a POST endpoint and POST on a GET endpoint are 405."""
    assert (await env.call("GET", "/api/orders/O1/results"))[0] == 405
    assert (await env.call("POST", "/api/orders/O1", {}))[0] == 405


# --- order state ------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_reported_state_removes_the_order_from_the_funded_list(env):
    """After DISPATCHED the order is no longer listed; history is kept and an identical repeat only counts."""
    code, ack = await env.json("POST", "/api/orders/O2/state", {"state": "DISPATCHED", "detail": {"batch": "O2-P01"}})
    assert (code, ack) == (200, {"order_no": "O2", "state": "DISPATCHED", "new": True})
    code, ack = await env.json("POST", "/api/orders/O2/state", {"state": "DISPATCHED", "detail": {"batch": "O2-P01"}})
    assert ack["new"] is False
    await env.json("POST", "/api/orders/O3/state", {"state": "INVALID", "detail": "total_amount differs"})
    seen, cursor = [], None
    while True:
        _, page = await env.json("GET", f"/api/orders?state=funded&bank={BANK}" + (f"&after={cursor}" if cursor else ""))
        seen += [o["order_no"] for o in page["orders"]]
        if not (cursor := page["next"]):
            break
    assert seen == ["O4", "O1", "O5"]
    await env.json("POST", "/api/orders/O2/state", {"state": "SETTLED"})
    orders = (await env.sim.summary())["orders"]
    assert [h["state"] for h in orders["O2"]["state_history"]] == ["DISPATCHED", "SETTLED"]
    assert orders["O2"]["state_history"][0]["detail"] == {"batch": "O2-P01"}
    assert orders["O2"]["state_history"][1]["detail"] is None
    assert (orders["O2"]["state"], orders["O2"]["funded"], orders["O2"]["state_repeats"]) == ("SETTLED", False, 1)
    assert (orders["O3"]["state"], orders["O4"]["state"], orders["O4"]["funded"]) == ("INVALID", "FUNDED", True)


@pytest.mark.parametrize("body, field", [
    ({}, "state"),
    ({"state": "PAID"}, "state"),
    ({"state": None}, "state"),
    ({"state": "SETTLED", "why": 1}, "why"),
    (b"{", "body"),
])
@pytest_twisted.ensureDeferred
async def test_malformed_state_is_refused_naming_the_field(env, body, field):
    """A bad state body is a 400 naming the field, and the order stays funded."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, _, data = await env.call("POST", "/api/orders/O1/state", raw=raw)
    assert code == 400 and json.loads(data)["field"] == field
    assert (await env.sim.summary())["orders"]["O1"]["funded"] is True


@pytest_twisted.ensureDeferred
async def test_recorded_states_and_results_survive_a_restart(reactor, tmp_path):
    """A new simulator on the same SQLite file still knows the reported state and results."""
    first = start(reactor, tmp_path)
    await first.json("POST", "/api/orders/O2/state", {"state": "DISPATCHED"})
    await first.json("POST", "/api/orders/O2/results", {"results": [result(9)]})
    await first.sim.close()
    second = start(reactor, tmp_path)
    try:
        _, page = await second.json("GET", f"/api/orders?state=funded&bank={BANK}")
        assert "O2" not in [o["order_no"] for o in page["orders"]]
        assert (await second.sim.results("O2"))[9]["status"] == "PAID"
    finally:
        await second.sim.close()


# --- auth, faults, summary ----------------------------------------------------

@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/orders?state=funded&bank=cnbank-test", None),
    ("GET", "/api/orders/O1", None),
    ("GET", "/api/orders/O1/items", None),
    ("POST", "/api/orders/O1/results", {"results": [result(1)]}),
    ("POST", "/api/orders/O1/state", {"state": "DISPATCHED"}),
    ("GET", "/sim/summary", None),
])
@pytest_twisted.ensureDeferred
async def test_requests_without_the_right_token_are_401_and_change_nothing(env, method, path, body):
    """No token or a wrong one gets 401 with a Bearer challenge; nothing is recorded."""
    for token in (None, "wrong", TOKEN + "x"):
        code, headers, _ = await env.call(method, path, body, token=token)
        assert code == 401
        assert headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="core"']
    assert await env.sim.results("O1") == {}
    assert (await env.sim.summary())["orders"]["O1"]["funded"] is True


@pytest_twisted.ensureDeferred
async def test_fail_every_answers_every_nth_api_request_503_without_acting(reactor, tmp_path):
    """With fail_every=3 the 3rd and 6th API requests are 503 and a refused POST records nothing."""
    e = start(reactor, tmp_path, fail_every=3)
    try:
        codes = [(await e.call("GET", "/api/orders/O1"))[0] for _ in range(2)]
        code, headers, _ = await e.call("POST", "/api/orders/O1/results", {"results": [result(1)]})
        codes.append(code)
        assert headers.getRawHeaders(b"retry-after") == [b"1"]
        assert await e.sim.results("O1") == {}
        for _ in range(3):
            codes.append((await e.call("POST", "/api/orders/O1/results", {"results": [result(1)]}))[0])
        assert codes == [200, 200, 503, 200, 200, 503]
        assert sorted(await e.sim.results("O1")) == [1]
        summary = await e.sim.summary()
        assert summary["requests"] == {"api": 6, "injected_503": 2}
    finally:
        await e.sim.close()


@pytest_twisted.ensureDeferred
async def test_delay_answers_late_but_records_first(reactor, tmp_path):
    """With delay_s the answer comes no sooner than the delay, and the POST was recorded before it."""
    e = start(reactor, tmp_path, delay_s=0.3)
    try:
        before = reactor.seconds()
        posting = e.call("POST", "/api/orders/O1/results", {"results": [result(4)]})
        code, _, _ = await posting
        assert code == 200
        assert reactor.seconds() - before >= 0.3
        assert sorted(await e.sim.results("O1")) == [4]
    finally:
        await e.sim.close()


@pytest_twisted.ensureDeferred
async def test_sim_summary_over_http_is_the_in_process_summary(env):
    """GET /sim/summary returns the same JSON as CoreSimulator.summary(), and is not counted as API traffic."""
    await env.json("POST", "/api/orders/O1/results", {"results": [result(1), result(2, "FAILED")]})
    code, over_http = await env.json("GET", "/sim/summary")
    assert code == 200
    in_process = await env.sim.summary()
    assert over_http == json.loads(json.dumps(in_process))
    assert in_process["requests"]["api"] == 1
    o1 = in_process["orders"]["O1"]
    assert o1["intended"] == datagen.order_profile(BY_NO["O1"])["outcomes"]
    assert (o1["total_amount"], o1["item_amount"]) == (datagen.order_totals(BY_NO["O1"])[1],) * 2


# --- a million items ------------------------------------------------------------

def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class SlowLines(Lines):
    """Counts lines, samples RSS, and stops reading for a moment every few MB to force back-pressure."""

    def __init__(self, done: Deferred, reactor: Any) -> None:
        super().__init__(done, keep=False)
        self.reactor = reactor
        self.rss_max = 0.0
        self.next_pause = 0

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.bytes >= self.next_pause:
            self.next_pause += 8 * 1024 * 1024
            self.rss_max = max(self.rss_max, _rss_mib())
            self.transport.pauseProducing()
            self.reactor.callLater(0.05, self.transport.resumeProducing)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_million_items_stream_in_bounded_memory(reactor, tmp_path, capsys):
    """1,000,000 items stream completely, in order, adding up to the header, while RSS grows < 60 MiB."""
    big = spec("BIG1", "2026-11-05T09:00:00+08:00", 1_000_000)
    sim = CoreSimulator(reactor, [big], str(tmp_path / "core.db"), TOKEN, chunk_items=500)
    port = sim.listen()
    env = Env(sim, f"http://127.0.0.1:{port.getHost().port}",
              Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)), reactor)
    try:
        t0 = time.perf_counter()
        _, header = await env.json("GET", "/api/orders/BIG1")
        t_header = time.perf_counter() - t0
        rss_before = _rss_mib()
        t0 = time.perf_counter()
        _, lines = await stream(env, "BIG1", SlowLines, reactor=reactor)
        t_stream = time.perf_counter() - t0
        assert lines.count == header["total_count"] == 1_000_000
        assert lines.amount == header["total_amount"]
        assert lines.in_order
        growth = lines.rss_max - rss_before
        with capsys.disabled():
            print(f"\n1M items: header (one pass) {t_header:.1f} s; stream {t_stream:.1f} s, "
                  f"{lines.bytes / 2**20:.0f} MiB; RSS {rss_before:.0f} -> max {lines.rss_max:.0f} MiB")
        assert growth < 60
    finally:
        await sim.close()


# --- the command line -------------------------------------------------------------

def test_core_sim_refuses_to_start_naming_every_fault(tmp_path, capsys):
    """core-sim with a bad seed and an empty token file exits 2, naming the file and key of each fault."""
    from simulators.core.main import main

    seed = tmp_path / "orders.toml"
    seed.write_text('[[order]]\norder_no = "A1"\ncolour = "red"\n', encoding="utf-8")
    token = tmp_path / "token"
    token.write_text("\n", encoding="utf-8")
    code = main(["--seed", str(seed), "--db", str(tmp_path / "core.db"), "--token-file", str(token)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{seed}: order[0] (A1): unknown key 'colour'" in err
    assert f"{seed}: order[0] (A1): missing key 'count'" in err
    assert f"{token}: empty token file" in err
    assert not (tmp_path / "core.db").exists()
