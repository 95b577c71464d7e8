"""adapters/https.py against a real twisted.web HTTPS server on loopback with mutual TLS.

The server here is scripted (it answers what each test sets), so the client's handling of
every status, of malformed and oversized answers, of time-outs and of certificate checks
is proved without the bank simulator; tests/test_isobank_sim.py runs the client against
the simulator itself.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from twisted.internet import defer, ssl
from twisted.web import resource, server

from adapters.https import HttpsBankClient, HttpsError, PageMalformed, PageTooLarge
from tests import tlsfixtures

pytestmark = pytest.mark.loopback


@pytest.fixture(scope="module")
def pki():
    return tlsfixtures.make_pki()


class _Scripted(resource.Resource):
    """Answers (method, path) with what the test put in `answers`: (status, body bytes), or
    None to never answer. Records (method, uri, headers, body) of every request."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.answers: dict[tuple[bytes, str], tuple[int, bytes] | None] = {}
        self.seen: list[tuple[bytes, str, dict, bytes]] = []
        self.hanging: list = []

    def render(self, request):
        uri = request.uri.decode()
        body = request.content.read()
        self.seen.append((request.method, uri, dict(request.requestHeaders.getAllRawHeaders()), body))
        answer = self.answers.get((request.method, urlsplit(uri).path), (404, b"{}"))
        if answer is None:
            self.hanging.append(request)
            return server.NOT_DONE_YET
        status, data = answer
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        if status == 299:  # a streamed answer with no Content-Length: chunked
            request.setResponseCode(200)
            for i in range(0, len(data), 4096):
                request.write(data[i:i + 4096])
            request.finish()
            return server.NOT_DONE_YET
        return data


class _Server:
    def __init__(self, reactor, server_cert: tlsfixtures.Issued, ca: tlsfixtures.Issued):
        self.root = _Scripted()
        site = server.Site(self.root)
        site.noisy = False
        site.log = lambda request: None
        mine = ssl.PrivateCertificate.loadPEM(server_cert.key_pem + server_cert.cert_pem)
        options = ssl.CertificateOptions(privateKey=mine.privateKey.original,
                                         certificate=mine.original,
                                         trustRoot=ssl.Certificate.loadPEM(ca.cert_pem))
        self.site = site
        self.port = reactor.listenSSL(0, site, options, interface="127.0.0.1")

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def stop(self):
        for request in self.root.hanging:
            request.channel.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)


@pytest.fixture
def make_server(reactor, pki):
    servers = []

    def make(server_cert=None, ca=None):
        s = _Server(reactor, server_cert or pki.server, ca or pki.ca)
        servers.append(s)
        return s
    yield make
    for s in servers:
        pytest_twisted.blockon(s.stop())


@pytest.fixture
def make_client(reactor, pki):
    clients = []

    def make(base_url, *, client=None, ca=None, **kw):
        client = client or pki.client
        c = HttpsBankClient(reactor, base_url, ca_pem=(ca or pki.ca).cert_pem,
                            client_cert_pem=client.cert_pem, client_key_pem=client.key_pem, **kw)
        clients.append(c)
        return c
    yield make
    for c in clients:
        pytest_twisted.blockon(c.close())


@pytest_twisted.ensureDeferred
async def test_post_payment_sends_the_document_and_reads_202_and_200(make_server, make_client):
    """The pain.001 bytes arrive unchanged as application/xml over mutual TLS (the server
    required our certificate), and 202 and 200 come back as (status, JSON)."""
    s = make_server()
    s.root.answers[(b"POST", "/payments")] = (202, b'{"msg_id": "B1", "status": "RCVD"}')
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test")
    doc = "<Document>补贴</Document>".encode()
    assert await c.post_payment(doc) == (202, {"msg_id": "B1", "status": "RCVD"})
    method, uri, headers, body = s.root.seen[0]
    assert (method, uri, body) == (b"POST", "/payments", doc)
    assert headers[b"Content-Type"] == [b"application/xml"]
    s.root.answers[(b"POST", "/payments")] = (200, b'{"msg_id": "B1", "status": "RCVD"}')
    assert await c.post_payment(doc) == (200, {"msg_id": "B1", "status": "RCVD"})


