"""Chinese national cryptography (国密) primitives: SM2, SM3 and SM4.

SM3 and SM4 come from `cryptography` (OpenSSL underneath, ~200 MiB/s and
~90 MiB/s here); SM2 comes from `gmalg`, the one maintained pure-Python SM2
that draws its nonces from `secrets` and checks C3 on decryption (see the
README for why not `gmssl`). Pure-Python SM2 costs 25-45 ms per operation, so
callers keep it off the reactor thread and out of per-item loops: it is used
once per message and once per file, never per item.

Encodings are the dialect's choices, passed explicitly: SM2 ciphertext as
04||C1||C3||C2 (or C1C2C3), signatures as raw r||s (or DER).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gmalg
import gmalg.base
import gmalg.sm2
from cryptography.exceptions import InvalidSignature  # noqa: F401  (re-exported for callers)
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DEFAULT_UID = b"1234567812345678"
SM4_KEY_SIZE = 16
SM4_BLOCK = 16
_COORD = 32
_N = gmalg.sm2._ecdlp.fpn.p  # noqa: SLF001  (order n of the SM2 base point G)


class CryptoError(Exception):
    """A cryptographic operation failed on the data given (bad key, padding, tag...)."""


class DecryptionError(CryptoError):
    """Ciphertext could not be decrypted: wrong key, corrupted data or bad padding."""


# --- SM3 -------------------------------------------------------------------

def sm3(data: bytes) -> bytes:
    """SM3 digest (GB/T 32905) of *data*, 32 bytes."""
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def sm3_hex(data: bytes) -> str:
    """SM3 digest as 64 lower-case hex digits, as the dialect writes FileSM3."""
    return sm3(data).hex()


class SM3Hasher:
    """Incremental SM3, for files that are streamed rather than held in memory."""

    def __init__(self) -> None:
        self._h = hashes.Hash(hashes.SM3())

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.copy().finalize()

    def hexdigest(self) -> str:
        return self.digest().hex()


# --- SM4-CBC with PKCS#7 ---------------------------------------------------

def _check_key_iv(key: bytes, iv: bytes) -> None:
    if len(key) != SM4_KEY_SIZE or len(iv) != SM4_BLOCK:
        raise CryptoError(
            f"SM4 needs a 16-byte key and a 16-byte IV, got {len(key)} and {len(iv)}"
        )


class SM4CBCEncryptor:
    """Streaming SM4-CBC encryption with PKCS#7 padding (GB/T 32907)."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        _check_key_iv(key, iv)
        self._enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
        self._pad = padding.PKCS7(128).padder()

    def update(self, data: bytes) -> bytes:
        return self._enc.update(self._pad.update(data))

    def finalize(self) -> bytes:
        return self._enc.update(self._pad.finalize()) + self._enc.finalize()


