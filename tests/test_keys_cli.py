"""`gatewayctl keys generate|show|import|check`, run as the operator runs it: a subprocess on a tmp dir.

Every key and certificate is generated in the test; the openssl command line
checks what `generate` wrote. Exit codes: 0 ok, 1 warnings (keys check), 2 errors.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from protocols import keyfile, sm

UTC = dt.timezone.utc


def gatewayctl(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A working directory with a passphrase file (0600) and an empty keys/."""
    (tmp_path / "keys").mkdir()
    p = tmp_path / "pass"
    p.write_text("s3cret passphrase\n")
    p.chmod(0o600)
    return tmp_path


def cert_pem(days_left: float, *, cn: str = "bank.example", ca: bool = False, expired: bool = False) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    end = now + dt.timedelta(days=days_left)
    start = end - dt.timedelta(days=400) if expired else now - dt.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# --- generate ------------------------------------------------------------------------------

def test_generate_sm2_writes_encrypted_0600_key_openssl_reads(site):
    """`keys generate --kind sm2` writes an encrypted 0600 private key and a 0644 public key that
    match (openssl decrypts with the same passphrase file); a second run refuses to overwrite."""
    r = gatewayctl(site, "keys", "generate", "--bank", "b1", "--dir", "keys/b1", "--kind", "sm2",
                   "--passphrase-file", "pass")
    assert r.returncode == 0, r.stderr
    priv, pub = site / "keys/b1/gateway_sm2.pem", site / "keys/b1/gateway_sm2.pub.pem"
    assert mode(priv) == 0o600 and mode(pub) == 0o644
    assert priv.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "私钥" in r.stdout and str(priv.relative_to(site)) in r.stdout
    if shutil.which("openssl"):
        out = subprocess.run(["openssl", "pkey", "-in", priv, "-passin", f"file:{site / 'pass'}", "-pubout"],
                             capture_output=True, check=True).stdout
        assert keyfile.load_sm2_public_key(out) == keyfile.read_public_key_file(pub)
    before = priv.read_bytes()
    again = gatewayctl(site, "keys", "generate", "--bank", "b1", "--dir", "keys/b1", "--kind", "sm2",
                       "--passphrase-file", "pass")
    assert again.returncode == 2 and "already exists; refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr and priv.read_bytes() == before


def test_generate_refuses_without_passphrase_or_with_open_passphrase_file(site):
    """No passphrase source, or a group-readable passphrase file, is refused (exit 2) and writes nothing."""
    r = gatewayctl(site, "keys", "generate", "--bank", "b1", "--dir", "keys/b1", "--kind", "sm2")
    assert r.returncode == 2 and "--passphrase-file" in r.stderr
    (site / "pass").chmod(0o640)
    r = gatewayctl(site, "keys", "generate", "--bank", "b1", "--dir", "keys/b1", "--kind", "rsa",
                   "--passphrase-file", "pass")
    assert r.returncode == 2 and "mode 0640" in r.stderr and "pass" in r.stderr
    assert not (site / "keys/b1").exists() or not any((site / "keys/b1").iterdir())


def test_generate_rsa_csr_and_self_signed(site):
    """RSA with --csr writes a CSR whose signature and subject are right; with --self-signed (passphrase
    from the environment) a certificate valid for --days that belongs to the key."""
    r = gatewayctl(site, "keys", "generate", "--bank", "b1", "--dir", "keys/b1", "--kind", "rsa", "--bits", "2048",
                   "--passphrase-file", "pass", "--csr", "--subject", "CN=gateway-b1,O=某市财政局,C=CN")
    assert r.returncode == 0, r.stderr
    csr = x509.load_pem_x509_csr((site / "keys/b1/gateway_rsa.csr.pem").read_bytes())
    assert csr.is_signature_valid and csr.subject.rfc4514_string() == "CN=gateway-b1,O=某市财政局,C=CN"
    assert mode(site / "keys/b1/gateway_rsa.pem") == 0o600

    r = gatewayctl(site, "keys", "generate", "--bank", "b2", "--dir", "keys/b2", "--kind", "rsa", "--bits", "2048",
                   "--passphrase-env", "GW_KEY_PASS", "--self-signed", "--days", "90", env={"GW_KEY_PASS": "pw"})
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificate((site / "keys/b2/gateway_cert.pem").read_bytes())
    key = serialization.load_pem_private_key((site / "keys/b2/gateway_rsa.pem").read_bytes(), b"pw")
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.subject.rfc4514_string() == "CN=gateway-b2"
    assert 89 <= (cert.not_valid_after_utc - dt.datetime.now(UTC)).days <= 90

    r = gatewayctl(site, "keys", "generate", "--bank", "b3", "--dir", "keys/b3", "--kind", "sm2",
                   "--passphrase-file", "pass", "--csr")
    assert r.returncode == 2 and "--kind rsa" in r.stderr


