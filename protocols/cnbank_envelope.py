"""The `cnbank` message envelope and the inner `<Req>`/`<Rsp>` documents, sans-IO.

One module for both sides of the link (the gateway's adapter and the bank
simulator): `build_message` seals an inner XML document into the signed and
SM4-encrypted `<CnBank>` envelope, `open_message` takes one apart in the
order the dialect prescribes (parse, E999 -> decrypt, E002 -> verify, E001),
`check_head` judges the Head fields and the timestamp window, and
`build_request`/`parse_request`/`build_reply`/`parse_reply` turn the inner XML
of each TxCode into a dict of typed fields and back, refusing unknown,
repeated or missing fields. The outer document is made by byte templating and
read back by byte position, because the signature covers the Head bytes
exactly as they travel: re-serialising them would sign something else.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import os
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from lxml import etree

from . import money
from .sm import (
    C1C2C3,
    C1C3C2,
    DEFAULT_UID,
    CryptoError,
    SM2PrivateKey,
    SM2PublicKey,
    sm2_decrypt,
    sm2_encrypt,
    sm2_sign,
    sm2_verify,
    sm4_cbc_decrypt,
    sm4_cbc_encrypt,
)
from protocols.chinatime import CST as CN_TZ

# The dialect's clock: TxDate/TxTime are local time in China.

OK = "0000"
TX_CODES = ("HB01", "BP01", "BQ01", "RF01", "RQ01", "DP01", "RC01")
VERSION = "1.0"

# (element, attribute) in the exact order the Head carries them.
HEAD_FIELDS = (
    ("TxCode", "tx_code"),
    ("Ver", "ver"),
    ("SenderId", "sender_id"),
    ("ReceiverId", "receiver_id"),
    ("MsgId", "msg_id"),
    ("TxDate", "tx_date"),
    ("TxTime", "tx_time"),
    ("EncFlag", "enc_flag"),
    ("RetCode", "ret_code"),
    ("RetMsg", "ret_msg"),
)

MSG_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RET_CODE_RE = re.compile(r"0000|E[0-9]{3}")
_TX_CODE_RE = re.compile(r"[A-Z]{2}[0-9]{2}")


class EnvelopeError(Exception):
    """A message is refused; `code` is the RetCode to answer with, the message names the field."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"EnvelopeError({self.code!r}, {self.message!r})"


@dataclass
class Head:
    """The clear-text `<Head>` of a message (报文头)."""

    tx_code: str
    sender_id: str
    receiver_id: str
    msg_id: str
    tx_date: str  # YYYYMMDD, UTC+8
    tx_time: str  # HHMMSS, UTC+8
    ver: str = VERSION
    enc_flag: str = "1"
    ret_code: str = ""
    ret_msg: str = ""


@dataclass(frozen=True)
class EnvelopeSettings:
    """One bank's envelope choices (the *(per bank)* items of the dialect)."""

    uid: bytes = DEFAULT_UID
    sm2_order: str = C1C3C2
    signature: str = "raw"
    encoding: str = "gb18030"
    allow_plaintext: bool = False
    max_skew_s: int = 300

    def __post_init__(self) -> None:
        if not isinstance(self.uid, bytes) or not self.uid or len(self.uid) > 8191:
            raise ValueError("uid must be 1 to 8191 bytes (SM2 ENTL is 16 bits of bit length)")
        if self.sm2_order not in (C1C3C2, C1C2C3):
            raise ValueError(f"sm2_order must be {C1C3C2} or {C1C2C3}, not {self.sm2_order!r}")
        if self.signature not in ("raw", "der"):
            raise ValueError(f"signature must be 'raw' or 'der', not {self.signature!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {self.encoding!r}") from None
        if not isinstance(self.max_skew_s, int) or self.max_skew_s < 0:
            raise ValueError("max_skew_s must be a non-negative number of seconds")

    @property
    def der(self) -> bool:
        return self.signature == "der"


@dataclass
class OpenedMessage:
    """A message that parsed, decrypted and verified; its Head is not yet judged (check_head)."""

    head: Head
    head_bytes: bytes
    inner_xml: bytes
    raw: bytes


# --- small helpers ------------------------------------------------------------

