"""`gatewayctl journal show`: the journal's entries as an operator looks for them.

Filters: bank (the entry's peer), order, batch, message type (prefix: `pain.002` matches
`pain.002.001.11`), direction, time range (`--since`/`--until`, ISO 8601 or a date, compared
with the entry's time in the journal's own convention), verification result (prefix: `ok`,
`refused`, `failed` ...), or one entry by `--id`. A bank's report (a pain.002, a camt.054) is
journaled before the gateway knows which order it answers; it is tied to its order and
batch through the report's original message id (bank_reports.ref) and the outgoing entry
that carried that id, both for the filters and for what is shown (marked `~`).

Decoded views are masked when journaled and masked again here; `--full` shows them whole
(by default cut at 300 characters), `--json` gives one object per entry.
"""

from __future__ import annotations

import json
import sys


def _tie(conn, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """entry id -> (order_no, batch_no) of the outgoing message a report answers."""
    from sqlalchemy import and_, select
    from gateway.models import bank_reports, journal
    if not ids:
        return {}
    out = journal.alias("out")
    rows = conn.execute(select(bank_reports.c.journal_id, out.c.order_no, out.c.batch_no)
                        .join(out, and_(out.c.msg_id == bank_reports.c.ref, out.c.direction == "out",
                                        out.c.order_no.is_not(None)))
                        .where(bank_reports.c.journal_id.in_(ids))).all()
    return {jid: (o, b) for jid, o, b in rows}


def _answering(column, value):
    """Journal ids of reports answering an outgoing message whose *column* is *value*."""
    from sqlalchemy import and_, select
    from gateway.models import bank_reports, journal
    out = journal.alias("sent")
    return (select(bank_reports.c.journal_id)
            .join(out, and_(out.c.msg_id == bank_reports.c.ref, out.c.direction == "out"))
            .where(getattr(out.c, column) == value))


def query(args):
    from sqlalchemy import or_, select
    from gateway.models import journal
    q = select(journal.c.id, journal.c.at, journal.c.direction, journal.c.peer, journal.c.channel,
               journal.c.tx_code, journal.c.msg_id, journal.c.order_no, journal.c.batch_no, journal.c.verified,
               journal.c.payload_size, journal.c.decoded)
    if args.id is not None:
        return q.where(journal.c.id == args.id)
    if args.bank:
        q = q.where(journal.c.peer == args.bank)
    if args.order:
        q = q.where(or_(journal.c.order_no == args.order, journal.c.id.in_(_answering("order_no", args.order))))
    if args.batch:
        q = q.where(or_(journal.c.batch_no == args.batch, journal.c.id.in_(_answering("batch_no", args.batch))))
    if args.type:
        q = q.where(journal.c.tx_code.startswith(args.type, autoescape=True))
    if args.direction:
        q = q.where(journal.c.direction == args.direction)
    if args.since:
        q = q.where(journal.c.at >= args.since)
    if args.until:
        q = q.where(journal.c.at < args.until)
    if args.verified:
        q = q.where(journal.c.verified.startswith(args.verified, autoescape=True))
    return q.order_by(journal.c.id.desc()).limit(args.limit)


def cmd_journal_show(cfg, args) -> int:
    from gateway import db as dbmod
    from gateway.masking import mask_text
    engine = dbmod.make_engine(cfg.database_url)
    dbmod.check_migrated(engine, cfg.file)
    with engine.connect() as conn:
        rows = list(reversed(conn.execute(query(args)).mappings().all()))
        tied = _tie(conn, [r["id"] for r in rows if r["order_no"] is None])
    if args.id is not None and not rows:
        print(f"no journal entry {args.id}", file=sys.stderr)
        return 1
    for r in rows:
        e = dict(r)
        e["decoded"] = mask_text(e["decoded"] or "")
        if e["id"] in tied:
            e["order_no"], e["batch_no"] = tied[e["id"]]
            e["tied_by_report"] = True
        if not args.full and not args.json and len(e["decoded"]) > 300:
            e["decoded"] = e["decoded"][:300] + f"... ({len(r['decoded'])} characters; --full)"
        if args.json:
            print(json.dumps(e, ensure_ascii=False))
            continue
        mark = "~" if e.get("tied_by_report") else ""
        print(f"#{e['id']} {e['at']} {e['direction']:5} {e['peer']}/{e['channel']} {e['tx_code']} "
              f"order={mark}{e['order_no'] or '-'} batch={mark}{e['batch_no'] or '-'} verified={e['verified']} "
              f"{e['payload_size']}B  {e['decoded']}")
    return 0


def add_show_parser(j) -> None:
    show = j.add_parser("show", help="entries, newest last, masked: filter by bank, order, batch, type, "
                                     "direction, time, verification")
    show.add_argument("--id", type=int, help="this one entry")
    show.add_argument("--bank", help="the bank (the entry's peer)")
    show.add_argument("--order")
    show.add_argument("--batch")
    show.add_argument("--type", metavar="TX", help="message type, a prefix: BP01, pain.002, camt.054")
    show.add_argument("--direction", choices=("in", "out", "event"))
    show.add_argument("--since", metavar="TIME", help="from this time (ISO 8601 or YYYY-MM-DD)")
    show.add_argument("--until", metavar="TIME", help="before this time")
    show.add_argument("--verified", metavar="RESULT", help="verification result, a prefix: ok, refused, failed")
    show.add_argument("--limit", type=int, default=50, help="the newest N that match (default 50)")
    show.add_argument("--full", action="store_true", help="whole decoded entries (default: cut at 300 characters)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(fn=cmd_journal_show)
