"""The gateway RPC over a real Unix socket and real 127.0.0.1 TCP, against a fake ICommands.

The fake records every call and refuses the way the real methods do, so each
test can say both what the caller got back and whether a method ran at all.
Requests are sent with http.client from a worker thread while the reactor
serves them, the same way `gatewayctl rpc` sends them.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pwd
import re
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from gateway.rpc import MAX_BODY, MAX_BATCH, RpcResource, RpcSite, handle_body, listen_rpc, rpc_site
from gateway.rpc_api import (
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, MISSING_EVIDENCE, NOT_ALLOWED, PARSE_ERROR,
    UNKNOWN_ORDER, Caller, ICommands, RpcError,
)
from gateway.rpc_client import RpcUnavailable, call, parse_cli_params, rpc_cli_main

pytestmark = pytest.mark.loopback

TOKEN = "rpc-test-token-0123456789abcdef"
ACCOUNT = "6222021234567890123"
ID_NUMBER = "110101199003078515"


@implementer(ICommands)
class FakeCommands:
    """Stands in for gateway.commands: records calls; refuses as the real methods would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, Caller]] = []

    def methods(self) -> list[str]:
        return ["order.status", "item.correct", "health", "broken", "not_a_dict"]

    def call(self, method: str, params: dict, caller: Caller):
        self.calls.append((method, params, caller))
        if method == "health":
            return succeed({"role": "active"})
        if method == "order.status":
            if params.get("order_no") != "O1":
                return fail(RpcError(UNKNOWN_ORDER, f"no order {params.get('order_no')}", "order_no",
                                     {"known": ["O1"]}))
            return succeed({"order_no": "O1", "state": "DISPATCHED"})
        if method == "item.correct":
            for key in ("order_no", "seq", "account_no", "confirmed_by", "approved_by", "approval_ref"):
                if key not in params:
                    raise RpcError(MISSING_EVIDENCE, f"{key} is required to correct an item", key)
            return succeed({"seq": params["seq"], "state": "CORRECTED", "account_no": params["account_no"]})
        if method == "broken":
            raise ValueError(f"database detail for {ACCOUNT}")
        if method == "not_a_dict":
            return succeed([1, 2])
        raise RpcError(METHOD_NOT_FOUND, f"no method {method}", "method")


@dataclass
class Env:
    reactor: Any
    fake: FakeCommands
    journal: list
    dir: str
    sock: str
    port: int
    token_file: str
    listeners: Any
    journal_hook: list = field(default_factory=list)

    async def post(self, body: Any, *, via: str = "unix", token: str | None = TOKEN,
                   content_type: str | None = "application/json", method: str = "POST", path: str = "/rpc",
                   ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request from a worker thread: (status, lower-cased headers, body)."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if via == "tcp" and token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.in_thread(_http, self.sock if via == "unix" else self.port, method, path, body, headers)

    async def rpc(self, body: Any, **kw: Any) -> Any:
        status, headers, data = await self.post(body, **kw)
        assert status == 200, (status, data)
        assert headers["content-type"] == "application/json"
        return json.loads(data)

    def in_thread(self, f, *args, **kw):
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args, **kw)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def _http(where: str | int, method: str, path: str, body: Any, headers: dict) -> tuple[int, dict, bytes]:
    conn = _UnixConnection(where) if isinstance(where, str) else http.client.HTTPConnection("127.0.0.1", where,
                                                                                            timeout=10)
    try:
        conn.request(method, path, body, headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def short_dir() -> str:
    # tmp_path is too deep for AF_UNIX's 107 bytes.
    return tempfile.mkdtemp(prefix="rpc", dir="/tmp")


def write_token(d: str, token: str = TOKEN, mode: int = 0o600) -> str:
    path = os.path.join(d, "token")
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def rpc(reactor):
    d = short_dir()
    fake, journal = FakeCommands(), []
    env: Env

    def record(caller, method, params, outcome):
        journal.append((caller, method, params, outcome))
        for hook in env.journal_hook:
            return hook()

    token_file = write_token(d)
    site = rpc_site(fake, record, reactor=reactor)
    sock = os.path.join(d, "rpc.sock")
    listeners = listen_rpc(reactor, site, unix_path=sock, tcp_port=0, token_file=token_file)
    env = Env(reactor, fake, journal, d, sock, listeners.tcp.getHost().port, token_file, listeners)
    yield env
    pytest_twisted.blockon(listeners.stop())
    shutil.rmtree(d)


def req(method: str = "health", params: Any = None, id_: Any = 1, **extra: Any) -> dict:
    r: dict = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        r["params"] = params
    if id_ is not ...:
        r["id"] = id_
    r.update(extra)
    return r


def error_of(doc: dict) -> tuple[int, str | None]:
    return doc["error"]["code"], doc["error"]["data"]["field"]


# --- calls that succeed --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_unix_call_returns_the_result_and_names_the_peer_by_uid(rpc):
    """A call over the Unix socket reaches the method with the peer's SO_PEERCRED uid/gid and returns its result."""
    doc = await rpc.rpc(req("order.status", {"order_no": "O1"}, id_="a1"))
    assert doc == {"jsonrpc": "2.0", "result": {"order_no": "O1", "state": "DISPATCHED"}, "id": "a1"}
    assert rpc.fake.calls == [("order.status", {"order_no": "O1"},
                               Caller("unix", f"uid={os.geteuid()},gid={os.getegid()}"))]


@pytest_twisted.ensureDeferred
async def test_tcp_call_with_the_token_names_the_token_and_peer(rpc):
    """With the bearer token, a 127.0.0.1 call runs; the caller is the token's SHA-256 prefix and the peer port."""
    doc = await rpc.rpc(req(), via="tcp")
    assert doc["result"] == {"role": "active"}
    (_, _, caller), = rpc.fake.calls
    fp = hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    m = re.fullmatch(rf"token:{fp}@127\.0\.0\.1:(\d+)", caller.identity)
    assert caller.transport == "tcp" and m and int(m.group(1)) != rpc.port


@pytest.mark.parametrize("token", [None, "", "wrong-token-wrong-token-wrong", TOKEN + "x", TOKEN[:-1]],
                         ids=["missing", "empty", "wrong", "longer", "shorter"])
@pytest_twisted.ensureDeferred
async def test_tcp_without_the_right_token_is_401_and_runs_nothing(rpc, token):
    """A missing or wrong bearer token gets HTTP 401 with a JSON-RPC error; no method runs, nothing is journaled."""
    status, headers, data = await rpc.post(req(), via="tcp", token=token)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    doc = json.loads(data)
    assert error_of(doc) == (NOT_ALLOWED, "Authorization") and doc["id"] is None
    assert rpc.fake.calls == [] and rpc.journal == []


@pytest_twisted.ensureDeferred
async def test_tcp_other_auth_schemes_are_401(rpc):
    """The token is only accepted as a Bearer credential, not e.g. in Basic."""
    body = json.dumps(req()).encode()
    status, _, _ = await rpc.in_thread(_http, rpc.port, "POST", "/rpc", body,
                                       {"Content-Type": "application/json", "Authorization": f"Basic {TOKEN}"})
    assert status == 401 and rpc.fake.calls == []


# --- JSON-RPC envelope ---------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"{", b"not json", b'{"jsonrpc":"2.0","method":"health","id":1', b"\xff\xfe{}",
    b'{"jsonrpc":"2.0","method":"health","id":1,"id":2}',
    b'{"jsonrpc":"2.0","method":"health","params":{"x":NaN},"id":1}',
    b'{"jsonrpc":"2.0","method":"health","params":{"x":1e999},"id":1}',
    b"[" * 100_000, b"",
], ids=["truncated", "text", "unclosed", "not-utf8", "duplicate-member", "nan", "overflow", "deep", "empty"])
@pytest_twisted.ensureDeferred
async def test_malformed_json_is_a_parse_error_and_runs_nothing(rpc, body):
    """A body that is not strict JSON gets -32700 with id null, the method never runs, the attempt is journaled."""
    doc = await rpc.rpc(body)
    assert doc["error"]["code"] == PARSE_ERROR and doc["id"] is None
    assert rpc.fake.calls == []
    assert [(m, o["error"]["code"]) for _, m, _, o in rpc.journal] == [(None, PARSE_ERROR)]