def tx_datetime(now: datetime) -> tuple[str, str]:
    """(TxDate, TxTime) for an aware *now*, in UTC+8."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    local = now.astimezone(CN_TZ)
    return local.strftime("%Y%m%d"), local.strftime("%H%M%S")


def request_head(tx_code: str, sender_id: str, receiver_id: str, msg_id: str,
                 now: datetime) -> Head:
    """The Head of a new request stamped with *now*."""
    d, t = tx_datetime(now)
    return Head(tx_code=tx_code, sender_id=sender_id, receiver_id=receiver_id,
                msg_id=msg_id, tx_date=d, tx_time=t)


def reply_head(request: Head, now: datetime, ret_code: str = OK, ret_msg: str = "") -> Head:
    """The Head of the reply to *request*: same TxCode and MsgId, ends swapped."""
    d, t = tx_datetime(now)
    return Head(tx_code=request.tx_code, sender_id=request.receiver_id,
                receiver_id=request.sender_id, msg_id=request.msg_id, tx_date=d,
                tx_time=t, ret_code=ret_code, ret_msg=ret_msg)


def new_msg_id(prefix: str, counter: int, width: int = 8) -> str:
    """A MsgId: *prefix* (letters and digits) and *counter* zero-padded to *width* digits.

    Uniqueness per SenderId and TxDate is the caller's: put the date in the
    prefix and keep the counter durable.
    """
    if not isinstance(counter, int) or counter < 0:
        raise ValueError("the MsgId counter must be a non-negative integer")
    msg_id = f"{prefix}{counter:0{width}d}"
    if not MSG_ID_RE.fullmatch(msg_id):
        raise ValueError(f"MsgId {msg_id!r} is not 1 to 32 letters and digits")
    return msg_id


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)  # never inserts line breaks


def _unb64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise EnvelopeError("E999", f"{field} is not valid base64", field) from None


def wrap_key(their_key: SM2PublicKey, key_iv: bytes, settings: EnvelopeSettings) -> str:
    """EncKey / FileEncKey text: base64 of the SM2 encryption of key||iv."""
    return _b64(sm2_encrypt(their_key, key_iv, settings.sm2_order)).decode("ascii")


def unwrap_key(our_key: SM2PrivateKey, text: str, settings: EnvelopeSettings,
               field: str = "FileEncKey") -> tuple[bytes, bytes]:
    """(key, iv) from an EncKey / FileEncKey text: E999 if not base64, E002 if it won't decrypt."""
    blob = _unb64(text, field)
    try:
        key_iv = sm2_decrypt(our_key, blob, settings.sm2_order)
    except CryptoError as e:
        raise EnvelopeError("E002", f"{field} does not decrypt: {e}", field) from None
    if len(key_iv) != 32:
        raise EnvelopeError("E002", f"{field} holds {len(key_iv)} bytes, not key||iv (32)", field)
    return key_iv[:16], key_iv[16:]


# XML 1.0 forbids these characters even as character references.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape(value: str, field: str, encoding: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be str, not {type(value).__name__}")
    if _XML_ILLEGAL.search(value):
        raise EnvelopeError("E999", f"{field} holds a character XML cannot carry", field)
    text = (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))  # a raw CR would be read back as LF
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as e:
        raise EnvelopeError(
            "E999", f"{field} holds {value[e.start:e.end]!r}, which {encoding} cannot encode", field
        ) from None


def _element(name: str, value: str, encoding: str, field: str | None = None) -> bytes:
    tag = name.encode("ascii")
    if value == "":
        return b"<" + tag + b"/>"
    return b"<" + tag + b">" + _escape(value, field or name, encoding) + b"</" + tag + b">"


def _declaration(encoding: str) -> bytes:
    return b'<?xml version="1.0" encoding="' + encoding.upper().encode("ascii") + b'"?>'


def _parser(encoding: str | None = None) -> etree.XMLParser:
    # No entities, no DTD, no network: nothing in a message can make the parser
    # fetch or expand anything. A fresh parser per call keeps threads apart.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_blank_text=False,
                           collect_ids=False, encoding=encoding)


_DECL_RE = re.compile(
    rb"<\?xml\s+version\s*=\s*[\"']1\.[0-9]+[\"']"
    rb"(?:\s+encoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._-]*)[\"'])?"
    rb"(?:\s+standalone\s*=\s*[\"'](?:yes|no)[\"'])?\s*\?>"
)


def _same_encoding(a: str, b: str) -> bool:
    try:
        return codecs.lookup(a).name == codecs.lookup(b).name
    except LookupError:
        return False


def _split_declaration(raw: bytes, encoding: str, what: str, required: bool) -> int:
    """Offset just past the XML declaration, after checking the encoding it names."""
    m = _DECL_RE.match(raw)
    if m is None:
        if required or raw.startswith(b"<?xml"):
            raise EnvelopeError("E999", f"{what} does not start with a valid XML declaration",
                                "XMLDecl")
        return 0
    declared = m.group(1)
    if declared is None:
        if required:
            raise EnvelopeError("E999", f"{what} XML declaration names no encoding", "XMLDecl")
    elif not _same_encoding(declared.decode("ascii"), encoding):
        raise EnvelopeError(
            "E999", f"{what} is declared {declared.decode('ascii')}, expected {encoding.upper()}",
            "XMLDecl")
    return m.end()


def _check_markup(raw: bytes, start: int, what: str) -> None:
    # '<' is never a trail byte in GB18030 or GBK, so a byte search is safe. With
    # no comment, CDATA, DOCTYPE or PI in the document, every '<' starts a tag,
    # which is what lets open_message find the Head bytes by position.
    if raw.find(b"<!", start) >= 0:
        raise EnvelopeError("E999", f"{what} holds a DOCTYPE, comment or CDATA section", "XML")
    if raw.find(b"<?", start) >= 0:
        raise EnvelopeError("E999", f"{what} holds a processing instruction", "XML")


def _parse_xml(raw: bytes, encoding: str, what: str, *, declaration_required: bool):
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes")
    raw = bytes(raw)
    start = _split_declaration(raw, encoding, what, declaration_required)
    _check_markup(raw, start, what)
    try:
        root = etree.fromstring(raw, _parser(encoding))
    except etree.XMLSyntaxError as e:
        raise EnvelopeError("E999", f"{what} is not well-formed XML: {e}", "XML") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise EnvelopeError("E999", f"{what} holds a DOCTYPE", "XML")
    return root


