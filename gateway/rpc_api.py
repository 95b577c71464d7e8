"""The contract between the gateway RPC's transport (`gateway.rpc`) and its methods (`gateway.commands`).

The transport validates JSON-RPC 2.0 envelopes, authenticates the caller and
journals each call; it hands every well-formed request to an `ICommands`
provider as (method, params, caller). A method refuses with `RpcError`, whose
code is stable (clients branch on it) and whose `field` names the parameter at
fault. Codes -32768..-32000 are JSON-RPC's own; the gateway's are 1001 upwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import zope.interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

# JSON-RPC 2.0's reserved codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# The gateway's refusals (core-api.md "Gateway RPC").
UNKNOWN_ORDER = 1001
UNKNOWN_ITEM = 1002
WRONG_STATE = 1003
MISSING_EVIDENCE = 1004
AMOUNT_MISMATCH = 1005
UNKNOWN_BATCH = 1006
UNKNOWN_REFUND = 1007
NOT_ALLOWED = 1008

CODE_NAMES = {
    PARSE_ERROR: "PARSE_ERROR", INVALID_REQUEST: "INVALID_REQUEST", METHOD_NOT_FOUND: "METHOD_NOT_FOUND",
    INVALID_PARAMS: "INVALID_PARAMS", INTERNAL_ERROR: "INTERNAL_ERROR",
    UNKNOWN_ORDER: "UNKNOWN_ORDER", UNKNOWN_ITEM: "UNKNOWN_ITEM", WRONG_STATE: "WRONG_STATE",
    MISSING_EVIDENCE: "MISSING_EVIDENCE", AMOUNT_MISMATCH: "AMOUNT_MISMATCH", UNKNOWN_BATCH: "UNKNOWN_BATCH",
    UNKNOWN_REFUND: "UNKNOWN_REFUND", NOT_ALLOWED: "NOT_ALLOWED",
}


class RpcError(Exception):
    """A refusal with a stable code; `field` names the parameter at fault."""

    def __init__(self, code: int, message: str, field: str | None = None, data: dict | None = None):
        super().__init__(code, message, field)
        self.code = code
        self.message = message
        self.field = field
        self.data = data

    def __str__(self) -> str:
        where = f" [field {self.field}]" if self.field else ""
        return f"{CODE_NAMES.get(self.code, self.code)}: {self.message}{where}"


def method_allowed(patterns: tuple[str, ...], method: str) -> bool:
    """True when *method* matches one of *patterns*: a name ("order.status"), "report.*" or "*"."""
    return any(fnmatchcase(method, p) for p in patterns)


@dataclass(frozen=True)
class CallerRule:
    """One [[rpc.callers]] entry: its name, one way to recognise it, and the methods it may call.

    unix_user / unix_group match the SO_PEERCRED uid / gid (a group also matches
    its listed members); token_file matches the bearer token in that file on the
    127.0.0.1 listener; cert_sha256 (lower-case hex, no colons) matches the client
    certificate on the TLS listener.
    """

    name: str
    methods: tuple[str, ...]
    unix_user: str = ""
    unix_group: str = ""
    token_file: str = ""
    cert_sha256: str = ""


@dataclass(frozen=True)
class Caller:
    """Who made an RPC call, as journaled.

    transport: "unix", "tcp" or "tls".
    identity: on unix "uid=..,gid=.." from SO_PEERCRED when available, else "unix";
    on tcp "token:<first 8 hex chars of the token's SHA-256>@127.0.0.1:<peer port>";
    on tls "cert:<first 16 hex chars of the certificate's SHA-256>@<peer>".
    name: the [[rpc.callers]] entry it matched ("" when none did or none are declared).
    methods: the patterns it may call; None = every method (no [[rpc.callers]] declared).
    """

    transport: str
    identity: str
    name: str = ""
    methods: tuple[str, ...] | None = None

    def may(self, method: str) -> bool:
        return self.methods is None or method_allowed(self.methods, method)

    @property
    def who(self) -> str:
        """How the journal names the caller: its configured name first, then the transport's identity."""
        plain = f"{self.transport}:{self.identity}"
        return f"{self.name} ({plain})" if self.name else plain


class ICommands(zope.interface.Interface):
    """The gateway's RPC methods, as the transport sees them."""

    def call(method: str, params: dict, caller: Caller) -> "Deferred[dict]":  # noqa: F821
        """Run one method; raise/errback RpcError for refusals. Unknown method -> RpcError(METHOD_NOT_FOUND)."""

    def methods() -> list[str]:
        """The method names `call` accepts."""
