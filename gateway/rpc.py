"""The gateway's local RPC: JSON-RPC 2.0 over HTTP POST at /rpc, on a Unix socket and optionally 127.0.0.1.

Three layers, outermost last. `handle_body` turns one request body into one
response body (or None) and calls an `ICommands` provider; it reads no socket.
`RpcResource` and `RpcSite` are the twisted.web glue: POST /rpc only, JSON only,
bodies capped at 1 MiB while they arrive, the caller identified from the
connection (SO_PEERCRED on the Unix socket, the bearer token on TCP).
`listen_rpc` binds the Unix socket (mode 0660, stale file removed) and, if asked,
127.0.0.1 with a token; it has no way to listen anywhere else.

Choices the JSON-RPC 2.0 text leaves open, made here:

- Batches are served, one element after another in the order given (methods
  change state; a deterministic order is worth more than concurrency), at most
  `MAX_BATCH` elements; a longer or empty batch is one Invalid Request.
- Params are by name only: an array is Invalid Params (-32602); absent params
  are `{}`.
- A request object with a member JSON-RPC does not define, an object with a
  repeated member name, NaN/Infinity or a non-finite number is refused rather
  than guessed at: what the journal records is then what ran.
- An id is echoed exactly when it is a string, a number or null; a refused
  request with no usable id is answered with id null. Notifications (no `id`)
  run and are journaled, but are never answered, refusals included; a body of
  notifications only is answered 204 with no body.
- Every JSON-RPC answer travels in an HTTP 200; HTTP codes are kept for what
  happens before JSON-RPC: 401 (TCP token), 404 (path), 405 (method),
  413 (body over 1 MiB), 415 (not application/json). Those carry a JSON-RPC
  error body too. A body over `DISCARD_LIMIT` is not drained for its 413: the
  connection is cut.
- JSON nested deeper than `MAX_DEPTH` (32) levels is one Invalid Request
  (-32600, data.limit) before any method runs: nothing the methods take is that
  deep, and the masking and journaling walk it recursively.
- Every request is answered: an exception anywhere after the body arrived
  (validation, masking, a method, the journal) becomes an INTERNAL_ERROR answer
  and, where the journal still works, an entry.
- A connection must send its request head within `head_timeout` seconds of
  opening (or of its previous answer) and its body within `body_timeout` more,
  or it is cut: a client trickling header bytes holds nothing for long, token
  or not. At most `max_connections` connections are open per listener; past it
  a new one is answered 503 and closed.
- Each request object is journaled once, after it ran, with its caller,
  masked params and outcome; a body that is not JSON, over the cap or not sent
  as application/json is journaled once with method None. Unauthenticated TCP requests have no caller and
  are only logged. The response waits for the journal callback's Deferred.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import json
import math
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from gateway.masking import mask_fields, mask_record, mask_text  # noqa: F401  (mask_record re-exported)
from gateway.rpc_api import (
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_ALLOWED, PARSE_ERROR,
    Caller, CallerRule, ICommands, RpcError,
)

MAX_BODY = 1 << 20
# Past the cap a body is read and dropped so the client still gets its 413 (it
# reads the answer only after sending); past this much more, the connection is cut.
DISCARD_LIMIT = 16 << 20
MAX_BATCH = 100
MAX_DEPTH = 32
IDLE_TIMEOUT_S = 60
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64
MIN_TOKEN_LEN = 16
UNIX_PATH_MAX = 107

log = Logger(namespace="gateway.rpc")

# journal(caller, method or None, masked params, outcome); may return a Deferred.
# outcome is {"result": masked result} or {"error": {"code", "message", "field"}}.
Journal = Callable[[Caller, "str | None", dict, dict], Any]

_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})
_ABSENT = object()


# --- JSON-RPC 2.0, no I/O ----------------------------------------------------

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"member {key[:64]!r} appears twice in one object")
        obj[key] = value
    return obj


def _decode(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RpcError(PARSE_ERROR, f"body is not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_members,
                          parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise RpcError(PARSE_ERROR, "body is not JSON: nested too deeply") from None
    except ValueError as e:
        raise RpcError(PARSE_ERROR, f"body is not JSON: {e}") from None


def _too_deep(doc: Any, limit: int = MAX_DEPTH) -> bool:
    """True when arrays/objects nest deeper than *limit* levels (walked without recursion)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _error_object(error: RpcError) -> dict:
    data = {"field": error.field}
    data.update((k, v) for k, v in (error.data or {}).items() if k != "field")
    return {"code": error.code, "message": error.message, "data": data}


