"""The `iso20022` dialect: pain.001, pain.002, camt.053 and camt.054 documents, sans-IO.

Writers and readers stream. A pain.001 can carry a million transfers, so the
writer emits one `CdtTrfTxInf` at a time through `lxml.etree.xmlfile` and the
readers walk the document with `iterparse`, dropping each element once it has
become a record; memory stays flat whatever the size. Every value a writer is
given is checked against what the 2019 XSDs allow (lengths, dates, amounts) and
refused with `Iso20022Error` naming the element before anything is written, so
a document we build always validates. Readers validate against the XSD while
they parse (libxml2's streaming validator, no tree is kept) and then check what
the schema cannot: counts and sums, the single PmtInf, balances that add up.
A reader's iterator only vouches for the document when it is exhausted: callers
stage what it yields and apply nothing before the end.

A pain.001 is written in exclusive-c14n form (each element serialised canonically,
whitespace between transfers kept), so the enveloped signature's digest is the
SHA-256 of the very bytes written, fed as they go out; given a signer
(`protocols.xmldsig.StreamSigner`), the writer then writes the Signature into the
message's last SplmtryData/Envlp. No tree of the document is ever built, so a
million transfers are signed in flat memory.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from lxml import etree

NS_PAIN001 = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.10"
NS_PAIN002 = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.11"
NS_CAMT053 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
NS_CAMT054 = "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08"

PAIN001 = "pain.001.001.10"
PAIN002 = "pain.002.001.11"
CAMT053 = "camt.053.001.08"
CAMT054 = "camt.054.001.08"

_NS_BY_KIND = {PAIN001: NS_PAIN001, PAIN002: NS_PAIN002, CAMT053: NS_CAMT053, CAMT054: NS_CAMT054}
_KIND_BY_NS = {ns: kind for kind, ns in _NS_BY_KIND.items()}
# The message element under Document, where SplmtryData (and so our signature) goes last.
MESSAGE_ELEMENT = {PAIN001: "CstmrCdtTrfInitn", PAIN002: "CstmrPmtStsRpt",
                   CAMT053: "BkToCstmrStmt", CAMT054: "BkToCstmrDbtCdtNtfctn"}

XSD_DIR = Path(__file__).parent / "xsd" / "iso20022"
CURRENCY = "CNY"


class Iso20022Error(Exception):
    """A document refused; .element names the element/path at fault (str), message says why."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}")
        self.element = element
        self.message = message


class SchemaError(Iso20022Error):
    """XSD validation failed; message carries line number and libxml2's message."""

    def __init__(self, line: int, message: str, element: str = "Document") -> None:
        Exception.__init__(self, f"line {line}: {message}")
        self.element = element
        self.line = line
        self.message = f"line {line}: {message}"


# --- records ------------------------------------------------------------------------

@dataclass(frozen=True)
class PaymentInitiation:
    """pain.001 GrpHdr and its single PmtInf: one batch (代发批次) or one refund (退款)."""

    msg_id: str                   # = BatchNo (or RefundNo)
    created_at: str               # ISO 8601 with offset, e.g. 2026-11-28T10:00:00+08:00
    nb_of_txs: int
    ctrl_sum_fen: int
    initiating_party: str         # our name (finance bureau)
    debtor_name: str
    debtor_account: str           # the bank's holding account for subsidies (Othr/Id, not IBAN)
    debtor_agent_bic: str | None  # FinInstnId/BICFI when the bank has one
    debtor_agent_id: str          # FinInstnId/Othr/Id (always written)
    requested_date: str           # YYYY-MM-DD (ReqdExctnDt/Dt)
    pmt_inf_id: str
    batch_booking: bool = False


@dataclass(frozen=True)
class CreditTransfer:
    """One CdtTrfTxInf: one item to pay (发放明细), or the single transfer of a refund."""

    instr_id: str                 # BatchNo-Seq
    end_to_end_id: str            # OrderNo-Seq (or RefundNo for a refund)
    amount_fen: int               # InstdAmt Ccy="CNY", 2 decimals
    creditor_name: str
    creditor_account: str         # CdtrAcct/Id/Othr/Id
    creditor_agent_name: str | None   # CdtrAgt/FinInstnId/Nm, omitted when None/empty
    creditor_id_number: str | None    # Cdtr/Id/PrvtId/Othr/Id with SchmeNm/Cd NIDN, omitted when None
    remittance: str | tuple[str, ...] | list[str]  # RmtInf/Ustrd; several Ustrd read back as a tuple
    # CdtrAgt/FinInstnId/ClrSysMmbId (ClrSysId/Cd CNAPS, MmbId = this 12-digit code): the agent
    # named by its CNAPS code when the item carries one (iso20022.md), and then not by name.
    creditor_agent_cnaps: str | None = None


@dataclass(frozen=True)
class TxStatus:
    """pain.002 TxInfAndSts: the bank's answer for one transfer.

    `acceptance_date` is written as AccptncDtTm when it is a date-time and as
    OrgnlTxRef/ReqdExctnDt/Dt when it is a plain date; on reading AccptncDtTm
    wins, else OrgnlTxRef/ReqdExctnDt (Dt or DtTm) is taken as it stands.
    """

    orig_instr_id: str
    orig_end_to_end_id: str
    status: str                   # ACSC / ACCP / PDNG / RJCT (any ISO code is carried)
    reason_code: str | None       # StsRsnInf/Rsn/Cd
    additional_info: str | None   # StsRsnInf/AddtlInf (split into 105-character pieces, joined on reading)
    amount_fen: int | None        # OrgnlTxRef/Amt/InstdAmt
    creditor_account: str | None  # OrgnlTxRef/CdtrAcct/Id/Othr/Id
    acceptance_date: str | None   # AccptncDtTm, or OrgnlTxRef/ReqdExctnDt (see above)
    bank_ref: str | None          # AcctSvcrRef (the bank serial)


@dataclass(frozen=True)
class StatusReport:
    """pain.002 GrpHdr and OrgnlGrpInfAndSts: the bank's answer for a whole batch."""

    msg_id: str
    created_at: str
    orig_msg_id: str
    orig_msg_nm_id: str
    group_status: str | None      # ACCP / PART / RJCT / ACSC ...
    group_reason: str | None      # OrgnlGrpInfAndSts/StsRsnInf/Rsn/Cd (AM04, AM10, DU01, DS0B ...)
    group_info: str | None        # OrgnlGrpInfAndSts/StsRsnInf/AddtlInf
    # OrgnlPmtInfAndSts/OrgnlPmtInfId; None writes orig_msg_id there. Read back as found.
    orig_pmt_inf_id: str | None = None


@dataclass(frozen=True)
class Entry:
    """A camt.053/054 Ntry with one TxDtls."""

    entry_ref: str                # NtryRef (unique per bank: the idempotency key for late returns)
    amount_fen: int
    credit: bool                  # CdtDbtInd CRDT (True) / DBIT (False)
    booking_date: str             # BookgDt/Dt YYYY-MM-DD
    status: str                   # Sts/Cd, BOOK
    end_to_end_id: str | None     # NtryDtls/TxDtls/Refs/EndToEndId
    instr_id: str | None          # NtryDtls/TxDtls/Refs/InstrId
    return_reason: str | None     # NtryDtls/TxDtls/RtrInf/Rsn/Cd
    bank_ref: str | None          # AcctSvcrRef


@dataclass(frozen=True)
class Notification:
    """camt.054: debit/credit notification on the holding account (late returns, refund debits)."""

    msg_id: str
    created_at: str
    account: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Statement:
    """camt.053: the holding account's statement, for monthly and yearly reconciliation."""

    msg_id: str
    created_at: str
    stmt_id: str
    account: str
    from_date: str                # YYYY-MM-DD (FrToDt/FrDtTm, and OPBD's date)
    to_date: str                  # YYYY-MM-DD (FrToDt/ToDtTm, and CLBD's date)
    opening_fen: int              # Bal OPBD, signed: a DBIT balance is negative
    closing_fen: int              # Bal CLBD, signed
    entries: tuple[Entry, ...]