@pytest.mark.parametrize("request_obj, field, echoed", [
    (1, None, None),
    ("health", None, None),
    ({"method": "health", "id": 5}, "jsonrpc", 5),
    ({"jsonrpc": "1.0", "method": "health", "id": 5}, "jsonrpc", 5),
    ({"jsonrpc": 2.0, "method": "health", "id": 5}, "jsonrpc", 5),
    ({"jsonrpc": "2.0", "id": "x"}, "method", "x"),
    ({"jsonrpc": "2.0", "method": 5, "id": "x"}, "method", "x"),
    ({"jsonrpc": "2.0", "method": "", "id": "x"}, "method", "x"),
    ({"jsonrpc": "2.0", "method": "health", "params": "x", "id": 3}, "params", 3),
    ({"jsonrpc": "2.0", "method": "health", "params": None, "id": 3}, "params", 3),
    ({"jsonrpc": "2.0", "method": "health", "id": 3, "extra": 1}, "extra", 3),
    ({"jsonrpc": "2.0", "method": "health", "id": True}, "id", None),
    ({"jsonrpc": "2.0", "method": "health", "id": {"a": 1}}, "id", None),
    ({"jsonrpc": "2.0", "method": "health", "id": [1]}, "id", None),
    ({"jsonrpc": "2.0", "method": "health"} | {"jsonrpc": "2.1"}, "jsonrpc", None),
], ids=["number", "string", "no-jsonrpc", "jsonrpc-1.0", "jsonrpc-number", "no-method", "method-number",
        "method-empty", "params-string", "params-null", "unknown-member", "id-bool", "id-object", "id-array",
        "jsonrpc-2.1-notification"])
@pytest_twisted.ensureDeferred
async def test_invalid_request_objects_are_refused_before_any_method(rpc, request_obj, field, echoed):
    """Anything but a valid Request object gets -32600 naming the member at fault, with a usable id echoed."""
    doc = await rpc.rpc(json.dumps(request_obj).encode())
    assert error_of(doc) == (INVALID_REQUEST, field)
    assert doc["id"] == echoed and "result" not in doc
    assert rpc.fake.calls == []
    assert len(rpc.journal) == 1


