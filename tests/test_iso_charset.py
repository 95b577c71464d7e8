"""The per-bank character set of the iso20022 dialect (iso20022.md): a Latin-only bank gets names
and remittance text in pinyin; a character with no transliteration refuses the batch naming the
item; the item itself keeps its original text. The adapter builds real, signed pain.001 files."""

from __future__ import annotations

import datetime
import types

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from adapters.interface import BatchItem, BatchSpec
from adapters.iso20022.adapter import IsoAdapter
from adapters.iso20022.factory import IsoSettings
from protocols import iso20022 as I
from protocols import xmldsig as D

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def identity():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()), cert.public_bytes(serialization.Encoding.PEM))


def adapter(tmp_path, identity, charset: str) -> IsoAdapter:
    s = IsoSettings(initiating_party="肥西县财政局", debtor_agent_id="ISOBANK", debtor_agent_bic="",
                    signature="xmldsig", refund_account="6228480000000000001", refund_account_name="长丰县财政局",
                    status_poll_s=1.0, return_poll_s=1.0, result_working_days=2, late_return_window_days=30,
                    statement_daily=False, transport="https", base_url="https://bank.invalid", server_name="",
                    timeout_s=1.0, max_body_bytes=1 << 20, our_rsa_key="", our_certificate="",
                    bank_certificate="", bank_previous_certificate="", bank_previous_until="", bank_ca="",
                    passphrase_file="", passphrase_env="", charset=charset)
    bank = types.SimpleNamespace(bank_id="ISO", payer_name="惠民补贴资金专户", payer_acct="34001234567890123")
    return IsoAdapter(None, bank, s, client=None, key_pem=identity[0], cert_pem=identity[1],
                      pinned=lambda now: [(identity[1], None)], work_dir=str(tmp_path / "work"),
                      journal_store=None)


SPEC = BatchSpec("O1-P01", "O1", "PAY", 3, 600, "20260601", "NJ2026", "耕地补贴", "2026-06-01T10:00:00+08:00")


def items(third_name: str = "阿依古丽·买买提") -> list[BatchItem]:
    return [BatchItem(1, "张三", "", "6222000011112222", "工商银行", 100, "", "", account_bank_code="102361000012"),
            BatchItem(2, "李绿", "", "6222000011113333", "农业银行城南支行", 200, "", ""),
            BatchItem(3, third_name, "", "6222000011114444", "", 300, "", "")]


def test_latin_bank_gets_pinyin_names_and_remittance_and_a_valid_signed_document(tmp_path, identity):
    """charset "latin": creditor, agent, debtor, initiating party and Ustrd are in pinyin (a name's
    middle dot a space, ü as v), every text in the document is in the Latin set, and the document
    still validates and verifies; the items given to the adapter keep their Chinese names."""
    a = adapter(tmp_path, identity, "latin")
    lines = items()
    built = a.build_batch(SPEC, iter(lines))
    doc = (tmp_path / "work" / built.name).read_bytes()
    I.validate(doc)
    D.verify_bytes(doc, [(identity[1], None)], NOW)
    header, it = I.read_pain001(doc)
    got = list(it)
    assert [t.creditor_name for t in got] == ["Zhang San", "Li Lv", "A Yi Gu Li Mai Mai Ti"]
    assert [t.creditor_agent_name for t in got] == [None, "Nong Ye Yin Hang Cheng Nan Zhi Hang", None]
    assert got[0].creditor_agent_cnaps == "102361000012"
    assert {t.remittance for t in got} == {"Geng Di Bu Tie"}
    assert (header.debtor_name, header.initiating_party) == ("Hui Min Bu Tie Zi Jin Zhuan Hu", "Fei Xi Xian Cai Zheng Ju")
    body = doc.split(b"<ds:Signature")[0]
    assert body.decode("ascii")   # nothing outside ASCII before the signature
    assert lines[0].name == "张三"


def test_utf8_bank_gets_the_names_as_they_are(tmp_path, identity):
    """The default charset "utf-8" writes the names untouched."""
    a = adapter(tmp_path, identity, "utf-8")
    built = a.build_batch(SPEC, iter(items()))
    got = list(I.read_pain001((tmp_path / "work" / built.name).read_bytes())[1])
    assert [t.creditor_name for t in got] == ["张三", "李绿", "阿依古丽·买买提"]
    assert got[0].remittance == "耕地补贴"


@pytest.mark.parametrize("name, char", [("李四 & Sons", "&"), ("한국인", "한"), ("Zoë", "ë")])
def test_a_character_without_transliteration_refuses_the_batch_naming_the_item(tmp_path, identity, name, char):
    """A character outside the Latin set with no transliteration (an ampersand, Hangul, a Latin
    letter with a diaeresis) refuses the build naming the order, the seq, the field and the
    character; no file is left behind."""
    a = adapter(tmp_path, identity, "latin")
    with pytest.raises(I.Iso20022Error) as exc:
        a.build_batch(SPEC, iter(items(name)))
    assert exc.value.element == "item O1 seq 3: Cdtr/Nm"
    assert repr(char) in exc.value.message
    assert list((tmp_path / "work").iterdir()) == []