def _blank(text: str | None) -> bool:
    return text is None or text.strip(" \t\r\n") == ""


def _plain(el, path: str) -> None:
    """Refuse attributes and namespaces on *el*."""
    if el.attrib:
        raise EnvelopeError("E999", f"{path} has attributes", path)
    if not isinstance(el.tag, str) or el.tag.startswith("{"):
        raise EnvelopeError("E999", f"{path} is not a plain element", path)


def _leaf_text(el, path: str) -> str:
    _plain(el, path)
    if len(el):
        raise EnvelopeError("E999", f"{path} must hold text, not elements", path)
    return el.text or ""


# --- the envelope -------------------------------------------------------------

def head_bytes_of(head: Head, encoding: str = "gb18030") -> bytes:
    """The exact `<Head>...</Head>` bytes build_message puts on the wire for *head*."""
    parts = [b"<Head>"]
    for name, attr in HEAD_FIELDS:
        parts.append(_element(name, getattr(head, attr), encoding))
    parts.append(b"</Head>")
    return b"".join(parts)


def build_message(head: Head, inner_xml: bytes, our_key: SM2PrivateKey,
                  their_key: SM2PublicKey, settings: EnvelopeSettings, *,
                  encrypt: bool = True) -> bytes:
    """The whole `<CnBank>` document carrying *inner_xml*, signed by us, sealed for them.

    EncFlag is written from *encrypt*; a plaintext message (EncFlag 0) is only
    built where *settings* allow it.
    """
    if not isinstance(inner_xml, bytes) or not inner_xml:
        raise ValueError("inner_xml must be non-empty bytes")
    if not encrypt and not settings.allow_plaintext:
        raise EnvelopeError("E999", "EncFlag 0 is not allowed by this bank's settings", "EncFlag")
    head = replace(head, enc_flag="1" if encrypt else "0")
    head_bytes = head_bytes_of(head, settings.encoding)
    if encrypt:
        key, iv = os.urandom(16), os.urandom(16)
        body = _b64(sm4_cbc_encrypt(key, iv, inner_xml))
        enc_key = wrap_key(their_key, key + iv, settings).encode("ascii")
    else:
        body = _b64(inner_xml)
        enc_key = b""
    signature = _b64(sm2_sign(our_key, head_bytes + inner_xml, settings.uid, der=settings.der))
    return b"".join((
        _declaration(settings.encoding), b"\n<CnBank>", head_bytes,
        b"<Body>", body, b"</Body>",
        b"<EncKey>" + enc_key + b"</EncKey>" if enc_key else b"<EncKey/>",
        b"<SignValue>", signature, b"</SignValue></CnBank>",
    ))


@dataclass
class _Parsed:
    head: Head
    head_bytes: bytes
    body: bytes
    enc_key: bytes
    signature: bytes


_ENVELOPE_CHILDREN = ("Head", "Body", "EncKey", "SignValue")


def _parse_envelope(raw: bytes, settings: EnvelopeSettings) -> _Parsed:
    root = _parse_xml(raw, settings.encoding, "the message", declaration_required=True)
    if root.tag != "CnBank":
        raise EnvelopeError("E999", f"root element is {root.tag!r}, not CnBank", "CnBank")
    _plain(root, "CnBank")
    if not _blank(root.text) or not _blank(root.tail):
        raise EnvelopeError("E999", "CnBank holds text outside its elements", "CnBank")
    children = list(root)
    names = tuple(c.tag for c in children)
    if names != _ENVELOPE_CHILDREN:
        raise EnvelopeError(
            "E999", f"CnBank holds {', '.join(map(str, names)) or 'nothing'}; "
            f"expected {', '.join(_ENVELOPE_CHILDREN)} in that order", "CnBank")
    for c in children:
        if not _blank(c.tail):
            raise EnvelopeError("E999", f"text after {c.tag}", c.tag)
    head_el, body_el, key_el, sig_el = children

    _plain(head_el, "Head")
    if not _blank(head_el.text):
        raise EnvelopeError("E999", "Head holds text outside its fields", "Head")
    fields = list(head_el)
    values: dict[str, str] = {}
    for i, (name, attr) in enumerate(HEAD_FIELDS):
        if i >= len(fields):
            raise EnvelopeError("E999", f"Head lacks {name} (field {i + 1})", name)
        el = fields[i]
        if el.tag != name:
            raise EnvelopeError(
                "E999", f"Head field {i + 1} is {el.tag}, expected {name}: "
                "Head fields must appear in the dialect's order", name)
        if not _blank(el.tail):
            raise EnvelopeError("E999", f"text after Head field {name}", name)
        values[attr] = _leaf_text(el, name)
    if len(fields) > len(HEAD_FIELDS):
        extra = fields[len(HEAD_FIELDS)].tag
        raise EnvelopeError("E999", f"Head holds an unknown field {extra} after RetMsg", str(extra))

    body = _unb64(_leaf_text(body_el, "Body"), "Body")
    enc_key = _unb64(_leaf_text(key_el, "EncKey"), "EncKey")
    signature = _unb64(_leaf_text(sig_el, "SignValue"), "SignValue")
    if not body:
        raise EnvelopeError("E999", "Body is empty", "Body")
    if not signature:
        raise EnvelopeError("E999", "SignValue is empty", "SignValue")

    # The signed bytes are cut from the message itself. _check_markup has ruled
    # out comments, CDATA and PIs, and the tree check above has shown a single
    # Head whose children are the ten leaf fields, so the first "<Head>" and
    # the first "</Head>" after it are that element's tags.
    start = raw.find(b"<Head>")
    end = raw.find(b"</Head>", start)
    if start < 0 or end < 0:
        raise EnvelopeError("E999", "Head tags must be written exactly <Head> and </Head>", "Head")
    return _Parsed(Head(**values), bytes(raw[start:end + len(b"</Head>")]), body, enc_key,
                   signature)


