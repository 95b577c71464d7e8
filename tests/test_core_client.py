"""Tests of adapters/core_http.py against a small twisted.web server on 127.0.0.1 (port 0).

The server here is a stand-in written for each test (not the core simulator):
it plays one behaviour of the core (slow, failing, paging, streaming) and
records what the client sent.
"""

from __future__ import annotations

import hashlib
import json
import random
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from twisted.internet import defer, tcp
from twisted.internet.task import deferLater
from twisted.web import resource, server
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from adapters import core_http
from adapters.core_http import CoreClient, CoreContractError, CoreError

pytestmark = pytest.mark.loopback

TOKEN = "tok-5e1f0c"


class Core(resource.Resource):
    """Answers every request with `handler(request)` and records (method, path, headers, body)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen: list[dict] = []
        self.handler = lambda req: b"{}"
        self.requests: list[server.Request] = []

    def render(self, request):  # noqa: ANN001
        self.requests.append(request)
        self.seen.append({
            "method": request.method.decode(), "uri": request.uri.decode(),
            "auth": request.getHeader(b"authorization"), "ctype": request.getHeader(b"content-type"),
            "body": request.content.read(),
        })
        return self.handler(request)


def _json(request, obj, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(obj).encode()


@pytest.fixture
def core(reactor):
    """A running stand-in core, and a factory for clients pointed at it (closed after the test)."""
    res = Core()
    site = server.Site(res)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    res.base = f"http://127.0.0.1:{port.getHost().port}"
    clients: list[CoreClient] = []

    def client(**kw) -> CoreClient:
        kw.setdefault("timeout_s", 5)
        kw.setdefault("max_delay_s", 0.01)    # retries wait at most 15 ms in these tests
        kw.setdefault("rng", random.Random(7))
        c = CoreClient(reactor, res.base + "/", TOKEN, **kw)
        clients.append(c)
        return c
    res.client = client
    yield res
    for r in res.requests:
        if not r.finished and r.channel is not None and r.channel.transport is not None:
            r.channel.transport.abortConnection()
    for c in clients:
        pytest_twisted.blockon(c.close())
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def _bounded(reactor, coro, seconds: float = 10) -> defer.Deferred:
    """The coroutine as a Deferred that fails with TimeoutError after *seconds* instead of hanging the
    suite if the client hangs (even if the client swallows the cancellation)."""
    inner = defer.ensureDeferred(coro)
    outer: defer.Deferred = defer.Deferred()

    def expire() -> None:
        if not outer.called:
            outer.errback(defer.TimeoutError(f"the client did not finish within {seconds}s"))
            inner.cancel()
    timer = reactor.callLater(seconds, expire)

    def settle(result):
        if timer.active():
            timer.cancel()
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Failure):
            return None    # already reported as a timeout
        return None
    inner.addBoth(settle)
    return outer


# --- requests, retries, contract faults ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bearer_token_and_json(reactor, core) -> None:
    """Every call carries `Authorization: Bearer <token>`; a POST sends compact UTF-8 JSON."""
    core.handler = lambda req: _json(req, {"order_no": "FF1", "total_amount": 100})
    c = core.client()
    obj, ex = await c.get_json("/api/orders/FF1")
    assert obj == {"order_no": "FF1", "total_amount": 100}
    assert (ex.method, ex.url, ex.status) == ("GET", core.base + "/api/orders/FF1", 200)
    await c.push_state("FF/1 x", "SETTLED", {"note": "全部成功"})
    get, post = core.seen
    assert get["auth"] == f"Bearer {TOKEN}".encode() and post["auth"] == get["auth"]
    assert post["method"] == "POST" and post["uri"] == "/api/orders/FF%2F1%20x/state"
    assert post["ctype"] == b"application/json"
    assert json.loads(post["body"].decode("utf-8")) == {"state": "SETTLED", "detail": {"note": "全部成功"}}


@pytest_twisted.ensureDeferred
async def test_5xx_is_retried_until_it_succeeds(reactor, core) -> None:
    """Two 503s and then a 200: the client tries three times and returns the 200's body."""
    answers = iter([503, 502, 200])

    def handler(req):
        code = next(answers)
        return _json(req, {"ok": code == 200}, code)
    core.handler = handler
    obj, ex = await _bounded(reactor, core.client().get_json("/api/orders/FF1"))
    assert obj == {"ok": True} and ex.status == 200
    assert len(core.seen) == 3


