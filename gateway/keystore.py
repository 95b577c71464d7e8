"""Key store: the gateway's private keys, certificates and pinned bank keys, on disk.

The logic behind `gatewayctl keys` (generate, show, import, check), so the
command line only parses arguments and prints. What the daemon and the adapters
load at run time (our SM2 and RSA private keys, encrypted at rest under a
passphrase; our certificate; the bank's certificates with a rotation window;
the bank's CA) is adapters/keys.py, re-exported here, which refuses anything
unsafe with a message that names the file. The
layout of a bank's key folder and the configuration keys are documented in
keys/README.md. Nothing here reads the wall clock: callers pass `now`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.keys import (  # noqa: F401  (re-exported: the run-time half lives below the adapters)
    CST, DEFAULT_RSA_BITS, MIN_RSA_BITS, CertRotation, ExpiryWarning, KeystoreError, Passphrase, PrivateKey,
    Secret, _as_keystore_error, _check_rsa, _describe, _Loaded, _mode_of, _openssh_encrypted, _parse_certificates,
    _parse_private, _pem_labels, _pw, _read_private, _utc, dump_private_key, expiry_warnings, fingerprint,
    load_certificate, load_certificates, load_private_key, private_key_encrypted, public_key_fingerprint,
    ssh_fingerprint)
from protocols import keyfile
from protocols.keyfile import KeyFileError
from protocols.sm import SM2PrivateKey, generate_keypair

__all__ = [
    "KeystoreError", "Passphrase", "PrivateKey", "CertRotation", "ExpiryWarning", "Finding",
    "FILE_NAMES", "IMPORT_KINDS", "load_private_key", "dump_private_key", "load_certificate",
    "load_certificates", "fingerprint", "public_key_fingerprint", "ssh_fingerprint",
    "expiry_warnings", "parse_subject", "generate", "import_file", "show", "check_config",
    "check_dir",
]


# The documented names in keys/<bank_id>/ (keys/README.md).
FILE_NAMES = {
    "our_sm2_key": "gateway_sm2.pem",
    "our_sm2_public": "gateway_sm2.pub.pem",
    "our_rsa_key": "gateway_rsa.pem",
    "our_rsa_public": "gateway_rsa.pub.pem",
    "our_csr": "gateway_rsa.csr.pem",
    "our_certificate": "gateway_cert.pem",
    "bank_sm2_public": "bank_sm2.pub.pem",
    "bank_certificate": "bank_cert.pem",
    "bank_previous_certificate": "bank_cert.previous.pem",
    "bank_ca": "bank_ca.pem",
    "bank_ssh_host_key": "bank_ssh_host_key.pub",
    "ssh_client_key": "gateway_ssh",
    "ssh_client_public": "gateway_ssh.pub",
}
IMPORT_KINDS = {
    "certificate": FILE_NAMES["bank_certificate"],
    "ca": FILE_NAMES["bank_ca"],
    "sm2-public": FILE_NAMES["bank_sm2_public"],
    "ssh-host-key": FILE_NAMES["bank_ssh_host_key"],
}


# --- generate ------------------------------------------------------------------------

_SUBJECT_ATTRS = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
}


def parse_subject(text: str) -> x509.Name:
    """ "CN=...,O=..." (RFC 4514 order as written; '\\,' for a comma in a value) -> x509.Name."""
    parts = [p.replace("\\,", ",").strip() for p in re.split(r"(?<!\\),", text) if p.strip()]
    attrs = []
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().upper()
        if not sep or not value.strip():
            raise KeystoreError(f"--subject: {part!r} is not KEY=VALUE")
        if key not in _SUBJECT_ATTRS:
            raise KeystoreError(f"--subject: unknown attribute {key!r} (known: {', '.join(_SUBJECT_ATTRS)})")
        if key == "C" and not re.fullmatch(r"[A-Z]{2}", value.strip()):
            raise KeystoreError(f"--subject: C must be a two-letter country code, got {value!r}")
        attrs.append(x509.NameAttribute(_SUBJECT_ATTRS[key], value.strip()))
    if not attrs:
        raise KeystoreError("--subject: empty")
    # RFC 4514 writes the most specific RDN first; the DER sequence starts at the root (C, O, ... CN).
    return x509.Name(list(reversed(attrs)))


def _public_pem(key: PrivateKey) -> bytes:
    if isinstance(key, SM2PrivateKey):
        return keyfile.dump_sm2_public_key(key.public_key)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(bank: str, directory: str | os.PathLike, kind: str, passphrase: Passphrase, *,
             now: dt.datetime, subject: str | None = None, days: int = 365, csr: bool = False,
             self_signed: bool = False, rsa_bits: int = DEFAULT_RSA_BITS,
             iterations: int = keyfile.PBKDF2_ITERATIONS) -> list[tuple[str, str]]:
    """Our new key pair for *bank* in *directory*: (path, what it is) for every file written.

    The private key is encrypted under *passphrase* and written 0600; the
    public key (and for RSA a CSR or a self-signed certificate) 0644. Nothing
    is written if any target file already exists.
    """
    d = Path(directory)
    if kind == "sm2":
        if csr or self_signed:
            raise KeystoreError("--csr and --self-signed are for --kind rsa: SM2 keys are exchanged as "
                                "public keys (gateway_sm2.pub.pem)")
        key: PrivateKey = generate_keypair()
        names = {"key": FILE_NAMES["our_sm2_key"], "pub": FILE_NAMES["our_sm2_public"]}
    elif kind == "rsa":
        if csr and self_signed:
            raise KeystoreError("choose --csr or --self-signed, not both")
        if rsa_bits < MIN_RSA_BITS:
            raise KeystoreError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        names = {"key": FILE_NAMES["our_rsa_key"], "pub": FILE_NAMES["our_rsa_public"]}
        if csr:
            names["csr"] = FILE_NAMES["our_csr"]
        if self_signed:
            names["cert"] = FILE_NAMES["our_certificate"]
    else:
        raise KeystoreError(f"--kind must be sm2 or rsa, got {kind!r}")
    if days <= 0:
        raise KeystoreError("--days must be greater than 0")
    existing = [str(d / n) for n in names.values() if (d / n).exists()]
    if existing:
        raise KeystoreError(f"{', '.join(existing)}: already exists; refusing to overwrite key files "
                            f"(move them away first)")
    name = parse_subject(subject or f"CN=gateway-{bank}")
    files: list[tuple[str, bytes, int, str]] = [
        (names["key"], dump_private_key(key, passphrase, iterations=iterations), 0o600,
         f"私钥 {_describe(key)} private key, encrypted (PBES2 AES-256-CBC), mode 0600"),
        (names["pub"], _public_pem(key), 0o644, f"公钥 {_describe(key)} public key, mode 0644"),
    ]
    if isinstance(key, rsa.RSAPrivateKey) and "csr" in names:
        req = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        files.append((names["csr"], req.public_bytes(serialization.Encoding.PEM), 0o644,
                      f"证书请求 certificate signing request for {name.rfc4514_string()}, give it to the bank's CA"))
    if isinstance(key, rsa.RSAPrivateKey) and "cert" in names:
        cert = _self_signed(key, name, _utc(now), days)
        files.append((names["cert"], cert.public_bytes(serialization.Encoding.PEM), 0o644,
                      f"证书 self-signed certificate {name.rfc4514_string()}, 到期 not after "
                      f"{cert.not_valid_after_utc.date()}, SHA-256 {fingerprint(cert)}"))
    d.mkdir(mode=0o750, parents=True, exist_ok=True)
    written: list[tuple[str, str]] = []
    try:
        for fname, data, mode, what in files:
            with _as_keystore_error():
                keyfile.write_new_file(d / fname, data, mode)
            written.append((str(d / fname), what))
    except BaseException:
        for path, _ in written:   # all or nothing: never leave half a key set behind
            os.unlink(path)
        raise
    return written


def _self_signed(key: rsa.RSAPrivateKey, name: x509.Name, now: dt.datetime, days: int) -> x509.Certificate:
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))   # tolerate the bank's clock running behind
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


# --- import ------------------------------------------------------------------------

_SSH_KEY_LINE = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) ([A-Za-z0-9+/]+=*)( [^\r\n]*)?")


def _parse_ssh_public(text: str, source: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not _SSH_KEY_LINE.fullmatch(lines[0]):
        raise KeystoreError(f"{source}: expected one OpenSSH public key line "
                            f"('ssh-ed25519 AAAA...', 'ssh-rsa ...' or 'ecdsa-sha2-nistp256 ...')")
    try:
        serialization.load_ssh_public_key(lines[0].encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeystoreError(f"{source}: not a valid OpenSSH public key ({e})") from None
    return lines[0]


def import_file(bank: str, directory: str | os.PathLike, kind: str, source: str | os.PathLike, *,
                now: dt.datetime, warn_days: int = 30) -> tuple[str, list[str]]:
    """Validate a file the bank gave us and copy it into *directory* under its documented name (0644).

    Returns (the path written, lines describing it). A file that does not
    parse, an expired certificate, a CA file that is no CA, or an existing
    target is refused with a KeystoreError naming the file.
    """
    if kind not in IMPORT_KINDS:
        raise KeystoreError(f"--kind must be one of {', '.join(IMPORT_KINDS)}, got {kind!r}")
    src = os.fspath(source)
    with _as_keystore_error():
        data = keyfile.read_public_bytes(src)
    if any(label.endswith("PRIVATE KEY") for label in _pem_labels(data)):
        raise KeystoreError(f"{src}: holds a PRIVATE KEY; the bank never gives us its private key, "
                            f"import only its certificate or public key")
    lines: list[str] = []
    if kind in ("certificate", "ca"):
        certs = _parse_certificates(data, src)
        if kind == "certificate" and len(certs) != 1:
            raise KeystoreError(f"{src}: holds {len(certs)} certificates; import the bank's own certificate "
                                f"here and its CA chain with --kind ca")
        for cert in certs:
            _refuse_expired(cert, src, now)
            if kind == "ca":
                try:
                    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
                except x509.ExtensionNotFound:
                    bc = None
                if bc is None or not bc.ca:
                    raise KeystoreError(f"{src}: {cert.subject.rfc4514_string()} is not a CA certificate "
                                        f"(BasicConstraints CA:TRUE missing)")
            lines += _cert_lines(cert, now)
        for w in expiry_warnings({src: c for c in certs}, now, warn_days):
            lines.append(f"WARN  {w.message}")
        out = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    elif kind == "sm2-public":
        with _as_keystore_error():
            pub = keyfile.load_sm2_public_key(data, source=src)
        out = keyfile.dump_sm2_public_key(pub)
        lines.append(f"公钥 SM2 public key, SHA-256 指纹 fingerprint {public_key_fingerprint(pub)}")
    else:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeystoreError(f"{src}: not an OpenSSH public key line (not ASCII)") from None
        line = _parse_ssh_public(text, src)
        out = (line + "\n").encode()
        key_type, key_b64 = line.split()[:2]
        lines.append(f"SSH host key {key_type}, 指纹 fingerprint {ssh_fingerprint(line)}")
        lines.append(f'pin it in the bank file: [sftp] host_key = "{key_type} {key_b64}"')
    dest = Path(directory) / IMPORT_KINDS[kind]
    if dest.exists():
        hint = (" For a rotation, move it to bank_cert.previous.pem first and set bank_previous_until."
                if kind == "certificate" else "")
        raise KeystoreError(f"{dest}: already exists; refusing to overwrite.{hint}")
    Path(directory).mkdir(mode=0o750, parents=True, exist_ok=True)
    with _as_keystore_error():
        keyfile.write_new_file(dest, out, 0o644)
    return str(dest), lines


def _refuse_expired(cert: x509.Certificate, src: str, now: dt.datetime) -> None:
    if _utc(now) > cert.not_valid_after_utc:
        raise KeystoreError(f"{src}: 证书已过期 certificate {cert.subject.rfc4514_string()} expired on "
                            f"{cert.not_valid_after_utc.date()}; ask the bank for its current one")


def _cert_lines(cert: x509.Certificate, now: dt.datetime) -> list[str]:
    days = (cert.not_valid_after_utc - _utc(now)).days
    return [
        f"证书 certificate  SHA-256 指纹 fingerprint {fingerprint(cert)}",
        f"  subject    {cert.subject.rfc4514_string()}",
        f"  issuer     {cert.issuer.rfc4514_string()}",
        f"  not before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"  not after  {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC (到期 in {days} days)",
    ]


# --- show --------------------------------------------------------------------------

def show(path: str | os.PathLike, *, now: dt.datetime, passphrase: "Passphrase | bytes | None" = None) -> list[str]:
    """Lines describing one key or certificate file; never any private material.

    Raises KeystoreError when the file is unreadable or is no key or certificate.
    """
    p = os.fspath(path)
    with _as_keystore_error():
        data = keyfile.read_public_bytes(p)
    labels = _pem_labels(data)
    head = f"{p}:"
    if any(label.endswith("PRIVATE KEY") for label in labels):
        mode = _mode_of(p)
        mode_note = (f"mode {mode:04o}" if not mode & 0o077 else
                     f"mode {mode:04o} TOO OPEN: the daemon refuses it; chmod 600 {p}")
        encrypted = ("ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data
                     or ("OPENSSH PRIVATE KEY" in labels and _openssh_encrypted(data)))
        if encrypted and passphrase is None:
            return [f"{head} 私钥 private key, encrypted, {mode_note}",
                    "  (give --passphrase-file or --passphrase-env to show its public key fingerprint)"]
        loaded = _parse_private(data, _pw(passphrase), p)
        how = f"encrypted ({loaded.encryption})" if loaded.encryption else "NOT encrypted at rest (私钥未加密)"
        return [f"{head} 私钥 {loaded.kind} private key, {how}, {mode_note}",
                f"  public key SHA-256 指纹 fingerprint {public_key_fingerprint(loaded.key)}"]
    if "CERTIFICATE" in labels or (not labels and data[:1] == b"\x30"):
        certs = _parse_certificates(data, p)
        out = [f"{head} {len(certs)} 证书 certificate(s)" if len(certs) > 1 else head]
        for cert in certs:
            out += ["  " + ln for ln in _cert_lines(cert, now)]
            for w in expiry_warnings({p: cert}, now):
                out.append(f"  WARN {w.message}")
        return out
    if "CERTIFICATE REQUEST" in labels:
        try:
            req = x509.load_pem_x509_csr(data)
        except ValueError as e:
            raise KeystoreError(f"{p}: not a valid certificate request ({e})") from None
        return [f"{head} 证书请求 certificate signing request, signature "
                f"{'valid' if req.is_signature_valid else 'INVALID'}",
                f"  subject    {req.subject.rfc4514_string()}",
                f"  public key {_describe(req.public_key())} SHA-256 指纹 fingerprint {public_key_fingerprint(req)}"]
    if labels == ["PUBLIC KEY"]:
        try:
            pub: object = keyfile.load_sm2_public_key(data, source=p)
        except KeyFileError:
            try:
                pub = serialization.load_pem_public_key(data)
            except (ValueError, UnsupportedAlgorithm) as e:
                raise KeystoreError(f"{p}: not a valid public key ({e})") from None
        return [f"{head} 公钥 {_describe(pub)} public key, SHA-256 指纹 fingerprint {public_key_fingerprint(pub)}"]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and _SSH_KEY_LINE.match(text.strip()):
        line = _parse_ssh_public(text, p)
        return [f"{head} SSH public key {line.split()[0]}, 指纹 fingerprint {ssh_fingerprint(line)}"]
    raise KeystoreError(f"{p}: not a key or certificate the gateway knows (PEM blocks: {labels or 'none'})")


# --- check -------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One line of `gatewayctl keys check`: level ok, warn, error or skip; the file it is about."""

    level: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():5} {self.path}: {self.message}"


