"""Test certificates made on the fly with cryptography's x509 builder: CAs, TLS server and
client certificates, and self-signed RSA certificates for XMLDSig. Nothing here is ever
written to the repository; keys live in memory for one test session.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
_END = datetime.datetime(2036, 1, 1, tzinfo=datetime.timezone.utc)


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, both PEM; `key` is the cryptography object."""

    key_pem: bytes
    cert_pem: bytes
    key: object
    cert: x509.Certificate

    @property
    def subject(self) -> x509.Name:
        return self.cert.subject


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Subsidy gateway tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _issued(key, cert: x509.Certificate) -> Issued:
    return Issued(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM), key, cert)


def make_ca(common_name: str = "Test Root CA", *, kind: str = "ec") -> Issued:
    """A self-signed CA certificate that can sign end-entity certificates."""
    key = _new_key(kind)
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_EPOCH).not_valid_after(_END)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _issued(key, cert)


def issue(ca: Issued, common_name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
          server: bool = False, client: bool = False, kind: str = "ec") -> Issued:
    """An end-entity certificate signed by *ca*, with the given subject alternative names
    and extended key usages (TLS server and/or client)."""
    key = _new_key(kind)
    b = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(_EPOCH).not_valid_after(_END)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                        critical=False))
    alt = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if alt:
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return _issued(key, b.sign(ca.key, hashes.SHA256()))


def self_signed_rsa(common_name: str) -> Issued:
    """A self-signed RSA-2048 certificate, as a bank or the gateway pins for XMLDSig."""
    key = _new_key("rsa")
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_EPOCH).not_valid_after(_END)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return _issued(key, cert)


@dataclass(frozen=True)
class Pki:
    """Everything a loopback mutual-TLS test needs: the bank's CA, a server certificate for
    `bank.test` and 127.0.0.1, the gateway's client certificate from the same CA, and the
    two XMLDSig signing certificates."""

    ca: Issued
    server: Issued
    client: Issued
    bank_sig: Issued
    gateway_sig: Issued


def make_pki() -> Pki:
    ca = make_ca("Test Bank CA")
    return Pki(ca=ca,
               server=issue(ca, "bank.test", dns=("bank.test",), ips=("127.0.0.1",), server=True),
               client=issue(ca, "gateway.test", dns=("gateway.test",), client=True),
               bank_sig=self_signed_rsa("Test bank XMLDSig"),
               gateway_sig=self_signed_rsa("Test gateway XMLDSig"))
