"""protocols.keyfile: SM2 key PEM/DER codecs, their strictness, and the file-mode rules.

The fixture keys below were written by `openssl genpkey -algorithm SM2` and
`openssl ec` (OpenSSL 3.0); the live openssl round trips are in test_sm_openssl.py.
Malformed inputs are built here with a tiny DER encoder of the test's own.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from protocols import keyfile, sm
from protocols.keyfile import KeyFileError

OPENSSL_PKCS8 = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqBHM9VAYItBG0wawIBAQQg4IiIAvekikNJImnY
Y7hG81kkM9ZXK0ydkESFyH26Pc2hRANCAAQxCJVBuy73uU7Kkmmexddvm1IhDiXR
sR+PEhYIDosjoRS3T+KGATKRjrnXAmvGP3uwsk7RRT0Wue74xn3YjkCS
-----END PRIVATE KEY-----
"""
OPENSSL_SPKI = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEMQiVQbsu97lOypJpnsXXb5tSIQ4l
0bEfjxIWCA6LI6EUt0/ihgEykY651wJrxj97sLJO0UU9Frnu+MZ92I5Akg==
-----END PUBLIC KEY-----
"""
OPENSSL_SEC1 = b"""-----BEGIN SM2 PRIVATE KEY-----
MHcCAQEEIOCIiAL3pIpDSSJp2GO4RvNZJDPWVytMnZBEhch9uj3NoAoGCCqBHM9V
AYItoUQDQgAEMQiVQbsu97lOypJpnsXXb5tSIQ4l0bEfjxIWCA6LI6EUt0/ihgEy
kY651wJrxj97sLJO0UU9Frnu+MZ92I5Akg==
-----END SM2 PRIVATE KEY-----
"""
SECRET = bytes.fromhex("e0888802f7a48a43492269d863b846f3592433d6572b4c9d904485c87dba3dcd")
POINT = bytes.fromhex(
    "0431089541bb2ef7b94eca92699ec5d76f9b52210e25d1b11f8f1216080e8b23a1"
    "14b74fe2860132918eb9d7026bc63f7bb0b24ed1453d16b9eef8c67dd88e4092"
)
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123

OID_EC = bytes.fromhex("06072a8648ce3d0201")
OID_SM2 = bytes.fromhex("06082a811ccf5501822d")
OID_P256 = bytes.fromhex("06082a8648ce3d030107")


# --- a test-local DER encoder for building bad inputs ------------------------------

def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def integer(v: int) -> bytes:
    return tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def pem(label: str, der: bytes) -> bytes:
    b64 = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{b64}-----END {label}-----\n".encode()


def unpem(text: bytes) -> bytes:
    lines = text.strip().splitlines()
    return base64.b64decode(b"".join(lines[1:-1]))


def sec1(secret: bytes = SECRET, *, curve: bytes | None = OID_SM2, point: bytes | None = POINT,
         version: int = 1) -> bytes:
    body = integer(version) + tlv(0x04, secret)
    if curve is not None:
        body += tlv(0xA0, curve)
    if point is not None:
        body += tlv(0xA1, tlv(0x03, b"\x00" + point))
    return tlv(0x30, body)


def pkcs8(inner: bytes, *, alg: bytes = OID_EC, curve: bytes = OID_SM2, version: int = 0,
          extra: bytes = b"") -> bytes:
    return tlv(0x30, integer(version) + tlv(0x30, alg + curve) + tlv(0x04, inner) + extra)


def spki(point: bytes = POINT, *, alg: bytes = OID_EC, curve: bytes = OID_SM2, unused: int = 0) -> bytes:
    return tlv(0x30, tlv(0x30, alg + curve) + tlv(0x03, bytes([unused]) + point))


# --- loading what openssl writes ------------------------------------------------------

def test_openssl_pkcs8_private_key_loads():
    """openssl's PKCS#8 PEM yields its d and the public point openssl printed."""
    key = keyfile.load_sm2_private_key(OPENSSL_PKCS8)
    assert key.secret == SECRET
    assert key.public_key.point == POINT