def peek_head(raw: bytes, settings: EnvelopeSettings | None = None) -> Head:
    """The Head of *raw*, parsed but not decrypted or verified: enough to address an error reply.

    Nothing it returns may be acted on; it raises EnvelopeError E999 when the
    envelope itself is malformed.
    """
    return _parse_envelope(raw, settings or EnvelopeSettings()).head


def open_message(raw: bytes, our_key: SM2PrivateKey, their_key: SM2PublicKey,
                 settings: EnvelopeSettings) -> OpenedMessage:
    """Parse (E999), decrypt (E002) and verify (E001) a message, in that order."""
    p = _parse_envelope(raw, settings)
    flag = p.head.enc_flag
    if flag == "1":
        if not p.enc_key:
            raise EnvelopeError("E999", "EncKey is empty while EncFlag is 1", "EncKey")
        try:
            key_iv = sm2_decrypt(our_key, p.enc_key, settings.sm2_order)
        except CryptoError as e:
            raise EnvelopeError("E002", f"EncKey does not decrypt: {e}", "EncKey") from None
        if len(key_iv) != 32:
            raise EnvelopeError("E002", f"EncKey holds {len(key_iv)} bytes, not key||iv (32)",
                                "EncKey")
        try:
            inner = sm4_cbc_decrypt(key_iv[:16], key_iv[16:], p.body)
        except CryptoError as e:
            raise EnvelopeError("E002", f"Body does not decrypt: {e}", "Body") from None
    elif flag == "0":
        if not settings.allow_plaintext:
            raise EnvelopeError("E999", "EncFlag 0 is not allowed by this bank's settings",
                                "EncFlag")
        if p.enc_key:
            raise EnvelopeError("E999", "EncKey must be empty when EncFlag is 0", "EncKey")
        inner = p.body
    else:
        raise EnvelopeError("E999", f"EncFlag is {flag!r}, not 0 or 1", "EncFlag")
    if not sm2_verify(their_key, p.head_bytes + inner, p.signature, settings.uid,
                      der=settings.der):
        raise EnvelopeError("E001", "SignValue does not verify against the sender's key",
                            "SignValue")
    return OpenedMessage(head=p.head, head_bytes=p.head_bytes, inner_xml=inner, raw=bytes(raw))


def valid_date(text: str) -> bool:
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return False
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _valid_time(text: str) -> bool:
    return (len(text) == 6 and text.isascii() and text.isdigit()
            and int(text[:2]) < 24 and int(text[2:4]) < 60 and int(text[4:]) < 60)


def check_head(head: Head, *, now: datetime, expect_tx: str | None = None,
               max_skew_s: int = 300, reply: bool | None = None,
               expect_sender: str | None = None, expect_receiver: str | None = None) -> None:
    """Judge a verified Head: version, formats (E999) and the timestamp window (E009).

    *reply*: True for a reply (RetCode must be a code), False for a request
    (RetCode and RetMsg must be empty), None to accept either. MsgId reuse
    (E008) needs memory and is the receiver's to check.
    """
    def bad(field: str, why: str, code: str = "E999") -> EnvelopeError:
        return EnvelopeError(code, f"{field} {why}", field)

    if head.ver != VERSION:
        raise bad("Ver", f"is {head.ver!r}, not {VERSION}")
    if expect_tx is not None:
        if head.tx_code != expect_tx:
            raise bad("TxCode", f"is {head.tx_code!r}, expected {expect_tx}")
    elif head.tx_code not in TX_CODES:
        raise bad("TxCode", f"{head.tx_code!r} is not a known transaction")
    for field, value, expected in (("SenderId", head.sender_id, expect_sender),
                                   ("ReceiverId", head.receiver_id, expect_receiver)):
        if not value or not value.strip():
            raise bad(field, "is empty")
        if expected is not None and value != expected:
            raise bad(field, f"is {value!r}, expected {expected!r}")
    if not MSG_ID_RE.fullmatch(head.msg_id):
        raise bad("MsgId", f"{head.msg_id!r} is not 1 to 32 letters and digits")
    if not valid_date(head.tx_date):
        raise bad("TxDate", f"{head.tx_date!r} is not a date YYYYMMDD")
    if not _valid_time(head.tx_time):
        raise bad("TxTime", f"{head.tx_time!r} is not a time HHMMSS")
    if head.enc_flag not in ("0", "1"):
        raise bad("EncFlag", f"is {head.enc_flag!r}, not 0 or 1")
    if head.ret_code == "":
        if reply:
            raise bad("RetCode", "is empty in a reply")
        if head.ret_msg:
            raise bad("RetMsg", "is set while RetCode is empty")
    else:
        if reply is False:
            raise bad("RetCode", "must be empty in a request")
        if not RET_CODE_RE.fullmatch(head.ret_code):
            raise bad("RetCode", f"{head.ret_code!r} is not 0000 or Ennn")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    sent = datetime.strptime(head.tx_date + head.tx_time, "%Y%m%d%H%M%S").replace(tzinfo=CN_TZ)
    skew = abs((now - sent).total_seconds())
    if skew > max_skew_s:
        raise bad("TxTime", f"{head.tx_date} {head.tx_time} is {int(skew)} s from the receiver's "
                  f"clock, over the {max_skew_s} s window", "E009")


