"""The core link's settings and hostile-core behaviour that is not the client's alone (issue 8).

Config: plain http to a host other than loopback is refused unless said so explicitly.
"""

from __future__ import annotations

import pytest

from gateway import config as configmod
from tests.test_config import _edit, _has, inst  # noqa: F401  (the installation fixture)


@pytest.mark.parametrize("url", ["http://core.example.cn:8080/", "http://10.1.2.3/api"])
def test_plain_http_to_another_host_is_refused_naming_file_and_key(inst, url) -> None:  # noqa: F811
    """The token and every ID number of an order would cross the network in clear: refused at load,
    with the file and core.base_url named and the setting that would accept it."""
    _edit(inst.gateway, 'base_url = "http://127.0.0.1:8081/"', f'base_url = "{url}"')
    errors = inst.errors()
    assert _has(errors, inst.gateway, "core.base_url", "plain http", "allow_plain_http")


def test_plain_http_accepted_when_configuration_says_so(inst) -> None:  # noqa: F811
    """core.allow_plain_http = true accepts it; https and loopback http need no such setting."""
    _edit(inst.gateway, 'base_url = "http://127.0.0.1:8081/"',
          'base_url = "http://core.example.cn/"\nallow_plain_http = true')
    assert configmod.load(inst.gateway).core.allow_plain_http is True
    _edit(inst.gateway, 'base_url = "http://core.example.cn/"\nallow_plain_http = true',
          'base_url = "https://core.example.cn/"')
    assert configmod.load(inst.gateway).core.base_url == "https://core.example.cn"
    _edit(inst.gateway, 'base_url = "https://core.example.cn/"', 'base_url = "http://localhost:81/"')
    assert configmod.load(inst.gateway).core.call_deadline_s == 60.0


# --- the flow against a hostile core (in process, loopback simulators) -------------------

import json  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

import pytest_twisted  # noqa: E402
from sqlalchemy import exc as sa_exc  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.logger import formatEvent, globalLogPublisher  # noqa: E402

from gateway import flow as flowmod  # noqa: E402
from tests.support import in_process, spec  # noqa: E402
from tests.test_validation import ID_A, ID_B, ID_C  # noqa: E402

ACCT = "6222000011112222"


class _Logs:
    """Every log event of the process, formatted, while the context is open."""

    def __enter__(self):
        self.lines: list[str] = []
        self._obs = lambda e: self.lines.append(str(formatEvent(e)) + str(e.get("log_failure", "")))
        globalLogPublisher.addObserver(self._obs)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self._obs)

    def text(self) -> str:
        return "\n".join(self.lines)


def _item(seq, name="张三", idn=ID_B, acct="6222000011112222", amount=100) -> dict:
    return {"seq": seq, "name": name, "id_number": idn, "account_no": acct,
            "account_bank": "示范银行", "amount": amount, "remark": ""}


async def _funded(env, order_no: str):
    """Poll until the order is known (FUNDED/LOADING/...), with its items streamed by the test."""
    async def known():
        return await env.query("select state from orders where order_no=:o", o=order_no)
    await env.until(known, what=f"order {order_no} seen")


def _feed_with(env, body: bytes, chunk: int = 65536, seen_modes: list | None = None):
    """Make the core's item stream for every order deliver *body* in chunks of *chunk*."""
    async def stream_items(order_no, consume, chunk_size=1 << 20):
        sent = 0
        for i in range(0, len(body), chunk):
            await defer.maybeDeferred(consume, body[i:i + chunk])
            sent += len(body[i:i + chunk])
            if seen_modes is not None:
                path = os.path.join(env.cfg.work_dir, f"{order_no}.items.ndjson")
                seen_modes.append(stat.S_IMODE(os.stat(path).st_mode))
        return sent
    env.flow.core.stream_items = stream_items


