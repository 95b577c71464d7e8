"""The console's reads: one function a page, each a handful of indexed queries.

A million-item order costs one grouped count (status, reason) per view, read from the
covering index ix_items_order_counts alone; its items are paged by seq (keyset: `seq > after
... LIMIT n` on the primary key, or along that index when filtered by state and reason),
never counted or offset again. The journal is paged by id the same way. Every personal datum leaves here
masked unless the caller asks for one clear value (auditor's reveal, journaled by the page).
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, and_, func, or_, select

from gateway.journal import current_head
from gateway.masking import mask, mask_text
from gateway.models import (BatchState, ItemStatus, alarms, batches, corrections, disputes, items, journal,
                            late_returns, orders, refunds)

PAGE = 50
WAITING_ON_BANK = (BatchState.UPLOADED, BatchState.SUBMITTING, BatchState.ACCEPTED)
IN_FLIGHT = tuple(s for s in ItemStatus.ALL if s not in (ItemStatus.PAID, ItemStatus.REFUNDED))


def yuan(fen: int | None) -> str:
    """12345 -> '123.45'; the console shows money in 元 only."""
    if fen is None:
        return "-"
    sign = "-" if fen < 0 else ""
    fen = abs(int(fen))
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def overview(conn: Connection, today: str) -> dict:
    sev = {r.severity: r.n for r in conn.execute(
        select(alarms.c.severity, func.count().label("n")).where(alarms.c.cleared_at.is_(None))
        .group_by(alarms.c.severity))}
    open_list = [dict(r) for r in conn.execute(
        select(alarms).where(alarms.c.cleared_at.is_(None)).order_by(alarms.c.id.desc()).limit(20)).mappings()]
    by_state = [dict(r) for r in conn.execute(
        select(orders.c.state, func.count().label("n"), func.sum(orders.c.total_amount).label("amount"))
        .group_by(orders.c.state).order_by(orders.c.state)).mappings()]
    waiting = [dict(r) for r in conn.execute(
        select(batches.c.bank_id, func.count().label("n"), func.min(batches.c.created_at).label("oldest"))
        .where(batches.c.state.in_(WAITING_ON_BANK)).group_by(batches.c.bank_id)).mappings()]
    oldest = conn.execute(select(batches.c.batch_no, batches.c.order_no, batches.c.bank_id, batches.c.state,
                                 batches.c.created_at)
                          .where(batches.c.state.in_(WAITING_ON_BANK))
                          .order_by(batches.c.created_at).limit(1)).mappings().first()
    deadlines = []
    for what, col, done in (("银行结果 bank results", batches.c.bank_due, batches.c.state.in_(WAITING_ON_BANK)),
                            ("第26条核对 article 26 check", batches.c.confirm_due,
                             and_(batches.c.confirmed_at.is_(None), batches.c.state == BatchState.DONE))):
        for r in conn.execute(select(batches.c.batch_no, batches.c.order_no, batches.c.bank_id, col.label("due"))
                              .where(done, col.is_not(None), col <= today).order_by(col).limit(50)).mappings():
            deadlines.append({**r, "what": what, "overdue": r["due"] < today})
    for r in conn.execute(select(disputes.c.dispute_no, disputes.c.batch_no, disputes.c.order_no,
                                 disputes.c.bank_id, disputes.c.due)
                          .where(disputes.c.state.in_(("NEW", "SUBMITTING")), disputes.c.due.is_not(None),
                                 disputes.c.due <= today).limit(50)).mappings():
        deadlines.append({**r, "what": "争议 dispute", "overdue": r["due"] < today})
    return {"alarms_by_severity": sev, "open_alarms": open_list, "orders_by_state": by_state,
            "waiting": waiting, "oldest": dict(oldest) if oldest else None, "deadlines": deadlines}


def search_orders(conn: Connection, f: dict, after: str | None = None) -> list[dict]:
    q = select(orders.c.order_no, orders.c.bank_id, orders.c.project_code, orders.c.project_name,
               orders.c.state, orders.c.total_count, orders.c.total_amount, orders.c.funded_at)
    if f.get("order_no"):
        q = q.where(orders.c.order_no.like(f["order_no"].replace("%", "") + "%"))
    if f.get("bank"):
        q = q.where(orders.c.bank_id == f["bank"])
    if f.get("project"):
        q = q.where(or_(orders.c.project_code == f["project"], orders.c.project_name.like(f"%{f['project']}%")))
    if f.get("state"):
        q = q.where(orders.c.state == f["state"])
    if f.get("funded"):
        q = q.where(orders.c.funded_at.like(f["funded"] + "%"))
    if after:
        q = q.where(orders.c.order_no > after)
    return [dict(r) for r in conn.execute(q.order_by(orders.c.order_no).limit(PAGE)).mappings()]


def _masked_json(text: str | None) -> dict:
    try:
        v = json.loads(text or "{}")
    except ValueError:
        return {"?": mask_text(text or "")}
    return {k: (mask(str(x)) if k in ("id_number", "account_no") else mask_text(str(x))) for k, x in v.items()} \
        if isinstance(v, dict) else {"?": mask_text(str(v))}


def item_groups(conn: Connection, order_no: str) -> list[dict]:
    """The one grouped count of an order's view (primary-key range of the order's items)."""
    return [dict(r) for r in conn.execute(
        select(items.c.status, items.c.reason_code, func.count().label("n"), func.sum(items.c.amount).label("amount"))
        .where(items.c.order_no == order_no).group_by(items.c.status, items.c.reason_code)).mappings()]


def order_page(conn: Connection, order_no: str, groups_of=None) -> dict | None:
    """*groups_of(conn, order)*: the grouped count, from a cache when the caller keeps one."""
    o = conn.execute(select(orders).where(orders.c.order_no == order_no)).mappings().first()
    if o is None:
        return None
    groups = (groups_of or (lambda c, o: item_groups(c, o["order_no"])))(conn, dict(o))
    sums: dict[str, int] = {}
    for g in groups:
        sums[g["status"]] = sums.get(g["status"], 0) + int(g["amount"] or 0)
    paid, refunded = sums.get(ItemStatus.PAID, 0), sums.get(ItemStatus.REFUNDED, 0)
    in_flight = sum(v for k, v in sums.items() if k in IN_FLIGHT)
    bl = [dict(r) for r in conn.execute(select(batches).where(batches.c.order_no == order_no)
                                        .order_by(batches.c.seq)).mappings()]
    cs = [dict(r) for r in conn.execute(select(corrections).where(corrections.c.order_no == order_no)
                                        .order_by(corrections.c.id.desc()).limit(50)).mappings()]
    for c in cs:
        c["old"], c["new"] = _masked_json(c["old_values"]), _masked_json(c["new_values"])
    rf = [dict(r) for r in conn.execute(select(refunds).where(refunds.c.order_no == order_no)
                                        .order_by(refunds.c.created_at)).mappings()]
    for r in rf:
        r["returned_to"] = mask(r["returned_to"]) if r["returned_to"] else r["returned_to"]
    return {"order": dict(o), "groups": groups, "paid": paid, "refunded": refunded, "in_flight": in_flight,
            "balanced": int(o["total_amount"]) == paid + refunded + in_flight,
            "batches": bl, "corrections": cs, "refunds": rf}


def order_items(conn: Connection, order_no: str, status: str | None, reason: str | None,
                after: int = 0, limit: int = PAGE) -> list[dict]:
    """One page of items after seq *after* (keyset on the primary key), masked."""
    q = select(items.c.seq, items.c.name, items.c.id_number, items.c.account_no, items.c.account_bank,
               items.c.amount, items.c.status, items.c.batch_no, items.c.reason_code, items.c.reason_text,
               items.c.result_at).where(items.c.order_no == order_no, items.c.seq > after)
    if status:
        q = q.where(items.c.status == status)
    if reason:
        q = q.where(items.c.reason_code == reason)
    out = []
    for r in conn.execute(q.order_by(items.c.seq).limit(limit)).mappings():
        d = dict(r)
        d["id_number"], d["account_no"] = mask(d["id_number"]), mask(d["account_no"])
        out.append(d)
    return out


def item_page(conn: Connection, order_no: str, seq: int) -> dict | None:
    it = conn.execute(select(items).where(items.c.order_no == order_no, items.c.seq == seq)).mappings().first()
    if it is None:
        return None
    d = dict(it)
    d["id_number"], d["account_no"] = mask(d["id_number"]), mask(d["account_no"])
    cs = [dict(r) for r in conn.execute(select(corrections).where(corrections.c.order_no == order_no,
                                                                  corrections.c.seq == seq)
                                        .order_by(corrections.c.id)).mappings()]
    for c in cs:
        c["old"], c["new"] = _masked_json(c["old_values"]), _masked_json(c["new_values"])
    return {"item": d, "corrections": cs}


def clear_item_field(conn: Connection, order_no: str, seq: int, fieldname: str) -> str | None:
    col = {"id_number": items.c.id_number, "account_no": items.c.account_no}[fieldname]
    return conn.execute(select(col).where(items.c.order_no == order_no, items.c.seq == seq)).scalar_one_or_none()


JOURNAL_COLS = (journal.c.id, journal.c.at, journal.c.direction, journal.c.peer, journal.c.channel,
                journal.c.tx_code, journal.c.msg_id, journal.c.order_no, journal.c.batch_no, journal.c.verified,
                journal.c.payload_size)


def search_journal(conn: Connection, f: dict, before: int | None = None) -> list[dict]:
    """Newest first, PAGE entries with id < *before* (keyset by id)."""
    q = select(*JOURNAL_COLS)
    if f.get("bank"):
        q = q.where(journal.c.peer == f["bank"])
    if f.get("order"):
        q = q.where(journal.c.order_no == f["order"])
    if f.get("batch"):
        q = q.where(journal.c.batch_no == f["batch"])
    if f.get("type"):
        q = q.where(journal.c.tx_code == f["type"])
    if f.get("direction"):
        q = q.where(journal.c.direction == f["direction"])
    if f.get("since"):
        q = q.where(journal.c.at >= f["since"])
    if f.get("until"):
        q = q.where(journal.c.at < f["until"])
    if f.get("verified") == "ok":
        q = q.where(journal.c.verified == "ok")
    elif f.get("verified") == "failed":
        q = q.where(journal.c.verified.like("failed%"))
    elif f.get("verified") == "n/a":
        q = q.where(journal.c.verified == "n/a")
    if before:
        q = q.where(journal.c.id < before)
    return [dict(r) for r in conn.execute(q.order_by(journal.c.id.desc()).limit(PAGE)).mappings()]


def journal_entry(conn: Connection, entry_id: int) -> dict | None:
    r = conn.execute(select(journal).where(journal.c.id == entry_id)).mappings().first()
    return dict(r) if r else None


def _file_entry(conn: Connection, batch_no: str, peer: str, tx_code: str, direction: str,
                file_name: str | None) -> dict | None:
    """The latest journaled transfer of a batch's file (not its .sig), by the batch index."""
    if not file_name:
        return None
    for r in conn.execute(select(journal.c.id, journal.c.decoded, journal.c.payload_size, journal.c.payload_sm3,
                                 journal.c.verified, journal.c.at)
                          .where(journal.c.batch_no == batch_no, journal.c.peer == peer,
                                 journal.c.tx_code == tx_code, journal.c.direction == direction)
                          .order_by(journal.c.id.desc()).limit(20)).mappings():
        name = r["decoded"].split(":")[0].rsplit("/", 1)[-1].replace("result file ", "")
        if name == file_name:
            return dict(r)
    return None