@pytest_twisted.ensureDeferred
async def test_409_is_an_answer_and_other_statuses_raise_with_status_and_body(make_server, make_client):
    """409 (DU01) is returned for the adapter to act on; 400, 413, 500 and 503 raise
    HttpsError carrying the status and the body; a 2xx without msg_id/status raises."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}/", server_name="bank.test")
    s.root.answers[(b"POST", "/payments")] = (409, b'{"error": "DU01", "message": "other content"}')
    assert await c.post_payment(b"<x/>") == (409, {"error": "DU01", "message": "other content"})
    for status in (400, 413, 500, 503):
        body = json.dumps({"error": "FF01", "message": "line 3: bad"}).encode()
        s.root.answers[(b"POST", "/payments")] = (status, body)
        with pytest.raises(HttpsError) as e:
            await c.post_payment(b"<x/>")
        assert (e.value.status, e.value.body) == (status, body)
    s.root.answers[(b"POST", "/payments")] = (202, b'{"status": "RCVD"}')
    with pytest.raises(HttpsError, match="msg_id"):
        await c.post_payment(b"<x/>")
    s.root.answers[(b"POST", "/payments")] = (202, b"not json")
    with pytest.raises(HttpsError, match="not a JSON object"):
        await c.post_payment(b"<x/>")


@pytest_twisted.ensureDeferred
async def test_reports_passes_the_cursor_and_checks_the_page(make_server, make_client):
    """reports() asks with since and limit, returns (reports, next), and refuses a page
    whose shape the contract does not allow."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test")
    page = {"reports": [{"cursor": "7", "type": "pain.002.001.11", "document": "<D/>"}], "next": "7"}
    s.root.answers[(b"GET", "/reports")] = (200, json.dumps(page).encode())
    reports, nxt = await c.reports("6", limit=5)
    assert nxt == "7" and [(r.cursor, r.type, r.document, r.refused) for r in reports] == \
        [("7", "pain.002.001.11", b"<D/>", None)]
    assert parse_qs(urlsplit(s.root.seen[-1][1]).query) == {"since": ["6"], "limit": ["5"]}
    await c.reports(None)
    assert parse_qs(urlsplit(s.root.seen[-1][1]).query) == {"limit": ["100"]}
    for bad in ({"reports": {}, "next": "1"}, {"reports": [], "next": 3},
                {"reports": [{"cursor": "1", "type": "pain.002.001.11"}], "next": "1"}):
        s.root.answers[(b"GET", "/reports")] = (200, json.dumps(bad).encode())
        with pytest.raises(PageMalformed):
            await c.reports(None)
    s.root.answers[(b"GET", "/reports")] = (503, b"busy")
    with pytest.raises(HttpsError) as e:
        await c.reports(None)
    assert e.value.status == 503