# --- reason codes ----------------------------------------------------------------------

FIXABLE, NOT_FIXABLE, REFUND = "fixable", "not_fixable", "refund"
BATCH_RETRY, BATCH_BUG, ASK_STATUS, BATCH_ALARM, OPERATOR = (
    "batch_retry", "batch_bug", "ask_status", "batch_alarm", "operator")

REASONS: dict[str, tuple[str, str]] = {
    "AC01": (FIXABLE, "账号无效"),
    "AC04": (FIXABLE, "账户已销户"),
    "AC06": (FIXABLE, "账户冻结、久悬或挂失"),
    "AG01": (FIXABLE, "该账户类型不允许此交易"),
    "BE01": (FIXABLE, "户名与账号不符"),
    "BE17": (FIXABLE, "身份标识无效"),
    "AM05": (NOT_FIXABLE, "重复交易"),
    "MD07": (REFUND, "账户持有人已死亡"),
    "AM04": (BATCH_RETRY, "资金不足，整批未执行"),
    "AM10": (BATCH_BUG, "控制金额错误，整批拒绝"),
    "DU01": (ASK_STATUS, "报文标识重复"),
    "DS0B": (BATCH_ALARM, "签名验证失败，整批拒绝"),
    "DS09": (BATCH_ALARM, "解密失败，整批拒绝"),
    "NARR": (OPERATOR, "自由文本，由操作员决定"),
}


def reason_outcome(code: str | None) -> str:
    """What the gateway does with a status reason code; NARR and unknown codes go to an operator."""
    entry = REASONS.get(code or "")
    return entry[0] if entry else OPERATOR


# --- value checks (what the XSD would refuse, refused before writing) --------------------

_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?")
_BIC = re.compile(r"[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?")
_CODE4 = re.compile(r"[A-Z0-9]{1,4}")
_AMOUNT = re.compile(r"([0-9]+)(?:\.([0-9]{1,5}))?")
_CNAPS = re.compile(r"[0-9]{12}")
_MAX_FEN = 10 ** 16 - 1  # DecimalNumber totalDigits=18, with our two decimals and margin


def _text(field: str, value: Any, maxlen: int) -> str:
    if not isinstance(value, str):
        raise Iso20022Error(field, f"must be text, got {type(value).__name__}")
    if not value or len(value) > maxlen:
        raise Iso20022Error(field, f"must be 1 to {maxlen} characters, got {len(value)}")
    bad = _XML_ILLEGAL.search(value)
    if bad:
        raise Iso20022Error(field, f"character U+{ord(bad.group()):04X} cannot appear in XML")
    return value


