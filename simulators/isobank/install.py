"""An `iso20022` bank beside the cnbank one in a loopback installation (demo and end-to-end tests).

Generates a small PKI per run (never committed): a CA that issues the bank's
HTTPS server certificate and our TLS client certificate, the bank's XMLDSig
signing key and certificate, and our RSA key (encrypted PKCS#8, passphrase in
a 0600 file) with its certificate, which serves both for TLS and XMLDSig.
Writes the bank file `conf/banks/<bank_id>.toml` and starts the simulator.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISO_BANK_ID = "isobank-demo"
ISO_HOLDING = "6217000010001234567"
SERVER_NAME = "isobank.localtest"
PASSPHRASE = "demo-passphrase-不是生产用"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool = False, dns: str | None = None,
          days: int = 365, now: datetime.datetime | None = None) -> x509.Certificate:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _plain_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


@dataclass
class IsoPki:
    dir: Path
    ca_pem: bytes
    server_key_pem: bytes
    server_cert_pem: bytes
    bank_key_pem: bytes
    bank_cert_pem: bytes
    gateway_cert_pem: bytes


def make_pki(keys_dir: Path) -> IsoPki:
    """Keys and certificates for both sides under keys_dir/iso (ours encrypted, 0600)."""
    d = Path(keys_dir) / "iso"
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("Demo Bank CA", ca_key, "Demo Bank CA", ca_key, ca=True)
    server_key = _key()
    server = _cert(SERVER_NAME, server_key, "Demo Bank CA", ca_key, dns=SERVER_NAME)
    bank_key = _key()
    bank = _cert("Demo ISO Bank signing", bank_key, "Demo Bank CA", ca_key)
    gw_key = _key()
    gw = _cert("GW3301 subsidy gateway", gw_key, "Demo Bank CA", ca_key, dns="gateway.localtest")
    _write(d / "passphrase", (PASSPHRASE + "\n").encode(), 0o600)
    from gateway.keystore import dump_private_key   # as `gatewayctl keys generate` writes it
    _write(d / "gateway_rsa.pem", dump_private_key(gw_key, PASSPHRASE.encode()), 0o600)
    _write(d / "gateway_cert.pem", _pem(gw), 0o644)
    _write(d / "bank_cert.pem", _pem(bank), 0o644)
    _write(d / "bank_ca.pem", _pem(ca), 0o644)
    return IsoPki(d, _pem(ca), _plain_key(server_key), _pem(server), _plain_key(bank_key), _pem(bank), _pem(gw))


def write_bank_file(banks_dir: Path, pki: IsoPki, port: int, *, bank_id: str = ISO_BANK_ID,
                    status_poll_s: float = 0.3, return_poll_s: float = 3600,
                    sftp: tuple[str, str] | None = None, iso_extra: str = "", transport_extra: str = "",
                    extra_tables: str = "") -> Path:
    """The bank file; over HTTPS on *port*, or with sftp=(client key path, host key line) over
    SFTP on *port*. *iso_extra* / *transport_extra* are more lines for the [iso20022] and the
    [https]/[sftp] tables, *extra_tables* whole tables at the end (tests)."""
    keys = os.path.relpath(pki.dir, banks_dir)
    path = Path(banks_dir) / f"{bank_id}.toml"
    if sftp is not None:
        transport = f"""[sftp]
host = "127.0.0.1"
port = {port}
username = "gateway"
client_key = "{sftp[0]}"
host_key = "{sftp[1]}"
in_dir = "/in"
out_dir = "/out"
{transport_extra}"""
    else:
        transport = f"""[https]
base_url = "https://127.0.0.1:{port}"
server_name = "{SERVER_NAME}"          # the name the bank's certificate must carry
timeout_s = 30
{transport_extra}"""
    path.write_text(f"""\
# An agent bank speaking ISO 20022 (shared/spec/iso20022.md) over HTTPS with mutual TLS, or SFTP.
bank_id = "{bank_id}"
name = "示范ISO代发银行"
dialect = "iso20022"
payer_acct = "{ISO_HOLDING}"
payer_name = "市财政局惠民惠农补贴专户（ISO）"

[iso20022]
initiating_party = "市财政局"
debtor_agent_id = "ISOBANK01"
signature = "xmldsig"
refund_account = "6217000019990001"
refund_account_name = "市财政局国库集中支付零余额账户"
status_poll_s = {status_poll_s}
return_poll_s = {return_poll_s}
{iso_extra}
transport = "{"sftp" if sftp else "https"}"

{transport}
[keys]
our_rsa_key = "{keys}/gateway_rsa.pem"
our_certificate = "{keys}/gateway_cert.pem"
bank_certificate = "{keys}/bank_cert.pem"
bank_ca = "{keys}/bank_ca.pem"
passphrase_file = "{keys}/passphrase"
{extra_tables}""")
    return path


def start_iso_bank(reactor, pki: IsoPki, *, result_delay_s: float = 0.3, **limits):
    """The simulator listening on 127.0.0.1 (port 0); (simulator, port)."""
    from simulators.isobank.bank import IsoBankSimulator
    sim = IsoBankSimulator(reactor, bank_key_pem=pki.bank_key_pem, bank_cert_pem=pki.bank_cert_pem,
                           gateway_certs=[pki.gateway_cert_pem], holding_account=ISO_HOLDING,
                           holding_name="市财政局惠民惠农补贴专户（ISO）", result_delay_s=result_delay_s,
                           **limits)
    port = sim.listen_https(0, server_key_pem=pki.server_key_pem, server_cert_pem=pki.server_cert_pem,
                            ca_pem=pki.ca_pem)
    return sim, port.getHost().port
