"""protocols.sm and protocols.keyfile cross-checked against the `openssl` 3 command line.

OpenSSL is an independent implementation of SM2/SM3/SM4, so agreement in both
directions (our output read by openssl, openssl's output read by us) catches
encoding and Z_A mistakes that self-round-trips cannot. Without openssl these
tests are skipped locally, but fail when the CI environment variable is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from protocols import keyfile, sm

UID = b"1234567812345678"
DISTID = ["-pkeyopt", "distid:" + UID.decode()]


def _openssl_unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"openssl cross-checks cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def openssl() -> str:
    """Path of an openssl binary that does SM2/SM3/SM4."""
    path = shutil.which("openssl")
    if path is None:
        _openssl_unavailable("the openssl command is not installed")
    probe = subprocess.run(
        [path, "dgst", "-sm3"], input=b"abc", capture_output=True, check=False
    )
    if probe.returncode != 0 or b"66c7f0f462eeedd9d1f2d46bdc10e4e2" not in probe.stdout:
        _openssl_unavailable(f"{path} does not do SM3: {probe.stderr.decode(errors='replace')}")
    return path


def run(openssl: str, *args: str | os.PathLike, input: bytes | None = None) -> bytes:
    """Run openssl, failing the test with its stderr if it exits non-zero."""
    p = subprocess.run([openssl, *map(str, args)], input=input, capture_output=True, check=False)
    if p.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, args))} failed: {p.stderr.decode(errors='replace')}")
    return p.stdout


def openssl_ok(openssl: str, *args: str | os.PathLike) -> bool:
    """Whether openssl exits 0 (for verify/decrypt outcomes that the test expects to go either way)."""
    return subprocess.run([openssl, *map(str, args)], capture_output=True, check=False).returncode == 0


def write_key(tmp_path: Path, key: sm.SM2PrivateKey, name: str = "ours") -> tuple[Path, Path]:
    priv, pub = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    keyfile.write_private_key_file(priv, key)
    keyfile.write_public_key_file(pub, key.public_key)
    return priv, pub


@pytest.fixture(scope="module")
def openssl_key(openssl, tmp_path_factory) -> tuple[Path, Path]:
    """An SM2 key pair made by `openssl genpkey`, as (private PEM path, public PEM path)."""
    d = tmp_path_factory.mktemp("openssl-key")
    priv, pub = d / "theirs.key", d / "theirs.pub"
    run(openssl, "genpkey", "-algorithm", "SM2", "-out", priv)
    run(openssl, "pkey", "-in", priv, "-pubout", "-out", pub)
    return priv, pub


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


# --- keys ---------------------------------------------------------------------------

def test_openssl_genpkey_key_loads_and_dumps_back_byte_for_byte(openssl_key):
    """Our loader reads openssl's PKCS#8 and SPKI files, and our dumpers write the identical bytes."""
    priv_path, pub_path = openssl_key
    priv_pem, pub_pem = priv_path.read_bytes(), pub_path.read_bytes()
    key = keyfile.load_sm2_private_key(priv_pem)
    pub = keyfile.load_sm2_public_key(pub_pem)
    assert key.public_key == pub
    assert keyfile.dump_sm2_private_key(key) == priv_pem
    assert keyfile.dump_sm2_public_key(pub) == pub_pem


def test_our_key_file_reads_in_openssl(openssl, tmp_path):
    """openssl reads our PKCS#8 file, derives our public key from it, and sees our secret d."""
    key = sm.generate_keypair()
    priv, pub = write_key(tmp_path, key)
    assert run(openssl, "pkey", "-in", priv, "-pubout") == pub.read_bytes()
    assert run(openssl, "pkey", "-pubin", "-in", pub, "-pubout") == pub.read_bytes()
    text = run(openssl, "pkey", "-in", priv, "-noout", "-text").decode()
    priv_hex = "".join(
        line.strip().replace(":", "")
        for line in text.split("priv:")[1].split("pub:")[0].splitlines()
    )
    assert int(priv_hex, 16) == int.from_bytes(key.secret, "big")
    assert "ASN1 OID: SM2" in text