@pytest_twisted.ensureDeferred
async def test_an_answer_past_max_body_is_cut_off(make_server, make_client):
    """An answer larger than max_body fails, whether its length is announced or it is
    streamed chunked; a smaller one on the same client still works."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test", max_body=10_000)
    big = json.dumps({"reports": [], "next": "0", "pad": "x" * 50_000}).encode()
    for status in (200, 299):
        s.root.answers[(b"GET", "/reports")] = (status, big)
        with pytest.raises(PageTooLarge, match="exceeds 10000"):
            await c.reports(None)
    s.root.answers[(b"GET", "/reports")] = (200, b'{"reports": [], "next": "0"}')
    assert await c.reports(None) == ([], "0")


def _page(*docs, nxt=None):
    reports = [{"cursor": str(i), "type": "pain.002.001.11", "document": d} for i, d in enumerate(docs, 1)]
    return json.dumps({"reports": reports, "next": nxt or str(len(docs))}, ensure_ascii=False).encode()


@pytest_twisted.ensureDeferred
async def test_a_document_past_max_document_is_refused_alone_while_reading(make_server, make_client):
    """A document over max_document inside a page is refused on its own with its cursor and
    the page's other documents are taken, whether the page is announced or streamed chunked;
    what is kept of it is its head, not the whole (the cap holds while reading)."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test", max_document=4096)
    body = _page("<D>一</D>", "<D>" + "x" * 200_000 + "</D>", "<D>三</D>")
    for status in (200, 299):
        s.root.answers[(b"GET", "/reports")] = (status, body)
        reports, nxt = await c.reports(None)
        assert nxt == "3"
        assert [r.cursor for r in reports] == ["1", "2", "3"]
        assert reports[0].document == "<D>一</D>".encode() and reports[2].document == "<D>三</D>".encode()
        big = reports[1]
        assert big.document is None and "over max_document_bytes 4096" in big.refused
        assert big.size == 200_007 and len(big.raw) <= 65536


@pytest_twisted.ensureDeferred
async def test_a_document_that_does_not_decode_is_refused_alone(make_server, make_client):
    """A lone surrogate in a document's JSON string (and a string that is not UTF-8) refuses
    that document, with its raw string as it arrived, not the page."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test")
    body = (b'{"reports": [{"cursor": "1", "type": "pain.002.001.11", "document": "<D>\\ud800</D>"},'
            b' {"cursor": "2", "type": "pain.002.001.11", "document": "<D>\xff</D>"},'
            b' {"cursor": "3", "type": "pain.002.001.11", "document": "<D/>"}], "next": "3"}')
    s.root.answers[(b"GET", "/reports")] = (200, body)
    reports, nxt = await c.reports(None)
    assert nxt == "3" and [r.cursor for r in reports] == ["1", "2", "3"]
    assert reports[0].document is None and "lone surrogate U+D800" in reports[0].refused
    assert reports[0].raw == b"<D>\\ud800</D>"
    assert reports[1].document is None and "not UTF-8" in reports[1].refused
    assert reports[2].document == b"<D/>"


@pytest_twisted.ensureDeferred
async def test_a_page_stops_once_it_holds_enough(make_server, make_client):
    """Once the documents taken reach max_document bytes the rest of the page is left for the
    next call: next is the last cursor taken, not the page's."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test", max_document=3000)
    s.root.answers[(b"GET", "/reports")] = (299, _page(*["<D>" + "y" * 2000 + "</D>"] * 5))
    reports, nxt = await c.reports(None)
    assert [r.cursor for r in reports] == ["1", "2"] and nxt == "2"


@pytest_twisted.ensureDeferred
async def test_a_bank_that_does_not_answer_times_out(make_server, make_client):
    """A request the bank never answers fails with HttpsError after timeout_s (0.3 s of
    real time on loopback), instead of hanging the adapter."""
    s = make_server()
    c = make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test", timeout_s=0.3)
    s.root.answers[(b"POST", "/payments")] = None
    with pytest.raises(HttpsError, match="within 0.3s"):
        await c.post_payment(b"<x/>")
    assert len(s.root.seen) == 1


@pytest_twisted.ensureDeferred
async def test_server_name_is_checked(make_server, make_client, pki):
    """The bank's certificate must name the host we expect: 127.0.0.1 (an IP SAN) and
    bank.test pass; a server certificate from the right CA but for another name fails,
    and so does one asked for under a name it does not carry."""
    s = make_server()
    s.root.answers[(b"GET", "/reports")] = (200, b'{"reports": [], "next": "0"}')
    assert await make_client(f"https://127.0.0.1:{s.number}").reports(None) == ([], "0")
    with pytest.raises(HttpsError):
        await make_client(f"https://127.0.0.1:{s.number}", server_name="other.test").reports(None)
    other = make_server(server_cert=tlsfixtures.issue(pki.ca, "other.test", dns=("other.test",),
                                                       server=True))
    other.root.answers[(b"GET", "/reports")] = (200, b'{"reports": [], "next": "0"}')
    with pytest.raises(HttpsError):
        await make_client(f"https://127.0.0.1:{other.number}", server_name="bank.test").reports(None)
    assert other.root.seen == []