@pytest.mark.parametrize("method", ["order.cancel", "rpc.discover", "Health"])
@pytest_twisted.ensureDeferred
async def test_unknown_method_is_32601_and_never_reaches_the_commands(rpc, method):
    """A method not in commands.methods() gets -32601 naming the method field; call() is not invoked."""
    doc = await rpc.rpc(req(method, {"order_no": "O1"}, id_=9))
    assert error_of(doc) == (METHOD_NOT_FOUND, "method") and doc["id"] == 9
    assert rpc.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_refusals_carry_code_message_and_the_field_at_fault(rpc):
    """An RpcError raised (or errbacked) by a method becomes its code, message, field and data, id echoed."""
    doc = await rpc.rpc(req("item.correct", {"order_no": "O1", "seq": 3, "account_no": ACCOUNT}, id_=4))
    assert doc == {"jsonrpc": "2.0", "id": 4, "error": {
        "code": MISSING_EVIDENCE, "message": "confirmed_by is required to correct an item",
        "data": {"field": "confirmed_by"}}}
    doc = await rpc.rpc(req("order.status", {"order_no": "O9"}, id_=5))
    assert doc["error"] == {"code": UNKNOWN_ORDER, "message": "no order O9",
                            "data": {"field": "order_no", "known": ["O1"]}}
    assert len(rpc.fake.calls) == 2


@pytest_twisted.ensureDeferred
async def test_params_by_position_are_invalid_params(rpc):
    """Params given as an array get -32602 naming "params"; methods take named params only."""
    doc = await rpc.rpc(req("order.status", ["O1"], id_=6))
    assert error_of(doc) == (INVALID_PARAMS, "params") and doc["id"] == 6
    assert rpc.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_absent_params_are_an_empty_object(rpc):
    """A request without params calls the method with {}."""
    await rpc.rpc(req("health"))
    assert rpc.fake.calls[0][:2] == ("health", {})


@pytest.mark.parametrize("method", ["broken", "not_a_dict"])
@pytest_twisted.ensureDeferred
async def test_a_method_that_fails_is_an_internal_error_without_its_detail(rpc, method):
    """An exception other than RpcError (or a result that is not a dict) is -32603; its text goes to the
    log only, with the account number it quotes masked."""
    events: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "gateway.rpc":
            events.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    try:
        doc = await rpc.rpc(req(method, {"account_no": ACCOUNT}, id_=7))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert doc["error"]["code"] == INTERNAL_ERROR and doc["id"] == 7
    assert "database" not in doc["error"]["message"] and ACCOUNT not in json.dumps(doc)
    assert rpc.journal[-1][3]["error"]["code"] == INTERNAL_ERROR
    logged = "\n".join(events)
    assert f"RPC {method}" in logged and ACCOUNT not in logged
    if method == "broken":
        assert "database detail for 6222***********0123" in logged


@pytest.mark.parametrize("id_", ["abc", "", 7, 0, -1, 1.5, 2 ** 70, None], ids=repr)
@pytest_twisted.ensureDeferred
async def test_the_id_is_echoed_exactly(rpc, id_):
    """String, number and null ids come back as sent, on results and on errors."""
    ok = await rpc.rpc(req("health", id_=id_))
    assert ok["id"] == id_ and type(ok["id"]) is type(id_)
    refused = await rpc.rpc(req("nope", id_=id_))
    assert refused["id"] == id_ and "error" in refused


@pytest.mark.parametrize("method", ["health", "nope", "item.correct"])
@pytest_twisted.ensureDeferred
async def test_notifications_run_but_are_never_answered(rpc, method):
    """A request without id runs and is journaled, and gets 204 with no body, even when it is refused."""
    status, _, data = await rpc.post(req(method, id_=...))
    assert (status, data) == (204, b"")
    assert [c[0] for c in rpc.fake.calls] == ([method] if method != "nope" else [])
    assert [m for _, m, _, _ in rpc.journal] == [method]


# --- batches -------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_batch_is_served_in_order_and_notifications_are_left_out(rpc):
    """A batch runs its elements in order; each valid or invalid element is answered except notifications."""
    batch = [req("health", id_=1), req("order.status", {"order_no": "O1"}, id_=...), 42,
             req("nope", id_="x"), req("order.status", {"order_no": "O2"}, id_=2)]
    doc = await rpc.rpc(batch)
    assert [d["id"] for d in doc] == [1, None, "x", 2]
    assert doc[0]["result"] == {"role": "active"}
    assert [d.get("error", {}).get("code") for d in doc[1:]] == [INVALID_REQUEST, METHOD_NOT_FOUND, UNKNOWN_ORDER]
    assert [c[0] for c in rpc.fake.calls] == ["health", "order.status", "order.status"]
    assert [m for _, m, _, _ in rpc.journal] == ["health", "order.status", None, "nope", "order.status"]


@pytest_twisted.ensureDeferred
async def test_batch_of_notifications_only_gets_204(rpc):
    """A batch of notifications runs them all and answers 204 with no body."""
    status, _, data = await rpc.post([req(id_=...), req(id_=...)])
    assert (status, data) == (204, b"") and len(rpc.fake.calls) == 2


@pytest.mark.parametrize("size", [0, MAX_BATCH + 1])
@pytest_twisted.ensureDeferred
async def test_empty_or_oversized_batch_is_one_invalid_request(rpc, size):
    """An empty batch, or one over MAX_BATCH, is a single -32600 (not an array) and runs nothing."""
    doc = await rpc.rpc([req(id_=i) for i in range(size)])
    assert doc["error"]["code"] == INVALID_REQUEST and doc["id"] is None
    assert rpc.fake.calls == []


# --- HTTP ----------------------------------------------------------------------

