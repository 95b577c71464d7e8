"""The reference core adapter: the core system's HTTP/JSON API (core-api.md, "Core API").

Polls funded orders, streams an order's NDJSON items with back-pressure (the
body is handed on in chunks and the socket is paused while the consumer works,
so memory does not grow with the order), and pushes results and order states.
5xx answers, timeouts and dropped connections are retried with capped,
jittered exponential backoff; a 4xx is a contract fault, raised as
`CoreContractError` for the caller to journal and alarm.

Every attempt has one overall deadline (`call_deadline_s`, from the request
until the last byte of the answer), so a core that drips a byte a second cannot
hold a call open: the idle timer alone restarted on every byte. The item stream
cannot have a fixed deadline (an order can hold a million items); it must keep
a minimum rate instead: while we wait on the core (the consumer's time does not
count), each window of `stream_window_s` must bring at least
`stream_min_bytes_per_s` times the window. `close()` cancels every request in
flight, so stopping the daemon never waits on the core.
"""

from __future__ import annotations

import json
import random
import re
from typing import Callable
from urllib.parse import quote, urlencode

from twisted.internet import defer, error as ierror, protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client, http
from twisted.web.http_headers import Headers
from zope.interface import implementer

from adapters.bodies import BytesProducer
from adapters.core_interface import CoreContractError, CoreError, Exchange, ICoreRawResults, ICoreSystem
from adapters.interface import RequestTiming

log = Logger()


def endpoint_of(method: str, url: str) -> str:
    """The call's endpoint as a metrics label: the path without host and query, the order number
    replaced by {order_no}, e.g. "POST /api/orders/{order_no}/results" (a label per order would
    grow without end)."""
    path = re.sub(r"^[a-z]+://[^/]*", "", url).split("?", 1)[0]
    return f"{method} {re.sub(r'^/api/orders/[^/]+', '/api/orders/{order_no}', path)}"


def failure_code(e: BaseException) -> str:
    """The class of a failed call for the error counters (the HTTP status is counted apart)."""
    if isinstance(e, defer.TimeoutError):
        return "timeout"
    if isinstance(e, ierror.ConnectError):
        return "connect_failed"
    return type(e).__name__


