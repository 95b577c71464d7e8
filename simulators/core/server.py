"""The core simulator's HTTP server: core-api.md's "Core API", plus a summary for demos.

:class:`CoreSimulator` serves orders generated from :class:`~simulators.datagen.OrderSpec`
seeds under ``/api/`` (bearer token), records what the gateway reports through
:class:`~simulators.core.store.Store` on a single database thread, and offers
the same record to tests in-process (:meth:`CoreSimulator.summary`,
:meth:`CoreSimulator.results`) and to other processes at ``GET /sim/summary``.
For the gateway's retry tests it can answer every Nth API request 503
(``fail_every``) and answer late (``delay_s``: the request is processed first,
so a client that times out has had its POST recorded: the lost-reply case).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from simulators import datagen
from simulators.core.store import ResultConflict, Store
from simulators.core.stream import FileItemsProducer, ItemsProducer, ndjson_line
from simulators.core.validate import FieldError, parse_results, parse_state

MAX_BODY = 32 * 1024 * 1024
CST = datetime.timezone(datetime.timedelta(hours=8))
RESULT_STATUSES = ("PAID", "FAILED", "REFUNDED")

log = Logger(namespace="core-sim")


class _Reply(Exception):
    """A JSON answer: returned by handlers, raised to refuse a request from anywhere below them."""

    def __init__(self, code: int, body: dict[str, Any], headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(code)
        self.code, self.body, self.headers = code, body, headers or {}


def _bad(field: str, message: str) -> _Reply:
    return _Reply(400, FieldError(field, message).as_json())


def _render_and_profile(spec: datagen.OrderSpec, path: str) -> dict[str, Any]:
    """Write the order's NDJSON to *path* (worker thread) and return its profile."""
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        buf = []
        for it in datagen.items(spec):
            buf.append(ndjson_line(it))
            if len(buf) >= 5000:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))
    os.replace(tmp, path)
    return datagen.order_profile(spec, amounts=True)


