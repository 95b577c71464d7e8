"""`gatewayctl` subcommands for paper and the archive: sheet, register, report, ledger, volume, archive.

Registered on gatewayctl's parser by `add_parsers`; each command is fn(cfg, args)
like the others. `sheet verify` and `archive verify` need no configuration
(an auditor runs them without the gateway) and are marked `no_config`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from protocols.chinatime import CST



def _now() -> dt.datetime:
    return dt.datetime.now(CST)


def _at() -> str:
    return _now().isoformat(timespec="seconds")


def _month(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"([0-9]{4})-([0-9]{2})", text or "")
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise SystemExit(f"--month must be YYYY-MM, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def open_journal(cfg):  # noqa: ANN001, ANN201
    """The journal as the daemon opens it (with its key when the journal is keyed)."""
    from gateway.journal import Journal
    key = getattr(getattr(cfg, "journal_auth", None), "key", None)
    if key is not None:
        return Journal(cfg.journal_archive_dir, cfg.journal_inline_max_bytes, key=key)
    return Journal(cfg.journal_archive_dir, cfg.journal_inline_max_bytes)


def _engine(cfg):  # noqa: ANN001, ANN202
    from gateway import db as dbmod
    engine = dbmod.make_engine(cfg.database_url)
    dbmod.check_migrated(engine, cfg.file)
    return engine


def _seal(cfg):  # noqa: ANN001, ANN202
    from gateway.paper.seal import Seal
    if cfg.paper is None:
        raise SystemExit(f"{cfg.file}: [paper] seal_key is not set: result sheets and archives are sealed "
                         f"with the gateway's SM2 key (gatewayctl keys generate --kind sm2)")
    return Seal.from_settings(cfg.paper)


def _out_dir(cfg, args) -> Path:  # noqa: ANN001
    d = Path(getattr(args, "out_dir", None) or (cfg.paper.out_dir if cfg.paper else "paper"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _bank_names(cfg) -> dict[str, str]:  # noqa: ANN001
    return {b: c.name for b, c in cfg.banks.items()}


# --- sheet -----------------------------------------------------------------------------

def cmd_sheet_make(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import sheets
    seal = _seal(cfg)
    jr = open_journal(cfg)
    engine = _engine(cfg)
    names = _bank_names(cfg)
    out = _out_dir(cfg, args)
    with engine.connect() as conn:
        todo = [args.batch] if args.batch else sheets.done_batches_without_sheet(conn, order_no=args.order)
    for batch_no in todo:
        with engine.begin() as conn:
            try:
                row = sheets.ensure_sheet(conn, jr, seal, batch_no, _at(),
                                          bank_name=names.get(_bank_of(conn, batch_no), ""),
                                          font_file=cfg.paper.font_file)
            except sheets.SheetError as e:
                print(f"ERROR {e}", file=sys.stderr)
                return 1
            data, sig = sheets.sheet_files(conn, jr, batch_no)
        (out / f"{batch_no}.pdf").write_bytes(data)
        (out / f"{batch_no}.pdf.sig").write_bytes(sig)
        print(f"{out / (batch_no + '.pdf')}: sheet of {batch_no}, produced {row['produced_at']}, "
              f"SHA-256 {row['pdf_sha256']}, sealed by {row['signer']} (signature {batch_no}.pdf.sig)")
    pub = out / "seal.pub.pem"
    if not pub.exists():
        pub.write_bytes(seal.public_pem())
    if not todo:
        print("every DONE batch has its sheet")
    return 0


def _bank_of(conn, batch_no: str) -> str:  # noqa: ANN001
    from sqlalchemy import select

    from gateway.models import batches
    return conn.execute(select(batches.c.bank_id).where(batches.c.batch_no == batch_no)).scalar() or ""


def cmd_sheet_file(cfg, args) -> int:  # noqa: ANN001
    """Record that the department filed a batch's sheet with finance (报送财政部门备案)."""
    from gateway.journal import Entry
    from gateway.store import result_sheets
    jr = open_journal(cfg)
    with _engine(cfg).begin() as conn:
        at = _at()
        n = result_sheets.filed(conn, args.batch, at, args.by)
        if n != 1:
            print(f"ERROR batch {args.batch} has no sheet, or it was filed already", file=sys.stderr)
            return 1
        jr.append(conn, Entry("event", "operator", "cli", "sheet-filed",
                              f"result sheet of {args.batch} filed with finance by {args.by}",
                              batch_no=args.batch), at)
    print(f"{args.batch}: filed with finance at {at} by {args.by}")
    return 0