def test_openssl_sec1_and_ecparam_files_load(openssl, openssl_key, tmp_path):
    """`openssl ec` SEC1 ("SM2 PRIVATE KEY", relabelled "EC PRIVATE KEY") and `ecparam -genkey` files load."""
    priv_path, pub_path = openssl_key
    expected = keyfile.load_sm2_public_key(pub_path.read_bytes())
    sec1 = run(openssl, "ec", "-in", priv_path)
    assert b"-----BEGIN SM2 PRIVATE KEY-----" in sec1
    assert keyfile.load_sm2_private_key(sec1).public_key == expected
    relabelled = sec1.replace(b"SM2 PRIVATE KEY", b"EC PRIVATE KEY")
    assert keyfile.load_sm2_private_key(relabelled).public_key == expected
    # openssl reads the relabelled SEC1 too, so both labels really are one format.
    (tmp_path / "ec.pem").write_bytes(relabelled)
    assert run(openssl, "pkey", "-in", tmp_path / "ec.pem", "-pubout") == pub_path.read_bytes()
    gen = run(openssl, "ecparam", "-name", "SM2", "-genkey")
    assert b"SM2 PARAMETERS" in gen
    key = keyfile.load_sm2_private_key(gen)
    (tmp_path / "gen.pem").write_bytes(gen)
    assert run(openssl, "pkey", "-in", tmp_path / "gen.pem", "-pubout") == keyfile.dump_sm2_public_key(key.public_key)


def test_openssl_encrypted_pkcs8_needs_its_passphrase(openssl, openssl_key):
    """A password-protected PKCS#8 from `openssl pkcs8 -topk8` loads with its passphrase and is
    refused without one (the full matrix is in test_keystore.py)."""
    enc = run(openssl, "pkcs8", "-topk8", "-in", openssl_key[0], "-passout", "pass:secret")
    assert b"ENCRYPTED PRIVATE KEY" in enc
    plain = keyfile.load_sm2_private_key(Path(openssl_key[0]).read_bytes())
    assert keyfile.load_sm2_private_key(enc, passphrase=b"secret") == plain
    with pytest.raises(keyfile.KeyFileError, match="no passphrase was given"):
        keyfile.load_sm2_private_key(enc)