@pytest_twisted.ensureDeferred
async def test_post_is_retried_with_the_same_body(reactor, core) -> None:
    """A results push answered 500 is sent again, byte for byte (the core deduplicates it)."""
    answers = iter([500, 200])
    core.handler = lambda req: _json(req, {}, next(answers))
    await _bounded(reactor, core.client().push_results("FF1", [{"seq": 1, "status": "PAID"}]))
    assert len(core.seen) == 2
    assert core.seen[0]["body"] == core.seen[1]["body"]
    assert json.loads(core.seen[0]["body"]) == {"results": [{"seq": 1, "status": "PAID"}]}


@pytest_twisted.ensureDeferred
async def test_5xx_every_time_gives_up_after_the_attempts(reactor, core) -> None:
    """A core that always answers 500 is tried `attempts` times, then CoreError (not a contract fault)."""
    core.handler = lambda req: _json(req, {}, 500)
    with pytest.raises(CoreError) as ei:
        await _bounded(reactor, core.client(attempts=4).get_json("/api/orders/FF1"))
    assert not isinstance(ei.value, CoreContractError)
    assert "4 times" in str(ei.value) and "HTTP 500" in str(ei.value)
    assert len(core.seen) == 4


@pytest.mark.parametrize("code", [400, 401, 404, 409, 422])
@pytest_twisted.ensureDeferred
async def test_4xx_is_a_contract_fault_and_not_retried(reactor, core, code) -> None:
    """A 4xx raises CoreContractError at once, with status and body, after one attempt."""
    core.handler = lambda req: _json(req, {"error": "unknown order"}, code)
    with pytest.raises(CoreContractError) as ei:
        await _bounded(reactor, core.client().get_json("/api/orders/NOPE"))
    assert ei.value.status == code
    assert b"unknown order" in ei.value.body
    assert len(core.seen) == 1


@pytest_twisted.ensureDeferred
async def test_non_json_answer_is_a_contract_fault(reactor, core) -> None:
    """A 200 that is not JSON is a contract fault, not retried."""
    core.handler = lambda req: b"<html>gateway timeout page</html>"
    with pytest.raises(CoreContractError):
        await _bounded(reactor, core.client().get_json("/api/orders/FF1"))
    assert len(core.seen) == 1


@pytest_twisted.ensureDeferred
async def test_dropped_connection_is_retried(reactor, core) -> None:
    """A connection dropped before the answer is retried like a 5xx."""
    calls = []

    def handler(req):
        calls.append(1)
        if len(calls) == 1:
            req.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        return _json(req, {"ok": True})
    core.handler = handler
    obj, _ = await _bounded(reactor, core.client().get_json("/api/orders/FF1"))
    assert obj == {"ok": True} and len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_core_that_stalls_mid_answer_times_out(reactor, core) -> None:
    """A core that sends headers and part of a body, then nothing, is given up on after the timeout and
    retried (every read has an idle timeout), rather than hanging the poll for ever."""
    def stall(req):
        req.setHeader(b"content-length", b"1000")
        req.write(b'{"orders": [')
        return server.NOT_DONE_YET
    core.handler = stall
    c = core.client(timeout_s=0.2, call_deadline_s=5, attempts=2)
    with pytest.raises(CoreError) as ei:
        await _bounded(reactor, c.get_json("/api/orders?state=funded"), 10)
    assert "stalled" in str(ei.value)
    assert len(core.seen) == 2


@pytest.mark.parametrize("stage", ["backing off", "in flight"])
@pytest_twisted.ensureDeferred
async def test_close_stops_retrying(reactor, core, stage) -> None:
    """close() (the daemon stopping) ends a call that is waiting to retry at once, and a call in flight
    that then fails is not retried: both fail with CoreError after one attempt."""
    held: list = []

    def handler(req):
        if stage == "in flight":
            held.append(req)
            return server.NOT_DONE_YET
        return _json(req, {}, 503)
    core.handler = handler
    c = core.client(max_delay_s=30)
    d = _bounded(reactor, c.get_json("/api/orders/FF1"), 10)
    while not core.seen:
        await deferLater(reactor, 0.01, lambda: None)
    for _ in range(5):
        await deferLater(reactor, 0, lambda: None)
    assert not d.called
    await c.close()
    if stage == "in flight":
        held[0].setResponseCode(503)
        held[0].finish()
    with pytest.raises(CoreError) as ei:
        await d
    assert not isinstance(ei.value, CoreContractError)
    assert len(core.seen) == 1


