"""protocols.cnbank_envelope: the signed, SM4-sealed cnbank message and its inner fields."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest

from protocols import cnbank_envelope as env
from protocols import sm
from protocols.cnbank_envelope import (
    EnvelopeError,
    EnvelopeSettings,
    Head,
    build_inner,
    build_message,
    build_reply,
    build_request,
    check_head,
    open_message,
    parse_reply,
    parse_request,
    peek_head,
)

NOW = datetime(2024, 1, 5, 1, 59, 30, tzinfo=timezone.utc)  # 09:59:30 in UTC+8
DEFAULT = EnvelopeSettings()
PLAIN_OK = EnvelopeSettings(allow_plaintext=True)


@pytest.fixture(scope="module")
def gw():
    return sm.generate_keypair()


@pytest.fixture(scope="module")
def bank():
    return sm.generate_keypair()


def head(**kw) -> Head:
    h = env.request_head("BP01", "GW0001", "BANK01", "G2024010500000001", NOW)
    for k, v in kw.items():
        setattr(h, k, v)
    return h


BP01 = {"BatchNo": "ORD1-P01", "Kind": "PAY", "OrderNo": "ORD1", "FileName": "ORD1-P01.req",
        "FileSM3": "ab" * 32, "FileEncKey": "QUJDRA==", "TotalCount": 2, "TotalAmount": 1234}


@pytest.fixture(scope="module")
def inner():
    return build_request("BP01", BP01)


@pytest.fixture(scope="module")
def sealed(gw, bank, inner):
    """One encrypted BP01 from the gateway to the bank."""
    return build_message(head(), inner, gw, bank.public_key, DEFAULT)


def field_of(raw: bytes, name: str) -> bytes:
    return re.search(b"<" + name.encode() + b">(.*?)</" + name.encode() + b">", raw).group(1)


def with_field(raw: bytes, name: str, value: bytes) -> bytes:
    tag = name.encode()
    return re.sub(b"<" + tag + b">.*?</" + tag + b">", lambda m: b"<" + tag + b">" + value +
                  b"</" + tag + b">", raw, count=1)


def refused(code: str, field: str | None = None):
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(EnvelopeError)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            r = self.cm.__exit__(*exc)
            assert self.info.value.code == code, self.info.value
            if field is not None:
                assert self.info.value.field == field, self.info.value
                assert field.split("/")[-1] in str(self.info.value)
            return r
    return _Ctx()


# --- envelope round trips -----------------------------------------------------------

def test_encrypted_round_trip(gw, bank, inner, sealed):
    """The bank opens what the gateway sealed: same Head, same inner XML, nothing in clear."""
    opened = open_message(sealed, bank, gw.public_key, DEFAULT)
    assert opened.head == head()
    assert opened.inner_xml == inner
    assert opened.raw == sealed
    assert b"ORD1-P01" not in sealed  # the inner fields travel encrypted
    assert parse_request("BP01", opened.inner_xml) == BP01
    check_head(opened.head, now=NOW, expect_tx="BP01", reply=False)


def test_wire_layout(sealed):
    """Declaration, Head fields in the dialect's order, single-line base64, 32-byte key||iv sealed."""
    assert sealed.startswith(b'<?xml version="1.0" encoding="GB18030"?>\n<CnBank><Head><TxCode>')
    names = re.findall(rb"<(\w+)(?:/>|>)", field_of(sealed, "Head"))
    assert [n.decode() for n in names] == [n for n, _ in env.HEAD_FIELDS]
    assert b"<RetCode/><RetMsg/></Head><Body>" in sealed
    for name in ("Body", "EncKey", "SignValue"):
        value = field_of(sealed, name)
        assert b"\n" not in value and b"\r" not in value
        base64.b64decode(value, validate=True)
    enc_key = base64.b64decode(field_of(sealed, "EncKey"))
    assert enc_key[0] == 4 and len(enc_key) == 65 + 32 + 32
    assert len(base64.b64decode(field_of(sealed, "SignValue"))) == 64


def test_signed_head_bytes_are_the_wire_bytes(gw, bank, sealed):
    """The Head bytes handed back are cut from the message, byte for byte."""
    opened = open_message(sealed, bank, gw.public_key, DEFAULT)
    assert opened.head_bytes == b"<Head>" + field_of(sealed, "Head") + b"</Head>"
    assert opened.head_bytes == env.head_bytes_of(opened.head)
    assert sm.sm2_verify(gw.public_key, opened.head_bytes + opened.inner_xml,
                         base64.b64decode(field_of(sealed, "SignValue")))


