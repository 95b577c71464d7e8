"""A complete loopback installation: keys, configuration, core and bank simulators, the daemon.

Used by the demo, the end-to-end tests and the benchmark, so all three run the
same real thing: the simulators listen on 127.0.0.1 (HTTP, framed TCP, SFTP)
in this process's reactor, and the daemon runs as its own process from the
configuration written here, exactly as an operator would start it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from protocols import keyfile, sm
from protocols.cnbank_envelope import EnvelopeSettings
from simulators import sftp_server

BANK_ID = "cnbank-demo"
CALENDAR_DIR = Path(__file__).resolve().parent.parent / "conf" / "calendar"
GATEWAY_SENDER = "GW3301"
BANK_RECEIVER = "CNBANK01"
PAYER_ACCT = "6222020200112233445"
# The RPC methods the demo's "operators" caller may use: reading only, never the core's rights.
OPERATOR_METHODS = ("health", "order.status", "refund.status", "report.*")


@dataclass
class Paths:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.keys = self.root / "keys"
        self.conf = self.root / "conf"
        self.banks = self.conf / "banks"
        self.bank_data = self.root / "bank"
        self.sftp_root = self.root / "bank-sftp"
        self.core_db = self.root / "core-sim.db"
        self.gateway_db = self.root / "gateway.db"
        self.log = self.root / "gatewayd.log"
        # AF_UNIX paths are short (107 bytes): the socket lives in /tmp, named after the root.
        import hashlib
        self.rpc_socket = Path("/tmp") / f"gw-{hashlib.sha256(str(self.root).encode()).hexdigest()[:12]}.sock"


@dataclass
class Keys:
    gw_sm2: sm.SM2PrivateKey
    bank_sm2: sm.SM2PrivateKey
    gw_ssh: str           # private key path
    bank_host: str        # private key path


def make_keys(p: Paths) -> Keys:
    """Fresh key pairs for both sides (never committed: generated per run)."""
    p.keys.mkdir(parents=True, exist_ok=True)
    gw, bank = sm.generate_keypair(), sm.generate_keypair()
    keyfile.write_private_key_file(p.keys / "gateway_sm2.pem", gw, overwrite=True)
    keyfile.write_public_key_file(p.keys / "gateway_sm2.pub.pem", gw.public_key, overwrite=True)
    keyfile.write_private_key_file(p.keys / "bank_sm2.pem", bank, overwrite=True)
    keyfile.write_public_key_file(p.keys / "bank_sm2.pub.pem", bank.public_key, overwrite=True)
    for name in ("gateway_ssh", "bank_host"):
        for suffix in ("", ".pub"):
            f = p.keys / (name + suffix)
            if f.exists():
                f.unlink()
    sftp_server.generate_client_key(str(p.keys / "gateway_ssh"))
    sftp_server.generate_host_key(str(p.keys / "bank_host"))
    return Keys(gw, bank, str(p.keys / "gateway_ssh"), str(p.keys / "bank_host"))


@dataclass
class Ports:
    core: int
    bank_tcp: int
    bank_sftp: int


def calendar_dir(p: Paths, today: date | None = None) -> Path:
    """The installation's calendar: the shipped conf/calendar years, plus, for this year and
    the next when no file ships for them, a provisional weekends-only year marked as written
    here, so that the demo, the tests and the campaign keep running after the last shipped
    year (a real installation gets `CalendarGap` and its alarm instead: conf/calendar is
    untouched)."""
    today = today or date.today()
    out = p.conf / "calendar"
    out.mkdir(parents=True, exist_ok=True)
    shipped = sorted(CALENDAR_DIR.glob("cn-*.toml"))
    for f in shipped:
        (out / f.name).write_bytes(f.read_bytes())
    have = [int(f.stem[3:]) for f in shipped]
    for year in range(max(have) + 1, today.year + 2):
        (out / f"cn-{year}.toml").write_text(
            f"# Written by simulators/harness.py for a loopback installation: weekends only.\n"
            f"year = {year}\nprovisional = true\n"
            f'source = "loopback installation: no notice for {year} shipped, weekends only"\n'
            f"holidays = []\nworkdays = []\n")
    return out


def write_config(p: Paths, keys: Keys, ports: Ports, *, db_url: str | None = None,
                 poll_s: float = 0.5, status_poll_s: float = 0.3, results_chunk: int = 5000,
                 crash_after: str = "", token: str | None = None, return_poll_s: float = 3600) -> Path:
    """conf/gateway.toml and conf/banks/cnbank-demo.toml for this installation."""
    p.banks.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_hex(16)
    tok = p.conf / "core.token"
    tok.write_text(token + "\n")
    os.chmod(tok, 0o600)
    db_url = db_url or f"sqlite:///{p.gateway_db}"
    # The journal's MAC key, as an operator makes it (gatewayctl keys generate-journal): 0600, kept.
    journal_key = p.keys / "journal.key"
    if not journal_key.exists():
        from gateway.journal import generate_key_file
        p.keys.mkdir(parents=True, exist_ok=True)
        generate_key_file(journal_key)
    testing = f'\n[testing]\ncrash_after = "{crash_after}"\n' if crash_after else ""
    (p.conf / "gateway.toml").write_text(f"""\
# Written by simulators/harness.py for a loopback installation.
[database]
url = "{db_url}"

[core]
base_url = "http://127.0.0.1:{ports.core}"
token_file = "core.token"
poll_interval_s = {poll_s}
timeout_s = 60
results_chunk = {results_chunk}
retry_max_delay_s = 2

[journal]
archive_dir = "../journal"
key_file = "../keys/journal.key"
head_file = "../journal-heads.jsonl"

[work]
dir = "../work"

[banks]
dir = "banks"

[log]
format = "text"

