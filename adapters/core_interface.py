"""The core system (一卡通 core) as the daemon sees it: `ICoreSystem`, and the errors and
exchange records every implementation shares.

`adapters/core_http.py:CoreClient` is the reference implementation (core-api.md over HTTP);
`simulators/memory_core.py:MemoryCore` is an in-memory one for fast tests of the flows. The
flow journals every `Exchange` it is handed, so an implementation returns what went over
its wire (or, in memory, what would have).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from zope.interface import Attribute, Interface


class CoreError(Exception):
    """The core could not be reached or answered badly; retried, then given up until next time."""


class CoreContractError(CoreError):
    """The core answered 4xx: one side broke the contract. Journal and alarm; do not retry blindly."""

    def __init__(self, method: str, url: str, status: int, body: bytes):
        self.method, self.url, self.status, self.body = method, url, status, body
        super().__init__(f"core answered {status} to {method} {url}: {body[:300]!r}")


@dataclass
class Exchange:
    """One request and its answer, for the journal."""

    method: str
    url: str
    request: bytes
    status: int
    response: bytes


class ICoreSystem(Interface):
    """What the daemon asks of the core (core-api.md, "Core API"). Every method returns a
    Deferred (or is a coroutine); a failure is `CoreError` (retry later) or
    `CoreContractError` (journal and alarm: the contract was broken)."""

    closing = Attribute("True once close() was called: a failure after it is not an outage")

    def list_funded(bank_id: str):
        """Every funded order of the bank, following the cursor: (orders, [Exchange])."""

    def stream_items(order_no: str, consume: Callable, chunk: int = 1 << 20):
        """Hand the order's NDJSON items to `consume(bytes) -> Deferred` in chunks (not split on
        lines; the next chunk waits for the Deferred); the total number of bytes."""

    def push_results(order_no: str, results: list):
        """POST per-item results (seq, version, status, reason_code, reason_text, bank_serial,
        at); the Exchange."""

    def push_state(order_no: str, state: str, detail):
        """POST an order's state (DISPATCHED, SETTLED, INVALID) with its detail; the Exchange."""

    def watch(fn: Callable) -> None:
        """Tell fn(None) after every good call and fn(CoreError) after a failed one."""

    def close():
        """Stop: calls waiting or in flight fail with CoreError; a Deferred."""


class ICoreRawResults(Interface):
    """Optional, beside ICoreSystem: results handed over already serialised.

    The push builds a chunk's results as one JSON array in the database (a million results
    become no Python objects); a core that provides this takes that array as it is."""

    def push_results_json(order_no: str, results_json: bytes):
        """POST the results of `results_json`, a UTF-8 JSON array of the records push_results
        takes; the Exchange."""