class _Drip:
    """Sends *body* one byte every *every* seconds (never idle long enough for an idle timer)."""

    def __init__(self, reactor, req, body: bytes, every: float):
        self.reactor, self.req, self.body, self.every, self.sent = reactor, req, body, every, 0
        self.call = reactor.callLater(0, self.tick)

    def tick(self):
        if self.req.finished or self.req.channel is None or self.req._disconnected:
            return
        if self.sent < len(self.body):
            self.req.write(self.body[self.sent:self.sent + 1])
            self.sent += 1
            self.call = self.reactor.callLater(self.every, self.tick)
        else:
            self.req.finish()

    def stop(self):
        if self.call.active():
            self.call.cancel()


@pytest_twisted.ensureDeferred
async def test_a_dripping_core_is_given_up_at_the_call_deadline(reactor, core) -> None:
    """A core that sends one byte every 20 ms (so the 0.2 s idle timer never fires) is given up on
    at the overall call deadline of each attempt, not held open for as long as it drips."""
    drips: list[_Drip] = []

    def handler(req):
        req.setHeader(b"content-length", b"100000")
        drips.append(_Drip(reactor, req, b"x" * 100000, 0.02))
        return server.NOT_DONE_YET
    core.handler = handler
    c = core.client(timeout_s=0.2, call_deadline_s=0.5, attempts=2)
    started = reactor.seconds()
    try:
        with pytest.raises(CoreError) as ei:
            await _bounded(reactor, c.get_json("/api/orders/FF1"), 10)
    finally:
        for d in drips:
            d.stop()
    assert "call deadline of 0.5s" in str(ei.value)
    assert len(core.seen) == 2 and reactor.seconds() - started < 3


@pytest_twisted.ensureDeferred
async def test_a_dripping_item_stream_is_stopped_by_the_minimum_rate(reactor, core) -> None:
    """An item stream dripping one byte every 20 ms (50 bytes/s, below the 1000 bytes/s minimum)
    fails once a 0.3 s window brings too little, naming the rate."""
    drips: list[_Drip] = []

    def handler(req):
        drips.append(_Drip(reactor, req, b'{"seq":1}\n' * 10000, 0.02))
        return server.NOT_DONE_YET
    core.handler = handler
    c = core.client(timeout_s=0.2, call_deadline_s=5, stream_window_s=0.3, stream_min_bytes_per_s=1000)
    try:
        with pytest.raises(CoreError) as ei:
            await _bounded(reactor, c.stream_items("FF1", lambda d: None, chunk=1024), 10)
    finally:
        for d in drips:
            d.stop()
    assert "too slow" in str(ei.value) and "1000 bytes/s" in str(ei.value)


@pytest.mark.parametrize("what", ["call", "stream"])
@pytest_twisted.ensureDeferred
async def test_close_cancels_a_request_in_flight(reactor, core, what) -> None:
    """close() (the daemon stopping) ends a request the core never answers, or an item stream in the
    middle, at once with CoreError, instead of waiting for the 30 s timeouts."""
    def handler(req):
        if what == "stream":
            req.write(b'{"seq":1}\n')
        return server.NOT_DONE_YET
    core.handler = handler
    c = core.client(timeout_s=30, call_deadline_s=30)
    call = (c.get_json("/api/orders/FF1") if what == "call"
            else c.stream_items("FF1", lambda d: None, chunk=1 << 20))
    d = _bounded(reactor, call, 5)
    while not core.seen:
        await deferLater(reactor, 0.01, lambda: None)
    await deferLater(reactor, 0.05, lambda: None)
    assert not d.called
    started = reactor.seconds()
    await c.close()
    with pytest.raises(CoreError):
        await d
    assert reactor.seconds() - started < 1 and len(core.seen) == 1


@pytest_twisted.ensureDeferred
async def test_watchers_hear_each_call_outcome(reactor, core) -> None:
    """A listener hears a CoreError when a call fails after its retries (503) and None when a later
    call is answered; a contract fault (4xx) is not reported as the core being unreachable."""
    heard: list = []
    answers = iter([503, 503, 200, 404])
    core.handler = lambda req: _json(req, {}, next(answers))
    c = core.client(attempts=2)
    c.watch(heard.append)
    with pytest.raises(CoreError):
        await _bounded(reactor, c.get_json("/api/orders/FF1"))
    await _bounded(reactor, c.get_json("/api/orders/FF1"))
    with pytest.raises(CoreContractError):
        await _bounded(reactor, c.get_json("/api/orders/FF1"))
    assert [type(h) for h in heard] == [CoreError, type(None)]


