"""Operator commands: `gatewayd` runs the daemon, `gatewayctl` inspects and maintains it.

Both read the same configuration file. Exit codes: 0 ok, 1 a check failed
(journal broken), 2 the configuration or start-up is wrong (message names the
file and key). Personal data is shown masked.
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway import __version__
from gateway import db as dbmod


def _load(path: str, banks_optional: bool = False) -> configmod.GatewayConfig:  # noqa: F821  (imported here: gatewayctl starts faster)
    from gateway import config as configmod
    try:
        cfg = configmod.load(path, banks_optional=banks_optional)
    except configmod.ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    for problem in cfg.bank_problems:   # a command that needs no bank still runs; the daemon would refuse
        print(f"warning: bank file left out (gatewayd and check-config refuse it): {problem}", file=sys.stderr)
    return cfg


def setup_logging(fmt: str) -> None:
    from twisted.logger import globalLogBeginner

    from gateway.logs import make_observer
    globalLogBeginner.beginLoggingTo([make_observer(fmt, sys.stdout, sys.stdout.isatty())],
                                     redirectStandardIO=False)


def gatewayd_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gatewayd", description="Run the bank gateway daemon in the foreground.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", required=True, help="the daemon's TOML file, e.g. conf/gateway.toml")
    p.add_argument("--log-format", choices=("auto", "text", "json"), help="overrides [log] format")
    args = p.parse_args(argv)
    from gateway import filemodes
    filemodes.secure_process()   # before anything is created: files 0600, folders 0700 (gateway/filemodes.py)
    cfg = _load(args.config)
    try:
        # said once logging has started, so that with JSON logs every line is still JSON
        tightened = list(filemodes.secure_data_dirs(cfg.work_dir, cfg.journal_archive_dir, cfg.database_url))
    except OSError as e:
        print(f"{cfg.file}: cannot secure the data folders: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from twisted.internet import reactor

    from gateway.service import StartupError, make_service
    try:
        gw = make_service(cfg, reactor)
    except StartupError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(args.log_format or cfg.log_format)
    from twisted.logger import Logger
    for line in tightened:
        Logger(namespace="gateway.filemodes").warn("took group/other access away: {what}", what=line)
    exit_code = [0]

    def start() -> None:
        # Start whole or not at all: a listener that cannot open stops the daemon with 2.
        try:
            gw.startService()
        except Exception as e:  # noqa: BLE001
            print(f"cannot start: {e}", file=sys.stderr)
            exit_code[0] = 2
            # What did start stops too (the database's thread pool): its threads would keep the
            # process alive after the reactor stopped, a daemon neither serving nor exiting.
            from twisted.internet import defer
            d = defer.maybeDeferred(gw.stopService).addTimeout(10, reactor)
            d.addErrback(lambda f: print(f"stopping after a failed start: {f.value!r}", file=sys.stderr))
            d.addBoth(lambda _: reactor.stop())
            return
        reactor.addSystemEventTrigger("before", "shutdown", gw.stopService)
        notifier.ready(reactor, f"serving {len(cfg.banks)} bank(s)")
        reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping)

    from gateway.sdnotify import Notifier
    notifier = Notifier()
    _reload_on_sighup(reactor, gw)
    reactor.callWhenRunning(start)
    reactor.run()
    raise SystemExit(exit_code[0])


def _reload_on_sighup(reactor, gw) -> None:
    """SIGHUP reads conf/banks/ again (Gateway.reload) instead of ending the daemon."""
    import signal

    from twisted.logger import Logger

    def reload() -> None:
        gw.reload().addErrback(lambda f: Logger().failure("reload failed", f))

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))


# --- gatewayctl -----------------------------------------------------------------

def _engine(cfg):
    return dbmod.make_engine(cfg.database_url)


def cmd_db_upgrade(cfg, args) -> int:
    dbmod.upgrade(cfg.database_url)
    print(f"database at revision {dbmod.head_revision()}")
    return 0


def cmd_journal_verify(cfg, args) -> int:
    """Exit 0 intact, 1 broken (the first broken entry named), 2 cannot check (no key, bad argument)."""
    import heapq
    import os

    from gateway.journal import HeadFileError, head_file_summary, iter_head_file, parse_expect_head, verify_chain
    key = cfg.journal_auth.key
    try:
        expect = sorted((parse_expect_head(t) for t in args.expect_head), key=lambda m: m.last_id)
    except ValueError as e:
        print(f"ERROR --expect-head: {e}", file=sys.stderr)
        return 2
    head_file = args.head_file or ("" if args.no_head_file else cfg.journal_auth.head_file)
    keyed_from, lines = None, 0
    if head_file and not os.path.exists(head_file):
        if args.head_file:
            print(f"ERROR --head-file: {head_file} does not exist", file=sys.stderr)
            return 2
        print(f"note: the head file {head_file} does not exist yet (no head exported so far)")
        head_file = ""
    try:
        if head_file:
            lines, _, keyed_from = head_file_summary(head_file, key)
        # Only the lines there before the database is read: the daemon may append while we verify.
        marks = heapq.merge(expect, iter_head_file(head_file, key, limit=lines) if head_file else [],
                            key=lambda m: m.last_id)
        engine = _engine(cfg)
        dbmod.check_migrated(engine, cfg.file)
        with engine.connect() as conn:
            # One snapshot for the cuts and the live rows: a `journal archive` committing meanwhile
            # must not look like entries deleted between the anchor and the first live entry.
            if engine.url.get_backend_name() == "sqlite":
                conn.exec_driver_sql("BEGIN")
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            r = verify_chain(conn, cfg.journal_archive_dir, key=key, marks=marks, keyed_from=keyed_from,
                             check_payloads=not args.no_payloads)
            cold = None
            if r.ok:
                from gateway.journal_cold import verify_cold
                check_files = not args.no_cold and bool(cfg.journal_cold_dir)
                cold = verify_cold(conn, cfg.journal_cold_dir, key, check_files=check_files,
                                   public_key=_seal_public(cfg), marks=r.cold_marks,
                                   keyed_from=keyed_from if keyed_from is not None else r.keyed_from)
    except HeadFileError as e:
        print(f"JOURNAL BROKEN: {e}")
        return 1
    if not r.ok:
        where = f"at entry {r.first_bad_id}" if r.first_bad_id is not None else "(no entry to name)"
        print(f"JOURNAL BROKEN {where}: {r.reason} ({r.checked} entries verified before it)")
        return 1
    if not cold.ok:
        print(f"JOURNAL BROKEN in the cold archive: {cold.problem}")
        return 1
    if r.macs_unchecked:
        print(f"cannot authenticate the journal: entries from {r.keyed_from} carry MACs but no [journal] "
              f"key_file is configured in {cfg.file}", file=sys.stderr)
        return 2
    what = "chain, MACs" + ("" if args.no_payloads else " and payloads")
    print(f"journal intact: {r.checked} entries, {what} verified; head entry {r.last_id} {r.last_hash}")
    if cold.anchor_id:
        if cold.checked_files:
            print(f"  entries 1..{cold.anchor_id} in {cold.files} cold file(s) in {cfg.journal_cold_dir}: seals, "
                  f"hashes and chains verified, linked to the live chain at entry {cold.anchor_id}")
        else:
            print(f"  entries 1..{cold.anchor_id} were moved to cold files: NOT checked ("
                  f"{'--no-cold' if args.no_cold else 'no [journal] cold_dir'}); the cuts link to the live chain")
    if r.unkeyed_upto:
        print(f"  unkeyed up to entry {r.unkeyed_upto} (written before the journal key; covered by the "
              f"chain{' up to entry ' + str(r.keyed_from) + ', the first with a MAC' if r.keyed_from else ''})")
    if key is None:
        print("  WARNING: no [journal] key_file: anyone who can write to the database can rewrite this "
              "journal undetected")
    if expect or head_file:
        print(f"  reaches {len(r.marks_checked) + cold.marks_checked} exported head(s)"
          + (f" ({lines} line(s) in {head_file})"
                                                                      if head_file else ""))
    else:
        print("  no exported head checked: entries cut off the end cannot be seen (--expect-head ID:HASH, "
              "[journal] head_file)")
    return 0


def _seal_public(cfg):  # noqa: ANN001, ANN202
    """The seal's public key from [paper] (the cold files must be sealed by it), or None: the key
    each file carries is used, and the digests its cut recorded pin the file."""
    if cfg.paper is None:
        return None
    from gateway.paper.seal import Seal
    try:
        return Seal.from_settings(cfg.paper).public_key
    except Exception:  # noqa: BLE001  (a passphrase not at hand: the digests still pin the files)
        return None


def cmd_journal_archive(cfg, args) -> int:
    """Move entries older than the cut-off to cold files; exit 0 done (or nothing to move), 1 refused."""
    import datetime as dt
    import getpass

    from gateway.journal_cold import ColdError, archive_old, cutoff_for, plan
    from gateway.paper.cli import _at, _now, _seal, open_journal
    if not cfg.journal_cold_dir:
        print(f"{cfg.file}: [journal] cold_dir is not set: the folder the cold archive files go to", file=sys.stderr)
        return 2
    try:
        before = dt.date.fromisoformat(args.before) if args.before else None
        cutoff = cutoff_for(_now().date(), cfg.journal_retain_days, before)
    except ValueError as e:
        print(f"ERROR --before: {e}", file=sys.stderr)
        return 2
    except ColdError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 2
    engine = _engine(cfg)
    dbmod.check_migrated(engine, cfg.file)
    if args.dry_run:
        with engine.connect() as conn:
            p = plan(conn, cutoff)
        for month, first, last in p.months:
            print(f"would move entries {first}..{last} ({month}) to {cfg.journal_cold_dir}")
        print(f"the cut stops at entry {p.last_id}: {p.stopped_by}" if p.last_id >= p.first_id
              else f"nothing to move: {p.stopped_by}")
        return 0
    seal = _seal(cfg)
    try:
        p, moved = archive_old(engine, open_journal(cfg), seal, cfg.journal_auth.key, cfg.journal_cold_dir,
                               cutoff, _at(), who=getpass.getuser())
    except ColdError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    for m in moved:
        print(f"moved entries {m.first_id}..{m.last_id} ({m.entries}) to {cfg.journal_cold_dir}/{m.file}")
    print(f"the cut stops at entry {p.last_id}: {p.stopped_by}" if moved else f"nothing to move: {p.stopped_by}")
    return 0


def cmd_journal_head(cfg, args) -> int:
    """The current head for an operator to copy elsewhere; exit 1 if it cannot be vouched for."""
    from gateway.journal import current_head
    engine = _engine(cfg)
    dbmod.check_migrated(engine, cfg.file)
    with engine.connect() as conn:
        h = current_head(conn, cfg.journal_auth.key)
    if args.json:
        print(json.dumps({"last_id": h.last_id, "head_hash": h.last_hash, "mac": h.mac,
                          "keyed_from": h.keyed_from, "problem": h.problem}))
    else:
        print(f"journal head: entry {h.last_id}")
        print(f"  hash {h.last_hash}")
        print(f"  mac  {h.mac or '(none: unkeyed entry)'}")
        print(f"  keyed from entry {h.keyed_from}" if h.keyed_from else "  no keyed entry yet")
        print(f"  {h.last_id}:{h.last_hash}")
        print(f"copy it outside this host; later: gatewayctl --config {cfg.file} journal verify "
              f"--expect-head {h.last_id}:{h.last_hash}")
    if h.problem:
        print(f"HEAD NOT AUTHENTIC: {h.problem}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(cfg, args) -> int:
    """What start-up checks, without starting: every file and key, each bank's adapter (keys
    opened with their passphrases, modes), the database reachable and migrated."""
    from twisted.internet import reactor

    from gateway.service import StartupError, make_service
    try:
        gw = make_service(cfg, reactor)
    except StartupError as e:
        print(str(e), file=sys.stderr)
        return 2
    gw.database.engine.dispose()
    print(json.dumps({"ok": True, "config": cfg.file, "banks": sorted(cfg.banks)}))
    return 0


def cmd_rpc(cfg, args) -> int:
    from gateway.rpc_client import rpc_cli_main
    return rpc_cli_main(args.rest, unix_path=cfg.rpc.unix_socket if cfg.rpc else None)


def rpc_help(rest: list[str]) -> int | None:
    """`rpc --list` and `rpc [METHOD] --help`, printed from the method table (gateway.rpc_api.METHODS)
    without a configuration or a daemon; None when *rest* is a call to make."""
    from gateway.rpc_api import METHODS
    wants_help = any(a in ("--help", "-h") for a in rest)
    if "--list" not in rest and not wants_help:
        return None
    valued = {"--socket", "--url", "--token-file", "--timeout"}
    methods = [a for i, a in enumerate(rest)
               if not a.startswith("-") and "=" not in a and (i == 0 or rest[i - 1] not in valued)]
    if "--list" in rest or not methods:
        if wants_help and not methods:
            from gateway.rpc_client import USAGE
            print(f"usage: {USAGE}\n       gatewayctl rpc --list | gatewayctl rpc METHOD --help\n")
        width = max(map(len, METHODS))
        for name in sorted(METHODS):
            print(f"{name:<{width}}  {METHODS[name].summary}")
        return 0
    name = methods[0]
    spec = METHODS.get(name)
    if spec is None:
        print(f"gatewayctl rpc: no RPC method {name!r}; the methods are: {', '.join(sorted(METHODS))} "
              f"(gatewayctl rpc --list)", file=sys.stderr)
        return 2
    print(f"gatewayctl rpc {name}" + "".join(f" {p.name}=..." if p.required else f" [{p.name}=...]"
                                              for p in spec.params))
    print(f"  {spec.summary}")
    if not spec.params:
        print("parameters: none")
        return 0
    print("parameters:")
    nw = max(len(p.name) for p in spec.params)
    tw = max(len(p.type) for p in spec.params)
    for p in spec.params:
        print(f"  {p.name:<{nw}}  {'required' if p.required else 'optional'}  {p.type:<{tw}}  {p.about}")
    return 0


# --- gatewayctl keys ---------------------------------------------------------------

def _keys_passphrase(args):
    from gateway.keystore import Passphrase
    if args.passphrase_file:
        return Passphrase.from_file(args.passphrase_file)
    if args.passphrase_env:
        return Passphrase.from_env(args.passphrase_env)
    return None


def _now():
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc)


def cmd_keys_generate(args) -> int:
    from gateway import keystore
    pw = _keys_passphrase(args)
    if pw is None:
        raise keystore.KeystoreError("a private key is written encrypted: give --passphrase-file F "
                                     "or --passphrase-env VAR")
    written = keystore.generate(args.bank, args.dir, args.kind, pw, now=_now(), subject=args.subject,
                                days=args.days, csr=args.csr, self_signed=args.self_signed,
                                rsa_bits=args.bits)
    for path, what in written:
        print(f"wrote {path}: {what}")
    return 0


def cmd_keys_show(args) -> int:
    from gateway import keystore
    pw = _keys_passphrase(args)
    now, status = _now(), 0
    for path in args.paths:
        try:
            print("\n".join(keystore.show(path, now=now, passphrase=pw)))
        except keystore.KeystoreError as e:
            print(f"ERROR {e}", file=sys.stderr)
            status = 2
    return status


def cmd_keys_import(args) -> int:
    from gateway import keystore
    dest, lines = keystore.import_file(args.bank, args.dir, args.kind, args.file, now=_now())
    print(f"imported {args.file} as {dest} (mode 0644)")
    for line in lines:
        print(f"  {line}")
    return 0


def cmd_keys_check(args) -> int:
    import os

    from gateway import keystore
    target = args.keys_config or args.config
    if args.dir or (target and os.path.isdir(target)):
        findings = keystore.check_dir(args.dir or target, now=_now(), passphrase=_keys_passphrase(args),
                                      warn_days=args.warn_days)
    elif target:
        findings = keystore.check_config(target, now=_now(), warn_days=args.warn_days)
    else:
        raise keystore.KeystoreError("keys check needs --config conf/gateway.toml or --dir keys/BANK")
    for f in findings:
        print(f)
    levels = {f.level for f in findings}
    errors = sum(f.level == "error" for f in findings)
    warns = sum(f.level == "warn" for f in findings)
    print(f"{errors} error(s), {warns} warning(s)")
    return 2 if "error" in levels else 1 if "warn" in levels else 0


def cmd_keys_generate_journal(args) -> int:
    from gateway.journal import JournalKeyError, generate_key_file
    try:
        generate_key_file(args.out)
    except JournalKeyError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: journal key (HMAC-SM3, 256 bits), mode 0600; name it in [journal] key_file "
          "and keep a copy where the database's administrators cannot reach it (keys/README.md)")
    return 0


def _add_keys_parser(sub) -> None:
    k = sub.add_parser("keys", help="our private keys, certificates and the banks' keys (keys/README.md)")
    ks = k.add_subparsers(dest="cmd", required=True)

    def passphrase_opts(p) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--passphrase-file", metavar="F", help="the private key passphrase, first line of F (mode 0600)")
        g.add_argument("--passphrase-env", metavar="VAR", help="the private key passphrase, from environment variable VAR")

    g = ks.add_parser("generate", help="a new key pair of ours, private key encrypted (0600)")
    g.add_argument("--bank", required=True, help="the bank_id (for the default subject CN=gateway-BANK)")
    g.add_argument("--dir", required=True, help="the bank's key folder, e.g. keys/BANK")
    g.add_argument("--kind", required=True, choices=("sm2", "rsa"))
    passphrase_opts(g)
    g.add_argument("--subject", help='certificate subject, e.g. "CN=gateway,O=某市财政局,C=CN"')
    g.add_argument("--days", type=int, default=365, help="validity of a --self-signed certificate (default 365)")
    g.add_argument("--bits", type=int, default=3072, help="RSA key size (default 3072)")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--csr", action="store_true", help="also write a certificate signing request (RSA)")
    how.add_argument("--self-signed", action="store_true", help="also write a self-signed certificate (RSA)")
    g.set_defaults(keys_fn=cmd_keys_generate)

    s = ks.add_parser("show", help="kind, fingerprint, subject and dates of key and certificate files")
    s.add_argument("paths", nargs="+", metavar="PATH")
    passphrase_opts(s)
    s.set_defaults(keys_fn=cmd_keys_show)

    i = ks.add_parser("import", help="validate a file from the bank and copy it into its key folder")
    i.add_argument("--bank", required=True)
    i.add_argument("--dir", required=True, help="the bank's key folder, e.g. keys/BANK")
    i.add_argument("--kind", required=True, choices=("certificate", "ca", "sm2-public", "ssh-host-key"))
    i.add_argument("file", metavar="FILE")
    i.set_defaults(keys_fn=cmd_keys_import)

    c = ks.add_parser("check", help="every key file: exists, mode, passphrase, certificate expiry "
                                    "(exit 0 ok, 1 warnings, 2 errors)")
    c.add_argument("--config", dest="keys_config", metavar="FILE", help="the daemon's TOML file (or a key folder)")
    c.add_argument("--dir", help="check one bank's key folder instead, e.g. keys/BANK")
    c.add_argument("--warn-days", type=int, default=30, help="warn this many days before a certificate ends (default 30)")
    passphrase_opts(c)
    c.set_defaults(keys_fn=cmd_keys_check)

    jk = ks.add_parser("generate-journal", help="a new journal key (HMAC-SM3, 256 bits, mode 0600) for "
                                               "[journal] key_file; never overwrites")
    jk.add_argument("--out", required=True, metavar="FILE", help="e.g. keys/journal.key")
    jk.set_defaults(keys_fn=cmd_keys_generate_journal)


def _run_keys(args) -> None:
    from gateway.keystore import KeystoreError
    from protocols.keyfile import KeyFileError
    try:
        raise SystemExit(args.keys_fn(args))
    except (KeystoreError, KeyFileError) as e:
        print(f"ERROR {e}", file=sys.stderr)
        raise SystemExit(2) from None


def gatewayctl_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gatewayctl", description="Inspect and maintain the bank gateway.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", help="the daemon's TOML file (required but for `keys`)")
    sub = p.add_subparsers(dest="group", required=True)
    d = sub.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    d.add_parser("upgrade", help="apply the migrations (alembic upgrade head)").set_defaults(fn=cmd_db_upgrade)
    j = sub.add_parser("journal", help="the message journal").add_subparsers(dest="cmd", required=True)
    v = j.add_parser("verify", help="check the hash chain, MACs, archived payloads and exported heads "
                                    "(exit 0 intact, 1 broken, 2 cannot check)")
    v.add_argument("--expect-head", action="append", default=[], metavar="ID:HASH",
                   help="a head printed earlier by `journal head`: the chain must still pass through it")
    v.add_argument("--head-file", metavar="F", help="check this exported-head file (default: [journal] head_file)")
    v.add_argument("--no-head-file", action="store_true", help="do not check [journal] head_file")
    v.add_argument("--no-payloads", action="store_true", help="skip the archived payloads (faster)")
    v.add_argument("--no-cold", action="store_true", help="do not read the cold archive files (the cuts are "
                                                          "still checked against each other and the live chain)")
    v.set_defaults(fn=cmd_journal_verify)
    ja = j.add_parser("archive", help="move entries older than [journal] retain_days (or --before) to cold "
                                      "archive files in [journal] cold_dir, one per month; the chain stays continuous")
    ja.add_argument("--before", metavar="YYYY-MM-DD", help="entries written before this day (China time)")
    ja.add_argument("--dry-run", action="store_true", help="say what would move and where the cut stops")
    ja.set_defaults(fn=cmd_journal_archive)
    jh = j.add_parser("head", help="the current head (id, hash, MAC), checked, for copying elsewhere")
    jh.add_argument("--json", action="store_true", help="one JSON object")
    jh.set_defaults(fn=cmd_journal_head)
    from gateway import cli_journal
    cli_journal.add_show_parser(j)   # journal show: filters, --full, --json
    from gateway import cli_ops
    cli_ops.add_parsers(sub)
    r = sub.add_parser("rpc", help="call the daemon's RPC: gatewayctl rpc METHOD key=value ... "
                                   "(--list: the methods; METHOD --help: its parameters)",
                       add_help=False)
    r.add_argument("rest", nargs=argparse.REMAINDER)
    r.set_defaults(fn=cmd_rpc)
    from gateway import cli_alarms
    cli_alarms.add_parser(sub)
    from gateway import cli_health
    cli_health.add_parser(sub)
    from gateway import cli_corrections
    cli_corrections.add_parser(sub)
    from gateway import cli_console
    cli_console.add_parser(sub)   # console add-user
    sub.add_parser("check-config", help="run start-up's checks (files, keys, database) and exit").set_defaults(
        fn=cmd_check_config, needs_banks=True)
    _add_keys_parser(sub)
    from gateway.paper.cli import add_parsers as add_paper_parsers
    add_paper_parsers(sub)   # sheet, register, report, archive (gateway/paper/)
    args, extra = p.parse_known_args(argv)
    if extra and args.group != "rpc":
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.group == "rpc":
        # argparse leaves options before the method (--list, --socket S) out of REMAINDER: they are rpc's
        args.rest = extra + args.rest
        shown = rpc_help(args.rest)   # the method table needs no configuration
        if shown is not None:
            raise SystemExit(shown)
    if args.group == "keys":
        _run_keys(args)   # key files need no valid configuration (keys check reads it itself)
    if getattr(args, "no_config", False) or (args.group == "console" and args.users_file and not args.config):
        raise SystemExit(args.fn(None, args))   # sheet verify, archive verify: offline, for auditors
    if not args.config:
        p.error("the following arguments are required: --config")
    # Only check-config needs every bank file valid; the other commands read the database, the
    # journal or the daemon's RPC, and a broken bank file (the daemon refuses it) must not hide those.
    cfg = _load(args.config, banks_optional=not getattr(args, "needs_banks", False))
    try:
        raise SystemExit(args.fn(cfg, args))
    except dbmod.NotMigrated as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # noqa: BLE001  (a database without our tables: say so, no traceback)
        from gateway import quickread
        if isinstance(e, quickread.NotMigrated):
            print(str(e), file=sys.stderr)
            raise SystemExit(2) from None
        if type(e).__module__.split(".")[0] in ("sqlite3", "psycopg"):   # gateway/quickread.py
            print(f"{cfg.file}: database.url: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            raise SystemExit(2) from None
        from sqlalchemy.exc import DBAPIError
        if not isinstance(e, DBAPIError):
            raise
        try:
            dbmod.check_migrated(dbmod.make_engine(cfg.database_url), cfg.file)
        except dbmod.NotMigrated as nm:
            print(str(nm), file=sys.stderr)
            raise SystemExit(2) from None
        except Exception:  # noqa: BLE001
            pass
        print(f"{cfg.file}: database.url: {type(e).__name__}: {str(e.orig)[:300]}", file=sys.stderr)
        raise SystemExit(2) from None