class _Checker:
    def __init__(self, now: dt.datetime, warn_days: int) -> None:
        self.now, self.warn_days = now, warn_days
        self.findings: list[Finding] = []

    def add(self, level: str, path: str, message: str) -> None:
        self.findings.append(Finding(level, path, message))

    def private(self, path: str, passphrase: Passphrase | None, expect: str) -> object | None:
        if not os.path.exists(path):
            self.add("error", path, f"私钥 {expect} private key file does not exist")
            return None
        try:
            loaded = _read_private(path, passphrase)
        except KeystoreError as e:
            self.add("error", path, f"私钥 {str(e).removeprefix(path + ': ')}")
            return None
        if not loaded.kind.startswith(expect):
            self.add("error", path, f"私钥 expected an {expect} private key, found {loaded.kind}")
            return None
        fp = public_key_fingerprint(loaded.key)
        if loaded.encryption is None:
            self.add("warn", path, f"私钥未加密 {loaded.kind} private key is NOT encrypted at rest "
                                   f"(mode {_mode_of(path):04o}); public key SHA-256 {fp}")
        elif loaded.iterations is not None and loaded.iterations < 100_000:
            self.add("warn", path, f"私钥 {loaded.kind} private key opens, but its encryption is weak "
                                   f"({loaded.encryption}); re-encrypt with `openssl pkcs8 -topk8 -v2 aes-256-cbc "
                                   f"-iter {keyfile.PBKDF2_ITERATIONS}`")
        else:
            self.add("ok", path, f"私钥 {loaded.kind} private key, mode {_mode_of(path):04o}, opens with the "
                                 f"passphrase ({loaded.encryption}); public key SHA-256 {fp}")
        return loaded.key

    def public_sm2(self, path: str) -> None:
        if not os.path.exists(path):
            self.add("error", path, "公钥 SM2 public key file does not exist")
            return
        try:
            pub = keyfile.read_public_key_file(path)
        except KeyFileError as e:
            self.add("error", path, f"公钥 {str(e).removeprefix(path + ': ')}")
            return
        self.add("ok", path, f"公钥 SM2 public key, SHA-256 {public_key_fingerprint(pub)}")

    def certificates(self, path: str, what: str) -> list[x509.Certificate]:
        if not os.path.exists(path):
            self.add("error", path, f"证书 {what} file does not exist")
            return []
        try:
            certs = load_certificates(path)
        except KeystoreError as e:
            self.add("error", path, f"证书 {str(e).removeprefix(path + ': ')}")
            return []
        warns = expiry_warnings({path: c for c in certs}, self.now, self.warn_days)
        for w in warns:
            self.add("error" if w.expired else "warn", path, w.message.removeprefix(path + ": "))
        if not warns:
            ends = min(c.not_valid_after_utc for c in certs)
            self.add("ok", path, f"证书 {what}: {certs[0].subject.rfc4514_string()}, 到期 not after "
                                 f"{ends.date()} ({(ends - _utc(self.now)).days} days), SHA-256 {fingerprint(certs[0])}")
        return certs

    def ssh_client(self, path: str, passphrase: Passphrase | None) -> None:
        if not os.path.exists(path):
            self.add("error", path, "SSH client key file does not exist")
            return
        try:
            loaded = _read_private(path, passphrase)
        except KeystoreError as e:
            self.add("error", path, f"SSH 私钥 {str(e).removeprefix(path + ': ')}")
            return
        self.add("ok", path, f"SSH 私钥 {loaded.kind} client key, mode {_mode_of(path):04o}, "
                             f"public key SHA-256 {public_key_fingerprint(loaded.key)}")

    def ssh_host_key(self, where: str, value: str) -> None:
        if value.startswith("SHA256:"):
            self.add("ok", where, f"SSH host key pinned by fingerprint {value}")
            return
        try:
            line = _parse_ssh_public(value, where)
        except KeystoreError as e:
            self.add("error", where, str(e).removeprefix(where + ": "))
            return
        self.add("ok", where, f"SSH host key {line.split()[0]} pinned, 指纹 fingerprint {ssh_fingerprint(line)}")

    def key_matches_certificate(self, key: object, cert: x509.Certificate, path: str) -> None:
        if key is None:
            return
        if public_key_fingerprint(key) != public_key_fingerprint(cert):
            self.add("error", path, "证书 our certificate does not belong to our RSA private key "
                                    "(their public keys differ)")