def related_files(conn: Connection, e: dict, batch: dict | None) -> dict:
    """The batch's own file (the gateway's PUT) and the bank's result file (GET) as journaled,
    with the key the gateway kept for its own file (FILEKEY): what the entry page can open."""
    if batch is None:
        return {}
    out = {"batch": _file_entry(conn, batch["batch_no"], e["peer"], "PUT", "out", batch["file_name"]),
           "result": _file_entry(conn, batch["batch_no"], e["peer"], "GET", "in", batch["result_ref"])}
    out["key_id"] = conn.execute(select(journal.c.id).where(
        journal.c.batch_no == batch["batch_no"], journal.c.peer == e["peer"], journal.c.tx_code == "FILEKEY")
        .order_by(journal.c.id.desc()).limit(1)).scalar()
    return {k: v for k, v in out.items() if v is not None}


def caused(conn: Connection, entry_id: int) -> dict:
    """The state this entry changed, where a row names it (journal_id): alarms raised,
    corrections recorded, late returns applied."""
    return {
        "alarms": [dict(r) for r in conn.execute(
            select(alarms.c.id, alarms.c.kind, alarms.c.severity).where(alarms.c.journal_id == entry_id)
            .limit(20)).mappings()],
        "corrections": [dict(r) for r in conn.execute(
            select(corrections.c.order_no, corrections.c.seq).where(corrections.c.journal_id == entry_id)
            .limit(50)).mappings()],
        "returns": [dict(r) for r in conn.execute(
            select(late_returns.c.order_no, late_returns.c.seq, late_returns.c.return_serial)
            .where(late_returns.c.journal_id == entry_id).limit(50)).mappings()],
    }


