"""One request, one reply, over one TCP connection, length-framed (cnbank.md "Framing").

The protocol only feeds bytes to the sans-IO `FrameDecoder` and fires a
Deferred with the first complete body. Connect and read are bounded by
timeouts and the reply by the frame-size cap; the bank closes the connection
after replying, and so do we.
"""

from __future__ import annotations

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from adapters.interface import TransportError
from protocols.framing import FrameDecoder, FrameError, encode_frame


class ExchangeError(TransportError):
    """The exchange failed before a complete reply arrived."""

    def __init__(self, message: str, *, sent: bool, kind: str = "connection_lost"):
        super().__init__(message)
        # True when the request may have reached the bank: its outcome is unknown (rule 3).
        self.sent = sent
        # What went wrong, for the error counters: connect_failed, timeout, bad_frame,
        # connection_lost.
        self.kind = kind


class _OneShot(protocol.Protocol):
    def __init__(self, reactor, request: bytes, width: int, max_size: int, read_timeout: float):
        self.reactor = reactor
        self.request = request
        self.decoder = FrameDecoder(width=width, max_size=max_size)
        self.read_timeout = read_timeout
        self.result: defer.Deferred = defer.Deferred()
        self.sent = False
        self._timer = None

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.request)
        self.sent = True
        self._timer = self.reactor.callLater(self.read_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"no complete reply within {self.read_timeout:g}s", "timeout")

    def _fail(self, why: str, kind: str) -> None:
        if not self.result.called:
            self.result.errback(ExchangeError(why, sent=self.sent, kind=kind))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.result.called:
            return
        try:
            bodies = self.decoder.feed(data)
        except FrameError as e:
            self._fail(f"bad frame from the bank: {e}", "bad_frame")
            return
        if bodies:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.result.callback(bodies[0])
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:  # noqa: N802
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.result.called:
            self.result.errback(ExchangeError(
                f"connection closed before a complete reply: {reason.getErrorMessage()}",
                sent=self.sent))


async def exchange(reactor, host: str, port: int, body: bytes, *, width: int = 8,
                   max_size: int = 16 * 1024 * 1024, connect_timeout: float = 10,
                   read_timeout: float = 60) -> bytes:
    """Send one framed request and return the reply body; ExchangeError says if it may have been sent."""
    proto = _OneShot(reactor, encode_frame(body, width), width, max_size, read_timeout)
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
    try:
        await connectProtocol(endpoint, proto)
    except Exception as e:  # noqa: BLE001  (any connect failure: nothing was sent)
        raise ExchangeError(f"cannot connect to {host}:{port}: {e}", sent=False,
                            kind="connect_failed") from None
    return await proto.result