# --- show --------------------------------------------------------------------------------------

def test_show_prints_kind_fingerprint_and_dates_never_private_material(site):
    """`keys show` describes a certificate (subject, issuer, dates, SHA-256 fingerprint), public and
    private keys (with the passphrase, the public fingerprint) and prints nothing of the secret."""
    key = sm.generate_keypair()
    priv = site / "k.pem"
    keyfile.write_private_key_file(priv, key, passphrase=b"s3cret passphrase")
    plain = site / "plain.pem"
    keyfile.write_private_key_file(plain, key)
    keyfile.write_public_key_file(site / "k.pub.pem", key.public_key)
    (site / "c.pem").write_bytes(cert_pem(100))
    r = gatewayctl(site, "keys", "show", "--passphrase-file", "pass", "c.pem", "k.pem", "plain.pem", "k.pub.pem")
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificate((site / "c.pem").read_bytes())
    fp = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    assert fp in r.stdout and "CN=bank.example" in r.stdout and "not after" in r.stdout and "到期" in r.stdout
    assert r.stdout.count("私钥 SM2 private key") == 2 and "NOT encrypted at rest" in r.stdout
    pub_fp = [ln for ln in r.stdout.splitlines() if "k.pub.pem" in ln][0].rsplit(" ", 1)[1]
    assert r.stdout.count(pub_fp) == 3   # the public key and both private keys' public halves
    for secret in (key.secret.hex(), key.secret.hex().upper(), "PRIVATE KEY", "s3cret"):
        assert secret not in r.stdout + r.stderr
    junk = site / "junk.txt"
    junk.write_text("hello\n")
    r = gatewayctl(site, "keys", "show", "junk.txt")
    assert r.returncode == 2 and "junk.txt: not a key or certificate" in r.stderr


# --- import --------------------------------------------------------------------------------------

def test_import_certificate_ca_sm2_public_and_ssh_host_key(site):
    """Each kind is validated and copied under its documented name at 0644 with its fingerprint
    printed; the SSH host key also prints the [sftp] host_key line to pin."""
    (site / "from_bank").mkdir()
    (site / "from_bank/cert.pem").write_bytes(cert_pem(200))
    (site / "from_bank/ca.pem").write_bytes(cert_pem(2000, cn="Bank Root CA", ca=True))
    keyfile.write_public_key_file(site / "from_bank/sm2.pub", sm.generate_keypair().public_key)
    host = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (site / "from_bank/host.pub").write_bytes(host + b" root@bank\n")
    for kind, src, name in (("certificate", "cert.pem", "bank_cert.pem"), ("ca", "ca.pem", "bank_ca.pem"),
                            ("sm2-public", "sm2.pub", "bank_sm2.pub.pem"),
                            ("ssh-host-key", "host.pub", "bank_ssh_host_key.pub")):
        r = gatewayctl(site, "keys", "import", "--bank", "b1", "--dir", "keys/b1", "--kind", kind, f"from_bank/{src}")
        assert r.returncode == 0, r.stderr
        assert mode(site / "keys/b1" / name) == 0o644 and "指纹 fingerprint" in r.stdout
    assert f'host_key = "{host.decode()}"' in r.stdout
    if shutil.which("ssh-keygen"):
        fp = subprocess.run(["ssh-keygen", "-l", "-f", site / "from_bank/host.pub"], capture_output=True,
                            text=True, check=True).stdout.split()[1]
        assert fp in r.stdout