def test_fresh_key_per_message(gw, bank, inner):
    """Two seals of the same content differ: fresh SM4 key and IV each time."""
    a = build_message(head(), inner, gw, bank.public_key, DEFAULT)
    b = build_message(head(), inner, gw, bank.public_key, DEFAULT)
    assert field_of(a, "Body") != field_of(b, "Body")
    assert field_of(a, "EncKey") != field_of(b, "EncKey")


def test_plaintext_round_trip_when_allowed(gw, bank, inner):
    """EncFlag 0 (testing banks only): Body is base64 of the inner XML, EncKey empty."""
    raw = build_message(head(), inner, gw, bank.public_key, PLAIN_OK, encrypt=False)
    assert b"<EncFlag>0</EncFlag>" in raw and b"<EncKey/>" in raw
    assert base64.b64decode(field_of(raw, "Body")) == inner
    opened = open_message(raw, bank, gw.public_key, PLAIN_OK)
    assert opened.inner_xml == inner and opened.head.enc_flag == "0"


def test_plaintext_refused_when_not_allowed(gw, bank, inner):
    """A bank that does not allow EncFlag 0 refuses it E999, and we never build one for it."""
    raw = build_message(head(), inner, gw, bank.public_key, PLAIN_OK, encrypt=False)
    with refused("E999", "EncFlag"):
        open_message(raw, bank, gw.public_key, DEFAULT)
    with refused("E999", "EncFlag"):
        build_message(head(), inner, gw, bank.public_key, DEFAULT, encrypt=False)