def test_openssl_sec1_private_key_loads_under_both_labels():
    """The SEC1 form loads whether labelled "SM2 PRIVATE KEY" (openssl ec) or "EC PRIVATE KEY"."""
    assert keyfile.load_sm2_private_key(OPENSSL_SEC1).secret == SECRET
    relabelled = OPENSSL_SEC1.replace(b"SM2 PRIVATE KEY", b"EC PRIVATE KEY")
    assert keyfile.load_sm2_private_key(relabelled).secret == SECRET


def test_openssl_public_key_loads():
    """openssl's SubjectPublicKeyInfo PEM yields the same point as the private key's."""
    assert keyfile.load_sm2_public_key(OPENSSL_SPKI).point == POINT


def test_dumps_are_byte_identical_to_openssl():
    """Dumping openssl's keys reproduces openssl's files exactly (same DER, same PEM line breaks)."""
    key = keyfile.load_sm2_private_key(OPENSSL_PKCS8)
    assert keyfile.dump_sm2_private_key(key) == OPENSSL_PKCS8
    assert keyfile.dump_sm2_public_key(key.public_key) == OPENSSL_SPKI


def test_round_trip_of_fresh_keys_including_high_bit_and_small_d():
    """Fresh keys, and d with a leading zero byte or top bit set, survive dump -> load."""
    keys = [sm.generate_keypair() for _ in range(3)]
    keys += [sm.SM2PrivateKey((1).to_bytes(32, "big")), sm.SM2PrivateKey((N - 2).to_bytes(32, "big"))]
    for key in keys:
        again = keyfile.load_sm2_private_key(keyfile.dump_sm2_private_key(key))
        assert again.secret == key.secret and again.public_key == key.public_key
        assert keyfile.load_sm2_public_key(keyfile.dump_sm2_public_key(key.public_key)) == key.public_key


def test_text_around_pem_and_str_input_are_accepted():
    """Explanatory text before/after the block (RFC 7468) and a str instead of bytes are fine."""
    text = "SM2 key for bank ABC, made 2024\n" + OPENSSL_PKCS8.decode() + "\ntrailer\n"
    assert keyfile.load_sm2_private_key(text).secret == SECRET


def test_ecparam_genkey_output_with_parameters_block_loads():
    """`openssl ecparam -name SM2 -genkey` puts an "SM2 PARAMETERS" block before the key: accepted."""
    params = pem("SM2 PARAMETERS", OID_SM2)
    assert keyfile.load_sm2_private_key(params + OPENSSL_PKCS8).secret == SECRET
    with pytest.raises(KeyFileError, match=r"1\.2\.840\.10045\.3\.1\.7"):
        keyfile.load_sm2_private_key(pem("EC PARAMETERS", OID_P256) + OPENSSL_PKCS8)


# --- refusals: what is wrong must be named ----------------------------------------------

def _load_priv_der(der: bytes, label: str = "PRIVATE KEY"):
    return keyfile.load_sm2_private_key(pem(label, der))


def test_own_encoder_reproduces_openssl_der():
    """The test's DER builder makes openssl's exact bytes, so the mutations below differ only where intended."""
    assert pkcs8(sec1(curve=None)) == unpem(OPENSSL_PKCS8)
    assert sec1() == unpem(OPENSSL_SEC1)
    assert spki() == unpem(OPENSSL_SPKI)


