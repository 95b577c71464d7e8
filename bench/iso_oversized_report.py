"""Peak RSS of taking one oversized report from an iso20022 feed page, before and after the cap.

    .venv/bin/python bench/iso_oversized_report.py [MB]      (default 500)

The page `{"reports": [{"cursor", "type", "document"}], "next"}` holds one unsigned
pain.002 of MB megabytes (TxInfAndSts blocks), produced in 64 KiB chunks as a network
would deliver it. Each stage runs in its own process, so each peak RSS is its own:

- `before`: what the adapter did until now: the whole body collected and joined, json.loads,
  the document encoded, parsed whole (huge_tree) as the first check, then refused as unsigned.
- `after`: protocols.iso_feed.FeedPage with max_document_bytes 64 MiB: the document is
  refused while it arrives (only its head kept), and the adapter's judging of the refused
  report parses nothing.
- `unsigned_at_cap`: a document just under the cap (60 MB) reaches the signature check:
  the streaming Signature scan refuses it before any tree is built.
- `signed_20mb`: a signed 20 MB pain.002 (signed in a separate process first) verified
  whole, to show the multiple of the document's size a good signature check costs.

Prints one JSON object: megabytes of peak RSS and seconds per stage.
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

HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<Document xmlns="urn:iso:std:iso:20022:tech:xsd:'
        'pain.002.001.11"><CstmrPmtStsRpt><GrpHdr><MsgId>P2BENCH</MsgId><CreDtTm>2026-11-28T10:00:00'
        '+08:00</CreDtTm></GrpHdr><OrgnlGrpInfAndSts><OrgnlMsgId>B-P01</OrgnlMsgId><OrgnlMsgNmId>'
        'pain.001.001.10</OrgnlMsgNmId><GrpSts>ACSC</GrpSts></OrgnlGrpInfAndSts><OrgnlPmtInfAndSts>'
        '<OrgnlPmtInfId>B-P01/PAY</OrgnlPmtInfId>\n')
BLOCK = ('<TxInfAndSts><OrgnlInstrId>B-P01-{n}</OrgnlInstrId><OrgnlEndToEndId>O-{n}</OrgnlEndToEndId>'
         '<TxSts>ACSC</TxSts><AcctSvcrRef>C{n:010d}</AcctSvcrRef><OrgnlTxRef><Amt><InstdAmt Ccy="CNY">'
         '100.00</InstdAmt></Amt><CdtrAcct><Id><Othr><Id>6228480000000000001</Id></Othr></Id></CdtrAcct>'
         '</OrgnlTxRef></TxInfAndSts>\n')
TAIL = '</OrgnlPmtInfAndSts></CstmrPmtStsRpt></Document>\n'


def document_chunks(size: int):
    """The document's text in pieces of about 64 KiB, `size` bytes in all (about)."""
    yield HEAD
    out, n, total = [], 0, len(HEAD)
    while total < size:
        b = BLOCK.format(n=n)
        out.append(b)
        total += len(b)
        n += 1
        if len(out) == 200:
            yield "".join(out)
            out = []
    yield "".join(out) + TAIL


def page_chunks(size: int):
    """The JSON page's bytes, in chunks, with the document as a JSON string."""
    yield b'{"reports": [{"cursor": "1", "type": "pain.002.001.11", "document": "'
    for piece in document_chunks(size):
        yield json.dumps(piece, ensure_ascii=False)[1:-1].encode()
    yield b'"}], "next": "1"}'


def _now():
    return datetime.datetime(2026, 11, 28, tzinfo=datetime.timezone.utc)


def stage(name: str, size: int, directory: str) -> dict:
    from protocols import xmldsig
    t = time.monotonic()
    if name == "before":
        from lxml import etree
        body = b"".join(page_chunks(size))                 # _Capped: collected, then joined
        page = json.loads(body)
        del body
        doc = page["reports"][0]["document"].encode("utf-8")
        del page
        etree.fromstring(doc, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True))
        try:
            xmldsig.verify_bytes(doc, [(open(os.path.join(directory, "cert.pem"), "rb").read(), None)], _now())
            outcome = "accepted"
        except xmldsig.SignatureError as e:
            outcome = f"refused: {e}"
    elif name == "after":
        from protocols.iso_feed import FeedPage
        page = FeedPage(64 << 20)
        buf = b""
        for chunk in page_chunks(size):
            buf += chunk
            while len(buf) >= 65536:
                page.feed(buf[:65536])
                buf = buf[65536:]
        page.feed(buf)
        reports, _ = page.close()
        outcome = f"refused: {reports[0].refused}"
    elif name == "unsigned_at_cap":
        doc = "".join(document_chunks(size)).encode()
        try:
            xmldsig.verify_bytes(doc, [(open(os.path.join(directory, "cert.pem"), "rb").read(), None)], _now())
            outcome = "accepted"
        except xmldsig.SignatureError as e:
            outcome = f"refused: {e}"
    elif name == "sign":
        doc = "".join(document_chunks(size)).encode()
        signed = xmldsig.sign_bytes(doc, open(os.path.join(directory, "key.pem"), "rb").read(),
                                    open(os.path.join(directory, "cert.pem"), "rb").read())
        with open(os.path.join(directory, "signed.xml"), "wb") as f:
            f.write(signed)
        outcome = f"signed {len(signed)} bytes"
    elif name == "signed_20mb":
        with open(os.path.join(directory, "signed.xml"), "rb") as f:
            doc = f.read()
        xmldsig.verify_bytes(doc, [(open(os.path.join(directory, "cert.pem"), "rb").read(), None)], _now())
        outcome = f"verified {len(doc)} bytes"
    else:
        raise SystemExit(f"unknown stage {name}")
    return {"stage": name, "document_mb": round(size / 1e6), "seconds": round(time.monotonic() - t, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "outcome": outcome[:160]}


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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        print(json.dumps(stage(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    out = []
    with tempfile.TemporaryDirectory() as d:
        _identity(d)
        for name, size in (("before", mb * 10 ** 6), ("after", mb * 10 ** 6),
                           ("unsigned_at_cap", 60 * 10 ** 6), ("sign", 20 * 10 ** 6),
                           ("signed_20mb", 20 * 10 ** 6)):
            r = subprocess.run([sys.executable, __file__, "--stage", name, str(size), d],
                               capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                                   os.path.abspath(__file__)))})
            if r.returncode:
                out.append({"stage": name, "error": r.stderr[-500:]})
            else:
                out.append(json.loads(r.stdout))
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