@pytest.mark.parametrize("method, path, content_type, status", [
    ("GET", "/rpc", "application/json", 405),
    ("PUT", "/rpc", "application/json", 405),
    ("HEAD", "/rpc", "application/json", 405),
    ("POST", "/", "application/json", 404),
    ("POST", "/rpc/", "application/json", 404),
    ("POST", "/rpc/x", "application/json", 404),
    ("POST", "/api", "application/json", 404),
    ("POST", "/rpc", None, 415),
    ("POST", "/rpc", "text/plain", 415),
    ("POST", "/rpc", "application/json-patch+json", 415),
    ("POST", "/rpc", "application/json; charset=latin-1", 415),
])
@pytest_twisted.ensureDeferred
async def test_http_other_than_post_json_to_rpc_is_refused(rpc, method, path, content_type, status):
    """Wrong path is 404, wrong verb 405 (Allow: POST), wrong media type 415; no method runs."""
    got, headers, data = await rpc.post(req(), method=method, path=path, content_type=content_type)
    assert got == status
    if status == 405:
        assert headers["allow"] == "POST"
    if method != "HEAD":
        assert json.loads(data)["error"]["code"] == INVALID_REQUEST
    assert rpc.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_json_media_type_parameters_are_accepted(rpc):
    """`application/json; charset=utf-8` (any case) is JSON."""
    doc = await rpc.rpc(req(), content_type="Application/JSON; Charset=UTF-8")
    assert doc["result"] == {"role": "active"}


