"""An in-memory core: `ICoreSystem` without HTTP, for fast tests of the flows.

It keeps what simulators/core/server.py keeps (funded orders from datagen specs, results by
(order, seq, version), the states reported) and answers as core-api.md says: an order once
given a state is no longer listed as funded, the same (seq, version) with other content is a
409 (`CoreContractError`), a result is kept once however often it is posted. The HTTP
simulator is what the end-to-end tests, the demo and the fault campaign use; this one lets
a test drive `BankFlow`'s core steps in milliseconds and make the core fail on cue
(`fail_next`).
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

from twisted.internet import defer
from zope.interface import implementer

from adapters.core_interface import CoreContractError, CoreError, Exchange, ICoreSystem
from simulators import datagen


def _dumps(v) -> bytes:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@implementer(ICoreSystem)
class MemoryCore:
    def __init__(self, specs: Iterable[datagen.OrderSpec] = ()):
        self.specs: dict[str, datagen.OrderSpec] = {}
        self.results: dict[str, dict[tuple[int, int], dict]] = {}
        self.states: dict[str, list[tuple[str, object]]] = {}
        self.failures: list[CoreError] = []
        self.calls: list[str] = []
        self._watchers: list[Callable] = []
        self.closing = False
        for s in specs:
            self.add_order(s)

    def add_order(self, spec: datagen.OrderSpec) -> None:
        self.specs[spec.order_no] = spec

    def fail_next(self, error: CoreError) -> None:
        """The next call fails with `error` (a CoreError: unreachable; CoreContractError: a 4xx)."""
        self.failures.append(error)

    def latest(self, order_no: str) -> dict[int, dict]:
        """Each item's result of the highest version, as the core would show it."""
        out: dict[int, dict] = {}
        for (seq, version), r in sorted(self.results.get(order_no, {}).items()):
            out[seq] = r
        return out

    # --- ICoreSystem ----------------------------------------------------------

    def watch(self, fn: Callable) -> None:
        self._watchers.append(fn)

    def close(self):
        self.closing = True
        return defer.succeed(None)

    def _call(self, what: str):
        self.calls.append(what)
        if self.closing:
            raise CoreError(f"{what}: not sent, the daemon is stopping")
        if self.failures:
            e = self.failures.pop(0)
            if not isinstance(e, CoreContractError):
                for fn in self._watchers:
                    fn(e)
            raise e
        for fn in self._watchers:
            fn(None)

    async def list_funded(self, bank_id: str):
        url = f"memory://core/api/orders?state=funded&bank={bank_id}"
        self._call("GET orders")
        found = [datagen.order_header(s) for s in self.specs.values()
                 if s.bank_id == bank_id and s.order_no not in self.states]
        page = {"orders": found, "next": None}
        return found, [Exchange("GET", url, b"", 200, _dumps(page))]

    async def stream_items(self, order_no: str, consume: Callable, chunk: int = 1 << 20) -> int:
        self._call(f"GET {order_no}/items")
        spec = self.specs.get(order_no)
        if spec is None:
            raise CoreContractError("GET", f"memory://core/api/orders/{order_no}/items", 404,
                                    _dumps({"error": "not_found"}))
        body = b"".join(_dumps(it) + b"\n" for it in datagen.items(spec))
        for i in range(0, len(body), chunk):
            await consume(body[i:i + chunk])
        return len(body)

    async def push_results(self, order_no: str, results: list):
        url = f"memory://core/api/orders/{order_no}/results"
        request = _dumps({"results": results})
        self._call(f"POST {order_no}/results")
        kept = self.results.setdefault(order_no, {})
        for r in results:
            key = (r["seq"], r["version"])
            if key in kept and kept[key] != r:
                raise CoreContractError("POST", url, 409, _dumps(
                    {"error": "conflict", "field": "results", "seq": r["seq"], "version": r["version"]}))
        for r in results:
            kept.setdefault((r["seq"], r["version"]), r)
        return Exchange("POST", url, request, 200, _dumps({"accepted": len(results)}))

    async def push_state(self, order_no: str, state: str, detail):
        url = f"memory://core/api/orders/{order_no}/state"
        request = _dumps({"state": state, "detail": detail})
        self._call(f"POST {order_no}/state")
        self.states.setdefault(order_no, []).append((state, detail))
        return Exchange("POST", url, request, 200, _dumps({"ok": True}))
