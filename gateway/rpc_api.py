"""The contract between the gateway RPC's transport (`gateway.rpc`) and its methods (`gateway.commands`).

The transport validates JSON-RPC 2.0 envelopes, authenticates the caller and
journals each call; it hands every well-formed request to an `ICommands`
provider as (method, params, caller). A method refuses with `RpcError`, whose
code is stable (clients branch on it) and whose `field` names the parameter at
fault. Codes -32768..-32000 are JSON-RPC's own; the gateway's are 1001 upwards.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Caller:
    """Who made an RPC call, as journaled.

    transport: "unix" or "tcp".
    identity: on unix "uid=..,gid=.." from SO_PEERCRED when available, else "unix";
    on tcp "token:<first 8 hex chars of the token's SHA-256>@127.0.0.1:<peer port>".
    """

    transport: str
    identity: str


class ICommands(zope.interface.Interface):
    """The gateway's RPC methods, as the transport sees them."""

    def call(method: str, params: dict, caller: Caller) -> "Deferred[dict]":  # noqa: F821
        """Run one method; raise/errback RpcError for refusals. Unknown method -> RpcError(METHOD_NOT_FOUND)."""

    def methods() -> list[str]:
        """The method names `call` accepts."""
