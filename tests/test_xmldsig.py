"""Enveloped XMLDSig for ISO 20022 documents: our signatures against the xmlsec1 command line and
back, and every refusal the pinned-certificate verifier must make. Keys are generated here."""

from __future__ import annotations

import datetime
import io
import os
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from protocols import iso20022 as I
from protocols import xmldsig as D

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _xmlsec1() -> str:
    path = shutil.which("xmlsec1")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("xmlsec1 is not installed")
        pytest.skip("xmlsec1 is not installed")
    return path


def make_identity(cn: str, not_before=datetime.datetime(2026, 1, 1, tzinfo=UTC), days=365,
                  passphrase: bytes | None = b"test-pass"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before)
            .not_valid_after(not_before + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc),
            cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def bank():
    return make_identity("bank 2026")


@pytest.fixture(scope="module")
def other():
    return make_identity("someone else")


@pytest.fixture(scope="module")
def document() -> bytes:
    header = I.PaymentInitiation("B1", "2026-05-30T10:00:00+08:00", 2, 350, "长丰县财政局", "补贴专户", "3400123",
                                 None, "ICBK", "2026-06-01", "B1")
    transfers = [I.CreditTransfer("B1-1", "O1-1", 100, "张三", "6222001", None, None, "耕地补贴"),
                 I.CreditTransfer("B1-2", "O1-2", 250, "李四", "6222002", "工商银行", None, "耕地补贴")]
    out = io.BytesIO()
    I.write_pain001(out, header, transfers)
    return out.getvalue()


@pytest.fixture(scope="module")
def signed(document, bank) -> bytes:
    return D.sign_bytes(document, bank[0], bank[1], b"test-pass")


def xmlsec1_verify(tmp_path, data: bytes, cert_pem: bytes) -> subprocess.CompletedProcess:
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "doc.xml").write_bytes(data)
    return subprocess.run([_xmlsec1(), "--verify", "--pubkey-cert-pem", str(tmp_path / "cert.pem"),
                           "--enabled-reference-uris", "empty", str(tmp_path / "doc.xml")],
                          capture_output=True, text=True, check=False)


def test_our_signature_verifies_with_xmlsec1_and_still_validates(tmp_path, signed, bank):
    """xmlsec1 verifies our signature with the bank certificate and refuses it once an amount changes;
    the signed document still validates against the XSD (ours and xmllint's)."""
    ok = xmlsec1_verify(tmp_path, signed, bank[1])
    assert ok.returncode == 0, ok.stderr
    tampered = signed.replace(b'Ccy="CNY">2.50<', b'Ccy="CNY">2.51<')
    assert tampered != signed
    assert xmlsec1_verify(tmp_path, tampered, bank[1]).returncode != 0
    I.validate(signed)
    lint = subprocess.run(["xmllint", "--noout", "--schema", str(I.XSD_DIR / "pain.001.001.10.xsd"), "-"],
                          input=signed, capture_output=True, check=False)
    assert lint.returncode == 0, lint.stderr
    root = etree.fromstring(signed)
    last = root[0][len(root[0]) - 1]
    assert etree.QName(last).localname == "SplmtryData" and last[0][0].tag == f"{{{D.DS}}}Signature"
    assert D.verify_bytes(signed, [(bank[1], None)], NOW) == bank[1]
    # and the signed document still reads
    assert len(list(I.read_pain001(signed)[1])) == 2


TEMPLATE = """<SplmtryData><Envlp><ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
<ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
<ds:Reference URI=""><ds:Transforms>
<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms>
<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue/></ds:Reference>
</ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data></ds:KeyInfo>
</ds:Signature></Envlp></SplmtryData></CstmrCdtTrfInitn>"""


