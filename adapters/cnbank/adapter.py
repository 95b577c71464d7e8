"""The `cnbank` dialect behind IBankAdapter: BP01/BQ01/RF01/RQ01/DP01/RC01 over framed TCP, files over SFTP.

Every request is journaled (with the flow's state change) before it leaves;
after a lost reply the flow asks BQ01/RQ01 first (rule 3), which this adapter
maps to BatchStatus/RefundStatus ("unknown_to_bank" is E007). A reply is
decrypted, verified and parsed whole before anything is returned; one that
fails is journaled, alarmed and returned as None.
"""

from __future__ import annotations

import os
from typing import Iterable

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from adapters import tcp
from adapters.link_watch import ALARM_KIND as LINK_DOWN
from adapters.link_watch import LinkWatch
from adapters.cnbank.link import BuiltFile, CnBankLink, Incoming, LinkError, Outgoing
from adapters.interface import (BatchItem, BatchSpec, BatchStatus, Built, IBankAdapter, ItemResult,
                                LateReturn, RefundStatus, Reply, RequestTiming, ResultSet,
                                ResultsRefused, ResultTotals)
from adapters.cnbank.statements import statement_rows
from adapters.interface import Entry
from protocols import cnbank_files as files
from protocols.money import format_yuan

log = Logger()


# Refusals that mean "not now": MsgId reused, clock skew; sent again with a new MsgId.
RETRYABLE_REFUSALS = ("E008", "E009")


