"""The gateway RPC's methods (core-api.md, "Gateway RPC"), behind `ICommands`.

Each method validates its params whole before touching anything (a refusal
changes nothing), and a method that changes state writes its journal entry,
naming the caller, in the same transaction as the change. Implemented:
order.submit, order.status, item.correct, item.correct_many, order.retry,
refund.request, refund.status, batch.confirm, batch.dispute, report.monthly,
health.

Concurrency (the RPC runs beside the flows, and beside another daemon's RPC):
a method that changes state first makes its transaction a write transaction
(`_write_transaction`: SQLite serialises writers only from the first write),
then locks the rows it decides on (`SELECT ... FOR UPDATE`, items in seq
order), checks them, and checks that every UPDATE changed exactly the rows it
locked; anything else aborts the whole call. The lock order, the same in every
transaction of the gateway (docs/lock-order.md): the rows of one table group
(items by seq, or the batch, or the order) first, the journal head
(`Journal.append`) last, alarms after the journal. A method here locks one
group only, so it never holds the journal head while it waits for a row.
Refund and dispute numbers are allocated under the row locks and taken with a
plain INSERT on their primary key: a concurrent call that took the same number
first makes ours fail on the key, and we take the next one (savepoint, retry).
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection
from twisted.internet import defer
from zope.interface import implementer

from gateway.rules import check_conservation, iso, raise_alarm
from gateway.journal import Entry, Journal
from gateway.masking import mask
from gateway.models import BatchState, DisputeState, ItemStatus, OrderState, RefundState
from gateway.store import batches, corrections, disputes, items, orders, refunds
from gateway.store.numbered import ATTEMPTS as _NUMBER_ATTEMPTS
from gateway.rpc_api import (INVALID_PARAMS, METHOD_NOT_FOUND, METHODS, MISSING_EVIDENCE, NOT_ALLOWED,
                             UNKNOWN_BATCH, UNKNOWN_ITEM, UNKNOWN_ORDER, UNKNOWN_REFUND, WRONG_STATE,
                             Caller, ICommands, RpcError, check_known_params)
from gateway.validation import ACCOUNT, id_number_problem
from gateway.paper.rpc_methods import methods as paper_methods

# Item reason codes that a correction cannot fix (cnbank.md and iso20022.md): refund instead.
NOT_FIXABLE = {"R009": "duplicate item (重复明细)", "R010": "account holder deceased (账户人已故)",
               "AM05": "duplicate (重复)", "MD07": "account holder deceased (账户人已故)"}
EVIDENCE = ("confirmed_by", "approved_by", "approval_ref")
CORRECTABLE = ("account_no", "account_bank", "name", "id_number")
MAX_CORRECTIONS = 5000    # item.correct_many: one sheet, one transaction; fits the RPC's 1 MiB body


def _write_transaction(conn: Connection) -> None:
    """Make this transaction a write transaction now, before it reads what it decides on
    (gateway/store/orders.py:begin_write; SQLite only)."""
    orders.begin_write(conn)


def _seq_ranges(seqs: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (for a journal line that stays short)."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def _numbered(no: str | None, key: str) -> str:
    """The number a store's `create` took, or the refusal when concurrent calls took them all."""
    if no is None:
        raise RpcError(WRONG_STATE, f"could not allocate a {key} after {_NUMBER_ATTEMPTS} attempts: "
                                    f"too many concurrent calls; ask again")
    return no


def _str(params: dict, key: str, *, required: bool = True, max_len: int = 100) -> str | None:
    v = params.get(key)
    if v is None or v == "":
        if required:
            raise RpcError(INVALID_PARAMS, f"{key} is required", key)
        return None
    if not isinstance(v, str):
        raise RpcError(INVALID_PARAMS, f"{key} must be a string", key)
    if len(v) > max_len or re.search(r"[|\r\n]", v):
        raise RpcError(INVALID_PARAMS, f"{key} is longer than {max_len} or holds '|', CR or LF", key)
    return v


def _known(params: dict, allowed: set[str]) -> None:
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object of named parameters")
    for k in params:
        if k not in allowed:
            raise RpcError(INVALID_PARAMS, f"unknown parameter {k!r}", k)