async def _order(env, order_no):
    rows = await env.query("select state, detail from orders where order_no=:o", o=order_no)
    return rows[0]


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_an_overlong_item_line_makes_the_order_invalid_with_one_alarm(reactor, tmp_path):
    """A 4 MiB item line (the cap is 64 KiB) stops the stream at the cap: the order is INVALID
    with a reason naming line 2, one order-invalid alarm, a journal entry, no items kept, and
    the partial work file removed; while it existed it was 0600."""
    s = spec("LONG0001", 3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        modes: list = []
        consumed: list = []
        body = json.dumps(_item(1)).encode() + b"\n" + b'{"name":"' + b"x" * (4 << 20)
        _feed_with(env, body, seen_modes=modes)
        real_feed = flowmod._Loader.feed

        def feed(self, conn, chunk):
            consumed.append(len(chunk))
            return real_feed(self, conn, chunk)
        flowmod._Loader.feed = feed
        try:
            await env.until(lambda: env.query("select 1 from orders where order_no='LONG0001' "
                                              "and state='INVALID'"), what="INVALID")
        finally:
            flowmod._Loader.feed = real_feed
        o = await _order(env, "LONG0001")
        reasons = json.loads(o["detail"])["reasons"]
        assert len(reasons) == 1 and reasons[0].startswith("line 2: longer than 65536 bytes")
        assert sum(consumed) <= 65536 * 3     # stopped at the cap, not read to the end
        alarms = await env.query("select kind, count, order_no from alarms")
        assert [(a["kind"], a["count"], a["order_no"]) for a in alarms] == [("order-invalid", 1, "LONG0001")]
        assert not await env.query("select 1 from items where order_no='LONG0001'")
        entries = await env.query("select verified from journal where tx_code='GET items'")
        assert len(entries) == 1 and entries[0]["verified"].startswith("failed: line 2")
        assert not os.path.exists(os.path.join(env.cfg.work_dir, "LONG0001.items.ndjson"))
        assert modes and set(modes) == {0o600}
        for _ in range(3):
            await env.flow.tick()
        assert (await env.query("select count from alarms"))[0]["count"] == 1
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_more_lines_than_total_count_stops_the_stream(reactor, tmp_path):
    """An item stream that goes on past the header's total_count (3) is not read further: the
    order is INVALID naming line 4, whatever follows."""
    s = spec("MANY0001", 3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        body = b"".join(json.dumps(_item(n)).encode() + b"\n" for n in range(1, 2000))
        _feed_with(env, body, chunk=4096)
        await env.until(lambda: env.query("select 1 from orders where order_no='MANY0001' "
                                          "and state='INVALID'"), what="INVALID")
        reasons = json.loads((await _order(env, "MANY0001"))["detail"])["reasons"]
        assert reasons == ["line 4: more lines than the header's total_count 3; "
                           "the item stream was not read further"]
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_nul_or_control_character_in_a_name_makes_the_order_invalid(reactor, tmp_path, db_url):
    """A NUL in one name (PostgreSQL cannot store it) and U+0001 in another (XML 1.0 cannot carry
    it): the order goes INVALID naming the seq, the field and the character, instead of staying
    LOADING; no log line holds a full ID or account number."""
    s = spec("CTRL0001", 3)
    env = await in_process(reactor, tmp_path, [s], db_url=db_url)
    try:
        items = [_item(1, idn=ID_A, acct="62220000111122223"), _item(2, name="张\u0000三", idn=ID_B),
                 _item(3, name="李\u0001四", idn=ID_C)]
        _feed_with(env, b"".join(json.dumps(i).encode() + b"\n" for i in items))
        with _Logs() as logs:
            await env.until(lambda: env.query("select 1 from orders where order_no='CTRL0001' "
                                              "and state='INVALID'"), what="INVALID", timeout=20)
        reasons = json.loads((await _order(env, "CTRL0001"))["detail"])["reasons"]
        assert any(r.startswith("seq 2: name holds U+0000") for r in reasons), reasons
        assert any(r.startswith("seq 3: name holds U+0001") for r in reasons), reasons
        for secret in (ID_A, ID_B, ID_C, "62220000111122223"):
            assert secret not in logs.text()
    finally:
        await env.close()


def test_error_text_of_a_database_error_holds_no_personal_data() -> None:
    """A database error quotes its statement's parameters: error_text keeps the driver's message
    only and masks every long digit run, so no ID or account number reaches a log line."""
    e = sa_exc.DataError("INSERT INTO items ...", [("CTRL", 2, "张三", ID_B, "622200001111", "b", 5, "", "P")],
                         ValueError(f"A string literal cannot contain NUL (0x00) characters; near {ID_A}"))
    assert ID_B in str(e)     # what log.failure would have printed
    text = flowmod.error_text(e)
    assert "NUL" in text and "DataError" in text
    assert ID_B not in text and ID_A not in text and "622200001111" not in text


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_failed_step_is_logged_without_personal_data(reactor, tmp_path):
    """_guard logs a step's unexpected database error with its text masked (no full ID or
    account number), where log.failure printed the statement's parameters."""
    env = await in_process(reactor, tmp_path, [])
    try:
        params = [(ID_B, ACCT)]

        async def boom():
            raise sa_exc.IntegrityError("INSERT INTO items ...", params, ValueError("duplicate key"))
        with _Logs() as logs:
            await env.flow._guard("load order X", boom())
        assert "duplicate key" in logs.text()
        assert ID_B not in logs.text() and ACCT not in logs.text()
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_bank_steps_go_on_while_the_core_poll_hangs(reactor, tmp_path):
    """Once an order is loaded the core stops answering (the poll never returns): the bank's own
    steps still run tick after tick and the batch reaches DONE; each tick returns promptly."""
    s = spec("SLOW0001", 5)
    env = await in_process(reactor, tmp_path, [s])
    hang = defer.Deferred()
    try:
        await env.until(lambda: env.query("select 1 from orders where state='LOADED'"), what="LOADED")
        polls = []

        def list_funded(bank_id):
            polls.append(bank_id)
            return hang
        env.flow.core.list_funded = list_funded
        env.flow.wake_poll = True
        for _ in range(300):
            t = defer.ensureDeferred(env.flow.tick())
            timer = reactor.callLater(5, t.cancel)
            await t
            timer.cancel()
            if await env.query("select 1 from batches where state='DONE'"):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert await env.query("select 1 from batches where state='DONE'")
        assert len(polls) == 1     # the hanging poll is not started again on top of itself
        assert not env.flow.core_idle().called
    finally:
        hang.errback(flowmod.CoreError("test over"))
        await env.close()


class _StubCore:
    """What _CoreService needs of the client: watch() and closing; the test tells outcomes."""

    def __init__(self):
        self.closing = False
        self.heard = []

    def watch(self, fn):
        self.heard.append(fn)

    def tell(self, problem):
        for fn in self.heard:
            fn(problem)

    def close(self):
        return defer.succeed(None)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_core_unreachable_is_one_episode_cleared_by_the_next_good_answer(reactor, tmp_path):
    """Three failed core calls make one open core-unreachable alarm (count 3), a good answer
    clears it, a later failure opens a second episode; nothing is raised while stopping."""
    from gateway.service import _CoreService
    env = await in_process(reactor, tmp_path, [])
    core = _StubCore()
    svc = _CoreService(core, env.db, reactor)
    svc.startService()
    try:
        async def settle():
            await task.deferLater(reactor, 0.3, lambda: None)
            return await env.query("select kind, count, cleared_at from alarms order by id")
        for _ in range(3):
            core.tell(flowmod.CoreError("GET /api/orders failed 6 times, last: HTTP 503"))
            await task.deferLater(reactor, 0.05, lambda: None)
        rows = await settle()
        assert [(r["kind"], r["count"], r["cleared_at"]) for r in rows] == [("core-unreachable", 3, None)]
        core.tell(None)
        core.tell(None)
        rows = await settle()
        assert len(rows) == 1 and rows[0]["cleared_at"] is not None
        core.tell(flowmod.CoreError("connection refused"))
        rows = await settle()
        assert len(rows) == 2 and rows[1]["cleared_at"] is None
        core.closing = True
        core.tell(flowmod.CoreError("the daemon is stopping"))
        assert [r["count"] for r in await settle()] == [3, 1]
    finally:
        svc.stopService()
        await env.close()


# --- result versions (core-api.md) ---------------------------------------------------------


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_results_post_whose_answer_is_lost_is_sent_again_with_the_same_versions(
        reactor, tmp_path, db_url):
    """The core records the first results POST but its answer is lost: the gateway sends the
    same (seq, version, content) again, the core counts repeats and no conflict, and every item
    ends with version 1 acknowledged (kept in the database)."""
    s = spec("LOSTPOST", 6, failures={"R002": 0.3})
    env = await in_process(reactor, tmp_path, [s], db_url=db_url)
    try:
        # The HTTP client takes each chunk already serialised (ICoreRawResults).
        real = env.flow.core.push_results_json
        sent: list = []

        async def push_results_json(order_no, results_json):
            sent.append(json.loads(results_json))
            ex = await real(order_no, results_json)
            if len(sent) == 1:
                raise flowmod.CoreError("answer lost")
            return ex
        env.flow.core.push_results_json = push_results_json
        # every item's result acknowledged (not merely DISPATCHED pushed before the bank answered:
        # on a loaded machine that came first and no result had been pushed yet)
        await env.until(lambda: env.query("select 1 from orders where results_pending=0 and "
                                          "state in ('SETTLED','DISPATCHED') and core_state_pushed is not null "
                                          "and (select count(*) from items where pushed_version is not null) = 6"),
                        what="results pushed")
        assert len(sent) >= 2 and sent[1] == sent[0]
        assert {r["version"] for r in sent[0]} == {1}
        core = (await env.sims.core.summary())["orders"]["LOSTPOST"]
        assert core["conflicts"] == 0 and core["duplicates"] == len(sent[0])
        rows = await env.query("select result_version, pushed_version from items")
        assert {(r["result_version"], r["pushed_version"]) for r in rows} == {(1, 1)}
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_409_from_the_core_is_journaled_and_alarmed_naming_the_seq(reactor, tmp_path):
    """A database restored from before a push gives a result the version the core already holds
    with other content: the core answers 409, the gateway journals it, raises one alarm naming
    the seq, and does not mark the item pushed."""
    s = spec("CONFLICT", 3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        await env.until(lambda: env.query("select 1 from orders where results_pending=0 and "
                                          "core_state_pushed='SETTLED'"), what="pushed")
        await env.execute("update items set bank_serial='OTHER', version_sig=NULL, result_version=NULL, "
                          "pushed_version=NULL where seq=2")
        await env.execute("update orders set results_pending=1")
        await env.until(lambda: env.query("select 1 from alarms where kind='core-contract'"), what="alarm")
        for _ in range(5):
            await env.flow.tick()
        alarms = await env.query("select message, count, order_no from alarms where kind='core-contract'")
        assert len(alarms) == 1 and alarms[0]["order_no"] == "CONFLICT"
        assert "409" in alarms[0]["message"] and '"seq": 2' in alarms[0]["message"]
        assert await env.query("select 1 from journal where verified like 'failed: HTTP 409%'")
        item = (await env.query("select result_version, pushed_version from items where seq=2"))[0]
        assert item == {"result_version": 1, "pushed_version": None}
        assert (await env.query("select results_pending from orders"))[0]["results_pending"] == 1
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_real_gatewayd_stops_promptly_on_sigterm_while_the_core_drips(reactor, tmp_path):
    """The real gatewayd, its poll held by a core that drips one byte a second (content-length
    a million): SIGTERM ends the process within 15 s (measured 4 s; it ran on for 60 s and more
    before the in-flight core call was cancelled on stop)."""
    import signal
    import time

    from twisted.web import resource, server

    from simulators import harness

    seen: list = []

    class Drip(resource.Resource):
        isLeaf = True

        def render(self, request):  # noqa: ANN001
            seen.append(request.uri)
            request.setHeader(b"content-length", b"1000000")

            def drip():
                if not request.finished and not request._disconnected:  # noqa: SLF001
                    request.write(b" ")
                    reactor.callLater(1, drip)
            drip()
            return server.NOT_DONE_YET
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, [], token="test-token")
    port = reactor.listenTCP(0, server.Site(Drip()), interface="127.0.0.1")
    try:
        ports = harness.Ports(port.getHost().port, sims.ports.bank_tcp, sims.ports.bank_sftp)
        cfg = harness.write_config(p, keys, ports, token="test-token", poll_s=0.5)
        harness.migrate(cfg)
        daemon = harness.Daemon(cfg, p.log)
        daemon.start()
        try:
            deadline = time.monotonic() + 30
            while not seen and time.monotonic() < deadline and daemon.running():
                await task.deferLater(reactor, 0.1, lambda: None)
            assert seen, p.log.read_text()[-2000:]
            await task.deferLater(reactor, 2, lambda: None)
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            while daemon.running() and time.monotonic() - started < 15:
                await task.deferLater(reactor, 0.1, lambda: None)
            took = time.monotonic() - started
            assert not daemon.running(), f"still running {took:.1f}s after SIGTERM"
            assert daemon.proc.returncode == 0, p.log.read_text()[-2000:]
        finally:
            if daemon.running():
                daemon.proc.kill()
                daemon.proc.wait()
    finally:
        await port.stopListening()
        await sims.stop()
