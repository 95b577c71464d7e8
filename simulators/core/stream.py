"""Streams an order's items as NDJSON into a twisted.web request, in bounded memory.

A push producer registered on the request: it generates one chunk of items
at a time (items are a pure function of their position, nothing is stored),
stops when the transport's buffer is full and carries on when it drains, so a
million-item order costs one chunk of memory however slow the reader is.
Chunks are scheduled through the injected clock, which keeps the reactor
responsive between them.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from simulators import datagen

log = Logger(namespace="core-sim")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def ndjson_line(item: dict[str, Any]) -> bytes:
    """One item as the NDJSON line the core API sends (UTF-8, newline-terminated)."""
    return (_encode(item) + "\n").encode("utf-8")


@implementer(IPushProducer)
class ItemsProducer:
    """Writes items start..count of *spec* to *request*, then finishes it.

    ``done`` fires with True once the last line is written and the request
    finished, or with False if the reader went away first.
    """

    def __init__(self, clock: IReactorTime, request: Request, spec: datagen.OrderSpec,
                 chunk_items: int = 500) -> None:
        self._clock = clock
        self._request = request
        self._spec = spec
        self.order_no = spec.order_no
        self._chunk = chunk_items
        self._next = 1
        self._paused = False
        self._stopped = False
        self._call: IDelayedCall | None = None
        self.done: Deferred[bool] = Deferred()

    def start(self) -> Deferred[bool]:
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._request.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if self._call is None and not self._paused and not self._stopped:
            self._call = self._clock.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        if self._paused or self._stopped:
            return
        try:
            self._write_chunk()
        except Exception:
            # A stream cut short must not look complete: drop the connection.
            log.failure("streaming items of {order_no}", order_no=self.order_no)
            self._request.loseConnection()
            self.stopProducing()

    def _write_chunk(self) -> None:
        last = min(self._next + self._chunk - 1, self._spec.count)
        chunk = b"".join(ndjson_line(it) for it in datagen.items(self._spec, self._next, last))
        self._next = last + 1
        # write() may call pauseProducing() before it returns; _schedule respects that.
        self._request.write(chunk)
        if self._next > self._spec.count:
            self._request.unregisterProducer()
            self._request.finish()
            self._stopped = True
            self.done.callback(True)
        else:
            self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._cancel()
        self.done.callback(False)

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


@implementer(IPushProducer)
class FileItemsProducer(ItemsProducer):
    """Streams a pre-rendered NDJSON file (see CoreSimulator's cache_dir) in 1 MiB chunks."""

    def __init__(self, clock: IReactorTime, request: Request, path: str, order_no: str) -> None:
        self._clock = clock
        self._request = request
        self.order_no = order_no
        self._file = open(path, "rb")  # noqa: SIM115  (closed when the stream ends)
        self._paused = False
        self._stopped = False
        self._call: IDelayedCall | None = None
        self.done: Deferred[bool] = Deferred()
        self.done.addBoth(lambda r: (self._file.close(), r)[1])

    def _write_chunk(self) -> None:
        chunk = self._file.read(1 << 20)
        if chunk:
            self._request.write(chunk)
        if len(chunk) < (1 << 20):
            self._request.unregisterProducer()
            self._request.finish()
            self._stopped = True
            self.done.callback(True)
        else:
            self._schedule()
