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


@dataclass(frozen=True)
class Param:
    """One named parameter of an RPC method: its JSON type as an operator reads it, and what it is."""

    name: str
    type: str
    required: bool
    about: str


@dataclass(frozen=True)
class MethodSpec:
    """An RPC method as callers see it: a one-line summary and its parameters (in the order to give them)."""

    summary: str
    params: tuple[Param, ...] = ()

    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params)


def _p(name: str, type_: str, about: str, required: bool = True) -> Param:
    return Param(name, type_, required, about)


_SEQS = "list of distinct positive integers"

# The method table: every method the gateway's RPC serves (gateway/commands.py binds each
# name to its code and refuses to start if the two differ). `gatewayctl rpc --list` and
# `gatewayctl rpc METHOD --help` print it; the transport refuses a parameter not listed here.
METHODS: dict[str, MethodSpec] = {
    "order.submit": MethodSpec("pull this order from the core now (wakes its bank's flow, or every bank's)", (
        _p("order_no", "string", "the core's order number"),)),
    "order.status": MethodSpec("an order's state, its items by status and its batches with their deadlines", (
        _p("order_no", "string", "the core's order number"),)),
    "item.correct": MethodSpec("give a FAILED item new account data, with who confirmed and approved it "
                               "(article 23)", (
        _p("order_no", "string", "the order"),
        _p("seq", "positive integer", "the item's seq in the order"),
        _p("account_no", "string", "the new account number, 8 to 32 digits"),
        _p("account_bank", "string", "the new account's bank", required=False),
        _p("name", "string", "the account holder's name", required=False),
        _p("id_number", "string", "the holder's ID number", required=False),
        _p("confirmed_by", "string", "who confirmed the new data with the recipient"),
        _p("approved_by", "string", "who approved the correction"),
        _p("approval_ref", "string", "the approval's reference"))),
    "item.correct_many": MethodSpec("correct many FAILED items of one order under one approval, all or none", (
        _p("order_no", "string", "the order"),
        _p("approved_by", "string", "who approved the corrections"),
        _p("approval_ref", "string", "the approval's reference"),
        _p("corrections", "list of objects", "1 to 5000 of {seq, confirmed_by, account_no, and optionally "
                                             "account_bank, name, id_number}, as for item.correct"))),
    "order.retry": MethodSpec("send the order's corrected items now in a RETRY batch", (
        _p("order_no", "string", "a DISPATCHED order with corrected items"),)),
    "refund.request": MethodSpec("send items that cannot be paid back to the original channel (RF01)", (
        _p("order_no", "string", "the order"),
        _p("seqs", f'"all_failed" or {_SEQS}', "the items to refund"),
        _p("reason", "string", "why, up to 200 characters"),
        _p("approved_by", "string", "the department head who approved the refund"))),
    "refund.status": MethodSpec("a refund's state, amounts and where the money went back to", (
        _p("refund_no", "string", "the refund number refund.request gave"),)),
    "batch.confirm": MethodSpec("record that the department checked a DONE batch's results (article 26)", (
        _p("batch_no", "string", "a DONE batch"),
        _p("confirmed_by", "string", "who checked the results"))),
    "batch.dispute": MethodSpec("report an error in a DONE batch's results to the bank (DP01)", (
        _p("batch_no", "string", "a DONE batch"),
        _p("seqs", _SEQS, "the items in dispute"),
        _p("reason", "string", "what is wrong, up to 200 characters"),
        _p("raised_by", "string", "who raises the dispute"))),
    "report.monthly": MethodSpec("a month's figures per bank and project, reconciled with the bank statements", (
        _p("year", "integer", "2000 to 2100"),
        _p("month", "integer", "1 to 12"),
        _p("bank_id", "string", "one configured bank only", required=False),
        _p("project_code", "string", "one project only", required=False))),
    "report.yearly": MethodSpec("a year's figures per project, bank, region and month, reconciled with the "
                                "yearly statement", (
        _p("year", "integer", "2000 to 2100"),
        _p("bank_id", "string", "one configured bank only", required=False),
        _p("project_code", "string", "one project only", required=False))),
    "batch.register": MethodSpec("a month's handover register: per batch, results, sheet, confirmation, "
                                 "disputes, filing", (
        _p("year", "integer", "2000 to 2100"),
        _p("month", "integer", "1 to 12"),
        _p("bank_id", "string", "one configured bank only", required=False))),
    "health": MethodSpec("the daemon's health: banks' links, core, database, leadership, alarms", (
        _p("check", '"live" or "ready"', "a supervisor's short answer instead of the whole report",
           required=False),)),
}


def check_known_params(method: str, params: object) -> None:
    """Refuse params that are not an object, or that name a parameter *method* does not take."""
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object of named parameters")
    allowed = METHODS[method].names()
    for k in params:
        if k not in allowed:
            raise RpcError(INVALID_PARAMS, f"unknown parameter {k!r} for {method}; it takes: "
                                           f"{', '.join(sorted(allowed)) or 'no parameters'}", k)


def text_params() -> frozenset[str]:
    """Every parameter whose type is a string (the CLI keeps their values as text, e.g. all-digit account numbers)."""
    return frozenset(p.name for spec in METHODS.values() for p in spec.params if p.type == "string")
