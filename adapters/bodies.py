"""A request body already in memory, for twisted.web's Agent (both the core's and the banks' clients)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesProducer:
    def __init__(self, data: bytes):
        self.data, self.length = data, len(data)

    def startProducing(self, consumer):  # noqa: N802
        # Written once (twisted.web never re-sends a request that has a body), then let go: the
        # request object can outlive the exchange in a reference cycle of the connection's
        # objects, and a megabyte body held there until the cyclic collector runs is memory
        # the daemon does not need.
        data, self.data = self.data, b""
        consumer.write(data)
        return defer.succeed(None)

    def pauseProducing(self):  # noqa: N802
        pass

    def resumeProducing(self):  # noqa: N802
        pass

    def stopProducing(self):  # noqa: N802
        pass