def error_body(error: RpcError, id_: Any = None) -> bytes:
    """A complete JSON-RPC error response."""
    try:
        return _dump({"jsonrpc": "2.0", "error": _error_object(error), "id": id_})
    except (TypeError, ValueError):
        log.error("RpcError data for code {code} is not JSON; answered without it", code=error.code)
        return _dump({"jsonrpc": "2.0", "error": _error_object(RpcError(error.code, error.message, error.field)),
                      "id": id_})


def _error_outcome(error: RpcError) -> dict:
    return {"error": {"code": error.code, "message": mask_text(error.message), "field": error.field}}


def _log_failure(failure: Failure, message: str, **fields: Any) -> None:
    # Not log.failure: an exception's text can quote an account number, and logs are masked.
    log.error(message + "\n{traceback}", traceback=mask_text(failure.getTraceback()), **fields)


async def _journal(journal: Journal | None, caller: Caller, method: str | None, params: dict,
                   outcome: dict) -> None:
    if journal is None:
        return
    try:
        await maybeDeferred(journal, caller, method, params, outcome)
    except Exception:  # noqa: BLE001 - the call has run; its answer must still go back
        _log_failure(Failure(), "journaling RPC {method} from {caller} failed", method=method,
                     caller=caller.identity)


@dataclass
class _Call:
    method: str
    params: Any
    id: Any = _ABSENT

    @property
    def notification(self) -> bool:
        return self.id is _ABSENT


class _Invalid(Exception):
    """A request object that is not a valid Request: answered with *id* (None when it had no usable one)."""

    def __init__(self, message: str, field: str | None, id_: Any = None) -> None:
        super().__init__(message)
        self.error = RpcError(INVALID_REQUEST, message, field)
        self.id = id_


def _validate(obj: Any) -> _Call:
    if not isinstance(obj, dict):
        raise _Invalid("a request must be a JSON object", None)
    if "id" in obj and not _valid_id(obj["id"]):
        raise _Invalid("id must be a string, a number or null", "id")
    echo = obj.get("id")
    if obj.get("jsonrpc") != "2.0":
        raise _Invalid('jsonrpc must be "2.0"', "jsonrpc", echo)
    unknown = sorted(set(obj) - _MEMBERS)
    if unknown:
        raise _Invalid(f"unknown member {unknown[0][:64]!r}", unknown[0][:64], echo)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise _Invalid("method must be a non-empty string", "method", echo)
    params = obj.get("params", {})
    if not isinstance(params, (dict, list)):
        raise _Invalid("params must be an object", "params", echo)
    return _Call(method, params, obj["id"] if "id" in obj else _ABSENT)


async def _run(call: _Call, commands: Any, caller: Caller) -> tuple[Any, RpcError | None]:
    if isinstance(call.params, list):
        return None, RpcError(INVALID_PARAMS, "params must be an object of named parameters", "params")
    try:
        if call.method not in commands.methods():
            return None, RpcError(METHOD_NOT_FOUND, f"no method {call.method[:64]!r}", "method")
        if not caller.may(call.method):
            who = f"caller {caller.name!r}" if caller.name else \
                f"{caller.transport}:{caller.identity}, which no [[rpc.callers]] entry names,"
            return None, RpcError(NOT_ALLOWED, f"not allowed: {who} may not call {call.method}", "method",
                                  {"method": call.method, "caller": caller.name or None})
        result = await maybeDeferred(commands.call, call.method, call.params, caller)
    except RpcError as e:
        return None, e
    except Exception:  # noqa: BLE001 - the caller gets a stable code, the log gets the failure
        _log_failure(Failure(), "RPC {method} failed with params {params}", method=call.method,
                     params=mask_record(call.params))
        return None, RpcError(INTERNAL_ERROR, "internal error; see the gateway's log")
    if not isinstance(result, dict):
        log.error("RPC {method} returned {kind}, not a dict", method=call.method, kind=type(result).__name__)
        return None, RpcError(INTERNAL_ERROR, "internal error; see the gateway's log")
    return result, None


