"""Tests of gateway/config.py: a valid installation loads, and every fault is reported, all together.

Each test writes a small installation into tmp_path (daemon file, one bank file,
real SM2 and SSH key files) and then breaks one or more things in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway import config as configmod
from gateway.config import ConfigError, Secret
from protocols import keyfile, sm
from simulators import sftp_server

TOKEN = "s3cr3t-core-token-7f9a"

GATEWAY_TOML = """\
[database]
url = "sqlite:///state/gateway.db"

[core]
base_url = "http://127.0.0.1:8081/"
token_file = "secrets/core.token"
poll_interval_s = 5
timeout_s = 30.5

[journal]
archive_dir = "../journal"

[work]
dir = "work"

[banks]
dir = "banks"

[log]
format = "json"
"""

BANK_TOML = """\
bank_id = "{bank_id}"
name = "示范代发银行"
dialect = "cnbank"
sender_id = "GW001"
receiver_id = "BANK001"
payer_acct = "6222000011112222"
payer_name = "市财政局惠民惠农补贴专户"

[keys]
our_private = "../keys/gateway_sm2.pem"
bank_public = "../keys/bank_sm2.pub.pem"

[tcp]
host = "127.0.0.1"
port = 9001
read_timeout_s = 30

[sftp]
host = "127.0.0.1"
port = 2222
username = "gateway"
client_key = "../keys/gateway_ssh"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDummyHostKeyLineForTests"

[cnbank]
sm2_cipher_order = "C1C2C3"
amount_unit = "fen"
"""


class Install:
    """Paths of one test installation under tmp_path/conf."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "conf"
        self.gateway = self.conf / "gateway.toml"
        self.banks = self.conf / "banks"
        self.keys = self.conf / "keys"
        self.bank = self.banks / "demo.toml"

    def errors(self) -> list[str]:
        with pytest.raises(ConfigError) as ei:
            configmod.load(self.gateway)
        return ei.value.errors


@pytest.fixture
def inst(tmp_path: Path) -> Install:
    """A valid installation: gateway.toml, banks/demo.toml, a token file and real key files."""
    i = Install(tmp_path)
    for d in (i.banks, i.keys, i.conf / "secrets"):
        d.mkdir(parents=True)
    (i.conf / "secrets" / "core.token").write_text(TOKEN + "\n")
    os.chmod(i.conf / "secrets" / "core.token", 0o600)
    gw, bank = sm.generate_keypair(), sm.generate_keypair()
    keyfile.write_private_key_file(i.keys / "gateway_sm2.pem", gw)
    keyfile.write_public_key_file(i.keys / "bank_sm2.pub.pem", bank.public_key)
    sftp_server.generate_client_key(str(i.keys / "gateway_ssh"))
    i.gateway.write_text(GATEWAY_TOML)
    i.bank.write_text(BANK_TOML.format(bank_id="demo-bank"))
    return i


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _has(errors: list[str], file: Path, key: str, *words: str) -> bool:
    """True if one error names *file* and *key* (as 'file: key: ...') and contains every word."""
    prefix = f"{file}: {key}: "
    return any(e.startswith(prefix) and all(w in e for w in words) for e in errors)


def test_valid_installation_loads(inst: Install) -> None:
    """A complete daemon file and bank file load into frozen settings with defaults filled in."""
    cfg = configmod.load(inst.gateway)
    assert cfg.file == str(inst.gateway.resolve())
    assert cfg.core.base_url == "http://127.0.0.1:8081"   # trailing slash dropped
    assert cfg.core.token.value == TOKEN                  # read from the file, stripped
    assert cfg.core.poll_interval_s == 5.0 and isinstance(cfg.core.poll_interval_s, float)
    assert cfg.core.timeout_s == 30.5
    assert cfg.core.results_chunk == 5000                 # default
    assert cfg.journal_inline_max_bytes == 65536          # default
    assert cfg.db_threads == 1
    assert cfg.log_format == "json"
    assert cfg.crash_after == ""
    assert list(cfg.banks) == ["demo-bank"]
    b = cfg.banks["demo-bank"]
    assert b.file == str(inst.bank.resolve())
    assert b.name == "示范代发银行" and b.dialect == "cnbank"
    assert b.payer_acct == "6222000011112222"
    assert b.tcp.port == 9001 and b.tcp.read_timeout_s == 30.0
    assert b.tcp.connect_timeout_s == 10.0                # default
    assert b.tcp.max_frame_bytes == 16 * 1024 * 1024
    assert b.sftp.in_dir == "/in" and b.sftp.remove_uploads is True
    assert b.cnbank.sm2_cipher_order == "C1C2C3" and b.cnbank.amount_unit == "fen"
    assert b.cnbank.signature_encoding == "raw"           # default
    # The key files named in the bank file are real, loadable keys.
    keyfile.read_private_key_file(b.our_private_key)
    keyfile.read_public_key_file(b.bank_public_key)
    with pytest.raises(Exception):
        cfg.core.timeout_s = 1  # type: ignore[misc]  (frozen)


