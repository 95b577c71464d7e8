"""SM2 key files: PEM/DER codecs for exactly the shapes OpenSSL writes, and safe file I/O.

`cryptography` refuses SM2 keys and gmalg reads no key files, so the few
structures the gateway exchanges with banks and operators are decoded here by
a small strict DER reader: PKCS#8 "PRIVATE KEY" (`openssl genpkey -algorithm
SM2`), SEC1 "EC PRIVATE KEY" / "SM2 PRIVATE KEY" (`openssl ec`) and the
SubjectPublicKeyInfo "PUBLIC KEY" (`openssl pkey -pubout`), all on the SM2
curve (OID 1.2.156.10197.1.301), and the encrypted PKCS#8 "ENCRYPTED PRIVATE
KEY" that `openssl genpkey -aes-256-cbc` writes (PBES2: PBKDF2 with
HMAC-SHA256 or HMAC-SHA1, AES-128/192/256-CBC, decrypted with `cryptography`
primitives; the plaintext inside goes to the same strict parser). Anything
else (another curve, explicit parameters, trailing bytes, non-minimal
encodings, legacy "Proc-Type: ENCRYPTED" PEM, scrypt) is refused with a
KeyFileError that says what is wrong. The only I/O is in the explicit file
helpers at the bottom, which also refuse a private key file that group or
others can read or write.
"""

from __future__ import annotations

import binascii
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Union

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from protocols.sm import CryptoError, SM2PrivateKey, SM2PublicKey

__all__ = [
    "KeyFileError",
    "PBKDF2_ITERATIONS",
    "PrivateKeyInfo",
    "load_private_key_info",
    "encrypt_private_key_info",
    "sm2_private_key_from_pkcs8",
    "load_sm2_private_key",
    "dump_sm2_private_key",
    "load_sm2_public_key",
    "dump_sm2_public_key",
    "read_private_bytes",
    "read_private_key_file",
    "read_public_bytes",
    "read_public_key_file",
    "write_private_key_file",
    "write_public_key_file",
    "write_new_file",
]

PathLike = Union[str, "os.PathLike[str]"]

# A PEM SM2 key is a few hundred bytes; anything far bigger is the wrong file.
MAX_KEY_FILE_SIZE = 64 * 1024


class KeyFileError(Exception):
    """A key file or key encoding is unusable; the message names what is wrong."""


# --- object identifiers ------------------------------------------------------

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_SM2_CURVE = "1.2.156.10197.1.301"

_KNOWN_OIDS = {
    OID_EC_PUBLIC_KEY: "id-ecPublicKey",
    OID_SM2_CURVE: "sm2",
    "1.2.840.10045.3.1.7": "prime256v1/P-256",
    "1.3.132.0.34": "secp384r1/P-384",
    "1.3.132.0.35": "secp521r1/P-521",
    "1.3.132.0.10": "secp256k1",
    "1.2.840.113549.1.1.1": "rsaEncryption",
    "1.3.101.112": "Ed25519",
    "1.3.101.110": "X25519",
    "1.2.840.113549.1.5.13": "PBES2",
    "1.2.840.113549.1.5.12": "PBKDF2",
    "1.3.6.1.4.1.11591.4.11": "scrypt",
    "1.2.840.113549.2.7": "hmacWithSHA1",
    "1.2.840.113549.2.9": "hmacWithSHA256",
    "1.2.840.113549.2.10": "hmacWithSHA384",
    "1.2.840.113549.2.11": "hmacWithSHA512",
    "2.16.840.1.101.3.4.1.2": "aes-128-cbc",
    "2.16.840.1.101.3.4.1.22": "aes-192-cbc",
    "2.16.840.1.101.3.4.1.42": "aes-256-cbc",
    "1.2.156.10197.1.104.2": "sm4-cbc",
    "1.2.840.113549.3.7": "des-ede3-cbc",
}

OID_RSA = "1.2.840.113549.1.1.1"
OID_PBES2 = "1.2.840.113549.1.5.13"
OID_PBKDF2 = "1.2.840.113549.1.5.12"
OID_HMAC_SHA1 = "1.2.840.113549.2.7"
OID_HMAC_SHA256 = "1.2.840.113549.2.9"
OID_AES_CBC = {  # OID -> key length in bytes
    "2.16.840.1.101.3.4.1.2": 16,
    "2.16.840.1.101.3.4.1.22": 24,
    "2.16.840.1.101.3.4.1.42": 32,
}
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_PRFS = {OID_HMAC_SHA1: hashes.SHA1, OID_HMAC_SHA256: hashes.SHA256}


