"""A TCP proxy that can freeze: what a dead switch port does to a daemon's database link.

Between a daemon and PostgreSQL. Until `freeze()` it forwards bytes both ways. Frozen,
it forwards nothing in either direction and closes nothing: the daemon's queries and
the server's answers vanish, connections stay open, and new connections are accepted
but go nowhere (the startup message is never answered). Because the proxy's own kernel
keeps acknowledging both sides, neither end's TCP keepalives can tell; so "the server
notices the dead link after N seconds" (what server-side `tcp_keepalives_*` or
`tcp_user_timeout` do for a real cut) is played by closing the server side of every
frozen connection N seconds after the freeze (`server_notices_after`); with None the
server never notices. The daemon's side is never closed: only its own timeouts can end
its wait.
"""

from __future__ import annotations

from twisted.internet import protocol


class _ToServer(protocol.Protocol):
    def __init__(self, pipe: "_Pipe"):
        self.pipe = pipe

    def connectionMade(self) -> None:  # noqa: N802
        self.pipe.server = self.transport
        if self.pipe.frozen:
            self.pipe.proxy._frozen_pipe(self.pipe)
            return
        if self.pipe.pending:
            self.transport.write(b"".join(self.pipe.pending))
            self.pipe.pending = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.pipe.frozen and self.pipe.client is not None:
            self.pipe.client.write(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.pipe.server = None
        if not self.pipe.frozen and self.pipe.client is not None:
            self.pipe.client.loseConnection()


class _FromClient(protocol.Protocol):
    def __init__(self, proxy: "FreezingProxy"):
        self.proxy = proxy
        self.pipe = _Pipe(proxy)

    def connectionMade(self) -> None:  # noqa: N802
        self.pipe.client = self.transport
        self.proxy.pipes.add(self.pipe)
        protocol.ClientCreator(self.proxy.reactor, _ToServer, self.pipe).connectTCP(
            self.proxy.host, self.proxy.port).addErrback(lambda _: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if len(self.pipe.seen) < 4096:
            self.pipe.seen += data[:4096]
            if self.proxy.frozen and not self.pipe.frozen and self.proxy.matches(self.pipe):
                self.pipe.frozen = True     # a new connection of the kind frozen
                self.proxy._frozen_pipe(self.pipe)
        if self.pipe.frozen:
            return                      # dropped, as by a dead link
        if self.pipe.server is None:
            self.pipe.pending.append(data)
        else:
            self.pipe.server.write(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.pipe.client = None
        self.proxy.pipes.discard(self.pipe)
        if self.pipe.server is not None:
            self.pipe.server.loseConnection()


class _Pipe:
    def __init__(self, proxy: "FreezingProxy"):
        self.proxy = proxy
        self.client = None
        self.server = None
        self.pending: list[bytes] = []
        self.seen = b""                 # the first bytes the client sent (its startup message)
        self.frozen = False


class FreezingProxy(protocol.Factory):
    """Listens on 127.0.0.1 and forwards to host:port until frozen."""

    def __init__(self, reactor, host: str, port: int):
        self.reactor = reactor
        self.host, self.port = host, port
        self.pipes: set[_Pipe] = set()
        self.frozen = False
        self.frozen_at: float | None = None
        self.server_notices_after: float | None = None
        self.only: bytes | None = None
        self.listening = None

    def buildProtocol(self, addr):  # noqa: N802
        return _FromClient(self)

    def listen(self) -> int:
        self.listening = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.listening.getHost().port

    def matches(self, pipe: _Pipe) -> bool:
        return self.only is None or self.only in pipe.seen

    def freeze(self, server_notices_after: float | None = None, only: bytes | None = None) -> None:
        """Stop forwarding, now and for every connection made from now on; after
        *server_notices_after* seconds the server side of each is closed (None: never).
        With *only*, just the connections whose first bytes hold it (a PostgreSQL startup
        message names its application_name): one kind of link dies, the others live."""
        self.frozen = True
        self.only = only
        self.frozen_at = self.reactor.seconds()
        self.server_notices_after = server_notices_after
        for pipe in list(self.pipes):
            if self.matches(pipe):
                pipe.frozen = True
                self._frozen_pipe(pipe)

    def _frozen_pipe(self, pipe: _Pipe) -> None:
        if self.server_notices_after is None or pipe.server is None:
            return
        delay = max(0.0, self.frozen_at + self.server_notices_after - self.reactor.seconds())
        self.reactor.callLater(delay, lambda: pipe.server is not None and pipe.server.abortConnection())

    def stop(self):
        """Close everything (the end of a test)."""
        for pipe in list(self.pipes):
            for t in (pipe.client, pipe.server):
                if t is not None:
                    t.abortConnection()
        if self.listening is not None:
            return self.listening.stopListening()
        return None