def test_import_refuses_garbage_expired_non_ca_private_and_overwrite(site):
    """Garbage, an expired certificate, a non-CA as --kind ca, a private key, and an existing target
    are each refused with exit 2 and a message naming the file; nothing is written."""
    d = site / "in"
    d.mkdir()
    (d / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    (d / "expired.pem").write_bytes(cert_pem(-3, expired=True))
    (d / "leaf.pem").write_bytes(cert_pem(100))
    (d / "host.pub").write_text("ssh-ed25519 AAAAnotakey\n")
    keyfile.write_private_key_file(d / "priv.pem", sm.generate_keypair())
    cases = [("certificate", "garbage.pem", "garbage.pem: not a valid X.509 certificate"),
             ("certificate", "expired.pem", "expired.pem: 证书已过期 certificate CN=bank.example expired"),
             ("ca", "leaf.pem", "leaf.pem: CN=bank.example is not a CA certificate"),
             ("sm2-public", "priv.pem", "priv.pem: holds a PRIVATE KEY"),
             ("sm2-public", "leaf.pem", "leaf.pem: holds a CERTIFICATE"),
             ("ssh-host-key", "host.pub", "host.pub: not a valid OpenSSH public key")]
    for kind, src, message in cases:
        r = gatewayctl(site, "keys", "import", "--bank", "b1", "--dir", "keys/b1", "--kind", kind, f"in/{src}")
        assert r.returncode == 2 and message in r.stderr, (kind, src, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (site / "keys/b1").exists() or not any((site / "keys/b1").iterdir())
    ok = gatewayctl(site, "keys", "import", "--bank", "b1", "--dir", "keys/b1", "--kind", "certificate", "in/leaf.pem")
    assert ok.returncode == 0
    again = gatewayctl(site, "keys", "import", "--bank", "b1", "--dir", "keys/b1", "--kind", "certificate", "in/leaf.pem")
    assert again.returncode == 2 and "bank_cert.pem: already exists" in again.stderr
    assert "bank_previous_until" in again.stderr


# --- check ------------------------------------------------------------------------------------------

GATEWAY_TOML = """
[database]
url = "sqlite:///gw.db"
[banks]
dir = "banks"
"""

BANK_TOML = """
bank_id = "b1"
[keys]                      # paths relative to conf/banks/
our_private = "../../keys/b1/gateway_sm2.pem"
bank_public = "../../keys/b1/bank_sm2.pub.pem"
our_rsa_key = "../../keys/b1/gateway_rsa.pem"
our_certificate = "../../keys/b1/gateway_cert.pem"
bank_certificate = "../../keys/b1/bank_cert.pem"
bank_ca = "../../keys/b1/bank_ca.pem"
passphrase_file = "../../pass"
[sftp]
host_key = "{host_key}"
"""


@pytest.fixture(scope="module")
def configured_template(tmp_path_factory) -> Path:
    """A site whose conf/banks/b1.toml names a full key set, generated and imported with gatewayctl
    (once per module: each test gets a copy, so RSA generation and the subprocesses run once)."""
    site = tmp_path_factory.mktemp("configured")
    (site / "keys").mkdir()
    (site / "pass").write_text("s3cret passphrase\n")
    (site / "pass").chmod(0o600)
    for kind, extra in (("sm2", []), ("rsa", ["--self-signed", "--days", "365", "--bits", "2048"])):
        r = gatewayctl(site, "keys", "generate", "--bank", "b1", "--dir", "keys/b1", "--kind", kind,
                       "--passphrase-file", "pass", *extra)
        assert r.returncode == 0, r.stderr
    (site / "cert.pem").write_bytes(cert_pem(300))
    (site / "ca.pem").write_bytes(cert_pem(3000, cn="Root", ca=True))
    keyfile.write_public_key_file(site / "bank.pub", sm.generate_keypair().public_key)
    for kind, src in (("certificate", "cert.pem"), ("ca", "ca.pem"), ("sm2-public", "bank.pub")):
        assert gatewayctl(site, "keys", "import", "--bank", "b1", "--dir", "keys/b1", "--kind", kind,
                          src).returncode == 0
    host = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (site / "conf/banks").mkdir(parents=True)
    (site / "conf/gateway.toml").write_text(GATEWAY_TOML)
    (site / "conf/banks/b1.toml").write_text(BANK_TOML.format(host_key=host))
    return site


@pytest.fixture
def configured(configured_template: Path, tmp_path: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(configured_template, site)   # copy2 keeps the 0600 modes
    return site


def test_check_all_good_exits_0(configured):
    """Every configured file exists, private keys are 0600 and open with the passphrase, no certificate
    is near its end: one OK line per file and exit 0."""
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    ok = [ln for ln in r.stdout.splitlines() if ln.startswith("OK")]
    assert len(ok) == 7, r.stdout
    assert "0 error(s), 0 warning(s)" in r.stdout
    assert any("gateway_sm2.pem: 私钥 SM2 private key, mode 0600, opens with the passphrase" in ln for ln in ok)


def test_check_expiring_certificate_warns_exit_1(configured):
    """A bank certificate ending in 10 days is a warning naming the file and 到期; exit code 1."""
    cert = configured / "keys/b1/bank_cert.pem"
    cert.write_bytes(cert_pem(10))
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 1, r.stdout
    warn = [ln for ln in r.stdout.splitlines() if ln.startswith("WARN")]
    assert len(warn) == 1 and str(cert) in warn[0] and "到期" in warn[0] and "expires in" in warn[0]
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml", "--warn-days", "5")
    assert r.returncode == 0


def test_check_errors_exit_2_naming_the_file(configured):
    """A group-readable private key (its mode named), a wrong passphrase, a missing file and an
    expired certificate are errors naming their files; exit code 2."""
    (configured / "keys/b1/gateway_sm2.pem").chmod(0o640)
    (configured / "keys/b1/bank_sm2.pub.pem").unlink()
    (configured / "keys/b1/bank_cert.pem").write_bytes(cert_pem(-1, expired=True))
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 2
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("ERROR")]
    assert any("gateway_sm2.pem" in ln and "mode 0640" in ln for ln in errors), r.stdout
    assert any("bank_sm2.pub.pem" in ln and "does not exist" in ln for ln in errors)
    assert any("bank_cert.pem" in ln and "EXPIRED" in ln for ln in errors)
    (configured / "keys/b1/gateway_sm2.pem").chmod(0o600)
    (configured / "pass").write_text("wrong\n")
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 2
    assert any("gateway_rsa.pem" in ln and "wrong passphrase" in ln for ln in r.stdout.splitlines())


def test_check_a_key_folder(configured):
    """`keys check --dir keys/b1` checks the documented files there with the given passphrase; without
    the passphrase the encrypted keys are errors that say so."""
    r = gatewayctl(configured, "keys", "check", "--dir", "keys/b1", "--passphrase-file", "pass")
    assert r.returncode == 0, r.stdout
    assert "gateway_cert.pem" in r.stdout and "bank_ca.pem" in r.stdout
    r = gatewayctl(configured, "keys", "check", "--dir", "keys/b1")
    assert r.returncode == 2 and "no passphrase was given" in r.stdout


def test_check_previous_bank_certificate_window(configured):
    """A previous bank certificate inside its bank_previous_until window is checked like the current one;
    once the date has passed, check warns to remove it (exit 1); one without the other is an error."""
    shutil.copy(configured / "keys/b1/bank_cert.pem", configured / "keys/b1/bank_cert.previous.pem")
    bank = configured / "conf/banks/b1.toml"
    base = bank.read_text()
    prev = 'bank_previous_certificate = "../../keys/b1/bank_cert.previous.pem"\n'
    bank.write_text(base.replace("[sftp]", f"{prev}bank_previous_until = 2999-12-31\n[sftp]"))
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 0 and "previous bank certificate (accepted inbound until 2999-12-31)" in r.stdout
    bank.write_text(base.replace("[sftp]", f"{prev}bank_previous_until = 2020-01-31\n[sftp]"))
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 1 and "window ended on 2020-01-31" in r.stdout
    bank.write_text(base.replace("[sftp]", f"{prev}[sftp]"))
    r = gatewayctl(configured, "keys", "check", "--config", "conf/gateway.toml")
    assert r.returncode == 2 and "go together" in r.stdout
