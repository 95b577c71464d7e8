"""Enveloped XMLDSig for the `iso20022` dialect (python-xmlsec, on libxmlsec1).

One profile only: RSA-SHA256 over SHA-256 digests, exclusive c14n (for
SignedInfo and as the Reference's second transform), a single Reference with
URI="" and the enveloped-signature transform, and our certificate in
KeyInfo/X509Data. The ISO 20022 XSDs have no place for ds:Signature but the lax
`xs:any` of SplmtryData/Envlp, so the signature goes in a SplmtryData appended as
the last child of the message element; a signed document still validates.

Verification trusts nothing the document says about keys: the signature is
checked with the key of a pinned certificate, the embedded certificate must be
byte-for-byte one of the pinned ones and in date, and a document with anything
but exactly one Signature, in that place, over the whole document, in this
profile, is refused (no signature wrapping, no weaker algorithms).

Signing a pain.001 needs no tree: `StreamSigner` signs the digest that
`protocols.iso20022.write_pain001` takes of the exclusive-c14n bytes it writes
(what the enveloped-signature transform leaves of the document), and hands back
the ds:Signature to write in place; the profile is the one below and xmlsec1
verifies it (bench/iso_million.py: a million transfers in flat memory).
`sign_bytes` (libxmlsec1 on a DOM) stays for other documents: a 100,000-transfer
pain.001 (44 MB) took 11 s and 612 MB to sign that way and 5 s and 521 MB to
verify (bench/xmldsig_size.py), so memory grows about 12-14 times the
document's size; run it off the reactor thread. Verification therefore looks at the signature
first, on one streaming pass that keeps only a skeleton (the repeating elements
dropped as read): no DOCTYPE, exactly one Signature in its place, our profile, a
pinned certificate in date. Only a document that passes builds the tree, and
received documents are parsed without libxml2's huge_tree relaxations (an
unsigned 60 MB document is refused in 5 s at 159 MB peak, of which the document
itself is 120; bench/iso_oversized_report.py).
"""

from __future__ import annotations

import base64
import datetime
import io
import os

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

DS = "http://www.w3.org/2000/09/xmldsig#"
_SIG = f"{{{DS}}}Signature"
_C14N_EXCL = "http://www.w3.org/2001/10/xml-exc-c14n#"
_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

_ISO_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"


class SignatureError(Exception):
    """Refused: message says why (no signature, digest mismatch, certificate not pinned, expired, ...)."""


def _parse(doc: bytes, huge: bool = True) -> etree._ElementTree:
    # What we sign is ours and may be large; what we verify is the bank's: libxml2's limits on.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=huge)
    try:
        tree = etree.ElementTree(etree.fromstring(doc, parser))
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"not well-formed XML: {exc}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SignatureError("a DOCTYPE is refused (no DTD or entity declarations in a signed message)")
    return tree


# Elements that repeat by the thousand in these messages: dropped as soon as read, so the
# scan below holds a skeleton of the document, not the document.
_REPEATING = ("{*}CdtTrfTxInf", "{*}TxInfAndSts", "{*}Ntry")


def _scan_signature(doc: bytes) -> etree._Element:
    """One streaming pass that keeps a skeleton of the document and a copy of its Signature.

    Checks, before any whole tree of the document is built, that there is exactly one
    Signature, in the message's last SplmtryData/Envlp, and no DOCTYPE: a document
    unsigned, signed twice or in the wrong place is refused at the cost of reading it
    once, in little memory, whatever its size. Python sees only the repeating elements
    (dropped) and Signatures (counted wherever they hide).
    """
    it = etree.iterparse(io.BytesIO(doc), events=("end",), tag=(_SIG, *_REPEATING), resolve_entities=False,
                         no_network=True, load_dtd=False, remove_comments=True, remove_pis=True)
    found = None
    count = 0
    try:
        for _event, el in it:
            if el.tag == _SIG:
                count += 1
                if count > 1:
                    raise SignatureError("more than one Signature element, exactly one expected")
                found = el
                continue
            el.clear(keep_tail=False)
            parent = el.getparent()
            while parent is not None and el.getprevious() is not None:
                del parent[0]
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"not well-formed XML: {exc}") from None
    root = it.root
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.system_url:
        raise SignatureError("a DOCTYPE is refused (no DTD or entity declarations in a signed message)")
    message = _message_element(root)
    if found is None:
        raise SignatureError("the document is not signed")
    _check_place(root, message, found)
    return found


