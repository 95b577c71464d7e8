"""The daemon's configuration: read, validated whole, and frozen before anything starts.

One TOML file for the daemon (`conf/gateway.toml`) and one per bank
(`conf/banks/*.toml`). Every error is collected and reported together, each
naming its file and key; unknown keys are errors, so a typo never silently
falls back to a default. Relative paths are relative to the directory of the
file that names them. Secrets are read from files and never appear in repr.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.secret import Secret  # noqa: F401  (re-exported: configuration types name it)
from adapters.settings import REQUIRED, ConfigError  # noqa: F401  (re-exported)
from adapters.settings import SFTP as _SFTP  # noqa: F401  (re-exported)
from adapters.settings import Field as _Field
from adapters.settings import Reader as _Reader
from adapters.settings import SftpSettings  # noqa: F401  (re-exported)
from adapters.cnbank.settings import CnBankSettings, TcpSettings  # noqa: F401,E402  (re-exported)
from adapters.settings import check_file as _check_file
from adapters.settings import check_private as _check_private
from adapters.settings import join as _join  # noqa: F401
from adapters.settings import load_toml as _load_toml
from adapters.settings import one_of as _one_of
from adapters.settings import pattern as _pattern
from adapters.settings import port as _port
from adapters.settings import positive as _positive

# For a dialect's adapter reading its own part of a bank file (now adapters.settings).
Reader, Field, positive, port, one_of, pattern = _Reader, _Field, _positive, _port, _one_of, _pattern


def _http_url(v: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", v) else f"must be an http(s) URL, got {v!r}"


# --- the configuration types -------------------------------------------------


@dataclass(frozen=True)
class BankConfig:
    """One agent bank (代发金融机构): its dialect, endpoints, keys and settings.

    The fields after `payer_name` belong to the cnbank dialect; a bank of another
    dialect has them empty and its own settings, validated by its adapter, in `settings`.
    """

    file: str
    bank_id: str
    name: str
    dialect: str
    payer_acct: str
    payer_name: str
    sender_id: str = ""
    receiver_id: str = ""
    our_private_key: str = ""
    bank_public_key: str = ""
    passphrase_file: str = ""         # opens our_private_key when it is encrypted (PKCS#8)
    passphrase_env: str = ""
    allow_unencrypted: bool = False   # [keys] allow_unencrypted: our key may be plain (demo/tests; warned)
    tcp: TcpSettings | None = None
    sftp: SftpSettings | None = None
    cnbank: CnBankSettings | None = None
    settings: Any = None

    # The flows' timing, from whichever dialect section the bank has.
    @property
    def _timing(self) -> Any:
        return self.cnbank if self.cnbank is not None else self.settings

    @property
    def status_poll_s(self) -> float:
        return self._timing.status_poll_s

    @property
    def return_poll_s(self) -> float:
        return self._timing.return_poll_s

    @property
    def result_working_days(self) -> int:
        return self._timing.result_working_days

    @property
    def late_return_window_days(self) -> int:
        return self._timing.late_return_window_days

    @property
    def statement_daily(self) -> bool:
        """Whether the flow asks for yesterday's statement each day (banks that push them: no)."""
        return bool(getattr(self._timing, "statement_daily", False))


@dataclass(frozen=True)
class CoreSettings:
    base_url: str
    token: Secret
    poll_interval_s: float
    timeout_s: float
    results_chunk: int
    retry_max_delay_s: float
    call_deadline_s: float = 60.0          # one attempt, request to the last byte of the answer
    stream_window_s: float = 60.0          # the item stream's rate is checked over this window...
    stream_min_bytes_per_s: float = 1024.0  # ...and must bring at least this much while we wait
    max_item_line_bytes: int = 65536       # one NDJSON item line; longer makes the order INVALID
    allow_plain_http: bool = False         # http:// to a host other than loopback