@pytest.mark.parametrize(
    "der,message",
    [
        (unpem(OPENSSL_PKCS8) + b"\x00", "trailing"),
        (pkcs8(sec1(curve=None), extra=b"\x05\x00"), "trailing"),
        (pkcs8(sec1(curve=None) + b"\x00"), "trailing"),
        (b"\x30\x82\x00\x87" + unpem(OPENSSL_PKCS8)[3:], "non-minimal length"),
        (b"\x30\x80" + unpem(OPENSSL_PKCS8)[3:] + b"\x00\x00", "indefinite length"),
        (unpem(OPENSSL_PKCS8)[:-1], "claims 135 bytes"),
        (pkcs8(sec1(curve=None), version=1), "PKCS#8 version is 1"),
        (pkcs8(sec1(curve=None), curve=OID_P256), r"1\.2\.840\.10045\.3\.1\.7 \(prime256v1"),
        (pkcs8(sec1(curve=None), alg=tlv(0x06, bytes.fromhex("2a864886f70d010101")), curve=b"\x05\x00"),
         r"1\.2\.840\.113549\.1\.1\.1 \(rsaEncryption\)"),
        (pkcs8(sec1(curve=None), curve=tlv(0x30, integer(1))), "explicit parameters"),
        (pkcs8(sec1(curve=None), extra=tlv(0xA0, b"")), "attributes"),
        (pkcs8(sec1(SECRET[1:], curve=None)), "31 bytes, expected 32"),
        (pkcs8(sec1(bytes(32), curve=None, point=None)), r"\[1, n-2\]"),
        (pkcs8(sec1(N.to_bytes(32, "big"), curve=None, point=None)), r"\[1, n-2\]"),
        (pkcs8(sec1(curve=None, version=0)), "ECPrivateKey version is 0"),
        (pkcs8(sec1(curve=OID_P256)), r"1\.2\.840\.10045\.3\.1\.7"),
        (pkcs8(sec1(curve=None, point=sm.generate_keypair().public_key.point)), "does not belong"),
        (pkcs8(tlv(0x30, tlv(0x02, b"\x00\x01") + tlv(0x04, SECRET))), "not minimally encoded"),
        (pkcs8(b"\x04\x20" + SECRET), "should be SEQUENCE, found OCTET STRING"),
    ],
    ids=[
        "trailing-outer", "trailing-in-pkcs8", "trailing-in-sec1", "long-length", "indefinite",
        "truncated", "pkcs8-v1", "p256-curve", "rsa-algorithm", "explicit-params", "attributes",
        "short-d", "d-zero", "d-n", "sec1-v0", "inner-curve-mismatch", "pub-mismatch",
        "non-minimal-int", "wrong-tag",
    ],
)
def test_malformed_pkcs8_is_refused_naming_the_fault(der, message):
    """Each deviation from openssl's PKCS#8 shape raises KeyFileError whose message says what is wrong."""
    with pytest.raises(KeyFileError, match=message):
        _load_priv_der(der)


@pytest.mark.parametrize(
    "der,message",
    [
        (sec1(curve=None), "does not name its curve"),
        (sec1(curve=OID_P256), r"1\.2\.840\.10045\.3\.1\.7"),
        (sec1(curve=tlv(0x30, integer(1))), "explicit parameters"),
        (sec1() + b"\x00", "trailing"),
    ],
    ids=["no-curve", "p256", "explicit", "trailing"],
)
def test_malformed_sec1_is_refused(der, message):
    """A standalone SEC1 key must name the SM2 curve and end where its SEQUENCE ends."""
    with pytest.raises(KeyFileError, match=message):
        _load_priv_der(der, "EC PRIVATE KEY")


