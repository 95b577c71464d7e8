"""protocols.sm against the published standard vectors (GB/T 32905, 32907, 32918).

The SM2 values are the worked examples for the recommended curve in GM/T 0003.5-2012
(GB/T 32918.5-2017) Annex A/C, as also reproduced in OpenSSL's test/sm2_internal_test.c.
"""

from __future__ import annotations

import gmalg.base
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols import sm

# --- SM3, GB/T 32905-2016 Annex A -----------------------------------------------


def test_sm3_abc():
    """SM3("abc") is the first example of GB/T 32905 Annex A."""
    assert sm.sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_sm3_abcd_x16():
    """SM3 of the 64-byte "abcd"*16 is the second example, which spans two blocks after padding."""
    assert sm.sm3_hex(b"abcd" * 16) == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def test_sm3_hasher_streams_to_the_same_digest():
    """SM3Hasher fed in odd pieces gives the one-shot digest, and digest() does not end it."""
    h = sm.SM3Hasher()
    data = b"abcd" * 16
    for i in range(0, len(data), 7):
        h.update(data[i:i + 7])
    assert h.digest() == sm.sm3(data)
    h.update(b"x")
    assert h.hexdigest() == sm.sm3_hex(data + b"x")


# --- SM4, GB/T 32907-2016 Annex A --------------------------------------------------

SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
SM4_PLAIN = SM4_KEY
SM4_ONE = bytes.fromhex("681edf34d206965e86b3e94f536e4246")
SM4_MILLION = bytes.fromhex("595298c7c6fd271f0402f804c33d3f66")
ZERO_IV = bytes(16)


def test_sm4_single_block_vector():
    """With a zero IV the first CBC block is plain SM4, so it must equal the GB/T 32907 example 1."""
    ct = sm.sm4_cbc_encrypt(SM4_KEY, ZERO_IV, SM4_PLAIN)
    assert ct[:16] == SM4_ONE
    assert len(ct) == 32  # a full padding block follows a block-aligned message


def test_sm4_million_iterations_vector():
    """Encrypting P then 999,999 zero blocks in CBC with IV 0 chains SM4 a million times (example 2).

    C_i = E(0 xor C_(i-1)), so the last ciphertext block is E^1000000(P). Takes about 0.2 s.
    """
    enc = sm.SM4CBCEncryptor(SM4_KEY, ZERO_IV)
    first = enc.update(SM4_PLAIN)
    assert first == SM4_ONE
    zeros = bytes(16 * 100_000)
    last = b""
    remaining = 999_999
    while remaining:
        n = min(remaining, 100_000)
        out = enc.update(zeros[: 16 * n])
        last = out[-16:]
        remaining -= n
    assert last == SM4_MILLION


@pytest.mark.parametrize("size,ct_size", [(0, 16), (1, 16), (15, 16), (16, 32), (17, 32), (31, 32), (32, 48)])
def test_sm4_cbc_pkcs7_round_trip_and_padding_length(size, ct_size):
    """PKCS#7 always adds 1-16 bytes: empty -> 16, 15 -> 16, 16 -> 32, 17 -> 32; decryption inverts it."""
    iv = bytes(range(16))
    plain = bytes((i * 7) & 0xFF for i in range(size))
    ct = sm.sm4_cbc_encrypt(SM4_KEY, iv, plain)
    assert len(ct) == ct_size
    assert sm.sm4_cbc_decrypt(SM4_KEY, iv, ct) == plain
    # The padding itself is PKCS#7: decrypt raw and look at it.
    raw = Cipher(algorithms.SM4(SM4_KEY), modes.CBC(iv)).decryptor().update(ct)
    pad = ct_size - size
    assert raw[size:] == bytes([pad]) * pad


def test_sm4_cbc_streaming_matches_one_shot():
    """The streaming encryptor/decryptor fed in uneven pieces match the one-shot functions."""
    iv = bytes(16)
    plain = bytes(range(256)) * 40 + b"tail"
    enc = sm.SM4CBCEncryptor(SM4_KEY, iv)
    ct = b"".join(enc.update(plain[i:i + 37]) for i in range(0, len(plain), 37)) + enc.finalize()
    assert ct == sm.sm4_cbc_encrypt(SM4_KEY, iv, plain)
    dec = sm.SM4CBCDecryptor(SM4_KEY, iv)
    pt = b"".join(dec.update(ct[i:i + 23]) for i in range(0, len(ct), 23)) + dec.finalize()
    assert pt == plain


def _raw_cbc(key: bytes, iv: bytes, blocks: bytes) -> bytes:
    return Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor().update(blocks)