async def _one(obj: Any, commands: Any, caller: Caller, journal: Journal | None) -> bytes | None:
    try:
        call = _validate(obj)
    except _Invalid as bad:
        method = obj.get("method") if isinstance(obj, dict) and isinstance(obj.get("method"), str) else None
        params = obj.get("params") if isinstance(obj, dict) and isinstance(obj.get("params"), dict) else {}
        await _journal(journal, caller, method, mask_record(params), _error_outcome(bad.error))
        return error_body(bad.error, bad.id)
    masked = mask_record(call.params) if isinstance(call.params, dict) else {}
    result, error = await _run(call, commands, caller)
    answer = None
    if error is None:
        try:
            answer = _dump({"jsonrpc": "2.0", "result": result, "id": None if call.notification else call.id})
        except (TypeError, ValueError):
            log.error("RPC {method} returned a result that is not JSON", method=call.method)
            error = RpcError(INTERNAL_ERROR, "internal error; see the gateway's log")
    outcome = _error_outcome(error) if error is not None else {"result": mask_record(result)}
    await _journal(journal, caller, call.method, masked, outcome)
    if call.notification:
        return None
    return answer if error is None else error_body(error, call.id)


def _usable_id(obj: Any) -> Any:
    if isinstance(obj, dict) and "id" in obj and _valid_id(obj["id"]):
        return obj["id"]
    return None


async def _one_answered(obj: Any, commands: Any, caller: Caller, journal: Journal | None) -> bytes | None:
    """`_one`, but an exception in it (not a method's: those are answered already) is answered too."""
    try:
        return await _one(obj, commands, caller, journal)
    except Exception:  # noqa: BLE001 - every request is answered
        _log_failure(Failure(), "RPC request from {caller} failed outside its method", caller=caller.identity)
        e = RpcError(INTERNAL_ERROR, "internal error; see the gateway's log")
        method = obj.get("method") if isinstance(obj, dict) and isinstance(obj.get("method"), str) else None
        await _journal(journal, caller, method and method[:64], {}, _error_outcome(e))
        if isinstance(obj, dict) and "id" not in obj:
            return None
        return error_body(e, _usable_id(obj))


