"""Time and peak RSS of writing, validating, reading, signing and verifying a big pain.001.

    .venv/bin/python bench/xmldsig_size.py [TRANSFERS]     (default 100000)

Each stage runs in its own process so each peak RSS is that stage's alone.
Prints one JSON object.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _identity(directory: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    with open(os.path.join(directory, "key.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(directory, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def stage(name: str, directory: str, n: int) -> dict:
    from protocols import iso20022 as I
    from protocols import xmldsig as D
    plain, signed = os.path.join(directory, "p.xml"), os.path.join(directory, "s.xml")
    key = open(os.path.join(directory, "key.pem"), "rb").read() if name in ("sign", "verify") else b""
    cert = open(os.path.join(directory, "cert.pem"), "rb").read() if name in ("sign", "verify") else b""
    t = time.perf_counter()
    if name == "write":
        header = I.PaymentInitiation("B1", "2026-11-28T10:00:00+08:00", n, 100 * n, "长丰县财政局", "补贴专户",
                                     "3400123", None, "ICBK", "2026-11-30", "B1")
        transfers = (I.CreditTransfer(f"B1-{i}", f"O1-{i}", 100, "张三", f"6222{i:012d}", "工商银行长丰支行",
                                      "340121199001011234", "耕地补贴") for i in range(1, n + 1))
        with open(plain, "wb") as f:
            I.write_pain001(f, header, transfers)
    elif name == "validate":
        I.validate(plain)
    elif name == "read":
        sum(1 for _ in I.read_pain001(plain)[1])
    elif name == "sign":
        D.sign_file(plain, signed, key, cert)
    elif name == "verify":
        D.verify_file(signed, [(cert, None)], datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc))
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        print(json.dumps(stage(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    result: dict = {"transfers": n}
    with tempfile.TemporaryDirectory() as directory:
        _identity(directory)
        for name in ("write", "validate", "read", "sign", "verify"):
            out = subprocess.run([sys.executable, __file__, "--stage", name, directory, str(n)],
                                 check=True, capture_output=True, text=True).stdout
            result[name] = json.loads(out)
        result["file_mb"] = round(os.path.getsize(os.path.join(directory, "p.xml")) / 2**20, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
