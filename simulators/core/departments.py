"""The departments (业务科室) as the core simulator plays them, through the gateway's RPC.

Once the gateway has pushed a result for every item of an order to the core,
the department confirms each batch whose results are in (article 26), corrects
a share of the fixable failures with the evidence article 23 asks for (who
confirmed, who approved, the approval reference) and a new account, asks for
the retry, and has refunded to the original channel what cannot be paid: the
unfixable failures (R009/AM05 duplicate, R010/MD07 deceased), the fixable ones
it chose not to correct, and the ones that failed again after a correction.

A second failure of a corrected item never reaches the core (the core takes
results idempotently per seq and status), so the department learns it the way
a clerk would: the item's RETRY batch is DONE at the gateway, the gateway's
paid results have all reached the core, and the core still shows the item
FAILED. What the department has done is kept in memory only: it acts once per
result while it runs, and is not meant to survive its own restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from gateway import rpc_client
from gateway.rpc_api import NOT_ALLOWED, WRONG_STATE, RpcError
from simulators.outcomes import outcome_for_account

log = Logger(namespace="core-sim.departments")

# Failures no correction can fix: cnbank codes and their ISO 20022 counterparts.
NOT_FIXABLE = frozenset({"R009", "R010", "AM05", "MD07"})
# Batch states in which the bank has not answered yet (gateway.models.BatchState.LIVE).
LIVE_BATCH = frozenset({"BUILDING", "BUILT", "UPLOADED", "SUBMITTING", "ACCEPTED"})

CHECKER = "结果核对员 王芳"
CONFIRMED_BY = "收款人本人（电话确认）"
APPROVED_BY = "科室负责人 李明"
REFUND_REASONS = {
    "unfixable": "重复明细/账户人已故，原渠道退回",
    "declined": "科室决定不予更正，原渠道退回",
    "failed_again": "更正后再次失败，原渠道退回",
}

Rpc = Callable[[str, dict], defer.Deferred]


def good_account(order_no: str, seq: int) -> str:
    """A corrected account the simulated bank credits (never a 99NN failing pattern)."""
    acct = f"6228480{seq:08d}0000"
    assert outcome_for_account(acct) == "0000"
    return acct


def unix_socket_rpc(reactor: Any, path: str | Path, *, timeout: float = 60.0) -> Rpc:
    """An `rpc(method, params) -> Deferred` calling the gateway on its Unix socket (off the reactor thread)."""
    def call(method: str, params: dict) -> defer.Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), rpc_client.call, method, params,
                                 unix_path=str(path), timeout=timeout)
    return call


@dataclass(frozen=True)
class Action:
    """One thing the department did through the RPC (kept for demos and tests)."""

    order_no: str
    kind: str                 # "correct", "retry", "refund", "confirm"
    seqs: tuple[int, ...] = ()
    detail: str = ""


@dataclass
class _Desk:
    """What the department remembers of one order."""

    order_no: str
    first_failures: dict[int, tuple[str, int]] = field(default_factory=dict)  # seq -> (reason, fen)
    corrected: dict[int, int] = field(default_factory=dict)   # seq -> batches the order had then
    refunds: dict[int, str] = field(default_factory=dict)     # seq -> why it was refunded
    confirmed: set[str] = field(default_factory=set)
    retry_wanted: bool = False
    signature: tuple | None = None
    idle: bool = False


class Departments:
    """The business departments of every order the core simulator serves.

    *store* is the core simulator (:class:`~simulators.core.server.CoreSimulator`):
    its ``summary()`` and ``results(order_no)`` Deferreds are what the
    department reads, and ``add_report_listener`` tells it when the gateway
    reports. *rpc(method, params)* calls the gateway RPC (see
    :func:`unix_socket_rpc`). Of the fixable failures, ``fix_share`` are
    corrected, the choice drawn per item from ``rng_seed``; ``account_for(order_no,
    seq)`` gives the corrected account. Between reports it looks again every
    ``interval`` seconds (with jitter), since the gateway's own progress
    (a RETRY batch done) is not reported to the core.
    """

    def __init__(self, reactor: Any, store: Any, rpc: Rpc, *, fix_share: float = 1.0, rng_seed: int = 0,
                 clock: Any = None, account_for: Callable[[str, int], str] = good_account,
                 interval: float = 1.0) -> None:
        if not 0.0 <= fix_share <= 1.0:
            raise ValueError("fix_share: must be between 0 and 1")
        if interval <= 0:
            raise ValueError("interval: must be positive")
        self._reactor = reactor
        self._core = store
        self._rpc = rpc
        self.fix_share = fix_share
        self.rng_seed = rng_seed
        self._clock = clock if clock is not None else reactor
        self._account_for = account_for
        self.interval = interval
        self._jitter = random.Random(f"jitter|{rng_seed}")
        self._desks: dict[str, _Desk] = {}
        self.actions: list[Action] = []
        self._running = False
        self._delayed: Any = None
        self._pass: defer.Deferred | None = None
        self._again = False
        self._idle_waiters: list[defer.Deferred] = []

    # --- public ------------------------------------------------------------

    def chooses_to_fix(self, order_no: str, seq: int) -> bool:
        """Whether the department corrects this fixable failure (deterministic from rng_seed)."""
        if self.fix_share >= 1.0:
            return True
        if self.fix_share <= 0.0:
            return False
        return random.Random(f"{self.rng_seed}|{order_no}|{seq}").random() < self.fix_share

    def report(self, order_no: str) -> dict[str, Any]:
        """What the department saw and did for one order::

            {"failed_first_by_reason": {code: {"count", "amount"}}, "corrected": int,
             "refunded": {"unfixable" | "declined" | "failed_again": int}, "confirmed": [batch_no]}
        """
        desk = self._desks.get(order_no) or _Desk(order_no)
        by: dict[str, dict[str, int]] = {}
        for code, amount in desk.first_failures.values():
            v = by.setdefault(code, {"count": 0, "amount": 0})
            v["count"] += 1
            v["amount"] += amount
        refunded = {why: 0 for why in REFUND_REASONS}
        for why in desk.refunds.values():
            refunded[why] += 1
        return {"failed_first_by_reason": by, "corrected": len(desk.corrected), "refunded": refunded,
                "confirmed": sorted(desk.confirmed)}

    def start(self) -> None:
        """Begin watching: at once, on every report, and every *interval* seconds."""
        if self._running:
            return
        self._running = True
        listen = getattr(self._core, "add_report_listener", None)
        if listen is not None:
            listen(self.wake)
        self._schedule(0)

    def stop(self) -> defer.Deferred:
        """Stop watching; fires once a pass under way has ended."""
        self._running = False
        unlisten = getattr(self._core, "remove_report_listener", None)
        if unlisten is not None:
            unlisten(self.wake)
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        if self._pass is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def wake(self, order_no: str | None = None) -> None:
        """Look now (a report arrived); a pass under way is followed by another."""
        if not self._running:
            return
        if self._pass is not None:
            self._again = True
            return
        self._schedule(0)

    # --- the loop ------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = self._clock.callLater(delay, self._run)

    def _run(self) -> None:
        # Never overlaps itself, and survives whatever one pass raises.
        self._delayed = None
        self._again = False
        d = defer.ensureDeferred(self._one_pass())
        self._pass = d
        d.addErrback(lambda f: log.failure("departments: a pass failed; looking again later", f))

        def ended(_: Any) -> None:
            self._pass = None
            if self._running:
                self._schedule(0 if self._again else self.interval * (0.9 + 0.2 * self._jitter.random()))
            else:
                waiters, self._idle_waiters = self._idle_waiters, []
                for w in waiters:
                    w.callback(None)
        d.addBoth(ended)

    async def _one_pass(self) -> None:
        summary = await self._core.summary()
        for order_no, o in sorted(summary["orders"].items()):
            if not self._running:
                return
            try:
                await self._attend(order_no, o)
            except Exception:
                log.failure("departments: attending to {order_no} failed; looking again later",
                            order_no=order_no)
                self._desks.setdefault(order_no, _Desk(order_no)).idle = False

    # --- one order ---------------------------------------------------------------

    async def _attend(self, order_no: str, o: dict) -> None:
        if o["state"] not in ("DISPATCHED", "SETTLED") or o["reported_items"] < o["item_count"]:
            return    # act once every item of the order's first batch has its result
        desk = self._desks.setdefault(order_no, _Desk(order_no))
        signature = (o["state"], o["result_events"],
                     tuple(sorted((k, v["count"]) for k, v in o["results"].items())))
        if signature == desk.signature and desk.idle:
            return
        desk.signature, desk.idle = signature, False

        results = await self._core.results(order_no)
        try:
            status = await self._call(desk, "order.status", {"order_no": order_no})
        except RpcError as e:
            log.warn("departments: order.status {order_no} refused, asking again later: {error}",
                     order_no=order_no, error=str(e))
            return
        if status is None:
            return
        batches = status["batches"]
        # The gateway's paid results have all reached the core: a corrected item the core
        # still shows FAILED after its RETRY batch is DONE has failed again.
        caught_up = status["items"].get("PAID", {}).get("count", 0) == o["results"]["PAID"]["count"]

        failed = {seq: r for seq, r in results.items() if r["status"] == "FAILED"}
        for seq, r in failed.items():
            desk.first_failures.setdefault(seq, (r["reason_code"], r["amount"]))
        to_fix: list[int] = []
        to_refund: dict[str, list[int]] = {}
        waiting = False
        for seq, r in sorted(failed.items()):
            if seq in desk.refunds:
                continue
            if seq in desk.corrected:
                if caught_up and self._retried(desk.corrected[seq], batches):
                    to_refund.setdefault("failed_again", []).append(seq)
                else:
                    waiting = True
            elif r["reason_code"] in NOT_FIXABLE:
                to_refund.setdefault("unfixable", []).append(seq)
            elif self.chooses_to_fix(order_no, seq):
                to_fix.append(seq)
            else:
                to_refund.setdefault("declined", []).append(seq)

        ok = True
        for seq in to_fix:
            ok &= await self._correct(desk, seq, failed[seq]["reason_code"], len(batches), to_refund)
        if desk.retry_wanted:
            ok &= await self._retry(desk)
        for why in ("unfixable", "declined", "failed_again"):
            if to_refund.get(why):
                ok &= await self._refund(desk, why, to_refund[why])
        unconfirmed = False
        for b in batches:
            if b["state"] != "DONE" or b["batch_no"] in desk.confirmed:
                continue
            if caught_up:
                ok &= await self._confirm(desk, b["batch_no"])
            else:
                unconfirmed = True
        live = any(b["state"] in LIVE_BATCH for b in batches)
        acted = bool(to_fix or to_refund)
        desk.idle = ok and not (acted or waiting or unconfirmed or live or desk.retry_wanted)

    @staticmethod
    def _retried(before: int, batches: list[dict]) -> bool:
        """A RETRY batch made after the correction is DONE, and none made since is still live."""
        later = batches[before:]
        return any(b["kind"] == "RETRY" and b["state"] == "DONE" for b in later) and \
            not any(b["state"] in LIVE_BATCH for b in later)

    async def _call(self, desk: _Desk, method: str, params: dict) -> Any:
        """The method's result, or None after logging a failure (the pass tries again later).

        A refusal (RpcError) is raised for the caller to judge.
        """
        try:
            return await self._rpc(method, params)
        except RpcError:
            raise
        except Exception as e:  # noqa: BLE001  (unreachable gateway, lost reply: try again later)
            log.warn("departments: {method} for {order_no} failed, trying again later: {error}",
                     method=method, order_no=desk.order_no, error=str(e)[:300])
            desk.idle = False
            return None

    def _did(self, action: Action) -> None:
        self.actions.append(action)

    async def _correct(self, desk: _Desk, seq: int, code: str, batches_now: int,
                       to_refund: dict[str, list[int]]) -> bool:
        order_no = desk.order_no
        params = {"order_no": order_no, "seq": seq, "account_no": self._account_for(order_no, seq),
                  "confirmed_by": CONFIRMED_BY, "approved_by": APPROVED_BY,
                  "approval_ref": f"更正审批〔2026〕{order_no[-4:]}-{seq}号"}
        try:
            if await self._call(desk, "item.correct", params) is None:
                return False
        except RpcError as e:
            if e.code == NOT_ALLOWED:
                log.info("departments: {order_no} seq {seq} ({code}) cannot be corrected: refund it",
                         order_no=order_no, seq=seq, code=code)
                to_refund.setdefault("unfixable", []).append(seq)
                return True
            if e.code != WRONG_STATE:
                log.error("departments: correcting {order_no} seq {seq} refused: {error}",
                          order_no=order_no, seq=seq, error=str(e))
                return False
            # No longer FAILED at the gateway: an earlier call whose answer was lost did it.
            log.info("departments: {order_no} seq {seq} already corrected ({error})",
                     order_no=order_no, seq=seq, error=str(e))
        desk.corrected[seq] = batches_now
        desk.retry_wanted = True
        log.info("departments: corrected {order_no} seq {seq} ({code}) with a new account, "
                 "confirmed by the recipient, approved by {approved_by}",
                 order_no=order_no, seq=seq, code=code, approved_by=APPROVED_BY)
        self._did(Action(order_no, "correct", (seq,), code))
        return True

    async def _retry(self, desk: _Desk) -> bool:
        try:
            r = await self._call(desk, "order.retry", {"order_no": desk.order_no})
            if r is None:
                return False
            detail = f"{r['items']} items, {r['amount']} fen"
        except RpcError as e:
            if e.code != WRONG_STATE:
                log.error("departments: retry of {order_no} refused: {error}", order_no=desk.order_no,
                          error=str(e))
                return False
            detail = f"nothing waiting ({e.message})"   # already sent, by the scheduler or an earlier call
        desk.retry_wanted = False
        log.info("departments: asked for the retry of {order_no}: {detail}", order_no=desk.order_no,
                 detail=detail)
        self._did(Action(desk.order_no, "retry", (), detail))
        return True

    async def _refund(self, desk: _Desk, why: str, seqs: list[int]) -> bool:
        params = {"order_no": desk.order_no, "seqs": seqs, "reason": REFUND_REASONS[why],
                  "approved_by": APPROVED_BY}
        try:
            r = await self._call(desk, "refund.request", params)
        except RpcError as e:
            # Refused whole (an item not FAILED at the gateway yet): asked again with a fresh look.
            log.warn("departments: refund of {n} items of {order_no} refused, asking again later: {error}",
                     n=len(seqs), order_no=desk.order_no, error=str(e))
            return False
        if r is None:
            return False
        for seq in seqs:
            desk.refunds[seq] = why
        log.info("departments: refund {refund_no} requested for {n} items of {order_no} ({why})",
                 refund_no=r["refund_no"], n=len(seqs), order_no=desk.order_no, why=why)
        self._did(Action(desk.order_no, "refund", tuple(seqs), why))
        return True

    async def _confirm(self, desk: _Desk, batch_no: str) -> bool:
        try:
            if await self._call(desk, "batch.confirm", {"batch_no": batch_no, "confirmed_by": CHECKER}) is None:
                return False
        except RpcError as e:
            if e.code != WRONG_STATE:
                log.error("departments: confirming {batch_no} refused: {error}", batch_no=batch_no,
                          error=str(e))
                return False
            # Only a DONE batch is asked about, and DONE is final: it was confirmed already
            # (by a call whose answer was lost, or by someone else).
            log.info("departments: {batch_no} already confirmed: {error}", batch_no=batch_no, error=str(e))
        desk.confirmed.add(batch_no)
        log.info("departments: batch {batch_no} checked and confirmed by {who}", batch_no=batch_no, who=CHECKER)
        self._did(Action(desk.order_no, "confirm", (), batch_no))
        return True


__all__ = ["Action", "Departments", "NOT_FIXABLE", "good_account", "unix_socket_rpc"]