def cmd_sheet_verify(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import seal
    data = Path(args.pdf).read_bytes()
    sig = Path(args.sig).read_bytes()
    try:
        pem = Path(args.key).read_bytes()
        pub = seal.load_public(pem, args.key)
    except Exception as e:  # noqa: BLE001  (KeyFileError and friends: named, exit 2)
        print(f"ERROR {args.key}: {e}", file=sys.stderr)
        return 2
    fp = seal.fingerprint_of(pub)
    about = seal.certificate_lines(pem, _now())
    if seal.verify(data, sig, pub, args.signer_id):
        print(f"OK {args.pdf}: sealed by {fp} (SM2-with-SM3, signer ID {args.signer_id})")
        print("\n".join(about) if about else "", end="\n" if about else "")
        return 0
    print(f"BAD {args.pdf}: the signature {args.sig} does not match it under {fp}")
    print("\n".join(about) if about else "", end="\n" if about else "")
    return 1


# --- register -----------------------------------------------------------------------------

def cmd_register(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import register, sheets
    year, month = _month(args.month)
    engine = _engine(cfg)
    if args.make_sheets:
        seal, jr = _seal(cfg), open_journal(cfg)
        with engine.begin() as conn:
            for b in register.register(conn, year, month, args.bank, today=_now().date())["batches"]:
                sheets.ensure_sheet(conn, jr, seal, b["batch_no"], _at(),
                                    bank_name=_bank_names(cfg).get(b["bank_id"], ""),
                                    font_file=cfg.paper.font_file)
    with engine.connect() as conn:
        reg = register.register(conn, year, month, args.bank, today=_now().date(), calendar=cfg.calendar)
    if args.json:
        print(json.dumps(reg, ensure_ascii=False, indent=1))
    else:
        print("\n".join(register.lines(reg)))
    return 0


# --- reports and ledger --------------------------------------------------------------------

def _write(path: str, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    print(f"wrote {path} ({len(data)} bytes)")


def cmd_report_monthly(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import figures, printed, workbook
    year, month = _month(args.month)
    with _engine(cfg).connect() as conn:
        detail = figures.month_detail(conn, year, month, args.bank, args.project)
    names = _bank_names(cfg)
    font_file = cfg.paper.font_file if cfg.paper else ""
    if args.xlsx:
        _write(args.xlsx, workbook.monthly_workbook(detail, bank_names=names, generated_at=_at()))
    if args.pdf:
        _write(args.pdf, printed.monthly_pdf(detail, bank_names=names, font_file=font_file))
    if args.json or not (args.xlsx or args.pdf):
        print(json.dumps(detail["report"], ensure_ascii=False, indent=1))
    return 0


def cmd_report_yearly(cfg, args) -> int:  # noqa: ANN001
    from gateway import reports
    from gateway.paper import printed
    with _engine(cfg).connect() as conn:
        yr = reports.yearly(conn, args.year, args.bank, args.project)
    if args.pdf:
        _write(args.pdf, printed.yearly_pdf(yr, font_file=cfg.paper.font_file if cfg.paper else ""))
    if args.json or not args.pdf:
        print(json.dumps(yr, ensure_ascii=False, indent=1))
    jc = yr["january_check"]
    print(f"January check {args.year}: " + ("agrees" if jc["ok"] else "NOT agreed") + "; "
          + "; ".join(f"{b}: {c['differences']} differences"
                      + ("" if c["yearly_statement"] else ", no yearly statement")
                      for b, c in jc["banks"].items()), file=sys.stderr)
    return 0 if jc["ok"] else 1


def cmd_ledger(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import ledger
    from gateway.paper.pdf import yuan
    with _engine(cfg).connect() as conn:
        led = ledger.ledger(conn, year=args.year, bank_id=args.bank, project_code=args.project)
    if args.json:
        print(json.dumps(led, ensure_ascii=False, indent=1))
        return 0
    for lg in led["ledgers"]:
        print(f"台账 ledger {lg['bank_id']} / {lg['project_code']} {lg['project_name'] or ''}: opening "
              f"{yuan(lg['opening'])}")
        for m in lg["movements"]:
            print(f"  {m['date']} {m['label']:<20} {m['order_no']:<22} {m['reference']:<22} {m['count']:>8} "
                  f"{yuan(m['amount']):>16} {yuan(m['effect']):>16} {yuan(m['balance']):>16}")
        held = f", held now {yuan(lg['held_now'])}" + ("" if lg["balanced"] in (True, None) else " DIFFERS")
        print(f"  closing {yuan(lg['closing'])}{held if args.year is None else ''}")
    return 0


def cmd_volume(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import volume
    with _engine(cfg).connect() as conn:
        data = volume.bound_volume(conn, args.year, bank_names=_bank_names(cfg),
                                   font_file=cfg.paper.font_file if cfg.paper else "", produced_at=_at())
    _write(args.out, data)
    return 0


# --- archive ----------------------------------------------------------------------------------

def _order_reports(conn, order_no: str) -> dict[str, bytes]:  # noqa: ANN001
    from sqlalchemy import func, select

    from gateway.masking import mask
    from gateway.models import batches, items, late_returns, orders, refunds
    from gateway.paper import ledger
    o = conn.execute(select(orders).where(orders.c.order_no == order_no)).mappings().one_or_none()
    if o is None:
        raise SystemExit(f"no order {order_no!r} is known to the gateway")
    per = {r[0]: {"count": r[1], "amount": int(r[2] or 0)} for r in conn.execute(
        select(items.c.status, func.count(), func.sum(items.c.amount)).where(items.c.order_no == order_no)
        .group_by(items.c.status))}
    doc = {"order": dict(o), "items": per,
           "batches": [dict(b) for b in conn.execute(select(batches).where(batches.c.order_no == order_no)
                                                     .order_by(batches.c.seq)).mappings()],
           "refunds": [{**dict(r), "returned_to": mask(r["returned_to"]) or None} for r in conn.execute(
               select(refunds).where(refunds.c.order_no == order_no).order_by(refunds.c.refund_no)).mappings()],
           "late_returns": [dict(r) for r in conn.execute(select(late_returns).where(
               late_returns.c.order_no == order_no).order_by(late_returns.c.return_serial)).mappings()]}
    for b in doc["batches"]:
        b.pop("file_enc_key", None)
        b.pop("result_enc_key", None)
    moves = ledger.movements(conn, order_no=order_no)
    return {"order.json": json.dumps(doc, ensure_ascii=False, indent=1, default=str).encode(),
            "ledger.json": json.dumps(sorted(moves, key=lambda m: (m["date"], ledger.KINDS[m["kind"]][1])),
                                      ensure_ascii=False, indent=1).encode()}


def cmd_archive_export(cfg, args) -> int:  # noqa: ANN001
    from sqlalchemy import select

    from gateway.models import batches
    from gateway.paper import archive, figures, printed, register, sheets, workbook
    if bool(args.order) == bool(args.month):
        raise SystemExit("give --order N or --month YYYY-MM")
    month = _month(args.month) if args.month else None
    seal, jr, engine = _seal(cfg), open_journal(cfg), _engine(cfg)
    names = _bank_names(cfg)
    with engine.begin() as conn:
        if args.order:
            todo = list(conn.execute(select(batches.c.batch_no).where(
                batches.c.order_no == args.order, batches.c.state == "DONE").order_by(batches.c.batch_no)).scalars())
        else:
            todo = [b["batch_no"] for b in register.register(conn, *month, today=_now().date())["batches"]]
        for batch_no in todo:
            sheets.ensure_sheet(conn, jr, seal, batch_no, _at(), bank_name=names.get(_bank_of(conn, batch_no), ""),
                                font_file=cfg.paper.font_file)
    with engine.connect() as conn:
        if args.order:
            reps = _order_reports(conn, args.order)
        else:
            detail = figures.month_detail(conn, *month)
            reg = register.register(conn, *month, today=_now().date(), calendar=cfg.calendar)
            reps = {"monthly.json": json.dumps(detail["report"], ensure_ascii=False, indent=1).encode(),
                    "monthly.xlsx": workbook.monthly_workbook(detail, bank_names=names, generated_at=_at()),
                    "monthly.pdf": printed.monthly_pdf(detail, bank_names=names, font_file=cfg.paper.font_file),
                    "register.json": json.dumps(reg, ensure_ascii=False, indent=1).encode()}
        r = archive.export_archive(conn, jr, seal, args.out, at=_at(), order_no=args.order, month=month,
                                   reports=reps, sheets_for=todo)
    print(f"wrote {r.path}: {r.entries} journal entries, chain segment {r.segment[0]}..{r.segment[1]}, "
          f"{r.members} members; head {r.head['last_id']}:{r.head['last_hash']}; sealed by {seal.fingerprint}")
    return 0


def cmd_archive_verify(cfg, args) -> int:  # noqa: ANN001
    from gateway.paper import archive, seal
    pub = seal.load_public(Path(args.key).read_bytes(), args.key) if args.key else None
    expect = None
    if args.expect_head:
        m = re.fullmatch(r"([0-9]+):([0-9a-f]{64})", args.expect_head)
        if m is None:
            print("ERROR --expect-head must be ID:HASH (64 hex digits)", file=sys.stderr)
            return 2
        expect = (int(m.group(1)), m.group(2))
    jkey = None
    if args.journal_key:
        from gateway.journal import read_key_file
        jkey = read_key_file(args.journal_key)
    v = archive.verify_archive(args.file, public_key=pub, fingerprint=args.fingerprint, expect_head=expect,
                               journal_key=jkey)
    if not v.ok:
        print(f"ARCHIVE BROKEN: {v.problem}")
        return 1
    print(f"archive intact: {v.members} members, {v.entries} journal entries, chain to head "
          f"{v.head['last_id']}:{v.head['last_hash']}; scope {json.dumps(v.scope)}; sealed by {v.signer}"
          + ("" if (pub or args.fingerprint) else " (signer not pinned: compare this fingerprint, or pass --key)"))
    return 0


def add_parsers(sub) -> None:  # noqa: ANN001
    s = sub.add_parser("sheet", help="result sheets (交易结果): make, verify, record filing").add_subparsers(
        dest="cmd", required=True)
    m = s.add_parser("make", help="produce and seal the sheet of a DONE batch (or of every one without)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--batch")
    g.add_argument("--order", help="every DONE batch of this order")
    m.add_argument("--out-dir", help="where to write BATCH.pdf and BATCH.pdf.sig (default [paper] out_dir)")
    m.set_defaults(fn=cmd_sheet_make)
    v = s.add_parser("verify", help="check a sheet's detached seal offline (no --config): PDF SIG KEY "
                                    "(the seal's public key or the gateway's certificate)")
    v.add_argument("pdf")
    v.add_argument("sig")
    v.add_argument("key", help="the seal's public key, SubjectPublicKeyInfo PEM (seal.pub.pem), or the "
                               "gateway's X.509 certificate (PEM) carrying it")
    v.add_argument("--signer-id", default="1234567812345678")
    v.set_defaults(fn=cmd_sheet_verify, no_config=True)
    f = s.add_parser("file", help="record that a batch's sheet was filed with finance")
    f.add_argument("--batch", required=True)
    f.add_argument("--by", required=True, help="who filed it")
    f.set_defaults(fn=cmd_sheet_file)
    r = sub.add_parser("register", help="the handover register (交接登记簿) of a month")
    r.add_argument("--month", required=True, help="YYYY-MM")
    r.add_argument("--bank")
    r.add_argument("--json", action="store_true")
    r.add_argument("--make-sheets", action="store_true", help="produce missing result sheets first")
    r.set_defaults(fn=cmd_register)
    rp = sub.add_parser("report", help="monthly and yearly reports: JSON, XLSX, PDF").add_subparsers(
        dest="cmd", required=True)
    rm = rp.add_parser("monthly", help="a month's report (report.monthly) as JSON, --xlsx and --pdf")
    rm.add_argument("--month", required=True, help="YYYY-MM")
    rm.add_argument("--bank")
    rm.add_argument("--project")
    rm.add_argument("--xlsx", metavar="FILE")
    rm.add_argument("--pdf", metavar="FILE")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(fn=cmd_report_monthly)
    ry = rp.add_parser("yearly", help="the year per project, bank, region and month, and the January check "
                                      "(exit 1 unless every bank's yearly statement agrees)")
    ry.add_argument("--year", required=True, type=int)
    ry.add_argument("--bank")
    ry.add_argument("--project")
    ry.add_argument("--pdf", metavar="FILE")
    ry.add_argument("--json", action="store_true")
    ry.set_defaults(fn=cmd_report_yearly)
    lg = sub.add_parser("ledger", help="the per-project ledger (台账): movements with running balances")
    lg.add_argument("--year", type=int)
    lg.add_argument("--bank")
    lg.add_argument("--project")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=cmd_ledger)
    vo = sub.add_parser("volume", help="the year's bound volume (装订成册): one A4 PDF to print and bind")
    vo.add_argument("--year", required=True, type=int)
    vo.add_argument("--out", required=True, metavar="FILE")
    vo.set_defaults(fn=cmd_volume)
    ar = sub.add_parser("archive", help="the auditor's archive (article 27): export, verify offline").add_subparsers(
        dest="cmd", required=True)
    ae = ar.add_parser("export", help="one sealed tar.gz of an order's (or a month's) journal, sheets and reports")
    ae.add_argument("--order")
    ae.add_argument("--month", help="YYYY-MM")
    ae.add_argument("--out", required=True, metavar="FILE")
    ae.set_defaults(fn=cmd_archive_export)
    av = ar.add_parser("verify", help="check an archive offline (no --config); exit 1 naming the first thing wrong")
    av.add_argument("file")
    av.add_argument("--key", help="the seal's public key (PEM), or the gateway's X.509 certificate, "
                                  "the archive must be sealed with")
    av.add_argument("--fingerprint", help="or the SHA-256 fingerprint of that key")
    av.add_argument("--expect-head", metavar="ID:HASH", help="a journal head the chain must pass through")
    av.add_argument("--journal-key", metavar="FILE", help="the journal key, to check the entries' MACs too")
    av.set_defaults(fn=cmd_archive_verify, no_config=True)


__all__ = ["add_parsers", "open_journal"]