def test_document_signed_by_xmlsec1_verifies_in_verify_file(tmp_path, document):
    """A document signed by the xmlsec1 command line (our template in SplmtryData/Envlp) verifies in
    verify_file with the pinned certificate, and fails with another pinned certificate."""
    key, cert = make_identity("bank via xmlsec1", passphrase=None)
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "tmpl.xml").write_bytes(document.replace(b"</CstmrCdtTrfInitn>", TEMPLATE.encode()))
    proc = subprocess.run([_xmlsec1(), "--sign", "--privkey-pem", f"{tmp_path / 'key.pem'},{tmp_path / 'cert.pem'}",
                           "--output", str(tmp_path / "signed.xml"), str(tmp_path / "tmpl.xml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert D.verify_file(str(tmp_path / "signed.xml"), [(cert, None)], NOW) == cert
    with pytest.raises(D.SignatureError, match="not one of the pinned"):
        D.verify_file(str(tmp_path / "signed.xml"), [(make_identity("x", passphrase=None)[1], None)], NOW)


def test_tampered_amount_is_refused(signed, bank):
    """Changing one amount after signing makes verification fail."""
    tampered = signed.replace(b'Ccy="CNY">1.00<', b'Ccy="CNY">100.00<')
    assert tampered != signed
    with pytest.raises(D.SignatureError, match="does not verify"):
        D.verify_bytes(tampered, [(bank[1], None)], NOW)


def test_document_signed_by_another_key_is_refused(document, signed, bank, other):
    """A document signed by another key is refused: with its own certificate embedded (not pinned), and
    with our pinned certificate pasted into its KeyInfo (the pinned key does not verify it)."""
    theirs = D.sign_bytes(document, other[0], other[1], b"test-pass")
    with pytest.raises(D.SignatureError, match="not one of the pinned"):
        D.verify_bytes(theirs, [(bank[1], None)], NOW)
    ours_b64 = etree.fromstring(signed).find(f".//{{{D.DS}}}X509Certificate").text
    theirs_b64 = etree.fromstring(theirs).find(f".//{{{D.DS}}}X509Certificate").text
    pasted = theirs.replace(theirs_b64.encode(), ours_b64.encode())
    with pytest.raises(D.SignatureError, match="does not verify"):
        D.verify_bytes(pasted, [(bank[1], None)], NOW)


def test_expired_or_not_yet_valid_certificate_is_refused(document):
    """A certificate past its notAfter (or before its notBefore) at `now` is refused even though the
    signature is good."""
    key, cert = make_identity("old bank", not_before=datetime.datetime(2025, 1, 1, tzinfo=UTC), days=100)
    signed = D.sign_bytes(document, key, cert, b"test-pass")
    assert D.verify_bytes(signed, [(cert, None)], datetime.datetime(2025, 2, 1, tzinfo=UTC)) == cert
    with pytest.raises(D.SignatureError, match="expired"):
        D.verify_bytes(signed, [(cert, None)], NOW)
    with pytest.raises(D.SignatureError, match="not valid before"):
        D.verify_bytes(signed, [(cert, None)], datetime.datetime(2024, 12, 31, tzinfo=UTC))


def test_previous_certificate_accepted_until_its_rotation_end_date(document, bank):
    """During a rotation the previous certificate is accepted through its end date and refused after,
    while the current one keeps verifying its own documents."""
    prev_key, prev_cert = make_identity("bank 2025", not_before=datetime.datetime(2025, 6, 1, tzinfo=UTC), days=730)
    old_doc = D.sign_bytes(document, prev_key, prev_cert, b"test-pass")
    pinned = [(bank[1], None), (prev_cert, "2026-06-30")]
    assert D.verify_bytes(old_doc, pinned, datetime.datetime(2026, 6, 30, 23, 0, tzinfo=UTC)) == prev_cert
    with pytest.raises(D.SignatureError, match="rotation"):
        D.verify_bytes(old_doc, pinned, datetime.datetime(2026, 7, 1, 0, 1, tzinfo=UTC))
    new_doc = D.sign_bytes(document, bank[0], bank[1], b"test-pass")
    assert D.verify_bytes(new_doc, pinned, datetime.datetime(2026, 7, 2, tzinfo=UTC)) == bank[1]


def test_two_signatures_are_refused(signed, bank):
    """A second Signature (a copy in another SplmtryData) is refused: exactly one is allowed."""
    root = etree.fromstring(signed)
    message = root[0]
    message.insert(len(message) - 1, etree.fromstring(etree.tostring(message[len(message) - 1])))
    doubled = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    with pytest.raises(D.SignatureError, match="one Signature|Signature elements|not in the message.s last"):
        D.verify_bytes(doubled, [(bank[1], None)], NOW)


def test_unsigned_misplaced_or_other_profile_is_refused(document, signed, bank):
    """No signature, a Reference to something other than the whole document, a weaker digest, or a
    signature outside the last SplmtryData are each refused before any key is used."""
    with pytest.raises(D.SignatureError, match="not signed"):
        D.verify_bytes(document, [(bank[1], None)], NOW)
    with pytest.raises(D.SignatureError, match="URI"):
        D.verify_bytes(signed.replace(b'URI=""', b'URI="#x"'), [(bank[1], None)], NOW)
    with pytest.raises(D.SignatureError, match="digest"):
        D.verify_bytes(signed.replace(b"xmlenc#sha256", b"xmldsig#sha1"), [(bank[1], None)], NOW)
    moved = signed.replace(b"</PmtInf><SplmtryData>", b"</PmtInf><SplmtryData><Envlp><X/></Envlp></SplmtryData>"
                           b"<SplmtryData>").replace(b"</Envlp></SplmtryData></CstmrCdtTrfInitn>",
                                                     b"</Envlp></SplmtryData><SplmtryData><Envlp><Y/></Envlp>"
                                                     b"</SplmtryData></CstmrCdtTrfInitn>")
    assert moved.count(b"<SplmtryData>") == 3
    with pytest.raises(D.SignatureError, match="last SplmtryData"):
        D.verify_bytes(moved, [(bank[1], None)], NOW)


def test_signing_refuses_bad_keys(document, bank, other):
    """A wrong passphrase, or a certificate that is not the key's, is refused when signing."""
    with pytest.raises(D.SignatureError, match="private key"):
        D.sign_bytes(document, bank[0], bank[1], b"wrong")
    with pytest.raises(D.SignatureError, match="does not belong"):
        D.sign_bytes(document, bank[0], other[1], b"test-pass")


def test_sign_file_writes_a_verifiable_file(tmp_path, document, bank):
    """sign_file reads one file and writes the signed document to another, which verify_file accepts."""
    src, dst = tmp_path / "in.xml", tmp_path / "out.xml"
    src.write_bytes(document)
    D.sign_file(str(src), str(dst), bank[0], bank[1], b"test-pass")
    assert src.read_bytes() == document
    assert D.verify_file(str(dst), [(bank[1], None)], NOW) == bank[1]


def _digest_value(doc: bytes) -> bytes:
    return doc[doc.index(b"<ds:DigestValue>"):doc.index(b"</ds:DigestValue>")]


def test_signed_while_written_verifies_in_xmlsec1_and_ours_and_digests_as_libxmlsec1_does(tmp_path, bank):
    """write_pain001 with a StreamSigner (no tree): the document verifies with the xmlsec1 command
    line and with verify_bytes against the pinned certificate, validates (ours and xmllint), reads
    back, and its DigestValue is the one libxmlsec1 computes on the DOM of the same unsigned
    document (sign_bytes): the writer's bytes are the canonical form. Escaped text, an attribute,
    a character outside the BMP and a CNAPS-named agent are inside what is digested; changing an
    amount or a name breaks it in xmlsec1 and in ours."""
    header = I.PaymentInitiation("B7", "2026-05-30T10:00:00+08:00", 3, 360, "长丰县财政局", "补贴专户",
                                 "3400123", None, "ICBK", "2026-06-01", "B7/PAY")
    transfers = [I.CreditTransfer("B7-1", "O1-1", 100, "张三 & <Sons> \"q\"", "6222001", None, None, "耕地补贴"),
                 I.CreditTransfer("B7-2", "O1-2", 250, "𠀀李四", "6222002", "工商银行", "3" * 18, ("a", "b")),
                 I.CreditTransfer("B7-3", "O1-3", 10, "王五", "6222003", "x", None, "耕地补贴",
                                  creditor_agent_cnaps="102361000012")]
    plain, streamed = io.BytesIO(), io.BytesIO()
    I.write_pain001(plain, header, transfers)
    signer = D.StreamSigner(bank[0], bank[1], b"test-pass")
    assert I.write_pain001(streamed, header, transfers, signer) == (3, 360)
    doc = streamed.getvalue()
    ok = xmlsec1_verify(tmp_path, doc, bank[1])
    assert ok.returncode == 0, ok.stderr
    assert D.verify_bytes(doc, [(bank[1], None)], NOW) == bank[1]
    I.validate(doc)
    lint = subprocess.run(["xmllint", "--noout", "--schema", str(I.XSD_DIR / "pain.001.001.10.xsd"), "-"],
                          input=doc, capture_output=True, check=False)
    assert lint.returncode == 0, lint.stderr
    assert list(I.read_pain001(doc)[1])[2].creditor_agent_cnaps == "102361000012"
    assert _digest_value(doc) == _digest_value(D.sign_bytes(plain.getvalue(), bank[0], bank[1], b"test-pass"))
    for old, new in ((b'Ccy="CNY">2.50<', b'Ccy="CNY">2.51<'), ("王五".encode(), "王六".encode())):
        tampered = doc.replace(old, new)
        assert tampered != doc
        assert xmlsec1_verify(tmp_path, tampered, bank[1]).returncode != 0
        with pytest.raises(D.SignatureError):
            D.verify_bytes(tampered, [(bank[1], None)], NOW)


def test_stream_signer_refuses_a_key_that_is_not_the_certificates(bank, other):
    """A StreamSigner given one identity's key and another's certificate is refused at once."""
    with pytest.raises(D.SignatureError, match="does not belong"):
        D.StreamSigner(bank[0], other[1], b"test-pass")


def test_twenty_thousand_transfers_signed_while_written_verify_in_xmlsec1(tmp_path, bank):
    """At scale (20,000 transfers, 9 MB; 100k and 1M are in bench/iso_million.py): the document the
    writer signs on the fly validates streaming and verifies with the xmlsec1 command line, and one
    changed transfer deep inside it fails there."""
    n = 20_000
    header = I.PaymentInitiation("B9-P01", "2026-05-30T10:00:00+08:00", n, 100 * n, "长丰县财政局", "补贴专户",
                                 "3400123", None, "ICBK", "2026-06-01", "B9-P01/PAY")
    transfers = (I.CreditTransfer(f"B9-P01-{i}", f"O9-{i}", 100, "张三", f"6222{i:012d}", "工商银行", None,
                                  "耕地补贴", creditor_agent_cnaps="102361000012" if i % 3 else None)
                 for i in range(1, n + 1))
    path = tmp_path / "big.xml"
    with open(path, "wb") as f:
        assert I.write_pain001(f, header, transfers, D.StreamSigner(bank[0], bank[1], b"test-pass")) == (n, 100 * n)
    I.validate(str(path))
    (tmp_path / "cert.pem").write_bytes(bank[1])
    cmd = [_xmlsec1(), "--verify", "--pubkey-cert-pem", str(tmp_path / "cert.pem"), "--enabled-reference-uris",
           "empty"]
    ok = subprocess.run([*cmd, str(path)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    doc = path.read_bytes()
    (tmp_path / "bad.xml").write_bytes(doc.replace(b"<Id>6222000000015000</Id>", b"<Id>6222000000015001</Id>"))
    assert (tmp_path / "bad.xml").read_bytes() != doc
    assert subprocess.run([*cmd, str(tmp_path / "bad.xml")], capture_output=True, check=False).returncode != 0