@implementer(ICommands)
class Commands:
    def __init__(self, reactor, db, journal: Journal, gateway):
        self.reactor = reactor
        self.db = db
        self.journal = journal
        self.gateway = gateway   # flows and tickers, to wake a bank's flow
        self.read_journal = None # gateway.read_journal.ReadCallJournal, set by make_service
        bound, declared = set(self._table()), set(METHODS)
        if bound != declared:   # a method without its declared params (or the reverse) is a build error
            raise RuntimeError(f"gateway.rpc_api.METHODS and Commands._table differ: declared only "
                               f"{sorted(declared - bound)}, coded only {sorted(bound - declared)}")

    def methods(self) -> list[str]:
        return sorted(METHODS)

    def _table(self) -> dict:
        return {"order.submit": self.order_submit, "order.status": self.order_status,
                "item.correct": self.item_correct, "item.correct_many": self.item_correct_many,
                "order.retry": self.order_retry,
                "refund.request": self.refund_request, "refund.status": self.refund_status,
                "batch.confirm": self.batch_confirm, "batch.dispute": self.batch_dispute,
                "report.monthly": self.report_monthly,
                "health": self.health, **paper_methods(self)}   # batch.register, report.yearly

    def call(self, method: str, params: dict, caller: Caller):
        fn = self._table().get(method)
        if fn is None:
            return defer.fail(RpcError(METHOD_NOT_FOUND, f"method {method!r} is not available; "
                                                         f"available: {', '.join(self.methods())}"))
        params = params if params is not None else {}
        try:
            check_known_params(method, params)   # the declared parameters (rpc_api.METHODS), nothing else
        except RpcError as e:
            return defer.fail(e)
        return defer.ensureDeferred(fn(params, caller))

    def _at(self) -> str:
        return iso(self.reactor.seconds())

    def _wake(self, bank_id: str) -> None:
        ticker = self.gateway.tickers.get(bank_id)
        if ticker is not None:
            ticker.kick()

    def _journal_read(self, caller: Caller, method: str, params: dict, decoded: str,
                      order_no: str | None = None):
        """The journal entry of a read-only call, once its answer is read from a snapshot (on the
        read pool, beside the writer). With the daemon's `ReadCallJournal` (gateway/read_journal.py)
        the entry is queued with the call's time and committed behind the answer, so a question
        that changes nothing does not wait for a bulk transaction on the writer; without one (a
        bare `Commands`) the call is answered after its entry is committed."""
        if self.read_journal is None:
            return self.db.run(self._rpc_entry, caller, method, params, decoded, order_no)
        return self.read_journal.add((caller, method, params, decoded, order_no, self._at()))

    def write_read_entry(self, conn: Connection, item: tuple) -> int:
        """`ReadCallJournal`'s writer: one queued read-only call's entry, at the call's time."""
        caller, method, params, decoded, order_no, at = item
        return self._rpc_entry(conn, caller, method, params, decoded, order_no, at=at)

    def _rpc_entry(self, conn: Connection, caller: Caller, method: str, params: dict, decoded: str,
                   order_no: str | None = None, *, at: str | None = None) -> int:
        payload = json.dumps({"method": method, "params": params}, ensure_ascii=False).encode()
        return self.journal.append(conn, Entry(
            "in", caller.who[:64], "rpc", method, decoded,
            payload=payload, order_no=order_no), at or self._at())

    @staticmethod
    def _order(conn: Connection, order_no: str) -> dict:
        o = orders.get(conn, order_no)
        if o is None:
            raise RpcError(UNKNOWN_ORDER, f"no order {order_no!r} is known to the gateway", "order_no")
        return o

    # --- methods --------------------------------------------------------------

    async def order_submit(self, params: dict, caller: Caller) -> dict:
        """Pull this order now: wake the flow of its bank (or of every bank) to poll the core."""
        order_no = _str(params, "order_no", max_len=64)
        known = await self.db.run(orders.state_and_bank, order_no)
        if known is None:
            for flow in self.gateway.flows.values():
                flow.wake_poll = True
                self._wake(flow.bank_id)
        await self.db.run(self._rpc_entry, caller, "order.submit", params,
                          f"order.submit {order_no}: " + (f"already {known.state}" if known else
                                                          "poll the core now"), order_no)
        return {"order_no": order_no, "state": known.state if known else None,
                "polling": known is None}

    async def order_status(self, params: dict, caller: Caller) -> dict:
        order_no = _str(params, "order_no", max_len=64)

        def read(conn: Connection) -> dict:
            o = self._order(conn, order_no)
            per = {r.status: {"count": r.n, "amount": int(r.amt or 0)}
                   for r in items.per_status(conn, order_no)}
            bs = [{"batch_no": b.batch_no, "kind": b.kind, "state": b.state, "count": b.total_count,
                   "amount": b.total_amount, "created_at": b.created_at, "updated_at": b.updated_at,
                   # deadlines (working days, conf/calendar): the bank's results, the department's
                   # check and its dispute (article 26); and who checked the results
                   "bank_due": b.bank_due, "confirm_due": b.confirm_due, "dispute_due": b.dispute_due,
                   "confirmed_by": b.confirmed_by}
                  for b in batches.of_order(conn, order_no)]
            return {"order_no": order_no, "state": o["state"], "bank_id": o["bank_id"],
                    "total_count": o["total_count"], "total_amount": o["total_amount"],
                    "items": per, "batches": bs,
                    "invalid_reasons": json.loads(o["detail"])["reasons"] if o["detail"] else []}
        answer = await self.db.read(read)
        await self._journal_read(caller, "order.status", params, f"order.status {order_no}", order_no)
        return answer

    @staticmethod
    def _evidence(params: dict, keys: tuple[str, ...], where: str = "", field_prefix: str = "") -> None:
        for k in keys:
            if not isinstance(params.get(k), str) or not params[k].strip():
                raise RpcError(MISSING_EVIDENCE, f"{where}{k} is required: a correction needs who confirmed "
                                                 f"it, who approved it and the approval reference",
                               field_prefix + k)
            try:
                _str(params, k)
            except RpcError as e:
                raise RpcError(e.code, where + e.message, field_prefix + k) from None

    @staticmethod
    def _new_values(params: dict, where: str = "", field_prefix: str = "") -> dict[str, Any]:
        """The account data a correction gives, validated; refusals prefixed with *where* (the seq)."""
        try:
            acct = _str(params, "account_no", max_len=32)
            if not ACCOUNT.fullmatch(acct):
                raise RpcError(INVALID_PARAMS, "account_no must be 8 to 32 digits", "account_no")
            new: dict[str, Any] = {"account_no": acct}
            if params.get("account_bank") is not None:
                new["account_bank"] = _str(params, "account_bank", required=False) or ""
            if params.get("name") is not None:
                new["name"] = _str(params, "name", max_len=50)
            if params.get("id_number") is not None:
                problem = id_number_problem(params["id_number"])
                if problem:
                    raise RpcError(INVALID_PARAMS, problem, "id_number")
                new["id_number"] = params["id_number"]
        except RpcError as e:
            raise RpcError(e.code, where + e.message, field_prefix + (e.field or "")) from None
        return new

    @staticmethod
    def _correctable(it: dict | None, order_no: str, seq: int, field: str) -> None:
        if it is None:
            raise RpcError(UNKNOWN_ITEM, f"order {order_no} has no item seq {seq}", field)
        if it["status"] != ItemStatus.FAILED:
            raise RpcError(WRONG_STATE, f"item {seq} is {it['status']}; only a FAILED item can be "
                                        f"corrected", field)
        if it["reason_code"] in NOT_FIXABLE:
            raise RpcError(NOT_ALLOWED, f"item {seq} failed {it['reason_code']} "
                                        f"({NOT_FIXABLE[it['reason_code']]}): it cannot be corrected, "
                                        f"only refunded", field)

    def _apply_corrections(self, conn: Connection, order_no: str, fixes: list[tuple[int, dict, dict]],
                           approved_by: str, approval_ref: str, caller: Caller, method: str,
                           journal_params: dict, decoded) -> int:
        """Lock, check and correct every (seq, new values, evidence) of one order, or raise and change nothing.

        Lock order: items (seq order), then the journal head, then the rows that name the entry.
        """
        _write_transaction(conn)
        self._order(conn, order_no)
        by_seq = {r["seq"]: r for r in items.lock(conn, order_no, [seq for seq, _, _ in fixes])}
        for i, (seq, _, _) in enumerate(fixes):
            self._correctable(by_seq.get(seq), order_no, seq,
                              "seq" if method == "item.correct" else f"corrections[{i}].seq")
        at, who = self._at(), f"{caller.transport}:{caller.identity}"[:200]
        rows = []
        for seq, new, evidence in fixes:
            it = by_seq[seq]
            # (status + ""): by the primary key, not the counts index (flow.py _apply_results)
            changed = items.correct(conn, order_no, seq, new)
            if changed != 1:   # cannot happen under the row lock; if it does, nothing is kept
                raise RpcError(WRONG_STATE, f"item {seq} changed while it was being corrected; ask again",
                               "seq")
            rows.append({"order_no": order_no, "seq": seq, "at": at, "failed_batch_no": it["batch_no"],
                         "reason_code": it["reason_code"],
                         "old_values": json.dumps({k: it[k] for k in new}, ensure_ascii=False),
                         "new_values": json.dumps(new, ensure_ascii=False),
                         "confirmed_by": evidence["confirmed_by"], "approved_by": approved_by,
                         "approval_ref": approval_ref, "caller": who})
        check_conservation(conn, order_no)
        jid = self._rpc_entry(conn, caller, method, journal_params, decoded(by_seq), order_no)
        corrections.add(conn, [{**r, "journal_id": jid} for r in rows])
        return jid

    @staticmethod
    def _masked_correction(c: dict) -> dict:
        return {**c, **{k: mask(c[k]) for k in ("account_no", "id_number") if isinstance(c.get(k), str)}}

    async def item_correct(self, params: dict, caller: Caller) -> dict:
        """A FAILED item gets new account data, with who confirmed and who approved (article 23)."""
        order_no = _str(params, "order_no", max_len=64)
        seq = params.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            raise RpcError(INVALID_PARAMS, "seq must be a positive integer", "seq")
        self._evidence(params, EVIDENCE)
        new = self._new_values(params)

        def correct(conn: Connection) -> dict:
            self._apply_corrections(
                conn, order_no, [(seq, new, params)], params["approved_by"], params["approval_ref"], caller,
                "item.correct", self._masked_correction(params),
                lambda before: f"item.correct {order_no} seq {seq}: account "
                               f"{mask(before[seq]['account_no'])} -> {mask(new['account_no'])}, "
                               f"confirmed by {params['confirmed_by']}, approved by {params['approved_by']} "
                               f"({params['approval_ref']})")
            n = corrections.count(conn, order_no, seq)
            bank_id = orders.bank_of(conn, order_no)
            return {"order_no": order_no, "seq": seq, "status": ItemStatus.CORRECTED,
                    "corrections": n, "bank_id": bank_id}
        return await self.db.run(correct)

    async def item_correct_many(self, params: dict, caller: Caller) -> dict:
        """Many FAILED items of one order corrected under one approval, all or none (core-api.md).

        Each correction is checked as item.correct checks it; a refusal names the seq and
        the field (`corrections[i].field`, data.seq). One transaction, one journal entry.
        """
        order_no = _str(params, "order_no", max_len=64)
        self._evidence(params, ("approved_by", "approval_ref"))
        listed = params.get("corrections")
        if not isinstance(listed, list) or not listed or len(listed) > MAX_CORRECTIONS:
            raise RpcError(INVALID_PARAMS, f"corrections must be a list of 1 to {MAX_CORRECTIONS} "
                                           f"corrections", "corrections")
        fixes: list[tuple[int, dict, dict]] = []
        seen: set[int] = set()
        for i, c in enumerate(listed):
            where = f"corrections[{i}]."
            if not isinstance(c, dict):
                raise RpcError(INVALID_PARAMS, f"corrections[{i}] must be an object", f"corrections[{i}]")
            seq = c.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
                raise RpcError(INVALID_PARAMS, f"corrections[{i}]: seq must be a positive integer",
                               where + "seq")
            try:
                _known(c, {"seq", "confirmed_by", *CORRECTABLE})
            except RpcError as e:
                raise RpcError(e.code, f"seq {seq}: {e.message}", where + (e.field or ""), {"seq": seq}) from None
            if seq in seen:
                raise RpcError(INVALID_PARAMS, f"seq {seq} is listed twice", where + "seq", {"seq": seq})
            seen.add(seq)
            try:
                self._evidence(c, ("confirmed_by",), f"seq {seq}: ", where)
                new = self._new_values(c, f"seq {seq}: ", where)
            except RpcError as e:
                raise RpcError(e.code, e.message, e.field, {"seq": seq}) from None
            fixes.append((seq, new, c))

        def correct(conn: Connection) -> dict:
            try:
                self._apply_corrections(
                    conn, order_no, fixes, params["approved_by"], params["approval_ref"], caller,
                    "item.correct_many",
                    {**params, "corrections": [self._masked_correction(c) for c in listed]},
                    lambda _: f"item.correct_many {order_no}: {len(fixes)} items corrected (seqs "
                              f"{_seq_ranges([s for s, _, _ in fixes])}), approved by {params['approved_by']} "
                              f"({params['approval_ref']})")
            except RpcError as e:
                seq = next((s for i, (s, _, _) in enumerate(fixes) if e.field == f"corrections[{i}].seq"), None)
                raise RpcError(e.code, e.message, e.field, {"seq": seq} if seq else e.data) from None
            bank_id = orders.bank_of(conn, order_no)
            return {"order_no": order_no, "corrected": len(fixes), "status": ItemStatus.CORRECTED,
                    "bank_id": bank_id}
        return await self.db.run(correct)

    async def order_retry(self, params: dict, caller: Caller) -> dict:
        """Send the order's corrected items now in a RETRY batch (otherwise the scheduler does)."""
        order_no = _str(params, "order_no", max_len=64)

        def request(conn: Connection) -> dict:
            _write_transaction(conn)
            o = orders.get_for_update(conn, order_no) or {}
            if not o:
                raise RpcError(UNKNOWN_ORDER, f"no order {order_no!r} is known to the gateway", "order_no")
            if o["state"] != OrderState.DISPATCHED:
                raise RpcError(WRONG_STATE, f"order {order_no} is {o['state']}; only a DISPATCHED order "
                                            f"has failed items to send again", "order_no")
            n, amt = items.corrected_waiting(conn, order_no)
            if not n:
                raise RpcError(WRONG_STATE, f"order {order_no} has no corrected item waiting to be sent",
                               "order_no")
            orders.request_retry(conn, order_no)
            self._rpc_entry(conn, caller, "order.retry", params,
                            f"order.retry {order_no}: {n} corrected items, {amt} fen", order_no)
            return {"order_no": order_no, "items": n, "amount": int(amt), "bank_id": o["bank_id"]}
        result = await self.db.run(request)
        self._wake(result["bank_id"])
        return result

    async def refund_request(self, params: dict, caller: Caller) -> dict:
        """Items that cannot be paid go back to the original channel: RF01, then RQ01 until DONE."""
        order_no = _str(params, "order_no", max_len=64)
        reason = _str(params, "reason", max_len=200)
        approved_by = params.get("approved_by")
        if not isinstance(approved_by, str) or not approved_by.strip():
            raise RpcError(MISSING_EVIDENCE, "approved_by is required: a refund needs the department "
                                             "head's approval", "approved_by")
        _str(params, "approved_by")
        seqs = params.get("seqs")
        if seqs != "all_failed":
            if (not isinstance(seqs, list) or not seqs or len(seqs) > 100000
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in seqs)
                    or len(set(seqs)) != len(seqs)):
                raise RpcError(INVALID_PARAMS, 'seqs must be "all_failed" or a list of distinct positive '
                                               'integers', "seqs")

        def request(conn: Connection) -> dict:
            _write_transaction(conn)
            o = self._order(conn, order_no)
            if seqs == "all_failed":
                rows = items.lock(conn, order_no, status=ItemStatus.FAILED)
                if not rows:
                    raise RpcError(WRONG_STATE, f"order {order_no} has no FAILED item", "seqs")
            else:
                rows = items.lock(conn, order_no, seqs)
                missing = sorted(set(seqs) - {r["seq"] for r in rows})
                if missing:
                    raise RpcError(UNKNOWN_ITEM, f"order {order_no} has no item seq {missing[0]}", "seqs")
                for r in rows:
                    if r["status"] != ItemStatus.FAILED:
                        raise RpcError(WRONG_STATE, f"item {r['seq']} is {r['status']}; only FAILED items can "
                                                    f"be refunded", "seqs")
            total = sum(r["amount"] for r in rows)
            at = self._at()
            who = f"{caller.transport}:{caller.identity}"[:200]
            refund_no = _numbered(refunds.create(conn, order_no, dict(
                bank_id=o["bank_id"], state=RefundState.NEW, total_count=len(rows), total_amount=total,
                reason=reason, approved_by=approved_by, caller=who, attempts=0, created_at=at,
                updated_at=at)), "refund_no")
            refunds.add_items(conn, refund_no, order_no, rows)
            changed = items.mark_refund_pending(conn, order_no, [r["seq"] for r in rows])
            if changed != len(rows):
                raise RpcError(WRONG_STATE, "items changed while the refund was being recorded; ask again")
            check_conservation(conn, order_no)
            self._rpc_entry(conn, caller, "refund.request", params,
                            f"refund.request {order_no}: {refund_no}, {len(rows)} items, {total} fen, "
                            f"approved by {approved_by}: {reason}", order_no)
            return {"refund_no": refund_no, "items": len(rows), "amount": total, "bank_id": o["bank_id"]}
        result = await self.db.run(request)
        self._wake(result["bank_id"])
        return result

    async def refund_status(self, params: dict, caller: Caller) -> dict:
        refund_no = _str(params, "refund_no", max_len=64)

        def read(conn: Connection) -> dict:
            r = refunds.get(conn, refund_no)
            if r is None:
                raise RpcError(UNKNOWN_REFUND, f"no refund {refund_no!r}", "refund_no")
            return {"refund_no": refund_no, "order_no": r["order_no"], "state": r["state"],
                    "count": r["total_count"], "amount": r["total_amount"],
                    "bank_serial": r["refund_serial"], "returned_to": mask(r["returned_to"]) or None,
                    "refund_amount": r["refund_amount"], "reject_code": r["reject_code"]}
        answer = await self.db.read(read)
        await self._journal_read(caller, "refund.status", params, f"refund.status {refund_no}",
                                 answer["order_no"])
        return answer

    @staticmethod
    def _done_batch(conn: Connection, batch_no: str) -> dict:
        """The batch, locked FOR UPDATE (after `_write_transaction`), refused unless DONE."""
        _write_transaction(conn)
        b = batches.get_for_update(conn, batch_no)
        if b is None:
            raise RpcError(UNKNOWN_BATCH, f"no batch {batch_no!r}", "batch_no")
        if b["state"] != BatchState.DONE:
            raise RpcError(WRONG_STATE, f"batch {batch_no} is {b['state']}; only a batch whose results "
                                        f"are in (DONE) can be checked or disputed", "batch_no")
        return b

    def _today(self) -> str:
        return self._at()[:10]

    async def batch_confirm(self, params: dict, caller: Caller) -> dict:
        """The department has checked the bank's results of a batch (article 26)."""
        batch_no = _str(params, "batch_no", max_len=64)
        if not isinstance(params.get("confirmed_by"), str) or not params["confirmed_by"].strip():
            raise RpcError(MISSING_EVIDENCE, "confirmed_by is required", "confirmed_by")
        who = _str(params, "confirmed_by")

        def confirm(conn: Connection) -> dict:
            b = self._done_batch(conn, batch_no)
            if b["confirmed_by"]:
                raise RpcError(WRONG_STATE, f"batch {batch_no} was confirmed by {b['confirmed_by']} at "
                                            f"{b['confirmed_at']}", "batch_no")
            on_time = b["confirm_due"] is None or self._today() <= b["confirm_due"]
            changed = batches.confirm(conn, batch_no, who, self._at())
            if changed != 1:   # cannot happen under the row lock; if it does, nothing is kept
                raise RpcError(WRONG_STATE, f"batch {batch_no} was confirmed meanwhile; ask order.status",
                               "batch_no")
            self._rpc_entry(conn, caller, "batch.confirm", params,
                            f"batch.confirm {batch_no} by {who}"
                            + ("" if on_time else f", after its due date {b['confirm_due']}"), b["order_no"])
            return {"batch_no": batch_no, "confirmed_by": who, "confirm_due": b["confirm_due"],
                    "on_time": on_time, "dispute_due": b["dispute_due"]}
        return await self.db.run(confirm)

    async def batch_dispute(self, params: dict, caller: Caller) -> dict:
        """Report an error in a batch's results to the bank (DP01), tracked against its deadline."""
        batch_no = _str(params, "batch_no", max_len=64)
        reason = _str(params, "reason", max_len=200)
        raised_by = _str(params, "raised_by")
        seqs = params.get("seqs")
        if (not isinstance(seqs, list) or not seqs or len(seqs) > 10000 or len(set(seqs)) != len(seqs)
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in seqs)):
            raise RpcError(INVALID_PARAMS, "seqs must be a list of distinct positive integers", "seqs")

        def dispute(conn: Connection) -> dict:
            b = self._done_batch(conn, batch_no)
            have = items.seqs_of_batch(conn, b["order_no"], batch_no, seqs)
            missing = sorted(set(seqs) - have)
            if missing:
                raise RpcError(UNKNOWN_ITEM, f"seq {missing[0]} is not an item of batch {batch_no}", "seqs")
            on_time = b["dispute_due"] is None or self._today() <= b["dispute_due"]
            at = self._at()
            dispute_no = _numbered(disputes.create(conn, batch_no, dict(
                order_no=b["order_no"], bank_id=b["bank_id"], seqs=json.dumps(sorted(seqs)), reason=reason,
                raised_by=raised_by, state=DisputeState.NEW, due=b["dispute_due"], on_time=int(on_time),
                attempts=0, created_at=at, updated_at=at)), "dispute_no")
            jid = self._rpc_entry(conn, caller, "batch.dispute", params,
                                  f"batch.dispute {batch_no}: {dispute_no}, {len(seqs)} items, raised by "
                                  f"{raised_by}: {reason}", b["order_no"])
            if not on_time:
                raise_alarm(conn, at, "warning", "dispute-overdue",
                            f"dispute {dispute_no} of batch {batch_no} raised after its due date "
                            f"{b['dispute_due']} (article 26: 3 working days)", bank_id=b["bank_id"],
                            order_no=b["order_no"], batch_no=batch_no, journal_id=jid)
            return {"dispute_no": dispute_no, "batch_no": batch_no, "due": b["dispute_due"],
                    "on_time": on_time, "bank_id": b["bank_id"]}
        result = await self.db.run(dispute)
        self._wake(result.pop("bank_id"))
        return result

    async def report_monthly(self, params: dict, caller: Caller) -> dict:
        """The month's figures per bank and project, and the reconciliation with the banks' statements."""
        year, month = params.get("year"), params.get("month")
        if not isinstance(year, int) or isinstance(year, bool) or not 2000 <= year <= 2100:
            raise RpcError(INVALID_PARAMS, "year must be an integer from 2000 to 2100", "year")
        if not isinstance(month, int) or isinstance(month, bool) or not 1 <= month <= 12:
            raise RpcError(INVALID_PARAMS, "month must be an integer from 1 to 12", "month")
        bank_id = _str(params, "bank_id", required=False, max_len=32)
        if bank_id is not None and bank_id not in self.gateway.flows:
            raise RpcError(INVALID_PARAMS, f"bank_id {bank_id!r} is not a configured bank; configured: "
                                           f"{', '.join(sorted(self.gateway.flows)) or 'none'}", "bank_id")
        project_code = _str(params, "project_code", required=False, max_len=64)

        from gateway import reports

        report = await self.db.read(reports.monthly, year, month, bank_id, project_code)
        await self._journal_read(caller, "report.monthly", params,
                                 f"report.monthly {year}-{month:02d}" + (f" bank {bank_id}" if bank_id else "")
                                 + (f" project {project_code}" if project_code else ""))
        return report

    async def health(self, params: dict, caller: Caller) -> dict:
        """The daemon's health (gateway/health.py); {"check": "live"} or {"check": "ready"} for a
        supervisor's short answers."""
        check = params.get("check")
        if check not in (None, "live", "ready"):
            raise RpcError(INVALID_PARAMS, "check must be \"live\" or \"ready\"", "check")
        from gateway import health
        if check == "live":
            return health.live(self.gateway)
        if check == "ready":
            return await health.ready(self.gateway, self.reactor)
        return await health.report(self.gateway, self.reactor)