def test_relative_paths_resolve_against_the_naming_files_directory(inst: Install) -> None:
    """Paths in gateway.toml are relative to conf/, paths in a bank file to conf/banks/, whatever the cwd."""
    other = inst.root / "elsewhere"
    other.mkdir()
    old = os.getcwd()
    os.chdir(other)
    try:
        cfg = configmod.load(os.path.relpath(inst.gateway, other))
    finally:
        os.chdir(old)
    conf = inst.conf.resolve()
    assert cfg.database_url == f"sqlite:///{conf / 'state' / 'gateway.db'}"
    assert cfg.core.token.source == str(conf / "secrets" / "core.token")
    assert cfg.journal_archive_dir == str(inst.root.resolve() / "journal")
    assert cfg.work_dir == str(conf / "work")
    b = cfg.banks["demo-bank"]
    # "../keys/..." from conf/banks/ is conf/keys/, not <cwd>/../keys/ nor conf/../keys/.
    assert b.our_private_key == str(conf / "keys" / "gateway_sm2.pem")
    assert b.bank_public_key == str(conf / "keys" / "bank_sm2.pub.pem")
    assert b.sftp.client_key == str(conf / "keys" / "gateway_ssh")


def test_absolute_paths_and_urls_are_kept(inst: Install) -> None:
    """An absolute path is used as written, and a PostgreSQL URL is not touched."""
    abs_archive = inst.root / "abs-journal"
    _edit(inst.gateway, 'archive_dir = "../journal"', f'archive_dir = "{abs_archive}"')
    _edit(inst.gateway, 'url = "sqlite:///state/gateway.db"',
          'url = "postgresql+psycopg://gw@127.0.0.1:5432/gateway"')
    cfg = configmod.load(inst.gateway)
    assert cfg.journal_archive_dir == str(abs_archive)
    assert cfg.database_url == "postgresql+psycopg://gw@127.0.0.1:5432/gateway"


def test_secret_never_shows_its_value(inst: Install) -> None:
    """The core token appears in no repr or str: not of the Secret, its settings, or the whole config."""
    cfg = configmod.load(inst.gateway)
    tok = cfg.core.token
    for text in (repr(tok), str(tok), f"{tok}", repr(cfg.core), str(cfg.core), repr(cfg)):
        assert TOKEN not in text
    assert "redacted" in repr(tok)
    assert "core.token" in repr(tok)          # says where it came from
    s = Secret("hunter2", "/etc/x")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in repr([s])


def test_all_errors_are_reported_together(inst: Install) -> None:
    """Faults in the daemon file and the bank file come back in one ConfigError, each naming file and key."""
    _edit(inst.gateway, "[database]\n", "[database]\nthreds = 4\n")             # unknown key in section
    inst.gateway.write_text("colour = true\n" + inst.gateway.read_text())           # unknown top-level key
    _edit(inst.gateway, 'format = "json"', 'format = "xml"')                        # bad choice
    _edit(inst.gateway, "timeout_s = 30.5", 'timeout_s = "30"')                    # wrong type
    inst.bank.write_text('bankid = "x"\n' + inst.bank.read_text())                  # unknown top-level key
    _edit(inst.bank, "port = 9001", "port = 70000")                                # bad port
    _edit(inst.bank, 'username = "gateway"\n', "")                                 # missing required key
    _edit(inst.bank, 'amount_unit = "fen"', 'amount_unit = "fen"\nround = 2')      # unknown key in [cnbank]
    _edit(inst.bank, "../keys/bank_sm2.pub.pem", "../keys/nope.pem")               # missing key file
    errors = inst.errors()
    g, b = inst.gateway.resolve(), inst.bank.resolve()
    assert _has(errors, g, "database.threds", "unknown key", "threads")
    assert _has(errors, g, "colour", "unknown key")
    assert _has(errors, g, "log.format", "must be one of", "'xml'")
    assert _has(errors, g, "core.timeout_s", "must be float", "str")
    assert _has(errors, b, "bankid", "unknown key", "bank_id")
    assert _has(errors, b, "tcp.port", "1-65535")
    assert _has(errors, b, "sftp.username", "is required")
    assert _has(errors, b, "cnbank.round", "unknown key")
    assert _has(errors, b, "keys.bank_public", "does not exist", "nope.pem")
    assert len(errors) == 9, errors
    # The exception's message lists them all, for the operator's terminal.
    with pytest.raises(ConfigError) as ei:
        configmod.load(inst.gateway)
    for e in errors:
        assert e in str(ei.value)


