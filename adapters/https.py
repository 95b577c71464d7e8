"""HTTPS with mutual TLS to an ISO 20022 bank: the transport under the `iso20022` adapter.

Two calls, as iso20022.md's transport reads: `POST {base}/payments` with one
pain.001 document, and `GET {base}/reports?since=cursor` for the bank's pain.002,
camt.054 and camt.053 documents. The bank's server certificate is checked against
the bank's CA and the configured host name (service-identity), and our client
certificate is presented. Each call has one deadline on the reactor covering the
connection, the request and the whole answer; an answer is read up to a byte cap
and the connection is dropped past it. No retries here: the adapter decides, and
a payment is safe to resend because the bank is idempotent on MsgId. Bodies are
never logged (they carry names and account numbers).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, error as ierror, protocol, ssl, threads
from twisted.logger import Logger
from twisted.web import client, http
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from adapters.bodies import BytesProducer
from adapters.interface import TransportError
from protocols.iso_feed import FeedError, FeedPage, FeedReport

log = Logger()

_ERROR_BODY_CAP = 64 * 1024


class HttpsError(TransportError):
    """The bank could not be reached, the TLS handshake failed, the call timed out, or the bank
    answered with a status or body the contract does not allow. `status` is the HTTP status
    (None when there was no answer); `body` the answer's bytes, capped (b"" when none); `kind`
    the class of failure for the error counters (timeout, no_answer, broken_off, too_large,
    malformed, bad_answer, or the connect/TLS error's type), None for an answer whose status
    the contract does not allow (the status says it)."""

    kind: str | None = None

    def __init__(self, message: str, status: int | None = None, body: bytes = b"", kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body
        if kind is not None:
            self.kind = kind


@implementer(IPolicyForHTTPS)
class _MutualTLSPolicy:
    """One client TLS configuration for every connection to the bank: its CA as the only trust
    root, the name to check in its certificate, and our certificate and key."""

    def __init__(self, server_name: str | None, ca_pem: bytes, client_cert_pem: bytes,
                 client_key_pem: bytes):
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError as e:
            raise ValueError(f"ca_pem: not PEM certificates: {e}") from None
        roots = [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in cas]
        try:
            mine = ssl.PrivateCertificate.loadPEM(client_key_pem + b"\n" + client_cert_pem)
        except Exception as e:  # noqa: BLE001  (pyOpenSSL raises its own error types)
            raise ValueError(f"client_cert_pem/client_key_pem: cannot load: {e}") from None
        self.server_name = server_name
        self.trust = roots[0] if len(roots) == 1 else ssl.trustRootFromCertificates(roots)
        self.mine = mine
        self._cache: dict[str, object] = {}

    def creatorForNetloc(self, hostname: bytes, port: int):  # noqa: N802
        name = self.server_name or hostname.decode("ascii")
        creator = self._cache.get(name)
        if creator is None:
            creator = self._cache[name] = ssl.optionsForClientTLS(
                name, trustRoot=self.trust, clientCertificate=self.mine)
        return creator


class _Capped(protocol.Protocol):
    """Collects a response body up to `limit` bytes; past it the connection is dropped and the
    read fails. Cancelling `done` (the call's deadline) drops the connection too."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buf: list[bytes] = []
        self.size = 0
        self.over = False
        self.done = defer.Deferred(self._cancel)

    def _cancel(self, _d) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.over:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            self.buf = []
            self.transport.stopProducing()
            return
        self.buf.append(data)

    def connectionLost(self, reason) -> None:  # noqa: N802
        if self.done.called:  # cancelled by the deadline
            return
        if self.over:
            self.done.errback(HttpsError(f"answer exceeds {self.limit} bytes", kind="too_large"))
        elif reason.check(client.ResponseDone, http.PotentialDataLoss):
            self.done.callback(b"".join(self.buf))
        else:
            self.done.errback(reason)


class PageTooLarge(HttpsError):
    """A report page longer than the page cap (`max_body`): nothing of it was taken."""

    kind = "too_large"


class PageMalformed(HttpsError):
    """A report page that is not the feed's JSON shape: nothing of it was taken."""

    kind = "malformed"


class _FeedReader(protocol.Protocol):
    """Feeds a report page to a `FeedPage` as it arrives, at most `limit` bytes of it. Stops
    early (dropping the connection) once the page holds enough documents; past `limit`, or on
    a page that is not a feed page, drops the connection and fails."""

    def __init__(self, page: FeedPage, limit: int):
        self.page = page
        self.limit = limit
        self.size = 0
        self.error: HttpsError | None = None
        self.stopped = False
        self.done = defer.Deferred(self._cancel)

    def _cancel(self, _d) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def _stop(self) -> None:
        self.stopped = True
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.stopped:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.error = PageTooLarge(f"report page exceeds {self.limit} bytes")
            self._stop()
            return
        try:
            self.page.feed(data)
        except FeedError as e:
            self.error = PageMalformed(f"report page: {e}")
            self._stop()
            return
        if self.page.full:
            self._stop()

    def connectionLost(self, reason) -> None:  # noqa: N802
        if self.done.called:  # cancelled by the deadline
            return
        if self.error is not None:
            self.done.errback(self.error)
        elif self.page.full:
            self.done.callback((self.page.reports, self.page.reports[-1].cursor))
        elif reason.check(client.ResponseDone, http.PotentialDataLoss):
            try:
                self.done.callback(self.page.close())
            except FeedError as e:
                self.done.errback(PageMalformed(f"report page: {e}"))
        else:
            self.done.errback(reason)


class _QuietFactory(client._HTTP11ClientFactory):  # noqa: SLF001
    noisy = False


class HttpsBankClient:
    """Calls one bank's ISO 20022 HTTPS interface with mutual TLS; one instance per bank.

    `server_name` is the name checked in the bank's certificate when it differs from the
    host in `base_url` (a bank reached by IP address, or through a tunnel)."""

    def __init__(self, reactor, base_url: str, *, ca_pem: bytes, client_cert_pem: bytes,
                 client_key_pem: bytes, server_name: str | None = None, timeout_s: float = 60,
                 max_body: int = 1 << 30, max_document: int = 64 << 20):
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"base_url {base_url!r}: must be an https:// URL with a host")
        if timeout_s <= 0 or max_body <= 0 or max_document <= 0:
            raise ValueError("timeout_s, max_body and max_document must be positive")
        self.reactor = reactor
        self.base = base_url.rstrip("/")
        self.timeout = timeout_s
        self.max_body = max_body
        self.max_document = max_document
        self.pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 2
        self.pool._factory = _QuietFactory  # noqa: SLF001  (one log line per connection is noise)
        policy = _MutualTLSPolicy(server_name, ca_pem, client_cert_pem, client_key_pem)
        self.agent = client.Agent(reactor, contextFactory=policy, pool=self.pool,
                                  connectTimeout=timeout_s)

    def close(self) -> defer.Deferred:
        """Close the idle persistent connections (at shutdown, and at the end of a test)."""
        return self.pool.closeCachedConnections()

    async def _exchange(self, method: bytes, url: str, headers: Headers, body: bytes | None,
                        limit: int, page: FeedPage | None = None) -> tuple[int, object]:
        resp = await self.agent.request(method, url.encode("ascii"), headers,
                                        BytesProducer(body) if body is not None else None)
        cap = limit if 200 <= resp.code < 300 or resp.code == 409 else min(limit, _ERROR_BODY_CAP)
        if resp.length is not client.UNKNOWN_LENGTH and resp.length > cap:
            dropper = _Capped(0)  # drops the connection at the first byte
            dropper.done.addErrback(lambda _f: None)
            resp.deliverBody(dropper)
            error = PageTooLarge if page is not None and resp.code == 200 else HttpsError
            raise error(f"{method.decode()} {url}: answer of {resp.length} bytes exceeds "
                        f"{cap}", resp.code)
        if page is not None and resp.code == 200:
            feed = _FeedReader(page, cap)
            resp.deliverBody(feed)
            return resp.code, await feed.done
        reader = _Capped(cap)
        resp.deliverBody(reader)
        return resp.code, await reader.done

    async def _timed(self, method: bytes, url: str, headers: Headers, body: bytes | None,
                     limit: int, page: FeedPage | None = None) -> tuple[int, object]:
        d = defer.ensureDeferred(self._exchange(method, url, headers, body, limit, page))
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()
        deadline = self.reactor.callLater(self.timeout, expire)
        try:
            return await d
        except Exception:
            if expired:  # whatever the cancellation surfaced as, the cause is the deadline
                raise HttpsError(f"{method.decode()} {url}: no complete answer within "
                                 f"{self.timeout:g}s", kind="timeout") from None
            raise
        finally:
            if deadline.active():
                deadline.cancel()

    async def _call(self, method: bytes, url: str, headers: Headers, body: bytes | None,
                    limit: int, page: FeedPage | None = None) -> tuple[int, object]:
        try:
            return await self._timed(method, url, headers, body, limit, page)
        except HttpsError:
            raise
        except client.ResponseNeverReceived as e:
            raise HttpsError(f"{method.decode()} {url}: no answer "
                             f"({_reasons(e.reasons)})", kind="no_answer") from None
        except client.ResponseFailed as e:
            raise HttpsError(f"{method.decode()} {url}: answer broken off "
                             f"({_reasons(e.reasons)})", kind="broken_off") from None
        except Exception as e:  # noqa: BLE001  (connect errors, TLS errors, DNS: all transport)
            kind = "connect_failed" if isinstance(e, ierror.ConnectError) else type(e).__name__
            raise HttpsError(f"{method.decode()} {url}: {type(e).__name__}: {e}", kind=kind) from None

    async def post_payment(self, doc: bytes) -> tuple[int, dict]:
        """POST one pain.001 to `{base}/payments`.

        202 (taken) and 200 (that MsgId was taken before, with these very bytes) give
        `(status, {"msg_id": ..., "status": ...})`; 409 (that MsgId was taken with other
        content: DU01) gives `(409, {"error": "DU01", ...})`. Anything else raises
        HttpsError: 400 (not well-formed or not XSD-valid, FF01), 413 (too big), 5xx, no
        answer, a TLS failure."""
        url = self.base + "/payments"
        headers = Headers({b"Content-Type": [b"application/xml"],
                           b"Accept": [b"application/json"]})
        status, raw = await self._call(b"POST", url, headers, doc, 1 << 20)
        if status not in (200, 202, 409):
            raise HttpsError(f"POST {url} answered {status}", status, raw)
        answer = _json_object(raw, f"POST {url}", status)
        if status == 409:
            if not isinstance(answer.get("error"), str):
                raise HttpsError(f"POST {url} answered 409 without an error code", status, raw,
                             kind="bad_answer")
        elif not isinstance(answer.get("msg_id"), str) or not isinstance(answer.get("status"), str):
            raise HttpsError(f"POST {url} answered {status} without msg_id and status", status, raw,
                             kind="bad_answer")
        return status, answer

    async def reports(self, since: str | None, limit: int = 100) -> tuple[list[FeedReport], str | None]:
        """GET the bank's reports after cursor *since* (None: from the start), oldest first:
        `([FeedReport, ...], next_cursor)`. Pass `next_cursor` as *since* to continue; the same
        cursor comes back when there is nothing new.

        The page is parsed as it arrives (protocols.iso_feed): each document is held only up
        to `max_document` bytes, one over it or one that does not decode comes back refused
        (with its cursor) instead of failing the page; once the page holds `max_document`
        bytes of documents the rest is left for the next call (next = the last cursor taken).
        A page over `max_body` bytes raises PageTooLarge, one not in the feed's shape
        PageMalformed."""
        query = {"limit": str(limit)}
        if since is not None:
            query["since"] = since
        url = self.base + "/reports?" + urlencode(query)
        headers = Headers({b"Accept": [b"application/json"]})
        # The page is taken as it arrives on the reactor thread; its documents' strings are
        # decoded after, on a thread (a 60 MB pain.002 is most of a second of decoding).
        page = FeedPage(self.max_document, decode=False)
        status, answer = await self._call(b"GET", url, headers, None, self.max_body, page)
        if status != 200:
            raise HttpsError(f"GET {url} answered {status}", status, answer)
        reports, nxt = answer
        if any(r.undecoded for r in reports):
            await threads.deferToThread(lambda: [r.decode() for r in reports])
        return reports, nxt


def _json_object(raw: bytes, what: str, status: int) -> dict:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise HttpsError(f"{what} answered {status} with a body that is not a JSON object",
                         status, raw[:_ERROR_BODY_CAP], kind="bad_answer")
    return answer


def _reasons(reasons) -> str:
    return "; ".join(f"{f.type.__name__}: {f.getErrorMessage()}" for f in reasons) or "unknown"


__all__ = ["HttpsBankClient", "HttpsError", "PageMalformed", "PageTooLarge"]