@dataclass(frozen=True)
class RpcSettings:
    unix_socket: str
    unix_mode: int
    tcp_port: int | None      # None: no TCP listener
    token_file: str | None
    head_timeout_s: float = 10.0   # a connection's request head must be in within this
    body_timeout_s: float = 30.0   # and its body within this after the head
    max_connections: int = 64      # open connections per listener; more are answered 503
    callers: tuple = ()            # [[rpc.callers]]: gateway.rpc_api.CallerRule; () = everything to anyone
    tls_listen: str = ""           # "host:port" of the TLS listener ("" = none), with the three below
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""            # CA(s) whose client certificates may connect (then pinned by cert_sha256)


@dataclass(frozen=True)
class PaperSettings:
    """[paper]: the result sheets, reports and archives on paper (gateway/paper/)."""

    seal_key: str              # our SM2 private key that seals sheets and archive manifests
    passphrase_file: str       # opens seal_key when it is encrypted
    passphrase_env: str
    signer_id: str             # the SM2 signer ID (distid) of the seal's signatures
    out_dir: str               # where sheets, workbooks and PDFs are written
    font_file: str             # "" = the built-in CID font STSong-Light; else a TTF/TTC to embed


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: the Prometheus endpoint (gateway/metrics.py)."""

    host: str                 # loopback unless allow_remote
    port: int
    refresh_s: float          # how often the database figures are read


@dataclass(frozen=True)
class ConsoleSettings:
    """[console]: the operations console in the browser (gateway/console/)."""

    host: str                  # loopback unless tls_cert and tls_key are set
    port: int
    users_file: str            # `gatewayctl console add-user` writes it (bcrypt hashes, 0600)
    session_s: float           # a session ends this long after its last request
    lockout_after: int         # wrong passwords in a row before an account is locked...
    lockout_s: float           # ...for this long
    tls_cert: str = ""         # PEM certificate and key: required for any address but loopback
    tls_key: str = ""


@dataclass(frozen=True)
class DiskSettings:
    """[work] min_free_mb, critical_free_mb, disk_check_s: when free space is alarmed (disk-space-low)."""

    min_free_mb: int = 2048
    critical_free_mb: int = 512
    check_s: float = 60.0


@dataclass(frozen=True)
class GatewayConfig:
    file: str
    database_url: str
    db_threads: int
    db_bulk_threads: int
    db_read_threads: int
    work_dir: str
    journal_archive_dir: str
    journal_inline_max_bytes: int
    core: CoreSettings
    banks: dict[str, BankConfig]
    log_format: str
    crash_after: str
    rpc: RpcSettings | None = None
    calendar: Any = None               # gateway.workdays.WorkCalendar, or None: deadlines not tracked
    confirm_working_days: int = 5
    dispute_working_days: int = 3  # test hook: "" or a named point, see gateway/faults.py
    retry_times: tuple[str, ...] = ()  # [schedule]: "HH:MM" CST on working days; () = only order.retry
    ha_retry_s: float = 2.0            # [ha]: a standby tries for a lease this often
    ha_mode: str = "single"            # [ha]: "single" (one lease) or "per-bank" (core + one per bank)
    ha_lease_s: float = 8.0            # [ha]: a lease lasts this long (database clock) unless renewed
    ha_margin_s: float = 2.0           # [ha]: the holder stops acting this long before its lease can end
    ha_prefer: tuple[str, ...] = ()    # [ha] per-bank: leases this daemon takes first; others after a grace
    journal_auth: JournalAuth = field(default_factory=lambda: JournalAuth())   # [journal] key, head export
    journal_retain_days: int = 0       # [journal] retain_days: older entries may move to cold files; 0 = off
    journal_cold_dir: str = ""         # [journal] cold_dir: the cold archive files (journal archive)
    paper: PaperSettings | None = None  # [paper]: None = sheets cannot be sealed
    metrics: MetricsSettings | None = None  # [metrics]: None = no /metrics endpoint
    console: ConsoleSettings | None = None  # [console]: None = no console
    disk: DiskSettings = field(default_factory=DiskSettings)
    # load(..., banks_optional=True) only: one per bank file left out, "file: key: message; ..."
    bank_problems: tuple[str, ...] = ()


_GATEWAY_TOP = {
    "database": _Field(dict),
    "core": _Field(dict),
    "journal": _Field(dict),
    "work": _Field(dict),
    "banks": _Field(dict),
    "log": _Field(dict, {}),
    "rpc": _Field(dict, None),
    "calendar": _Field(dict, None),
    "testing": _Field(dict, {}),
    "schedule": _Field(dict, {}),
    "ha": _Field(dict, {}),
    "paper": _Field(dict, None),
    "metrics": _Field(dict, None),
    "console": _Field(dict, None),
}
_DATABASE = {
    "url": _Field(str, check=_pattern(r"(sqlite:///.+|postgresql(\+psycopg)?://.+)",
                                      "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB")),
    "threads": _Field(int, 1, _positive),
    # PostgreSQL: threads of their own for the work that grows with an order (load, build,
    # apply, push); SQLite keeps it on its one writer. Read-only snapshots (the RPC's reads,
    # reports) run on read_threads beside the writer on both.
    "bulk_threads": _Field(int, 2, _positive),
    "read_threads": _Field(int, 2, _positive),
}
_CORE = {
    "base_url": _Field(str, check=_http_url),
    "token_file": _Field(str, path=True),
    "poll_interval_s": _Field(float, 10.0, _positive),
    "timeout_s": _Field(float, 60.0, _positive),
    "results_chunk": _Field(int, 5000, _positive),
    "retry_max_delay_s": _Field(float, 60.0, _positive),
    "call_deadline_s": _Field(float, 60.0, _positive),
    "stream_window_s": _Field(float, 60.0, _positive),
    "stream_min_bytes_per_s": _Field(float, 1024.0, _positive),
    "max_item_line_bytes": _Field(int, 65536, _positive),
    "allow_plain_http": _Field(bool, False),
}
_JOURNAL = {
    "archive_dir": _Field(str, path=True),
    "inline_max_bytes": _Field(int, 65536, _positive),
    "key_file": _Field(str, "", path=True),            # HMAC-SM3 key of the entries' MACs (0600)
    "head_file": _Field(str, "", path=True),           # append-only export of the chain head
    "head_export_s": _Field(float, 60.0, _positive),
    "self_verify_s": _Field(float, 3600.0, lambda v: None if v >= 0 else "must be 0 (off) or more"),
    # retention: `gatewayctl journal archive` moves entries older than this to cold files (0: off)
    "retain_days": _Field(int, 0, lambda v: None if v >= 0 else "must be 0 (off) or more days"),
    "cold_dir": _Field(str, "", path=True),            # where the cold archive files go (0700)
}


@dataclass(frozen=True)
class JournalAuth:
    """[journal] key and head export (gateway/journal.py, gateway/journal_watch.py)."""

    key: Any = None            # gateway.journal.JournalKey (repr redacted), or None: entries unkeyed
    key_file: str = ""
    head_file: str = ""        # "" = the head is not exported
    head_export_s: float = 60.0
    self_verify_s: float = 3600.0   # 0 = no periodic self-check


def _journal_auth(r: _Reader, journal: dict) -> JournalAuth:
    key = None
    if journal.get("key_file"):
        from gateway.journal_key import JournalKeyError, read_key_file
        try:
            key = read_key_file(journal["key_file"])
        except JournalKeyError as e:
            r.err("journal.key_file", str(e))
    if journal.get("head_file") and not journal.get("key_file"):
        r.err("journal.head_file", "needs journal.key_file: each exported head carries its MAC")
    if journal.get("head_file") and not os.path.isdir(os.path.dirname(journal["head_file"])):
        r.err("journal.head_file", f"directory {os.path.dirname(journal['head_file'])} does not exist")
    return JournalAuth(key, journal.get("key_file") or "", journal.get("head_file") or "",
                       journal.get("head_export_s") or 60.0,
                       journal["self_verify_s"] if journal.get("self_verify_s") is not None else 3600.0)
_WORK = {
    "dir": _Field(str, path=True),
    # disk-space-low (gateway/disk_watch.py): free space on the file systems of the work dir, the
    # journal archive and the SQLite database; a warning under min_free_mb, critical under critical_free_mb
    "min_free_mb": _Field(int, 2048, _positive),
    "critical_free_mb": _Field(int, 512, _positive),
    "disk_check_s": _Field((int, float), 60.0, _positive),
}
_BANKS = {"dir": _Field(str, path=True)}
_RPC = {
    "unix_socket": _Field(str, path=True),
    "unix_mode": _Field(str, "0660", _pattern(r"0[0-7][0-7]0", "an octal mode giving others nothing, e.g. 0660")),
    "tcp_port": _Field(int, 0, lambda v: None if 0 <= v < 65536 else "must be 0 (off) or a port"),
    "token_file": _Field(str, "", path=True),
    "head_timeout_s": _Field(float, 10.0, _positive),
    "body_timeout_s": _Field(float, 30.0, _positive),
    "max_connections": _Field(int, 64, _positive),
    "callers": _Field(list, []),
    "tls_listen": _Field(str, "", _pattern(r"\[?[^\s\[\]]+\]?:[0-9]{1,5}", "host:port")),
    "tls_cert": _Field(str, "", path=True),
    "tls_key": _Field(str, "", path=True),
    "client_ca": _Field(str, "", path=True),
}
_RPC_CALLER = {
    "name": _Field(str, check=_pattern(r"[A-Za-z0-9_.-]{1,40}", "1-40 letters, digits, '_', '.' or '-'")),
    "methods": _Field(list),
    "unix_user": _Field(str, ""),
    "unix_group": _Field(str, ""),
    "token_file": _Field(str, "", path=True),
    "cert_sha256": _Field(str, "", _pattern(r"([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}",
                                            "the certificate's SHA-256, 64 hex digits (colons allowed)")),
}


def _rpc_callers(r: _Reader, items: list) -> tuple:
    """[[rpc.callers]]: each a name, exactly one way to recognise it, and the methods it may call."""
    import grp
    import pwd

    from gateway.rpc_api import CallerRule
    rules, names = [], set()
    for i, item in enumerate(items):
        prefix = f"rpc.callers[{i}]"
        ct = r.table(item, prefix, _RPC_CALLER)
        ways = [k for k in ("unix_user", "unix_group", "token_file", "cert_sha256") if ct.get(k)]
        if len(ways) != 1:
            r.err(prefix, "needs exactly one of unix_user, unix_group, token_file, cert_sha256"
                          + (f" (has {', '.join(ways)})" if ways else ""))
        methods = ct.get("methods") or []
        if not methods or not all(isinstance(m, str) and re.fullmatch(r"[A-Za-z0-9_.*]+", m) for m in methods):
            r.err(f"{prefix}.methods", 'must list method names or patterns ("order.status", "report.*", "*")')
        if ct.get("name") in names:
            r.err(f"{prefix}.name", f"{ct['name']!r} is declared twice")
        names.add(ct.get("name"))
        if ct.get("unix_user"):
            try:
                pwd.getpwnam(ct["unix_user"])
            except KeyError:
                r.err(f"{prefix}.unix_user", f"no Unix user {ct['unix_user']!r} on this host")
        if ct.get("unix_group"):
            try:
                grp.getgrnam(ct["unix_group"])
            except KeyError:
                r.err(f"{prefix}.unix_group", f"no Unix group {ct['unix_group']!r} on this host")
        if ct.get("token_file"):
            _check_file(r, f"{prefix}.token_file", ct["token_file"])
        if ct.get("name") and methods and len(ways) == 1:
            rules.append(CallerRule(ct["name"], tuple(methods), ct["unix_user"], ct["unix_group"],
                                    ct["token_file"], ct["cert_sha256"].replace(":", "").lower()))
    return tuple(rules)


_CALENDAR = {
    "dir": _Field(str, path=True),
    "confirm_working_days": _Field(int, 5, _positive),   # article 26: the department checks within 5
    "dispute_working_days": _Field(int, 3, _positive),   # and reports errors within 3 more
}


def _times_of_day(v: list) -> str | None:
    bad = [f"item {i + 1} {t!r}" for i, t in enumerate(v)
           if not isinstance(t, str) or not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", t)]
    if bad:
        return f"must be a list of times \"HH:MM\" (00:00-23:59); not a time: {', '.join(bad)}"
    dup = sorted({t for t in v if v.count(t) > 1})
    return f"lists {', '.join(dup)} more than once" if dup else None


_SCHEDULE = {"retry_times": _Field(list, [], _times_of_day)}
_HA = {"retry_s": _Field(float, 2.0, _positive), "mode": _Field(str, "single", _one_of("single", "per-bank")),
       "lease_s": _Field(float, 8.0, _positive), "margin_s": _Field(float, 2.0, _positive),
       "prefer": _Field(list, [])}
_PAPER = {
    "seal_key": _Field(str, path=True),
    "passphrase_file": _Field(str, "", path=True),
    "passphrase_env": _Field(str, ""),
    "signer_id": _Field(str, "1234567812345678", _pattern(r"[ -~]{1,64}", "1 to 64 printable ASCII characters")),
    "out_dir": _Field(str, "../var/paper", path=True),
    "font_file": _Field(str, "", path=True),
}
_METRICS = {
    "listen": _Field(str, "127.0.0.1:9464",
                     _pattern(r"[0-9A-Za-z.:\[\]-]+:[0-9]{1,5}", "host:port, e.g. 127.0.0.1:9464")),
    "refresh_s": _Field(float, 15.0, _positive),
    "allow_remote": _Field(bool, False),
}
_CONSOLE = {
    "listen": _Field(str, "127.0.0.1:8470",
                     _pattern(r"[0-9A-Za-z.:\[\]-]+:[0-9]{1,5}", "host:port, e.g. 127.0.0.1:8470")),
    "users_file": _Field(str, path=True),
    "session_s": _Field(float, 1800.0, _positive),
    "lockout_after": _Field(int, 5, _positive),
    "lockout_s": _Field(float, 900.0, _positive),
    "tls_cert": _Field(str, "", path=True),
    "tls_key": _Field(str, "", path=True),
}
_LOG = {"format": _Field(str, "auto", _one_of("auto", "text", "json"))}
_TESTING = {"crash_after": _Field(str, "")}

_ID = _pattern(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", "letters, digits, '_' or '-' (at most 32)")

_BANK_TOP = {
    "bank_id": _Field(str, check=_ID),
    "name": _Field(str),
    "dialect": _Field(str, check=_ID),
    "payer_acct": _Field(str, check=_pattern(r"[0-9]{8,32}", "8 to 32 digits")),
    "payer_name": _Field(str),
}
def load_bank(path: Path, errors: list[str]) -> BankConfig | None:
    data = _load_toml(path, errors)
    if data is None:
        return None
    r = _Reader(path, errors)
    n_before = len(errors)
    if data.get("dialect") == "cnbank":
        # The dialect the gateway was built with: its part of the file is read by adapters/cnbank/settings.py.
        from adapters.cnbank.settings import read_bank_file
        read = read_bank_file(r, data, _BANK_TOP)
        if len(errors) > n_before or read is None:
            return None
        top, fields = read
        return BankConfig(file=str(path), bank_id=top["bank_id"], name=top["name"], dialect="cnbank",
                          payer_acct=top["payer_acct"], payer_name=top["payer_name"], **fields)
    common = {k: data[k] for k in _BANK_TOP if k in data}
    top = r.table(common, "", _BANK_TOP)
    dialect = top.get("dialect")
    if dialect is None:
        return None
    # Another dialect: its adapter factory (found by entry point) reads the rest of the file.
    from gateway.bankplugins import UnknownDialect, factory_for
    try:
        factory = factory_for(dialect)
    except UnknownDialect as e:
        r.err("dialect", str(e))
        return None
    rest = {k: v for k, v in data.items() if k not in _BANK_TOP}
    settings = factory.load_settings(r, rest, path.parent)
    if len(errors) > n_before or settings is None:
        return None
    return BankConfig(file=str(path), bank_id=top["bank_id"], name=top["name"], dialect=dialect,
                      payer_acct=top["payer_acct"], payer_name=top["payer_name"], settings=settings)


def load(path: str | os.PathLike, *, banks_optional: bool = False) -> GatewayConfig:
    """Read and validate the daemon's file and every bank file; raise ConfigError listing all errors.

    With *banks_optional* (gatewayctl commands that never touch a bank: alarms, journal, orders,
    health), a bank file with errors is left out of `banks` and its errors are kept in
    `bank_problems` instead of refusing the whole configuration.
    """
    path = Path(path).resolve()
    errors: list[str] = []
    data = _load_toml(path, errors)
    if data is None:
        raise ConfigError(errors)
    r = _Reader(path, errors)
    top = r.table(data, "", _GATEWAY_TOP)
    db = r.table(top["database"] or {}, "database", _DATABASE)
    core = r.table(top["core"] or {}, "core", _CORE)
    journal = r.table(top["journal"] or {}, "journal", _JOURNAL)
    journal_auth = _journal_auth(r, journal)
    if journal.get("retain_days") and not journal.get("cold_dir"):
        r.err("journal.retain_days", "needs journal.cold_dir: the folder the cold archive files go to")
    if journal.get("cold_dir") and journal.get("archive_dir") \
            and os.path.abspath(journal["cold_dir"]) == os.path.abspath(journal["archive_dir"]):
        r.err("journal.cold_dir", "must not be journal.archive_dir (the live payloads)")
    work = r.table(top["work"] or {}, "work", _WORK)
    if work.get("min_free_mb") and work.get("critical_free_mb") and work["critical_free_mb"] >= work["min_free_mb"]:
        r.err("work.critical_free_mb", f"must be below work.min_free_mb ({work['min_free_mb']}): the warning "
                                       f"comes first, critical when space keeps shrinking")
    banks_t = r.table(top["banks"] or {}, "banks", _BANKS)
    log = r.table(top["log"] or {}, "log", _LOG)
    testing = r.table(top["testing"] or {}, "testing", _TESTING)
    schedule = r.table(top["schedule"] or {}, "schedule", _SCHEDULE)
    ha = r.table(top["ha"] or {}, "ha", _HA)
    if ha.get("lease_s") and ha.get("margin_s") and ha["margin_s"] * 2 > ha["lease_s"]:
        r.err("ha.margin_s", "must be at most half of ha.lease_s (the holder renews and acts in the rest)")
    calendar, cal = None, {"confirm_working_days": 5, "dispute_working_days": 3}
    if top["calendar"] is not None:
        cal = r.table(top["calendar"], "calendar", _CALENDAR)
        if cal.get("dir"):
            from gateway.workdays import CalendarError, load_calendar
            try:
                calendar = load_calendar(cal["dir"], warn=False)   # warned at the daemon's start
            except CalendarError as e:
                errors.extend(e.errors)
    if schedule.get("retry_times") and not (isinstance(top["calendar"], dict) and top["calendar"].get("dir")):
        r.err("schedule.retry_times", "needs [calendar] dir: scheduled retries run on working days only")
    paper = None
    if top["paper"] is not None:
        pt = r.table(top["paper"], "paper", _PAPER)
        _check_file(r, "paper.seal_key", pt.get("seal_key"))
        _check_file(r, "paper.font_file", pt.get("font_file"))
        if pt.get("passphrase_file") and pt.get("passphrase_env"):
            r.err("paper.passphrase_env", "set passphrase_file or passphrase_env, not both")
        if pt.get("seal_key"):
            paper = PaperSettings(**pt)
    metrics = None
    if top["metrics"] is not None:
        mt = r.table(top["metrics"], "metrics", _METRICS)
        if mt.get("listen"):
            host, _, port = mt["listen"].rpartition(":")
            host = host.strip("[]")
            if not 0 < int(port) < 65536:
                r.err("metrics.listen", f"port {port} is not 1-65535")
            elif host not in ("127.0.0.1", "::1", "localhost") and not mt.get("allow_remote"):
                r.err("metrics.listen", f"{host} is not loopback; the figures name banks and amounts: "
                                        f"set metrics.allow_remote = true to serve them beyond this host")
            else:
                metrics = MetricsSettings(host, int(port), mt["refresh_s"])
    console = None
    if top["console"] is not None:
        ct = r.table(top["console"], "console", _CONSOLE)
        if ct.get("listen"):
            host, _, port = ct["listen"].rpartition(":")
            host = host.strip("[]")
            n_errors = len(errors)
            if not 0 < int(port) < 65536:
                r.err("console.listen", f"port {port} is not 1-65535")
            elif host not in ("127.0.0.1", "::1", "localhost"):
                for key in ("tls_cert", "tls_key"):
                    if not ct.get(key):
                        r.err(f"console.{key}", f"is required: console.listen {host} is not loopback, and "
                                                f"passwords and personal data never cross the network in clear")
            for key in ("tls_cert", "tls_key"):
                _check_file(r, f"console.{key}", ct.get(key) or None)
            if ct.get("tls_key"):
                _check_private(r, "console.tls_key", ct["tls_key"])
            if len(errors) == n_errors and ct.get("users_file"):
                console = ConsoleSettings(host, int(port), ct["users_file"], ct["session_s"],
                                          ct["lockout_after"], ct["lockout_s"], ct["tls_cert"], ct["tls_key"])
    rpc = None
    if top["rpc"] is not None:
        rt = r.table(top["rpc"], "rpc", _RPC)
        if rt.get("tcp_port") and not rt.get("token_file"):
            r.err("rpc.token_file", "is required when rpc.tcp_port is set: TCP never runs without a token")
        if rt.get("unix_socket") and len(os.fsencode(rt["unix_socket"])) > 107:
            r.err("rpc.unix_socket", "path is longer than the 107 bytes a Unix socket allows")
        callers = _rpc_callers(r, rt.get("callers") or [])
        tls_keys = ("tls_listen", "tls_cert", "tls_key", "client_ca")
        if any(rt.get(k) for k in tls_keys):
            for key in tls_keys:
                if not rt.get(key):
                    r.err(f"rpc.{key}", "is required with the other TLS settings (tls_listen, tls_cert, tls_key, "
                                        "client_ca): the RPC leaves the host only with TLS and a client certificate")
                elif key != "tls_listen":
                    _check_file(r, f"rpc.{key}", rt[key])
            if rt.get("tls_key"):
                _check_private(r, "rpc.tls_key", rt["tls_key"])
        if rt.get("unix_socket") and rt.get("unix_mode"):
            rpc = RpcSettings(rt["unix_socket"], int(rt["unix_mode"] or "0660", 8),
                              rt["tcp_port"] or None, rt["token_file"] or None,
                              float(rt["head_timeout_s"]), float(rt["body_timeout_s"]), rt["max_connections"],
                              callers, rt["tls_listen"], rt["tls_cert"], rt["tls_key"], rt["client_ca"])

    if core.get("base_url") and not core.get("allow_plain_http"):
        # The token and every personal datum of an order would cross the network in clear.
        from urllib.parse import urlsplit
        u = urlsplit(core["base_url"])
        if u.scheme == "http" and (u.hostname or "") not in ("127.0.0.1", "::1", "localhost"):
            r.err("core.base_url", f"{core['base_url']} is plain http to a host other than loopback; "
                                   f"use https, or set core.allow_plain_http = true to accept it")
    token = None
    if core.get("token_file"):
        _check_private(r, "core.token_file", core["token_file"])   # the same rule as our private keys
        try:
            token = Secret(Path(core["token_file"]).read_text().strip(), core["token_file"])
            if not token.value:
                r.err("core.token_file", f"{core['token_file']} is empty")
        except OSError as e:
            r.err("core.token_file", f"cannot read {core['token_file']}: {e.strerror}")

    banks: dict[str, BankConfig] = {}
    bank_problems: list[str] = []
    bank_dir = banks_t.get("dir")
    if bank_dir:
        files = sorted(Path(bank_dir).glob("*.toml")) if os.path.isdir(bank_dir) else []
        if not os.path.isdir(bank_dir):
            r.err("banks.dir", f"directory {bank_dir} does not exist")
        elif not files:
            r.err("banks.dir", f"no bank files (*.toml) in {bank_dir}")
        for f in files:
            bank_errors: list[str] = []
            b = load_bank(f, bank_errors)
            if bank_errors and banks_optional:
                bank_problems.append("; ".join(bank_errors))
                continue
            errors.extend(bank_errors)
            if b is None:
                continue
            if b.bank_id in banks:
                errors.append(f"{f}: bank_id: {b.bank_id!r} is also used by {banks[b.bank_id].file}")
            banks[b.bank_id] = b

    if errors:
        raise ConfigError(errors)
    return GatewayConfig(
        file=str(path), database_url=resolve_database_url(db["url"] or "", path.parent), db_threads=db["threads"],
        db_bulk_threads=db["bulk_threads"], db_read_threads=db["read_threads"],
        work_dir=work["dir"], journal_archive_dir=journal["archive_dir"],
        disk=DiskSettings(work["min_free_mb"], work["critical_free_mb"], float(work["disk_check_s"])),
        journal_inline_max_bytes=journal["inline_max_bytes"], journal_auth=journal_auth,
        journal_retain_days=journal["retain_days"], journal_cold_dir=journal["cold_dir"],
        core=CoreSettings(base_url=core["base_url"].rstrip("/"), token=token,
                          poll_interval_s=core["poll_interval_s"], timeout_s=core["timeout_s"],
                          results_chunk=core["results_chunk"],
                          retry_max_delay_s=core["retry_max_delay_s"],
                          call_deadline_s=core["call_deadline_s"], stream_window_s=core["stream_window_s"],
                          stream_min_bytes_per_s=core["stream_min_bytes_per_s"],
                          max_item_line_bytes=core["max_item_line_bytes"],
                          allow_plain_http=core["allow_plain_http"]),
        banks=banks, log_format=log["format"], crash_after=testing["crash_after"], rpc=rpc,
        calendar=calendar, confirm_working_days=cal["confirm_working_days"],
        dispute_working_days=cal["dispute_working_days"],
        retry_times=tuple(sorted(schedule["retry_times"] or ())), ha_retry_s=ha["retry_s"],
        ha_mode=ha["mode"], ha_lease_s=ha["lease_s"], ha_margin_s=ha["margin_s"],
        ha_prefer=tuple(str(b) for b in ha["prefer"] or ()),
        paper=paper, metrics=metrics, console=console,
        bank_problems=tuple(bank_problems),
    )


def resolve_database_url(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to *base* (the config file's directory)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((base / url[len(prefix):]).resolve())
    return url