def test_foreign_keys_made_by_cryptography_are_refused():
    """P-256 (PKCS#8 and SEC1) and Ed25519 keys are refused with their OIDs named."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        data = p256.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        with pytest.raises(KeyFileError, match=r"1\.2\.840\.10045\.3\.1\.7 \(prime256v1/P-256\)"):
            keyfile.load_sm2_private_key(data)
    pub = p256.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match=r"1\.2\.840\.10045\.3\.1\.7"):
        keyfile.load_sm2_public_key(pub)
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(KeyFileError, match=r"1\.3\.101\.112 \(Ed25519\)"):
        keyfile.load_sm2_private_key(ed)


def test_encrypted_keys_without_passphrase_or_in_legacy_pem_are_refused_clearly():
    """Encrypted PKCS#8 without a passphrase says one is needed; legacy Proc-Type: ENCRYPTED PEM is
    refused with the conversion command (encrypted PKCS#8 itself is tested in test_keystore.py)."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    enc = serialization.BestAvailableEncryption(b"pw")
    for fmt, message in ((serialization.PrivateFormat.PKCS8, "no passphrase was given"),
                         (serialization.PrivateFormat.TraditionalOpenSSL, "legacy PEM encryption")):
        data = p256.private_bytes(serialization.Encoding.PEM, fmt, enc)
        with pytest.raises(KeyFileError, match=message):
            keyfile.load_sm2_private_key(data)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x30\x81\x87\x02\x01\x00", "not PEM"),
        (b"", "not PEM"),
        (OPENSSL_PKCS8.replace(b"MIGH", b"MI*H"), "not valid base64"),
        (OPENSSL_PKCS8.replace(b"END PRIVATE KEY", b"END PUBLIC KEY"), "ends with END PUBLIC KEY"),
        (OPENSSL_PKCS8.replace(b"-----END PRIVATE KEY-----\n", b""), "no matching -----END"),
        (OPENSSL_PKCS8 + OPENSSL_PKCS8, "expected one private key, found 2"),
        (OPENSSL_SPKI, "holds a PUBLIC KEY"),
        (pem("CERTIFICATE", b"\x30\x00"), "unexpected PEM block 'CERTIFICATE'"),
        (OPENSSL_PKCS8.replace(b"KEY-----\n", b"KEY-----\nComment: x\n\n", 1), "PEM headers"),
    ],
    ids=["der", "empty", "base64", "end-label", "no-end", "two-keys", "public", "cert", "header"],
)
def test_bad_private_pem_is_refused(data, message):
    """PEM framing faults are reported as such, not as DER errors."""
    with pytest.raises(KeyFileError, match=message):
        keyfile.load_sm2_private_key(data)


@pytest.mark.parametrize(
    "data,message",
    [
        (pem("PUBLIC KEY", spki(b"\x02" + POINT[1:33])), "compressed public points are not supported"),
        (pem("PUBLIC KEY", spki(POINT[:-1])), "64 bytes, expected the 65-byte point"),
        (pem("PUBLIC KEY", spki(POINT[:-1] + bytes([POINT[-1] ^ 1]))), "not a point on the SM2 curve"),
        (pem("PUBLIC KEY", spki(unused=4)), "4 unused bits"),
        (pem("PUBLIC KEY", spki(curve=OID_P256)), r"1\.2\.840\.10045\.3\.1\.7"),
        (pem("PUBLIC KEY", spki() + b"\x00"), "trailing"),
        (pem("PUBLIC KEY", spki()[:-1]), "claims"),
        (OPENSSL_PKCS8, "holds a private key where a PUBLIC KEY was expected"),
        (pem("CERTIFICATE", b"\x30\x00"), "holds a CERTIFICATE"),
        (OPENSSL_SPKI + OPENSSL_SPKI, "expected one PUBLIC KEY block"),
    ],
    ids=["compressed", "short-point", "off-curve", "unused-bits", "p256", "trailing", "truncated",
         "private", "certificate", "two"],
)
def test_bad_public_key_is_refused(data, message):
    """SubjectPublicKeyInfo faults (point form, curve, framing) raise KeyFileError naming them."""
    with pytest.raises(KeyFileError, match=message):
        keyfile.load_sm2_public_key(data)


def test_source_name_starts_error_messages():
    """The caller's source name (a file path, say) leads the message, so operators know which file."""
    with pytest.raises(KeyFileError, match=r"^/etc/gw/bank\.key: "):
        keyfile.load_sm2_private_key(OPENSSL_SPKI, source="/etc/gw/bank.key")