def _date(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise Iso20022Error(field, f"{value!r} is not a date YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise Iso20022Error(field, f"{value!r} is not a calendar date") from None
    return value


def _datetime(field: str, value: Any) -> str:
    m = _DATETIME.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise Iso20022Error(field, f"{value!r} is not an ISO 8601 date-time (YYYY-MM-DDThh:mm:ss[+hh:mm])")
    try:
        datetime.date.fromisoformat(m.group(1))
        if int(m.group(2)) > 23 or int(m.group(3)) > 59 or int(m.group(4)) > 59:
            raise ValueError
    except ValueError:
        raise Iso20022Error(field, f"{value!r} is not a valid date-time") from None
    return value


def _code(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _CODE4.fullmatch(value):
        raise Iso20022Error(field, f"{value!r} is not a code of 1 to 4 letters or digits")
    return value


def _count(field: str, value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 10 ** 15:
        raise Iso20022Error(field, f"{value!r} is not a count of 0 to 15 digits")
    return str(value)


def _amount(field: str, fen: Any, *, positive: bool = True) -> str:
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise Iso20022Error(field, f"amount {fen!r} is not an integer of fen")
    if fen < (1 if positive else 0) or fen > _MAX_FEN:
        raise Iso20022Error(field, f"amount {fen} fen is out of range"
                            + (" (must be > 0)" if positive and fen < 1 else ""))
    return f"{fen // 100}.{fen % 100:02d}"


def _parse_amount(field: str, text: str | None) -> int:
    """ISO amounts allow up to 5 decimals; anything finer than a fen is refused."""
    m = _AMOUNT.fullmatch(text or "")
    if m is None:
        raise Iso20022Error(field, f"amount {text!r} is not a decimal number")
    frac = (m.group(2) or "").ljust(5, "0")
    if frac[2:] != "000":
        raise Iso20022Error(field, f"amount {text!r} is not a whole number of fen")
    return int(m.group(1)) * 100 + int(frac[:2])


# --- the Latin character set (per bank: charset = "latin") ---------------------------------
# The SWIFT/SEPA Latin set ISO 20022 banks without Unicode accept: letters, digits, space and
# / - ? : ( ) . , ' +. Chinese is written in pinyin (pypinyin, no tone marks; ü as v), one
# capitalised syllable each ("张三" -> "Zhang San"); full-width forms are folded (NFKC) and a
# name's middle dot (阿依古丽·买买提) becomes a space. Anything else is refused, never dropped.
_NAME_DOTS = str.maketrans({"\u00b7": " ", "\u2027": " ", "\u30fb": " ", "\u2022": " "})


@functools.lru_cache(maxsize=1)
def _pinyin():
    from pypinyin import Style, lazy_pinyin, load_phrases_dict
    # Bank words pypinyin's phrase list lacks: 行 of a branch is háng, not xíng.
    load_phrases_dict({w: [[c] for c in r] for w, r in (("支行", ("zhī", "háng")), ("分行", ("fēn", "háng")),
                                                          ("总行", ("zǒng", "háng")))})
    return lambda text, errors: lazy_pinyin(text, style=Style.NORMAL, errors=errors)


@functools.lru_cache(maxsize=65536)
def _latin(text: str) -> str | int:
    import unicodedata
    lazy_pinyin = _pinyin()
    folded = unicodedata.normalize("NFKC", text).translate(_NAME_DOTS)
    parts = []
    for token in lazy_pinyin(folded, lambda run: ["\0" + run]):
        if token.startswith("\0"):
            parts.append(token[1:])
        else:
            parts.append(f" {token.capitalize()} ")
    out = re.sub(" +", " ", "".join(parts)).strip()
    bad = re.search(r"[^A-Za-z0-9/\-?:().,'+ ]", out)
    return out if bad is None else ord(bad.group())


def to_latin(field: str, text: str) -> str:
    """*text* in the Latin character set (pinyin for Chinese), or Iso20022Error naming *field*
    and the first character the set cannot carry."""
    out = _latin(text)
    if isinstance(out, int):
        raise Iso20022Error(field, f"character {chr(out)!r} (U+{out:04X}) is outside the Latin character "
                                   f"set the bank accepts and has no transliteration")
    if not out and text:
        raise Iso20022Error(field, f"{text!r} is empty once transliterated")
    return out


def _remittance_lines(value: Any) -> list[str]:
    lines = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if lines is None:
        raise Iso20022Error("RmtInf/Ustrd", f"must be text or a list of texts, got {type(value).__name__}")
    return [_text("RmtInf/Ustrd", line, 140) for line in lines]


# --- building elements -----------------------------------------------------------------
# Elements handed to xmlfile.write() are built without a namespace: they are
# serialized inside <Document xmlns="urn:iso:..."> and so land in the message's
# default namespace, without a redundant xmlns on each of a million transfers.

def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _path(parent: etree._Element, path: str, text: str) -> etree._Element:
    """_path(e, "Id/Othr/Id", "123") builds the chain and sets the innermost text."""
    el = parent
    for tag in path.split("/"):
        el = etree.SubElement(el, tag)
    el.text = text
    return el


def _amt(parent: etree._Element, tag: str, value: str) -> None:
    _sub(parent, tag, value, Ccy=CURRENCY)


class _Document:
    """`with _Document(out, kind) as xf:` opens Document and the message element for streaming."""

    def __init__(self, out: BinaryIO, kind: str) -> None:
        self._out, self._kind = out, kind

    def __enter__(self):
        ns = _NS_BY_KIND[self._kind]
        self._file = etree.xmlfile(self._out, encoding="UTF-8")
        xf = self._file.__enter__()
        xf.write_declaration()
        self._doc = xf.element(f"{{{ns}}}Document", nsmap={None: ns})
        self._doc.__enter__()
        self._msg = xf.element(f"{{{ns}}}{MESSAGE_ELEMENT[self._kind]}")
        self._msg.__enter__()
        return xf

    def __exit__(self, *exc):
        try:
            self._msg.__exit__(*exc)
            self._doc.__exit__(*exc)
        finally:
            self._file.__exit__(*exc)
        return False


# --- pain.001 ----------------------------------------------------------------------------

def _pain001_group_header(h: PaymentInitiation) -> etree._Element:
    g = etree.Element("GrpHdr")
    _sub(g, "MsgId", _text("GrpHdr/MsgId", h.msg_id, 35))
    _sub(g, "CreDtTm", _datetime("GrpHdr/CreDtTm", h.created_at))
    _sub(g, "NbOfTxs", _count("GrpHdr/NbOfTxs", h.nb_of_txs))
    _sub(g, "CtrlSum", _amount("GrpHdr/CtrlSum", h.ctrl_sum_fen, positive=False))
    _path(g, "InitgPty/Nm", _text("GrpHdr/InitgPty/Nm", h.initiating_party, 140))
    return g


def _pain001_payment_info(h: PaymentInitiation) -> list[etree._Element]:
    """The PmtInf children that precede the transfers."""
    p = etree.Element("PmtInf")
    _sub(p, "PmtInfId", _text("PmtInf/PmtInfId", h.pmt_inf_id, 35))
    _sub(p, "PmtMtd", "TRF")
    if not isinstance(h.batch_booking, bool):
        raise Iso20022Error("PmtInf/BtchBookg", f"{h.batch_booking!r} is not a boolean")
    _sub(p, "BtchBookg", "true" if h.batch_booking else "false")
    _sub(p, "NbOfTxs", _count("PmtInf/NbOfTxs", h.nb_of_txs))
    _sub(p, "CtrlSum", _amount("PmtInf/CtrlSum", h.ctrl_sum_fen, positive=False))
    _path(p, "ReqdExctnDt/Dt", _date("PmtInf/ReqdExctnDt/Dt", h.requested_date))
    _path(p, "Dbtr/Nm", _text("PmtInf/Dbtr/Nm", h.debtor_name, 140))
    _path(p, "DbtrAcct/Id/Othr/Id", _text("PmtInf/DbtrAcct/Id/Othr/Id", h.debtor_account, 34))
    fin = _path(p, "DbtrAgt/FinInstnId", None)
    if h.debtor_agent_bic is not None:
        if not isinstance(h.debtor_agent_bic, str) or not _BIC.fullmatch(h.debtor_agent_bic):
            raise Iso20022Error("PmtInf/DbtrAgt/FinInstnId/BICFI", f"{h.debtor_agent_bic!r} is not a BIC")
        _sub(fin, "BICFI", h.debtor_agent_bic)
    _path(fin, "Othr/Id", _text("PmtInf/DbtrAgt/FinInstnId/Othr/Id", h.debtor_agent_id, 35))
    _sub(p, "ChrgBr", "SLEV")   # iso20022.md: charges borne as the service level says
    return list(p)


@functools.lru_cache(maxsize=None)
def _transfer_template(agent: str | None, id_number: bool, remittance: bool):
    """A CdtTrfTxInf skeleton for one combination of optional parts, and where its texts go.

    Copying a skeleton and filling eight leaves costs half of building twenty
    elements one by one, and the writer's time is spent here.
    """
    x = etree.Element("CdtTrfTxInf")
    pmt = _sub(x, "PmtId")
    _sub(pmt, "InstrId", "@instr")
    _sub(pmt, "EndToEndId", "@e2e")
    _sub(_sub(x, "Amt"), "InstdAmt", "@amount", Ccy=CURRENCY)
    if agent == "cnaps":
        clr = _path(x, "CdtrAgt/FinInstnId/ClrSysMmbId", None)
        _path(clr, "ClrSysId/Cd", "CNAPS")
        _sub(clr, "MmbId", "@cnaps")
    elif agent == "name":
        _path(x, "CdtrAgt/FinInstnId/Nm", "@agent")
    cdtr = _sub(x, "Cdtr")
    _sub(cdtr, "Nm", "@name")
    if id_number:
        othr = _path(cdtr, "Id/PrvtId/Othr", None)
        _sub(othr, "Id", "@idno")
        _path(othr, "SchmeNm/Cd", "NIDN")
    _path(x, "CdtrAcct/Id/Othr/Id", "@account")
    if remittance:
        _path(x, "RmtInf/Ustrd", "@ustrd")
    slots = []
    for el in x.iter():
        if el.text and el.text.startswith("@"):
            path, up = [], el
            while up is not x:
                path.insert(0, up.getparent().index(up))
                up = up.getparent()
            slots.append((el.text[1:], tuple(path)))
    return x, tuple(slots)


def _credit_transfer(t: CreditTransfer, seq: int) -> etree._Element:
    where = f"CdtTrfTxInf[{seq}]/"
    lines = _remittance_lines(t.remittance)
    values = {
        "instr": _text(where + "PmtId/InstrId", t.instr_id, 35),
        "e2e": _text(where + "PmtId/EndToEndId", t.end_to_end_id, 35),
        "amount": _amount(where + "Amt/InstdAmt", t.amount_fen),
        "name": _text(where + "Cdtr/Nm", t.creditor_name, 140),
        "account": _text(where + "CdtrAcct/Id/Othr/Id", t.creditor_account, 34),
    }
    agent = None
    if t.creditor_agent_cnaps:
        if not isinstance(t.creditor_agent_cnaps, str) or not _CNAPS.fullmatch(t.creditor_agent_cnaps):
            raise Iso20022Error(where + "CdtrAgt/FinInstnId/ClrSysMmbId/MmbId",
                                f"{t.creditor_agent_cnaps!r} is not a 12-digit CNAPS code")
        values["cnaps"], agent = t.creditor_agent_cnaps, "cnaps"
    elif t.creditor_agent_name:
        values["agent"], agent = _text(where + "CdtrAgt/FinInstnId/Nm", t.creditor_agent_name, 140), "name"
    if t.creditor_id_number is not None:
        values["idno"] = _text(where + "Cdtr/Id/PrvtId/Othr/Id", t.creditor_id_number, 35)
    if lines:
        values["ustrd"] = lines[0]
    template, slots = _transfer_template(agent, "idno" in values, bool(lines))
    x = copy.deepcopy(template)
    for name, path in slots:
        el = x
        for i in path:
            el = el[i]
        el.text = values[name]
    if len(lines) > 1:
        rmt = x[len(x) - 1]
        for line in lines[1:]:
            _sub(rmt, "Ustrd", line)
    return x


def _c14n(el: etree._Element) -> bytes:
    # Built without a namespace, each element canonicalises to exactly the bytes it has inside
    # <Document xmlns="..."> once parsed (the default namespace is rendered on Document only).
    return etree.tostring(el, method="c14n", exclusive=True, with_comments=False)


_PAIN001_TAIL = b"</CstmrCdtTrfInitn></Document>"


def write_pain001(out: BinaryIO, header: PaymentInitiation,
                  transfers: Iterable[CreditTransfer], signer: Any = None) -> tuple[int, int]:
    """Stream a pain.001 to the binary file *out*; return (count, sum in fen) written.

    The document is written in exclusive-c14n form: what an enveloped signature
    digests is the bytes written minus the Signature itself, so with a *signer*
    (`signer.signature(digest) -> bytes`, a ds:Signature element for that SHA-256
    digest) the digest is taken as the bytes go out and the signature is written
    into SplmtryData/Envlp, the message's last child, without reading anything back.

    Raises Iso20022Error on a value the XSD would refuse, and at the end on
    "GrpHdr/NbOfTxs" or "GrpHdr/CtrlSum" when the transfers do not add up to
    the header (before anything is signed): the file is then incomplete or wrong
    and the caller discards it.
    """
    group = _pain001_group_header(header)   # checked before the first byte goes out
    head = _pain001_payment_info(header)
    digest = hashlib.sha256() if signer is not None else None
    write = out.write

    def put(data: bytes) -> None:
        write(data)
        if digest is not None:
            digest.update(data)

    write(b'<?xml version="1.0" encoding="UTF-8"?>\n')   # outside c14n: not digested
    put(f'<Document xmlns="{NS_PAIN001}"><CstmrCdtTrfInitn>'.encode())
    put(_c14n(group))
    put(b"<PmtInf>" + b"".join(_c14n(el) for el in head))
    count = total = 0
    for t in transfers:
        count += 1
        put(_c14n(_credit_transfer(t, count)) + b"\n")
        total += t.amount_fen
    put(b"</PmtInf>")
    if count != header.nb_of_txs or total != header.ctrl_sum_fen:
        write(_PAIN001_TAIL)   # well-formed but unsigned, as the bank's AM10 tests want one
        if count != header.nb_of_txs:
            raise Iso20022Error("GrpHdr/NbOfTxs", f"header says {header.nb_of_txs} transfers, {count} written")
        raise Iso20022Error("GrpHdr/CtrlSum", f"header says {header.ctrl_sum_fen} fen, transfers sum to {total}")
    if digest is not None:
        # The enveloped-signature transform removes the Signature only: its empty envelope and
        # the closing tags after it are digested, ahead of being written.
        put(b"<SplmtryData><Envlp>")
        digest.update(b"</Envlp></SplmtryData>" + _PAIN001_TAIL)
        write(signer.signature(digest.digest()))
        write(b"</Envlp></SplmtryData>")
    write(_PAIN001_TAIL)
    return count, total


@dataclass(frozen=True)
class Part:
    """One pain.001 message of a batch split by the bank's limits."""

    msg_id: str
    count: int
    amount_fen: int
    size: int                     # bytes written


def write_pain001_parts(open_part, header: PaymentInitiation, transfers: Iterable[CreditTransfer], *,
                        max_transfers: int | None, max_bytes: int | None, spool: BinaryIO,
                        signer: Any = None, kind: str = "PAY") -> list[Part]:
    """Write a batch as one or several pain.001 messages, each within the bank's limits.

    iso20022.md: a batch larger than `max_transfers` transfers or `max_bytes` bytes a
    message goes out as several, MsgId `{BatchNo}-{part:03d}` (PmtInfId `{MsgId}/{kind}`),
    each with its own GrpHdr totals; a batch that fits is one message with MsgId = BatchNo,
    as before. A part's transfers are spooled (their canonical bytes, to *spool*, a
    scratch binary file) until the part is full, then its header (now known) and the
    spooled bytes are written to `open_part(msg_id)` (a binary file, closed by the caller
    through the returned context) and signed as a whole document. Memory stays flat.
    Raises Iso20022Error when a single transfer cannot fit *max_bytes* or the transfers do
    not add up to *header*.
    """
    base = header.msg_id
    sig_len = len(signer.signature(b"\0" * 32)) if signer is not None else 0
    probe = dataclasses_replace(header, msg_id=base + "-999", pmt_inf_id=f"{base}-999/{kind}",
                                nb_of_txs=10 ** 14, ctrl_sum_fen=_MAX_FEN)
    overhead = (len(b'<?xml version="1.0" encoding="UTF-8"?>\n') + len(f'<Document xmlns="{NS_PAIN001}">'
                '<CstmrCdtTrfInitn>'.encode()) + len(_c14n(_pain001_group_header(probe)))
                + len(b"<PmtInf></PmtInf>") + sum(len(_c14n(el)) for el in _pain001_payment_info(probe))
                + len(b"<SplmtryData><Envlp></Envlp></SplmtryData>") + sig_len + len(_PAIN001_TAIL))
    if max_bytes is not None and max_bytes <= overhead:
        raise Iso20022Error("max_message_bytes", f"{max_bytes} bytes cannot hold a pain.001 ({overhead} "
                                                 f"bytes before any transfer)")
    parts: list[Part] = []
    state = {"count": 0, "sum": 0, "bytes": 0}

    def flush(last: bool) -> None:
        number = len(parts) + 1
        msg_id = base if (last and number == 1) else f"{base}-{number:03d}"
        h = dataclasses_replace(header, msg_id=msg_id, pmt_inf_id=f"{msg_id}/{kind}",
                                nb_of_txs=state["count"], ctrl_sum_fen=state["sum"])
        spool.flush()
        spool.seek(0)
        with open_part(msg_id) as out:
            size = _write_spooled(out, h, spool, state["bytes"], signer)
        spool.seek(0)
        spool.truncate()
        parts.append(Part(msg_id, state["count"], state["sum"], size))
        state.update(count=0, sum=0, bytes=0)

    seen = total = 0
    for t in transfers:
        seen += 1
        data = _c14n(_credit_transfer(t, seen)) + b"\n"
        if max_bytes is not None and overhead + len(data) > max_bytes:
            raise Iso20022Error(f"CdtTrfTxInf[{seen}]", f"one transfer of {len(data)} bytes cannot fit a "
                                                        f"message of max_message_bytes {max_bytes}")
        full = ((max_transfers is not None and state["count"] >= max_transfers)
                or (max_bytes is not None and overhead + state["bytes"] + len(data) > max_bytes))
        if state["count"] and full:
            flush(last=False)
        spool.write(data)
        state["count"] += 1
        state["sum"] += t.amount_fen
        state["bytes"] += len(data)
        total += t.amount_fen
    if seen != header.nb_of_txs:
        raise Iso20022Error("GrpHdr/NbOfTxs", f"header says {header.nb_of_txs} transfers, {seen} written")
    if total != header.ctrl_sum_fen:
        raise Iso20022Error("GrpHdr/CtrlSum", f"header says {header.ctrl_sum_fen} fen, transfers sum to {total}")
    flush(last=True)
    return parts


def _write_spooled(out: BinaryIO, header: PaymentInitiation, spool: BinaryIO, length: int, signer: Any) -> int:
    """One part: header, the spooled transfers' bytes, signature; returns the bytes written."""
    group = _pain001_group_header(header)
    head = _pain001_payment_info(header)
    digest = hashlib.sha256() if signer is not None else None
    size = 0

    def put(data: bytes, digested: bool = True) -> None:
        nonlocal size
        out.write(data)
        size += len(data)
        if digest is not None and digested:
            digest.update(data)

    put(b'<?xml version="1.0" encoding="UTF-8"?>\n', digested=False)
    put(f'<Document xmlns="{NS_PAIN001}"><CstmrCdtTrfInitn>'.encode())
    put(_c14n(group))
    put(b"<PmtInf>" + b"".join(_c14n(el) for el in head))
    left = length
    while left:
        chunk = spool.read(min(left, 1 << 20))
        if not chunk:
            raise Iso20022Error("PmtInf", "the spooled transfers ended early")
        put(chunk)
        left -= len(chunk)
    put(b"</PmtInf>")
    if digest is not None:
        put(b"<SplmtryData><Envlp>")
        digest.update(b"</Envlp></SplmtryData>" + _PAIN001_TAIL)
        put(signer.signature(digest.digest()), digested=False)
        put(b"</Envlp></SplmtryData>", digested=False)
    put(_PAIN001_TAIL, digested=False)
    return size


# --- reading ------------------------------------------------------------------------------

def _input(source: Any) -> Any:
    """What iterparse takes: a path, or a binary file object; bytes are wrapped."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    return source


@functools.lru_cache(maxsize=None)
def schema(kind: str) -> etree.XMLSchema:
    """The XMLSchema for a message type, parsed once."""
    if kind not in _NS_BY_KIND:
        raise Iso20022Error("Document", f"no schema for message type {kind!r}")
    return etree.XMLSchema(etree.parse(str(XSD_DIR / f"{kind}.xsd")))


def _iterparse(source: Any, kind: str | None, events: tuple[str, ...], tag: Any = None):
    return etree.iterparse(
        _input(source), events=events, tag=tag, schema=schema(kind) if kind else None,
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
        remove_comments=True, remove_pis=True)


_ELEMENT_IN_MESSAGE = re.compile(r"Element '(?:\{[^}]*\})?([^']+)'")


def _schema_error(exc: etree.XMLSyntaxError) -> SchemaError:
    msg = (exc.msg or str(exc)).strip()
    m = _ELEMENT_IN_MESSAGE.search(msg)
    return SchemaError(exc.lineno or 0, msg, m.group(1) if m else "Document")


class _Reader:
    """Drives iterparse over one document, turning libxml2's errors into ours."""

    def __init__(self, source: Any, kind: str, tags: list[str]) -> None:
        self.kind = kind
        self.source, self.pos = source, _rewind(source)
        self.ns = _NS_BY_KIND[kind]
        self.q = {t: f"{{{self.ns}}}{t}" for t in tags}
        self._it = _iterparse(source, kind, ("start", "end"),
                              tag=[f"{{{self.ns}}}Document", *self.q.values()])
        self._started = False

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, etree._Element]:
        try:
            event, el = next(self._it)
        except etree.XMLSyntaxError as exc:
            if exc.lineno:  # not well-formed: libxml2 knows the line
                raise _schema_error(exc) from None
            raise _locate(self.source, self.pos, self.kind, exc) from None
        if not self._started:
            self._started = True
            _no_doctype(el)
            if el.tag != f"{{{self.ns}}}Document":
                raise Iso20022Error("Document", f"root is {el.tag}, expected {{{self.ns}}}Document")
        return event, el

    def n(self, path: str) -> str:
        """'Bal' -> the namespaced tag, for the few direct lookups."""
        return "/".join(f"{{{self.ns}}}{p}" for p in path.split("/"))

    def flat(self, el: etree._Element | None, where: str) -> "_Flat":
        return _Flat(el, len(self.ns) + 2, where)


class _Flat:
    """One element's leaves by relative path ('PmtId/InstrId'), gathered in one walk.

    A million transfers make ElementPath lookups (nine per transfer) the reader's
    main cost; one recursive walk per element is several times cheaper.
    """

    __slots__ = ("leaves", "where")

    def __init__(self, el: etree._Element | None, cut: int, where: str) -> None:
        self.where = where
        self.leaves: dict[str, list[etree._Element]] = {}
        if el is not None:
            self._walk(el, "", cut)

    def _walk(self, el: etree._Element, prefix: str, cut: int) -> None:
        leaves = self.leaves
        for child in el:
            if not isinstance(child.tag, str):  # an unexpanded entity reference
                continue
            name = prefix + child.tag[cut:]
            if len(child):
                self._walk(child, name + "/", cut)
            elif name in leaves:
                leaves[name].append(child)
            else:
                leaves[name] = [child]

    def opt(self, path: str) -> str | None:
        found = self.leaves.get(path)
        return None if found is None else (found[0].text or "")

    def req(self, path: str) -> str:
        text = self.opt(path)
        if not text:
            raise Iso20022Error(self.where + path, "missing")
        return text

    def all(self, path: str) -> list[str]:
        return [x.text or "" for x in self.leaves.get(path, ())]

    def amount(self, path: str, required: bool = True) -> int | None:
        found = self.leaves.get(path)
        if found is None:
            if required:
                raise Iso20022Error(self.where + path, "missing")
            return None
        ccy = found[0].get("Ccy")
        if ccy != CURRENCY:
            raise Iso20022Error(self.where + path, f"currency {ccy!r}, only {CURRENCY} is handled")
        return _parse_amount(self.where + path, found[0].text)


def _forget(el: etree._Element) -> None:
    """Drop a handled element and the siblings before it, so the tree stays small."""
    el.clear(keep_tail=False)
    parent = el.getparent()
    if parent is not None:
        while el.getprevious() is not None:
            del parent[0]


def read_pain001(source: Any) -> tuple[PaymentInitiation, Iterator[CreditTransfer]]:
    """Read a pain.001 (path, binary file or bytes): the header now, the transfers as they stream.

    The iterator raises SchemaError where the document breaks the XSD,
    Iso20022Error on a transfer we cannot take (non-CNY amount, fractions of a
    fen, a second PmtInf) and, at its end, "GrpHdr/NbOfTxs" or "GrpHdr/CtrlSum"
    (or the PmtInf ones) when the transfers do not add up.
    """
    r = _Reader(source, PAIN001, ["GrpHdr", "PmtInf", "CdtTrfTxInf"])
    tx_tag, pmt_tag, hdr_tag = r.q["CdtTrfTxInf"], r.q["PmtInf"], r.q["GrpHdr"]
    group = None
    for event, el in r:
        if event == "end" and el.tag == hdr_tag:
            group = r.flat(el, "GrpHdr/")
        elif event == "start" and el.tag == tx_tag:
            pmt = r.flat(el.getparent(), "PmtInf/")
            break
    else:
        raise Iso20022Error("PmtInf/CdtTrfTxInf", "no transfer in the document")
    assert group is not None  # the XSD puts GrpHdr first
    header = PaymentInitiation(
        msg_id=group.req("MsgId"),
        created_at=group.req("CreDtTm"),
        nb_of_txs=int(group.req("NbOfTxs")),
        ctrl_sum_fen=_parse_amount("GrpHdr/CtrlSum", group.req("CtrlSum")),
        initiating_party=group.opt("InitgPty/Nm") or "",
        debtor_name=pmt.opt("Dbtr/Nm") or "",
        debtor_account=pmt.req("DbtrAcct/Id/Othr/Id"),
        debtor_agent_bic=pmt.opt("DbtrAgt/FinInstnId/BICFI"),
        debtor_agent_id=(pmt.opt("DbtrAgt/FinInstnId/Othr/Id")
                         or pmt.opt("DbtrAgt/FinInstnId/BICFI") or ""),
        requested_date=pmt.opt("ReqdExctnDt/Dt") or pmt.req("ReqdExctnDt/DtTm")[:10],
        pmt_inf_id=pmt.req("PmtInfId"),
        batch_booking=pmt.opt("BtchBookg") in ("true", "1"),
    )
    expected = [("GrpHdr/NbOfTxs", header.nb_of_txs, "GrpHdr/CtrlSum", header.ctrl_sum_fen)]
    pmt_nb, pmt_ctrl = pmt.opt("NbOfTxs"), pmt.opt("CtrlSum")
    expected.append(("PmtInf/NbOfTxs", int(pmt_nb) if pmt_nb is not None else None,
                     "PmtInf/CtrlSum", _parse_amount("PmtInf/CtrlSum", pmt_ctrl) if pmt_ctrl is not None else None))

    def transfers() -> Iterator[CreditTransfer]:
        count = total = 0
        for event, el in r:
            if el.tag == pmt_tag and event == "start":
                raise Iso20022Error("PmtInf", "more than one PmtInf: one batch is one PmtInf")
            if el.tag != tx_tag or event != "end":
                continue
            count += 1
            f = r.flat(el, f"CdtTrfTxInf[{count}]/")
            ustrd = f.all("RmtInf/Ustrd")
            t = CreditTransfer(
                instr_id=f.req("PmtId/InstrId"),
                end_to_end_id=f.req("PmtId/EndToEndId"),
                amount_fen=f.amount("Amt/InstdAmt"),
                creditor_name=f.req("Cdtr/Nm"),
                creditor_account=f.req("CdtrAcct/Id/Othr/Id"),
                creditor_agent_name=f.opt("CdtrAgt/FinInstnId/Nm"),
                creditor_id_number=f.opt("Cdtr/Id/PrvtId/Othr/Id"),
                remittance=ustrd[0] if len(ustrd) == 1 else tuple(ustrd),
                creditor_agent_cnaps=(f.opt("CdtrAgt/FinInstnId/ClrSysMmbId/MmbId")
                                      if f.opt("CdtrAgt/FinInstnId/ClrSysMmbId/ClrSysId/Cd") == "CNAPS" else None),
            )
            total += t.amount_fen
            _forget(el)
            yield t
        for nb_field, nb, sum_field, ctrl_sum in expected:
            if nb is not None and nb != count:
                raise Iso20022Error(nb_field, f"says {nb} transfers, the document has {count}")
            if ctrl_sum is not None and ctrl_sum != total:
                raise Iso20022Error(sum_field, f"says {ctrl_sum} fen, the transfers sum to {total}")

    return header, transfers()


# --- pain.002 ------------------------------------------------------------------------------

def _reason_info(parent: etree._Element, code: str | None, info: str | None, where: str) -> None:
    if code is None and not info:
        return
    sts = _sub(parent, "StsRsnInf")
    if code is not None:
        _path(sts, "Rsn/Cd", _code(where + "StsRsnInf/Rsn/Cd", code))
    if info:
        _text(where + "StsRsnInf/AddtlInf", info, 105 * 1000)
        for i in range(0, len(info), 105):
            _sub(sts, "AddtlInf", info[i:i + 105])


def _tx_status(s: TxStatus, seq: int) -> etree._Element:
    where = f"TxInfAndSts[{seq}]/"
    x = etree.Element("TxInfAndSts")
    _sub(x, "OrgnlInstrId", _text(where + "OrgnlInstrId", s.orig_instr_id, 35))
    _sub(x, "OrgnlEndToEndId", _text(where + "OrgnlEndToEndId", s.orig_end_to_end_id, 35))
    _sub(x, "TxSts", _code(where + "TxSts", s.status))
    _reason_info(x, s.reason_code, s.additional_info, where)
    date_only = s.acceptance_date is not None and _DATE.fullmatch(s.acceptance_date)
    if s.acceptance_date is not None and not date_only:
        _sub(x, "AccptncDtTm", _datetime(where + "AccptncDtTm", s.acceptance_date))
    if s.bank_ref is not None:
        _sub(x, "AcctSvcrRef", _text(where + "AcctSvcrRef", s.bank_ref, 35))
    if s.amount_fen is not None or date_only or s.creditor_account is not None:
        ref = _sub(x, "OrgnlTxRef")
        if s.amount_fen is not None:
            _amt(_sub(ref, "Amt"), "InstdAmt", _amount(where + "OrgnlTxRef/Amt/InstdAmt", s.amount_fen))
        if date_only:
            _path(ref, "ReqdExctnDt/Dt", _date(where + "OrgnlTxRef/ReqdExctnDt/Dt", s.acceptance_date))
        if s.creditor_account is not None:
            _path(ref, "CdtrAcct/Id/Othr/Id",
                  _text(where + "OrgnlTxRef/CdtrAcct/Id/Othr/Id", s.creditor_account, 34))
    return x


def write_pain002(out: BinaryIO, report: StatusReport, statuses: Iterable[TxStatus]) -> int:
    """Stream a pain.002 to *out*; return the number of TxInfAndSts written.

    With no statuses (a whole batch refused) there is no OrgnlPmtInfAndSts.
    """
    g = etree.Element("GrpHdr")
    _sub(g, "MsgId", _text("GrpHdr/MsgId", report.msg_id, 35))
    _sub(g, "CreDtTm", _datetime("GrpHdr/CreDtTm", report.created_at))
    og = etree.Element("OrgnlGrpInfAndSts")
    _sub(og, "OrgnlMsgId", _text("OrgnlGrpInfAndSts/OrgnlMsgId", report.orig_msg_id, 35))
    _sub(og, "OrgnlMsgNmId", _text("OrgnlGrpInfAndSts/OrgnlMsgNmId", report.orig_msg_nm_id, 35))
    if report.group_status is not None:
        _sub(og, "GrpSts", _code("OrgnlGrpInfAndSts/GrpSts", report.group_status))
    _reason_info(og, report.group_reason, report.group_info, "OrgnlGrpInfAndSts/")
    pmt_inf_id = _text("OrgnlPmtInfAndSts/OrgnlPmtInfId",
                       report.orig_pmt_inf_id if report.orig_pmt_inf_id is not None else report.orig_msg_id, 35)
    count = 0
    with _Document(out, PAIN002) as xf:
        xf.write(g)
        xf.write(og)
        it = iter(statuses)
        first = next(it, None)
        if first is not None:
            with xf.element("OrgnlPmtInfAndSts"):
                el = etree.Element("OrgnlPmtInfId")
                el.text = pmt_inf_id
                xf.write(el)
                count = 1
                xf.write(_tx_status(first, 1))
                xf.write("\n")
                for s in it:
                    count += 1
                    xf.write(_tx_status(s, count))
                    xf.write("\n")
    return count


def read_pain002(source: Any) -> tuple[StatusReport, Iterator[TxStatus]]:
    """Read a pain.002: the group status now, the per-transfer statuses as they stream."""
    r = _Reader(source, PAIN002, ["GrpHdr", "OrgnlGrpInfAndSts", "OrgnlPmtInfAndSts", "TxInfAndSts"])
    tx_tag = r.q["TxInfAndSts"]
    group = orig = pmt_inf_id = None
    first_seen = False
    for event, el in r:
        if event == "end" and el.tag == r.q["GrpHdr"]:
            group = r.flat(el, "GrpHdr/")
        elif event == "end" and el.tag == r.q["OrgnlGrpInfAndSts"]:
            orig = r.flat(el, "OrgnlGrpInfAndSts/")
        elif event == "start" and el.tag == tx_tag:
            pmt_inf_id = el.getparent().findtext(r.n("OrgnlPmtInfId"))
            first_seen = True
            break
        elif event == "end" and el.tag == r.q["OrgnlPmtInfAndSts"] and pmt_inf_id is None:
            pmt_inf_id = el.findtext(r.n("OrgnlPmtInfId"))  # a payment block without transfer statuses
    assert group is not None and orig is not None  # required by the XSD
    info = orig.all("StsRsnInf/AddtlInf")
    report = StatusReport(
        msg_id=group.req("MsgId"),
        created_at=group.req("CreDtTm"),
        orig_msg_id=orig.req("OrgnlMsgId"),
        orig_msg_nm_id=orig.req("OrgnlMsgNmId"),
        group_status=orig.opt("GrpSts"),
        group_reason=orig.opt("StsRsnInf/Rsn/Cd"),
        group_info="".join(info) if info else None,
        orig_pmt_inf_id=pmt_inf_id,
    )

    def statuses() -> Iterator[TxStatus]:
        if not first_seen:
            return
        count = 0
        for event, el in r:
            if el.tag != tx_tag or event != "end":
                continue
            count += 1
            f = r.flat(el, f"TxInfAndSts[{count}]/")
            info = f.all("StsRsnInf/AddtlInf")
            accepted = f.opt("AccptncDtTm")
            if accepted is None:
                accepted = f.opt("OrgnlTxRef/ReqdExctnDt/Dt") or f.opt("OrgnlTxRef/ReqdExctnDt/DtTm")
            s = TxStatus(
                orig_instr_id=f.req("OrgnlInstrId"),
                orig_end_to_end_id=f.req("OrgnlEndToEndId"),
                status=f.req("TxSts"),
                reason_code=f.opt("StsRsnInf/Rsn/Cd"),
                additional_info="".join(info) if info else None,
                amount_fen=f.amount("OrgnlTxRef/Amt/InstdAmt", required=False),
                creditor_account=f.opt("OrgnlTxRef/CdtrAcct/Id/Othr/Id"),
                acceptance_date=accepted,
                bank_ref=f.opt("AcctSvcrRef"),
            )
            _forget(el)
            yield s

    return report, statuses()


# --- camt.053 / camt.054 -----------------------------------------------------------------

def _group_header81(msg_id: str, created_at: str) -> etree._Element:
    g = etree.Element("GrpHdr")
    _sub(g, "MsgId", _text("GrpHdr/MsgId", msg_id, 35))
    _sub(g, "CreDtTm", _datetime("GrpHdr/CreDtTm", created_at))
    return g


def _account(parent: etree._Element, field: str, account: str) -> None:
    _path(parent, "Acct/Id/Othr/Id", _text(field, account, 34))


def _entry(e: Entry, seq: int) -> etree._Element:
    where = f"Ntry[{seq}]/"
    x = etree.Element("Ntry")
    _sub(x, "NtryRef", _text(where + "NtryRef", e.entry_ref, 35))
    _amt(x, "Amt", _amount(where + "Amt", e.amount_fen))
    if not isinstance(e.credit, bool):
        raise Iso20022Error(where + "CdtDbtInd", f"{e.credit!r} is not a boolean")
    _sub(x, "CdtDbtInd", "CRDT" if e.credit else "DBIT")
    _path(x, "Sts/Cd", _code(where + "Sts/Cd", e.status))
    _path(x, "BookgDt/Dt", _date(where + "BookgDt/Dt", e.booking_date))
    if e.bank_ref is not None:
        _sub(x, "AcctSvcrRef", _text(where + "AcctSvcrRef", e.bank_ref, 35))
    # Bank transaction code: payments / received or issued credit transfer / SEPA-style
    # credit transfer, or a return of one.
    domn = _path(x, "BkTxCd/Domn/Cd", "PMNT").getparent()
    fmly = _sub(domn, "Fmly")
    _sub(fmly, "Cd", "RCDT" if e.credit else "ICDT")
    _sub(fmly, "SubFmlyCd", "RRTN" if e.return_reason else "ESCT")
    if e.end_to_end_id is not None or e.instr_id is not None or e.return_reason is not None:
        tx = _path(x, "NtryDtls/TxDtls", None)
        if e.end_to_end_id is not None or e.instr_id is not None:
            refs = _sub(tx, "Refs")
            if e.instr_id is not None:
                _sub(refs, "InstrId", _text(where + "NtryDtls/TxDtls/Refs/InstrId", e.instr_id, 35))
            if e.end_to_end_id is not None:
                _sub(refs, "EndToEndId", _text(where + "NtryDtls/TxDtls/Refs/EndToEndId", e.end_to_end_id, 35))
        if e.return_reason is not None:
            _path(tx, "RtrInf/Rsn/Cd", _code(where + "NtryDtls/TxDtls/RtrInf/Rsn/Cd", e.return_reason))
    return x


def _read_entry(f: _Flat) -> Entry:
    if len(f.leaves.get("NtryDtls/TxDtls/Refs/EndToEndId", ())) > 1 or \
            len(f.leaves.get("NtryDtls/TxDtls/Refs/InstrId", ())) > 1:
        raise Iso20022Error(f.where + "NtryDtls/TxDtls", "several transactions in one entry, one expected")
    booked = f.opt("BookgDt/Dt") or (f.opt("BookgDt/DtTm") or "")[:10]
    if not booked:
        raise Iso20022Error(f.where + "BookgDt", "missing")
    return Entry(
        entry_ref=f.req("NtryRef"),
        amount_fen=f.amount("Amt"),
        credit=f.req("CdtDbtInd") == "CRDT",
        booking_date=booked,
        status=f.opt("Sts/Cd") or f.req("Sts/Prtry"),
        end_to_end_id=f.opt("NtryDtls/TxDtls/Refs/EndToEndId"),
        instr_id=f.opt("NtryDtls/TxDtls/Refs/InstrId"),
        return_reason=f.opt("NtryDtls/TxDtls/RtrInf/Rsn/Cd"),
        bank_ref=f.opt("AcctSvcrRef"),
    )


def write_camt054(out: BinaryIO, n: Notification) -> None:
    """Write a camt.054 with one Ntfctn (its Id is the MsgId) on the holding account."""
    g = _group_header81(n.msg_id, n.created_at)
    ntf = etree.Element("Ntfctn")
    _sub(ntf, "Id", n.msg_id)
    _account(ntf, "Ntfctn/Acct/Id/Othr/Id", n.account)
    entries = [_entry(e, i) for i, e in enumerate(n.entries, 1)]
    with _Document(out, CAMT054) as xf:
        xf.write(g)
        with xf.element("Ntfctn"):
            for el in ntf:
                xf.write(el)
            for el in entries:
                xf.write(el)
                xf.write("\n")


def _read_account_report(source: Any, kind: str, block: str):
    """(GrpHdr, the single Stmt/Ntfctn's own leaves, its Bal leaves, entries) of a camt document.

    The block's header (Id, Acct, Bal ...) precedes its entries in the XSD's
    order, so it is read when the first Ntry opens; each entry is then dropped
    once read, and a month's statement stays small in memory.
    """
    r = _Reader(source, kind, ["GrpHdr", block, "Ntry"])
    group = head = None
    balances: list[_Flat] = []
    blocks = 0
    entries: list[Entry] = []

    def take_head(el: etree._Element) -> _Flat:
        for i, bal in enumerate(el.iterfind(r.n("Bal")), 1):
            balances.append(r.flat(bal, f"{block}/Bal[{i}]/"))
        return r.flat(el, f"{block}/")

    for event, el in r:
        if el.tag == r.q["GrpHdr"] and event == "end":
            group = r.flat(el, "GrpHdr/")
        elif el.tag == r.q[block]:
            if event == "start":
                blocks += 1
                if blocks > 1:
                    raise Iso20022Error(block, f"more than one {block}: one account per document is handled")
            elif head is None:
                head = take_head(el)
        elif el.tag == r.q["Ntry"]:
            if event == "start":
                if head is None:
                    head = take_head(el.getparent())
            else:
                entries.append(_read_entry(r.flat(el, f"Ntry[{len(entries) + 1}]/")))
                _forget(el)
    assert group is not None and head is not None  # required by the XSD
    return group, head, balances, tuple(entries)


def read_camt054(source: Any) -> Notification:
    group, ntf, _, entries = _read_account_report(source, CAMT054, "Ntfctn")
    return Notification(
        msg_id=group.req("MsgId"),
        created_at=group.req("CreDtTm"),
        account=ntf.req("Acct/Id/Othr/Id"),
        entries=entries,
    )


def _balance(parent: etree._Element, code: str, fen: int, date: str) -> None:
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise Iso20022Error(f"Stmt/Bal[{code}]/Amt", f"{fen!r} is not an integer of fen")
    b = _sub(parent, "Bal")
    _path(b, "Tp/CdOrPrtry/Cd", code)
    _amt(b, "Amt", _amount(f"Stmt/Bal[{code}]/Amt", abs(fen), positive=False))
    _sub(b, "CdtDbtInd", "CRDT" if fen >= 0 else "DBIT")
    _path(b, "Dt/Dt", date)


def write_camt053(out: BinaryIO, s: Statement) -> None:
    """Write a camt.053 with one Stmt; refuses a statement whose entries do not add up."""
    g = _group_header81(s.msg_id, s.created_at)
    st = etree.Element("Stmt")
    _sub(st, "Id", _text("Stmt/Id", s.stmt_id, 35))
    per = _sub(st, "FrToDt")
    _sub(per, "FrDtTm", _date("Stmt/FrToDt/FrDtTm", s.from_date) + "T00:00:00")
    _sub(per, "ToDtTm", _date("Stmt/FrToDt/ToDtTm", s.to_date) + "T23:59:59")
    _account(st, "Stmt/Acct/Id/Othr/Id", s.account)
    _balance(st, "OPBD", s.opening_fen, s.from_date)
    _balance(st, "CLBD", s.closing_fen, s.to_date)
    _check_balances(s.opening_fen, s.closing_fen, s.entries)
    entries = [_entry(e, i) for i, e in enumerate(s.entries, 1)]
    with _Document(out, CAMT053) as xf:
        xf.write(g)
        with xf.element("Stmt"):
            for el in st:
                xf.write(el)
            for el in entries:
                xf.write(el)
                xf.write("\n")


def _check_balances(opening: int, closing: int, entries: Iterable[Entry]) -> None:
    """Booked entries move the balance; pending ones (Sts other than BOOK) do not."""
    moved = sum(e.amount_fen if e.credit else -e.amount_fen for e in entries if e.status == "BOOK")
    if opening + moved != closing:
        raise Iso20022Error("Stmt/Bal[CLBD]", f"opening {opening} + booked credits - debits {moved} "
                            f"= {opening + moved} fen, closing balance says {closing}")


def read_camt053(source: Any) -> Statement:
    """Read a camt.053; refuses it when opening + booked credits - debits != closing."""
    group, st, bals, entries = _read_account_report(source, CAMT053, "Stmt")
    balances: dict[str, tuple[int, str]] = {}
    for bal in bals:
        code = bal.opt("Tp/CdOrPrtry/Cd") or bal.opt("Tp/CdOrPrtry/Prtry") or ""
        fen = bal.amount("Amt")
        if bal.req("CdtDbtInd") == "DBIT":
            fen = -fen
        if code in balances:
            raise Iso20022Error(f"Stmt/Bal[{code}]", "given twice")
        balances[code] = (fen, bal.opt("Dt/Dt") or (bal.opt("Dt/DtTm") or "")[:10])
    for code in ("OPBD", "CLBD"):
        if code not in balances:
            raise Iso20022Error(f"Stmt/Bal[{code}]", "missing")
    opening, closing = balances["OPBD"][0], balances["CLBD"][0]
    from_date = (st.opt("FrToDt/FrDtTm") or "")[:10] or balances["OPBD"][1]
    to_date = (st.opt("FrToDt/ToDtTm") or "")[:10] or balances["CLBD"][1]
    _check_balances(opening, closing, entries)
    return Statement(
        msg_id=group.req("MsgId"),
        created_at=group.req("CreDtTm"),
        stmt_id=st.req("Id"),
        account=st.req("Acct/Id/Othr/Id"),
        from_date=from_date,
        to_date=to_date,
        opening_fen=opening,
        closing_fen=closing,
        entries=entries,
    )


# --- type and validation -----------------------------------------------------------------

def _rewind(source: Any):
    """For a file object, where it stands now (to come back to after a peek)."""
    if hasattr(source, "read"):
        return source.tell()
    return None


def message_type(source: Any) -> str:
    """"pain.001.001.10" / "pain.002.001.11" / "camt.053.001.08" / "camt.054.001.08" from the root namespace.

    A file object is read only as far as the root element and put back where it was.
    """
    pos = _rewind(source)
    try:
        try:
            _, root = next(_iterparse(source, None, ("start",)))
        except etree.XMLSyntaxError as exc:
            raise Iso20022Error("Document", f"not XML: {exc.msg}") from None
        except StopIteration:
            raise Iso20022Error("Document", "empty document") from None
    finally:
        if pos is not None:
            source.seek(pos)
    _no_doctype(root)
    q = etree.QName(root)
    if q.localname == "Document" and q.namespace not in _KIND_BY_NS and \
            (q.namespace or "").startswith(_ISO_NS_PREFIX):
        named = q.namespace[len(_ISO_NS_PREFIX):]
        expected = [k for k in _NS_BY_KIND if k[:8] == named[:8]]
        if expected:
            raise Iso20022Error("Document", f"{named} is not a version the gateway takes: "
                                f"{expected[0]} expected")
    if q.localname != "Document" or q.namespace not in _KIND_BY_NS:
        raise Iso20022Error("Document", f"root {root.tag} is not a pain.001/pain.002/camt.053/camt.054 Document")
    return _KIND_BY_NS[q.namespace]


_ISO_NS_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"


def _no_doctype(root: etree._Element) -> None:
    """Refuse a document with a DOCTYPE: the messages have none, and a DTD is how entity
    expansion, external entities and the validator's internal errors get in."""
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.system_url:
        raise Iso20022Error("Document", f"a DOCTYPE ({(info.doctype or '<!DOCTYPE>')[:80]}) is refused: "
                            "ISO 20022 messages carry no DTD or entity declarations")


# The elements that repeat by the thousand; only they need dropping as we go.
_REPEATING = ("CdtTrfTxInf", "TxInfAndSts", "Ntry")


_LOCATE_LIMIT = 64 << 20


def _size(source: Any) -> int:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    if hasattr(source, "read"):
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
        return end
    return os.path.getsize(source)


def _locate(source: Any, pos: int | None, kind: str, exc: etree.XMLSyntaxError) -> SchemaError:
    """The line of a schema error found while streaming.

    lxml's streaming validator reports its first error only when the parse
    ends, and without a line; to name the line the document is validated again
    as a tree, which is done only for documents up to 64 MB (about 130,000
    transfers). Past that the error names the element but not the line.
    """
    first = _schema_error(exc)
    try:
        if pos is not None:
            source.seek(pos)
        if _size(source) - (pos or 0) > _LOCATE_LIMIT:
            first.message += " (line not located: document over 64 MB)"
            first.args = (first.message,)
            return first
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                                 remove_comments=True, remove_pis=True)
        tree = etree.parse(_input(source), parser)
        xsd = schema(kind)
        if xsd.validate(tree) or not xsd.error_log:
            return first
        err = xsd.error_log[0]
        return _schema_error_from(err.line, err.message, err.path)
    except (OSError, ValueError, etree.LxmlError):
        # Whatever the second look trips on (libxml2's "Internal error in XML Schema
        # validation" on an entity reference, say), the first error stands.
        return first
    finally:
        if pos is not None:
            source.seek(pos)


def _schema_error_from(line: int, message: str, path: str | None) -> SchemaError:
    m = _ELEMENT_IN_MESSAGE.search(message)
    return SchemaError(line, f"{message.strip()}" + (f" (at {path})" if path else ""),
                       m.group(1) if m else "Document")


def well_formed(source: Any) -> None:
    """Refuse a document that is not well-formed XML whole (Iso20022Error naming the line).

    The streaming validator and readers parse with resolve_entities=False, and that
    parser lets a document cut off partway (or missing its last closing tags) through
    without an error: a received document must pass this first. A DOCTYPE is refused
    before (message_type), so no entity can be expanded here; memory stays flat.
    """
    pos = _rewind(source)
    message_type(source)
    try:
        for _, el in etree.iterparse(_input(source), events=("end",), no_network=True, load_dtd=False,
                                     remove_comments=True, remove_pis=True):
            _forget(el)
    except etree.XMLSyntaxError as exc:
        raise Iso20022Error("Document", f"not well-formed XML: line {exc.lineno}: {exc.msg}") from None
    finally:
        if pos is not None:
            source.seek(pos)


def validate(source: Any, kind: str | None = None) -> None:
    """XSD-validate a document of *kind* (default: from its root) while streaming it.

    libxml2 validates the parser's event stream (lxml passes the schema to the
    parser), and each transfer, status or entry is dropped once closed, so
    memory does not grow with the document: 21 MB peak for a 100,000-transfer
    pain.001 (49 MB), against 450 MB for XMLSchema.validate() on the parsed tree. Raises SchemaError("line N: message") at the first error.
    """
    pos = _rewind(source)
    named = message_type(source)    # refuses a DOCTYPE before anything else is read
    if kind is None:
        kind = named
    if kind not in _NS_BY_KIND:
        raise Iso20022Error("Document", f"unknown message type {kind!r}")
    ns = _NS_BY_KIND[kind]
    it = _iterparse(source, kind, ("end",), tag=[f"{{{ns}}}{t}" for t in _REPEATING])
    try:
        for _, el in it:
            _forget(el)
    except etree.XMLSyntaxError as exc:
        if exc.lineno:  # not well-formed: libxml2 knows the line
            raise _schema_error(exc) from None
        raise _locate(source, pos, kind, exc) from None