# --- inner XML: field types -----------------------------------------------------

class _Kind:
    """How one inner field is written and read."""

    def __init__(self, name: str, parse: Callable[[str], Any],
                 format: Callable[[Any], str] | None = None) -> None:  # noqa: A002
        self.name = name
        self.parse = parse
        self.format = format or _str_format


def _str_format(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be str, not {type(value).__name__}")
    return value


def _pattern(regex: str, what: str) -> Callable[[str], str]:
    rx = re.compile(regex)

    def parse(text: str) -> str:
        if not rx.fullmatch(text):
            raise ValueError(f"{text!r} is not {what}")
        return text
    return parse


def _int_format(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return str(value)


def _count(text: str) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]{0,17}", text):
        raise ValueError(f"{text!r} is not a non-negative integer without leading zeros")
    return int(text)


def _seq(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,17}", text):
        raise ValueError(f"{text!r} is not a positive integer without leading zeros")
    return int(text)


def _seq_format(value: Any) -> str:
    s = _int_format(value)
    if value == 0:
        raise ValueError("a Seq is positive")
    return s


def _amount(text: str) -> int:
    try:
        return money.parse_yuan(text)
    except money.AmountError as e:
        raise ValueError(str(e)) from None


def _item_amount(text: str) -> int:
    fen = _amount(text)
    if fen <= 0:
        raise ValueError(f"{text!r} is not a positive amount")
    return fen


def _amount_format(value: Any) -> str:
    try:
        return money.format_yuan(value)
    except money.AmountError as e:
        raise ValueError(str(e)) from None


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty")
    if len(text) > 512:
        raise ValueError("is longer than 512 characters")
    return text


def _date(text: str) -> str:
    if not valid_date(text):
        raise ValueError(f"{text!r} is not a date YYYYMMDD")
    return text


def valid_period(text: str) -> bool:
    """True for a statement period: DYYYYMMDD, MYYYYMM or YYYYY."""
    try:
        _period(text)
    except ValueError:
        return False
    return True


def _period(text: str) -> str:
    ok = False
    if len(text) == 9 and text[0] == "D":
        ok = valid_date(text[1:])
    elif len(text) == 7 and text[0] == "M" and text[1:].isascii() and text[1:].isdigit():
        ok = 1 <= int(text[5:]) <= 12 and int(text[1:5]) >= 1
    elif len(text) == 5 and text[0] == "Y" and text[1:].isascii() and text[1:].isdigit():
        ok = int(text[1:]) >= 1
    if not ok:
        raise ValueError(f"{text!r} is not DYYYYMMDD, MYYYYMM or YYYYY")
    return text


def _hex64(text: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        raise ValueError(f"{text!r} is not an SM3 digest of 64 hex digits")
    return text.lower()  # compared case-insensitively: one spelling from here on


def _b64text(text: str) -> str:
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("is not valid base64") from None
    if not blob:
        raise ValueError("is empty")
    return text


def _enum(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return parse


ID = _Kind("identifier", _pattern(IDENTIFIER_RE.pattern,
                                  "an identifier [A-Za-z0-9][A-Za-z0-9_-]{0,63}"))
TEXT = _Kind("text", _text)
COUNT = _Kind("count", _count, _int_format)
SEQ = _Kind("seq", _seq, _seq_format)
AMOUNT = _Kind("amount", _amount, _amount_format)
ITEM_AMOUNT = _Kind("item amount", _item_amount, _amount_format)
DATE = _Kind("date", _date)
PERIOD = _Kind("period", _period)
HEX64 = _Kind("SM3 hex digest", _hex64)
B64 = _Kind("base64", _b64text)
ACCOUNT = _Kind("account", _pattern(r"[0-9]{8,32}", "an account number of 8 to 32 digits"))
E_CODE = _Kind("E code", _pattern(r"E[0-9]{3}", "a message code Ennn"))
R_CODE = _Kind("reason code", _pattern(r"R[0-9]{3}", "an item reason code Rnnn"))
KIND = _Kind("batch kind", _enum("PAY", "RETRY"))
YES = _Kind("Y", _enum("Y"))


@dataclass(frozen=True)
class ListOf:
    """A repeated element inside a container: `<Items><Item>...</Item>...</Items>`.

    *fields* is a record's field table, or a single _Kind for repeated scalars
    such as `<Seqs><Seq>5</Seq>...</Seqs>`.
    """

    item: str
    fields: Any
    min_items: int = 1


_ITEM_FIELDS = {"Seq": SEQ, "BatchNo": ID, "Amount": ITEM_AMOUNT}
_RETURN_FIELDS = {"Seq": SEQ, "Amount": ITEM_AMOUNT, "ReasonCode": R_CODE,
                  "ReturnSerial": TEXT, "ReturnDate": DATE}

# Every field a message may hold; which are required is decided below.
REQUEST_FIELDS: dict[str, dict[str, Any]] = {
    "HB01": {},
    "BP01": {"BatchNo": ID, "Kind": KIND, "OrderNo": ID, "FileName": TEXT, "FileSM3": HEX64,
             "FileEncKey": B64, "TotalCount": COUNT, "TotalAmount": AMOUNT},
    "BQ01": {"BatchNo": ID},
    "RF01": {"RefundNo": ID, "OrderNo": ID, "TotalCount": COUNT, "TotalAmount": AMOUNT,
             "Items": ListOf("Item", _ITEM_FIELDS)},
    "RQ01": {"RefundNo": ID},
    "DP01": {"DisputeNo": ID, "BatchNo": ID, "Seqs": ListOf("Seq", SEQ), "Reason": TEXT},
    "RC01": {"Period": PERIOD},
}

REPLY_FIELDS: dict[str, dict[str, Any]] = {
    "HB01": {},
    "BP01": {"BatchNo": ID, "BankBatchNo": TEXT},
    "BQ01": {"BatchNo": ID, "Status": _Kind("status", _enum("RCVD", "PROC", "DONE", "RJCT")),
             "ResultFile": TEXT, "FileSM3": HEX64, "FileEncKey": B64,
             "RejectCode": E_CODE, "RejectMsg": TEXT,
             "Returns": ListOf("Return", _RETURN_FIELDS, min_items=0)},
    "RF01": {"RefundNo": ID},
    "RQ01": {"RefundNo": ID, "Status": _Kind("status", _enum("PROC", "DONE", "RJCT")),
             "RefundSerial": TEXT, "ReturnedTo": ACCOUNT, "RefundAmount": AMOUNT,
             "RejectCode": E_CODE, "RejectMsg": TEXT},
    "DP01": {"DisputeNo": ID, "Accepted": YES},
    "RC01": {"Period": PERIOD, "StatementFile": TEXT, "FileSM3": HEX64, "FileEncKey": B64},
}

# Fields that only appear with one Status value, by TxCode.
_CONDITIONAL: dict[str, dict[str, tuple[str, ...]]] = {
    "BQ01": {"DONE": ("ResultFile", "FileSM3", "FileEncKey"), "RJCT": ("RejectCode", "RejectMsg")},
    "RQ01": {"DONE": ("RefundSerial", "ReturnedTo", "RefundAmount"),
             "RJCT": ("RejectCode", "RejectMsg")},
}
_OPTIONAL_REPLY = {"BQ01": ("Returns",)}

# The number an error reply carries back, where the request had one.
ERROR_REPLY_NUMBER = {"BP01": "BatchNo", "BQ01": "BatchNo", "RF01": "RefundNo",
                      "RQ01": "RefundNo", "DP01": "DisputeNo"}

_LIST_ITEMS = {"Items": "Item", "Seqs": "Seq", "Returns": "Return"}


# --- inner XML: building ----------------------------------------------------------

def build_inner(root: str, fields: Mapping[str, Any], *, encoding: str = "gb18030") -> bytes:
    """`<Req>`/`<Rsp>` bytes from string fields, in the order given.

    A value is a str, or a list under Items, Seqs or Returns: of dicts of str
    (records) or of str (repeated scalars). No validation beyond what XML and
    the encoding need; build_request/build_reply validate.
    """
    if root not in ("Req", "Rsp"):
        raise ValueError(f"the inner root is Req or Rsp, not {root!r}")
    parts = [_declaration(encoding), b"<", root.encode(), b">"]
    for name, value in fields.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
            raise ValueError(f"{name!r} is not a field name")
        if isinstance(value, str):
            parts.append(_element(name, value, encoding))
            continue
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be str or a list, not {type(value).__name__}")
        item = _LIST_ITEMS.get(name)
        if item is None:
            raise ValueError(f"{name} is not a list field of the dialect")
        parts.append(b"<" + name.encode() + b">")
        for i, entry in enumerate(value, 1):
            path = f"{name}/{item}[{i}]"
            if isinstance(entry, str):
                parts.append(_element(item, entry, encoding, path))
            elif isinstance(entry, Mapping):
                parts.append(b"<" + item.encode() + b">")
                for sub, text in entry.items():
                    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", sub):
                        raise ValueError(f"{sub!r} is not a field name")
                    parts.append(_element(sub, text, encoding, f"{path}/{sub}"))
                parts.append(b"</" + item.encode() + b">")
            else:
                raise TypeError(f"{path} must be str or a dict, not {type(entry).__name__}")
        parts.append(b"</" + name.encode() + b">")
    parts.append(b"</" + root.encode() + b">")
    return b"".join(parts)


def _format_fields(table: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in fields:
        if name not in table:
            raise EnvelopeError("E999", f"unknown field {name}", name)
    for name, kind in table.items():  # the table's order, whatever the dict's
        if name not in fields:
            continue
        value = fields[name]
        if isinstance(kind, ListOf):
            if not isinstance(value, (list, tuple)):
                raise EnvelopeError("E999", f"{name} must be a list", name)
            out[name] = [_format_entry(kind, entry, f"{name}/{kind.item}[{i}]")
                         for i, entry in enumerate(value, 1)]
        else:
            out[name] = _format_value(kind, value, name)
    return out


def _format_entry(kind: ListOf, entry: Any, path: str) -> Any:
    if isinstance(kind.fields, _Kind):
        return _format_value(kind.fields, entry, path)
    if not isinstance(entry, Mapping):
        raise EnvelopeError("E999", f"{path} must be a dict", path)
    for sub in entry:
        if sub not in kind.fields:
            raise EnvelopeError("E999", f"unknown field {path}/{sub}", f"{path}/{sub}")
    return {sub: _format_value(k, entry[sub], f"{path}/{sub}")
            for sub, k in kind.fields.items() if sub in entry}


def _format_value(kind: _Kind, value: Any, path: str) -> str:
    try:
        return kind.format(value)
    except (ValueError, TypeError) as e:
        raise EnvelopeError("E999", f"{path}: {e}", path) from None


def build_request(tx_code: str, fields: Mapping[str, Any], *, encoding: str = "gb18030") -> bytes:
    """The `<Req>` of *tx_code* from typed fields (amounts and counts as int, lists as lists).

    The result is read back with parse_request before it is returned, so a
    request the other side would refuse is never produced.
    """
    table = REQUEST_FIELDS.get(tx_code)
    if table is None:
        raise EnvelopeError("E999", f"TxCode {tx_code!r} is not a known transaction", "TxCode")
    inner = build_inner("Req", _format_fields(table, fields), encoding=encoding)
    parse_request(tx_code, inner, encoding=encoding)
    return inner


def build_reply(tx_code: str, ret_code: str, fields: Mapping[str, Any], *,
                encoding: str = "gb18030") -> bytes:
    """The `<Rsp>` of *tx_code* from typed fields; validated like build_request."""
    table = REPLY_FIELDS.get(tx_code)
    if table is None:
        raise EnvelopeError("E999", f"TxCode {tx_code!r} is not a known transaction", "TxCode")
    inner = build_inner("Rsp", _format_fields(table, fields), encoding=encoding)
    parse_reply(tx_code, inner, ret_code, encoding=encoding)
    return inner


# --- inner XML: parsing -----------------------------------------------------------

def _read_fields(root, table: Mapping[str, Any]) -> dict[str, Any]:
    """Every child of *root* parsed by *table*: unknown and repeated fields refused."""
    out: dict[str, Any] = {}
    for child in root:
        name = child.tag if isinstance(child.tag, str) else "?"
        if name not in table:
            raise EnvelopeError("E999", f"unknown field {name}", name)
        if name in out:
            raise EnvelopeError("E999", f"field {name} is repeated", name)
        if not _blank(child.tail):
            raise EnvelopeError("E999", f"text after field {name}", name)
        kind = table[name]
        out[name] = _read_list(child, kind, name) if isinstance(kind, ListOf) \
            else _read_value(kind, _leaf_text(child, name), name)
    return out


def _read_value(kind: _Kind, text: str, path: str) -> Any:
    if text == "":
        raise EnvelopeError("E999", f"{path} is empty", path)
    try:
        return kind.parse(text)
    except ValueError as e:
        raise EnvelopeError("E999", f"{path}: {e}", path) from None


def _read_list(el, kind: ListOf, name: str) -> list[Any]:
    _plain(el, name)
    if not _blank(el.text):
        raise EnvelopeError("E999", f"{name} holds text outside its {kind.item} elements", name)
    out = []
    for i, child in enumerate(el, 1):
        path = f"{name}/{kind.item}[{i}]"
        if child.tag != kind.item:
            raise EnvelopeError("E999", f"{path} is {child.tag}, expected {kind.item}", path)
        if not _blank(child.tail):
            raise EnvelopeError("E999", f"text after {path}", path)
        if isinstance(kind.fields, _Kind):
            out.append(_read_value(kind.fields, _leaf_text(child, path), path))
            continue
        _plain(child, path)
        if not _blank(child.text):
            raise EnvelopeError("E999", f"{path} holds text outside its fields", path)
        rec: dict[str, Any] = {}
        for sub in child:
            sname = sub.tag if isinstance(sub.tag, str) else "?"
            spath = f"{path}/{sname}"
            if sname not in kind.fields:
                raise EnvelopeError("E999", f"unknown field {spath}", spath)
            if sname in rec:
                raise EnvelopeError("E999", f"field {spath} is repeated", spath)
            if not _blank(sub.tail):
                raise EnvelopeError("E999", f"text after {spath}", spath)
            rec[sname] = _read_value(kind.fields[sname], _leaf_text(sub, spath), spath)
        for sname in kind.fields:
            if sname not in rec:
                raise EnvelopeError("E999", f"{path} lacks required field {sname}",
                                    f"{path}/{sname}")
        out.append(rec)
    if len(out) < kind.min_items:
        raise EnvelopeError("E999", f"{name} holds no {kind.item}", name)
    return out


def _inner_root(inner_xml: bytes, root_name: str, encoding: str):
    root = _parse_xml(inner_xml, encoding, f"the inner <{root_name}>", declaration_required=False)
    if root.tag != root_name:
        raise EnvelopeError("E999", f"inner root is {root.tag!r}, expected {root_name}", root_name)
    _plain(root, root_name)
    if not _blank(root.text):
        raise EnvelopeError("E999", f"{root_name} holds text outside its fields", root_name)
    return root


def _require(out: Mapping[str, Any], names, why: str = "") -> None:
    for name in names:
        if name not in out:
            raise EnvelopeError("E999", f"required field {name} is missing{why}", name)


def _forbid(out: Mapping[str, Any], names, why: str) -> None:
    for name in names:
        if name in out:
            raise EnvelopeError("E999", f"field {name} is not allowed {why}", name)


def _unique(values, path: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise EnvelopeError("E999", f"{path} {v} is repeated", path)
        seen.add(v)


def parse_request(tx_code: str, inner_xml: bytes, *, encoding: str = "gb18030") -> dict[str, Any]:
    """The fields of a `<Req>`: ids and texts as str, amounts as int fen, counts and seqs as int.

    Refuses unknown, repeated, empty or missing fields with E999 naming the
    field; an RF01 whose items do not add up to its totals is E003.
    """
    table = REQUEST_FIELDS.get(tx_code)
    if table is None:
        raise EnvelopeError("E999", f"TxCode {tx_code!r} is not a known transaction", "TxCode")
    out = _read_fields(_inner_root(inner_xml, "Req", encoding), table)
    _require(out, table)
    if tx_code == "BP01" and out["FileName"] != f"{out['BatchNo']}.req":
        raise EnvelopeError("E999", f"FileName {out['FileName']!r} is not "
                            f"{out['BatchNo']}.req", "FileName")
    if tx_code == "RF01":
        _unique((it["Seq"] for it in out["Items"]), "Items/Item/Seq")
        if out["TotalCount"] != len(out["Items"]):
            raise EnvelopeError("E003", f"TotalCount {out['TotalCount']} but "
                                f"{len(out['Items'])} items", "TotalCount")
        total = sum(it["Amount"] for it in out["Items"])
        if out["TotalAmount"] != total:
            raise EnvelopeError("E003", f"TotalAmount {money.format_yuan(out['TotalAmount'])} "
                                f"but the items add up to {money.format_yuan(total)}",
                                "TotalAmount")
    if tx_code == "DP01":
        _unique(out["Seqs"], "Seqs/Seq")
    return out


def parse_reply(tx_code: str, inner_xml: bytes, ret_code: str, *,
                encoding: str = "gb18030") -> dict[str, Any]:
    """The fields of a `<Rsp>` to *tx_code* answered with *ret_code* (the Head's RetCode).

    An error reply carries at most the request's number (BatchNo, RefundNo or
    DisputeNo). That the number is the request's is the caller's to compare.
    """
    table = REPLY_FIELDS.get(tx_code)
    if table is None:
        raise EnvelopeError("E999", f"TxCode {tx_code!r} is not a known transaction", "TxCode")
    if not RET_CODE_RE.fullmatch(ret_code or ""):
        raise EnvelopeError("E999", f"RetCode {ret_code!r} is not 0000 or Ennn", "RetCode")
    root = _inner_root(inner_xml, "Rsp", encoding)
    if ret_code != OK:
        number = ERROR_REPLY_NUMBER.get(tx_code)
        return _read_fields(root, {number: table[number]} if number else {})

    out = _read_fields(root, table)
    conditional = _CONDITIONAL.get(tx_code, {})
    always = [n for n in table if n not in _OPTIONAL_REPLY.get(tx_code, ())
              and not any(n in names for names in conditional.values())]
    _require(out, always)
    if conditional:
        status = out["Status"]
        for st, names in conditional.items():
            if st == status:
                _require(out, names, f" with Status {status}")
            else:
                _forbid(out, names, f"with Status {status}")
    if tx_code == "BQ01":
        if "Returns" in out:
            if out["Status"] != "DONE":
                raise EnvelopeError("E999", f"field Returns is not allowed with Status "
                                    f"{out['Status']}", "Returns")
            _unique((r["ReturnSerial"] for r in out["Returns"]), "Returns/Return/ReturnSerial")
        if out["Status"] == "DONE" and out["ResultFile"] != f"{out['BatchNo']}.rsp":
            raise EnvelopeError("E999", f"ResultFile {out['ResultFile']!r} is not "
                                f"{out['BatchNo']}.rsp", "ResultFile")
    if tx_code == "RC01" and out["StatementFile"] != f"STMT_{out['Period']}.txt":
        raise EnvelopeError("E999", f"StatementFile {out['StatementFile']!r} is not "
                            f"STMT_{out['Period']}.txt", "StatementFile")
    return out