# --- files and their modes ------------------------------------------------------------------

@pytest.fixture
def key() -> sm.SM2PrivateKey:
    return keyfile.load_sm2_private_key(OPENSSL_PKCS8)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_key_file_written_0600_even_with_open_umask(tmp_path, key):
    """write_private_key_file gives mode 0600 regardless of a permissive umask, and reads back."""
    path = tmp_path / "bank.key"
    old = os.umask(0)
    try:
        keyfile.write_private_key_file(path, key)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert path.read_bytes() == OPENSSL_PKCS8
    assert keyfile.read_private_key_file(path).secret == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_private_key_file_open_to_group_or_others_is_refused(tmp_path, key, mode):
    """A private key readable or writable by group or others is refused, naming the path, mode and chmod fix."""
    path = tmp_path / "bank.key"
    keyfile.write_private_key_file(path, key)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        keyfile.read_private_key_file(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"mode {mode:04o}" in msg
    assert f"chmod 600 {path}" in msg


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_owner_only_is_accepted(tmp_path, key, mode):
    """Modes 0600 and 0400 are accepted."""
    path = tmp_path / "bank.key"
    keyfile.write_private_key_file(path, key)
    os.chmod(path, mode)
    assert keyfile.read_private_key_file(path).secret == SECRET


def test_mode_is_checked_on_the_symlink_target(tmp_path, key):
    """A 0600 symlink cannot launder a 0644 key: the file actually opened is checked."""
    target = tmp_path / "real.key"
    keyfile.write_private_key_file(target, key)
    os.chmod(target, 0o644)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="0644"):
        keyfile.read_private_key_file(link)


def test_write_refuses_existing_file_unless_overwrite(tmp_path, key):
    """An existing key is never clobbered by default; overwrite=True replaces it atomically at 0600."""
    path = tmp_path / "bank.key"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="already exists"):
        keyfile.write_private_key_file(path, key)
    assert path.read_bytes() == b"old"
    keyfile.write_private_key_file(path, key, overwrite=True)
    assert path.read_bytes() == OPENSSL_PKCS8
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.key"]  # no temporary left behind


def test_public_key_file_round_trip(tmp_path, key):
    """write_public_key_file writes openssl's SPKI bytes at 0644; read_public_key_file reads it at any mode."""
    path = tmp_path / "bank.pub"
    keyfile.write_public_key_file(path, key.public_key)
    assert mode_of(path) == 0o644
    assert path.read_bytes() == OPENSSL_SPKI
    os.chmod(path, 0o666)
    assert keyfile.read_public_key_file(path) == key.public_key


def test_written_modes_are_exact_under_a_narrow_umask(tmp_path, key):
    """Under umask 0277 the files still get exactly 0600 and 0644, not whatever the umask leaves."""
    old = os.umask(0o277)
    try:
        keyfile.write_private_key_file(tmp_path / "k", key)
        keyfile.write_public_key_file(tmp_path / "p", key.public_key)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k") == 0o600
    assert mode_of(tmp_path / "p") == 0o644


def test_file_errors_name_the_path(tmp_path):
    """Missing file, a directory, an oversized file and bad content each raise KeyFileError naming the path."""
    missing = tmp_path / "nope.key"
    with pytest.raises(KeyFileError, match=f"{missing}: cannot open"):
        keyfile.read_private_key_file(missing)
    with pytest.raises(KeyFileError, match="not a regular file"):
        keyfile.read_public_key_file(tmp_path)
    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * (keyfile.MAX_KEY_FILE_SIZE + 1))
    with pytest.raises(KeyFileError, match="larger than"):
        keyfile.read_public_key_file(big)
    bad = tmp_path / "bad.key"
    bad.write_bytes(OPENSSL_SPKI)
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match=f"^{bad}: holds a PUBLIC KEY"):
        keyfile.read_private_key_file(bad)
