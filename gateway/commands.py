"""The gateway RPC's methods (core-api.md, "Gateway RPC"), behind `ICommands`.

Each method validates its params whole before touching anything (a refusal
changes nothing), and a method that changes state writes its journal entry,
naming the caller, in the same transaction as the change. Implemented so far:
order.submit, order.status, item.correct, order.retry, refund.request,
refund.status, batch.confirm, batch.dispute, health. report.monthly is not
implemented yet and answers METHOD_NOT_FOUND, so a client can tell.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from twisted.internet import defer
from zope.interface import implementer

from gateway.rules import check_conservation, iso, raise_alarm
from gateway.journal import Entry, Journal
from gateway.masking import mask
from gateway.models import (BatchState, ItemStatus, OrderState, RefundState, batches, corrections,
                            disputes, items, orders, refund_items, refunds)
from gateway.rpc_api import (INVALID_PARAMS, METHOD_NOT_FOUND, MISSING_EVIDENCE, NOT_ALLOWED,
                             UNKNOWN_BATCH, UNKNOWN_ITEM, UNKNOWN_ORDER, UNKNOWN_REFUND, WRONG_STATE,
                             Caller, ICommands, RpcError)
from gateway.validation import ACCOUNT, id_number_problem
from gateway.paper.rpc_methods import methods as paper_methods

# Item reason codes that a correction cannot fix (cnbank.md and iso20022.md): refund instead.
NOT_FIXABLE = {"R009": "duplicate item (重复明细)", "R010": "account holder deceased (账户人已故)",
               "AM05": "duplicate (重复)", "MD07": "account holder deceased (账户人已故)"}
EVIDENCE = ("confirmed_by", "approved_by", "approval_ref")


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

    def methods(self) -> list[str]:
        return sorted(self._table())

    def _table(self) -> dict:
        return {"order.submit": self.order_submit, "order.status": self.order_status,
                "item.correct": self.item_correct, "order.retry": self.order_retry,
                "refund.request": self.refund_request, "refund.status": self.refund_status,
                "batch.confirm": self.batch_confirm, "batch.dispute": self.batch_dispute,
                "report.monthly": self.report_monthly,
                "health": self.health, **paper_methods(self)}   # batch.register, report.yearly

    def call(self, method: str, params: dict, caller: Caller):
        fn = self._table().get(method)
        if fn is None:
            return defer.fail(RpcError(METHOD_NOT_FOUND, f"method {method!r} is not available; "
                                                         f"available: {', '.join(self.methods())}"))
        return defer.ensureDeferred(fn(params if params is not None else {}, caller))

    def _at(self) -> str:
        return iso(self.reactor.seconds())

    def _wake(self, bank_id: str) -> None:
        ticker = self.gateway.tickers.get(bank_id)
        if ticker is not None:
            ticker.kick()

    def _rpc_entry(self, conn: Connection, caller: Caller, method: str, params: dict, decoded: str,
                   order_no: str | None = None) -> int:
        payload = json.dumps({"method": method, "params": params}, ensure_ascii=False).encode()
        return self.journal.append(conn, Entry(
            "in", f"{caller.transport}:{caller.identity}"[:64], "rpc", method, decoded,
            payload=payload, order_no=order_no), self._at())

    @staticmethod
    def _order(conn: Connection, order_no: str) -> dict:
        o = conn.execute(select(orders).where(orders.c.order_no == order_no)).mappings().one_or_none()
        if o is None:
            raise RpcError(UNKNOWN_ORDER, f"no order {order_no!r} is known to the gateway", "order_no")
        return dict(o)

    # --- methods --------------------------------------------------------------

    async def order_submit(self, params: dict, caller: Caller) -> dict:
        """Pull this order now: wake the flow of its bank (or of every bank) to poll the core."""
        _known(params, {"order_no"})
        order_no = _str(params, "order_no", max_len=64)
        known = await self.db.run(lambda c: c.execute(select(orders.c.state, orders.c.bank_id).where(
            orders.c.order_no == order_no)).one_or_none())
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
        _known(params, {"order_no"})
        order_no = _str(params, "order_no", max_len=64)

        def read(conn: Connection) -> dict:
            o = self._order(conn, order_no)
            per = {r.status: {"count": r.n, "amount": int(r.amt or 0)} for r in conn.execute(
                select(items.c.status, func.count().label("n"), func.sum(items.c.amount).label("amt"))
                .where(items.c.order_no == order_no).group_by(items.c.status))}
            bs = [{"batch_no": b.batch_no, "kind": b.kind, "state": b.state, "count": b.total_count,
                   "amount": b.total_amount, "created_at": b.created_at, "updated_at": b.updated_at,
                   # deadlines (working days, conf/calendar): the bank's results, the department's
                   # check and its dispute (article 26); and who checked the results
                   "bank_due": b.bank_due, "confirm_due": b.confirm_due, "dispute_due": b.dispute_due,
                   "confirmed_by": b.confirmed_by}
                  for b in conn.execute(select(batches).where(batches.c.order_no == order_no)
                                        .order_by(batches.c.seq))]
            self._rpc_entry(conn, caller, "order.status", params, f"order.status {order_no}", order_no)
            return {"order_no": order_no, "state": o["state"], "bank_id": o["bank_id"],
                    "total_count": o["total_count"], "total_amount": o["total_amount"],
                    "items": per, "batches": bs,
                    "invalid_reasons": json.loads(o["detail"])["reasons"] if o["detail"] else []}
        return await self.db.run(read)

    async def item_correct(self, params: dict, caller: Caller) -> dict:
        """A FAILED item gets new account data, with who confirmed and who approved (article 23)."""
        _known(params, {"order_no", "seq", "account_no", "account_bank", "name", "id_number",
                        *EVIDENCE})
        order_no = _str(params, "order_no", max_len=64)
        seq = params.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            raise RpcError(INVALID_PARAMS, "seq must be a positive integer", "seq")
        for k in EVIDENCE:
            if not isinstance(params.get(k), str) or not params[k].strip():
                raise RpcError(MISSING_EVIDENCE, f"{k} is required: a correction needs who confirmed "
                                                 f"it, who approved it and the approval reference", k)
            _str(params, k)
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

        def correct(conn: Connection) -> dict:
            o = self._order(conn, order_no)
            it = conn.execute(select(items).where(items.c.order_no == order_no, items.c.seq == seq)
                              ).mappings().one_or_none()
            if it is None:
                raise RpcError(UNKNOWN_ITEM, f"order {order_no} has no item seq {seq}", "seq")
            if it["status"] != ItemStatus.FAILED:
                raise RpcError(WRONG_STATE, f"item {seq} is {it['status']}; only a FAILED item can be "
                                            f"corrected", "seq")
            if it["reason_code"] in NOT_FIXABLE:
                raise RpcError(NOT_ALLOWED, f"item {seq} failed {it['reason_code']} "
                                            f"({NOT_FIXABLE[it['reason_code']]}): it cannot be corrected, "
                                            f"only refunded", "seq")
            old = {k: it[k] for k in new}
            jid = self._rpc_entry(
                conn, caller, "item.correct", {**params, "account_no": mask(acct),
                                               **({"id_number": mask(new["id_number"])}
                                                  if "id_number" in new else {})},
                f"item.correct {order_no} seq {seq}: account {mask(it['account_no'])} -> {mask(acct)}, "
                f"confirmed by {params['confirmed_by']}, approved by {params['approved_by']} "
                f"({params['approval_ref']})", order_no)
            conn.execute(insert(corrections).values(
                order_no=order_no, seq=seq, at=self._at(), failed_batch_no=it["batch_no"],
                reason_code=it["reason_code"], old_values=json.dumps(old, ensure_ascii=False),
                new_values=json.dumps(new, ensure_ascii=False), confirmed_by=params["confirmed_by"],
                approved_by=params["approved_by"], approval_ref=params["approval_ref"],
                caller=f"{caller.transport}:{caller.identity}"[:200], journal_id=jid))
            conn.execute(update(items).where(items.c.order_no == order_no, items.c.seq == seq,
                                             items.c.status == ItemStatus.FAILED)
                         .values(status=ItemStatus.CORRECTED, **new))
            check_conservation(conn, order_no)
            n = conn.execute(select(func.count()).where(corrections.c.order_no == order_no,
                                                        corrections.c.seq == seq)).scalar_one()
            return {"order_no": order_no, "seq": seq, "status": ItemStatus.CORRECTED,
                    "corrections": n, "bank_id": o["bank_id"]}
        return await self.db.run(correct)

    async def order_retry(self, params: dict, caller: Caller) -> dict:
        """Send the order's corrected items now in a RETRY batch (otherwise the scheduler does)."""
        _known(params, {"order_no"})
        order_no = _str(params, "order_no", max_len=64)

        def request(conn: Connection) -> dict:
            o = self._order(conn, order_no)
            if o["state"] != OrderState.DISPATCHED:
                raise RpcError(WRONG_STATE, f"order {order_no} is {o['state']}; only a DISPATCHED order "
                                            f"has failed items to send again", "order_no")
            live = select(batches.c.batch_no).where(batches.c.batch_no == items.c.batch_no,
                                                    batches.c.state.in_(BatchState.LIVE))
            n, amt = conn.execute(select(func.count(), func.sum(items.c.amount)).where(
                items.c.order_no == order_no, items.c.status == ItemStatus.CORRECTED,
                ~live.exists())).one()
            if not n:
                raise RpcError(WRONG_STATE, f"order {order_no} has no corrected item waiting to be sent",
                               "order_no")
            conn.execute(update(orders).where(orders.c.order_no == order_no).values(retry_requested=1))
            self._rpc_entry(conn, caller, "order.retry", params,
                            f"order.retry {order_no}: {n} corrected items, {amt} fen", order_no)
            return {"order_no": order_no, "items": n, "amount": int(amt), "bank_id": o["bank_id"]}
        result = await self.db.run(request)
        self._wake(result["bank_id"])
        return result

    async def refund_request(self, params: dict, caller: Caller) -> dict:
        """Items that cannot be paid go back to the original channel: RF01, then RQ01 until DONE."""
        _known(params, {"order_no", "seqs", "reason", "approved_by"})
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
            o = self._order(conn, order_no)
            q = select(items.c.seq, items.c.status, items.c.batch_no, items.c.amount).where(
                items.c.order_no == order_no)
            if seqs == "all_failed":
                rows = list(conn.execute(q.where(items.c.status == ItemStatus.FAILED).order_by(items.c.seq)))
                if not rows:
                    raise RpcError(WRONG_STATE, f"order {order_no} has no FAILED item", "seqs")
            else:
                rows = list(conn.execute(q.where(items.c.seq.in_(seqs)).order_by(items.c.seq)))
                missing = sorted(set(seqs) - {r.seq for r in rows})
                if missing:
                    raise RpcError(UNKNOWN_ITEM, f"order {order_no} has no item seq {missing[0]}", "seqs")
                for r in rows:
                    if r.status != ItemStatus.FAILED:
                        raise RpcError(WRONG_STATE, f"item {r.seq} is {r.status}; only FAILED items can be "
                                                    f"refunded", "seqs")
            n = conn.execute(select(func.count()).where(refunds.c.order_no == order_no)).scalar_one()
            refund_no = f"{order_no}-F{n + 1:02d}"
            total = sum(r.amount for r in rows)
            at = self._at()
            who = f"{caller.transport}:{caller.identity}"[:200]
            self._rpc_entry(conn, caller, "refund.request", params,
                            f"refund.request {order_no}: {refund_no}, {len(rows)} items, {total} fen, "
                            f"approved by {approved_by}: {reason}", order_no)
            conn.execute(insert(refunds).values(
                refund_no=refund_no, order_no=order_no, bank_id=o["bank_id"], state=RefundState.NEW,
                total_count=len(rows), total_amount=total, reason=reason, approved_by=approved_by,
                caller=who, attempts=0, created_at=at, updated_at=at))
            conn.execute(insert(refund_items), [
                {"refund_no": refund_no, "seq": r.seq, "order_no": order_no, "batch_no": r.batch_no,
                 "amount": r.amount} for r in rows])
            changed = conn.execute(update(items).where(
                items.c.order_no == order_no, items.c.status == ItemStatus.FAILED,
                items.c.seq.in_([r.seq for r in rows])).values(status=ItemStatus.REFUND_PENDING)).rowcount
            if changed != len(rows):
                raise RpcError(WRONG_STATE, "items changed while the refund was being recorded; ask again")
            check_conservation(conn, order_no)
            return {"refund_no": refund_no, "items": len(rows), "amount": total, "bank_id": o["bank_id"]}
        result = await self.db.run(request)
        self._wake(result["bank_id"])
        return result

    async def refund_status(self, params: dict, caller: Caller) -> dict:
        _known(params, {"refund_no"})
        refund_no = _str(params, "refund_no", max_len=64)

        def read(conn: Connection) -> dict:
            r = conn.execute(select(refunds).where(refunds.c.refund_no == refund_no)).mappings().one_or_none()
            if r is None:
                raise RpcError(UNKNOWN_REFUND, f"no refund {refund_no!r}", "refund_no")
            self._rpc_entry(conn, caller, "refund.status", params, f"refund.status {refund_no}",
                            r["order_no"])
            return {"refund_no": refund_no, "order_no": r["order_no"], "state": r["state"],
                    "count": r["total_count"], "amount": r["total_amount"],
                    "bank_serial": r["refund_serial"], "returned_to": mask(r["returned_to"]) or None,
                    "refund_amount": r["refund_amount"], "reject_code": r["reject_code"]}
        return await self.db.run(read)

    @staticmethod
    def _done_batch(conn: Connection, batch_no: str) -> dict:
        b = conn.execute(select(batches).where(batches.c.batch_no == batch_no)).mappings().one_or_none()
        if b is None:
            raise RpcError(UNKNOWN_BATCH, f"no batch {batch_no!r}", "batch_no")
        if b["state"] != BatchState.DONE:
            raise RpcError(WRONG_STATE, f"batch {batch_no} is {b['state']}; only a batch whose results "
                                        f"are in (DONE) can be checked or disputed", "batch_no")
        return dict(b)

    def _today(self) -> str:
        return self._at()[:10]

    async def batch_confirm(self, params: dict, caller: Caller) -> dict:
        """The department has checked the bank's results of a batch (article 26)."""
        _known(params, {"batch_no", "confirmed_by"})
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
            self._rpc_entry(conn, caller, "batch.confirm", params,
                            f"batch.confirm {batch_no} by {who}"
                            + ("" if on_time else f", after its due date {b['confirm_due']}"), b["order_no"])
            conn.execute(update(batches).where(batches.c.batch_no == batch_no).values(
                confirmed_by=who, confirmed_at=self._at()))
            return {"batch_no": batch_no, "confirmed_by": who, "confirm_due": b["confirm_due"],
                    "on_time": on_time, "dispute_due": b["dispute_due"]}
        return await self.db.run(confirm)

    async def batch_dispute(self, params: dict, caller: Caller) -> dict:
        """Report an error in a batch's results to the bank (DP01), tracked against its deadline."""
        _known(params, {"batch_no", "seqs", "reason", "raised_by"})
        batch_no = _str(params, "batch_no", max_len=64)
        reason = _str(params, "reason", max_len=200)
        raised_by = _str(params, "raised_by")
        seqs = params.get("seqs")
        if (not isinstance(seqs, list) or not seqs or len(seqs) > 10000 or len(set(seqs)) != len(seqs)
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in seqs)):
            raise RpcError(INVALID_PARAMS, "seqs must be a list of distinct positive integers", "seqs")

        def dispute(conn: Connection) -> dict:
            b = self._done_batch(conn, batch_no)
            have = set(conn.execute(select(items.c.seq).where(
                items.c.order_no == b["order_no"], items.c.seq.in_(seqs),
                (items.c.batch_no == batch_no) | (items.c.orig_batch_no == batch_no))).scalars())
            missing = sorted(set(seqs) - have)
            if missing:
                raise RpcError(UNKNOWN_ITEM, f"seq {missing[0]} is not an item of batch {batch_no}", "seqs")
            n = conn.execute(select(func.count()).where(disputes.c.batch_no == batch_no)).scalar_one()
            dispute_no = f"{batch_no}-D{n + 1:02d}"
            on_time = b["dispute_due"] is None or self._today() <= b["dispute_due"]
            at = self._at()
            jid = self._rpc_entry(conn, caller, "batch.dispute", params,
                                  f"batch.dispute {batch_no}: {dispute_no}, {len(seqs)} items, raised by "
                                  f"{raised_by}: {reason}", b["order_no"])
            conn.execute(insert(disputes).values(
                dispute_no=dispute_no, batch_no=batch_no, order_no=b["order_no"], bank_id=b["bank_id"],
                seqs=json.dumps(sorted(seqs)), reason=reason, raised_by=raised_by, state="NEW",
                due=b["dispute_due"], on_time=int(on_time), attempts=0, created_at=at, updated_at=at))
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
        _known(params, {"year", "month", "bank_id", "project_code"})
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

        def read(conn: Connection) -> dict:
            report = reports.monthly(conn, year, month, bank_id, project_code)
            self._rpc_entry(conn, caller, "report.monthly", params,
                            f"report.monthly {year}-{month:02d}"
                            + (f" bank {bank_id}" if bank_id else "")
                            + (f" project {project_code}" if project_code else ""))
            return report
        return await self.db.run(read)

    async def health(self, params: dict, caller: Caller) -> dict:
        _known(params, set())

        def probe(conn: Connection) -> int:
            return conn.execute(select(func.count()).select_from(orders)).scalar_one()
        try:
            n = await self.db.run(probe)
            database = {"ok": True, "orders": n}
        except Exception as e:  # noqa: BLE001  (health reports, it does not raise)
            database = {"ok": False, "error": str(e)[:200]}
        banks = {bank_id: {"ticker_running": bool(t.running)} for bank_id, t in self.gateway.tickers.items()}
        # A standby daemon serves the RPC too; its changes are picked up by the active one.
        lead = getattr(self.gateway, "leadership", None)
        role = lead.status() if lead is not None else {"role": "active", "since": None}
        sched = getattr(self.gateway, "scheduler", None)
        schedule = {"retry_times": list(sched.retry_times) if sched else [],
                    "next_run_times": sched.next_run_times() if sched else []}
        return {"role": role["role"], "role_since": role["since"], "schedule": schedule,
                "database": database, "banks": banks,
                "core": {"base_url": self.gateway.core.base if self.gateway.core else None}}