def _date(value: object, where: str) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise KeystoreError(f"{where}: must be a date YYYY-MM-DD, got {value!r}") from None


def check_config(config_path: str | os.PathLike, *, now: dt.datetime, warn_days: int = 30,
                 environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Check every key file the daemon's configuration names, bank by bank.

    Reads the TOML files directly (not through gateway.config) so it can run
    on a configuration the daemon would refuse, and report every key problem.
    """
    cfg = Path(config_path).resolve()
    c = _Checker(now, warn_days)
    try:
        top = tomllib.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        c.add("error", str(cfg), f"cannot read the configuration: {e}")
        return c.findings
    bank_dir = (top.get("banks") or {}).get("dir")
    if not isinstance(bank_dir, str):
        c.add("error", str(cfg), "banks.dir is missing: no bank files to check")
        return c.findings
    bdir = (cfg.parent / bank_dir).resolve()
    files = sorted(bdir.glob("*.toml")) if bdir.is_dir() else []
    if not files:
        c.add("error", str(bdir), "no bank files (*.toml)")
    for f in files:
        _check_bank(c, f, environ)
    return c.findings


def _check_bank(c: _Checker, f: Path, environ: Mapping[str, str] | None) -> None:
    try:
        data = tomllib.loads(f.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        c.add("error", str(f), f"cannot read the bank file: {e}")
        return
    keys = data.get("keys") or {}
    base = f.parent

    def path(key: str) -> str | None:
        v = keys.get(key)
        return str((base / v).resolve()) if isinstance(v, str) and v else None

    try:
        pw = Passphrase.from_config(keys, base, where=f"{f}: keys", environ=environ)
    except KeystoreError as e:
        c.add("error", str(f), f"keys.passphrase_file/passphrase_env: {e}")
        pw = None
    if p := path("our_private"):
        c.private(p, pw, "SM2")
    if p := path("bank_public"):
        c.public_sm2(p)
    rsa_key = None
    if p := path("our_rsa_key"):
        rsa_key = c.private(p, pw, "RSA")
    if p := path("our_certificate"):
        certs = c.certificates(p, "our certificate")
        if certs:
            c.key_matches_certificate(rsa_key, certs[0], p)
    if p := path("bank_certificate"):
        c.certificates(p, "bank certificate")
    prev, until = path("bank_previous_certificate"), keys.get("bank_previous_until")
    if (prev is None) != (until is None):
        c.add("error", str(f), "keys.bank_previous_certificate and keys.bank_previous_until go together")
    elif prev and until is not None:
        try:
            end = _date(until, f"{f}: keys.bank_previous_until")
        except KeystoreError as e:
            c.add("error", str(f), str(e).removeprefix(f"{f}: "))
        else:
            if c.now.astimezone(CST).date() > end:
                c.add("warn", prev, f"证书 the previous bank certificate's window ended on {end}; "
                                    f"remove bank_previous_certificate and bank_previous_until")
            else:
                c.certificates(prev, f"previous bank certificate (accepted inbound until {end})")
    if p := path("bank_ca"):
        c.certificates(p, "bank CA")
    sftp = data.get("sftp") or {}
    if isinstance(sftp.get("client_key"), str):
        c.ssh_client(str((base / sftp["client_key"]).resolve()), pw)
    if isinstance(sftp.get("host_key"), str):
        c.ssh_host_key(f"{f}: sftp.host_key", sftp["host_key"])
    if not any(k in keys for k in ("our_private", "our_rsa_key")):
        c.add("error", str(f), "keys: names no private key of ours (our_private or our_rsa_key)")


def check_dir(directory: str | os.PathLike, *, now: dt.datetime, passphrase: Passphrase | None = None,
              warn_days: int = 30) -> list[Finding]:
    """Check the documented files present in one bank's key folder (keys/<bank_id>/)."""
    d = Path(directory)
    c = _Checker(now, warn_days)
    if not d.is_dir():
        c.add("error", str(d), "is not a directory")
        return c.findings
    present = sorted(p.name for p in d.iterdir() if p.is_file())
    known = set(FILE_NAMES.values())
    if not present or not set(present) & known:
        c.add("error", str(d), f"holds none of the documented key files ({', '.join(sorted(known))})")
    cert_names = {FILE_NAMES[k]: k.replace("_", " ") for k in
                  ("our_certificate", "bank_certificate", "bank_previous_certificate", "bank_ca")}
    rsa_key = None
    if FILE_NAMES["our_rsa_key"] in present:   # first, so our certificate can be matched against it
        rsa_key = c.private(str(d / FILE_NAMES["our_rsa_key"]), passphrase, "RSA")
    for name in present:
        p = str(d / name)
        if name == FILE_NAMES["our_sm2_key"]:
            c.private(p, passphrase, "SM2")
        elif name == FILE_NAMES["our_rsa_key"]:
            continue
        elif name == FILE_NAMES["ssh_client_key"]:
            c.ssh_client(p, passphrase)
        elif name in (FILE_NAMES["our_sm2_public"], FILE_NAMES["bank_sm2_public"]):
            c.public_sm2(p)
        elif name == FILE_NAMES["bank_ssh_host_key"]:
            try:
                c.ssh_host_key(p, Path(p).read_text(encoding="ascii"))
            except (OSError, UnicodeDecodeError) as e:
                c.add("error", p, f"cannot read: {e}")
        elif name in cert_names:
            certs = c.certificates(p, cert_names[name])
            if name == FILE_NAMES["our_certificate"] and certs:
                c.key_matches_certificate(rsa_key, certs[0], p)
        elif name in known:
            try:
                c.add("ok", p, show(p, now=c.now)[0].removeprefix(p + ": "))
            except KeystoreError as e:
                c.add("error", p, str(e).removeprefix(p + ": "))
        else:
            c.add("skip", p, "not a documented key file name; not checked")
    return c.findings
