"""The settings schema a dialect declares, and the checks on its key files, below adapters and daemon.

A bank file is read against a schema of `Field`s by a `Reader`, which collects
every error ('file: key: message') instead of stopping at the first, so an
operator sees them all at once (`ConfigError`). The daemon's own file
(gateway/config.py) and each dialect's part of a bank file (its factory's
`load_settings`, e.g. adapters/cnbank/settings.py) are read with the same
helpers. `AdapterError`, `bank_passphrase` and `require_encrypted` are what a
factory uses when it opens the keys a bank file names.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "ConfigError", "REQUIRED", "Field", "Reader", "positive", "port", "one_of", "pattern", "load_toml",
    "check_file", "check_private", "SftpSettings", "SFTP", "AdapterError", "bank_passphrase",
    "require_encrypted",
]

class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem as 'file: key: message'."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("configuration is invalid:\n  " + "\n  ".join(errors))


class _Missing:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Missing()


@dataclass
class Field:
    kind: type | tuple
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None
    path: bool = False  # resolve relative to the file's directory


class Reader:
    """Reads one TOML table against a schema, collecting errors instead of raising."""

    def __init__(self, file: Path, errors: list[str]):
        self.file = file
        self.base = file.parent
        self.errors = errors

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.file}: {key}: {msg}")

    def table(self, data: Any, prefix: str, schema: dict[str, Field]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not isinstance(data, dict):
            self.err(prefix or "(top)", "must be a table")
            data = {}
        for key in data:
            if key not in schema:
                self.err(join(prefix, key), f"unknown key (known: {', '.join(sorted(schema))})")
        for key, f in schema.items():
            name = join(prefix, key)
            if key not in data:
                if f.default is REQUIRED:
                    self.err(name, "is required")
                    out[key] = None
                else:
                    out[key] = f.default
                continue
            value = data[key]
            kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
            if isinstance(value, bool) and bool not in kinds:
                ok = False
            elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
                ok, value = True, float(value)
            else:
                ok = isinstance(value, kinds)
            if not ok:
                want = " or ".join(k.__name__ for k in kinds)
                self.err(name, f"must be {want}, got {type(value).__name__} {value!r}")
                out[key] = None
                continue
            if f.check is not None:
                problem = f.check(value)
                if problem:
                    self.err(name, problem)
            if f.path and isinstance(value, str):
                value = str((self.base / value).resolve()) if not os.path.isabs(value) else value
            out[key] = value
        return out


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def port(v: int) -> str | None:
    return None if 0 < v < 65536 else "must be a TCP port 1-65535"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"
    return check


def pattern(rx: str, what: str) -> Callable[[Any], str | None]:
    c = re.compile(rx)

    def check(v: Any) -> str | None:
        return None if c.fullmatch(v) else f"must be {what}, got {v!r}"
    return check


def load_toml(path: Path, errors: list[str]) -> dict | None:
    """A TOML file as a dict, or None with the reason appended to *errors*."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        errors.append(f"{path}: file not found")
    except tomllib.TOMLDecodeError as e:
        errors.append(f"{path}: not valid TOML: {e}")
    except OSError as e:
        errors.append(f"{path}: cannot read: {e.strerror}")
    return None


def check_file(r: Reader, key: str, path: str | None) -> None:
    if path and not os.path.isfile(path):
        r.err(key, f"file {path} does not exist")


def check_private(r: Reader, key: str, path: str | None) -> None:
    """A secret file (key, token): it exists, and neither group nor others may read or write it."""
    if not path or not os.path.isfile(path):
        return
    from protocols.keyfile import KeyFileError, read_private_bytes
    try:
        read_private_bytes(path)
    except KeyFileError as e:
        r.err(key, str(e).replace("private key file", "secret file"))
    except OSError as e:
        r.err(key, f"cannot read {path}: {e.strerror}")


# --- SFTP, a transport both dialects use --------------------------------------


@dataclass(frozen=True)
class SftpSettings:
    host: str
    port: int
    username: str
    client_key: str
    host_key: str
    in_dir: str
    out_dir: str
    remove_uploads: bool
    connect_timeout_s: float
    idle_timeout_s: float
    max_file_bytes: int


SFTP = {
    "host": Field(str),
    "port": Field(int, check=port),
    "username": Field(str),
    "client_key": Field(str, path=True),
    "host_key": Field(str, check=pattern(
        r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( .*)?|SHA256:[A-Za-z0-9+/]{43}=?",
        "the bank's SSH host key as an OpenSSH public key line or a SHA256: fingerprint")),
    "in_dir": Field(str, "/in"),
    "out_dir": Field(str, "/out"),
    "remove_uploads": Field(bool, True),
    "connect_timeout_s": Field(float, 10.0, positive),
    "idle_timeout_s": Field(float, 120.0, positive),
    "max_file_bytes": Field(int, 2 * 1024 ** 3, positive),
}


# --- the keys a bank file names -------------------------------------------------


class AdapterError(Exception):
    """An adapter cannot be made for a bank; the message names the bank file and key."""


def bank_passphrase(bank_file: str, passphrase_file: str, passphrase_env: str):
    """The passphrase a bank file names for our private key (keys.passphrase_file or
    keys.passphrase_env), or None; AdapterError naming the file and key if it cannot be read."""
    from adapters import keys as keystore
    try:
        if passphrase_file:
            return keystore.Passphrase.from_file(passphrase_file)
        if passphrase_env:
            return keystore.Passphrase.from_env(passphrase_env)
        return None
    except keystore.KeystoreError as e:
        key = "passphrase_file" if passphrase_file else "passphrase_env"
        raise AdapterError(f"{bank_file}: keys.{key}: {e}") from None


def require_encrypted(bank_file: str, key_name: str, path: str, allowed: bool) -> None:
    """Our private key must be encrypted at rest; a plain one only where the bank file's [keys] says
    allow_unencrypted = true (a demo or test installation), and then with a warning at every start.

    AdapterError naming the bank file and key otherwise (also for a key file group or others may
    read, as the loaders refuse it).
    """
    from protocols.keyfile import KeyFileError, read_private_bytes

    from adapters.keys import private_key_encrypted
    try:
        data = read_private_bytes(path)
    except (KeyFileError, OSError) as e:
        raise AdapterError(f"{bank_file}: {key_name}: {e}") from None
    if private_key_encrypted(data):
        return
    if not allowed:
        raise AdapterError(
            f"{bank_file}: {key_name}: {path} is not encrypted at rest (私钥未加密); encrypt it under a "
            f"passphrase (gatewayctl keys generate/import, keys/README.md) and name passphrase_file or "
            f"passphrase_env, or, on a demo or test installation only, set allow_unencrypted = true in [keys]")
    from twisted.logger import Logger
    Logger(namespace="gateway.bankplugins").warn(
        "{file}: {key}: {path} is NOT encrypted at rest; allowed by [keys] allow_unencrypted = true "
        "(demo and tests only)", file=bank_file, key=key_name, path=path)