def test_unknown_enc_flag(gw, bank, sealed):
    """EncFlag other than 0 or 1 is E999."""
    raw = sealed.replace(b"<EncFlag>1</EncFlag>", b"<EncFlag>2</EncFlag>")
    with refused("E999", "EncFlag"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_gb18030_and_markup_in_head(gw, bank):
    """RetMsg with GB18030-only characters and XML specials survives the round trip exactly."""
    h = env.reply_head(head(), NOW, "E999", "字段 <Name> & 𠮷䶮 有误\r\n第2行")
    raw = build_message(h, build_reply("BP01", "E999", {"BatchNo": "ORD1-P01"}), bank,
                        gw.public_key, DEFAULT)
    opened = open_message(raw, gw, bank.public_key, DEFAULT)
    assert opened.head.ret_msg == "字段 <Name> & 𠮷䶮 有误\r\n第2行"
    assert opened.head.sender_id == "BANK01" and opened.head.receiver_id == "GW0001"
    assert opened.head.msg_id == h.msg_id and opened.head.tx_code == "BP01"
    check_head(opened.head, now=NOW, expect_tx="BP01", reply=True)


def test_head_text_the_encoding_cannot_carry(gw, bank, inner):
    """A Head value the bank's encoding cannot encode is refused, never written as '?'."""
    gbk = EnvelopeSettings(encoding="gbk")
    with refused("E999", "RetMsg"):
        build_message(head(ret_msg="𠮷"), inner, gw, bank.public_key, gbk)
    with refused("E999", "RetMsg"):
        build_message(head(ret_msg="a\x01b"), inner, gw, bank.public_key, DEFAULT)


# --- decrypt (E002) and verify (E001) ------------------------------------------------

def test_truncated_body_is_e002(gw, bank, sealed):
    """A Body whose ciphertext is no longer whole blocks fails decryption: E002."""
    ct = base64.b64decode(field_of(sealed, "Body"))
    raw = with_field(sealed, "Body", base64.b64encode(ct[:-1]))
    with refused("E002", "Body"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_body_sealed_under_another_key_is_e002(gw, bank, sealed):
    """A Body whose last block is replaced decrypts to bad padding (E002) or, rarely, to
    something the signature refuses (E001): never to an accepted message."""
    ct = bytearray(base64.b64decode(field_of(sealed, "Body")))
    ct[-16:] = bytes(16)
    raw = with_field(sealed, "Body", base64.b64encode(bytes(ct)))
    with pytest.raises(EnvelopeError) as e:
        open_message(raw, bank, gw.public_key, DEFAULT)
    assert e.value.code in ("E002", "E001")


def test_tampered_enc_key_is_e002(gw, bank, sealed):
    """SM2 checks C3, so a changed EncKey is a decryption failure, E002."""
    ek = bytearray(base64.b64decode(field_of(sealed, "EncKey")))
    ek[-1] ^= 1
    raw = with_field(sealed, "EncKey", base64.b64encode(bytes(ek)))
    with refused("E002", "EncKey"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_sealed_for_someone_else_is_e002(gw, bank, inner):
    """A message sealed under another receiver's key does not decrypt: E002."""
    other = sm.generate_keypair()
    raw = build_message(head(), inner, gw, other.public_key, DEFAULT)
    with refused("E002", "EncKey"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_tampered_middle_of_body_is_caught_by_the_signature(gw, bank, sealed):
    """CBC is not authenticated: a change in the first block decrypts, and the signature says E001."""
    ct = bytearray(base64.b64decode(field_of(sealed, "Body")))
    assert len(ct) >= 48  # padding lives in the last block, untouched
    ct[0] ^= 0x55
    raw = with_field(sealed, "Body", base64.b64encode(bytes(ct)))
    with refused("E001", "SignValue"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_wrong_signer_key_is_e001(gw, bank, sealed):
    """Verified against a key that did not sign: E001."""
    with refused("E001", "SignValue"):
        open_message(sealed, bank, sm.generate_keypair().public_key, DEFAULT)


@pytest.mark.parametrize("old,new", [(b"<SenderId>GW0001<", b"<SenderId>GW0002<"),
                                     (b"<TxTime>095930<", b"<TxTime>095931<"),
                                     (b"<RetMsg/>", b"<RetMsg></RetMsg>")])
def test_tampered_head_byte_is_e001(gw, bank, sealed, old, new):
    """Any change to the Head bytes, even one that parses to the same value, breaks the signature."""
    raw = sealed.replace(old, new)
    assert raw != sealed
    with refused("E001"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_other_user_id_is_e001(gw, bank, inner):
    """The signer ID is part of SM2's Z: a bank configured with another uid refuses E001."""
    raw = build_message(head(), inner, gw, bank.public_key, EnvelopeSettings(uid=b"ALICE123"))
    with refused("E001"):
        open_message(raw, bank, gw.public_key, DEFAULT)
    assert open_message(raw, bank, gw.public_key, EnvelopeSettings(uid=b"ALICE123"))


# --- per-bank settings ---------------------------------------------------------------

def test_c1c2c3_order(gw, bank, inner):
    """With sm2_order C1C2C3 the EncKey really is 04||C1||C2||C3, and the other order fails E002."""
    s = EnvelopeSettings(sm2_order="C1C2C3")
    raw = build_message(head(), inner, gw, bank.public_key, s)
    assert open_message(raw, bank, gw.public_key, s).inner_xml == inner
    ek = base64.b64decode(field_of(raw, "EncKey"))
    key_iv = sm.sm2_decrypt(bank, ek, "C1C2C3")
    body = base64.b64decode(field_of(raw, "Body"))
    assert sm.sm4_cbc_decrypt(key_iv[:16], key_iv[16:], body) == inner
    with refused("E002"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_der_signature(gw, bank, inner):
    """With signature 'der' SignValue is a DER SEQUENCE; a raw-configured receiver refuses E001."""
    s = EnvelopeSettings(signature="der")
    raw = build_message(head(), inner, gw, bank.public_key, s)
    sig = base64.b64decode(field_of(raw, "SignValue"))
    assert sig[0] == 0x30 and sig[1] == len(sig) - 2
    assert open_message(raw, bank, gw.public_key, s).inner_xml == inner
    with refused("E001"):
        open_message(raw, bank, gw.public_key, DEFAULT)


def test_settings_are_checked():
    """A typo in a bank's envelope settings fails at start-up, not on the first message."""
    for bad in ({"sm2_order": "C3C1C2"}, {"signature": "pem"}, {"encoding": "nope"},
                {"uid": b""}, {"max_skew_s": -1}):
        with pytest.raises(ValueError):
            EnvelopeSettings(**bad)


# --- envelope parsing (E999) -----------------------------------------------------------

def test_peek_head_without_keys(sealed):
    """A receiver can read the Head of any well-formed message to address its error reply."""
    assert peek_head(sealed) == head()


def test_head_order_enforced(gw, bank, sealed):
    """Head fields out of the dialect's order are E999 naming the field expected."""
    raw = sealed.replace(b"<SenderId>GW0001</SenderId><ReceiverId>BANK01</ReceiverId>",
                         b"<ReceiverId>BANK01</ReceiverId><SenderId>GW0001</SenderId>")
    with refused("E999", "SenderId"):
        open_message(raw, bank, gw.public_key, DEFAULT)


@pytest.mark.parametrize("old,new,field", [
    (b"<MsgId>G2024010500000001</MsgId>", b"", "MsgId"),
    (b"<RetMsg/>", b"<RetMsg/><Extra/>", "Extra"),
    (b"<Ver>1.0</Ver>", b'<Ver a="1">1.0</Ver>', "Ver"),
    (b"<Ver>1.0</Ver>", b"<Ver><X/></Ver>", "Ver"),
])
def test_malformed_head(gw, bank, sealed, old, new, field):
    """A missing, extra, attributed or nested Head field is E999 naming it."""
    raw = sealed.replace(old, new)
    with refused("E999", field):
        peek_head(raw)
    with refused("E999", field):
        open_message(raw, bank, gw.public_key, DEFAULT)


@pytest.mark.parametrize("mutate", [
    lambda r: r.replace(b"<Body>", b"<Body>!!", 1),
    lambda r: r.replace(b"<SignValue>", b"<SignValue>\n", 1),
    lambda r: with_field(r, "SignValue", b""),
    lambda r: with_field(r, "Body", b""),
    lambda r: r.replace(b"</CnBank>", b"<More/></CnBank>"),
    lambda r: r.replace(b"<EncKey>", b"<Junk/><EncKey>"),
    lambda r: r.replace(b"</CnBank>", b"text</CnBank>"),
    lambda r: r.replace(b"<CnBank>", b"<CnBank x='1'>"),
    lambda r: r.replace(b"<CnBank>", b"<Other>").replace(b"</CnBank>", b"</Other>"),
    lambda r: r[:-3],
    lambda r: r.replace(b'encoding="GB18030"', b'encoding="UTF-8"'),
    lambda r: r.split(b"\n", 1)[1],  # no XML declaration
    lambda r: r.replace(b"<Head>", b"<!-- <Head></Head> --><Head>"),
    lambda r: r.replace(b"<Head>", b"<Head >"),
    lambda r: r.replace(b"\n<CnBank>", b'\n<!DOCTYPE CnBank [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        b"<CnBank>").replace(b"<RetMsg/>", b"<RetMsg>&x;</RetMsg>"),
    lambda r: r.replace(b"<Body>", b"<Body><![CDATA[AAAA]]>"),
    lambda r: r.replace(b"<Head>", b"<?pi x?><Head>"),
    lambda r: b"",
    lambda r: b"\x00\x01garbage",
])
def test_malformed_envelope_is_e999(gw, bank, sealed, mutate):
    """Malformed XML, wrong structure, bad base64, DTDs, comments and PIs are E999 before any crypto."""
    with refused("E999"):
        open_message(mutate(sealed), bank, gw.public_key, DEFAULT)


def test_whitespace_between_envelope_elements_is_tolerated(gw, bank, sealed):
    """Pretty-printing outside Head changes no signed byte, so it does not matter."""
    raw = sealed.replace(b"</Head><Body>", b"</Head>\r\n  <Body>").replace(
        b"</CnBank>", b"</CnBank>\n")
    assert open_message(raw, bank, gw.public_key, DEFAULT).head == head()


# --- check_head -------------------------------------------------------------------------

def test_timestamp_window():
    """TxDate/TxTime are UTC+8; within max_skew_s either way is fine, one second more is E009."""
    h = head()  # 2024-01-05 09:59:30 +08:00
    check_head(h, now=NOW + timedelta(seconds=300), expect_tx="BP01")
    check_head(h, now=NOW - timedelta(seconds=300), expect_tx="BP01")
    with refused("E009", "TxTime"):
        check_head(h, now=NOW + timedelta(seconds=301), expect_tx="BP01")
    with refused("E009"):
        check_head(h, now=NOW - timedelta(seconds=301), expect_tx="BP01")
    check_head(h, now=NOW + timedelta(seconds=900), expect_tx="BP01", max_skew_s=900)


def test_timestamp_is_read_as_utc8_across_midnight():
    """23:59:50 on the 4th in Beijing is 15:59:50 UTC: the date is not the UTC date."""
    now = datetime(2024, 1, 4, 16, 0, 0, tzinfo=timezone.utc)  # 00:00:00 on the 5th, +08
    assert env.tx_datetime(now) == ("20240105", "000000")
    check_head(head(tx_date="20240104", tx_time="235950"), now=now)
    with refused("E009"):
        check_head(head(tx_date="20240105", tx_time="235950"), now=now)


def test_now_must_be_aware():
    """A naive now would silently mean the host's zone: refused."""
    with pytest.raises(ValueError):
        check_head(head(), now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize("kw,field", [
    ({"ver": "2.0"}, "Ver"),
    ({"msg_id": "G-1"}, "MsgId"),
    ({"msg_id": "A" * 33}, "MsgId"),
    ({"msg_id": ""}, "MsgId"),
    ({"tx_date": "20240230"}, "TxDate"),
    ({"tx_date": "2024015"}, "TxDate"),
    ({"tx_time": "246000"}, "TxTime"),
    ({"tx_time": "09593"}, "TxTime"),
    ({"tx_code": "XX01"}, "TxCode"),
    ({"sender_id": ""}, "SenderId"),
    ({"enc_flag": "2"}, "EncFlag"),
    ({"ret_code": "0000"}, "RetCode"),
    ({"ret_msg": "x"}, "RetMsg"),
])
def test_head_formats(kw, field):
    """Each malformed Head field of a request is E999 naming it."""
    with refused("E999", field):
        check_head(head(**kw), now=NOW, reply=False)


def test_expectations():
    """TxCode, SenderId and ReceiverId can be held to what the receiver expects."""
    with refused("E999", "TxCode"):
        check_head(head(), now=NOW, expect_tx="BQ01")
    with refused("E999", "SenderId"):
        check_head(head(), now=NOW, expect_sender="GW0002")
    with refused("E999", "ReceiverId"):
        check_head(head(), now=NOW, expect_receiver="BANK02")
    with refused("E999", "RetCode"):
        check_head(head(), now=NOW, reply=True)
    with refused("E999", "RetCode"):
        check_head(head(ret_code="OK"), now=NOW, reply=True)
    check_head(head(ret_code="E004", ret_msg="x"), now=NOW, reply=True)


def test_new_msg_id():
    """MsgIds are letters and digits, at most 32."""
    assert env.new_msg_id("G20240105", 42) == "G2024010500000042"
    with pytest.raises(ValueError):
        env.new_msg_id("G-1", 1)
    with pytest.raises(ValueError):
        env.new_msg_id("G" * 30, 1)


# --- inner XML ---------------------------------------------------------------------------

REQUESTS = {
    "HB01": {},
    "BP01": BP01,
    "BQ01": {"BatchNo": "ORD1-P01"},
    "RF01": {"RefundNo": "ORD1-F01", "OrderNo": "ORD1", "TotalCount": 2, "TotalAmount": 350,
             "Items": [{"Seq": 3, "BatchNo": "ORD1-P01", "Amount": 100},
                       {"Seq": 9, "BatchNo": "ORD1-R02", "Amount": 250}]},
    "RQ01": {"RefundNo": "ORD1-F01"},
    "DP01": {"DisputeNo": "ORD1-D01", "BatchNo": "ORD1-P01", "Seqs": [3, 7],
             "Reason": "第3、7笔金额与清单不符"},
    "RC01": {"Period": "M202401"},
}

REPLIES = [
    ("HB01", {}),
    ("BP01", {"BatchNo": "ORD1-P01", "BankBatchNo": "B20240105000123"}),
    ("BQ01", {"BatchNo": "ORD1-P01", "Status": "PROC"}),
    ("BQ01", {"BatchNo": "ORD1-P01", "Status": "DONE", "ResultFile": "ORD1-P01.rsp",
              "FileSM3": "cd" * 32, "FileEncKey": "QUJD"}),
    ("BQ01", {"BatchNo": "ORD1-P01", "Status": "DONE", "ResultFile": "ORD1-P01.rsp",
              "FileSM3": "cd" * 32, "FileEncKey": "QUJD",
              "Returns": [{"Seq": 5, "Amount": 10000, "ReasonCode": "R004",
                           "ReturnSerial": "RT0001", "ReturnDate": "20240110"}]}),
    ("BQ01", {"BatchNo": "ORD1-P01", "Status": "RJCT", "RejectCode": "E005",
              "RejectMsg": "资金未到账"}),
    ("RF01", {"RefundNo": "ORD1-F01"}),
    ("RQ01", {"RefundNo": "ORD1-F01", "Status": "DONE", "RefundSerial": "RF0009",
              "ReturnedTo": "11223344556677", "RefundAmount": 350}),
    ("RQ01", {"RefundNo": "ORD1-F01", "Status": "RJCT", "RejectCode": "E005",
              "RejectMsg": "x"}),
    ("DP01", {"DisputeNo": "ORD1-D01", "Accepted": "Y"}),
    ("RC01", {"Period": "M202401", "StatementFile": "STMT_M202401.txt", "FileSM3": "ef" * 32,
              "FileEncKey": "QUJD"}),
]


@pytest.mark.parametrize("tx", sorted(REQUESTS))
def test_request_round_trip(tx):
    """Every TxCode's request survives build_request/parse_request with typed values."""
    inner = build_request(tx, REQUESTS[tx])
    assert inner.startswith(b"<?xml") and b"<Req>" in inner
    assert parse_request(tx, inner) == REQUESTS[tx]


@pytest.mark.parametrize("tx,fields", REPLIES)
def test_reply_round_trip(tx, fields):
    """Every TxCode's reply, each Status shape included, survives build_reply/parse_reply."""
    assert parse_reply(tx, build_reply(tx, "0000", fields), "0000") == fields


def test_wire_form_of_amounts_and_lists():
    """Amounts go out as yuan with two decimals; lists as the spec's nested repeated elements."""
    inner = build_request("RF01", REQUESTS["RF01"]).decode("gb18030")
    assert "<TotalAmount>3.50</TotalAmount>" in inner
    assert ("<Items><Item><Seq>3</Seq><BatchNo>ORD1-P01</BatchNo><Amount>1.00</Amount></Item>"
            "<Item><Seq>9</Seq>") in inner
    assert "<Seqs><Seq>3</Seq><Seq>7</Seq></Seqs>" in build_request(
        "DP01", REQUESTS["DP01"]).decode("gb18030")


def test_fields_in_any_order_without_declaration():
    """A receiver accepts fields in any order and GB18030 without an XML declaration."""
    inner = ("<Req>\n  <Reason>原因𠮷</Reason><Seqs><Seq>2</Seq></Seqs><BatchNo>B-1</BatchNo>"
             "<DisputeNo>D1</DisputeNo>\n</Req>").encode("gb18030")
    assert parse_request("DP01", inner) == {"Reason": "原因𠮷", "Seqs": [2], "BatchNo": "B-1",
                                            "DisputeNo": "D1"}


def req(body: str, decl: bool = True) -> bytes:
    text = ('<?xml version="1.0" encoding="GB18030"?>' if decl else "") + f"<Req>{body}</Req>"
    return text.encode("gb18030")


@pytest.mark.parametrize("body,field", [
    ("<BatchNo>B1</BatchNo><Extra>1</Extra>", "Extra"),
    ("<BatchNo>B1</BatchNo><BatchNo>B1</BatchNo>", "BatchNo"),
    ("", "BatchNo"),
    ("<BatchNo></BatchNo>", "BatchNo"),
    ("<BatchNo>-B1</BatchNo>", "BatchNo"),
    ("<BatchNo>B 1</BatchNo>", "BatchNo"),
    ("<BatchNo>" + "B" * 65 + "</BatchNo>", "BatchNo"),
    ('<BatchNo a="1">B1</BatchNo>', "BatchNo"),
    ("<BatchNo>B1<X/></BatchNo>", "BatchNo"),
])
def test_bq01_field_errors(body, field):
    """Unknown, repeated, missing, empty, malformed or attributed fields are E999 naming the field."""
    with refused("E999", field):
        parse_request("BQ01", req(body))


def bp01_xml(**override) -> bytes:
    fields = {"BatchNo": "ORD1-P01", "Kind": "PAY", "OrderNo": "ORD1", "FileName": "ORD1-P01.req",
              "FileSM3": "AB" * 32, "FileEncKey": "QUJD", "TotalCount": "2", "TotalAmount": "12.34"}
    fields.update(override)
    return build_inner("Req", {k: v for k, v in fields.items() if v is not None})


@pytest.mark.parametrize("override,field", [
    ({"TotalAmount": "1.5"}, "TotalAmount"),
    ({"TotalAmount": "01.00"}, "TotalAmount"),
    ({"TotalAmount": "1.000"}, "TotalAmount"),
    ({"TotalAmount": "-1.00"}, "TotalAmount"),
    ({"TotalAmount": "1e3"}, "TotalAmount"),
    ({"TotalCount": "01"}, "TotalCount"),
    ({"TotalCount": "-1"}, "TotalCount"),
    ({"TotalCount": "1.0"}, "TotalCount"),
    ({"Kind": "REFUND"}, "Kind"),
    ({"FileSM3": "AB" * 31}, "FileSM3"),
    ({"FileSM3": "ZZ" * 32}, "FileSM3"),
    ({"FileEncKey": "not base64!"}, "FileEncKey"),
    ({"FileName": "other.req"}, "FileName"),
    ({"OrderNo": None}, "OrderNo"),
])
def test_bp01_field_errors(override, field):
    """BP01 fields are held to their formats; amounts are yuan with exactly two decimals."""
    with refused("E999", field):
        parse_request("BP01", bp01_xml(**override))


def test_bp01_digest_is_normalised():
    """FileSM3 is compared case-insensitively, so it is handed back in lower case."""
    assert parse_request("BP01", bp01_xml())["FileSM3"] == "ab" * 32


def test_list_errors():
    """Inside lists, unknown, missing and repeated subfields and wrong item tags are E999 by path."""
    base = ("<RefundNo>F1</RefundNo><OrderNo>O1</OrderNo><TotalCount>1</TotalCount>"
            "<TotalAmount>1.00</TotalAmount>")
    with refused("E999", "Items/Item[1]/Bogus"):
        parse_request("RF01", req(base + "<Items><Item><Seq>1</Seq><BatchNo>B1</BatchNo>"
                                  "<Amount>1.00</Amount><Bogus/></Item></Items>"))
    with refused("E999", "Items/Item[1]/Amount"):
        parse_request("RF01", req(base + "<Items><Item><Seq>1</Seq><BatchNo>B1</BatchNo>"
                                  "</Item></Items>"))
    with refused("E999", "Items/Item[1]/Seq"):
        parse_request("RF01", req(base + "<Items><Item><Seq>1</Seq><Seq>1</Seq>"
                                  "<BatchNo>B1</BatchNo><Amount>1.00</Amount></Item></Items>"))
    with refused("E999", "Items/Item[1]/Amount"):
        parse_request("RF01", req(base + "<Items><Item><Seq>1</Seq><BatchNo>B1</BatchNo>"
                                  "<Amount>0.00</Amount></Item></Items>"))
    with refused("E999", "Items/Item[1]"):
        parse_request("RF01", req(base + "<Items><Row/></Items>"))
    with refused("E999", "Items"):
        parse_request("RF01", req(base + "<Items></Items>"))
    with refused("E999", "Seqs/Seq[2]"):
        parse_request("DP01", req("<DisputeNo>D1</DisputeNo><BatchNo>B1</BatchNo>"
                                  "<Seqs><Seq>1</Seq><Seq>01</Seq></Seqs><Reason>r</Reason>"))
    with refused("E999", "Seqs/Seq"):
        parse_request("DP01", req("<DisputeNo>D1</DisputeNo><BatchNo>B1</BatchNo>"
                                  "<Seqs><Seq>4</Seq><Seq>4</Seq></Seqs><Reason>r</Reason>"))


def test_rf01_totals_are_e003():
    """An RF01 whose items do not add up to its TotalCount or TotalAmount is E003."""
    with refused("E003", "TotalAmount"):
        parse_request("RF01", build_inner("Req", {
            "RefundNo": "F1", "OrderNo": "O1", "TotalCount": "1", "TotalAmount": "2.00",
            "Items": [{"Seq": "1", "BatchNo": "B1", "Amount": "1.00"}]}))
    with refused("E003", "TotalCount"):
        parse_request("RF01", build_inner("Req", {
            "RefundNo": "F1", "OrderNo": "O1", "TotalCount": "2", "TotalAmount": "1.00",
            "Items": [{"Seq": "1", "BatchNo": "B1", "Amount": "1.00"}]}))


def test_dp01_requires_reason():
    """A dispute without a Reason (or a blank one) is E999 naming Reason."""
    with refused("E999", "Reason"):
        parse_request("DP01", req("<DisputeNo>D1</DisputeNo><BatchNo>B1</BatchNo>"
                                  "<Seqs><Seq>1</Seq></Seqs>"))
    with refused("E999", "Reason"):
        parse_request("DP01", req("<DisputeNo>D1</DisputeNo><BatchNo>B1</BatchNo>"
                                  "<Seqs><Seq>1</Seq></Seqs><Reason>  </Reason>"))


@pytest.mark.parametrize("period", ["M202413", "D20240230", "Y24", "Q2024", "M2024-1", ""])
def test_rc01_period(period):
    """Period is DYYYYMMDD, MYYYYMM or YYYYY, a real date."""
    with refused("E999", "Period"):
        parse_request("RC01", req(f"<Period>{period}</Period>"))


@pytest.mark.parametrize("tx,fields,field", [
    ("BQ01", {"BatchNo": "B1", "Status": "DONE", "FileSM3": "cd" * 32, "FileEncKey": "QUJD"},
     "ResultFile"),
    ("BQ01", {"BatchNo": "B1", "Status": "PROC", "ResultFile": "B1.rsp"}, "ResultFile"),
    ("BQ01", {"BatchNo": "B1", "Status": "RJCT", "RejectCode": "E005"}, "RejectMsg"),
    ("BQ01", {"BatchNo": "B1", "Status": "DONE", "ResultFile": "B2.rsp", "FileSM3": "cd" * 32,
              "FileEncKey": "QUJD"}, "ResultFile"),
    ("BQ01", {"BatchNo": "B1", "Status": "RJCT", "RejectCode": "E005", "RejectMsg": "x",
              "Returns": []}, "Returns"),
    ("BQ01", {"BatchNo": "B1", "Status": "LOST"}, "Status"),
    ("RQ01", {"RefundNo": "F1", "Status": "DONE", "RefundSerial": "S", "RefundAmount": "1.00"},
     "ReturnedTo"),
    ("RQ01", {"RefundNo": "F1", "Status": "DONE", "RefundSerial": "S", "RefundAmount": "1.00",
              "ReturnedTo": "1234567"}, "ReturnedTo"),
    ("DP01", {"DisputeNo": "D1", "Accepted": "N"}, "Accepted"),
    ("RC01", {"Period": "M202401", "StatementFile": "STMT_M202402.txt", "FileSM3": "ef" * 32,
              "FileEncKey": "QUJD"}, "StatementFile"),
    ("BP01", {"BatchNo": "B1"}, "BankBatchNo"),
])
def test_reply_field_errors(tx, fields, field):
    """Reply fields are required or forbidden by Status, and cross-checked, E999 naming the field."""
    with refused("E999", field):
        parse_reply(tx, build_inner("Rsp", fields), "0000")


def test_error_replies_carry_only_the_number():
    """RetCode other than 0000: at most the request's number, nothing else."""
    assert parse_reply("BP01", build_reply("BP01", "E004", {"BatchNo": "B1"}), "E004") == {
        "BatchNo": "B1"}
    assert parse_reply("BQ01", build_inner("Rsp", {}), "E007") == {}
    assert parse_reply("DP01", build_inner("Rsp", {"DisputeNo": "D1"}), "E999") == {
        "DisputeNo": "D1"}
    with refused("E999", "Status"):
        parse_reply("BQ01", build_inner("Rsp", {"BatchNo": "B1", "Status": "DONE"}), "E007")
    with refused("E999", "Period"):
        parse_reply("RC01", build_inner("Rsp", {"Period": "M202401"}), "E999")
    with refused("E999", "RetCode"):
        parse_reply("BQ01", build_inner("Rsp", {}), "9999")


def test_build_refuses_what_parse_would_refuse():
    """build_request/build_reply never produce a document the other side refuses."""
    with refused("E999", "Extra"):
        build_request("BQ01", {"BatchNo": "B1", "Extra": "x"})
    with refused("E999", "BatchNo"):
        build_request("BQ01", {})
    with refused("E999", "TotalAmount"):
        build_request("BP01", {**BP01, "TotalAmount": 12.34})
    with refused("E999", "TotalAmount"):
        build_request("BP01", {**BP01, "TotalAmount": "12.34"})
    with refused("E999", "Reason"):
        build_request("DP01", {**REQUESTS["DP01"], "Reason": "𠮷"}, encoding="gbk")


@pytest.mark.parametrize("inner", [
    b'<?xml version="1.0" encoding="UTF-8"?><Req><BatchNo>B1</BatchNo></Req>',
    b'<!DOCTYPE Req [<!ENTITY e "B1">]><Req><BatchNo>&e;</BatchNo></Req>',
    b'<!DOCTYPE Req SYSTEM "http://example.invalid/x.dtd"><Req><BatchNo>B1</BatchNo></Req>',
    b"<Req><BatchNo>B1</BatchNo><!-- c --></Req>",
    b"<Req><?pi x?><BatchNo>B1</BatchNo></Req>",
    b"<Rsp><BatchNo>B1</BatchNo></Rsp>",
    b'<Req xmlns="urn:x"><BatchNo>B1</BatchNo></Req>',
    b"<Req>text<BatchNo>B1</BatchNo></Req>",
    b"<Req><BatchNo>B1</BatchNo>",
    b"<Req><BatchNo>\x81</BatchNo></Req>",
    b"",
])
def test_inner_xml_hardened(inner):
    """Other encodings, DTDs, entities, comments, PIs, namespaces, stray text and bad bytes: E999."""
    with refused("E999"):
        parse_request("BQ01", inner)


def test_unknown_tx_code():
    """An unknown TxCode has no field table: E999 naming TxCode."""
    with refused("E999", "TxCode"):
        parse_request("ZZ01", req(""))
    with refused("E999", "TxCode"):
        parse_reply("ZZ01", b"<Rsp/>", "0000")


def test_file_key_wrapping(gw, bank):
    """FileEncKey wraps key||iv like EncKey; a wrong receiver gets E002, bad text E999."""
    text = env.wrap_key(bank.public_key, bytes(range(32)), DEFAULT)
    assert env.unwrap_key(bank, text, DEFAULT) == (bytes(range(16)), bytes(range(16, 32)))
    with refused("E002", "FileEncKey"):
        env.unwrap_key(gw, text, DEFAULT)
    with refused("E999", "FileEncKey"):
        env.unwrap_key(bank, "***", DEFAULT)