def test_openssl_p256_key_is_refused_naming_the_curve(openssl):
    """An openssl P-256 key is refused with the curve OID it carries, not mistaken for SM2."""
    pem = run(openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    with pytest.raises(keyfile.KeyFileError, match=r"1\.2\.840\.10045\.3\.1\.7"):
        keyfile.load_sm2_private_key(pem)


# --- signatures ------------------------------------------------------------------------

def test_we_sign_openssl_verifies(openssl, tmp_path):
    """Our DER SM2-with-SM3 signature under ID 1234567812345678 verifies in `openssl pkeyutl`; a tampered one does not."""
    key = sm.generate_keypair()
    _, pub = write_key(tmp_path, key)
    msg = tmp_path / "msg"
    msg.write_bytes(b"<Document>pay 12.34 yuan</Document>\n")
    sig = tmp_path / "sig"
    sig.write_bytes(sm.sm2_sign(key, msg.read_bytes(), UID, der=True))
    verify = ["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sm3", *DISTID,
              "-in", msg, "-sigfile", sig]
    assert openssl_ok(openssl, *verify)
    sig.write_bytes(flip(sig.read_bytes(), 10))
    assert not openssl_ok(openssl, *verify)


def test_openssl_signs_we_verify(openssl, openssl_key, tmp_path):
    """openssl's DER signature verifies with sm2_verify(der=True); tampered signature or message does not."""
    priv, pub_path = openssl_key
    pub = keyfile.read_public_key_file(pub_path)
    data = b"reconciliation file body\n" * 10
    msg = tmp_path / "msg"
    msg.write_bytes(data)
    sig = run(openssl, "pkeyutl", "-sign", "-inkey", priv, "-rawin", "-digest", "sm3", *DISTID, "-in", msg)
    assert sm.sm2_verify(pub, data, sig, UID, der=True)
    assert not sm.sm2_verify(pub, data, flip(sig, len(sig) - 3), UID, der=True)
    assert not sm.sm2_verify(pub, data + b"x", sig, UID, der=True)


def test_openssl_default_signer_id_is_not_the_standard_one(openssl, openssl_key, tmp_path):
    """Without -pkeyopt distid, openssl 3.0 signs under an empty ID, which our default-ID verify rejects."""
    priv, pub_path = openssl_key
    pub = keyfile.read_public_key_file(pub_path)
    msg = tmp_path / "msg"
    msg.write_bytes(b"hello\n")
    sig = run(openssl, "pkeyutl", "-sign", "-inkey", priv, "-rawin", "-digest", "sm3", "-in", msg)
    assert not sm.sm2_verify(pub, b"hello\n", sig, der=True)
    assert sm.sm2_verify(pub, b"hello\n", sig, b"", der=True)


def test_published_vector_key_signature_verifies_in_openssl(openssl, tmp_path):
    """The GM/T 0003.5 example signature (fixed k) verifies in openssl under the example key."""
    key = sm.SM2PrivateKey(bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"))
    _, pub = write_key(tmp_path, key)
    msg, sig = tmp_path / "msg", tmp_path / "sig"
    msg.write_bytes(b"message digest")
    sig.write_bytes(sm.sm2_sign(key, b"message digest", UID, der=True,
                                k=0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21))
    assert openssl_ok(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-digest", "sm3",
                      *DISTID, "-in", msg, "-sigfile", sig)


FILE_SIZE = 4 * 1024 * 1024 + 123  # a few MB, not a multiple of the chunk size


def _stream_e(pub: sm.SM2PublicKey, path: Path) -> bytes:
    h = sm.SM2DigestHasher(pub, UID)
    with path.open("rb") as f:
        while chunk := f.read(65536):
            h.update(chunk)
    return h.e()


def test_file_signature_streaming_both_ways(openssl, openssl_key, tmp_path):
    """A 4 MB file signed by streaming SM2DigestHasher verifies in openssl, and openssl's signature of it verifies here."""
    big = tmp_path / "batch.bin"
    big.write_bytes(os.urandom(FILE_SIZE))
    # ours -> openssl
    key = sm.generate_keypair()
    _, our_pub = write_key(tmp_path, key)
    sig = tmp_path / "batch.sig"
    sig.write_bytes(sm.sm2_sign_digest(key, _stream_e(key.public_key, big), der=True))
    verify = ["pkeyutl", "-verify", "-pubin", "-inkey", our_pub, "-rawin", "-digest", "sm3", *DISTID,
              "-in", big, "-sigfile", sig]
    assert openssl_ok(openssl, *verify)
    # openssl -> ours
    priv, their_pub_path = openssl_key
    their_pub = keyfile.read_public_key_file(their_pub_path)
    their_sig = run(openssl, "pkeyutl", "-sign", "-inkey", priv, "-rawin", "-digest", "sm3", *DISTID, "-in", big)
    assert sm.sm2_verify_digest(their_pub, _stream_e(their_pub, big), their_sig, der=True)
    # one flipped byte deep inside the file breaks both
    with big.open("r+b") as f:
        f.seek(FILE_SIZE // 2)
        b = f.read(1)
        f.seek(FILE_SIZE // 2)
        f.write(bytes([b[0] ^ 0x01]))
    assert not openssl_ok(openssl, *verify)
    assert not sm.sm2_verify_digest(their_pub, _stream_e(their_pub, big), their_sig, der=True)


# --- SM3 / SM4 ----------------------------------------------------------------------------

def test_sm3_of_file_matches_openssl_dgst(openssl, tmp_path):
    """SM3Hasher over a 1 MB file in chunks equals `openssl dgst -sm3`."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(1024 * 1024 + 17))
    h = sm.SM3Hasher()
    with path.open("rb") as f:
        while chunk := f.read(10000):
            h.update(chunk)
    out = run(openssl, "dgst", "-sm3", "-r", path).decode()
    assert out.split()[0] == h.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 100_003])
def test_sm4_cbc_matches_openssl_enc_both_ways(openssl, size):
    """sm4_cbc_encrypt equals `openssl enc -sm4-cbc` (PKCS#7) byte for byte, and each decrypts the other's output."""
    key, iv = os.urandom(16), os.urandom(16)
    plain = os.urandom(size)
    args = ["-K", key.hex(), "-iv", iv.hex()]
    theirs = run(openssl, "enc", "-sm4-cbc", *args, input=plain)
    ours = sm.sm4_cbc_encrypt(key, iv, plain)
    assert ours == theirs
    assert run(openssl, "enc", "-d", "-sm4-cbc", *args, input=ours) == plain
    assert sm.sm4_cbc_decrypt(key, iv, theirs) == plain


def test_sm4_cbc_tampered_openssl_ciphertext_is_refused(openssl):
    """Flipping bit 0 of the next-to-last ciphertext block turns openssl's 14-byte padding invalid: DecryptionError."""
    key, iv = bytes(range(16)), bytes(16)
    plain = b"account 6222020200112233445 amount 100" * 3  # 114 bytes: 14 bytes of 0x0e padding
    theirs = run(openssl, "enc", "-sm4-cbc", "-K", key.hex(), "-iv", iv.hex(), input=plain)
    assert sm.sm4_cbc_decrypt(key, iv, theirs) == plain
    # In CBC that bit lands on the last pad byte, which then claims 15 bytes of 0x0f.
    with pytest.raises(sm.DecryptionError, match="padding"):
        sm.sm4_cbc_decrypt(key, iv, flip(theirs, len(theirs) - 17))


# --- SM2 encryption -------------------------------------------------------------------------

def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _read_tlv(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    assert data[pos] == tag, f"expected tag {tag:#x} at {pos}, got {data[pos]:#x}"
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    return data[pos:pos + length], pos + length


def sm2_ciphertext_to_der(ct: bytes) -> bytes:
    """04||x||y||C3||C2 -> the GM/T 0009 SM2Cipher SEQUENCE {x INTEGER, y INTEGER, C3 OCTET STRING, C2 OCTET STRING}."""
    x, y, c3, c2 = ct[1:33], ct[33:65], ct[65:97], ct[97:]

    def integer(b: bytes) -> bytes:
        v = int.from_bytes(b, "big")
        return _tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))

    return _tlv(0x30, integer(x) + integer(y) + _tlv(0x04, c3) + _tlv(0x04, c2))


def sm2_ciphertext_from_der(der: bytes) -> bytes:
    """The inverse of sm2_ciphertext_to_der: openssl's DER ciphertext as 04||x||y||C3||C2."""
    body, end = _read_tlv(der, 0, 0x30)
    assert end == len(der)
    x, pos = _read_tlv(body, 0, 0x02)
    y, pos = _read_tlv(body, pos, 0x02)
    c3, pos = _read_tlv(body, pos, 0x04)
    c2, pos = _read_tlv(body, pos, 0x04)
    assert pos == len(body)
    coord = lambda b: int.from_bytes(b, "big").to_bytes(32, "big")  # noqa: E731
    return b"\x04" + coord(x) + coord(y) + c3 + c2


@pytest.mark.parametrize("plain", [b"k", b"SM4 session key 0123456789abcdef", os.urandom(300)],
                         ids=["1-byte", "key-sized", "300-bytes"])
def test_openssl_encrypts_we_decrypt(openssl, openssl_key, tmp_path, plain):
    """`openssl pkeyutl -encrypt` output, converted from DER, decrypts with sm2_decrypt in both orders."""
    priv_path, pub_path = openssl_key
    key = keyfile.read_private_key_file(priv_path)
    msg = tmp_path / "plain"
    msg.write_bytes(plain)
    der = run(openssl, "pkeyutl", "-encrypt", "-pubin", "-inkey", pub_path, "-in", msg)
    ct = sm2_ciphertext_from_der(der)
    assert sm.sm2_decrypt(key, ct) == plain
    c2c3 = ct[:65] + ct[97:] + ct[65:97]
    assert sm.sm2_decrypt(key, c2c3, order=sm.C1C2C3) == plain


def test_openssl_ciphertext_tampered_is_refused(openssl, openssl_key, tmp_path):
    """A flipped bit in C2 or C3 of openssl's ciphertext raises DecryptionError."""
    priv_path, pub_path = openssl_key
    key = keyfile.read_private_key_file(priv_path)
    msg = tmp_path / "plain"
    msg.write_bytes(b"session key material")
    ct = sm2_ciphertext_from_der(run(openssl, "pkeyutl", "-encrypt", "-pubin", "-inkey", pub_path, "-in", msg))
    for index in (70, len(ct) - 1):  # inside C3, inside C2
        with pytest.raises(sm.DecryptionError):
            sm.sm2_decrypt(key, flip(ct, index))


def test_we_encrypt_openssl_decrypts(openssl, tmp_path):
    """sm2_encrypt output, converted to DER, decrypts in `openssl pkeyutl -decrypt`; tampered C2 is refused by openssl."""
    key = sm.generate_keypair()
    priv, _ = write_key(tmp_path, key)
    plain = b"SM4 session key 0123456789abcdef"
    ct_path = tmp_path / "ct.der"
    ct = sm.sm2_encrypt(key.public_key, plain)
    ct_path.write_bytes(sm2_ciphertext_to_der(ct))
    assert run(openssl, "pkeyutl", "-decrypt", "-inkey", priv, "-in", ct_path) == plain
    ct_path.write_bytes(sm2_ciphertext_to_der(flip(ct, len(ct) - 1)))
    assert not openssl_ok(openssl, "pkeyutl", "-decrypt", "-inkey", priv, "-in", ct_path)