class CoreSimulator:
    """A core system (一卡通系统) that funded *specs* and expects the gateway to pay them.

    *reactor* provides IReactorTCP and IReactorTime; *db_path* is the SQLite
    file results and states are recorded in (kept across restarts: an order
    reported DISPATCHED stays out of the funded list); *token* is the bearer
    token every request must carry. ``fail_every`` and ``delay_s`` may be
    changed while running.
    """

    def __init__(self, reactor: Any, specs: Iterable[datagen.OrderSpec], db_path: str, token: str, *,
                 page_size: int = 100, fail_every: int = 0, delay_s: float = 0.0,
                 chunk_items: int = 500, cache_dir: str | None = None) -> None:
        self._reactor = reactor
        # With a cache_dir, each order's NDJSON is rendered once, with its totals, and
        # streamed from that file: the benchmark then times the gateway, not the generator.
        self.cache_dir = cache_dir
        self._specs: dict[str, datagen.OrderSpec] = {}
        for spec in specs:
            if spec.order_no in self._specs:
                raise ValueError(f"order_no {spec.order_no} appears twice")
            self._specs[spec.order_no] = spec
        self._oldest_first = sorted(self._specs.values(), key=self._sort_key)
        if not token:
            raise ValueError("token: must not be empty")
        self._auth = b"Bearer " + token.encode("utf-8")
        if page_size < 1:
            raise ValueError("page_size: must be >= 1")
        self.page_size = page_size
        self.fail_every = fail_every
        self.delay_s = delay_s
        self.chunk_items = chunk_items
        self._store = Store(db_path)
        self._db_pool = ThreadPool(1, 1, "core-sim-db")
        self._work_pool = ThreadPool(0, 2, "core-sim-work")
        self._shutdown_trigger: Any = None
        self._profiles: dict[str, dict[str, Any]] = {}
        self._profile_waiters: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self._ports: list[IListeningPort] = []
        self._streams: set[ItemsProducer] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self.api_requests = 0
        self.injected_faults = 0
        self._report_listeners: list[Callable[[str], None]] = []

    # --- in-process API -------------------------------------------------

    def add_order(self, spec: datagen.OrderSpec) -> None:
        """Finance funds one more order while the simulator runs (the fault campaign feeds
        orders this way); it is listed from the next poll."""
        if spec.order_no in self._specs:
            raise ValueError(f"order_no {spec.order_no} appears twice")
        self._specs[spec.order_no] = spec
        self._oldest_first = sorted(self._specs.values(), key=self._sort_key)
        if self._ports:
            self._profile(spec).addErrback(lambda f: log.failure("computing order totals", f))

    @property
    def resource(self) -> Resource:
        """The twisted.web resource serving /api/ and /sim/ (for embedding in another Site)."""
        return _CoreResource(self)

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> IListeningPort:
        """Listen for HTTP on *interface*:*port* (0: any free port; ``.getHost().port`` tells)."""
        site = Site(self.resource)
        site.noisy = False
        listening = self._reactor.listenTCP(port, site, interface=interface)
        self._ports.append(listening)
        # Work out every order's totals now rather than on the first poll:
        # the header of a million-item order needs a pass over all its items.
        for spec in self._oldest_first:
            self._profile(spec).addErrback(lambda f: log.failure("computing order totals", f))
        return listening

    def header(self, order_no: str) -> Deferred[dict[str, Any]]:
        """The order header as served (KeyError for an unknown order)."""
        spec = self._specs[order_no]
        return self._profile(spec).addCallback(lambda p: datagen.order_header(spec, (p["count"], p["amount"])))

    def summary(self) -> Deferred[dict[str, Any]]:
        """Everything the gateway reported so far, per order, as JSON-ready data::

            {"orders": {order_no: {
                "bank_id": str,
                "total_count": int, "total_amount": int,   # the header as served (corruptions applied)
                "item_count": int, "item_amount": int,     # what the items really add up to
                "corrupt": str | None,
                "intended": {"0000" | "R0xx": {"count": int, "amount": int}},  # outcomes aimed at
                "funded": bool,                            # still in the funded list
                "state": "FUNDED" | "DISPATCHED" | "SETTLED" | "CLOSED" | "INVALID",  # latest
                "state_history": [{"state": str, "detail": any, "received_at": iso}],
                "state_repeats": int,                      # repeats of the latest state, not in history
                "results": {"PAID" | "FAILED" | "REFUNDED": {"count": int, "amount": int}},
                "reported_items": int,                     # items with any result
                "result_events": int,                      # distinct (seq, status) received
                "duplicates": int,                         # repeats of a (seq, status) already held
                "conflicts": int}},                        # repeats whose other fields differed
             "requests": {"api": int, "injected_503": int}}

        ``results`` counts each item once, under its latest status; amounts are fen.
        """
        return ensureDeferred(self._summary())

    def results(self, order_no: str) -> Deferred[dict[int, dict[str, Any]]]:
        """seq -> latest reported result of that item (only items with a result)."""
        if order_no not in self._specs:
            raise KeyError(order_no)
        return self._in_db(self._store.results, order_no)

    def add_report_listener(self, listener: Callable[[str], None]) -> None:
        """Call *listener(order_no)* whenever the gateway reports new results or a new state.

        Called on the reactor thread once the report is recorded; what it raises is logged.
        The departments (simulators/core/departments.py) use it to act as soon as results arrive.
        """
        self._report_listeners.append(listener)

    def remove_report_listener(self, listener: Callable[[str], None]) -> None:
        if listener in self._report_listeners:
            self._report_listeners.remove(listener)

    def _reported(self, order_no: str) -> None:
        for listener in list(self._report_listeners):
            try:
                listener(order_no)
            except Exception:
                log.failure("report listener failed for {order_no}", order_no=order_no)

    @property
    def active_streams(self) -> int:
        """How many item streams are being written right now."""
        return len(self._streams)

    def when_streams_idle(self) -> Deferred[None]:
        """Fires once no item stream is being written (at once if none is)."""
        d: Deferred[None] = Deferred()
        if not self._streams:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    def close(self) -> Deferred[None]:
        """Stop listening, end running streams, close the database and stop the threads."""
        return ensureDeferred(self._close())

    # --- plumbing -------------------------------------------------------

    @staticmethod
    def _sort_key(spec: datagen.OrderSpec) -> tuple[float, str]:
        return datetime.datetime.fromisoformat(spec.funded_at).timestamp(), spec.order_no

    def _start_pools(self) -> None:
        if self._shutdown_trigger is None:
            self._db_pool.start()
            self._work_pool.start()
            self._shutdown_trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self._stop_pools)

    def _stop_pools(self) -> None:
        self._db_pool.stop()
        self._work_pool.stop()

    def _in_db(self, f: Any, *args: Any) -> Deferred[Any]:
        self._start_pools()
        return deferToThreadPool(self._reactor, self._db_pool, f, *args)

    def _in_worker(self, f: Any, *args: Any) -> Deferred[Any]:
        self._start_pools()
        return deferToThreadPool(self._reactor, self._work_pool, f, *args)

    def _now(self) -> str:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), CST).isoformat(timespec="milliseconds")

    def _profile(self, spec: datagen.OrderSpec) -> Deferred[dict[str, Any]]:
        """Totals and intended outcomes of an order: one pass off the reactor, then cached."""
        if spec.order_no in self._profiles:
            return succeed(self._profiles[spec.order_no])
        d: Deferred[dict[str, Any]] = Deferred()
        waiters = self._profile_waiters.get(spec.order_no)
        if waiters is not None:
            waiters.append(d)
            return d
        self._profile_waiters[spec.order_no] = [d]

        def done(profile: dict[str, Any]) -> None:
            self._profiles[spec.order_no] = profile
            for w in self._profile_waiters.pop(spec.order_no):
                w.callback(profile)

        def failed(f: Failure) -> None:
            for w in self._profile_waiters.pop(spec.order_no):
                w.errback(f)

        if self.cache_dir is None:
            self._in_worker(datagen.order_profile, spec, True).addCallbacks(done, failed)
        else:
            self._in_worker(_render_and_profile, spec, self._cache_path(spec)).addCallbacks(done, failed)
        return d

    def _cache_path(self, spec: datagen.OrderSpec) -> str:
        return os.path.join(self.cache_dir, f"{spec.order_no}.ndjson")

    async def _close(self) -> None:
        for port in self._ports:
            await port.stopListening()
        self._ports.clear()
        for stream in list(self._streams):
            stream.stopProducing()
        if self._shutdown_trigger is not None:
            await self._in_db(self._store.close)
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
            self._stop_pools()

    async def _summary(self) -> dict[str, Any]:
        recorded = await self._in_db(self._store.summary)
        orders: dict[str, Any] = {}
        for spec in self._oldest_first:
            profile = await self._profile(spec)
            header = datagen.order_header(spec, (profile["count"], profile["amount"]))
            rec = recorded.get(spec.order_no, {})
            history = rec.get("state_history", [])
            results = {s: {"count": 0, "amount": 0} for s in RESULT_STATUSES}
            results.update(rec.get("results", {}))
            orders[spec.order_no] = {
                "bank_id": spec.bank_id,
                "total_count": header["total_count"],
                "total_amount": header["total_amount"],
                "item_count": profile["count"],
                "item_amount": profile["amount"],
                "corrupt": spec.corrupt,
                "intended": profile["outcomes"],
                "funded": not history,
                "state": history[-1]["state"] if history else "FUNDED",
                "state_history": history,
                "state_repeats": rec.get("state_repeats", 0),
                "results": results,
                "reported_items": rec.get("reported_items", 0),
                "result_events": rec.get("result_events", 0),
                "duplicates": rec.get("duplicates", 0),
                "conflicts": rec.get("conflicts", 0),
            }
        return {"orders": orders, "requests": {"api": self.api_requests, "injected_503": self.injected_faults}}

    # --- request handling ------------------------------------------------

    async def handle(self, request: Request) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        try:
            reply = await self._dispatch(request)
            if reply is None:
                return  # a stream is under way and finishes the request itself
        except _Reply as r:
            reply = r
        except Exception:
            log.failure("handling {method} {path}", method=request.method, path=request.path)
            reply = _Reply(500, {"error": "internal", "message": "see the simulator's log"})
        if gone:
            return
        request.setResponseCode(reply.code)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        for k, v in reply.headers.items():
            request.setHeader(k, v)
        request.write(json.dumps(reply.body, ensure_ascii=False).encode("utf-8"))
        request.finish()

    def _check_auth(self, request: Request) -> None:
        given = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(given, self._auth):
            raise _Reply(401, {"error": "unauthorized", "message": "missing or wrong bearer token"},
                         {b"www-authenticate": b'Bearer realm="core"'})

    async def _answer(self, body: dict[str, Any]) -> _Reply:
        if self.delay_s:
            await deferLater(self._reactor, self.delay_s)
        return _Reply(200, body)

    async def _dispatch(self, request: Request) -> _Reply | None:
        """Route one request: the answer (errors are raised), or None once a stream is under way."""
        try:
            parts = [unquote(p.decode("ascii")) for p in request.path.split(b"/")[1:]]
        except UnicodeDecodeError:
            raise _Reply(404, {"error": "not_found", "message": "no such resource"}) from None
        method = request.method
        self._check_auth(request)
        if parts == ["sim", "summary"]:
            if method != b"GET":
                raise _Reply(405, {"error": "method_not_allowed", "message": "GET only"})
            return _Reply(200, await self.summary())
        if parts[:2] != ["api", "orders"] or len(parts) > 4:
            raise _Reply(404, {"error": "not_found", "message": "no such resource"})

        self.api_requests += 1
        if self.fail_every and self.api_requests % self.fail_every == 0:
            self.injected_faults += 1
            log.info("injected 503 on API request {n}", n=self.api_requests)
            raise _Reply(503, {"error": "unavailable", "message": f"injected fault (request {self.api_requests})"},
                         {b"retry-after": b"1"})

        if len(parts) == 2:
            self._expect(method, b"GET")
            return await self._answer(await self._list(request))
        spec = self._specs.get(parts[2])
        if spec is None:
            raise _Reply(404, {"error": "not_found", "message": f"unknown order {parts[2]}"})
        if len(parts) == 3:
            self._expect(method, b"GET")
            self._no_query(request)
            return await self._answer(await self.header(spec.order_no))
        if parts[3] == "items":
            self._expect(method, b"GET")
            self._no_query(request)
            if self.delay_s:
                await deferLater(self._reactor, self.delay_s)
            self._stream(request, spec)
            return None
        if parts[3] == "results":
            self._expect(method, b"POST")
            return await self._answer(await self._post_results(request, spec))
        if parts[3] == "state":
            self._expect(method, b"POST")
            return await self._answer(await self._post_state(request, spec))
        raise _Reply(404, {"error": "not_found", "message": "no such resource"})

    @staticmethod
    def _expect(method: bytes, allowed: bytes) -> None:
        if method != allowed:
            raise _Reply(405, {"error": "method_not_allowed", "message": f"{allowed.decode()} only"},
                         {b"allow": allowed})

    @staticmethod
    def _no_query(request: Request) -> None:
        for key in request.args:
            raise _bad(key.decode("utf-8", "replace"), "unknown query parameter")

    @staticmethod
    def _body(request: Request) -> bytes:
        request.content.seek(0)
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise _Reply(413, {"error": "too_large", "message": f"body over {MAX_BODY} bytes"})
        return body

    async def _list(self, request: Request) -> dict[str, Any]:
        args: dict[str, str] = {}
        for key, values in request.args.items():
            name = key.decode("utf-8", "replace")
            if name not in ("state", "bank", "after"):
                raise _bad(name, "unknown query parameter")
            if len(values) != 1:
                raise _bad(name, "given more than once")
            args[name] = values[0].decode("utf-8", "replace")
        if args.get("state") != "funded":
            raise _bad("state", "must be 'funded'")
        bank = args.get("bank")
        if not bank:
            raise _bad("bank", "required")
        after_key = None
        if args.get("after"):
            after_key = self._decode_cursor(args["after"])

        reported = await self._in_db(self._store.latest_states)
        funded = [s for s in self._oldest_first if s.bank_id == bank and s.order_no not in reported]
        if after_key is not None:
            funded = [s for s in funded if self._sort_key(s) > after_key]
        page = funded[: self.page_size]
        headers = [await self.header(s.order_no) for s in page]
        more = len(funded) > len(page)
        return {"orders": headers, "next": self._cursor(page[-1]) if more else None}

    @staticmethod
    def _cursor(spec: datagen.OrderSpec) -> str:
        return base64.urlsafe_b64encode(spec.order_no.encode("utf-8")).decode("ascii").rstrip("=")

    def _decode_cursor(self, cursor: str) -> tuple[float, str]:
        try:
            order_no = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise _bad("after", "not a cursor this server gave out") from None
        spec = self._specs.get(order_no)
        if spec is None:
            raise _bad("after", "not a cursor this server gave out")
        return self._sort_key(spec)

    def _stream(self, request: Request, spec: datagen.OrderSpec) -> None:
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/x-ndjson; charset=utf-8")
        if self.cache_dir is not None and spec.order_no in self._profiles:
            producer = FileItemsProducer(self._reactor, request, self._cache_path(spec), spec.order_no)
        else:
            producer = ItemsProducer(self._reactor, request, spec, self.chunk_items)
        self._streams.add(producer)
        producer.start().addBoth(self._stream_ended, producer)

    def _stream_ended(self, complete: bool, producer: ItemsProducer) -> None:
        self._streams.discard(producer)
        if not complete:
            log.info("item stream of {order_no} ended early: the reader went away",
                     order_no=producer.order_no)
        if not self._streams:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    async def _post_results(self, request: Request, spec: datagen.OrderSpec) -> dict[str, Any]:
        body = self._body(request)
        amounts = (await self._profile(spec))["amounts"]   # worked out once per order

        def prepare() -> list[tuple[Any, int]]:
            # Parsing 10,000 results is CPU work: done on a worker thread, refused whole on
            # the first bad field.
            return [(r, amounts[r.seq - 1]) for r in parse_results(body, spec.count)]

        try:
            rows = await self._in_worker(prepare)
        except FieldError as e:
            raise _Reply(400, e.as_json()) from None
        try:
            counts = await self._in_db(self._store.record_results, spec.order_no, rows, self._now())
        except ResultConflict as e:
            # core-api.md: the same (seq, version) with different content is answered 409 naming the seq.
            seq, version = e.seqs[0]
            raise _Reply(409, {"error": "conflict", "field": "results", "seq": seq, "version": version,
                               "message": str(e)}) from None
        log.info("order {order_no}: {new} new results, {duplicates} repeated",
                 order_no=spec.order_no, new=counts["new"], duplicates=counts["duplicates"])
        if counts["new"]:
            self._reported(spec.order_no)
        return {"order_no": spec.order_no, **counts}

    async def _post_state(self, request: Request, spec: datagen.OrderSpec) -> dict[str, Any]:
        try:
            state, detail = parse_state(self._body(request))
        except FieldError as e:
            raise _Reply(400, e.as_json()) from None
        new = await self._in_db(self._store.record_state, spec.order_no, state, detail, self._now())
        log.info("order {order_no} reported {state}{again}", order_no=spec.order_no, state=state,
                 again="" if new else " (again)")
        if new:
            self._reported(spec.order_no)
        return {"order_no": spec.order_no, "state": state, "new": new}


class _CoreResource(Resource):
    isLeaf = True

    def __init__(self, sim: CoreSimulator) -> None:
        super().__init__()
        self._sim = sim

    def render(self, request: Request) -> int:
        ensureDeferred(self._sim.handle(request)).addErrback(
            lambda f: log.failure("request handler crashed", f))
        return NOT_DONE_YET


__all__ = ["CoreSimulator"]