class SM4CBCDecryptor:
    """Streaming SM4-CBC decryption; bad length or padding raises DecryptionError."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        _check_key_iv(key, iv)
        self._dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
        self._unpad = padding.PKCS7(128).unpadder()
        self._count = 0

    def update(self, data: bytes) -> bytes:
        self._count += len(data)
        return self._unpad.update(self._dec.update(data))

    def finalize(self) -> bytes:
        if self._count == 0 or self._count % SM4_BLOCK:
            raise DecryptionError(
                f"SM4-CBC ciphertext length {self._count} is not a positive multiple of 16"
            )
        try:
            return self._unpad.update(self._dec.finalize()) + self._unpad.finalize()
        except ValueError as e:
            raise DecryptionError(f"SM4-CBC padding is invalid: {e}") from None


def sm4_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    enc = SM4CBCEncryptor(key, iv)
    return enc.update(plaintext) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    dec = SM4CBCDecryptor(key, iv)
    return dec.update(ciphertext) + dec.finalize()


# --- SM2 -------------------------------------------------------------------

@dataclass(frozen=True)
class SM2PublicKey:
    """An SM2 public key, as the uncompressed point 04||x||y (65 bytes)."""

    point: bytes

    def __post_init__(self) -> None:
        if len(self.point) != 1 + 2 * _COORD or self.point[0] != 4:
            raise CryptoError("an SM2 public key is the 65-byte uncompressed point 04||x||y")
        if not gmalg.SM2(pk=self.point).verify_pk(self.point):
            raise CryptoError("the SM2 public key is not a point on the SM2 curve")

    def fingerprint(self) -> str:
        """SM3 of the point, hex, for operators to compare keys by eye."""
        return sm3_hex(self.point)


@dataclass(frozen=True)
class SM2PrivateKey:
    """An SM2 private key d (32 bytes) with its public point."""

    secret: bytes = field(repr=False)
    public_key: SM2PublicKey = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if len(self.secret) != _COORD:
            raise CryptoError("an SM2 private key is 32 bytes")
        # GB/T 32918.1 6.1: d in [1, n-2]; d = n-1 makes 1+d vanish mod n and
        # every "signature" invalid, d >= n is a non-canonical alias of d mod n.
        if not 1 <= int.from_bytes(self.secret, "big") <= _N - 2:
            raise CryptoError("an SM2 private key must lie in [1, n-2]")
        if self.public_key is None:
            pk = gmalg.SM2().generate_pk(self.secret)
            object.__setattr__(self, "public_key", SM2PublicKey(pk))

    def __repr__(self) -> str:
        return f"SM2PrivateKey(public={self.public_key.fingerprint()[:16]}..., secret=<redacted>)"


def generate_keypair() -> SM2PrivateKey:
    sk, pk = gmalg.SM2().generate_keypair()
    # gmalg returns d in as few bytes as it fits: about one key in 256 is shorter than 32.
    return SM2PrivateKey(sk.rjust(_COORD, b"\x00"), SM2PublicKey(pk))


class _FastSM3(gmalg.base.Hash):
    """gmalg's Hash interface over OpenSSL's SM3, so SM2's Z and e are computed fast."""

    def __init__(self) -> None:
        self._h = hashes.Hash(hashes.SM3())

    @classmethod
    def max_msg_length(cls) -> int:
        return 2 ** 61 - 1

    @classmethod
    def hash_length(cls) -> int:
        return 32

    def reset(self) -> None:
        self._h = hashes.Hash(hashes.SM3())

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def value(self) -> bytes:
        return self._h.copy().finalize()


def _core() -> gmalg.sm2.SM2Core:
    return gmalg.sm2.SM2Core(gmalg.sm2._ecdlp, _FastSM3())  # noqa: SLF001


