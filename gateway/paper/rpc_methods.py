"""The RPC methods of articles 25-26 on paper: batch.register and report.yearly (core-api.md).

Kept apart from gateway/commands.py: `methods(commands)` gives the table entries,
each validating its params whole and journaling the call with its caller like
every other method (their parameters are declared in gateway.rpc_api.METHODS,
which the transport checks). Both only read, from a snapshot on the read pool
(`Database.read`), so that a year's report does not hold up the writer; the call is
journaled after it is read, as report.monthly is.
"""

from __future__ import annotations

import datetime

from sqlalchemy import Connection

from gateway.rpc_api import INVALID_PARAMS, Caller, RpcError
from gateway.rules import CST


def _int(params: dict, key: str, lo: int, hi: int) -> int:
    v = params.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise RpcError(INVALID_PARAMS, f"{key} must be an integer from {lo} to {hi}", key)
    return v


def _opt_str(params: dict, key: str, max_len: int) -> str | None:
    v = params.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise RpcError(INVALID_PARAMS, f"{key} must be a string of at most {max_len} characters", key)
    return v


def _bank(cmds, params: dict) -> str | None:  # noqa: ANN001
    bank_id = _opt_str(params, "bank_id", 32)
    flows = cmds.gateway.flows
    if bank_id is not None and bank_id not in flows:
        raise RpcError(INVALID_PARAMS, f"bank_id {bank_id!r} is not a configured bank; configured: "
                                       f"{', '.join(sorted(flows)) or 'none'}", "bank_id")
    return bank_id


def _calendar(cmds):  # noqa: ANN001, ANN202
    cfg = getattr(cmds.gateway, "cfg", None)
    if cfg is None:
        cfg = next((f.cfg for f in cmds.gateway.flows.values() if hasattr(f, "cfg")), None)
    return getattr(cfg, "calendar", None)


def methods(cmds) -> dict:  # noqa: ANN001  (gateway.commands.Commands)
    async def batch_register(params: dict, caller: Caller) -> dict:
        """The handover register of a month: per batch, results, sheet, confirmation, disputes, filing."""
        year, month = _int(params, "year", 2000, 2100), _int(params, "month", 1, 12)
        bank_id = _bank(cmds, params)
        today = datetime.datetime.fromtimestamp(cmds.reactor.seconds(), CST).date()
        cal = _calendar(cmds)

        from gateway.paper import register

        def read(conn: Connection) -> dict:
            return register.register(conn, year, month, bank_id, today=today, calendar=cal)
        reg = await cmds.db.read(read)   # a snapshot on the read pool: the writer goes on meanwhile
        await cmds._journal_read(caller, "batch.register", params,  # noqa: SLF001
                                 f"batch.register {year}-{month:02d}" + (f" bank {bank_id}" if bank_id else ""))
        return reg

    async def report_yearly(params: dict, caller: Caller) -> dict:
        """The year's figures per project, bank, region and month, reconciled with the yearly statement."""
        year = _int(params, "year", 2000, 2100)
        bank_id = _bank(cmds, params)
        project_code = _opt_str(params, "project_code", 64)

        from gateway import reports

        rep = await cmds.db.read(reports.yearly, year, bank_id, project_code)   # the read pool, beside the writer
        await cmds._journal_read(caller, "report.yearly", params,  # noqa: SLF001
                                 f"report.yearly {year}" + (f" bank {bank_id}" if bank_id else "")
                                 + (f" project {project_code}" if project_code else ""))
        return rep

    return {"batch.register": batch_register, "report.yearly": report_yearly}