[rpc]
unix_socket = "{p.rpc_socket}"

# Who may call what (README "Gateway RPC"): the core is this process's user; operators
# (here its primary group, standing in for an operators' group) only read.
[[rpc.callers]]
name = "core"
unix_user = "{pwd.getpwuid(os.getuid()).pw_name}"
methods = ["*"]

[[rpc.callers]]
name = "operators"
unix_group = "{grp.getgrgid(os.getgid()).gr_name}"
methods = {json.dumps(list(OPERATOR_METHODS))}

[calendar]
dir = "{calendar_dir(p)}"
{testing}""")
    host_line = sftp_server.public_key_line(keys.bank_host + ".pub" if os.path.exists(keys.bank_host + ".pub")
                                            else keys.bank_host)
    (p.banks / f"{BANK_ID}.toml").write_text(f"""\
bank_id = "{BANK_ID}"
name = "示范代发银行"
dialect = "cnbank"
sender_id = "{GATEWAY_SENDER}"
receiver_id = "{BANK_RECEIVER}"
payer_acct = "{PAYER_ACCT}"
payer_name = "市财政局惠民惠农补贴专户"

[keys]
our_private = "../../keys/gateway_sm2.pem"
bank_public = "../../keys/bank_sm2.pub.pem"
allow_unencrypted = true    # demo and tests: the SM2 key is generated per run, unencrypted (warned at start)

[tcp]
host = "127.0.0.1"
port = {ports.bank_tcp}
connect_timeout_s = 5
read_timeout_s = 30

[sftp]
host = "127.0.0.1"
port = {ports.bank_sftp}
username = "gateway"
client_key = "../../keys/gateway_ssh"
host_key = "{host_line}"
in_dir = "/in"
out_dir = "/out"

[cnbank]
status_poll_s = {status_poll_s}
return_poll_s = {return_poll_s}
""")
    return p.conf / "gateway.toml"


def envelope_settings() -> EnvelopeSettings:
    return EnvelopeSettings()


@dataclass
class Daemon:
    """The daemon as a child process (`gatewayd --config ...`)."""

    config: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)
    log_format: str = "text"
    cwd: str | None = None    # run from another copy of the sources (the fault campaign's snapshot)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gateway.cli import gatewayd_main; gatewayd_main()",
             "--config", str(self.config), "--log-format", self.log_format],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, cwd=self.cwd)
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop_async(self, reactor, timeout: float = 30) -> int | None:
        """SIGTERM, then wait without blocking the reactor: the simulators in this process
        must keep answering, or a daemon finishing its last step would wait on them."""
        from twisted.internet import task
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = reactor.seconds() + timeout
            while self.proc.poll() is None and reactor.seconds() < deadline:
                await task.deferLater(reactor, 0.05, lambda: None)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stop(self, timeout: float = 30) -> int | None:
        """Blocking stop, for cleanup paths; while the reactor waits here the simulators in
        this process cannot answer the daemon, so prefer stop_async."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def migrate(config: Path) -> None:
    from gateway import config as configmod
    from gateway import db as dbmod
    dbmod.upgrade(configmod.load(config).database_url)


@dataclass
class Simulators:
    """The core and bank simulators of one installation, in this process's reactor."""

    core: object
    bank: object
    ports: Ports
    specs: list

    async def ledger_by_order(self) -> dict[str, dict]:
        """Credits per order from the bank's own ledger, and how many items were credited twice."""
        from twisted.internet import defer
        out = {}
        doubles = await defer.maybeDeferred(self.bank.double_credits)
        for s in self.specs:
            credits = await defer.maybeDeferred(self.bank.credits, s.order_no)
            out[s.order_no] = {"count": len(credits), "amount": sum(c.amount for c in credits),
                               "double": sum(1 for d in doubles if d.order_no == s.order_no)}
        return out

    async def failed_by_reason(self, summary: dict) -> dict:
        """The core's summary, with FAILED results broken down by reason code."""
        for no, o in summary["orders"].items():
            by: dict[str, dict] = {}
            for r in (await self.core.results(no)).values():
                if r["status"] == "FAILED":
                    v = by.setdefault(r["reason_code"], {"count": 0, "amount": 0})
                    v["count"] += 1
                    v["amount"] += r["amount"]
            o["failed_by_reason"] = by
        return summary

    async def stop(self) -> None:
        await self.bank.stop()
        await self.core.close()


async def start_simulators(reactor, p: Paths, keys: Keys, specs: list, *, token: str,
                           processing_delay_s: float = 0.3, fail_every: int = 0,
                           core_cache: bool = False) -> Simulators:
    from simulators.cnbank.bank import CnBankSimulator
    from simulators.core.server import CoreSimulator
    cache = None
    if core_cache:
        cache = str(p.root / "core-cache")
        os.makedirs(cache, exist_ok=True)
    core = CoreSimulator(reactor, specs, str(p.core_db), token, fail_every=fail_every, cache_dir=cache)
    core_port = core.listen()
    bank = CnBankSimulator(reactor, data_dir=str(p.bank_data), bank_key=keys.bank_sm2,
                           gateway_key=keys.gw_sm2.public_key, bank_id=BANK_RECEIVER,
                           settings=envelope_settings(), sftp_root=str(p.sftp_root),
                           processing_delay_s=processing_delay_s, auto_fund=True,
                           payer_acct=PAYER_ACCT)
    await bank.ready
    tcp_port = bank.listen_tcp()
    sftp_port = bank.listen_sftp(authorized_keys=[sftp_server.public_key_line(keys.gw_ssh)],
                                 host_key_path=keys.bank_host, username="gateway")
    return Simulators(core, bank, Ports(core_port.getHost().port, tcp_port.getHost().port,
                                        sftp_port.getHost().port), specs)
