"""Keys at rest: encrypted PKCS#8 (SM2 and RSA), passphrase sources, file modes, certificates, rotation.

Every key is generated here; the SM2 encrypted PKCS#8 is cross-checked with
the `openssl` command line in both directions (OpenSSL 3.0 writes PBES2 with
PBKDF2-HMAC-SHA256 and AES-256-CBC by default, HMAC-SHA1 on request).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from gateway import keystore
from gateway.keystore import CertRotation, KeystoreError, Passphrase
from protocols import keyfile, sm
from protocols.keyfile import KeyFileError

NOW = dt.datetime(2026, 6, 1, 4, 0, tzinfo=dt.timezone.utc)   # 12:00 Beijing time
FAST = 100_000   # the floor for written keys; keeps the suite quick


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("openssl command line missing: CI must install it (tests/services.sh)")
        pytest.skip("openssl command line not installed")
    return path


def run(*args: str | os.PathLike, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], input=input, capture_output=True, check=check)


def private_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_cert(key: rsa.RSAPrivateKey, cn: str, not_before: dt.datetime, not_after: dt.datetime,
              *, issuer_key: rsa.RSAPrivateKey | None = None, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key or key, hashes.SHA256()))


def cert_file(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- encrypted PKCS#8 for SM2 ------------------------------------------------------------

def test_sm2_encrypted_pkcs8_round_trip_with_fresh_salt_and_iv():
    """A key written under a passphrase reads back equal; two writes differ (random salt and IV);
    the written parameters are PBKDF2-HMAC-SHA256, the default 600,000 iterations, AES-256-CBC."""
    key = sm.generate_keypair()
    a = keyfile.dump_sm2_private_key(key, b"pass phrase")
    b = keyfile.dump_sm2_private_key(key, b"pass phrase")
    assert a.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n") and a != b
    assert keyfile.load_sm2_private_key(a, passphrase=b"pass phrase") == key
    info = keyfile.load_private_key_info(b, passphrase=b"pass phrase")
    assert info.encryption == "PBES2 PBKDF2-hmacWithSHA256 600000 iterations, aes-256-cbc"
    assert keyfile.PBKDF2_ITERATIONS >= 100_000


def test_too_few_iterations_or_empty_passphrase_are_not_written():
    """Writing refuses fewer than 100,000 PBKDF2 iterations and an empty passphrase."""
    key = sm.generate_keypair()
    with pytest.raises(KeyFileError, match="too few"):
        keyfile.dump_sm2_private_key(key, b"pw", iterations=2048)
    with pytest.raises(KeyFileError, match="empty passphrase"):
        keyfile.dump_sm2_private_key(key, b"")


def test_wrong_or_missing_passphrase_is_a_clear_error():
    """A wrong passphrase and a missing one each give a KeyFileError saying so, naming the source."""
    pem = keyfile.dump_sm2_private_key(sm.generate_keypair(), b"right", iterations=FAST)
    for _ in range(3):   # a wrong passphrase may still give valid padding; the message is the same
        with pytest.raises(KeyFileError, match=r"^ours\.pem: wrong passphrase"):
            keyfile.load_sm2_private_key(pem, passphrase=os.urandom(8), source="ours.pem")
    with pytest.raises(KeyFileError, match=r"^ours\.pem: .*encrypted.*no passphrase was given"):
        keyfile.load_sm2_private_key(pem, source="ours.pem")


def test_tampered_ciphertext_is_refused_not_misparsed():
    """Flipping a byte of the encrypted data yields the wrong-passphrase/damaged error, not a stack trace."""
    key = sm.generate_keypair()
    pem = keyfile.dump_sm2_private_key(key, b"pw", iterations=FAST)
    der = bytearray(keyfile._pem_blocks(pem, "t")[0][1])
    der[-20] ^= 0x01
    bad = keyfile._pem("ENCRYPTED PRIVATE KEY", bytes(der))
    with pytest.raises(KeyFileError, match="wrong passphrase .*damaged"):
        keyfile.load_sm2_private_key(bad, passphrase=b"pw")


def test_openssl_encrypted_sm2_keys_are_read(openssl, tmp_path):
    """`openssl genpkey -algorithm SM2 -aes-256-cbc` (HMAC-SHA256) and `openssl pkcs8 -v2 aes-128-cbc
    -v2prf hmacWithSHA1` / aes-192-cbc keys all decrypt to the key openssl itself decrypts."""
    enc = tmp_path / "enc.pem"
    run(openssl, "genpkey", "-algorithm", "SM2", "-aes-256-cbc", "-pass", "pass:X", "-out", enc)
    plain = run(openssl, "pkey", "-in", enc, "-passin", "pass:X").stdout
    expected = keyfile.load_sm2_private_key(plain)
    assert keyfile.load_sm2_private_key(enc.read_bytes(), passphrase=b"X") == expected
    for cipher, prf, label in (("aes-128-cbc", "hmacWithSHA1", "hmacWithSHA1"),
                               ("aes-192-cbc", "hmacWithSHA256", "hmacWithSHA256")):
        other = run(openssl, "pkcs8", "-topk8", "-v2", cipher, "-v2prf", prf, "-in", enc,
                    "-passin", "pass:X", "-passout", "pass:Y").stdout
        info = keyfile.load_private_key_info(other, passphrase=b"Y")
        assert label in info.encryption and cipher in info.encryption
        assert keyfile.load_sm2_private_key(other, passphrase=b"Y") == expected


def test_openssl_unsupported_prf_is_named(openssl, tmp_path):
    """A PBES2 key with a PRF we do not take (hmacWithSHA512) is refused naming it."""
    plain = tmp_path / "plain.pem"
    run(openssl, "genpkey", "-algorithm", "SM2", "-out", plain)
    other = run(openssl, "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA512", "-in", plain,
                "-passout", "pass:Y").stdout
    with pytest.raises(KeyFileError, match="hmacWithSHA512"):
        keyfile.load_sm2_private_key(other, passphrase=b"Y")


def test_ours_is_read_by_openssl(openssl, tmp_path):
    """openssl decrypts our encrypted SM2 key with -passin and derives our public key; a wrong pass fails."""
    key = sm.generate_keypair()
    path = private_file(tmp_path / "ours.pem", keyfile.dump_sm2_private_key(key, b"X"))
    pub = run(openssl, "pkey", "-in", path, "-passin", "pass:X", "-pubout").stdout
    assert keyfile.load_sm2_public_key(pub) == key.public_key
    assert run(openssl, "pkey", "-in", path, "-passin", "pass:nope", "-noout", check=False).returncode != 0


# --- keystore.load_private_key -------------------------------------------------------------

def test_group_readable_key_is_refused_naming_file_and_mode(tmp_path):
    """A private key with mode 0640 (or 0604) is refused before it is read, naming the file and its mode."""
    key = sm.generate_keypair()
    for mode in (0o640, 0o604, 0o620):
        path = private_file(tmp_path / f"k{mode:o}.pem", keyfile.dump_sm2_private_key(key, b"pw", iterations=FAST),
                            mode)
        with pytest.raises(KeystoreError, match=rf"^{path}: .*mode {mode:04o}.*chmod 600"):
            keystore.load_private_key(path, b"pw")


def test_keystore_loads_sm2_and_names_the_file_on_passphrase_errors(tmp_path):
    """load_private_key returns the SM2 key; a wrong or missing passphrase names the file (no traceback text)."""
    key = sm.generate_keypair()
    path = private_file(tmp_path / "gateway_sm2.pem", keyfile.dump_sm2_private_key(key, b"pw", iterations=FAST))
    assert keystore.load_private_key(path, b"pw") == key
    with pytest.raises(KeystoreError, match=rf"^{path}: wrong passphrase"):
        keystore.load_private_key(path, b"px")
    with pytest.raises(KeystoreError, match=rf"^{path}: .*no passphrase was given.*passphrase_file"):
        keystore.load_private_key(path, None)


def test_rsa_encrypted_key_round_trip(tmp_path, rsa_key, openssl):
    """An RSA key written encrypted reads back with the same numbers, through our loader, through
    `cryptography` and through `openssl pkey`; the wrong passphrase is refused."""
    pem = keystore.dump_private_key(rsa_key, b"pw", iterations=FAST)
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    path = private_file(tmp_path / "gateway_rsa.pem", pem)
    back = keystore.load_private_key(path, Passphrase.from_env("PW", {"PW": "pw"}))
    assert back.private_numbers() == rsa_key.private_numbers()
    assert serialization.load_pem_private_key(pem, b"pw").private_numbers() == rsa_key.private_numbers()
    pub = run(openssl, "pkey", "-in", path, "-passin", "pass:pw", "-pubout").stdout
    assert serialization.load_pem_public_key(pub).public_numbers() == rsa_key.public_key().public_numbers()
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        keystore.load_private_key(path, b"nope")


def test_legacy_rsa_pem_and_other_algorithms(tmp_path, rsa_key):
    """Traditional "RSA PRIVATE KEY" PEM (encrypted or not) loads; an Ed25519 or 1024-bit RSA key is refused."""
    trad = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.BestAvailableEncryption(b"pw"))
    path = private_file(tmp_path / "trad.pem", trad)
    assert keystore.load_private_key(path, b"pw").private_numbers() == rsa_key.private_numbers()
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        keystore.load_private_key(path, b"px")
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(KeystoreError, match=r"1\.3\.101\.112 \(Ed25519\) is neither SM2 nor RSA"):
        keystore.load_private_key(private_file(tmp_path / "ed.pem", ed), None)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeystoreError, match="1024 bits, at least 2048"):
        keystore.load_private_key(private_file(tmp_path / "small.pem", keystore.dump_private_key(
            small, b"pw", iterations=FAST)), b"pw")


# --- passphrases ------------------------------------------------------------------------------

def test_passphrase_from_file_env_and_config(tmp_path):
    """The file's first line is the passphrase (as openssl -pass file: reads it); the env source
    reads the variable once; repr never shows it; an open file, a missing variable, an empty value
    and both sources at once are refused."""
    f = private_file(tmp_path / "pass", b"correct horse\nsecond line ignored\n")
    p = Passphrase.from_file(f)
    assert p.bytes() == b"correct horse" and "correct" not in repr(p) and str(f) in repr(p)
    env = {"GW_PASS": "from env"}
    e = Passphrase.from_env("GW_PASS", env)
    env["GW_PASS"] = "changed"
    assert e.bytes() == b"from env"
    assert Passphrase.from_config({"passphrase_file": "pass"}, tmp_path).bytes() == b"correct horse"
    assert Passphrase.from_config({}, tmp_path) is None
    with pytest.raises(KeystoreError, match="not both"):
        Passphrase.from_config({"passphrase_file": "pass", "passphrase_env": "X"}, tmp_path)
    with pytest.raises(KeystoreError, match="NOPE .*not set"):
        Passphrase.from_env("NOPE", {})
    with pytest.raises(KeystoreError, match="empty"):
        Passphrase.from_file(private_file(tmp_path / "empty", b"\n"))
    f.chmod(0o644)
    with pytest.raises(KeystoreError, match=rf"^{f}: .*mode 0644"):
        Passphrase.from_file(f)


# --- certificates --------------------------------------------------------------------------------

def test_fingerprint_matches_openssl(tmp_path, rsa_key, openssl):
    """fingerprint() is the SHA-256 colon hex that `openssl x509 -fingerprint -sha256` prints."""
    cert = make_cert(rsa_key, "bank", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=90))
    path = cert_file(tmp_path / "c.pem", cert)
    out = run(openssl, "x509", "-in", path, "-noout", "-fingerprint", "-sha256").stdout.decode()
    assert out.strip().split("=", 1)[1] == keystore.fingerprint(keystore.load_certificate(path))
    der = tmp_path / "c.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert keystore.load_certificate(der) == cert
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(KeystoreError, match=r"junk\.pem: not a valid X\.509 certificate"):
        keystore.load_certificate(tmp_path / "junk.pem")


def test_expiry_warnings(rsa_key):
    """Within warn_days a certificate is warned (days left, 到期), past its end it is expired, far off it is silent."""
    soon = make_cert(rsa_key, "soon", NOW - dt.timedelta(days=300), NOW + dt.timedelta(days=10, hours=1))
    gone = make_cert(rsa_key, "gone", NOW - dt.timedelta(days=300), NOW - dt.timedelta(days=1))
    fine = make_cert(rsa_key, "fine", NOW - dt.timedelta(days=300), NOW + dt.timedelta(days=40))
    w = keystore.expiry_warnings({"a.pem": soon, "b.pem": gone, "c.pem": fine}, NOW)
    assert [(x.name, x.expired, x.days_left) for x in w] == [("a.pem", False, 10), ("b.pem", True, -1)]
    assert w[0].message.startswith("a.pem: 证书将于 2026-06-11 到期") and "EXPIRED" in w[1].message
    assert keystore.expiry_warnings([fine], NOW, warn_days=45)[0].name == "CN=fine"


def test_cert_rotation_accepts_previous_inbound_until_its_end_date(tmp_path, rsa_key):
    """The previous bank certificate verifies inbound through the end of bank_previous_until (Beijing
    time) and never outbound; previous without an end date is refused."""
    new = cert_file(tmp_path / "bank_cert.pem", make_cert(rsa_key, "new", NOW, NOW + dt.timedelta(days=365)))
    old = cert_file(tmp_path / "bank_cert.previous.pem",
                    make_cert(rsa_key, "old", NOW - dt.timedelta(days=365), NOW + dt.timedelta(days=30)))
    rot = CertRotation(str(new), str(old), dt.date(2026, 6, 10))
    cn = [c.subject.rfc4514_string() for c in rot.acceptable(NOW)]
    assert cn == ["CN=new", "CN=old"] and rot.outbound().subject.rfc4514_string() == "CN=new"
    last_minute = dt.datetime(2026, 6, 10, 15, 59, tzinfo=dt.timezone.utc)   # 23:59 on the 10th, Beijing
    assert len(rot.acceptable(last_minute)) == 2
    assert len(rot.acceptable(last_minute + dt.timedelta(minutes=1))) == 1
    assert len(CertRotation(str(new)).acceptable(NOW)) == 1
    with pytest.raises(KeystoreError, match="go together"):
        CertRotation(str(new), str(old), None)


def test_subject_parsing():
    """--subject keeps the written RFC 4514 order, takes '\\,' in a value and refuses unknown attributes."""
    name = keystore.parse_subject("CN=gateway,O=某市财政局\\, 惠民,C=CN")
    assert name.rfc4514_string() == "CN=gateway,O=某市财政局\\, 惠民,C=CN"
    with pytest.raises(KeystoreError, match="unknown attribute 'XX'"):
        keystore.parse_subject("XX=1")


def test_private_key_encrypted_tells_plain_from_encrypted_in_every_format(tmp_path):
    """private_key_encrypted (what allow_unencrypted is judged by) says True for encrypted PKCS#8 (SM2
    and RSA), legacy PEM and OpenSSH bcrypt, and False for each of them in clear."""
    sm2 = sm.generate_keypair()
    keyfile.write_private_key_file(tmp_path / "plain.pem", sm2)
    keyfile.write_private_key_file(tmp_path / "enc.pem", sm2, passphrase=b"pw")
    assert not keystore.private_key_encrypted((tmp_path / "plain.pem").read_bytes())
    assert keystore.private_key_encrypted((tmp_path / "enc.pem").read_bytes())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(b"pw")
    plain = serialization.NoEncryption()
    cases = [
        (rsa_key, serialization.PrivateFormat.PKCS8),
        (rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
        (ed, serialization.PrivateFormat.OpenSSH),
    ]
    for key, fmt in cases:
        assert not keystore.private_key_encrypted(key.private_bytes(serialization.Encoding.PEM, fmt, plain)), fmt
        assert keystore.private_key_encrypted(key.private_bytes(serialization.Encoding.PEM, fmt, enc)), fmt
