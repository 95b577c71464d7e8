"""Key loading used at run time, below both the adapters and the daemon.

What a bank adapter opens when it is made and while it runs: our SM2 and RSA
private keys (encrypted at rest under a `Passphrase` from a file or the
environment), the bank's certificates with a rotation window (`CertRotation`),
fingerprints, expiry warnings, and `Secret`, a value whose repr never shows it.
Anything unsafe is refused with a `KeystoreError` naming the file: a private key
group or others may read or write, a wrong or missing passphrase, a certificate
that does not parse. Nothing here reads the wall clock: callers pass `now`.

The operator's side (`gatewayctl keys generate/import/show/check`) lives in
`gateway/keystore.py`, which re-exports these names.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.secret import Secret  # noqa: F401  (re-exported; kept apart so configuration loads without cryptography)
from protocols import keyfile
from protocols.keyfile import KeyFileError
from protocols.sm import SM2PrivateKey, SM2PublicKey
from protocols.chinatime import CST

__all__ = [
    "Secret", "KeystoreError", "Passphrase", "PrivateKey", "CertRotation", "ExpiryWarning",
    "load_private_key", "dump_private_key", "load_certificate", "load_certificates", "fingerprint",
    "public_key_fingerprint", "ssh_fingerprint", "expiry_warnings", "private_key_encrypted",
]

PrivateKey = Union[SM2PrivateKey, rsa.RSAPrivateKey]

# Beijing time: the bank file's dates (bank_previous_until) are the operators' calendar days.
MIN_RSA_BITS = 2048
# NIST SP 800-57 puts 2048-bit RSA at 112-bit strength, acceptable only to 2030;
# 3072 bits carries a key generated now through its certificate's life.
DEFAULT_RSA_BITS = 3072


class KeystoreError(KeyFileError):
    """A key, certificate or passphrase is missing or unusable; the message names the file."""


@contextmanager
def _as_keystore_error() -> Iterator[None]:
    try:
        yield
    except KeystoreError:
        raise
    except KeyFileError as e:
        raise KeystoreError(str(e)) from None


def _mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- passphrases ------------------------------------------------------------------

class Passphrase:
    """The passphrase that opens our private keys, read once from a file or the environment.

    A file holds it on its first line (as `openssl -pass file:F` reads it) and
    must be mode 0600 like a key. The value lives in a `Secret`,
    so it never shows in repr or logs.
    """

    __slots__ = ("secret",)

    def __init__(self, secret: Secret) -> None:
        if not secret.value:
            raise KeystoreError(f"{secret.source}: the passphrase is empty")
        self.secret = secret

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Passphrase":
        p = os.fspath(path)
        with _as_keystore_error():
            data = keyfile.read_private_bytes(p)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise KeystoreError(f"{p}: the passphrase file is not UTF-8") from None
        first = text.split("\n", 1)[0].rstrip("\r")
        return cls(Secret(first, p))

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> "Passphrase":
        env = os.environ if environ is None else environ
        if name not in env:
            raise KeystoreError(f"environment variable {name} (the key passphrase) is not set")
        return cls(Secret(env[name], f"${name}"))

    @classmethod
    def from_config(cls, table: Mapping[str, object], base_dir: str | os.PathLike, *,
                    where: str = "keys", environ: Mapping[str, str] | None = None) -> "Passphrase | None":
        """From `passphrase_file` (relative to *base_dir*) or `passphrase_env` of a [keys] table; None if neither."""
        pf, pe = table.get("passphrase_file"), table.get("passphrase_env")
        if pf and pe:
            raise KeystoreError(f"{where}: set passphrase_file or passphrase_env, not both")
        if pf:
            return cls.from_file(Path(base_dir) / str(pf))
        if pe:
            return cls.from_env(str(pe), environ)
        return None

    def bytes(self) -> bytes:
        return self.secret.value.encode("utf-8")

    @property
    def source(self) -> str:
        return self.secret.source

    def __repr__(self) -> str:
        return f"Passphrase(<redacted>, from {self.source})"

    __str__ = __repr__


def _pw(passphrase: "Passphrase | bytes | None") -> bytes | None:
    return passphrase.bytes() if isinstance(passphrase, Passphrase) else passphrase


# --- private keys ------------------------------------------------------------------

@dataclass(frozen=True)
class _Loaded:
    key: object = field(repr=False)
    kind: str                 # "SM2", "RSA-3072", "SSH ed25519"...
    encryption: str | None    # None: plaintext at rest
    iterations: int | None = None


def _pem_labels(data: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)]


def _describe(key: object) -> str:
    if isinstance(key, (SM2PrivateKey, SM2PublicKey)):
        return "SM2"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA-{key.key_size}"
    return type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "") or "key"


def _parse_private(data: bytes, passphrase: bytes | None, source: str) -> _Loaded:
    labels = _pem_labels(data)
    if "OPENSSH PRIVATE KEY" in labels:
        encrypted = _openssh_encrypted(data)
        if encrypted and passphrase is None:
            raise KeystoreError(f"{source}: the SSH key is encrypted and no passphrase was given")
        try:
            key = serialization.load_ssh_private_key(data, passphrase if encrypted else None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            if encrypted:
                raise KeystoreError(f"{source}: wrong passphrase for the encrypted SSH key") from None
            raise KeystoreError(f"{source}: not a usable OpenSSH private key ({e})") from None
        return _Loaded(key, "SSH " + _describe(key), "OpenSSH bcrypt" if encrypted else None)
    if "RSA PRIVATE KEY" in labels:
        encrypted = b"Proc-Type: 4,ENCRYPTED" in data
        if encrypted and passphrase is None:
            raise KeystoreError(f"{source}: the private key is encrypted and no passphrase was given")
        try:
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
        except (ValueError, TypeError) as e:
            if encrypted:
                raise KeystoreError(f"{source}: wrong passphrase for the encrypted private key") from None
            raise KeystoreError(f"{source}: not a usable RSA private key ({e})") from None
        return _check_rsa(_Loaded(key, _describe(key), "legacy PEM (Proc-Type)" if encrypted else None), source)
    with _as_keystore_error():
        if "PRIVATE KEY" in labels or "ENCRYPTED PRIVATE KEY" in labels:
            info = keyfile.load_private_key_info(data, passphrase=passphrase, source=source)
            if info.algorithm == keyfile.OID_RSA:
                key = serialization.load_der_private_key(info.der, None)
                return _check_rsa(_Loaded(key, _describe(key), info.encryption, info.iterations), source)
            if info.algorithm == keyfile.OID_EC_PUBLIC_KEY:
                return _Loaded(keyfile.sm2_private_key_from_pkcs8(info.der, source=source), "SM2",
                               info.encryption, info.iterations)
            raise KeystoreError(f"{source}: key algorithm {keyfile._oid_name(info.algorithm)} is neither "
                                f"SM2 nor RSA, the two the gateway uses")
        if labels:
            return _Loaded(keyfile.load_sm2_private_key(data, source=source), "SM2", None)
    raise KeystoreError(f"{source}: not a PEM private key")


def _check_rsa(loaded: _Loaded, source: str) -> _Loaded:
    if not isinstance(loaded.key, rsa.RSAPrivateKey):
        raise KeystoreError(f"{source}: expected an RSA or SM2 private key, found {loaded.kind}")
    if loaded.key.key_size < MIN_RSA_BITS:
        raise KeystoreError(f"{source}: RSA key is {loaded.key.key_size} bits, at least {MIN_RSA_BITS} required")
    return loaded


def _read_private(path: str | os.PathLike, passphrase: "Passphrase | bytes | None") -> _Loaded:
    p = os.fspath(path)
    with _as_keystore_error():
        data = keyfile.read_private_bytes(p)   # refuses group/other access, naming the mode
    try:
        return _parse_private(data, _pw(passphrase), p)
    except KeystoreError as e:
        if passphrase is None and "no passphrase was given" in str(e):
            raise KeystoreError(f"{e} (set passphrase_file or passphrase_env in the bank's [keys]; "
                                f"--passphrase-file or --passphrase-env for gatewayctl keys)") from None
        raise


def load_private_key(path: str | os.PathLike, passphrase: "Passphrase | bytes | None") -> PrivateKey:
    """Our SM2 or RSA private key from *path* (PKCS#8, plain or encrypted; SEC1 for SM2).

    Refused with a KeystoreError naming the file when group or others may read
    or write it (with its mode), when it is encrypted and *passphrase* is
    missing or wrong, or when it is neither SM2 nor RSA of at least 2048 bits.
    """
    loaded = _read_private(path, passphrase)
    if not isinstance(loaded.key, (SM2PrivateKey, rsa.RSAPrivateKey)):
        raise KeystoreError(f"{os.fspath(path)}: holds an {loaded.kind} key, not an SM2 or RSA private key")
    return loaded.key  # type: ignore[return-value]


def dump_private_key(key: PrivateKey, passphrase: "Passphrase | bytes", *,
                     iterations: int = keyfile.PBKDF2_ITERATIONS) -> bytes:
    """Encrypted PKCS#8 PEM of an SM2 or RSA key (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC)."""
    pw = _pw(passphrase)
    if isinstance(key, SM2PrivateKey):
        return keyfile.dump_sm2_private_key(key, pw, iterations=iterations)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return keyfile.encrypt_private_key_info(der, pw, iterations=iterations)


# --- certificates and fingerprints -------------------------------------------------

def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, colon hex, as `openssl x509 -fingerprint -sha256` prints it."""
    return _colon_hex(cert.fingerprint(hashes.SHA256()))


def public_key_fingerprint(key: object) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, colon hex (the same for a key, its public half and its certificate)."""
    if isinstance(key, SM2PrivateKey):
        key = key.public_key
    if isinstance(key, SM2PublicKey):
        pem = keyfile.dump_sm2_public_key(key)
        der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    else:
        if isinstance(key, x509.Certificate):
            key = key.public_key()
        elif hasattr(key, "public_key"):
            key = key.public_key()
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _colon_hex(hashlib.sha256(der).digest())


def ssh_fingerprint(key_line: str) -> str:
    """`SHA256:...` of an OpenSSH public key line, as `ssh-keygen -l` prints it."""
    parts = key_line.split()
    if len(parts) < 2:
        raise KeystoreError("an OpenSSH public key line is 'TYPE BASE64 [comment]'")
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def load_certificates(path: str | os.PathLike) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a chain or CA bundle), or the one in a DER file."""
    p = os.fspath(path)
    with _as_keystore_error():
        data = keyfile.read_public_bytes(p)
    return _parse_certificates(data, p)


def _parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            labels = _pem_labels(data)
            if "CERTIFICATE" not in labels:
                raise KeystoreError(f"{source}: no CERTIFICATE block (found {', '.join(labels)})")
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise KeystoreError(f"{source}: not a valid X.509 certificate ({e})") from None


def load_certificate(path: str | os.PathLike) -> x509.Certificate:
    """The certificate in *path* (PEM or DER); in a chain file, the first (the leaf)."""
    return load_certificates(path)[0]


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class ExpiryWarning:
    """A certificate past or near its end (到期)."""

    name: str
    subject: str
    not_after: dt.datetime
    days_left: int
    expired: bool
    not_yet_valid: bool = False

    @property
    def message(self) -> str:
        day = self.not_after.date().isoformat()
        if self.expired:
            return f"{self.name}: 证书已过期 certificate EXPIRED on {day} ({self.subject})"
        if self.not_yet_valid:
            return f"{self.name}: 证书尚未生效 certificate is not valid yet ({self.subject})"
        return f"{self.name}: 证书将于 {day} 到期 certificate expires in {self.days_left} days ({self.subject})"

    def __str__(self) -> str:
        return self.message


def expiry_warnings(certs: Iterable[x509.Certificate] | Mapping[str, x509.Certificate],
                    now: dt.datetime, warn_days: int = 30) -> list[ExpiryWarning]:
    """Certificates expired, not yet valid, or ending within *warn_days* of *now*.

    *certs* may map a name (the file) to each certificate, so messages name it.
    """
    items = certs.items() if isinstance(certs, Mapping) else ((c.subject.rfc4514_string(), c) for c in certs)
    now = _utc(now)
    out = []
    for name, cert in items:
        end, start = cert.not_valid_after_utc, cert.not_valid_before_utc
        days_left = (end - now).days
        subject = cert.subject.rfc4514_string()
        if now > end:
            out.append(ExpiryWarning(name, subject, end, days_left, True))
        elif now < start:
            out.append(ExpiryWarning(name, subject, end, days_left, False, True))
        elif end - now <= dt.timedelta(days=warn_days):
            out.append(ExpiryWarning(name, subject, end, days_left, False))
    return out


@dataclass(frozen=True)
class CertRotation:
    """The bank's certificate, with the previous one still accepted for a while after a rotation.

    `previous` is accepted for inbound messages (verifying the bank's
    signatures) through the end of `previous_until`, Beijing time, and not past
    its own expiry; outbound (what we encrypt to, what we pin) uses `current`
    only. The current certificate is not dropped on its expiry date: a lapsed
    pin would stop every payment, so its end is warned 30 days ahead by
    `gatewayctl keys check` instead. Both files are read when it is built.
    """

    current: str
    previous: str | None = None
    previous_until: dt.date | None = None
    _certs: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.previous is None) != (self.previous_until is None):
            raise KeystoreError("bank_previous_certificate and bank_previous_until go together: "
                                "set both or neither")
        certs = (load_certificate(self.current),
                 load_certificate(self.previous) if self.previous else None)
        object.__setattr__(self, "_certs", certs)

    @property
    def current_certificate(self) -> x509.Certificate:
        return self._certs[0]

    @property
    def previous_certificate(self) -> x509.Certificate | None:
        return self._certs[1]

    def outbound(self) -> x509.Certificate:
        return self._certs[0]

    def acceptable(self, now: dt.datetime) -> list[x509.Certificate]:
        """The certificates an inbound signature may verify against at *now*: current first."""
        out = [self._certs[0]]
        prev = self._certs[1]
        if prev is not None and self.previous_until is not None:
            if now.astimezone(CST).date() <= self.previous_until and _utc(now) <= prev.not_valid_after_utc:
                out.append(prev)
        return out


def private_key_encrypted(data: bytes) -> bool:
    """True when a private key file's bytes are encrypted (PKCS#8 PBES2, legacy PEM, OpenSSH bcrypt)."""
    labels = _pem_labels(data)
    return ("ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data
            or ("OPENSSH PRIVATE KEY" in labels and _openssh_encrypted(data)))


def _openssh_encrypted(data: bytes) -> bool:
    """Whether an "OPENSSH PRIVATE KEY" names a cipher other than "none" (PROTOCOL.key)."""
    body = b"".join(ln.strip() for ln in data.splitlines() if ln.strip() and not ln.startswith(b"-----"))
    try:
        raw = base64.b64decode(body)
    except ValueError:
        return False
    magic = b"openssh-key-v1\x00"
    if not raw.startswith(magic) or len(raw) < len(magic) + 4:
        return False
    n = int.from_bytes(raw[len(magic):len(magic) + 4], "big")
    return raw[len(magic) + 4:len(magic) + 4 + n] != b"none"
