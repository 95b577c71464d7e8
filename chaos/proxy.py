"""A TCP proxy that breaks connections on purpose, one fault per connection.

Put between the daemon and one of its peers (a bank's framed TCP link, its SFTP server, the ISO
bank's HTTPS, the core's HTTP). Each new connection takes the next fault from `choose()` (the
campaign's seeded generator) and the proxy plays it on the bytes coming back from the peer:

    pass               forward both ways, untouched
    reset              abort the client's connection at once (a TLS/TCP reset before a byte)
    cut_before_reply   forward the request, then abort both sides when the peer starts answering:
                       the peer acted, the client never hears (a lost answer)
    cut_after_reply    forward the answer, then abort the client instead of closing it (RST
                       after the reply: for TLS, a reset without close_notify)
    cut_mid            forward half of the peer's first chunk, then abort (a stream cut mid-line)
    delay              hold the peer's bytes for `delay_s` (past the client's timeout)
    duplicate          write every chunk from the peer twice (the same reply twice)
    drip               forward the peer's bytes one a `drip_s`

The proxy is protocol-blind: for TLS the faults land on records (a duplicate record is a bad
MAC, a cut is a reset), which is what a broken middlebox or a flapping link does.
"""

from __future__ import annotations

import collections
from typing import Callable

from twisted.internet import protocol

FAULTS = ("pass", "reset", "cut_before_reply", "cut_after_reply", "cut_mid", "delay", "duplicate", "drip")


class _ToPeer(protocol.Protocol):
    def __init__(self, pipe: "_Pipe") -> None:
        self.pipe = pipe

    def connectionMade(self) -> None:  # noqa: N802
        self.pipe.peer = self.transport
        if self.pipe.pending:
            self.transport.write(b"".join(self.pipe.pending))
            self.pipe.pending = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.pipe.from_peer(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.pipe.peer_gone()


class _Pipe:
    def __init__(self, proxy: "FaultProxy", client, fault: str) -> None:
        self.proxy, self.client, self.fault = proxy, client, fault
        self.peer = None
        self.pending: list[bytes] = []
        self.timers: list = []
        self.dead = False
        self.out_open = 0      # delayed/dripped writes not yet made
        self.drip_at = 0.0

    def from_client(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.write(data)

    def from_peer(self, data: bytes) -> None:
        if self.dead:
            return
        f, r = self.fault, self.proxy.reactor
        if f == "cut_before_reply":
            self.kill()
        elif f == "cut_mid":
            self.client.write(data[: max(1, len(data) // 2)])
            self.kill_soon()
        elif f == "duplicate":
            self.client.write(data)
            self.client.write(data)
        elif f == "delay":
            self.out_open += 1
            self.timers.append(r.callLater(self.proxy.delay_s, self._late_write, data))
        elif f == "drip":
            for i in range(len(data)):
                self.out_open += 1
                self.drip_at = max(self.drip_at, r.seconds()) + self.proxy.drip_s
                self.timers.append(r.callLater(self.drip_at - r.seconds(), self._late_write,
                                               data[i:i + 1]))
        else:
            self.client.write(data)

    def _late_write(self, data: bytes) -> None:
        self.out_open -= 1
        if not self.dead:
            self.client.write(data)
            if self.out_open == 0 and self.peer is None:
                self.client.loseConnection()

    def peer_gone(self) -> None:
        self.peer = None
        if self.dead:
            return
        if self.fault == "cut_after_reply":
            self.kill_soon()
        elif self.out_open == 0:
            self.client.loseConnection()

    def client_gone(self) -> None:
        self.dead = True
        for t in self.timers:
            if t.active():
                t.cancel()
        if self.peer is not None:
            self.peer.loseConnection()

    def kill_soon(self) -> None:
        """Abort once what was written has had a moment to leave (an abort drops the buffer)."""
        self.dead = True
        self.timers.append(self.proxy.reactor.callLater(0.05, self.kill))

    def kill(self) -> None:
        self.dead = True
        for t in self.timers:
            if t.active():
                t.cancel()
        self.client.abortConnection()
        if self.peer is not None:
            self.peer.abortConnection()


class _FromClient(protocol.Protocol):
    def __init__(self, proxy: "FaultProxy") -> None:
        self.proxy = proxy
        self.pipe: _Pipe | None = None

    def connectionMade(self) -> None:  # noqa: N802
        fault = self.proxy.choose()
        self.proxy.counts[fault] += 1
        self.pipe = _Pipe(self.proxy, self.transport, fault)
        self.proxy.pipes.add(self.pipe)
        if fault == "reset":
            self.pipe.dead = True
            self.transport.abortConnection()
            return
        protocol.ClientCreator(self.proxy.reactor, _ToPeer, self.pipe).connectTCP(
            self.proxy.host, self.proxy.port).addErrback(lambda _: self.transport.abortConnection())

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.pipe is not None and not self.pipe.dead:
            self.pipe.from_client(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        if self.pipe is not None:
            self.proxy.pipes.discard(self.pipe)
            self.pipe.client_gone()


class FaultProxy(protocol.Factory):
    """Listens on 127.0.0.1 and forwards to (host, port); `retarget` after the peer restarts on
    another port. `choose()` names each new connection's fault (default: always "pass");
    `counts` tells how many connections got each."""

    noisy = False

    def __init__(self, reactor, name: str, host: str, port: int, *,
                 choose: Callable[[], str] | None = None, delay_s: float = 8.0,
                 drip_s: float = 0.05) -> None:
        self.reactor, self.name, self.host, self.port = reactor, name, host, port
        self.choose = choose or (lambda: "pass")
        self.delay_s, self.drip_s = delay_s, drip_s
        self.counts: collections.Counter[str] = collections.Counter()
        self.pipes: set[_Pipe] = set()
        self.listening = None

    def buildProtocol(self, addr) -> _FromClient:  # noqa: N802
        return _FromClient(self)

    def listen(self, port: int = 0) -> int:
        self.listening = self.reactor.listenTCP(port, self, interface="127.0.0.1")
        return self.listening.getHost().port

    def retarget(self, port: int) -> None:
        self.port = port

    def cut_all(self) -> int:
        """Abort every connection open through the proxy now (a link flap): clients that keep
        connections open must reconnect, and meet `choose()` again."""
        n = 0
        for pipe in list(self.pipes):
            if not pipe.dead:
                pipe.kill()
                n += 1
        return n

    def faults_injected(self) -> int:
        return sum(n for f, n in self.counts.items() if f != "pass")

    def stop(self):
        return self.listening.stopListening() if self.listening is not None else None