@pytest_twisted.ensureDeferred
async def test_a_server_from_another_ca_is_refused(make_server, make_client, pki):
    """A server whose certificate (for the right name) comes from a CA we do not trust is
    refused before any request is sent."""
    rogue_ca = tlsfixtures.make_ca("Rogue CA")
    rogue = tlsfixtures.issue(rogue_ca, "bank.test", dns=("bank.test",), ips=("127.0.0.1",), server=True)
    s = make_server(server_cert=rogue)
    with pytest.raises(HttpsError):
        await make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test").reports(None)
    assert s.root.seen == []


def test_bad_settings_are_refused(reactor, pki):
    """A base URL that is not https, or key material that does not load, is refused at
    construction with the setting named."""
    kw = dict(ca_pem=pki.ca.cert_pem, client_cert_pem=pki.client.cert_pem,
              client_key_pem=pki.client.key_pem)
    with pytest.raises(ValueError, match="base_url"):
        HttpsBankClient(reactor, "http://127.0.0.1:1", **kw)
    with pytest.raises(ValueError, match="ca_pem"):
        HttpsBankClient(reactor, "https://127.0.0.1:1", **{**kw, "ca_pem": b"junk"})
    with pytest.raises(ValueError, match="client_cert_pem"):
        HttpsBankClient(reactor, "https://127.0.0.1:1", **{**kw, "client_key_pem": pki.server.key_pem})


@pytest_twisted.ensureDeferred
async def test_the_iso_adapter_times_each_call_by_outcome_and_code(make_server, make_client):
    """The iso20022 adapter's client wrapper times every call to the real HTTPS client through
    its RequestTiming (what feeds gateway_bank_request_*): a POST taken is https_post ok, a 409 is
    refused with the bank's code (DU01), a 400 refused with its status, a 503 an error with its
    status, a closed port an error named by its class (connect_failed, as for cnbank and the core); a
    report page is https_get ok."""
    import socket

    from adapters.interface import RequestTiming
    from adapters.iso20022.adapter import _WatchedClient
    from twisted.internet import reactor as clock

    s = make_server()
    seen = []
    watched = _WatchedClient(make_client(f"https://127.0.0.1:{s.number}", server_name="bank.test"),
                             clock, "https")
    watched.timing = RequestTiming(lambda *a: seen.append(a))
    answers = [(202, b'{"msg_id": "B1", "status": "RCVD"}'), (409, b'{"error": "DU01", "message": "x"}'),
               (400, b'{"error": "FF01"}'), (503, b"{}")]
    for status, body in answers:
        s.root.answers[(b"POST", "/payments")] = (status, body)
        try:
            await watched.post_payment(b"<x/>")
        except HttpsError:
            pass
    s.root.answers[(b"GET", "/reports")] = (200, _page())
    assert await watched.reports(None) == ([], "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    gone = _WatchedClient(make_client(f"https://127.0.0.1:{closed}", server_name="bank.test"), clock, "https")
    gone.timing = RequestTiming(lambda *a: seen.append(a))
    with pytest.raises(HttpsError):
        await gone.post_payment(b"<x/>")
    assert [(tx, outcome, code) for tx, _, outcome, code in seen] == [
        ("https_post", "ok", ""), ("https_post", "refused", "DU01"), ("https_post", "refused", "HTTP400"),
        ("https_post", "error", "HTTP503"), ("https_get", "ok", ""),
        ("https_post", "error", "connect_failed")]
    assert all(seconds >= 0 for _, seconds, _, _ in seen)
