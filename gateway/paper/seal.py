"""The gateway's electronic seal (电子签章): detached SM2-with-SM3 signatures of the files it issues.

A signature is the DER SEQUENCE of r and s (what `openssl pkeyutl` writes and
reads), over the file's bytes exactly, under signer ID `[paper] signer_id`
(default 1234567812345678, GB/T 35276). The signer is named by the SHA-256
fingerprint of its SubjectPublicKeyInfo (colon hex, as `gatewayctl keys show`
prints it), which is printed on every sheet. Anyone holding the public key can
check a sheet without the gateway:

    openssl pkeyutl -verify -pubin -inkey seal.pub.pem -rawin -digest sm3 \\
        -pkeyopt distid:1234567812345678 -in SHEET.pdf -sigfile SHEET.pdf.sig

or with the gateway's X.509 certificate (PEM) instead of the bare key:

    openssl pkeyutl -verify -certin -inkey seal.crt -rawin -digest sm3 \\
        -pkeyopt distid:1234567812345678 -in SHEET.pdf -sigfile SHEET.pdf.sig

(openssl 3.0's own default signer ID is empty, hence the -pkeyopt.)
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import keystore
from protocols import keyfile, sm

DEFAULT_SIGNER_ID = "1234567812345678"


def openssl_command(pdf: str, sig: str, pub: str, signer_id: str = DEFAULT_SIGNER_ID, *,
                    certificate: bool = False) -> str:
    """The openssl command line that verifies a detached seal, for the docs and the CLI (-certin
    when `pub` is the gateway's X.509 certificate)."""
    return (f"openssl pkeyutl -verify {'-certin' if certificate else '-pubin'} -inkey {pub} -rawin -digest sm3 "
            f"-pkeyopt distid:{signer_id} -in {pdf} -sigfile {sig}")


@dataclass(frozen=True)
class Seal:
    key: sm.SM2PrivateKey
    signer_id: str = DEFAULT_SIGNER_ID

    @classmethod
    def from_settings(cls, paper) -> "Seal":  # noqa: ANN001  (config.PaperSettings)
        """The seal of `[paper]`: the key opened with its passphrase, refused if others may read it."""
        pw = None
        if paper.passphrase_file:
            pw = keystore.Passphrase.from_file(paper.passphrase_file)
        elif paper.passphrase_env:
            pw = keystore.Passphrase.from_env(paper.passphrase_env)
        key = keystore.load_private_key(paper.seal_key, pw)
        if not isinstance(key, sm.SM2PrivateKey):
            raise keystore.KeystoreError(f"{paper.seal_key}: [paper] seal_key must be an SM2 private key")
        return cls(key, paper.signer_id)

    @property
    def public_key(self) -> sm.SM2PublicKey:
        return self.key.public_key

    @property
    def fingerprint(self) -> str:
        return keystore.public_key_fingerprint(self.key.public_key)

    def public_pem(self) -> bytes:
        return keyfile.dump_sm2_public_key(self.key.public_key)

    def sign(self, data: bytes) -> bytes:
        """DER SM2-with-SM3 signature of data (25-45 ms: keep it off the reactor thread)."""
        return sm.sm2_sign(self.key, data, self.signer_id.encode("ascii"), der=True)


def verify(data: bytes, signature: bytes, public_key: sm.SM2PublicKey,
           signer_id: str = DEFAULT_SIGNER_ID) -> bool:
    """Whether signature (DER, or raw r||s of 64 bytes) seals data under public_key."""
    uid = signer_id.encode("ascii")
    if len(signature) == 64 and sm.sm2_verify(public_key, data, signature, uid):
        return True
    return sm.sm2_verify(public_key, data, signature, uid, der=True)


def load_public(pem: bytes, source: str = "public key") -> sm.SM2PublicKey:
    """An SM2 public key from a SubjectPublicKeyInfo PEM (what `keys generate` writes, seal.pub.pem)
    or from the gateway's X.509 certificate (PEM) that carries it."""
    if b"-----BEGIN CERTIFICATE-----" in pem:
        return keyfile.load_sm2_certificate_public_key(pem, source=source)
    return keyfile.load_sm2_public_key(pem, source=source)


def certificate_lines(pem: bytes, now) -> list[str]:  # noqa: ANN001  (an aware datetime)
    """Subject, issuer and validity of a certificate PEM, for the operator; [] for a bare key."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return []
    from cryptography import x509
    try:
        c = x509.load_pem_x509_certificate(pem)
        subject, issuer = c.subject.rfc4514_string(), c.issuer.rfc4514_string()
        start, end = c.not_valid_before_utc, c.not_valid_after_utc
    except ValueError as e:
        return [f"  (the certificate's names and dates cannot be read: {e})"]
    lines = [f"  certificate {subject}, issued by {issuer}, valid {start:%Y-%m-%d} to {end:%Y-%m-%d} (UTC)",
             "  (its issuer chain is not checked here: openssl verify -CAfile CA.pem CERT)"]
    if not start <= now <= end:
        lines.append(f"  NOTE: the certificate is not valid today ({now:%Y-%m-%d}); the seal verifies "
                     "against its key, check that the sheet was sealed while it was valid")
    return lines


def fingerprint_of(public_key: sm.SM2PublicKey) -> str:
    return keystore.public_key_fingerprint(public_key)