def _check_place(root: etree._Element, message: etree._Element, signature: etree._Element) -> None:
    envelope = signature.getparent()
    supplementary = envelope.getparent() if envelope is not None else None
    ns = etree.QName(root).namespace
    if (envelope is None or envelope.tag != f"{{{ns}}}Envlp" or supplementary is None
            or supplementary.tag != f"{{{ns}}}SplmtryData" or supplementary.getparent() is not message
            or message[len(message) - 1] is not supplementary):
        raise SignatureError("the Signature is not in the message's last SplmtryData/Envlp")


def _message_element(root: etree._Element) -> etree._Element:
    q = etree.QName(root)
    if q.localname != "Document" or not (q.namespace or "").startswith(_ISO_PREFIX) or len(root) != 1:
        raise SignatureError(f"{root.tag} is not an ISO 20022 Document with one message element")
    return root[0]


def _load_key(key_pem: bytes, cert_pem: bytes, passphrase: bytes | None) -> xmlsec.Key:
    """The signing key for xmlsec, decrypted by `cryptography` (encrypted PKCS#8 included)."""
    try:
        private = serialization.load_pem_private_key(key_pem, passphrase)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"cannot load the private key: {exc}") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise SignatureError("the signing key must be RSA (RSA-SHA256)")
    cert = _certificate(cert_pem, "signing certificate")
    if cert.public_key().public_numbers() != private.public_key().public_numbers():
        raise SignatureError("the certificate does not belong to the private key")
    clear = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    key = xmlsec.Key.from_memory(clear, xmlsec.constants.KeyDataFormatPem, None)
    key.load_cert_from_memory(cert_pem, xmlsec.constants.KeyDataFormatCertPem)
    return key