@pytest_twisted.ensureDeferred
async def test_each_attempt_is_timed_by_endpoint_with_its_outcome(reactor, core) -> None:
    """What feeds gateway_core_request_*: every attempt (each retry too) is timed under its
    endpoint with the order number left out, a 2xx as ok, a 503 or 409 as an error coded by its
    status, a core that cannot be reached as connect_failed; the item stream is timed whole."""
    import socket

    from adapters.interface import RequestTiming
    seen: list = []
    answers = iter([503, 200, 409])
    core.handler = lambda req: _json(req, {"orders": []}, next(answers))
    c = core.client(timing=RequestTiming(lambda *a: seen.append(a)))
    await _bounded(reactor, c.list_funded("cnbank"))
    with pytest.raises(CoreContractError):
        await _bounded(reactor, c.push_state("FS0001", "DISPATCHED", {}))
    core.handler = lambda req: b'{"seq": 1}\n'
    await _bounded(reactor, c.stream_items("FS0001", lambda chunk: defer.succeed(None)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    gone = CoreClient(reactor, f"http://127.0.0.1:{closed}", TOKEN, attempts=1,
                      timing=RequestTiming(lambda *a: seen.append(a)))
    with pytest.raises(CoreError):
        await _bounded(reactor, gone.post_json("/api/orders/FS0002/results", {"results": []}))
    await gone.close()
    assert [(endpoint, outcome, code) for endpoint, _, outcome, code in seen] == [
        ("GET /api/orders", "error", "503"), ("GET /api/orders", "ok", ""),
        ("POST /api/orders/{order_no}/state", "error", "409"),
        ("GET /api/orders/{order_no}/items", "ok", ""),
        ("POST /api/orders/{order_no}/results", "error", "connect_failed")]
    assert all(seconds >= 0 for _, seconds, _, _ in seen)


# --- paging -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_funded_follows_next_cursors(reactor, core) -> None:
    """Pages are fetched with `after` = the previous page's `next` until `next` is null; the orders
    come back in order with one exchange per page."""
    pages = {None: ([1, 2], "c2"), "c2": ([3], "c3"), "c3": ([4, 5], None)}

    def handler(req):
        q = parse_qs(urlsplit(req.uri.decode()).query)
        after = q.get("after", [None])[0]
        orders, nxt = pages[after]
        return _json(req, {"orders": [{"order_no": f"FF{n}"} for n in orders], "next": nxt})
    core.handler = handler
    orders, exchanges = await _bounded(reactor, core.client().list_funded("demo-bank"))
    assert [o["order_no"] for o in orders] == ["FF1", "FF2", "FF3", "FF4", "FF5"]
    assert len(exchanges) == 3
    qs = [parse_qs(urlsplit(s["uri"]).query) for s in core.seen]
    assert [q.get("after") for q in qs] == [None, ["c2"], ["c3"]]
    assert all(q["state"] == ["funded"] and q["bank"] == ["demo-bank"] for q in qs)
    assert all(urlsplit(s["uri"]).path == "/api/orders" for s in core.seen)


@pytest_twisted.ensureDeferred
async def test_list_funded_refuses_a_malformed_page(reactor, core) -> None:
    """A page without an `orders` list is a contract fault."""
    core.handler = lambda req: _json(req, {"items": []})
    with pytest.raises(CoreContractError):
        await _bounded(reactor, core.client().list_funded("demo-bank"))


@pytest_twisted.ensureDeferred
async def test_list_funded_refuses_a_cursor_that_does_not_move(reactor, core) -> None:
    """A core that hands back the same cursor again would keep the poll looping for ever: it is a
    contract fault."""
    core.handler = lambda req: _json(req, {"orders": [{"order_no": "FF1"}], "next": "same"})
    with pytest.raises(CoreContractError):
        await _bounded(reactor, core.client().list_funded("demo-bank"))
    assert len(core.seen) <= 3


# --- streaming items --------------------------------------------------------------


@implementer(IPushProducer)
class Body:
    """Writes `total` bytes of NDJSON-like lines into a request as fast as the transport takes them."""

    def __init__(self, request, total: int, piece: int = 64 * 1024):
        self.request, self.total, self.piece = request, total, piece
        self.sent = 0
        self.paused = False
        self.stopped = False
        self.was_paused: defer.Deferred = defer.Deferred()
        self.hash = hashlib.sha256()
        request.registerProducer(self, True)

    def block(self) -> bytes:
        n = self.sent // self.piece
        line = b'{"block":%08d}\n' % n
        data = (line * (self.piece // len(line) + 1))[: self.piece]
        return data[: self.total - self.sent]

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        if not self.was_paused.called:
            self.was_paused.callback(self.sent)

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True

    def pump(self) -> None:
        while not self.paused and not self.stopped and self.sent < self.total:
            data = self.block()
            self.hash.update(data)
            self.sent += len(data)
            self.request.write(data)
        if self.sent >= self.total and not self.stopped and not self.request.finished:
            self.request.unregisterProducer()
            self.request.finish()
            self.stopped = True


def _client_socket_is_read(reactor, request) -> bool:
    """Whether the reactor is reading the client's end of the connection serving *request*."""
    client_port = request.getClientAddress().port
    for r in reactor.getReaders():
        if isinstance(r, tcp.Client) and r.getHost().port == client_port:
            return True
    return False


@pytest_twisted.ensureDeferred
async def test_stream_items_delivers_every_byte_in_chunks_with_back_pressure(reactor, core) -> None:
    """While the consumer's Deferred is pending no further chunk is delivered and the client stops
    reading the socket, so the core is held back by TCP; once it fires, the rest arrives, in order."""
    total, chunk = 48 * 1024 * 1024 + 123, 256 * 1024
    bodies: list[Body] = []

    def handler(req):
        req.setHeader(b"content-type", b"application/x-ndjson")
        bodies.append(Body(req, total))
        reactor.callLater(0, bodies[-1].pump)
        return server.NOT_DONE_YET
    core.handler = handler

    got = hashlib.sha256()
    sizes: list[int] = []
    held: list[defer.Deferred] = []

    def consume(data: bytes):
        sizes.append(len(data))
        got.update(data)
        if len(sizes) == 1:
            d = defer.Deferred()
            held.append(d)
            return d
        return None

    c = core.client()
    result = _bounded(reactor, c.stream_items("FF/1", consume, chunk=chunk), 60)
    # Wait until the first chunk is with the consumer and the core has been pushed back.
    while not held:
        await deferLater(reactor, 0.01, lambda: None)
    body = bodies[0]
    sent_at_pause = await _bounded(reactor, _wait(body.was_paused), 10)
    assert sent_at_pause < total
    # Let the reactor turn many times: nothing more reaches the consumer, the client's socket is not
    # read, and the core cannot write the body out.
    for _ in range(50):
        await deferLater(reactor, 0, lambda: None)
    assert len(sizes) == 1
    assert not _client_socket_is_read(reactor, core.requests[0])
    assert body.sent < total
    # Release the consumer: the stream resumes and completes.
    held[0].callback(None)
    n = await result
    assert n == total
    assert sum(sizes) == total
    assert got.hexdigest() == body.hash.hexdigest()
    assert len(sizes) > 2
    assert all(s >= chunk for s in sizes[:-1])
    assert core.seen[0]["uri"] == "/api/orders/FF%2F1/items"
    assert core.seen[0]["auth"] == f"Bearer {TOKEN}".encode()


async def _wait(d: defer.Deferred):
    return await d


@pytest_twisted.ensureDeferred
async def test_stream_items_small_body_and_final_partial_chunk(reactor, core) -> None:
    """A body smaller than one chunk is delivered once, whole, at the end."""
    body = b"".join(b'{"seq":%d}\n' % i for i in range(1, 101))
    core.handler = lambda req: body
    chunks: list[bytes] = []
    n = await _bounded(reactor, core.client().stream_items("FF1", chunks.append, chunk=1 << 20))
    assert n == len(body) and chunks == [body]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest_twisted.ensureDeferred
async def test_dropped_stream_raises(reactor, core, framing) -> None:
    """A stream cut off before its end raises; the bytes so far are not passed off as the whole order."""
    def handler(req):
        if framing == "content-length":
            req.setHeader(b"content-length", b"1000000")
        req.write(b'{"seq":1}\n' * 1000)
        reactor.callLater(0, req.channel.transport.abortConnection)
        return server.NOT_DONE_YET
    core.handler = handler
    with pytest.raises(Exception) as ei:
        await _bounded(reactor, core.client().stream_items("FF1", lambda d: None, chunk=1024))
    assert not isinstance(ei.value, defer.TimeoutError)


@pytest_twisted.ensureDeferred
async def test_stream_that_stalls_raises(reactor, core) -> None:
    """A stream that stops sending (the consumer idle) fails after the timeout instead of hanging the
    order's load for ever."""
    def handler(req):
        req.write(b'{"seq":1}\n' * 10)
        return server.NOT_DONE_YET
    core.handler = handler
    with pytest.raises(CoreError):
        await _bounded(reactor, core.client(timeout_s=0.2).stream_items("FF1", lambda d: None, chunk=1024), 10)


@pytest_twisted.ensureDeferred
async def test_slow_consumer_is_not_a_stall(reactor, core) -> None:
    """Time the consumer spends on a chunk does not count against the idle timeout."""
    body = b"x" * (64 * 1024)
    core.handler = lambda req: body

    def consume(data: bytes):
        return deferLater(reactor, 0.5, lambda: None)
    n = await _bounded(reactor, core.client(timeout_s=0.2).stream_items("FF1", consume, chunk=1024), 10)
    assert n == len(body)


@pytest_twisted.ensureDeferred
async def test_consumer_failure_stops_the_stream(reactor, core) -> None:
    """When the consumer fails (a database error, say), the stream stops and the error is raised."""
    def handler(req):
        bodies.append(Body(req, 8 * 1024 * 1024))
        reactor.callLater(0, bodies[-1].pump)
        return server.NOT_DONE_YET
    bodies: list[Body] = []
    core.handler = handler
    calls = []

    def consume(data: bytes):
        calls.append(len(data))
        if len(calls) == 2:
            raise ValueError("disk full")
    with pytest.raises(ValueError, match="disk full"):
        await _bounded(reactor, core.client().stream_items("FF1", consume, chunk=64 * 1024), 30)
    assert len(calls) == 2


@pytest.mark.parametrize("code, exc", [(404, CoreContractError), (503, CoreError)])
@pytest_twisted.ensureDeferred
async def test_stream_error_status(reactor, core, code, exc) -> None:
    """A 4xx on the items is a contract fault; a 5xx a CoreError (the load is tried again later)."""
    core.handler = lambda req: _json(req, {"error": "x"}, code)
    delivered = []
    with pytest.raises(exc):
        await _bounded(reactor, core.client().stream_items("FF1", delivered.append))
    assert delivered == []


# --- the stream protocol in memory -----------------------------------------------


class FakeTransport:
    """Records pause/resume/stop calls of a response body's producer."""

    def __init__(self):
        self.calls: list[str] = []

    def pauseProducing(self):  # noqa: N802
        self.calls.append("pause")

    def resumeProducing(self):  # noqa: N802
        self.calls.append("resume")

    def stopProducing(self):  # noqa: N802
        self.calls.append("stop")


def test_stream_protocol_reads_one_chunk_ahead_then_pauses_while_the_consumer_is_busy() -> None:
    """Fed directly: the first full chunk goes to the consumer and reading goes on; data arriving
    meanwhile is held, not delivered, and once a whole next chunk is held the transport is paused
    (at most two chunks in memory); when the consumer's Deferred fires the transport resumes and
    the held data goes out as the next chunk."""
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseDone
    done = defer.Deferred()
    pending: list[defer.Deferred] = []
    got: list[bytes] = []

    def consume(data):
        got.append(data)
        d = defer.Deferred()
        pending.append(d)
        return d
    s = core_http._Stream(done, consume, 10)
    tr = FakeTransport()
    s.makeConnection(tr)
    s.dataReceived(b"0123456789ab")
    assert got == [b"0123456789ab"] and tr.calls == []
    s.dataReceived(b"cdefg")                 # not a whole chunk yet: read on
    assert len(got) == 1 and tr.calls == []
    s.dataReceived(b"hijklmn")               # the next chunk is whole: pause
    assert len(got) == 1 and tr.calls == ["pause"]
    s.dataReceived(b"")                      # a transport may still deliver what it had read
    assert tr.calls == ["pause"]
    pending[0].callback(None)
    assert tr.calls[:2] == ["pause", "resume"]
    assert got == [b"0123456789ab", b"cdefghijklmn"]
    s.dataReceived(b"op")
    s.connectionLost(Failure(ResponseDone()))
    assert not done.called                   # still waiting on the second chunk's consumer
    pending[1].callback(None)
    assert got[-1] == b"op"
    pending[2].callback(None)
    results = []
    done.addBoth(results.append)
    assert results == [26]