class _IdleTimer:
    """Stops a response body that goes quiet for `idle` seconds, so a stalled core cannot hang a
    call for ever (the request's own timeout ends when the headers arrive)."""

    def __init__(self, clock, idle: float | None, on_idle: Callable[[], None]):
        self.clock, self.idle, self.on_idle = clock, idle, on_idle
        self.call = None
        self.fired = False

    def start(self) -> None:
        self.stop()
        if self.clock is not None and self.idle:
            self.call = self.clock.callLater(self.idle, self._fire)

    def stop(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None

    def _fire(self) -> None:
        self.call = None
        self.fired = True
        self.on_idle()


class _Collect(protocol.Protocol):
    def __init__(self, done: defer.Deferred, limit: int, clock=None, idle: float | None = None):
        self.done, self.limit, self.buf, self.size = done, limit, [], 0
        self.timer = _IdleTimer(clock, idle, lambda: self.transport.stopProducing())

    def connectionMade(self) -> None:  # noqa: N802
        self.timer.start()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.timer.start()
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            return
        self.buf.append(data)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.timer.stop()
        if self.done.called:
            return    # cancelled (deadline or close): the call has already failed
        if self.timer.fired:
            self.done.errback(CoreError(f"core answer stalled: no data for {self.timer.idle:g}s"))
        elif self.size > self.limit:
            self.done.errback(CoreError(f"core answer exceeds {self.limit} bytes"))
        elif reason.check(client.ResponseDone, http.PotentialDataLoss):
            self.done.callback(b"".join(self.buf))
        else:
            self.done.errback(reason)


class _Stream(protocol.Protocol):
    """Hands the body on in chunks of about `chunk` bytes. While the consumer is busy with one
    chunk the next is read (the core's side and ours overlap), and reading pauses once it is
    whole: at most two chunks held, whatever the consumer's pace."""

    def __init__(self, done: defer.Deferred, consume: Callable[[bytes], defer.Deferred], chunk: int,
                 clock=None, idle: float | None = None, window: float | None = None,
                 min_rate: float = 0):
        self.done, self.consume, self.chunk = done, consume, chunk
        self.clock, self.window, self.min_rate = clock, window, min_rate
        self.window_call = None
        self.window_bytes = 0
        self.too_slow: str | None = None
        self.buf: list[bytes] = []
        self.size = 0
        self.busy: defer.Deferred | None = None
        self.paused = False   # by us: the next chunk is whole and the consumer is still busy
        self.failed = None
        self.total = 0
        self.ended = False
        # Counts only while we wait on the core: the consumer's time is not the core's stall.
        self.timer = _IdleTimer(clock, idle, lambda: self.transport.stopProducing())

    def connectionMade(self) -> None:  # noqa: N802
        self.timer.start()
        self._window_start()

    def _window_start(self) -> None:
        """A new rate window; runs only while we wait on the core (stopped while the consumer works)."""
        self._window_stop()
        self.window_bytes = 0
        if self.clock is not None and self.window and self.min_rate and not self.ended:
            self.window_call = self.clock.callLater(self.window, self._window_end)

    def _window_stop(self) -> None:
        if self.window_call is not None and self.window_call.active():
            self.window_call.cancel()
        self.window_call = None

    def _window_end(self) -> None:
        self.window_call = None
        need = self.min_rate * self.window
        if self.window_bytes < need:
            self.too_slow = (f"core stream too slow: {self.window_bytes} bytes in {self.window:g}s, "
                             f"below the minimum of {self.min_rate:g} bytes/s")
            self.transport.stopProducing()
        else:
            self._window_start()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.busy is None:
            self.timer.start()
        self.window_bytes += len(data)
        self.buf.append(data)
        self.size += len(data)
        self.total += len(data)
        if self.size >= self.chunk:
            if self.busy is None:
                self._flush()
            elif not self.paused:
                self.paused = True
                self.transport.pauseProducing()

    def _flush(self) -> defer.Deferred:
        data, self.buf, self.size = b"".join(self.buf), [], 0
        self.timer.stop()
        self._window_stop()
        d = self.busy = defer.maybeDeferred(self.consume, data)

        def resume(r):
            self.busy = None
            if self.paused:
                self.paused = False
                try:
                    self.transport.resumeProducing()
                except Exception:  # the connection may be finished already
                    pass
            if not self.ended:
                self.timer.start()
                self._window_start()
            if self.size >= self.chunk:
                self._flush()
            return r

        def failed(f):
            self.failed = f
            self.busy = None
            self.transport.stopProducing()
        d.addCallbacks(resume, failed)
        return d

    @defer.inlineCallbacks
    def _finish(self, reason):
        while self.busy is not None:
            yield self.busy
        if self.failed is not None:
            return self.failed
        if self.timer.fired:
            return Failure(CoreError(f"core stream stalled: no data for {self.timer.idle:g}s"))
        if self.too_slow:
            return Failure(CoreError(self.too_slow))
        if not reason.check(client.ResponseDone):
            return reason
        if self.size:
            yield self._flush()
            if self.failed is not None:
                return self.failed
        return self.total

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.ended = True
        self.timer.stop()
        self._window_stop()

        def settle(result):
            if not self.done.called:   # a cancelled stream has failed already
                self.done.callback(result)
        self._finish(reason).addBoth(settle)

    def cancel(self, why: str) -> None:
        """Stop reading (the daemon is stopping); `done` fails once the consumer is idle."""
        self.too_slow = why
        if self.transport is not None:
            self.transport.stopProducing()


class _QuietFactory(client._HTTP11ClientFactory):  # noqa: SLF001
    noisy = False


@implementer(ICoreSystem, ICoreRawResults)
class CoreClient:
    """Calls the core's HTTP API with retries; one instance per daemon.

    `watch(fn)` registers a listener told the outcome of every call once it is over
    (retries included): fn(None) for a good answer, fn(CoreError) for a failed call,
    so that the daemon keeps one "core unreachable" alarm episode. Each attempt (each HTTP
    request, the item stream whole) is timed through `timing` under its endpoint_of(), with
    outcome "ok" (2xx) or "error" (code: the HTTP status, or the failure's class).
    """

    def __init__(self, reactor, base_url: str, token: str, *, timeout_s: float = 60,
                 max_delay_s: float = 60, attempts: int = 6, rng: random.Random | None = None,
                 call_deadline_s: float | None = None, stream_window_s: float | None = None,
                 stream_min_bytes_per_s: float = 1024, timing: RequestTiming | None = None):
        self.reactor = reactor
        self.timing = timing or RequestTiming()
        self.base = base_url.rstrip("/")
        self._auth = f"Bearer {token}".encode()
        self.timeout = timeout_s
        self.deadline = call_deadline_s if call_deadline_s is not None else timeout_s
        self.stream_window = stream_window_s if stream_window_s is not None else self.deadline
        self.stream_min_rate = stream_min_bytes_per_s
        self.max_delay = max_delay_s
        self.attempts = attempts
        self.rng = rng or random.Random()
        self.pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.pool._factory = _QuietFactory  # noqa: SLF001  (one log line per connection is noise)
        self._closing = False
        self._waits: set[defer.Deferred] = set()
        self._inflight: set[defer.Deferred] = set()
        self._streams: set[_Stream] = set()
        self._watchers: list[Callable] = []
        self.agent = client.Agent(reactor, pool=self.pool, connectTimeout=min(timeout_s, self.deadline))

    @property
    def closing(self) -> bool:
        return self._closing

    def watch(self, fn: Callable) -> None:
        self._watchers.append(fn)

    def _tell(self, problem) -> None:
        for fn in self._watchers:
            try:
                fn(problem)
            except Exception:  # noqa: BLE001  (a listener's fault is not the call's)
                log.failure("core call listener failed")

    def close(self) -> defer.Deferred:
        """Stop retrying (a waiting call fails with CoreError), cancel every request in flight and
        close the connections: nothing of the daemon's stop waits on the core."""
        self._closing = True
        for d in list(self._waits) + list(self._inflight):
            d.cancel()
        for st in list(self._streams):
            st.cancel("the daemon is stopping")
        return self.pool.closeCachedConnections()

    def _headers(self, json_body: bool) -> Headers:
        h = Headers({b"Authorization": [self._auth], b"Accept": [b"application/json"]})
        if json_body:
            h.addRawHeader(b"Content-Type", b"application/json")
        return h

    def _attempt(self, method: str, url: str, body: bytes | None, read: Callable) -> defer.Deferred:
        """One request and its whole answer under one deadline; cancellable (close)."""
        async def once():
            resp = await self.agent.request(method.encode(), url.encode(),
                                            self._headers(body is not None),
                                            BytesProducer(body) if body is not None else None)
            return resp.code, await read(resp)
        d = defer.ensureDeferred(once())
        d.addTimeout(self.deadline, self.reactor)
        self._inflight.add(d)
        d.addBoth(lambda r: (self._inflight.discard(d), r)[1])
        return d

    async def _call(self, method: str, url: str, body: bytes | None, read: Callable):
        try:
            result = await self._call_retrying(method, url, body, read)
        except CoreContractError:
            raise     # the core answered: a contract fault, journaled and alarmed by the caller
        except CoreError as e:
            self._tell(e)
            raise
        self._tell(None)
        return result

    async def _call_retrying(self, method: str, url: str, body: bytes | None, read: Callable):
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            if self._closing:
                raise CoreError(f"{method} {url}: not sent, the daemon is stopping")
            timed = self.timing.start(endpoint_of(method, url))
            try:
                code, result = await self._attempt(method, url, body, read)
            except defer.TimeoutError as e:
                timed.done("error", failure_code(e))
                problem = f"no whole answer within the call deadline of {self.deadline:g}s"
            except (defer.CancelledError, ierror.ConnectError,
                    ierror.ConnectionLost, ierror.ConnectionDone, client.ResponseFailed,
                    client.ResponseNeverReceived, http.PotentialDataLoss, CoreError) as e:
                timed.done("error", failure_code(e))
                problem = f"{type(e).__name__}: {e}"
            else:
                timed.done("ok" if code < 300 else "error", "" if code < 300 else str(code))
                if code < 300:
                    return code, result
                if code < 500:
                    # 4xx, and 3xx too: the contract has no redirects, so neither is retried blindly.
                    raise CoreContractError(method, url, code, result if isinstance(result, bytes) else b"")
                problem = f"HTTP {code}"
            if attempt == self.attempts or self._closing:
                raise CoreError(f"{method} {url} failed {attempt} times, last: {problem}")
            wait = min(delay, self.max_delay) * (0.5 + self.rng.random())
            log.warn("core call {method} {url} failed ({problem}); retry {attempt} in {wait:.1f}s",
                     method=method, url=url, problem=problem, attempt=attempt, wait=wait)
            waiting = deferLater(self.reactor, wait, lambda: None)
            self._waits.add(waiting)
            try:
                await waiting
            except defer.CancelledError:
                raise CoreError(f"{method} {url}: gave up retrying, the daemon is stopping") from None
            finally:
                self._waits.discard(waiting)
            delay *= 2
        raise AssertionError("unreachable")

    def _read_all(self, limit: int = 64 * 1024 * 1024):
        def read(resp):
            proto: list = []

            def cancel(d):
                if proto and proto[0].transport is not None:
                    proto[0].transport.stopProducing()
            d = defer.Deferred(cancel)
            proto.append(_Collect(d, limit, self.reactor, self.timeout))
            resp.deliverBody(proto[0])
            return d
        return read

    async def get_json(self, path: str) -> tuple[dict, Exchange]:
        url = self.base + path
        code, raw = await self._call("GET", url, None, self._read_all())
        try:
            return json.loads(raw), Exchange("GET", url, b"", code, raw)
        except ValueError as e:
            raise CoreContractError("GET", url, code, raw) from e

    async def list_funded(self, bank_id: str) -> tuple[list[dict], list[Exchange]]:
        """Every funded order for *bank_id*, following the cursor."""
        orders, exchanges, after = [], [], None
        seen: set = set()
        while True:
            q = {"state": "funded", "bank": bank_id}
            if after is not None:
                q["after"] = after
            page, ex = await self.get_json("/api/orders?" + urlencode(q))
            exchanges.append(ex)
            if not isinstance(page, dict) or not isinstance(page.get("orders"), list):
                raise CoreContractError("GET", ex.url, ex.status, ex.response)
            orders.extend(page["orders"])
            after = page.get("next")
            if not after:
                return orders, exchanges
            # A cursor that comes round again would page for ever.
            if not isinstance(after, (str, int)) or isinstance(after, bool) or after in seen:
                raise CoreContractError("GET", ex.url, ex.status, ex.response)
            seen.add(after)

    async def stream_items(self, order_no: str, consume: Callable[[bytes], defer.Deferred],
                           chunk: int = 1 << 20) -> int:
        """Stream the order's NDJSON to *consume* in chunks (not split on lines); total bytes.

        Not retried here: a broken stream leaves the order to be loaded again from the start.
        The answer's head is under the call deadline; the body under the minimum rate. Timed
        whole, from the request to the last chunk consumed (the consumer's time included: the
        socket is paused while it works).
        """
        url = f"{self.base}/api/orders/{quote(order_no, safe='')}/items"
        if self._closing:
            raise CoreError(f"GET {url}: not sent, the daemon is stopping")
        timed = self.timing.start(endpoint_of("GET", url))
        try:
            result, code = await self._stream_once(url, consume, chunk)
        except CoreError as e:
            timed.done("error", failure_code(e))
            if not isinstance(e, CoreContractError):
                self._tell(e)
            raise
        except (defer.TimeoutError, defer.CancelledError, ierror.ConnectError, ierror.ConnectionLost,
                ierror.ConnectionDone, client.ResponseFailed, client.ResponseNeverReceived,
                http.PotentialDataLoss) as e:
            timed.done("error", failure_code(e))
            err = CoreError(f"GET {url}: {type(e).__name__}: {e}")
            self._tell(err)
            raise err from None
        except BaseException as e:
            timed.done("error", failure_code(e))    # the consumer refused the items (ItemStreamRefused)
            raise
        timed.done("ok" if code == 200 else "error", "" if code == 200 else str(code))
        if code != 200:
            if 400 <= code < 500:
                raise CoreContractError("GET", url, code, result)
            err = CoreError(f"GET {url} answered {code}")
            self._tell(err)
            raise err
        self._tell(None)
        return result

    async def _stream_once(self, url: str, consume, chunk: int):
        d = self.agent.request(b"GET", url.encode(), self._headers(False), None)
        d.addTimeout(self.deadline, self.reactor)
        self._inflight.add(d)
        try:
            resp = await d
        finally:
            self._inflight.discard(d)
        if resp.code != 200:
            body = self._read_all(1 << 20)(resp)
            body.addTimeout(self.deadline, self.reactor)
            self._inflight.add(body)
            try:
                return await body, resp.code
            finally:
                self._inflight.discard(body)
        done = defer.Deferred()
        st = _Stream(done, consume, chunk, self.reactor, self.timeout, self.stream_window,
                     self.stream_min_rate)
        self._streams.add(st)
        try:
            resp.deliverBody(st)
            if self._closing:
                st.cancel("the daemon is stopping")
            return await done, 200
        finally:
            self._streams.discard(st)

    async def post_json(self, path: str, payload: dict) -> Exchange:
        return await self._post(path, json.dumps(payload, ensure_ascii=False,
                                                 separators=(",", ":")).encode("utf-8"))

    async def _post(self, path: str, body: bytes) -> Exchange:
        url = self.base + path
        code, raw = await self._call("POST", url, body, self._read_all(1 << 20))
        return Exchange("POST", url, body, code, raw)

    def push_results(self, order_no: str, results: list[dict]):
        return self.post_json(f"/api/orders/{quote(order_no, safe='')}/results", {"results": results})

    def push_results_json(self, order_no: str, results_json: bytes):
        """As push_results, the results already a JSON array (ICoreRawResults): the body is
        written around it, not parsed and serialised again."""
        return self._post(f"/api/orders/{quote(order_no, safe='')}/results",
                          b'{"results":' + results_json + b"}")

    def push_state(self, order_no: str, state: str, detail):
        return self.post_json(f"/api/orders/{quote(order_no, safe='')}/state",
                              {"state": state, "detail": detail})