@pytest.mark.parametrize(
    "last_block",
    [
        bytes(15) + b"\x00",          # pad byte 0 is never valid
        bytes(15) + b"\x11",          # pad byte 17 exceeds the block
        bytes(12) + b"\x01\x04\x04\x04",  # claims 4 bytes of padding, one of them is wrong
        b"\x10" * 15 + b"\x0f",       # claims 15, first pad byte is 0x10
    ],
    ids=["zero", "seventeen", "mismatch", "one-short"],
)
def test_sm4_cbc_bad_padding_raises(last_block):
    """A last block that decrypts to invalid PKCS#7 raises DecryptionError, not ValueError or garbage."""
    iv = bytes(16)
    ct = _raw_cbc(SM4_KEY, iv, b"A" * 16 + last_block)
    with pytest.raises(sm.DecryptionError, match="padding"):
        sm.sm4_cbc_decrypt(SM4_KEY, iv, ct)


@pytest.mark.parametrize("length", [0, 1, 15, 17, 33])
def test_sm4_cbc_wrong_length_raises(length):
    """Ciphertext that is empty or not a multiple of 16 bytes raises DecryptionError naming the length."""
    with pytest.raises(sm.DecryptionError, match=f"length {length} "):
        sm.sm4_cbc_decrypt(SM4_KEY, bytes(16), bytes(length))


def test_sm4_bad_key_or_iv_size_raises():
    """A 15- or 17-byte key, or a short IV, is refused before any data is touched."""
    for key, iv in [(bytes(15), bytes(16)), (bytes(17), bytes(16)), (bytes(16), bytes(8))]:
        with pytest.raises(sm.CryptoError):
            sm.SM4CBCEncryptor(key, iv)
        with pytest.raises(sm.CryptoError):
            sm.SM4CBCDecryptor(key, iv)


# --- SM2, GM/T 0003.5-2012 / GB/T 32918.5-2017 -------------------------------------