async def _handle(body: bytes, commands: Any, caller: Caller, journal: Journal | None) -> bytes | None:
    try:
        doc = _decode(body)
    except RpcError as e:
        await _journal(journal, caller, None, {}, _error_outcome(e))
        return error_body(e)
    if _too_deep(doc):
        e = RpcError(INVALID_REQUEST, f"the request nests arrays/objects deeper than {MAX_DEPTH} levels, "
                                      f"the limit", "params", {"limit": MAX_DEPTH})
        method = doc.get("method") if isinstance(doc, dict) and isinstance(doc.get("method"), str) else None
        await _journal(journal, caller, method and method[:64], {}, _error_outcome(e))
        return error_body(e, _usable_id(doc))
    if not isinstance(doc, list):
        return await _one_answered(doc, commands, caller, journal)
    if not doc or len(doc) > MAX_BATCH:
        e = RpcError(INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests, not {len(doc)}")
        await _journal(journal, caller, None, {}, _error_outcome(e))
        return error_body(e)
    answers = [a for a in [await _one_answered(obj, commands, caller, journal) for obj in doc] if a is not None]
    return b"[" + b",".join(answers) + b"]" if answers else None


def handle_body(body: bytes, commands: Any, caller: Caller, journal: Journal | None = None) -> Deferred[bytes | None]:
    """Serve one JSON-RPC 2.0 body: the response body, or None when nothing is to be answered."""
    return ensureDeferred(_handle(body, commands, caller, journal))


# --- HTTP --------------------------------------------------------------------

def _unix_rule(rules: tuple[CallerRule, ...], uid: int, gid: int) -> CallerRule | None:
    """The entry naming this uid (unix_user), else one whose group is the gid or lists the user (unix_group)."""
    for rule in rules:
        if rule.unix_user:
            try:
                if pwd.getpwnam(rule.unix_user).pw_uid == uid:
                    return rule
            except KeyError:
                continue
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    for rule in rules:
        if rule.unix_group:
            try:
                group = grp.getgrnam(rule.unix_group)
            except KeyError:
                continue
            if group.gr_gid == gid or (user is not None and user in group.gr_mem):
                return rule
    return None


def _named(caller: Caller, rules: tuple[CallerRule, ...], rule: CallerRule | None) -> Caller:
    """Without [[rpc.callers]] everything is allowed (as before they existed); with them, only what a rule says."""
    if not rules:
        return caller
    if rule is None:
        return replace(caller, methods=())
    return replace(caller, name=rule.name, methods=rule.methods)


def _unix_caller(transport: Any, rules: tuple[CallerRule, ...] = ()) -> Caller:
    try:
        fmt = "3i"
        creds = transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
        _pid, uid, gid = struct.unpack(fmt, creds)
    except (AttributeError, OSError, struct.error):
        return _named(Caller("unix", "unix"), rules, None)
    return _named(Caller("unix", f"uid={uid},gid={gid}"), rules, _unix_rule(rules, uid, gid))


def cert_fingerprint(der_or_x509: Any) -> str:
    """SHA-256 of a certificate's DER, lower-case hex without colons (as cert_sha256 is written)."""
    if isinstance(der_or_x509, bytes):
        return hashlib.sha256(der_or_x509).hexdigest()
    return der_or_x509.digest("sha256").decode("ascii").replace(":", "").lower()


def _bearer(request: Request) -> bytes | None:
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(values) != 1:
        return None
    scheme, _, credentials = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip() or None


class _RpcRequest(Request):
    """A request that knows its caller before its body arrives, and never holds more than the cap of it.

    twisted.web buffers a whole body (to a temporary file past 100 kB) before a
    resource sees it, so the cap and the token check live here, at the first
    moment the headers are known.
    """

    caller: Caller | None = None
    too_large = False
    _refusal: tuple[int, RpcError, str] | None = None
    _received = 0
    _cut = False

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        site = self.channel.site
        self.caller, self._refusal = site.admit(self)
        if length is not None and length > DISCARD_LIMIT:
            self._cut_off(f"declared a body of {length} bytes")
        elif length is not None and length > site.max_body:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if self._cut:
            return
        self._received += len(data)
        if self._received > DISCARD_LIMIT:
            self._cut_off(f"sent more than {DISCARD_LIMIT} bytes of body")
        elif self._received > self.channel.site.max_body:
            if not self.too_large:
                self.too_large = True
                self.content = BytesIO()
        elif not self.too_large and self._refusal is None:
            self.content.write(data)

    def _cut_off(self, why: str) -> None:
        self._cut = True
        self.content = BytesIO()
        log.warn("RPC connection from {peer} cut: it {why}", peer=str(self.getClientAddress()), why=why)
        self.channel.transport.abortConnection()

    def process(self) -> None:
        if self._cut:  # the last bytes can complete a body in the same read that cut the connection
            return
        if self._refusal is None:
            super().process()
            return
        self.site = self.channel.site
        status, error, challenge = self._refusal
        log.warn("RPC request from {peer} refused: {why}", peer=str(self.getClientAddress()), why=error.message)
        if challenge:
            self.setHeader(b"www-authenticate", challenge.encode("ascii"))
        _send(self, status, error_body(error))


class _RpcChannel(HTTPChannel):
    """An HTTP/1.1 channel with deadlines for the request head and body, counted against the site's cap.

    twisted.web's own timeout is an idle timeout: any byte restarts it, so a client
    sending one header byte every few seconds would hold the connection (and, on TCP,
    it is refused only once all headers are in). Here the head must be complete within
    the site's head_timeout of the connection opening (or of the previous answer on a
    kept-alive connection), and the body within body_timeout after the head.
    """

    _deadline: Any = None
    _counted = False
    _refused = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self._refused:   # a connection over the cap was answered 503; nothing it sends is read
            super().dataReceived(data)

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        site = self.site
        if site.open_connections >= site.max_connections:
            log.warn("RPC connection from {peer} refused: {n} connections open, the limit",
                     peer=str(self.transport.getPeer()), n=site.open_connections)
            body = error_body(RpcError(INTERNAL_ERROR, f"too many connections ({site.max_connections}); "
                                                       f"try again"))
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 b"Connection: close\r\nContent-Length: " + str(len(body)).encode() +
                                 b"\r\n\r\n" + body)
            self.transport.loseConnection()
            self._refused = True
            return
        site.open_connections += 1
        self._counted = True
        self._arm(site.head_timeout, "send its request head")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.site.reactor.callLater(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        log.warn("RPC connection from {peer} cut: it did not {what} within {s} s",
                 peer=str(self.transport.getPeer()), what=what, s=seconds)
        self.transport.abortConnection()

    def allHeadersReceived(self) -> None:  # noqa: N802
        self._arm(self.site.body_timeout, "send its request body")
        super().allHeadersReceived()

    def allContentReceived(self) -> None:  # noqa: N802
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:  # noqa: N802
        super().requestDone(request)
        if self.persistent and self.transport is not None and self.transport.connected:
            self._arm(self.site.head_timeout, "send its next request head")

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self._disarm()
        if self._counted:
            self._counted = False
            self.site.open_connections -= 1
        super().connectionLost(reason)


def _send(request: Request, status: int, body: bytes | None, headers: dict[bytes, bytes] | None = None) -> None:
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if body is not None:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
    request.finish()


class RpcSite(Site):
    """The RPC's HTTP site: caps bodies, identifies callers, and on TCP demands the bearer token.

    A site without a token refuses every request that does not come over a
    Unix socket, so handing it to listenTCP by mistake opens nothing.
    """

    requestFactory = _RpcRequest
    protocol = _RpcChannel

    def __init__(self, resource: Resource, *, token_digest: bytes | None = None, max_body: int = MAX_BODY,
                 timeout: float = IDLE_TIMEOUT_S, reactor: Any = None, head_timeout: float = HEAD_TIMEOUT_S,
                 body_timeout: float = BODY_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                 callers: tuple[CallerRule, ...] = (), token_names: dict[bytes, str] | None = None,
                 tls: bool = False) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.token_digest = token_digest
        self.callers = tuple(callers)
        self.token_names = dict(token_names or {})   # SHA-256 of a caller's token -> its name
        self.tls = tls   # served behind TLS with a client certificate: callers are their pinned certificates
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.open_connections = 0

    def _derived(self, **kw: Any) -> RpcSite:
        return RpcSite(self.resource, max_body=self.max_body, timeout=self.timeOut, reactor=self.reactor,
                       head_timeout=self.head_timeout, body_timeout=self.body_timeout,
                       max_connections=self.max_connections, callers=self.callers, **kw)

    def with_token(self, token: bytes | None, named: dict[bytes, str] | None = None) -> RpcSite:
        """The same resources behind a bearer token (for the 127.0.0.1 listener); its own connection count.

        *named* maps callers' tokens (as read from their token_file) to their names.
        """
        digests = {hashlib.sha256(t).digest(): name for t, name in (named or {}).items()}
        return self._derived(token_digest=hashlib.sha256(token).digest() if token is not None else None,
                             token_names=digests)

    def with_tls(self) -> RpcSite:
        """The same resources for the TLS listener: each caller is the [[rpc.callers]] entry pinning its certificate."""
        return self._derived(tls=True)

    def admit(self, request: Request) -> tuple[Caller | None, tuple[int, RpcError, str | None] | None]:
        """(caller, None), or (None, (status, error, challenge)): 401 for a TCP request without a token,
        403 for a TLS client certificate no caller pins."""
        transport = request.channel.transport
        host = transport.getHost()
        if isinstance(host, UNIXAddress):
            return _unix_caller(transport, self.callers), None
        peer = transport.getPeer()
        where = f"{peer.host}:{peer.port}" if isinstance(peer, (IPv4Address, IPv6Address)) else str(peer)
        if self.tls:
            return self._admit_certificate(transport, where)
        challenge = 'Bearer realm="gateway-rpc"'
        if self.token_digest is None and not self.token_names:
            return None, (401, RpcError(NOT_ALLOWED, "this listener accepts no token", "Authorization"), challenge)
        presented = _bearer(request)
        if presented is None:
            return None, (401, RpcError(NOT_ALLOWED, "missing bearer token", "Authorization"), challenge)
        # Digests first: the comparison then takes the same time whatever was sent.
        digest = hashlib.sha256(presented).digest()
        known = self.token_digest is not None and hmac.compare_digest(digest, self.token_digest)
        name = None
        for candidate, caller_name in self.token_names.items():
            if hmac.compare_digest(digest, candidate):
                known, name = True, caller_name
        if not known:
            return None, (401, RpcError(NOT_ALLOWED, "wrong bearer token", "Authorization"),
                          challenge + ', error="invalid_token"')
        rule = next((r for r in self.callers if r.name == name), None)
        return _named(Caller("tcp", f"token:{digest.hex()[:8]}@{where}"), self.callers, rule), None

    def _admit_certificate(self, transport: Any, where: str) -> tuple[Caller | None, Any]:
        get = getattr(transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        if cert is None:   # the handshake demands one; a site reached without TLS gets here
            return None, (403, RpcError(NOT_ALLOWED, "not allowed: no client certificate", "certificate"), None)
        fingerprint = cert_fingerprint(cert)
        rule = next((r for r in self.callers if r.cert_sha256 and hmac.compare_digest(r.cert_sha256, fingerprint)),
                    None)
        if rule is None:
            return None, (403, RpcError(NOT_ALLOWED, f"not allowed: client certificate sha256 {fingerprint} is "
                                                     f"pinned by no [[rpc.callers]] entry (cert_sha256)",
                                        "certificate", {"cert_sha256": fingerprint}), None)
        return Caller("tls", f"cert:{fingerprint[:16]}@{where}", rule.name, rule.methods), None

    def log(self, request: Request) -> None:
        # Structured, and without the query string or headers a combined-format line would carry.
        caller = getattr(request, "caller", None)
        event = log.debug if request.code < 400 else log.info
        event("RPC HTTP {verb} {path} -> {status} ({caller})", verb=request.method.decode("ascii", "replace"),
              path=request.uri.split(b"?")[0][:200].decode("ascii", "replace"), status=request.code,
              caller=caller.identity if caller else "unauthenticated")


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        _send(request, 404, error_body(RpcError(INVALID_REQUEST, "not found; the RPC is POST /rpc")))
        return NOT_DONE_YET


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _NotFound().render(request)


def _is_json(request: Request) -> bool:
    value = request.getHeader(b"content-type")
    if value is None:
        return False
    media, *params = [p.strip().lower() for p in value.split(b";")]
    if media != b"application/json":
        return False
    for p in params:
        name, _, v = p.partition(b"=")
        if name.strip() == b"charset" and v.strip().strip(b'"') not in (b"utf-8", b"utf8"):
            return False
    return True


class RpcResource(Resource):
    """POST /rpc: hands the body to `handle_body` with the caller `RpcSite` established."""

    isLeaf = True

    def __init__(self, commands: Any, journal: Journal | None) -> None:
        super().__init__()
        verifyObject(ICommands, commands)
        self._commands = commands
        self._journal = journal

    def render(self, request: Request) -> Any:
        if request.postpath:
            return _NotFound().render(request)
        if request.method != b"POST":
            _send(request, 405, error_body(RpcError(INVALID_REQUEST, "the RPC takes POST only")),
                  {b"allow": b"POST"})
            return NOT_DONE_YET
        caller = getattr(request, "caller", None)
        if caller is None or not isinstance(request.content, BytesIO):
            # Served by a plain Site: no caller, no cap. Refuse rather than run anonymous calls.
            log.error("RpcResource is served by a site that is not an RpcSite; refusing")
            _send(request, 500, error_body(RpcError(INTERNAL_ERROR, "RPC misconfigured; see the gateway's log")))
            return NOT_DONE_YET
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        ensureDeferred(self._serve(request, caller, gone)).addErrback(
            _log_failure, "serving an RPC request from {caller} failed", caller=caller.identity)
        return NOT_DONE_YET

    async def _serve(self, request: Request, caller: Caller, gone: list[bool]) -> None:
        try:
            status, body = await self._answer(request, caller)
        except Exception:  # noqa: BLE001 - every request is answered, whatever failed
            _log_failure(Failure(), "serving an RPC request from {caller} failed", caller=caller.identity)
            error = RpcError(INTERNAL_ERROR, "internal error; see the gateway's log")
            await _journal(self._journal, caller, None, {}, _error_outcome(error))
            status, body = 200, error_body(error)
        if gone:
            log.info("RPC caller {caller} left before its answer", caller=caller.identity)
            return
        _send(request, status, body)

    async def _answer(self, request: Request, caller: Caller) -> tuple[int, bytes | None]:
        if request.too_large:
            error = RpcError(INVALID_REQUEST, f"body exceeds {request.channel.site.max_body} bytes")
            status, body = 413, error_body(error)
            await _journal(self._journal, caller, None, {}, _error_outcome(error))
        elif not _is_json(request):
            error = RpcError(INVALID_REQUEST, "Content-Type must be application/json (UTF-8)", "Content-Type")
            status, body = 415, error_body(error)
            await _journal(self._journal, caller, None, {}, _error_outcome(error))
        else:
            answer = await handle_body(request.content.getvalue(), self._commands, caller, self._journal)
            status, body = (200, answer) if answer is not None else (204, None)
        return status, body


def rpc_site(commands: Any, journal: Journal | None, *, reactor: Any = None, max_body: int = MAX_BODY,
             timeout: float = IDLE_TIMEOUT_S, head_timeout: float = HEAD_TIMEOUT_S,
             body_timeout: float = BODY_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
             callers: tuple[CallerRule, ...] = ()) -> RpcSite:
    """The RPC site (for the Unix socket; `listen_rpc` derives the TCP and TLS ones): /rpc and 404s elsewhere.

    *callers*: the [[rpc.callers]] entries; () lets whoever reaches a listener call everything.
    """
    root = _Root()
    root.putChild(b"rpc", RpcResource(commands, journal))
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor
    return RpcSite(root, max_body=max_body, timeout=timeout, reactor=reactor, head_timeout=head_timeout,
                   body_timeout=body_timeout, max_connections=max_connections, callers=callers)


# --- listening ---------------------------------------------------------------

@dataclass
class RpcListeners:
    """What `listen_rpc` opened; `stop()` closes them all (the Unix socket file is removed)."""

    unix: IListeningPort
    tcp: IListeningPort | None = None
    tls: IListeningPort | None = None

    def stop(self) -> Deferred[None]:
        ports = [p for p in (self.tls, self.tcp, self.unix) if p is not None]
        return gatherResults([maybeDeferred(p.stopListening) for p in ports]).addCallback(lambda _: None)


def read_token(token_file: str) -> bytes:
    """The bearer token in *token_file*: refused if the file is open to other users, empty, short or not ASCII."""
    try:
        with open(token_file, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(4097)
    except OSError as e:
        raise ValueError(f"token_file {token_file}: cannot read: {e.strerror}") from None
    if st.st_mode & 0o007:
        raise ValueError(f"token_file {token_file}: mode {stat.S_IMODE(st.st_mode):04o} lets every user read "
                         f"or change it; make it 0600 or 0640")
    token = raw.strip()
    if len(raw) > 4096 or len(token) < MIN_TOKEN_LEN or not all(0x21 <= b <= 0x7E for b in token):
        raise ValueError(f"token_file {token_file}: the token must be {MIN_TOKEN_LEN} to 4096 printable "
                         f"ASCII characters without spaces")
    return token


def _clear_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ValueError(f"unix_path {path}: exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale RPC socket {path}", path=path)
        return
    except OSError as e:
        raise CannotListenError(None, path, e) from None
    finally:
        probe.close()
    raise CannotListenError(None, path, "another process is serving on this socket")


def _pem_blocks(data: bytes, what: str) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    blocks = [b + marker for b in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in b]
    if not blocks:
        raise ValueError(f"{what}: holds no PEM certificate")
    return blocks


def tls_options(cert_file: str, key_file: str, client_ca: str) -> Any:
    """The TLS listener's context: our certificate and key, and a client certificate the CA(s) signed required."""
    from OpenSSL import SSL
    from twisted.internet import ssl

    def read(key: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ValueError(f"{key} {path}: cannot read: {e.strerror}") from None
    cert_pem, key_pem, ca_pem = read("tls_cert", cert_file), read("tls_key", key_file), read("client_ca", client_ca)
    try:
        mine = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
    except (SSL.Error, ValueError) as e:
        raise ValueError(f"tls_cert/tls_key {cert_file}: not a PEM certificate and its key: {e}") from None
    try:
        roots = [ssl.Certificate.loadPEM(b) for b in _pem_blocks(ca_pem, f"client_ca {client_ca}")]
    except SSL.Error as e:
        raise ValueError(f"client_ca {client_ca}: not a PEM certificate: {e}") from None
    # trustRoot makes the server ask for a client certificate and fail the handshake without one
    # (requireCertificate defaults to True) or with one no root signed.
    return ssl.CertificateOptions(privateKey=mine.privateKey.original, certificate=mine.original,
                                  trustRoot=ssl.trustRootFromCertificates(roots),
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"tls_listen {value!r}: must be host:port")
    return host, int(port)


def listen_rpc(reactor: Any, site: RpcSite, *, unix_path: str, unix_mode: int = 0o660,
               tcp_port: int | None = None, token_file: str | None = None, tls_listen: str | None = None,
               tls_cert: str | None = None, tls_key: str | None = None, client_ca: str | None = None
               ) -> RpcListeners:
    """Listen on *unix_path* (mode *unix_mode*), if *tcp_port* is given on 127.0.0.1 with a bearer token,
    and if *tls_listen* ("host:port") is given there with TLS and a client certificate the *client_ca* signed
    and a [[rpc.callers]] entry pins (cert_sha256).

    Either everything asked for is listening when this returns, or nothing is
    and the exception names the setting at fault (ValueError) or the address
    (CannotListenError).
    """
    if not isinstance(site, RpcSite):
        raise TypeError("listen_rpc needs an RpcSite (see rpc_site)")
    if len(os.fsencode(unix_path)) > UNIX_PATH_MAX:
        raise ValueError(f"unix_path {unix_path}: longer than {UNIX_PATH_MAX} bytes, the AF_UNIX limit")
    if unix_mode & ~0o777 or unix_mode & 0o007:
        raise ValueError(f"unix_mode {unix_mode:04o}: must not give other users access (use 0660 or 0600)")
    token = None
    if tcp_port is not None:
        if not token_file:
            raise ValueError("token_file: required when tcp_port is set; the TCP listener never runs without a token")
        token = read_token(token_file)
    named = {read_token(r.token_file): r.name for r in site.callers if r.token_file} if tcp_port is not None else {}
    tls = None
    if tls_listen:
        missing = [k for k, v in (("tls_cert", tls_cert), ("tls_key", tls_key), ("client_ca", client_ca)) if not v]
        if missing:
            raise ValueError(f"{missing[0]}: required when tls_listen is set; the RPC leaves the host only "
                             f"with TLS and a client certificate")
        tls = (_host_port(tls_listen), tls_options(tls_cert, tls_key, client_ca))
    _clear_stale_socket(unix_path)
    # twisted binds, chmods, then listens: no connection is accepted before the mode is set.
    unix = reactor.listenUNIX(unix_path, site, mode=unix_mode)
    listeners = RpcListeners(unix)
    try:
        actual = stat.S_IMODE(os.stat(unix_path).st_mode)
        if actual != unix_mode:
            raise CannotListenError(None, unix_path, f"socket mode is {actual:04o}, not {unix_mode:04o}")
        if tcp_port is not None:
            assert token is not None
            listeners.tcp = reactor.listenTCP(tcp_port, site.with_token(token, named), interface="127.0.0.1")
        if tls is not None:
            (host, port), options = tls
            listeners.tls = reactor.listenSSL(port, site.with_tls(), options, interface=host)
    except BaseException:
        listeners.stop()
        raise
    log.info("RPC listening on {unix}{tcp}{tls}", unix=unix_path,
             tcp=f" and 127.0.0.1:{listeners.tcp.getHost().port}" if listeners.tcp else "",
             tls=f" and TLS on {listeners.tls.getHost().host}:{listeners.tls.getHost().port}" if listeners.tls
             else "")
    return listeners