def _oid_name(oid: str) -> str:
    name = _KNOWN_OIDS.get(oid)
    return f"{oid} ({name})" if name else oid


def _encode_oid(oid: str) -> bytes:
    arcs = [int(a) for a in oid.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def _decode_oid(content: bytes, what: str) -> str:
    if not content:
        raise KeyFileError(f"{what}: empty OBJECT IDENTIFIER")
    if content[-1] & 0x80:
        raise KeyFileError(f"{what}: truncated OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for b in content:
        if fresh and b == 0x80:
            raise KeyFileError(f"{what}: OBJECT IDENTIFIER arc has a non-minimal encoding")
        value = (value << 7) | (b & 0x7F)
        fresh = not b & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


# --- strict DER --------------------------------------------------------------

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_SEQUENCE = 0x30
TAG_CTX0 = 0xA0  # [0] EXPLICIT, constructed
TAG_CTX1 = 0xA1  # [1] EXPLICIT, constructed

_TAG_NAMES = {
    TAG_INTEGER: "INTEGER",
    TAG_BIT_STRING: "BIT STRING",
    TAG_OCTET_STRING: "OCTET STRING",
    TAG_NULL: "NULL",
    TAG_OID: "OBJECT IDENTIFIER",
    TAG_SEQUENCE: "SEQUENCE",
    TAG_CTX0: "[0]",
    TAG_CTX1: "[1]",
}


def _tag_name(tag: int) -> str:
    return _TAG_NAMES.get(tag, f"tag 0x{tag:02x}")


class _DerReader:
    """Reads TLVs one after another from a buffer, refusing anything not DER."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def peek_tag(self) -> int | None:
        return None if self.at_end() else self._data[self._pos]

    def read(self, expected_tag: int, what: str) -> bytes:
        """Return the contents of the next TLV, which must carry *expected_tag*."""
        data, pos = self._data, self._pos
        if pos >= len(data):
            raise KeyFileError(f"{self._what}: {what} is missing (data ends early)")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise KeyFileError(f"{self._what}: {what}: multi-byte tags do not occur in SM2 keys")
        if tag != expected_tag:
            raise KeyFileError(
                f"{self._what}: {what} should be {_tag_name(expected_tag)}, found {_tag_name(tag)}"
            )
        pos += 1
        if pos >= len(data):
            raise KeyFileError(f"{self._what}: {what} has no length")
        first = data[pos]
        pos += 1
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise KeyFileError(f"{self._what}: {what} uses an indefinite length (BER, not DER)")
        else:
            n = first & 0x7F
            if n > 4 or pos + n > len(data):
                raise KeyFileError(f"{self._what}: {what} has a malformed length")
            raw = data[pos:pos + n]
            pos += n
            length = int.from_bytes(raw, "big")
            if raw[0] == 0 or length < 0x80:
                raise KeyFileError(f"{self._what}: {what} has a non-minimal length (BER, not DER)")
        if pos + length > len(data):
            raise KeyFileError(
                f"{self._what}: {what} claims {length} bytes but only {len(data) - pos} remain"
            )
        self._pos = pos + length
        return data[pos:pos + length]

    def rest(self) -> bytes:
        """Everything not yet read (an AlgorithmIdentifier's parameters, say)."""
        return self._data[self._pos:]

    def read_optional(self, tag: int, what: str) -> bytes | None:
        if self.peek_tag() != tag:
            return None
        return self.read(tag, what)

    def read_uint(self, what: str) -> int:
        content = self.read(TAG_INTEGER, what)
        if not content:
            raise KeyFileError(f"{self._what}: {what} is an empty INTEGER")
        if len(content) > 1 and (
            (content[0] == 0x00 and not content[1] & 0x80)
            or (content[0] == 0xFF and content[1] & 0x80)
        ):
            raise KeyFileError(f"{self._what}: {what} INTEGER is not minimally encoded")
        if content[0] & 0x80:
            raise KeyFileError(f"{self._what}: {what} is negative")
        return int.from_bytes(content, "big")

    def read_oid(self, what: str) -> str:
        return _decode_oid(self.read(TAG_OID, what), f"{self._what}: {what}")

    def finish(self, what: str) -> None:
        if not self.at_end():
            extra = len(self._data) - self._pos
            raise KeyFileError(
                f"{self._what}: {extra} unexpected trailing byte(s) after {what}"
            )


def _single(der: bytes, tag: int, what: str) -> bytes:
    """The contents of the one TLV that must make up all of *der*."""
    r = _DerReader(der, what)
    content = r.read(tag, what)
    r.finish(what)
    return content


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _der_uint(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # keeps a 00 before a high bit
    return _tlv(TAG_INTEGER, raw)


_ALGORITHM_ID = _tlv(
    TAG_SEQUENCE,
    _tlv(TAG_OID, _encode_oid(OID_EC_PUBLIC_KEY)) + _tlv(TAG_OID, _encode_oid(OID_SM2_CURVE)),
)


# --- ASN.1 shapes --------------------------------------------------------------

def _check_algorithm(content: bytes, what: str) -> None:
    """AlgorithmIdentifier must be id-ecPublicKey with the named curve sm2."""
    r = _DerReader(content, what)
    alg = r.read_oid("algorithm")
    if alg != OID_EC_PUBLIC_KEY:
        raise KeyFileError(
            f"{what}: key algorithm is {_oid_name(alg)}, expected "
            f"{_oid_name(OID_EC_PUBLIC_KEY)} on the SM2 curve"
        )
    if r.peek_tag() != TAG_OID:
        raise KeyFileError(
            f"{what}: curve parameters are not a named curve OID (explicit parameters "
            f"are not supported; expected {_oid_name(OID_SM2_CURVE)})"
        )
    _check_curve(r.read_oid("curve"), what)
    r.finish("the curve OID")


def _check_curve(oid: str, what: str) -> None:
    if oid != OID_SM2_CURVE:
        raise KeyFileError(f"{what}: curve is {_oid_name(oid)}, expected {_oid_name(OID_SM2_CURVE)}")


def _decode_point(bits: bytes, what: str) -> SM2PublicKey:
    if not bits:
        raise KeyFileError(f"{what}: empty public key BIT STRING")
    if bits[0] != 0:
        raise KeyFileError(f"{what}: public key BIT STRING has {bits[0]} unused bits, expected 0")
    point = bits[1:]
    if point[:1] in (b"\x02", b"\x03"):
        raise KeyFileError(f"{what}: compressed public points are not supported, expected 04||x||y")
    if len(point) != 65 or point[0] != 4:
        raise KeyFileError(
            f"{what}: public key is {len(point)} bytes, expected the 65-byte point 04||x||y"
        )
    try:
        return SM2PublicKey(point)
    except CryptoError as e:
        raise KeyFileError(f"{what}: {e}") from None


def _parse_ec_private_key(der: bytes, what: str, *, curve_known: bool) -> SM2PrivateKey:
    """SEC1 ECPrivateKey (RFC 5915). Inside PKCS#8 the curve comes from the outer layer."""
    r = _DerReader(_single(der, TAG_SEQUENCE, what), what)
    version = r.read_uint("ECPrivateKey version")
    if version != 1:
        raise KeyFileError(f"{what}: ECPrivateKey version is {version}, expected 1")
    secret = r.read(TAG_OCTET_STRING, "private key")
    if len(secret) != 32:
        raise KeyFileError(f"{what}: private key is {len(secret)} bytes, expected 32")
    params = r.read_optional(TAG_CTX0, "[0] parameters")
    if params is not None:
        if not params or params[0] != TAG_OID:
            raise KeyFileError(
                f"{what}: curve parameters are not a named curve OID (explicit parameters "
                f"are not supported; expected {_oid_name(OID_SM2_CURVE)})"
            )
        _check_curve(_decode_oid(_single(params, TAG_OID, f"{what}: curve"), f"{what}: curve"), what)
    elif not curve_known:
        raise KeyFileError(f"{what}: the EC private key does not name its curve, so it cannot be taken for SM2")
    pub_field = r.read_optional(TAG_CTX1, "[1] public key")
    r.finish("the EC private key")
    try:
        key = SM2PrivateKey(secret)
    except CryptoError as e:
        raise KeyFileError(f"{what}: {e}") from None
    if pub_field is not None:
        stated = _decode_point(_single(pub_field, TAG_BIT_STRING, f"{what}: public key"), what)
        if stated.point != key.public_key.point:
            raise KeyFileError(f"{what}: the embedded public key does not belong to the private key")
    return key


def _parse_pkcs8(der: bytes, what: str) -> SM2PrivateKey:
    r = _DerReader(_single(der, TAG_SEQUENCE, what), what)
    version = r.read_uint("PKCS#8 version")
    if version != 0:
        raise KeyFileError(f"{what}: PKCS#8 version is {version}, only version 0 is supported")
    _check_algorithm(r.read(TAG_SEQUENCE, "algorithm identifier"), what)
    inner = r.read(TAG_OCTET_STRING, "private key")
    if r.peek_tag() == TAG_CTX0:
        raise KeyFileError(f"{what}: PKCS#8 attributes are not supported")
    r.finish("the PKCS#8 private key")
    return _parse_ec_private_key(inner, what, curve_known=True)


def _parse_spki(der: bytes, what: str) -> SM2PublicKey:
    r = _DerReader(_single(der, TAG_SEQUENCE, what), what)
    _check_algorithm(r.read(TAG_SEQUENCE, "algorithm identifier"), what)
    bits = r.read(TAG_BIT_STRING, "public key")
    r.finish("the public key")
    return _decode_point(bits, what)


def _ec_private_key_der(key: SM2PrivateKey) -> bytes:
    # As OpenSSL nests it in PKCS#8: no [0] curve (the outer layer names it), [1] public key.
    return _tlv(
        TAG_SEQUENCE,
        _der_uint(1)
        + _tlv(TAG_OCTET_STRING, key.secret)
        + _tlv(TAG_CTX1, _tlv(TAG_BIT_STRING, b"\x00" + key.public_key.point)),
    )


# --- encrypted PKCS#8 (PBES2, RFC 8018) -------------------------------------------

# Written keys: 600,000 PBKDF2-HMAC-SHA256 iterations, OWASP's 2023 figure for
# that PRF. It costs about 0.13 s on this class of machine, paid once per key
# when the daemon starts; OpenSSL's own default (2048) is far too cheap for a
# file that may be copied off a backup and attacked offline.
PBKDF2_ITERATIONS = 600_000
# Read keys: a file may ask for any count; past this it is more likely a
# hostile or corrupt file making us burn CPU (about 2 s here) than a real key.
MAX_PBKDF2_ITERATIONS = 10_000_000


@dataclass(frozen=True)
class PrivateKeyInfo:
    """A private key's plaintext PKCS#8 DER, with its algorithm and how it was stored.

    *encryption* is None for a plaintext file, else e.g.
    "PBES2 PBKDF2-hmacWithSHA256 600000 iterations, aes-256-cbc".
    """

    algorithm: str
    der: bytes = field(repr=False)
    encryption: str | None = None
    iterations: int | None = None


def _read_algorithm_identifier(content: bytes, what: str) -> tuple[str, bytes]:
    """(OID, the remaining raw parameters) of an AlgorithmIdentifier's contents."""
    r = _DerReader(content, what)
    oid = r.read_oid("algorithm")
    return oid, r.rest()


def _parse_pbes2(der: bytes, what: str) -> tuple[bytes, int, type, int, str, bytes, bytes, str]:
    """EncryptedPrivateKeyInfo -> (salt, iterations, prf, key length, cipher OID, iv, ciphertext, description)."""
    r = _DerReader(_single(der, TAG_SEQUENCE, what), what)
    alg_oid, params = _read_algorithm_identifier(
        r.read(TAG_SEQUENCE, "encryption algorithm"), what)
    ciphertext = r.read(TAG_OCTET_STRING, "encrypted data")
    r.finish("the encrypted private key")
    if alg_oid != OID_PBES2:
        raise KeyFileError(
            f"{what}: key is encrypted with {_oid_name(alg_oid)}; only PBES2 is supported "
            f"(re-encrypt with `openssl pkcs8 -topk8 -v2 aes-256-cbc -iter {PBKDF2_ITERATIONS}`)")
    p = _DerReader(_single(params, TAG_SEQUENCE, f"{what}: PBES2 parameters"), what)
    kdf_oid, kdf_params = _read_algorithm_identifier(p.read(TAG_SEQUENCE, "PBES2 key derivation"), what)
    enc_oid, enc_params = _read_algorithm_identifier(p.read(TAG_SEQUENCE, "PBES2 encryption scheme"), what)
    p.finish("the PBES2 parameters")
    if kdf_oid != OID_PBKDF2:
        raise KeyFileError(
            f"{what}: PBES2 key derivation is {_oid_name(kdf_oid)}; only PBKDF2 is supported")
    k = _DerReader(_single(kdf_params, TAG_SEQUENCE, f"{what}: PBKDF2 parameters"), what)
    salt = k.read(TAG_OCTET_STRING, "PBKDF2 salt")
    iterations = k.read_uint("PBKDF2 iteration count")
    key_length = None
    if k.peek_tag() == TAG_INTEGER:
        key_length = k.read_uint("PBKDF2 key length")
    prf_oid = OID_HMAC_SHA1  # the DEFAULT in RFC 8018, omitted by OpenSSL
    if not k.at_end():
        prf_oid, prf_params = _read_algorithm_identifier(k.read(TAG_SEQUENCE, "PBKDF2 PRF"), what)
        if prf_params not in (b"", b"\x05\x00"):
            raise KeyFileError(f"{what}: PBKDF2 PRF parameters should be NULL or absent")
    k.finish("the PBKDF2 parameters")
    if prf_oid not in _PRFS:
        raise KeyFileError(
            f"{what}: PBKDF2 PRF is {_oid_name(prf_oid)}; supported: hmacWithSHA256, hmacWithSHA1")
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise KeyFileError(
            f"{what}: PBKDF2 iteration count {iterations} is outside 1..{MAX_PBKDF2_ITERATIONS}")
    if enc_oid not in OID_AES_CBC:
        raise KeyFileError(
            f"{what}: PBES2 cipher is {_oid_name(enc_oid)}; supported: aes-128-cbc, aes-192-cbc, aes-256-cbc")
    cipher_len = OID_AES_CBC[enc_oid]
    if key_length is not None and key_length != cipher_len:
        raise KeyFileError(
            f"{what}: PBKDF2 key length {key_length} does not fit {_oid_name(enc_oid)} ({cipher_len} bytes)")
    iv = _single(enc_params, TAG_OCTET_STRING, f"{what}: cipher IV")
    if len(iv) != 16:
        raise KeyFileError(f"{what}: AES-CBC IV is {len(iv)} bytes, expected 16")
    if not ciphertext or len(ciphertext) % 16:
        raise KeyFileError(f"{what}: encrypted data is {len(ciphertext)} bytes, not whole AES blocks")
    desc = (f"PBES2 PBKDF2-{_KNOWN_OIDS[prf_oid]} {iterations} iterations, "
            f"{_KNOWN_OIDS[enc_oid]}")
    return salt, iterations, _PRFS[prf_oid], cipher_len, enc_oid, iv, ciphertext, desc


def _decrypt_pkcs8(der: bytes, passphrase: bytes | None, what: str) -> tuple[bytes, str, int]:
    salt, iterations, prf, key_len, _, iv, ciphertext, desc = _parse_pbes2(der, what)
    if passphrase is None:
        raise KeyFileError(
            f"{what}: the private key is encrypted (ENCRYPTED PRIVATE KEY) and no passphrase "
            f"was given")
    if not isinstance(passphrase, (bytes, bytearray)):
        raise TypeError("passphrase must be bytes")
    key = PBKDF2HMAC(prf(), key_len, salt, iterations).derive(bytes(passphrase))
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    wrong = KeyFileError(f"{what}: wrong passphrase for the encrypted private key "
                         f"(or the file is damaged)")
    unpad = padding.PKCS7(128).unpadder()
    try:
        plain = unpad.update(padded) + unpad.finalize()
    except ValueError:
        raise wrong from None
    # One wrong passphrase in 256 still leaves valid padding: garbage that is
    # not even one DER SEQUENCE is the same error, not a parse error.
    try:
        _single(plain, TAG_SEQUENCE, what)
    except KeyFileError:
        raise wrong from None
    return plain, desc, iterations


def _pkcs8_algorithm(der: bytes, what: str) -> str:
    r = _DerReader(_single(der, TAG_SEQUENCE, what), what)
    r.read_uint("PKCS#8 version")
    alg, _ = _read_algorithm_identifier(r.read(TAG_SEQUENCE, "algorithm identifier"), what)
    return alg


def _encrypt_pkcs8(der: bytes, passphrase: bytes, iterations: int) -> bytes:
    if not passphrase:
        raise KeyFileError("an empty passphrase encrypts nothing; give a real one or none")
    if iterations < 100_000:
        raise KeyFileError(f"{iterations} PBKDF2 iterations is too few for a key at rest (at least 100000)")
    salt, iv = os.urandom(16), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(passphrase)
    pad = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(pad.update(der) + pad.finalize()) + enc.finalize()
    null = _tlv(TAG_NULL, b"")
    kdf = _tlv(TAG_SEQUENCE, _tlv(TAG_OID, _encode_oid(OID_PBKDF2)) + _tlv(
        TAG_SEQUENCE,
        _tlv(TAG_OCTET_STRING, salt) + _der_uint(iterations)
        + _tlv(TAG_SEQUENCE, _tlv(TAG_OID, _encode_oid(OID_HMAC_SHA256)) + null)))
    scheme = _tlv(TAG_SEQUENCE, _tlv(TAG_OID, _encode_oid(OID_AES256_CBC)) + _tlv(TAG_OCTET_STRING, iv))
    alg = _tlv(TAG_SEQUENCE, _tlv(TAG_OID, _encode_oid(OID_PBES2)) + _tlv(TAG_SEQUENCE, kdf + scheme))
    return _tlv(TAG_SEQUENCE, alg + _tlv(TAG_OCTET_STRING, ciphertext))


# --- PEM ---------------------------------------------------------------------

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)
_PRIVATE_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY", "SM2 PRIVATE KEY")
_PARAMETER_LABELS = ("EC PARAMETERS", "SM2 PARAMETERS")


def _pem_blocks(pem: bytes | str, what: str) -> list[tuple[str, bytes]]:
    if isinstance(pem, str):
        pem = pem.encode("ascii", "replace")
    if b"-----BEGIN " not in pem:
        raise KeyFileError(f"{what}: not PEM (no -----BEGIN line); DER files are not accepted here")
    blocks = []
    for m in _PEM_BLOCK.finditer(pem):
        label, body, end_label = m.group(1).decode(), m.group(2), m.group(3).decode()
        if label != end_label:
            raise KeyFileError(f"{what}: PEM block BEGIN {label} ends with END {end_label}")
        lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        if any(b":" in ln for ln in lines):
            if any(ln.startswith(b"Proc-Type:") and b"ENCRYPTED" in ln for ln in lines):
                raise KeyFileError(
                    f"{what}: legacy PEM encryption (Proc-Type: ENCRYPTED) is not supported; "
                    f"convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc "
                    f"-iter {PBKDF2_ITERATIONS}`")
            raise KeyFileError(f"{what}: PEM headers are not supported in {label}")
        try:
            der = binascii.a2b_base64(b"".join(lines), strict_mode=True)
        except binascii.Error as e:
            raise KeyFileError(f"{what}: the {label} block is not valid base64 ({e})") from None
        blocks.append((label, der))
    if pem.count(b"-----BEGIN ") != len(blocks):
        raise KeyFileError(f"{what}: a PEM block has no matching -----END line")
    return blocks


def _check_parameters_block(label: str, der: bytes, what: str) -> None:
    # `openssl ecparam -genkey` writes the curve first; accept it when it is SM2's.
    _check_curve(_decode_oid(_single(der, TAG_OID, f"{what}: {label}"), f"{what}: {label}"), what)


def _pem(label: str, der: bytes) -> bytes:
    b64 = binascii.b2a_base64(der, newline=False)
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"".join(
        [f"-----BEGIN {label}-----\n".encode()]
        + [ln + b"\n" for ln in lines]
        + [f"-----END {label}-----\n".encode()]
    )


# --- public codec API ------------------------------------------------------------

def load_private_key_info(pem: bytes | str, *, passphrase: bytes | None = None,
                          source: str = "private key") -> PrivateKeyInfo:
    """The plaintext PKCS#8 of a "PRIVATE KEY" or "ENCRYPTED PRIVATE KEY" PEM, any algorithm.

    For callers that hold keys of several kinds (SM2 here, RSA through
    `cryptography`): decrypt once, then dispatch on `algorithm`.
    A *passphrase* given for a plaintext key is ignored.
    """
    blocks = [(label, der) for label, der in _pem_blocks(pem, source) if label not in _PARAMETER_LABELS]
    labels = [label for label, _ in blocks]
    if len(blocks) != 1 or labels[0] not in ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
        raise KeyFileError(f"{source}: expected one PKCS#8 PRIVATE KEY or ENCRYPTED PRIVATE KEY block, "
                           f"found {labels or 'none'}")
    label, der = blocks[0]
    if label == "PRIVATE KEY":
        return PrivateKeyInfo(_pkcs8_algorithm(der, source), der)
    plain, desc, iterations = _decrypt_pkcs8(der, passphrase, source)
    return PrivateKeyInfo(_pkcs8_algorithm(plain, source), plain, desc, iterations)


def sm2_private_key_from_pkcs8(der: bytes, *, source: str = "private key") -> SM2PrivateKey:
    """The SM2 key in a plaintext PKCS#8 DER (as `PrivateKeyInfo.der`), strictly parsed."""
    return _parse_pkcs8(der, source)


def load_sm2_private_key(pem: bytes | str, *, passphrase: bytes | None = None,
                         source: str = "private key") -> SM2PrivateKey:
    """Parse an SM2 private key: PKCS#8 "PRIVATE KEY", "ENCRYPTED PRIVATE KEY" or SEC1 "EC/SM2 PRIVATE KEY".

    An encrypted key needs *passphrase* (bytes); without it, or with a wrong
    one, a KeyFileError says so. A *passphrase* given for a plaintext key is
    ignored. *source* (a file name, say) starts every error message.
    """
    keys = []
    for label, der in _pem_blocks(pem, source):
        if label in _PARAMETER_LABELS:
            _check_parameters_block(label, der, source)
        elif label in _PRIVATE_LABELS or label == "ENCRYPTED PRIVATE KEY":
            keys.append((label, der))
        elif label == "PUBLIC KEY":
            raise KeyFileError(f"{source}: holds a PUBLIC KEY where a private key was expected")
        else:
            raise KeyFileError(f"{source}: unexpected PEM block {label!r} in a private key file")
    if len(keys) != 1:
        raise KeyFileError(f"{source}: expected one private key, found {len(keys)}")
    label, der = keys[0]
    if label == "ENCRYPTED PRIVATE KEY":
        der, _, _ = _decrypt_pkcs8(der, passphrase, source)
        return _parse_pkcs8(der, source)
    if label == "PRIVATE KEY":
        return _parse_pkcs8(der, source)
    return _parse_ec_private_key(der, source, curve_known=False)


def encrypt_private_key_info(der: bytes, passphrase: bytes, *,
                             iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """"ENCRYPTED PRIVATE KEY" PEM of a plaintext PKCS#8 DER of any algorithm (RSA from `cryptography`, say).

    PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC, as dump_sm2_private_key writes it.
    """
    return _pem("ENCRYPTED PRIVATE KEY", _encrypt_pkcs8(der, bytes(passphrase), iterations))


def dump_sm2_private_key(key: SM2PrivateKey, passphrase: bytes | None = None, *,
                         iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """PKCS#8 PEM of *key*.

    Without *passphrase*: "PRIVATE KEY", byte for byte as `openssl genpkey
    -algorithm SM2` writes it. With one: "ENCRYPTED PRIVATE KEY", PBES2 with
    PBKDF2-HMAC-SHA256 (*iterations*, at least 100,000) and AES-256-CBC under a
    fresh random 16-byte salt and IV, which `openssl pkey -passin` reads.
    """
    der = _tlv(
        TAG_SEQUENCE,
        _der_uint(0) + _ALGORITHM_ID + _tlv(TAG_OCTET_STRING, _ec_private_key_der(key)),
    )
    if passphrase is None:
        return _pem("PRIVATE KEY", der)
    return _pem("ENCRYPTED PRIVATE KEY", _encrypt_pkcs8(der, bytes(passphrase), iterations))


def load_sm2_public_key(pem: bytes | str, *, source: str = "public key") -> SM2PublicKey:
    """Parse a SubjectPublicKeyInfo "PUBLIC KEY" PEM on the SM2 curve."""
    blocks = _pem_blocks(pem, source)
    labels = [label for label, _ in blocks]
    if labels != ["PUBLIC KEY"]:
        if any(label in _PRIVATE_LABELS or label == "ENCRYPTED PRIVATE KEY" for label in labels):
            raise KeyFileError(
                f"{source}: holds a private key where a PUBLIC KEY was expected "
                f"(extract it with `openssl pkey -in FILE -pubout`)"
            )
        if "CERTIFICATE" in labels:
            raise KeyFileError(
                f"{source}: holds a CERTIFICATE; extract its key with `openssl x509 -in FILE -pubkey -noout`"
            )
        raise KeyFileError(f"{source}: expected one PUBLIC KEY block, found {labels or 'none'}")
    return _parse_spki(blocks[0][1], source)


def load_sm2_certificate_public_key(pem: bytes | str, *, source: str = "certificate") -> SM2PublicKey:
    """The SM2 public key of an X.509 certificate (one "CERTIFICATE" PEM block): the
    SubjectPublicKeyInfo of its tbsCertificate. Nothing else of the certificate is checked here
    (issuer, validity, its own signature: that is `openssl verify`'s job)."""
    blocks = _pem_blocks(pem, source)
    if [label for label, _ in blocks] != ["CERTIFICATE"]:
        raise KeyFileError(f"{source}: expected one CERTIFICATE block, found {[lb for lb, _ in blocks] or 'none'}")
    cert = _DerReader(_single(blocks[0][1], TAG_SEQUENCE, source), source)
    tbs = _DerReader(cert.read(TAG_SEQUENCE, "tbsCertificate"), f"{source}: tbsCertificate")
    tbs.read_optional(TAG_CTX0, "version")
    tbs.read(TAG_INTEGER, "serial number")
    for what in ("signature algorithm", "issuer", "validity", "subject"):
        tbs.read(TAG_SEQUENCE, what)
    spki = tbs.read(TAG_SEQUENCE, "subjectPublicKeyInfo")
    return _parse_spki(_tlv(TAG_SEQUENCE, spki), f"{source}: subjectPublicKeyInfo")


def dump_sm2_public_key(pub: SM2PublicKey) -> bytes:
    """SubjectPublicKeyInfo "PUBLIC KEY" PEM, as `openssl pkey -pubout` writes it."""
    der = _tlv(TAG_SEQUENCE, _ALGORITHM_ID + _tlv(TAG_BIT_STRING, b"\x00" + pub.point))
    return _pem("PUBLIC KEY", der)


# --- files -------------------------------------------------------------------------

def _read_capped(fd: int, path: PathLike) -> bytes:
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, 8192)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"{os.fspath(path)}: larger than {MAX_KEY_FILE_SIZE} bytes, not a key file")
        chunks.append(chunk)


def _open_regular(path: PathLike) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise KeyFileError(f"{os.fspath(path)}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise KeyFileError(f"{os.fspath(path)}: not a regular file")
    return fd, st


def read_private_bytes(path: PathLike) -> bytes:
    """The bytes of a private file (a key, a passphrase), refused if group or others may read or write it."""
    fd, st = _open_regular(path)
    try:
        # Checked on the open descriptor, so a chmod or rename in between cannot fool it.
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            p = os.fspath(path)
            raise KeyFileError(
                f"{p}: private key file has mode {mode:04o}, readable or writable by group or "
                f"others; fix it with `chmod 600 {p}`"
            )
        return _read_capped(fd, path)
    finally:
        os.close(fd)


def read_private_key_file(path: PathLike, *, passphrase: bytes | None = None) -> SM2PrivateKey:
    """Load an SM2 private key file, refusing it if group or others may read or write it."""
    return load_sm2_private_key(read_private_bytes(path), passphrase=passphrase, source=os.fspath(path))


def read_public_bytes(path: PathLike) -> bytes:
    """The bytes of a public file (key, certificate), any mode, capped at MAX_KEY_FILE_SIZE."""
    fd, _ = _open_regular(path)
    try:
        return _read_capped(fd, path)
    finally:
        os.close(fd)


def read_public_key_file(path: PathLike) -> SM2PublicKey:
    """Load a "PUBLIC KEY" PEM file (any mode: it holds no secret)."""
    return load_sm2_public_key(read_public_bytes(path), source=os.fspath(path))


def write_new_file(path: PathLike, data: bytes, mode: int, *, overwrite: bool = False) -> None:
    """Write *data* to a new file that has *mode* from its first byte (an existing one is refused)."""
    _write_new(path, data, mode, overwrite)


def _write_new(path: PathLike, data: bytes, mode: int, overwrite: bool) -> None:
    """Write *data* to a file that is *mode* from its first byte, atomically when replacing."""
    p = os.fspath(path)
    target = p
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    if overwrite:
        # Write beside the target and rename over it, so no reader sees half a key.
        target = f"{p}.tmp-{os.getpid()}"
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{target}: already exists; refusing to overwrite a key file") from None
    except OSError as e:
        raise KeyFileError(f"{target}: cannot create: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; mode is exactly what was asked
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(target, p)
    except BaseException:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise


def write_private_key_file(path: PathLike, key: SM2PrivateKey, *, overwrite: bool = False,
                           passphrase: bytes | None = None) -> None:
    """Write *key* as PKCS#8 PEM (encrypted under *passphrase* if given) to a new file with mode 0600.

    An existing file is refused unless *overwrite*, which replaces it atomically.
    """
    _write_new(path, dump_sm2_private_key(key, passphrase), 0o600, overwrite)


def write_public_key_file(path: PathLike, pub: SM2PublicKey, *, overwrite: bool = False) -> None:
    """Write *pub* as "PUBLIC KEY" PEM to a new file with mode 0644."""
    _write_new(path, dump_sm2_public_key(pub), 0o644, overwrite)