def answer_of(conn: Connection, e: dict) -> tuple[list[dict], list[dict]]:
    """(the entries this one answers, the entries that answer it): the other direction's
    entries of the same MsgId and peer, journaled close by (a primary-key window, not a scan:
    msg_id has no index)."""
    if not e["msg_id"] or e["direction"] not in ("in", "out"):
        return [], []
    rows = [dict(r) for r in conn.execute(
        select(*JOURNAL_COLS).where(journal.c.msg_id == e["msg_id"], journal.c.peer == e["peer"],
                                    journal.c.id != e["id"], journal.c.id.between(e["id"] - 2000, e["id"] + 2000))
        .order_by(journal.c.id).limit(10)).mappings()]
    if e["direction"] == "in":
        return [r for r in rows if r["direction"] == "out" and r["id"] < e["id"]], \
            [r for r in rows if r["direction"] == "out" and r["id"] > e["id"]]
    return [r for r in rows if r["direction"] == "in" and r["id"] < e["id"]], \
        [r for r in rows if r["direction"] == "in" and r["id"] > e["id"]]


def file_page(read, after: int, limit: int = PAGE) -> dict:
    """One page of a batch or result file's lines, masked: *read()* gives (header, lines)
    (the adapter's audit_read); lines after the *after*-th are shown (the file is read from
    its start each time: files are paged, not indexed)."""
    header, lines = read()
    shown, more = [], False
    for n, line in enumerate(lines, 1):
        if n <= after:
            continue
        if len(shown) == limit:
            more = True
            break
        d = {k: getattr(line, k) for k in line.__slots__}
        for k in ("id_no", "acct_no"):
            if k in d and d[k]:
                d[k] = mask(d[k])
        for k in ("name", "remark", "reason_text"):
            if k in d and d[k]:
                d[k] = mask_text(d[k])
        shown.append(d)
    h = {k: v for k, v in vars(header).items()}
    if "payer_acct" in h:
        h["payer_acct"] = mask(h["payer_acct"])
    return {"header": h, "lines": shown, "after": after, "more": more}


def chain_status(conn: Connection, key) -> dict:  # noqa: ANN001
    h = current_head(conn, key)
    return {"last_id": h.last_id, "last_hash": h.last_hash, "problem": h.problem}


def alarm_list(conn: Connection, which: str, before: int | None = None) -> list[dict]:
    q = select(alarms)
    if which == "open":
        q = q.where(alarms.c.cleared_at.is_(None))
    if before:
        q = q.where(alarms.c.id < before)
    return [dict(r) for r in conn.execute(q.order_by(alarms.c.id.desc()).limit(PAGE)).mappings()]


def alarm(conn: Connection, alarm_id: int) -> dict | None:
    r = conn.execute(select(alarms).where(alarms.c.id == alarm_id)).mappings().first()
    return dict(r) if r else None