def _certificate(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SignatureError(f"{what} is not a PEM certificate: {exc}") from None


class StreamSigner:
    """Signs a digest computed elsewhere: the writer's SHA-256 of the canonical document.

    `signature(digest)` returns a ds:Signature element (bytes) in our profile,
    RSA-SHA256 over SignedInfo in exclusive c14n, one Reference URI="" with the
    enveloped-signature and exclusive-c14n transforms and our certificate in
    KeyInfo. The key is loaded and checked against the certificate once.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes, passphrase: bytes | None = None) -> None:
        try:
            private = serialization.load_pem_private_key(key_pem, passphrase)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"cannot load the private key: {exc}") from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise SignatureError("the signing key must be RSA (RSA-SHA256)")
        cert = _certificate(cert_pem, "signing certificate")
        if cert.public_key().public_numbers() != private.public_key().public_numbers():
            raise SignatureError("the certificate does not belong to the private key")
        self._private = private
        self._cert_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    def signature(self, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        if len(digest) != 32:
            raise SignatureError(f"a SHA-256 digest is 32 bytes, got {len(digest)}")
        d = f"{{{DS}}}"
        sig = etree.Element(d + "Signature", nsmap={"ds": DS})
        info = etree.SubElement(sig, d + "SignedInfo")
        etree.SubElement(info, d + "CanonicalizationMethod", Algorithm=_C14N_EXCL)
        etree.SubElement(info, d + "SignatureMethod", Algorithm=_RSA_SHA256)
        ref = etree.SubElement(info, d + "Reference", URI="")
        transforms = etree.SubElement(ref, d + "Transforms")
        etree.SubElement(transforms, d + "Transform", Algorithm=_ENVELOPED)
        etree.SubElement(transforms, d + "Transform", Algorithm=_C14N_EXCL)
        etree.SubElement(ref, d + "DigestMethod", Algorithm=_SHA256)
        etree.SubElement(ref, d + "DigestValue").text = base64.b64encode(digest).decode()
        # In place, SignedInfo canonicalises to these bytes too: exclusive c14n renders only
        # the ds prefix it uses, never the document's default namespace around it.
        canonical = etree.tostring(info, method="c14n", exclusive=True, with_comments=False)
        value = self._private.sign(canonical, padding.PKCS1v15(), hashes.SHA256())
        etree.SubElement(sig, d + "SignatureValue").text = base64.b64encode(value).decode()
        x509_data = etree.SubElement(etree.SubElement(sig, d + "KeyInfo"), d + "X509Data")
        etree.SubElement(x509_data, d + "X509Certificate").text = self._cert_b64
        return etree.tostring(sig)


def sign_bytes(doc: bytes, key_pem: bytes, cert_pem: bytes, passphrase: bytes | None = None) -> bytes:
    """Return *doc* with SplmtryData/Envlp/ds:Signature appended to its message element."""
    tree = _parse(doc)
    message = _message_element(tree.getroot())
    if tree.getroot().find(f".//{_SIG}") is not None:
        raise SignatureError("the document is already signed")
    key = _load_key(key_pem, cert_pem, passphrase)
    ns = etree.QName(tree.getroot()).namespace
    envelope = etree.SubElement(etree.SubElement(message, f"{{{ns}}}SplmtryData"), f"{{{ns}}}Envlp")
    signature = xmlsec.template.create(envelope, xmlsec.constants.TransformExclC14N,
                                       xmlsec.constants.TransformRsaSha256, ns="ds")
    envelope.append(signature)
    ref = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri="")
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    x509_data = xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    xmlsec.template.x509_data_add_certificate(x509_data)
    ctx = xmlsec.SignatureContext()
    ctx.key = key
    try:
        ctx.sign(signature)
    except xmlsec.Error as exc:
        raise SignatureError(f"signing failed: {exc}") from None
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8")


def sign_file(src: str, dst: str, key_pem: bytes, cert_pem: bytes, passphrase: bytes | None = None) -> None:
    """Sign the document at *src* into *dst* (written whole to a temporary name, then renamed)."""
    with open(src, "rb") as f:
        signed = sign_bytes(f.read(), key_pem, cert_pem, passphrase)
    tmp = f"{dst}.part"
    with open(tmp, "wb") as f:
        f.write(signed)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _only(parent: etree._Element, tag: str, what: str) -> etree._Element:
    found = parent.findall(tag)
    if len(found) != 1:
        raise SignatureError(f"{what}: {len(found)} found, exactly one expected")
    return found[0]


def _check_profile(signature: etree._Element) -> etree._Element:
    """Refuse anything but our profile; return the embedded X509Certificate element."""
    d = f"{{{DS}}}"
    signed_info = _only(signature, d + "SignedInfo", "SignedInfo")
    c14n = _only(signed_info, d + "CanonicalizationMethod", "CanonicalizationMethod")
    if c14n.get("Algorithm") != _C14N_EXCL:
        raise SignatureError(f"canonicalization {c14n.get('Algorithm')} refused: exclusive c14n expected")
    method = _only(signed_info, d + "SignatureMethod", "SignatureMethod")
    if method.get("Algorithm") != _RSA_SHA256:
        raise SignatureError(f"signature method {method.get('Algorithm')} refused: RSA-SHA256 expected")
    ref = _only(signed_info, d + "Reference", "Reference")
    if ref.get("URI") != "":
        raise SignatureError(f"Reference URI {ref.get('URI')!r} refused: the signature must cover the whole "
                             "document (URI=\"\")")
    transforms = [t.get("Algorithm") for t in ref.iterfind(f"{d}Transforms/{d}Transform")]
    if transforms not in ([_ENVELOPED, _C14N_EXCL], [_ENVELOPED]):
        raise SignatureError(f"Reference transforms {transforms} refused: enveloped-signature then exclusive c14n expected")
    digest = _only(ref, d + "DigestMethod", "DigestMethod")
    if digest.get("Algorithm") != _SHA256:
        raise SignatureError(f"digest {digest.get('Algorithm')} refused: SHA-256 expected")
    certs = signature.findall(f"{d}KeyInfo/{d}X509Data/{d}X509Certificate")
    if len(certs) != 1:
        raise SignatureError(f"KeyInfo/X509Data/X509Certificate: {len(certs)} found, exactly one expected")
    return certs[0]


def _aware(now: datetime.datetime) -> datetime.datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.timezone.utc)


def _end_of(override: str, tz: datetime.tzinfo) -> datetime.datetime:
    """A rotation end date: a plain date means through the end of that day (in *now*'s zone)."""
    try:
        if len(override) == 10:
            day = datetime.date.fromisoformat(override)
            return datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), tz)
        end = datetime.datetime.fromisoformat(override)
        return end if end.tzinfo is not None else end.replace(tzinfo=tz)
    except ValueError:
        raise SignatureError(f"pinned certificate end date {override!r} is not an ISO date") from None