@implementer(IBankAdapter)
class CnBankAdapter:
    """One `cnbank` bank: its link (keys, TCP and SFTP endpoints) and the dialect's rules."""

    dialect = "cnbank"

    def __init__(self, reactor, bank, link: CnBankLink, faults=None):
        self.reactor = reactor
        self.bank = bank
        self.bank_id = bank.bank_id
        self.link = link
        self.work_dir = link.work_dir
        self.faults = faults
        self.timing = RequestTiming()   # the gateway gives one that feeds /metrics
        self._link = LinkWatch(bank.cnbank.link_alarm_after_s, self.bank_id)
        # After a start, an episode of a former run may still be open: the first good
        # answer clears it (once), later ones only when this run raised it.
        self._skew_maybe_open = True
        self._refusing_maybe_open = True

    # --- the link's health ------------------------------------------------------------

    def link_state(self) -> dict:
        """The message link as last seen (kept in memory, for health): when a request last got a
        verified reply, the last failure and when, consecutive failures, and since when failing."""
        return self._link.state()

    def _link_down_alarm(self, conn, recorder, now: float, journal_id) -> None:
        recorder.alarm_in(conn, "critical", LINK_DOWN, self._link.down_message(now), None, None,
                          journal_id)

    # --- messages ---------------------------------------------------------------

    async def _send(self, ref: dict, tx: str, fields: dict, recorder, before=None) -> Incoming | None:
        """Journal a request (with `before`'s state change), send it, open and journal the reply.

        Returns the verified reply, or None when there is none to act on (no answer, or an
        answer that failed verification or does not answer this request: journaled and
        alarmed; its outcome is unknown). A request that never left (connect failed) is
        returned as an Incoming with tx_code "" so the caller can say "unsent".

        Conditions of the whole link are one alarm episode per bank, cleared when they end:
        bank-link-down (no verified answer for link_alarm_after_s), bank-clock-skew (a reply
        time outside max_clock_skew_s) and bank-refusing (E008/E009: refused for now).
        """
        now = recorder.now()
        out: Outgoing = await self.link.build(tx, fields, now)
        await recorder.record([Entry("out", self.bank_id, "tcp", tx, out.decoded, payload=out.raw,
                                     msg_id=out.msg_id, order_no=ref["order_no"],
                                     batch_no=ref["batch_no"])], change=before)
        timed = self.timing.start(tx)
        try:
            raw = await self.link.exchange(out)
        except tcp.ExchangeError as e:
            timed.done("error", e.kind)
            now = recorder.now()
            down = self._link.failed(now, f"{tx}: {e}")

            def failed(conn):
                jid = recorder.journal_in(conn, Entry(
                    "event", self.bank_id, "tcp", tx, f"{tx} {out.msg_id}: {e} (sent: {e.sent})",
                    msg_id=out.msg_id, order_no=ref["order_no"], batch_no=ref["batch_no"]))
                if down:
                    self._link_down_alarm(conn, recorder, now, jid)
            await recorder.read(failed)
            log.warn("{bank}: {tx} for {batch}: {error}", bank=self.bank_id, tx=tx,
                     batch=ref["batch_no"], error=e)
            if not e.sent:
                return Incoming("", out.msg_id, b"", "", str(e), {}, "")
            return None
        timed.stop()    # the round trip; the reply is judged below
        if tx == "BP01" and self.faults is not None:
            self.faults.point("BP01-reply-received")
        now = recorder.now()
        try:
            inc = await self.link.open(out, raw, now)
        except LinkError as e:
            timed.done("error", "unverified")
            down = self._link.failed(now, f"{tx}: {e}")

            def rejected(conn):
                jid = recorder.journal_in(conn, Entry(
                    "in", self.bank_id, "tcp", tx, f"unverified reply: {e}", payload=raw,
                    msg_id=out.msg_id, order_no=ref["order_no"], batch_no=ref["batch_no"],
                    verified=f"failed: {e.code} {e}"[:200]))
                recorder.alarm_in(conn, "critical", "bank-reply-rejected",
                                  f"{tx} reply for {ref['batch_no'] or '-'} refused, its outcome "
                                  f"unknown: {e}", ref["order_no"], ref["batch_no"], jid)
                if down:
                    self._link_down_alarm(conn, recorder, now, jid)
            await recorder.read(rejected)
            return None
        if inc.ret_code == "0000":
            timed.ok()
        else:
            timed.done("refused", inc.ret_code)
        clear_down = self._link.ok(now)
        skew_was_open = self._skew_maybe_open
        self._skew_maybe_open = inc.skew_s is not None
        refusing_was_open = self._refusing_maybe_open
        self._refusing_maybe_open = inc.ret_code in RETRYABLE_REFUSALS

        def keep(conn):
            jid = recorder.journal_in(conn, Entry(
                "in", self.bank_id, "tcp", inc.tx_code, inc.decoded, payload=inc.raw,
                msg_id=inc.msg_id, order_no=ref["order_no"], batch_no=ref["batch_no"],
                verified="ok" if inc.skew_s is None else f"ok; clock skew {inc.skew_s:+d} s"))
            if clear_down:
                recorder.clear_in(conn, LINK_DOWN)
            if inc.skew_s is not None:
                recorder.alarm_in(conn, "warning", "bank-clock-skew",
                                  f"the bank's reply to {tx} is dated {inc.skew_s:+d} s from our "
                                  f"clock, over the {self.bank.cnbank.max_clock_skew_s} s window "
                                  f"(accepted: it answers our MsgId)", None, None, jid)
            elif skew_was_open:
                recorder.clear_in(conn, "bank-clock-skew")
            if inc.ret_code in RETRYABLE_REFUSALS:
                recorder.alarm_in(conn, "warning", "bank-refusing",
                                  f"the bank refuses our requests for now: {tx} for "
                                  f"{ref['batch_no'] or '-'} answered {inc.ret_code} {inc.ret_msg}",
                                  None, None, jid, key=inc.ret_code)
            elif refusing_was_open:
                for code in RETRYABLE_REFUSALS:
                    recorder.clear_in(conn, "bank-refusing", key=code)
            return jid
        inc.journal_id = await recorder.read(keep)
        return inc

    async def _sftp(self, tx: str, work):
        """Await one SFTP session's work (connect, the files, close), timed as `tx`; a failure is
        counted by its class (the SFTP client's error type) and raised as it was."""
        timed = self.timing.start(tx)
        try:
            out = await work
        except Exception as e:
            timed.done("error", type(e).__name__)
            raise
        timed.ok()
        return out

    async def heartbeat(self, recorder) -> bool:
        """HB01: one round trip on the message link, its reply judged like any other; True when
        the bank answered 0000. Feeds link_state() and the bank-link-down episode."""
        inc = await self._send({"order_no": None, "batch_no": None}, "HB01", {}, recorder)
        return inc is not None and inc.tx_code != "" and inc.ret_code == "0000"

    @staticmethod
    def _reply(inc: Incoming | None, bank_ref_field: str | None = None) -> Reply | None:
        if inc is None:
            return None
        if inc.tx_code == "":
            return Reply("unsent", message=inc.ret_msg)
        if inc.ret_code == "0000":
            outcome = "accepted"
        elif inc.ret_code in RETRYABLE_REFUSALS:
            outcome = "retry"
        else:
            outcome = "refused"
        return Reply(outcome, inc.ret_code, inc.ret_msg,
                     bank_ref=inc.fields.get(bank_ref_field) if bank_ref_field else None,
                     journal_id=inc.journal_id, fields=inc.fields)

    # --- batches -------------------------------------------------------------------

    def build_batch(self, spec: BatchSpec, items: Iterable[BatchItem]) -> Built:
        header = files.BatchHeader(
            batch_no=spec.batch_no, order_no=spec.order_no, payer_acct=self.bank.payer_acct,
            payer_name=self.bank.payer_name, total_count=spec.total_count,
            total_amount=spec.total_amount, submit_date=spec.submit_date, proj_short=spec.project_short)
        lines = (files.BatchLine(seq=i.seq, name=i.name, id_no=i.id_number, acct_no=i.account_no,
                                 acct_bank=i.account_bank, amount=i.amount, proj_code=spec.project_code,
                                 remark=i.remark,
                                 orig_batch_no=i.orig_batch_no if spec.kind == "RETRY" else "")
                 for i in items)
        b = self.link.write_batch_file(header, lines, kind=spec.kind)
        return Built(b.name, b.sm3, b.enc_key, b.count, b.amount, digest_alg="SM3")

    def build_batch_rows(self, spec: BatchSpec, blocks: Iterable[list]) -> Built:
        """build_batch from blocks of rows in BATCH_ROW_FIELDS order (adapters/interface.py):
        the same file, without an object per item."""
        header = files.BatchHeader(
            batch_no=spec.batch_no, order_no=spec.order_no, payer_acct=self.bank.payer_acct,
            payer_name=self.bank.payer_name, total_count=spec.total_count,
            total_amount=spec.total_amount, submit_date=spec.submit_date, proj_short=spec.project_short)
        proj, retry = spec.project_code, spec.kind == "RETRY"
        lines = ([(seq, name, idn, acct, bank, amount, proj, remark, (orig or "") if retry else "")
                  for seq, name, idn, acct, bank, _code, amount, remark, orig in block]
                 for block in blocks)
        b = self.link.write_batch_file(header, (), kind=spec.kind, blocks=lines)
        return Built(b.name, b.sm3, b.enc_key, b.count, b.amount, digest_alg="SM3")

    def audit_read(self, kind: str, ciphertext: bytes, key_b64: bytes | str):
        """A journaled batch or result file's (header, lines), for the console's masked view
        (blocking; see CnBankLink.audit_read)."""
        return self.link.audit_read(kind, ciphertext, key_b64)

    def _paths(self, batch: dict) -> tuple[str, str]:
        p = os.path.join(self.work_dir, batch["file_name"])
        return p, p + ".sig"

    def built_exists(self, batch: dict) -> bool:
        return all(os.path.exists(p) for p in self._paths(batch))

    async def deliver_batch(self, batch: dict, recorder) -> None:
        cipher, sig = self._paths(batch)
        await self._sftp("sftp_put", self.link.upload(BuiltFile(
            batch["file_name"], cipher, sig, batch["file_digest"], batch["file_enc_key"],
            batch["total_count"], batch["total_amount"])))
        in_dir = self.bank.sftp.in_dir
        await recorder.record([
            Entry("out", self.bank_id, "sftp", "PUT", f"{in_dir}/{batch['file_name']}.sig",
                  payload_file=sig, order_no=batch["order_no"], batch_no=batch["batch_no"]),
            Entry("out", self.bank_id, "sftp", "PUT",
                  f"{in_dir}/{batch['file_name']}: batch file of {batch['total_count']} items, "
                  f"{batch['total_amount']} fen, FileSM3 {batch['file_digest']}",
                  payload_file=cipher, order_no=batch["order_no"], batch_no=batch["batch_no"])]
            + self._audit_key_entry(batch, cipher))

    def _audit_key_entry(self, batch: dict, cipher: str) -> list:
        """The file's key||iv under the gateway's own SM2 key, journaled beside the upload (none
        for a file built before the gateway kept it)."""
        from adapters.cnbank.link import AUDIT_KEY_SUFFIX
        try:
            with open(cipher + AUDIT_KEY_SUFFIX, "rb") as f:
                wrapped = f.read(4096)
        except OSError:
            return []
        return [Entry("event", self.bank_id, "sftp", "FILEKEY",
                      f"{batch['file_name']}: its key||iv under the gateway's own SM2 key (for an audited "
                      f"view: gatewayctl journal show --decrypt)", payload=wrapped,
                      order_no=batch["order_no"], batch_no=batch["batch_no"])]

    async def submit_batch(self, batch: dict, recorder, before) -> Reply | None:
        fields = {"BatchNo": batch["batch_no"], "Kind": batch["kind"], "OrderNo": batch["order_no"],
                  "FileName": batch["file_name"], "FileSM3": batch["file_digest"],
                  "FileEncKey": batch["file_enc_key"], "TotalCount": str(batch["total_count"]),
                  "TotalAmount": format_yuan(batch["total_amount"])}
        return self._reply(await self._send(batch, "BP01", fields, recorder, before), "BankBatchNo")

    async def batch_status(self, batch: dict, recorder) -> BatchStatus | None:
        inc = await self._send(batch, "BQ01", {"BatchNo": batch["batch_no"]}, recorder)
        if inc is None or inc.tx_code == "":
            return None
        if inc.ret_code == "E007":
            return BatchStatus("unknown_to_bank", inc.ret_code, inc.ret_msg, journal_id=inc.journal_id)
        if inc.ret_code != "0000":
            return BatchStatus("unanswered", inc.ret_code, inc.ret_msg, journal_id=inc.journal_id,
                               alarmed=inc.ret_code in RETRYABLE_REFUSALS)
        f = inc.fields
        returns = [LateReturn(serial=r.get("ReturnSerial"), seq=r.get("Seq"), amount=r.get("Amount"),
                              reason_code=r.get("ReasonCode"), return_date=str(r.get("ReturnDate") or ""))
                   for r in (f.get("Returns") or [])]
        status = f.get("Status")
        if status == "RJCT":
            return BatchStatus("rejected", f.get("RejectCode") or "", f.get("RejectMsg") or "",
                               returns=returns, journal_id=inc.journal_id)
        if status == "DONE":
            return BatchStatus("done", results={"ref": f.get("ResultFile"), "digest": f.get("FileSM3"),
                                                "key": f.get("FileEncKey")},
                               returns=returns, journal_id=inc.journal_id)
        return BatchStatus("pending", returns=returns, journal_id=inc.journal_id)

    async def fetch_results(self, batch: dict, recorder) -> ResultSet:
        name = batch["result_ref"]
        cipher, sig = await self._sftp("sftp_get", self.link.download(name))
        ref = {"order_no": batch["order_no"], "batch_no": batch["batch_no"]}

        def evidence(verified: str, summary: str = "") -> list:
            return [Entry("in", self.bank_id, "sftp", "GET", f"{name}.sig", payload_file=sig,
                          verified=verified[:200], **ref),
                    Entry("in", self.bank_id, "sftp", "GET",
                          f"result file {name}: {summary}" if verified == "ok"
                          else f"result file {name} rejected whole: {verified}",
                          payload_file=cipher, verified=verified[:200], **ref)]

        def cleanup(*paths) -> None:
            for p in paths:
                if os.path.exists(p):
                    os.unlink(p)
        try:
            fetched = await deferToThread(self.link.open_file, name, cipher, sig,
                                          batch["result_enc_key"], batch["result_sm3"])
        except LinkError as e:
            raise ResultsRefused(str(e), evidence(f"failed: {e}"),
                                 lambda: cleanup(cipher, sig)) from None
        try:
            header, lines = self.link.result_lines(fetched.plain_path)
        except files.FileFormatError as e:
            why = f"FileFormatError: {e}"
            raise ResultsRefused(why, evidence(f"failed: {why}"),
                                 lambda: cleanup(fetched.plain_path, cipher, sig)) from None
        totals = ResultTotals(header.batch_no, header.total, header.total_amt, header.succ_cnt,
                              header.succ_amt, header.fail_cnt, header.fail_amt)
        summary = (f"{header.total} lines, paid {header.succ_cnt} / {header.succ_amt} fen, failed "
                   f"{header.fail_cnt} / {header.fail_amt} fen, SM3 {fetched.sm3}")

        def results():
            try:
                for line in lines:
                    yield ItemResult(line.seq, line.status == "S", line.reason_code, line.reason_text,
                                     line.bank_serial or "", line.post_date, line.amount, line.acct_no)
            except files.FileFormatError as e:
                raise ResultsRefused(f"FileFormatError: {e}", []) from None
        return ResultSet(totals, results,
                         lambda verified: evidence(verified, summary),
                         lambda: cleanup(fetched.plain_path, cipher, sig), summary=summary)

    async def after_results(self, batch: dict) -> None:
        if self.bank.sftp.remove_uploads:
            await self._sftp("sftp_remove", self.link.remove_uploads(batch["file_name"]))

    # --- refunds, disputes, statements ------------------------------------------------

    async def send_refund(self, refund: dict, lines: list[dict], recorder, before) -> Reply | None:
        fields = {"RefundNo": refund["refund_no"], "OrderNo": refund["order_no"],
                  "TotalCount": str(refund["total_count"]),
                  "TotalAmount": format_yuan(refund["total_amount"]),
                  "Items": [{"Seq": str(x["seq"]), "BatchNo": x["batch_no"],
                             "Amount": format_yuan(x["amount"])} for x in lines]}
        ref = {"order_no": refund["order_no"], "batch_no": refund["refund_no"]}
        return self._reply(await self._send(ref, "RF01", fields, recorder, before))

    async def refund_status(self, refund: dict, recorder) -> RefundStatus | None:
        ref = {"order_no": refund["order_no"], "batch_no": refund["refund_no"]}
        inc = await self._send(ref, "RQ01", {"RefundNo": refund["refund_no"]}, recorder)
        if inc is None or inc.tx_code == "":
            return None
        if inc.ret_code == "E007":
            return RefundStatus("unknown_to_bank", inc.ret_code, inc.ret_msg, journal_id=inc.journal_id)
        if inc.ret_code != "0000":
            return RefundStatus("unanswered", inc.ret_code, inc.ret_msg, journal_id=inc.journal_id,
                                alarmed=inc.ret_code in RETRYABLE_REFUSALS)
        f = inc.fields
        status = f.get("Status")
        if status == "DONE":
            return RefundStatus("done", serial=f.get("RefundSerial"), amount=f.get("RefundAmount"),
                                returned_to=f.get("ReturnedTo"), journal_id=inc.journal_id)
        if status == "RJCT":
            return RefundStatus("rejected", f.get("RejectCode") or "", f.get("RejectMsg") or "",
                                journal_id=inc.journal_id)
        return RefundStatus("pending", journal_id=inc.journal_id)

    async def dispute(self, dispute: dict, recorder, before) -> Reply | None:
        ref = {"order_no": dispute["order_no"], "batch_no": dispute["dispute_no"]}
        fields = {"DisputeNo": dispute["dispute_no"], "BatchNo": dispute["batch_no"],
                  "Seqs": [str(x) for x in dispute["seqs"]], "Reason": dispute["reason"]}
        reply = self._reply(await self._send(ref, "DP01", fields, recorder, before))
        if reply is not None and reply.outcome == "accepted" and reply.fields.get("Accepted") != "Y":
            reply.outcome = "refused"
        return reply

    async def fetch_statement(self, period: str, recorder):
        """RC01, then the statement file over SFTP: decrypted, verified, parsed whole and stored
        (recorder.statement_in) with its journal entries in one transaction; None if not fetched."""
        ref = {"order_no": None, "batch_no": None}
        inc = await self._send(ref, "RC01", {"Period": period}, recorder)
        if inc is None or inc.tx_code == "":
            return None
        if inc.ret_code != "0000":
            await recorder.record([], alarm=("warning", "statement-refused",
                                             f"RC01 {period} answered {inc.ret_code} {inc.ret_msg}", None, None))
            return None
        f = inc.fields
        name = f["StatementFile"]
        cipher, sig = await self._sftp("sftp_get", self.link.download(name))
        fetched = None
        try:
            try:
                fetched = await deferToThread(self.link.open_file, name, cipher, sig, f["FileEncKey"], f["FileSM3"])

                def parse():
                    with open(fetched.plain_path, "rb") as fh:
                        return files.read_statement_file(fh, unit=self.bank.cnbank.amount_unit,
                                                         encoding=self.bank.cnbank.encoding, period=period)
                statement = await deferToThread(parse)
            except (LinkError, files.FileFormatError) as e:
                await recorder.record(
                    [Entry("in", self.bank_id, "sftp", "GET", f"statement {name} rejected whole: {e}",
                           payload_file=cipher, verified=f"failed: {e}"[:200])],
                    alarm=("critical", "statement-rejected", f"statement {name} rejected, not stored: {e}",
                           None, None))
                return None

            def keep(conn):
                recorder.clear_in(conn, "statement-refused")   # RC01 is answered again
                recorder.journal_in(conn, Entry("in", self.bank_id, "sftp", "GET", f"{name}.sig",
                                                payload_file=sig, verified="ok"))
                jid = recorder.journal_in(conn, Entry("in", self.bank_id, "sftp", "GET",
                                                      f"statement {name} ({period}), SM3 {fetched.sm3}",
                                                      payload_file=cipher, verified="ok"))
                header, lines = statement_rows(statement, period)
                return recorder.statement_in(conn, period, f"cnbank:{name}", header, lines, jid)
            statement_id = await recorder.read(keep)
            return {"period": period, "source": f"cnbank:{name}", "statement_id": statement_id}
        finally:
            for pth in (cipher, sig, fetched.plain_path if fetched else None):
                if pth and os.path.exists(pth):
                    os.unlink(pth)

    def close(self):
        return None
