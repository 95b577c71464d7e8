"""Tests of adapters/tcp.py: one framed request, one framed reply, over a real loopback TCP connection.

Each loopback test starts a small Twisted server on 127.0.0.1, port 0, that
plays one way a bank can behave; a few tests drive the client protocol in
memory (StringTransport, MemoryReactorClock) where exact byte boundaries and
timer handling must be seen.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from adapters.tcp import ExchangeError, _OneShot, exchange
from protocols.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.loopback

REQUEST = "<Msg>请求 BP01</Msg>".encode("gb18030")
REPLY = "<Msg>应答 0000</Msg>".encode("gb18030") * 50


class Bank(protocol.Protocol):
    """A server that reads one framed request and then does what `behave` says."""

    def __init__(self, behave, seen: list, lost: defer.Deferred):
        self.behave, self.seen, self.lost = behave, seen, lost
        self.decoder = FrameDecoder()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        for body in self.decoder.feed(data):
            self.seen.append(body)
            self.behave(self, body)

    def connectionLost(self, reason) -> None:  # noqa: N802
        if not self.lost.called:
            self.lost.callback(reason.value)   # the exception, not the Failure: lost is not an error


class Server:
    """A loopback listener; `lost` fires when the server side of the (first) connection closes."""

    def __init__(self, reactor, behave):
        self.seen: list[bytes] = []
        self.lost: defer.Deferred = defer.Deferred()
        self.connections = 0
        outer = self

        class F(protocol.Factory):
            def buildProtocol(self, addr):  # noqa: N802
                outer.connections += 1
                return Bank(behave, outer.seen, outer.lost)
        self.port = reactor.listenTCP(0, F(), interface="127.0.0.1")
        self.number = self.port.getHost().port

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


@pytest.fixture
def serve(reactor):
    servers: list[Server] = []

    def start(behave) -> Server:
        s = Server(reactor, behave)
        servers.append(s)
        return s
    yield start
    for s in servers:
        pytest_twisted.blockon(s.stop())


async def _exchange(reactor, port: int, **kw) -> bytes:
    kw.setdefault("read_timeout", 5)
    kw.setdefault("connect_timeout", 5)
    return await exchange(reactor, "127.0.0.1", port, REQUEST, **kw)


@pytest_twisted.ensureDeferred
async def test_one_reply_is_returned(reactor, serve) -> None:
    """The request arrives framed and whole, and the reply body comes back; the connection then closes."""
    s = serve(lambda p, body: p.transport.write(encode_frame(REPLY)))
    assert await _exchange(reactor, s.number) == REPLY
    assert s.seen == [REQUEST]
    await s.lost     # the client closed its end after the reply


@pytest_twisted.ensureDeferred
async def test_reply_split_over_many_writes(reactor, serve) -> None:
    """A reply written a few bytes at a time, across reactor turns, is reassembled."""
    framed = encode_frame(REPLY)

    def dribble(p, body, rest=framed):
        p.transport.write(rest[:7])
        if rest[7:]:
            reactor.callLater(0, dribble, p, body, rest[7:])
    s = serve(dribble)
    assert await _exchange(reactor, s.number) == REPLY


@pytest_twisted.ensureDeferred
async def test_other_width_prefix(reactor) -> None:
    """A bank with a 6-digit length prefix is spoken to and understood with width=6."""
    class Six(protocol.Protocol):
        def dataReceived(self, data):  # noqa: N802
            assert data[:6] == b"%06d" % len(REQUEST)
            self.transport.write(encode_frame(b"ok", 6))
    f = protocol.Factory.forProtocol(Six)
    port = reactor.listenTCP(0, f, interface="127.0.0.1")
    try:
        assert await _exchange(reactor, port.getHost().port, width=6) == b"ok"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_server_closes_before_replying(reactor, serve) -> None:
    """The bank reads the request and hangs up: the outcome is unknown, so sent=True."""
    s = serve(lambda p, body: p.transport.loseConnection())
    with pytest.raises(ExchangeError) as ei:
        await _exchange(reactor, s.number)
    assert ei.value.sent is True
    assert "closed before a complete reply" in str(ei.value)
    assert s.seen == [REQUEST]


@pytest_twisted.ensureDeferred
async def test_server_closes_mid_reply(reactor, serve) -> None:
    """Half a reply and a hang-up is a failure with sent=True, not a short body."""
    s = serve(lambda p, body: (p.transport.write(encode_frame(REPLY)[:100]), p.transport.loseConnection()))
    with pytest.raises(ExchangeError) as ei:
        await _exchange(reactor, s.number)
    assert ei.value.sent is True


@pytest_twisted.ensureDeferred
async def test_connection_refused(reactor, serve) -> None:
    """Nothing listening: the request cannot have been sent, so sent=False (safe to send again)."""
    s = serve(lambda p, body: None)
    number = s.number
    await s.stop()
    with pytest.raises(ExchangeError) as ei:
        await _exchange(reactor, number)
    assert ei.value.sent is False
    assert f"127.0.0.1:{number}" in str(ei.value)


@pytest_twisted.ensureDeferred
async def test_read_timeout(reactor, serve) -> None:
    """A bank that never answers fails the exchange after read_timeout (a bound, not a sleep), sent=True,
    and the connection is dropped."""
    s = serve(lambda p, body: None)
    started = reactor.seconds()
    with pytest.raises(ExchangeError) as ei:
        await _exchange(reactor, s.number, read_timeout=0.2)
    assert ei.value.sent is True
    assert "no complete reply within 0.2s" in str(ei.value)
    assert reactor.seconds() - started < 5
    await s.lost     # the client aborted the connection


@pytest.mark.parametrize("reply, words", [
    (b"99999999" + b"x" * 10, "over the 1024-byte limit"),
    (b"0000001x", "not an ASCII digit"),
    (b"<Msg/>", "not an ASCII digit"),
    (b"00000000", "zero"),
])
@pytest_twisted.ensureDeferred
async def test_bad_reply_prefix(reactor, serve, reply, words) -> None:
    """An oversize, non-digit or zero length prefix fails at once (no waiting for 10^8 bytes), sent=True."""
    s = serve(lambda p, body: p.transport.write(reply))
    with pytest.raises(ExchangeError) as ei:
        await _exchange(reactor, s.number, max_size=1024)
    assert ei.value.sent is True
    assert "bad frame" in str(ei.value) and words in str(ei.value)
    await s.lost


@pytest_twisted.ensureDeferred
async def test_reply_at_the_size_cap_is_accepted(reactor, serve) -> None:
    """A reply of exactly max_size bytes is within the cap."""
    body = b"y" * 1024
    s = serve(lambda p, b: p.transport.write(encode_frame(body)))
    assert await _exchange(reactor, s.number, max_size=1024) == body


# --- the protocol in memory ----------------------------------------------------------


def _connected(read_timeout: float = 1.0, max_size: int = 1 << 20):
    clock = MemoryReactorClock()
    proto = _OneShot(clock, encode_frame(REQUEST), 8, max_size, read_timeout)
    tr = StringTransport()
    proto.makeConnection(tr)
    return clock, proto, tr


def test_request_written_on_connect_and_reply_reassembled_byte_by_byte() -> None:
    """Fed one byte at a time, the protocol fires only after the last byte, then cancels its timer and
    closes the connection."""
    clock, proto, tr = _connected()
    assert tr.value() == encode_frame(REQUEST)
    assert proto.sent
    framed = encode_frame(b"reply")
    for b in framed[:-1]:
        proto.dataReceived(bytes([b]))
        assert not proto.result.called
    proto.dataReceived(framed[-1:])
    got = []
    proto.result.addCallback(got.append)
    assert got == [b"reply"]
    assert clock.getDelayedCalls() == []
    assert tr.disconnecting


def test_timeout_in_memory() -> None:
    """The read timer fires after exactly read_timeout and aborts the connection."""
    clock, proto, tr = _connected(read_timeout=0.2)
    errors = []
    proto.result.addErrback(errors.append)
    clock.advance(0.19)
    assert not errors
    clock.advance(0.01)
    assert errors and errors[0].check(ExchangeError)
    assert errors[0].value.sent is True
    assert tr.disconnecting or getattr(tr, "disconnected", False)


def test_timer_cancelled_when_connection_is_lost() -> None:
    """A connection lost before the reply fails the exchange and leaves no timer behind."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    clock, proto, tr = _connected()
    errors = []
    proto.result.addErrback(errors.append)
    proto.connectionLost(Failure(ConnectionDone()))
    assert errors and errors[0].value.sent is True
    assert clock.getDelayedCalls() == []