def test_an_unknown_dialect_is_named_with_the_registered_ones(inst: Install) -> None:
    """A bank file whose dialect no adapter is registered for stops the start naming file, key and
    the dialects that are registered (found through entry points, not a list in the code)."""
    _edit(inst.bank, 'dialect = "cnbank"', 'dialect = "swift"')
    errors = inst.errors()
    assert _has(errors, inst.bank.resolve(), "dialect", "must be one of", "'cnbank'", "'swift'"), errors


@pytest.mark.parametrize("section_text, key, words", [
    ('[database]\nurl = "sqlite:///x.db"\nthreads = 0\n', "database.threads", ("greater than 0",)),
    ('[database]\nurl = 5\n', "database.url", ("must be str", "int")),
    ('[database]\nurl = "sqlite:///x.db"\nthreads = true\n', "database.threads", ("must be int", "bool")),
    ('[database]\nurl = "sqlite:///x.db"\nthreads = 1.5\n', "database.threads", ("must be int", "float")),
    ('database = "sqlite:///x.db"\n', "database", ("must be dict", "str")),
])
def test_daemon_file_type_and_value_faults(inst: Install, section_text: str, key: str, words: tuple) -> None:
    """Wrong types (including bool for int and float for int) and out-of-range values name their key."""
    text = inst.gateway.read_text()
    start = text.index("[database]")
    end = text.index("[core]")
    inst.gateway.write_text(text[:start] + section_text + "\n" + text[end:])
    errors = inst.errors()
    assert _has(errors, inst.gateway.resolve(), key, *words), errors


def test_missing_required_section_and_key(inst: Install) -> None:
    """A missing section and a missing required key are both named."""
    text = inst.gateway.read_text()
    inst.gateway.write_text(text.replace('[work]\ndir = "work"\n', "").replace('token_file = "secrets/core.token"\n', ""))
    errors = inst.errors()
    g = inst.gateway.resolve()
    assert _has(errors, g, "work", "is required")
    assert _has(errors, g, "core.token_file", "is required")


def test_wrong_type_in_bank_file(inst: Install) -> None:
    """A port given as a string, and an integer where a bool is wanted, are type errors in the bank file."""
    _edit(inst.bank, "port = 2222", 'port = "2222"')
    _edit(inst.bank, 'host_key = ', "remove_uploads = 1\nhost_key = ")
    errors = inst.errors()
    b = inst.bank.resolve()
    assert _has(errors, b, "sftp.port", "must be int", "str")
    assert _has(errors, b, "sftp.remove_uploads", "must be bool", "int")


@pytest.mark.parametrize("port", ["0", "-1", "65536"])
def test_bad_port(inst: Install, port: str) -> None:
    """Ports outside 1-65535 are refused."""
    _edit(inst.bank, "port = 9001", f"port = {port}")
    assert _has(inst.errors(), inst.bank.resolve(), "tcp.port", "TCP port 1-65535")


def test_missing_key_files(inst: Install) -> None:
    """Every key file that does not exist is named, with the resolved path."""
    os.unlink(inst.keys / "gateway_sm2.pem")
    os.unlink(inst.keys / "gateway_ssh")
    errors = inst.errors()
    b = inst.bank.resolve()
    keys = inst.keys.resolve()
    assert _has(errors, b, "keys.our_private", "does not exist", str(keys / "gateway_sm2.pem"))
    assert _has(errors, b, "sftp.client_key", "does not exist", str(keys / "gateway_ssh"))
    assert len(errors) == 2, errors


def test_missing_or_empty_token_file(inst: Install) -> None:
    """A token file that is absent or empty is an error on core.token_file."""
    tok = inst.conf / "secrets" / "core.token"
    tok.write_text("\n")
    assert _has(inst.errors(), inst.gateway.resolve(), "core.token_file", "is empty")
    tok.unlink()
    assert _has(inst.errors(), inst.gateway.resolve(), "core.token_file", "cannot read")


def test_duplicate_bank_id(inst: Install) -> None:
    """Two bank files with one bank_id: the second names the first."""
    (inst.banks / "zz-copy.toml").write_text(BANK_TOML.format(bank_id="demo-bank"))
    errors = inst.errors()
    dup = (inst.banks / "zz-copy.toml").resolve()
    assert _has(errors, dup, "bank_id", "'demo-bank'", "also used by", str(inst.bank.resolve()))
    assert len(errors) == 1, errors


def test_two_distinct_banks_load(inst: Install) -> None:
    """Two bank files with different bank_ids both load."""
    (inst.banks / "second.toml").write_text(BANK_TOML.format(bank_id="second-bank"))
    cfg = configmod.load(inst.gateway)
    assert sorted(cfg.banks) == ["demo-bank", "second-bank"]