D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
PUB = bytes.fromhex(
    "04"
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
UID = b"1234567812345678"
K = 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21
SIG_MSG = b"message digest"
ZA = bytes.fromhex("B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3")
E = bytes.fromhex("F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640")
R = bytes.fromhex("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3")
S = bytes.fromhex("B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA")
ENC_MSG = b"encryption standard"
C1 = bytes.fromhex(
    "04"
    "04EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73"
    "E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0"
)
C3 = bytes.fromhex("59983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766")
C2 = bytes.fromhex("21886CA989CA9C7D58087307CA93092D651EFA")


@pytest.fixture(scope="module")
def vector_key() -> sm.SM2PrivateKey:
    return sm.SM2PrivateKey(D)


def test_sm2_public_key_from_published_private_key(vector_key):
    """P = dG for the published d gives the published (xA, yA)."""
    assert vector_key.public_key.point == PUB


def test_sm2_z_and_e_match_published(vector_key):
    """Z_A for ID 1234567812345678 and e = SM3(Z_A || M) are the published intermediate values."""
    assert sm.sm2_z(vector_key.public_key, UID) == ZA
    h = sm.SM2DigestHasher(vector_key.public_key, UID)
    h.update(b"message ")
    h.update(b"digest")
    assert h.e() == E


def test_sm2_sign_with_published_k_gives_published_r_s(vector_key):
    """With the standard's fixed k, sm2_sign reproduces the published r and s (raw and DER)."""
    assert sm.sm2_sign(vector_key, SIG_MSG, UID, k=K) == R + S
    r, s = decode_dss_signature(sm.sm2_sign(vector_key, SIG_MSG, UID, der=True, k=K))
    assert (r, s) == (int.from_bytes(R, "big"), int.from_bytes(S, "big"))
    assert sm.sm2_sign_digest(vector_key, E, k=K) == R + S


def test_sm2_verify_accepts_published_signature():
    """sm2_verify accepts the published (r, s) under the published public key alone."""
    assert sm.sm2_verify(sm.SM2PublicKey(PUB), SIG_MSG, R + S, UID)


@pytest.mark.parametrize(
    "change",
    ["message", "uid", "r", "s", "length", "swap"],
)
def test_sm2_verify_rejects_altered_published_signature(change):
    """Changing the message, the ID, one bit of r or s, the length or the order of r and s fails."""
    pub = sm.SM2PublicKey(PUB)
    msg, uid, sig = SIG_MSG, UID, R + S
    if change == "message":
        msg = b"message digesT"
    elif change == "uid":
        uid = b"1234567812345679"
    elif change == "r":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    elif change == "s":
        sig = sig[:-1] + bytes([sig[-1] ^ 0x80])
    elif change == "length":
        sig = sig + b"\x00"
    elif change == "swap":
        sig = S + R
    assert not sm.sm2_verify(pub, msg, sig, uid)


def test_sm2_verify_rejects_r_s_out_of_range():
    """r or s of 0 or >= n is refused without doing curve arithmetic on it."""
    pub = sm.SM2PublicKey(PUB)
    n = (0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123).to_bytes(32, "big")
    for sig in (bytes(32) + S, R + bytes(32), n + S, R + n):
        assert not sm.sm2_verify(pub, SIG_MSG, sig, UID)


def test_sm2_sign_k_hook_refuses_out_of_range_k(vector_key):
    """The test-vector hook refuses k = 0 or k >= n rather than signing with it."""
    n = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
    for bad in (0, n):
        with pytest.raises(sm.CryptoError, match="nonce"):
            sm.sm2_sign(vector_key, SIG_MSG, k=bad)


def test_sm2_decrypt_published_ciphertext(vector_key):
    """The published C1, C3, C2 decrypt to "encryption standard" in both component orders."""
    assert sm.sm2_decrypt(vector_key, C1 + C3 + C2) == ENC_MSG
    assert sm.sm2_decrypt(vector_key, C1 + C2 + C3, order=sm.C1C2C3) == ENC_MSG


def test_sm2_encrypt_with_published_k_gives_published_ciphertext(vector_key, monkeypatch):
    """With gmalg's nonce source pinned to the standard's k, sm2_encrypt emits the published C1||C3||C2."""
    monkeypatch.setattr(gmalg.base.SMCoreBase, "_default_rnd_fn", lambda self, bits: K)
    pub = vector_key.public_key
    assert sm.sm2_encrypt(pub, ENC_MSG) == C1 + C3 + C2
    assert sm.sm2_encrypt(pub, ENC_MSG, order=sm.C1C2C3) == C1 + C2 + C3


@pytest.mark.parametrize("part", ["C1", "C3", "C2"])
def test_sm2_decrypt_rejects_tampered_published_ciphertext(vector_key, part):
    """One flipped bit in C1, C3 or C2 of the published ciphertext raises DecryptionError."""
    c1, c3, c2 = bytearray(C1), bytearray(C3), bytearray(C2)
    {"C1": c1, "C3": c3, "C2": c2}[part][5] ^= 0x01
    with pytest.raises(sm.DecryptionError):
        sm.sm2_decrypt(vector_key, bytes(c1 + c3 + c2))


def test_sm2_decrypt_rejects_short_or_wrong_prefix(vector_key):
    """A ciphertext too short to hold C1 and C3 plus one byte, or not starting with 04, is refused."""
    with pytest.raises(sm.DecryptionError):
        sm.sm2_decrypt(vector_key, C1 + C3)
    with pytest.raises(sm.DecryptionError):
        sm.sm2_decrypt(vector_key, b"\x05" + (C1 + C3 + C2)[1:])


def test_sm2_decrypt_with_wrong_key_fails():
    """Another private key cannot decrypt the published ciphertext (C3 check)."""
    with pytest.raises(sm.DecryptionError):
        sm.sm2_decrypt(sm.generate_keypair(), C1 + C3 + C2)


def test_sm2_random_round_trip():
    """A fresh key signs and verifies (raw and DER), and encrypts and decrypts, with random nonces."""
    key = sm.generate_keypair()
    sig1 = sm.sm2_sign(key, b"batch file")
    sig2 = sm.sm2_sign(key, b"batch file")
    assert sig1 != sig2  # the nonce is fresh each time
    assert sm.sm2_verify(key.public_key, b"batch file", sig1)
    assert sm.sm2_verify(key.public_key, b"batch file", sm.sm2_sign(key, b"batch file", der=True), der=True)
    ct = sm.sm2_encrypt(key.public_key, b"\x00" * 40)
    assert sm.sm2_decrypt(key, ct) == b"\x00" * 40


def test_generate_keypair_survives_secret_with_leading_zero_byte(monkeypatch):
    """A drawn d below 2**248 (about one key in 256) is kept as 32 bytes, not refused as too short."""
    small = 0x00ABCDEF << 224
    monkeypatch.setattr(gmalg.base.SMCoreBase, "_default_rnd_fn", lambda self, bits: small)
    key = sm.generate_keypair()
    assert key.secret == small.to_bytes(32, "big")
    assert key.public_key == sm.SM2PrivateKey(key.secret).public_key


def test_private_key_outside_1_to_n_minus_2_is_refused():
    """d = 0, n-1, n and 2**256-1 are not SM2 private keys (GB/T 32918.1: d in [1, n-2])."""
    n = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
    for d in (0, n - 1, n, 2**256 - 1):
        with pytest.raises(sm.CryptoError):
            sm.SM2PrivateKey(d.to_bytes(32, "big"))
    sm.SM2PrivateKey((n - 2).to_bytes(32, "big"))
    sm.SM2PrivateKey((1).to_bytes(32, "big"))