@pytest_twisted.ensureDeferred
async def test_body_of_exactly_1_mib_is_served(rpc):
    """The cap is inclusive: a valid request padded to exactly 1 MiB runs."""
    body = json.dumps(req()).encode()
    doc = await rpc.rpc(body + b" " * (MAX_BODY - len(body)))
    assert doc["result"] == {"role": "active"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("via", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_body_over_1_mib_is_413_and_runs_nothing(rpc, chunked, via):
    """A body one byte over 1 MiB, declared or chunked, gets 413 with a JSON-RPC error; no method runs."""
    body = json.dumps(req()).encode()
    body += b" " * (MAX_BODY + 1 - len(body))
    status, _, data = await rpc.post(iter([body[:500_000], body[500_000:]]) if chunked else body, via=via)
    assert status == 413
    assert json.loads(data)["error"]["code"] == INVALID_REQUEST
    assert rpc.fake.calls == []
    assert [(m, o["error"]["code"]) for _, m, _, o in rpc.journal] == [(None, INVALID_REQUEST)]


@pytest_twisted.ensureDeferred
async def test_unauthenticated_big_body_is_401(rpc):
    """Without the token a body over the cap is answered 401 (not 413): the token is checked first."""
    status, _, _ = await rpc.post(b" " * (MAX_BODY + 10), via="tcp", token=None)
    assert status == 401 and rpc.journal == []


def _send_huge_declared_body(path: str) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        s.sendall(b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n" + b" " * 65536)
        try:
            return s.recv(65536)
        except ConnectionResetError:
            return b""
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_declared_body_far_over_the_cap_is_cut_off_at_once(rpc):
    """A request declaring 100 MiB is not drained: the connection is closed before the body is sent."""
    assert await rpc.in_thread(_send_huge_declared_body, rpc.sock) == b""
    assert rpc.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_rpc_resource_on_a_plain_site_refuses_everything(reactor):
    """Served by a plain twisted Site (no caller, no cap), the resource answers 500 and runs nothing."""
    fake = FakeCommands()
    root = Resource()
    root.putChild(b"rpc", RpcResource(fake, None))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        status, _, data = await deferToThreadPool(reactor, reactor.getThreadPool(), _http, port.getHost().port,
                                                  "POST", "/rpc", json.dumps(req()).encode(),
                                                  {"Content-Type": "application/json"})
    finally:
        await port.stopListening()
    assert status == 500 and json.loads(data)["error"]["code"] == INTERNAL_ERROR
    assert fake.calls == []


@pytest_twisted.ensureDeferred
async def test_rpc_site_without_token_refuses_tcp(reactor):
    """An RpcSite handed to listenTCP without a token answers 401 to everyone: no open TCP by mistake."""
    fake = FakeCommands()
    port = reactor.listenTCP(0, rpc_site(fake, None, reactor=reactor), interface="127.0.0.1")
    try:
        status, _, _ = await deferToThreadPool(reactor, reactor.getThreadPool(), _http, port.getHost().port,
                                               "POST", "/rpc", json.dumps(req()).encode(),
                                               {"Content-Type": "application/json",
                                                "Authorization": f"Bearer {TOKEN}"})
    finally:
        await port.stopListening()
    assert status == 401 and fake.calls == []


# --- journal -------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_journal_gets_every_call_with_caller_and_masked_params(rpc):
    """Each call reaches the journal with its caller, params with ID and account numbers masked, and outcome;
    the method itself gets the clear values."""
    params = {"order_no": "O1", "seq": 3, "account_no": ACCOUNT, "id_number": ID_NUMBER,
              "confirmed_by": "张三", "approved_by": "李四", "approval_ref": "审批-7"}
    await rpc.rpc(req("item.correct", params, id_=1))
    await rpc.rpc(req("item.correct", {"order_no": "O1", "account_no": ACCOUNT}, id_=2), via="tcp")
    assert rpc.fake.calls[0][1] == params
    (c1, m1, p1, o1), (c2, m2, p2, o2) = rpc.journal
    assert (c1.transport, c2.transport) == ("unix", "tcp")
    assert c1 == rpc.fake.calls[0][2] and c2 == rpc.fake.calls[1][2]
    assert m1 == m2 == "item.correct"
    assert p1 == params | {"account_no": "6222***********0123", "id_number": "1101**********8515"}
    assert p2 == {"order_no": "O1", "account_no": "6222***********0123"}
    assert o1 == {"result": {"seq": 3, "state": "CORRECTED", "account_no": "6222***********0123"}}
    assert o2 == {"error": {"code": MISSING_EVIDENCE, "message": "seq is required to correct an item",
                            "field": "seq"}}
    assert ACCOUNT not in repr(rpc.journal) and ID_NUMBER not in repr(rpc.journal)


@pytest_twisted.ensureDeferred
async def test_numbers_sent_as_json_numbers_are_masked_too(rpc):
    """An account or ID number sent as a JSON number is masked in the journal like a string one."""
    await rpc.rpc(req("order.status", {"order_no": "O1", "account_no": int(ACCOUNT),
                                       "nested": [{"id_number": 110101199003078515}]}))
    assert rpc.journal[0][2] == {"order_no": "O1", "account_no": "6222***********0123",
                                 "nested": [{"id_number": "1101**********8515"}]}


@pytest_twisted.ensureDeferred
async def test_answer_waits_for_the_journal(rpc):
    """When the journal callback returns a Deferred, the caller is answered only after it fires."""
    done: list[bool] = []
    rpc.journal_hook.append(lambda: task.deferLater(rpc.reactor, 0.05, done.append, True))
    doc = await rpc.rpc(req())
    assert doc["result"] == {"role": "active"} and done == [True]


@pytest_twisted.ensureDeferred
async def test_a_failing_journal_does_not_lose_the_answer(rpc):
    """A journal callback that raises is logged; the call that already ran is still answered."""
    def boom():
        raise RuntimeError("journal down")
    rpc.journal_hook.append(boom)
    doc = await rpc.rpc(req())
    assert doc["result"] == {"role": "active"}


@pytest_twisted.ensureDeferred
async def test_handle_body_alone():
    """handle_body needs no socket: bytes in, bytes (or None for a notification) out."""
    fake = FakeCommands()
    out = await handle_body(json.dumps(req("health", id_="q")).encode(), fake, Caller("unix", "unix"))
    assert json.loads(out) == {"jsonrpc": "2.0", "result": {"role": "active"}, "id": "q"}
    assert await handle_body(json.dumps(req("health", id_=...)).encode(), fake, Caller("unix", "unix")) is None


# --- listening -----------------------------------------------------------------

def test_socket_file_is_0660(rpc):
    """The Unix socket is created with mode 0660."""
    st = os.stat(rpc.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660


@pytest_twisted.ensureDeferred
async def test_no_connection_is_accepted_before_the_mode_is_set(reactor, monkeypatch):
    """At the moment the socket file gets its mode, connecting to it is still refused (bound, not listening),
    so no one can connect through the wider mode the file was created with."""
    import twisted.internet.unix as tw_unix
    real_chmod, seen = os.chmod, []

    def chmod(path, mode, *a, **kw):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            seen.append("accepted")
        except ConnectionRefusedError:
            seen.append("refused")
        finally:
            probe.close()
        return real_chmod(path, mode, *a, **kw)
    monkeypatch.setattr(tw_unix.os, "chmod", chmod)
    d = short_dir()
    try:
        listeners = listen_rpc(reactor, rpc_site(FakeCommands(), None), unix_path=os.path.join(d, "s"))
        monkeypatch.undo()
        await listeners.stop()
    finally:
        shutil.rmtree(d)
    assert seen == ["refused"]


def test_tcp_listens_on_loopback_only(rpc):
    """The TCP listener is bound to 127.0.0.1, never a wildcard address."""
    assert rpc.listeners.tcp.getHost().host == "127.0.0.1"


def _connect_as_nobody(path: str) -> int:
    """Fork; the child drops to nobody (no supplementary groups) and connects. Exit 0 ok, 13 EACCES."""
    pw = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # child: nothing here may touch the reactor or pytest
        code = 99
        try:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                code = 0
            except PermissionError:
                code = 13
            except OSError as e:
                code = 20 + (e.errno or 0) % 70
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to fork a child that drops to the nobody user")
def test_a_user_outside_owner_and_group_cannot_connect(rpc):
    """nobody (not owner, not in the group) gets EACCES on the 0660 socket; the same child connects when
    the socket is 0666, so the refusal comes from the socket's mode."""
    os.chmod(rpc.dir, 0o755)  # let nobody reach the socket: only its own mode may refuse
    assert _connect_as_nobody(rpc.sock) == 13
    os.chmod(rpc.sock, 0o666)
    assert _connect_as_nobody(rpc.sock) == 0


@pytest_twisted.ensureDeferred
async def test_stopping_removes_the_socket_file(reactor):
    """stop() closes both listeners and removes the socket file."""
    d = short_dir()
    try:
        path = os.path.join(d, "s")
        listeners = listen_rpc(reactor, rpc_site(FakeCommands(), None), unix_path=path,
                               tcp_port=0, token_file=write_token(d))
        await listeners.stop()
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(d)


@pytest_twisted.ensureDeferred
async def test_stale_socket_file_is_replaced(reactor):
    """A socket file nobody serves (a crashed daemon's) is removed and the RPC listens in its place."""
    d = short_dir()
    try:
        path = os.path.join(d, "s")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        listeners = listen_rpc(reactor, rpc_site(FakeCommands(), None), unix_path=path)
        assert os.path.exists(path) and stat.S_IMODE(os.stat(path).st_mode) == 0o660
        await listeners.stop()
    finally:
        shutil.rmtree(d)


def test_a_live_socket_is_not_taken_over(reactor):
    """If another process serves on the path, start-up fails and that socket stays."""
    d = short_dir()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = os.path.join(d, "s")
        live.bind(path)
        live.listen(1)
        with pytest.raises(CannotListenError, match="another process"):
            listen_rpc(reactor, rpc_site(FakeCommands(), None), unix_path=path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        live.close()
        shutil.rmtree(d)


def test_a_regular_file_at_the_path_is_left_alone(reactor):
    """A file that is not a socket is never deleted: start-up fails naming unix_path."""
    d = short_dir()
    try:
        path = os.path.join(d, "s")
        with open(path, "w") as f:
            f.write("keep me")
        with pytest.raises(ValueError, match="unix_path .* not a socket"):
            listen_rpc(reactor, rpc_site(FakeCommands(), None), unix_path=path)
        assert open(path).read() == "keep me"
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("case, match", [
    ("no-token-file", "token_file: required"),
    ("missing-token-file", "token_file .* cannot read"),
    ("world-readable", "token_file .* mode 0644"),
    ("short-token", "token_file .* 16 to 4096"),
    ("world-mode", "unix_mode 0666"),
    ("long-path", "unix_path .* 107"),
])
def test_bad_settings_stop_start_up_and_leave_nothing_listening(reactor, case, match):
    """Each bad setting fails listen_rpc with a message naming it, before any socket exists."""
    d = short_dir()
    try:
        path = os.path.join(d, "s")
        kw: dict[str, Any] = {"unix_path": path, "tcp_port": 0}
        if case == "missing-token-file":
            kw["token_file"] = os.path.join(d, "absent")
        elif case == "world-readable":
            kw["token_file"] = write_token(d, mode=0o644)
        elif case == "short-token":
            kw["token_file"] = write_token(d, token="short")
        elif case == "world-mode":
            kw.update(token_file=write_token(d), unix_mode=0o666)
        elif case == "long-path":
            kw.update(token_file=write_token(d), unix_path=os.path.join(d, "x" * 120))
        with pytest.raises(ValueError, match=match):
            listen_rpc(reactor, rpc_site(FakeCommands(), None), **kw)
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(d)


def test_listen_rpc_wants_an_rpc_site(reactor):
    """A plain Site (no cap, no caller, no token check) is refused by listen_rpc."""
    with pytest.raises(TypeError):
        listen_rpc(reactor, Site(Resource()), unix_path="/tmp/never-created.sock")
    assert isinstance(rpc_site(FakeCommands(), None), RpcSite)


# --- client and CLI ------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["order_no=O1"], {"order_no": "O1"}),
    (["seqs=[1,2]"], {"seqs": [1, 2]}),
    (["seqs=all_failed"], {"seqs": "all_failed"}),
    (["seq=5", "ok=true", "x=null", "r=1.5"], {"seq": 5, "ok": True, "x": None, "r": 1.5}),
    (['order_no="O 1"', "n=20260001"], {"order_no": "O 1", "n": 20260001}),
    (["order_no=20260001", "account_no=6222021234567890123", "id_number=110101199003078515", "seq=7"],
     {"order_no": "20260001", "account_no": "6222021234567890123", "id_number": "110101199003078515", "seq": 7}),
    (["approval_ref=1e3", "reason=null", "year=2026"], {"approval_ref": "1e3", "reason": "null", "year": 2026}),
    (["reason=账号已销户, 重新发放", "e=", "eq=a=b"], {"reason": "账号已销户, 重新发放", "e": "", "eq": "a=b"}),
    (["v=NaN", "w=Infinity", "o={\"a\": 1}"], {"v": "NaN", "w": "Infinity", "o": {"a": 1}}),
])
def test_parse_cli_params(args, expected):
    """key=value: JSON values are JSON, others strings (NaN too); identifiers and other text params stay text."""
    assert parse_cli_params(args) == expected


@pytest.mark.parametrize("args", [["order_no"], ["=x"], ["seqs=[1,2]", "seqs=all_failed"]])
def test_parse_cli_params_refuses_ambiguity(args):
    """A parameter without '=', without a key, or given twice is an error, not a guess."""
    with pytest.raises(ValueError):
        parse_cli_params(args)


@pytest_twisted.ensureDeferred
async def test_cli_prints_the_result_masked_and_exits_0(rpc):
    """`gatewayctl rpc --socket PATH item.correct ...` reaches the method with typed params, prints masked JSON."""
    out, err = io.StringIO(), io.StringIO()
    code = await rpc.in_thread(rpc_cli_main, [
        "--socket", rpc.sock, "item.correct", "order_no=O1", "seq=3", f"account_no={ACCOUNT}",
        "confirmed_by=张三", "approved_by=李四", "approval_ref=A-7"], stdout=out, stderr=err)
    assert (code, err.getvalue()) == (0, "")
    assert json.loads(out.getvalue()) == {"seq": 3, "state": "CORRECTED", "account_no": "6222***********0123"}
    method, params, caller = rpc.fake.calls[0]
    assert (method, params["seq"], params["account_no"], caller.transport) == ("item.correct", 3, ACCOUNT, "unix")


@pytest_twisted.ensureDeferred
async def test_cli_refusal_prints_code_and_field_and_exits_1(rpc):
    """A refusal goes to stderr with its name, code, field and message; exit code 1."""
    out, err = io.StringIO(), io.StringIO()
    code = await rpc.in_thread(rpc_cli_main, ["order.status", "order_no=O9"], unix_path=rpc.sock,
                               stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == ""
    assert err.getvalue().startswith(f"refused: UNKNOWN_ORDER ({UNKNOWN_ORDER}) field=order_no: no order O9")


@pytest_twisted.ensureDeferred
async def test_cli_over_tcp_with_token_file(rpc):
    """With --url and --token-file the CLI calls over 127.0.0.1; with a wrong token it is refused (exit 1)."""
    out, err = io.StringIO(), io.StringIO()
    url = f"http://127.0.0.1:{rpc.port}/rpc"
    code = await rpc.in_thread(rpc_cli_main, ["--url", url, "--token-file", rpc.token_file, "health"],
                               stdout=out, stderr=err)
    assert (code, json.loads(out.getvalue())) == (0, {"role": "active"})
    bad = write_token(rpc.dir, token="not-the-token-not-the-token")
    err = io.StringIO()
    code = await rpc.in_thread(rpc_cli_main, ["--url", url, "--token-file", bad, "health"],
                               stdout=io.StringIO(), stderr=err)
    assert code == 1 and f"NOT_ALLOWED ({NOT_ALLOWED}) field=Authorization" in err.getvalue()
    assert len(rpc.fake.calls) == 1


def test_cli_cannot_connect_exits_2():
    """No socket at the path: exit 2 and a message naming where it tried."""
    err = io.StringIO()
    assert rpc_cli_main(["--socket", "/tmp/no-such-gateway.sock", "health"], stderr=err) == 2
    assert "unix:/tmp/no-such-gateway.sock" in err.getvalue()


@pytest.mark.parametrize("args", [[], ["health", "noequals"], ["--url", "ftp://x/rpc", "health"],
                                  ["--bogus", "health"]])
def test_cli_usage_errors_exit_64(args):
    """Bad arguments exit 64 (EX_USAGE), distinct from refused (1) and unreachable (2)."""
    err = io.StringIO()
    assert rpc_cli_main(args, unix_path="/tmp/no-such-gateway.sock", stderr=err) == 64
    assert "gatewayctl rpc" in err.getvalue()


@pytest_twisted.ensureDeferred
async def test_client_call_raises_rpc_error_with_field(rpc):
    """rpc_client.call returns the result, or raises RpcError carrying code, field and extra data."""
    assert await rpc.in_thread(call, "health", unix_path=rpc.sock) == {"role": "active"}
    with pytest.raises(RpcError) as e:
        await rpc.in_thread(call, "order.status", {"order_no": "O9"}, unix_path=rpc.sock)
    assert (e.value.code, e.value.field, e.value.data) == (UNKNOWN_ORDER, "order_no", {"known": ["O1"]})


def test_client_garbage_reply_is_unavailable():
    """A server answering something that is not JSON-RPC gives RpcUnavailable, not a result."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    import threading

    def answer():
        c, _ = srv.accept()
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        c.close()
    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(RpcUnavailable, match="not JSON"):
            call("health", url=f"http://127.0.0.1:{srv.getsockname()[1]}/rpc", token=TOKEN, timeout=5)
    finally:
        t.join(5)
        srv.close()


# --- robustness: nesting, deadlines, the connection cap, every request answered -------------

def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("via", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_params_nested_600_deep_are_answered_with_the_limit(rpc, via):
    """A request whose params nest 600 levels deep is answered -32600 naming the limit (32), journaled,
    and runs nothing (before, the masking recursed outside any try and the caller never got an answer)."""
    doc = await rpc.rpc(req("order.status", {"order_no": "O1", "x": _nested(600)}, id_=11), via=via)
    assert doc["id"] == 11 and doc["error"]["code"] == INVALID_REQUEST
    assert doc["error"]["data"]["limit"] == 32 and "32" in doc["error"]["message"]
    assert rpc.fake.calls == []
    assert [(m, o["error"]["code"]) for _, m, _, o in rpc.journal] == [("order.status", INVALID_REQUEST)]


@pytest_twisted.ensureDeferred
async def test_nesting_up_to_the_limit_is_served(rpc):
    """The limit is not lower than it says: a request 32 levels deep in all (params 30 deep) runs."""
    doc = await rpc.rpc(req("order.status", {"order_no": "O1", "x": _nested(29)}, id_=12))
    assert doc["result"]["order_no"] == "O1"
    doc = await rpc.rpc(req("order.status", {"order_no": "O1", "x": _nested(31)}, id_=13))
    assert doc["error"]["code"] == INVALID_REQUEST


@pytest_twisted.ensureDeferred
async def test_a_failure_outside_the_method_is_still_answered_and_journaled(rpc, monkeypatch):
    """Whatever raises while a request is handled (here the masking of its params) becomes -32603 for the
    caller, with its id, and an entry in the journal; the connection is not left hanging."""
    import gateway.rpc as rpcmod

    def broken(record):
        raise RuntimeError(f"mask failed on {ACCOUNT}")
    monkeypatch.setattr(rpcmod, "mask_record", broken)
    doc = await rpc.rpc(req("order.status", {"order_no": "O1"}, id_=14))
    assert doc["id"] == 14 and doc["error"]["code"] == INTERNAL_ERROR and ACCOUNT not in json.dumps(doc)
    assert [(m, o["error"]["code"]) for _, m, _, o in rpc.journal] == [("order.status", INTERNAL_ERROR)]


@dataclass
class Timed:
    reactor: Any
    clock: task.Clock
    fake: FakeCommands
    dir: str
    port: int
    site: Any          # the TCP listener's site (its own connection count)
    listeners: Any

    def in_thread(self, f, *args, **kw):
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args, **kw)

    async def until(self, check, what: str) -> None:
        for _ in range(1000):
            if check():
                return
            await task.deferLater(self.reactor, 0.005, lambda: None)
        raise AssertionError(f"never: {what}")


@pytest.fixture
def timed(reactor):
    """The RPC over real sockets whose deadlines run on a task.Clock the test advances."""
    d = short_dir()
    clock = task.Clock()
    fake = FakeCommands()
    site = rpc_site(fake, None, reactor=clock, head_timeout=10, body_timeout=30, max_connections=2)
    listeners = listen_rpc(reactor, site, unix_path=os.path.join(d, "rpc.sock"), tcp_port=0,
                           token_file=write_token(d))
    yield Timed(reactor, clock, fake, d, listeners.tcp.getHost().port, listeners.tcp.factory, listeners)
    pytest_twisted.blockon(listeners.stop())
    shutil.rmtree(d)


def _closed_by_peer(s: socket.socket) -> bool:
    """True once the server closed or reset the connection (reads until EOF; 5 s bound)."""
    s.settimeout(5)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest_twisted.ensureDeferred
async def test_a_client_trickling_its_headers_is_cut_at_the_head_deadline(timed):
    """A TCP client that sends header bytes one at a time, never the token, is cut 10 s (the head
    deadline) after it connected, although it kept sending; nothing runs. Before, the idle timeout
    restarted on every byte and the token was only looked at after the last header."""
    s = socket.create_connection(("127.0.0.1", timed.port))
    try:
        s.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await timed.until(lambda: timed.site.open_connections == 1, "the connection is open")
        for _ in range(9):
            timed.clock.advance(1.0)
            s.sendall(b"a")
        await task.deferLater(timed.reactor, 0.05, lambda: None)   # let the bytes arrive
        assert timed.site.open_connections == 1
        timed.clock.advance(1.5)
        assert await timed.in_thread(_closed_by_peer, s)
        await timed.until(lambda: timed.site.open_connections == 0, "the connection is counted closed")
        assert timed.fake.calls == []
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_a_client_withholding_its_body_is_cut_at_the_body_deadline(timed):
    """Head complete (with the token) but the declared body never finished: cut 30 s after the head."""
    s = socket.create_connection(("127.0.0.1", timed.port))
    try:
        s.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"json")
        await timed.until(lambda: timed.site.open_connections == 1, "the connection is open")
        await task.deferLater(timed.reactor, 0.05, lambda: None)
        timed.clock.advance(29)
        await task.deferLater(timed.reactor, 0.05, lambda: None)
        assert timed.site.open_connections == 1
        timed.clock.advance(2)
        assert await timed.in_thread(_closed_by_peer, s)
        assert timed.fake.calls == []
    finally:
        s.close()


def _request_bytes(body: bytes) -> bytes:
    return (b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + TOKEN.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _read_response(s: socket.socket) -> bytes:
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(rest) < length:
        rest += s.recv(65536)
    return head + b"\r\n\r\n" + rest


@pytest_twisted.ensureDeferred
async def test_a_kept_alive_connection_gets_a_new_head_deadline_after_each_answer(timed):
    """After an answer the connection may send its next request within the head deadline; past it, cut."""
    s = socket.create_connection(("127.0.0.1", timed.port))
    try:
        s.sendall(_request_bytes(json.dumps(req()).encode()))
        answer = await timed.in_thread(_read_response, s)
        assert answer.startswith(b"HTTP/1.1 200")
        timed.clock.advance(9)
        s.sendall(_request_bytes(json.dumps(req()).encode()))
        assert (await timed.in_thread(_read_response, s)).startswith(b"HTTP/1.1 200")
        timed.clock.advance(10.5)
        assert await timed.in_thread(_closed_by_peer, s)
        assert len(timed.fake.calls) == 2
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_connections_past_the_cap_are_answered_503_and_closed(timed):
    """With max_connections = 2, a third connection gets 503 with a JSON-RPC error and is closed; once
    one of the two goes away, a new connection is served."""
    a = socket.create_connection(("127.0.0.1", timed.port))
    b = socket.create_connection(("127.0.0.1", timed.port))
    try:
        await timed.until(lambda: timed.site.open_connections == 2, "two connections are open")
        c = socket.create_connection(("127.0.0.1", timed.port))
        try:
            c.settimeout(5)
            got = await timed.in_thread(lambda: c.recv(65536))
            assert got.startswith(b"HTTP/1.1 503") and b'"code":-32603' in got
            assert await timed.in_thread(_closed_by_peer, c)
        finally:
            c.close()
        a.close()
        await timed.until(lambda: timed.site.open_connections == 1, "one connection is left")
        d = socket.create_connection(("127.0.0.1", timed.port))
        try:
            d.sendall(_request_bytes(json.dumps(req()).encode()))
            assert (await timed.in_thread(_read_response, d)).startswith(b"HTTP/1.1 200")
        finally:
            d.close()
    finally:
        a.close()
        b.close()