def _pinned_match(cert_el: etree._Element, pinned: list[tuple[bytes, str | None]],
                  now: datetime.datetime) -> bytes:
    """The pinned certificate (PEM) that is byte for byte the embedded one, in date; or refused."""
    try:
        embedded = base64.b64decode("".join((cert_el.text or "").split()), validate=True)
    except ValueError:
        raise SignatureError("X509Certificate is not base64") from None
    now = _aware(now)
    match = None
    for pem, override in pinned:
        cert = _certificate(pem, "pinned certificate")
        if cert.public_bytes(serialization.Encoding.DER) == embedded:
            match = (pem, cert, override)
            break
    if match is None:
        raise SignatureError("the document's certificate is not one of the pinned certificates")
    pem, cert, override = match
    if now < cert.not_valid_before_utc:
        raise SignatureError(f"the certificate is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now >= cert.not_valid_after_utc:
        raise SignatureError(f"the certificate expired at {cert.not_valid_after_utc.isoformat()}")
    if override is not None and now >= _end_of(override, now.tzinfo):
        raise SignatureError(f"the previous certificate was accepted until {override} (rotation)")
    return pem


def verify_bytes(doc: bytes, pinned: list[tuple[bytes, str | None]], now: datetime.datetime) -> bytes:
    """Verify *doc*'s signature with a pinned certificate; return that certificate's PEM.

    *pinned* is [(certificate PEM, end date or None)]: the bank's current
    certificate and, during a rotation, the previous one with the date after
    which it is no longer accepted.
    """
    if not pinned:
        raise SignatureError("no pinned certificate configured")
    # Signature first, cheaply: its place, its profile and its certificate (pinned, in date)
    # are checked on one streaming pass; only then is the tree built to check the digest.
    _pinned_match(_check_profile(_scan_signature(doc)), pinned, now)
    tree = _parse(doc, huge=False)
    root = tree.getroot()
    message = _message_element(root)
    signatures = root.findall(f".//{_SIG}")
    if not signatures:
        raise SignatureError("the document is not signed")
    if len(signatures) > 1:
        raise SignatureError(f"{len(signatures)} Signature elements, exactly one expected")
    signature = signatures[0]
    envelope = signature.getparent()
    supplementary = envelope.getparent()
    ns = etree.QName(root).namespace
    if (envelope.tag != f"{{{ns}}}Envlp" or supplementary is None or supplementary.tag != f"{{{ns}}}SplmtryData"
            or supplementary.getparent() is not message or message[len(message) - 1] is not supplementary):
        raise SignatureError("the Signature is not in the message's last SplmtryData/Envlp")
    pem = _pinned_match(_check_profile(signature), pinned, now)

    ctx = xmlsec.SignatureContext()

    ctx.key = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatCertPem, None)
    for transform in (xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256):
        ctx.enable_signature_transform(transform)
    for transform in (xmlsec.constants.TransformEnveloped, xmlsec.constants.TransformExclC14N,
                      xmlsec.constants.TransformSha256):
        ctx.enable_reference_transform(transform)
    try:
        ctx.verify(signature)
    except xmlsec.Error as exc:
        raise SignatureError(f"the signature does not verify with the pinned certificate "
                             f"(digest mismatch or another key): {exc}") from None
    return pem


def verify_file(path: str, pinned: list[tuple[bytes, str | None]], now: datetime.datetime) -> bytes:
    with open(path, "rb") as f:
        return verify_bytes(f.read(), pinned, now)


def certificate_der(pem: bytes) -> bytes:
    """A PEM certificate as DER (what X509Certificate carries, base64-encoded)."""
    return _certificate(pem, "certificate").public_bytes(serialization.Encoding.DER)


__all__ = ["SignatureError", "StreamSigner", "sign_bytes", "sign_file", "verify_bytes", "verify_file", "certificate_der"]