def sm2_z(key: SM2PublicKey, uid: bytes = DEFAULT_UID) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA), GB/T 32918.2 section 5.5."""
    return _core().entity_info(uid, gmalg.sm2.bytes_to_point(key.point))


class SM2DigestHasher:
    """Streams a message into e = SM3(Z_A || M), for signing or verifying big files.

    gmalg hashes the whole message with its pure-Python SM3 (about 1 MB/s); the
    file of a million-item batch is 100 MB, so files are hashed here with
    OpenSSL's SM3 and only the 32-byte e goes through the curve arithmetic.
    """

    def __init__(self, key: SM2PublicKey, uid: bytes = DEFAULT_UID) -> None:
        self._h = SM3Hasher()
        self._h.update(sm2_z(key, uid))

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def e(self) -> bytes:
        return self._h.digest()


def sm2_sign_digest(key: SM2PrivateKey, e: bytes, *, der: bool = False,
                    k: int | None = None) -> bytes:
    """SM2 signature (GB/T 32918.2 section 6.1, steps A3-A7) of a precomputed e.

    *k* is a test-vector hook only: it fixes the per-signature nonce so the
    worked example of GB/T 32918.5 / GM/T 0003.5 can be reproduced. Never pass
    it in production: a repeated or predictable k reveals the private key.
    """
    core = _core()
    ecdlp, fpn = core.ecdlp, core.ecdlp.fpn
    d = int.from_bytes(key.secret, "big")
    ei = int.from_bytes(e, "big")
    fixed_k = k
    if fixed_k is not None and not 1 <= fixed_k <= fpn.p - 1:
        raise CryptoError("the test nonce k must lie in [1, n-1]")
    while True:
        if fixed_k is None:
            k = core._randint(1, fpn.p - 1)  # noqa: SLF001  (secrets.randbits underneath)
        x, _ = ecdlp.kG(k)
        r = fpn.add(ei, x)
        s = fpn.mul(fpn.sub(k, fpn.mul(r, d)), fpn.inv(1 + d))
        if fpn.iszero(r) or fpn.iszero(fpn.add(r, k)) or fpn.iszero(s):
            if fixed_k is not None:
                # A fixed k cannot be redrawn; looping would never end.
                raise CryptoError("the test nonce k gives r = 0, r + k = n or s = 0")
            continue
        break
    if der:
        return encode_dss_signature(r, s)
    return r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")


def sm2_verify_digest(key: SM2PublicKey, e: bytes, signature: bytes, *, der: bool = False) -> bool:
    """SM2 verification (GB/T 32918.2 section 7.1, steps B1-B7) against a precomputed e."""
    try:
        if der:
            r, s = decode_dss_signature(signature)
        else:
            if len(signature) != 2 * _COORD:
                return False
            r = int.from_bytes(signature[:_COORD], "big")
            s = int.from_bytes(signature[_COORD:], "big")
    except ValueError:
        return False
    core = _core()
    ec, fpn = core.ecdlp.ec, core.ecdlp.fpn
    if not (1 <= r <= fpn.p - 1 and 1 <= s <= fpn.p - 1):
        return False
    t = fpn.add(r, s)
    if fpn.iszero(t):
        return False
    x, _ = ec.add(core.ecdlp.kG(s), ec.mul(t, gmalg.sm2.bytes_to_point(key.point)))
    return fpn.add(int.from_bytes(e, "big"), x) == r


def sm2_sign(key: SM2PrivateKey, data: bytes, uid: bytes = DEFAULT_UID, *, der: bool = False,
             k: int | None = None) -> bytes:
    """SM2-with-SM3 signature of *data* under signer ID *uid* (GB/T 32918.2).

    Returns raw r||s (64 bytes) or, with der=True, the DER SEQUENCE of r and s.
    *k* is the test-vector hook of sm2_sign_digest; never pass it in production.
    """
    h = SM2DigestHasher(key.public_key, uid)
    h.update(data)
    return sm2_sign_digest(key, h.e(), der=der, k=k)


def sm2_verify(key: SM2PublicKey, data: bytes, signature: bytes, uid: bytes = DEFAULT_UID,
               *, der: bool = False) -> bool:
    """True if *signature* is a valid SM2-with-SM3 signature of *data*; never raises on bad input."""
    h = SM2DigestHasher(key, uid)
    h.update(data)
    return sm2_verify_digest(key, h.e(), signature, der=der)


C1C3C2 = "C1C3C2"
C1C2C3 = "C1C2C3"
_C1 = 1 + 2 * _COORD
_C3 = 32


def sm2_encrypt(key: SM2PublicKey, plaintext: bytes, order: str = C1C3C2) -> bytes:
    """SM2 public-key encryption (GB/T 32918.4), as 04||C1||C3||C2 or 04||C1||C2||C3."""
    if not plaintext:
        raise CryptoError("SM2 cannot encrypt an empty message")
    c = gmalg.SM2(pk=key.point).encrypt(plaintext)  # gmalg emits C1||C3||C2
    if order == C1C3C2:
        return c
    if order == C1C2C3:
        return c[:_C1] + c[_C1 + _C3:] + c[_C1:_C1 + _C3]
    raise CryptoError(f"unknown SM2 ciphertext order {order!r}")


def sm2_decrypt(key: SM2PrivateKey, ciphertext: bytes, order: str = C1C3C2) -> bytes:
    """SM2 decryption; a wrong key, tampered C2 or wrong layout raises DecryptionError."""
    if len(ciphertext) <= _C1 + _C3 or ciphertext[0] != 4:
        raise DecryptionError("SM2 ciphertext is too short or does not start with 04")
    if order == C1C2C3:
        ciphertext = ciphertext[:_C1] + ciphertext[-_C3:] + ciphertext[_C1:-_C3]
    elif order != C1C3C2:
        raise CryptoError(f"unknown SM2 ciphertext order {order!r}")
    try:
        plain = gmalg.SM2(sk=key.secret, pk=key.public_key.point).decrypt(ciphertext)
    except gmalg.errors.GMError as e:
        raise DecryptionError(f"SM2 decryption failed: {type(e).__name__}") from None
    if plain is None:
        raise DecryptionError("SM2 decryption failed: C3 digest does not match")
    return plain

