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
        from sqlalchemy import select
        from gateway.models import journal_cuts
        with engine.connect() as conn:
            cut = conn.execute(select(journal_cuts.c.file).where(journal_cuts.c.first_id <= args.id,
                                                                 journal_cuts.c.last_id >= args.id)).scalar()
        print(f"no journal entry {args.id}" + (f": it was moved to the cold archive file {cut} in [journal] "
                                               f"cold_dir (gatewayctl archive verify FILE)" if cut else ""),
              file=sys.stderr)
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


def cmd_journal_decrypt(cfg, args) -> int:
    """`journal show --id N --decrypt --reason TEXT`: the plaintext of a cnbank batch file the
    gateway uploaded (entry N, the PUT of the file), masked, opened with the key||iv the gateway
    journaled for itself beside it (FILEKEY, under its own SM2 key). The access is journaled
    first, with who and why; nothing is shown if that fails."""
    import getpass
    import io
    import time

    from sqlalchemy import select

    from gateway import db as dbmod
    from gateway.journal import Entry, Journal
    from gateway.masking import mask, mask_text
    from gateway.models import journal
    from gateway.rules import iso
    if args.id is None:
        print("journal show --decrypt: name the upload of a batch file with --id N", file=sys.stderr)
        return 2
    if not (args.reason or "").strip():
        print("journal show --decrypt: --reason must say why (it is journaled with who asked)", file=sys.stderr)
        return 2
    engine = dbmod.make_engine(cfg.database_url)
    dbmod.check_migrated(engine, cfg.file)
    jr = Journal(cfg.journal_archive_dir, cfg.journal_inline_max_bytes, key=cfg.journal_auth.key)
    with engine.connect() as conn:
        row = conn.execute(select(journal).where(journal.c.id == args.id)).first()
        key_row = None if row is None or not row.batch_no else conn.execute(
            select(journal).where(journal.c.tx_code == "FILEKEY", journal.c.batch_no == row.batch_no,
                                  journal.c.peer == row.peer).order_by(journal.c.id.desc()).limit(1)).first()
    if row is None or row.tx_code != "PUT" or row.direction != "out" or not row.batch_no \
            or row.decoded.split(":")[0].endswith(".sig"):
        print(f"journal show --decrypt: entry {args.id} is not the upload of a batch file", file=sys.stderr)
        return 1
    bank = cfg.banks.get(row.peer)
    if bank is None or bank.dialect != "cnbank":
        print(f"journal show --decrypt: {row.peer!r} is not a configured cnbank bank", file=sys.stderr)
        return 1
    if key_row is None:
        print(f"journal show --decrypt: no key of the gateway's own was journaled for batch {row.batch_no} "
              f"(built before the gateway kept one): only the bank can open it", file=sys.stderr)
        return 1
    from adapters.cnbank.link import decrypt_for_audit
    from adapters.settings import AdapterError, bank_passphrase
    from protocols import cnbank_files as files
    from protocols import keyfile
    try:
        passphrase = bank_passphrase(bank.file, bank.passphrase_file, bank.passphrase_env)
        ours = keyfile.read_private_key_file(bank.our_private_key,
                                             passphrase=passphrase.bytes() if passphrase else None)
        plain = decrypt_for_audit(ours, jr.payload_of(key_row), jr.payload_of(row))
        header, lines = files.read_batch_file(io.BytesIO(plain), unit=bank.cnbank.amount_unit,
                                              encoding=bank.cnbank.encoding)
        lines = list(lines)
    except (AdapterError, keyfile.KeyFileError, OSError, ValueError) as e:
        print(f"journal show --decrypt: entry {args.id}: {mask_text(str(e))}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001  (sm.CryptoError and the file reader's errors)
        print(f"journal show --decrypt: entry {args.id}: {type(e).__name__}: {mask_text(str(e))}", file=sys.stderr)
        return 1
    who = getpass.getuser()
    with engine.begin() as conn:
        jr.append(conn, Entry("event", f"operator:{who}", "cli", "file.decrypt",
                              json.dumps({"entry": args.id, "batch_no": row.batch_no, "by": who,
                                          "reason": args.reason}, ensure_ascii=False),
                              order_no=row.order_no, batch_no=row.batch_no), iso(time.time()))
    shown = [{"seq": x.seq, "name": x.name, "id_no": mask(x.id_no), "acct_no": mask(x.acct_no),
              "acct_bank": x.acct_bank, "amount_fen": x.amount, "proj_code": x.proj_code, "remark": x.remark,
              "orig_batch_no": x.orig_batch_no} for x in lines]
    if args.json:
        print(json.dumps({"entry": args.id, "batch_no": header.batch_no, "order_no": header.order_no,
                          "total_count": header.total_count, "total_amount_fen": header.total_amount,
                          "payer_acct": mask(header.payer_acct), "lines": shown}, ensure_ascii=False))
        return 0
    print(f"batch file of entry {args.id} (access journaled: {who}, {args.reason}): batch {header.batch_no} "
          f"order {header.order_no}, {header.total_count} items, {header.total_amount} fen, payer "
          f"{mask(header.payer_acct)}")
    for x in shown:
        print(f"  {x['seq']:>6} {x['name']} {x['id_no']} {x['acct_no']} {x['acct_bank']} {x['amount_fen']} fen "
              f"{x['proj_code']}" + (f" retry of {x['orig_batch_no']}" if x["orig_batch_no"] else ""))
    return 0


def _show(cfg, args) -> int:
    return cmd_journal_decrypt(cfg, args) if args.decrypt else cmd_journal_show(cfg, args)


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
    show.add_argument("--decrypt", action="store_true",
                      help="with --id N (the upload of a cnbank batch file): its lines, masked, opened with the "
                           "gateway's own key; the access is journaled with who and --reason")
    show.add_argument("--reason", help="why the file is opened (required with --decrypt; journaled)")
    show.set_defaults(fn=_show)