def test_bad_bank_id(inst: Install) -> None:
    """A bank_id with characters outside the allowed set is refused."""
    inst.bank.write_text(BANK_TOML.format(bank_id="demo bank/1"))
    assert _has(inst.errors(), inst.bank.resolve(), "bank_id", "must be letters")


def test_empty_banks_dir(inst: Install) -> None:
    """A banks directory holding no *.toml is an error: a gateway serving no bank is a mistake."""
    inst.bank.rename(inst.banks / "demo.toml.disabled")
    errors = inst.errors()
    assert _has(errors, inst.gateway.resolve(), "banks.dir", "no bank files")
    assert len(errors) == 1, errors


def test_missing_banks_dir(inst: Install) -> None:
    """A banks directory that does not exist is named with its resolved path."""
    _edit(inst.gateway, 'dir = "banks"', 'dir = "bankz"')
    assert _has(inst.errors(), inst.gateway.resolve(), "banks.dir", "does not exist",
                str(inst.conf.resolve() / "bankz"))


def test_invalid_toml_in_daemon_file(inst: Install) -> None:
    """A daemon file that is not TOML is reported with its path."""
    inst.gateway.write_text("[database\nurl = \n")
    errors = inst.errors()
    assert len(errors) == 1
    assert errors[0].startswith(f"{inst.gateway.resolve()}: not valid TOML")


def test_invalid_toml_in_bank_file_is_reported_with_other_errors(inst: Install) -> None:
    """A broken bank file does not hide errors elsewhere: both come back together."""
    (inst.banks / "broken.toml").write_text('bank_id = "x\n')
    _edit(inst.gateway, 'format = "json"', 'format = "yaml"')
    errors = inst.errors()
    assert any(e.startswith(f"{(inst.banks / 'broken.toml').resolve()}: not valid TOML") for e in errors)
    assert _has(errors, inst.gateway.resolve(), "log.format", "'yaml'")


def test_missing_daemon_file(tmp_path: Path) -> None:
    """A daemon file that does not exist is reported, not a traceback."""
    with pytest.raises(ConfigError) as ei:
        configmod.load(tmp_path / "nope.toml")
    assert ei.value.errors == [f"{(tmp_path / 'nope.toml').resolve()}: file not found"]


def test_core_base_url_must_be_http(inst: Install) -> None:
    """The core's base URL must be http(s)."""
    _edit(inst.gateway, 'base_url = "http://127.0.0.1:8081/"', 'base_url = "ftp://core"')
    assert _has(inst.errors(), inst.gateway.resolve(), "core.base_url", "http(s) URL")


@pytest.mark.parametrize("key, value, words", [
    ("head_timeout_s", "0", ("greater than 0",)),
    ("body_timeout_s", "-1", ("greater than 0",)),
    ("max_connections", "0", ("greater than 0",)),
    ("max_connections", "1.5", ("must be int",)),
])
def test_rpc_deadlines_and_connection_cap_are_validated(inst: Install, key: str, value: str, words) -> None:
    """[rpc] head_timeout_s, body_timeout_s and max_connections are read and a bad value names its key."""
    with open(inst.gateway, "a") as f:
        f.write(f'\n[rpc]\nunix_socket = "/tmp/gw-test.sock"\n{key} = {value}\n')
    assert _has(inst.errors(), inst.gateway.resolve(), f"rpc.{key}", *words)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_core_token_file_open_to_group_or_others_is_refused(inst: Install, mode: int) -> None:
    """The core token gets the bank keys' rule: readable or writable by group or others is refused, naming
    core.token_file, the mode and the chmod that fixes it."""
    os.chmod(inst.conf / "secrets" / "core.token", mode)
    assert _has(inst.errors(), inst.gateway.resolve(), "core.token_file", f"mode {mode:04o}", "chmod 600")


def test_sftp_client_key_open_to_group_is_refused(inst: Install) -> None:
    """The SFTP client key readable by the group is refused at load, naming the bank file and sftp.client_key."""
    os.chmod(inst.keys / "gateway_ssh", 0o640)
    assert _has(inst.errors(), inst.bank.resolve(), "sftp.client_key", "mode 0640", "chmod 600")


def test_allow_unencrypted_is_a_bool_of_the_keys_table(inst: Install) -> None:
    """[keys] allow_unencrypted is known (not an unknown key) and must be a bool."""
    _edit(inst.bank, 'bank_public = "../keys/bank_sm2.pub.pem"\n',
          'bank_public = "../keys/bank_sm2.pub.pem"\nallow_unencrypted = "yes"\n')
    assert _has(inst.errors(), inst.bank.resolve(), "keys.allow_unencrypted", "must be bool")
