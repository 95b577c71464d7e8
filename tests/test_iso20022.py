"""The ISO 20022 dialect: writers' output against the XSDs (ours and xmllint's), round trips,
what the readers refuse, and a 20,000-transfer pain.001 streamed through."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess

import pytest

from protocols import iso20022 as I

XSD = I.XSD_DIR


def _xmllint() -> str:
    path = shutil.which("xmllint")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("xmllint is not installed (libxml2-utils)")
        pytest.skip("xmllint is not installed (libxml2-utils)")
    return path


def xmllint_ok(tmp_path, data: bytes, kind: str) -> tuple[bool, str]:
    """Validate with the independent xmllint command against the same XSD."""
    path = tmp_path / f"{kind}.xml"
    path.write_bytes(data)
    proc = subprocess.run([_xmllint(), "--noout", "--schema", str(XSD / f"{kind}.xsd"), str(path)],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0, proc.stderr


def both_accept(tmp_path, data: bytes, kind: str) -> None:
    I.validate(data, kind)
    I.validate(data)
    ok, err = xmllint_ok(tmp_path, data, kind)
    assert ok, err


HEADER = I.PaymentInitiation(
    msg_id="B2026112800001", created_at="2026-11-28T10:00:00+08:00", nb_of_txs=4, ctrl_sum_fen=1 + 250000 + 7 + 99999,
    initiating_party="长丰县财政局", debtor_name="惠民惠农补贴资金专户", debtor_account="34001234567890123",
    debtor_agent_bic=None, debtor_agent_id="ICBKCNBJAHF", requested_date="2026-11-30",
    pmt_inf_id="B2026112800001")

TRANSFERS = [
    I.CreditTransfer("B2026112800001-1", "O202611001-1", 1, "张三", "6222000011112222", "工商银行长丰支行",
                     "340121199001011234", "耕地补贴"),
    I.CreditTransfer("B2026112800001-2", "O202611001-2", 250000, "李四 & <Sons>", "6222000011113333", None, None,
                     "耕地补贴"),
    I.CreditTransfer("B2026112800001-3", "O202611001-3", 7, "𠀀王", "6222000011114444", "", "34012119900101123X",
                     ("耕地补贴", "第二行")),
    I.CreditTransfer("B2026112800001-4", "O202611001-4", 99999, "赵" * 140, "6" * 34, "农" * 140, "3" * 35,
                     "x" * 140),
]


def pain001(header=HEADER, transfers=TRANSFERS) -> bytes:
    out = io.BytesIO()
    I.write_pain001(out, header, transfers)
    return out.getvalue()


def test_pain001_round_trip_validates_with_ours_and_xmllint(tmp_path):
    """A written pain.001 passes validate() and xmllint, and reads back to the same header and transfers
    (escaping, characters outside the BMP, maximum lengths, several Ustrd, with and without BIC)."""
    for header in (HEADER, I.PaymentInitiation(**{**HEADER.__dict__, "debtor_agent_bic": "ICBKCNBJAHF",
                                                  "batch_booking": True})):
        out = io.BytesIO()
        assert I.write_pain001(out, header, TRANSFERS) == (4, header.ctrl_sum_fen)
        data = out.getvalue()
        both_accept(tmp_path, data, I.PAIN001)
        assert I.message_type(data) == "pain.001.001.10"
        got_header, it = I.read_pain001(data)
        expected = [t if t.creditor_agent_name else I.CreditTransfer(**{**t.__dict__, "creditor_agent_name": None})
                    for t in TRANSFERS]
        assert got_header == header
        assert list(it) == expected


def test_pain001_reader_refuses_wrong_ctrlsum_naming_it(tmp_path):
    """A pain.001 whose GrpHdr/CtrlSum does not equal its transfers is refused at the end of the
    iterator, naming GrpHdr/CtrlSum (the document is still XSD-valid)."""
    data = pain001().replace(b"<CtrlSum>3500.07</CtrlSum><InitgPty>", b"<CtrlSum>3500.08</CtrlSum><InitgPty>")
    assert data != pain001()
    both_accept(tmp_path, data, I.PAIN001)
    header, it = I.read_pain001(data)
    assert header.ctrl_sum_fen == 350008
    with pytest.raises(I.Iso20022Error) as exc:
        list(it)
    assert exc.value.element == "GrpHdr/CtrlSum"


def test_pain001_reader_refuses_wrong_count_and_foreign_currency():
    """NbOfTxs that does not match is named; an amount in another currency is named with its transfer."""
    data = pain001().replace(b"<NbOfTxs>4</NbOfTxs><CtrlSum>3500.07</CtrlSum><InitgPty>",
                             b"<NbOfTxs>5</NbOfTxs><CtrlSum>3500.07</CtrlSum><InitgPty>")
    with pytest.raises(I.Iso20022Error) as exc:
        list(I.read_pain001(data)[1])
    assert exc.value.element == "GrpHdr/NbOfTxs"
    data = pain001().replace(b'Ccy="CNY">2500.00', b'Ccy="USD">2500.00')
    with pytest.raises(I.Iso20022Error) as exc:
        list(I.read_pain001(data)[1])
    assert exc.value.element == "CdtTrfTxInf[2]/Amt/InstdAmt"


def test_element_out_of_order_fails_validate_naming_the_line(tmp_path):
    """Swapping PmtMtd and BtchBookg makes validate() raise SchemaError naming line 2 and the element;
    xmllint refuses the same document."""
    data = pain001().replace(b"<PmtMtd>TRF</PmtMtd><BtchBookg>false</BtchBookg>",
                             b"<BtchBookg>false</BtchBookg><PmtMtd>TRF</PmtMtd>")
    with pytest.raises(I.SchemaError) as exc:
        I.validate(data)
    assert str(exc.value).startswith("line 2: ")
    assert exc.value.element == "BtchBookg"
    ok, err = xmllint_ok(tmp_path, data, I.PAIN001)
    assert not ok and ":2: element BtchBookg" in err
    # the reader validates as it goes, so it refuses the same document
    with pytest.raises(I.SchemaError):
        list(I.read_pain001(io.BytesIO(data))[1])


def test_error_in_a_later_transfer_is_located_by_line(tmp_path):
    """Each transfer is on its own line, so a bad transfer deep in a file is named by its line."""
    transfers = [I.CreditTransfer(f"B1-{i}", f"O1-{i}", 100, "张三", "6222", None, None, "耕地补贴")
                 for i in range(1, 51)]
    header = I.PaymentInitiation(**{**HEADER.__dict__, "nb_of_txs": 50, "ctrl_sum_fen": 5000})
    lines = pain001(header, transfers).split(b"\n")
    lines[30] = lines[30].replace(b"<EndToEndId>", b"<Foo>x</Foo><EndToEndId>")
    with pytest.raises(I.SchemaError) as exc:
        I.validate(io.BytesIO(b"\n".join(lines)))
    assert str(exc.value).startswith("line 31: ") and exc.value.element == "Foo"


@pytest.mark.parametrize("change, element", [
    ({"msg_id": "B" * 36}, "GrpHdr/MsgId"),
    ({"initiating_party": "财" * 141}, "GrpHdr/InitgPty/Nm"),
    ({"created_at": "2026-11-28 10:00"}, "GrpHdr/CreDtTm"),
    ({"requested_date": "2026-02-30"}, "PmtInf/ReqdExctnDt/Dt"),
    ({"debtor_agent_bic": "ICBK"}, "PmtInf/DbtrAgt/FinInstnId/BICFI"),
    ({"debtor_name": "a\x01b"}, "PmtInf/Dbtr/Nm"),
])
def test_writer_refuses_header_values_the_xsd_refuses(change, element):
    """A header value the XSD would refuse is refused before anything is written, naming the element."""
    out = io.BytesIO()
    with pytest.raises(I.Iso20022Error) as exc:
        I.write_pain001(out, I.PaymentInitiation(**{**HEADER.__dict__, **change}), TRANSFERS)
    assert exc.value.element == element
    assert out.getvalue() == b""


@pytest.mark.parametrize("change, element", [
    ({"amount_fen": 0}, "CdtTrfTxInf[2]/Amt/InstdAmt"),
    ({"amount_fen": -5}, "CdtTrfTxInf[2]/Amt/InstdAmt"),
    ({"remittance": "补" * 141}, "RmtInf/Ustrd"),
    ({"creditor_name": "n" * 141}, "CdtTrfTxInf[2]/Cdtr/Nm"),
    ({"end_to_end_id": "E" * 36}, "CdtTrfTxInf[2]/PmtId/EndToEndId"),
    ({"creditor_account": "6" * 35}, "CdtTrfTxInf[2]/CdtrAcct/Id/Othr/Id"),
])
def test_writer_refuses_transfer_values_the_xsd_refuses(change, element):
    """A transfer value the XSD would refuse raises Iso20022Error naming the transfer and element."""
    transfers = [TRANSFERS[0], I.CreditTransfer(**{**TRANSFERS[1].__dict__, **change})]
    with pytest.raises(I.Iso20022Error) as exc:
        I.write_pain001(io.BytesIO(), HEADER, transfers)
    assert exc.value.element == element


def test_writer_refuses_lines_that_do_not_add_up_to_the_header():
    """Header NbOfTxs / CtrlSum that differ from the transfers written are named after writing."""
    with pytest.raises(I.Iso20022Error) as exc:
        I.write_pain001(io.BytesIO(), HEADER, TRANSFERS[:3])
    assert exc.value.element == "GrpHdr/NbOfTxs"
    with pytest.raises(I.Iso20022Error) as exc:
        I.write_pain001(io.BytesIO(), I.PaymentInitiation(**{**HEADER.__dict__, "ctrl_sum_fen": 1}), TRANSFERS)
    assert exc.value.element == "GrpHdr/CtrlSum"


def test_comment_inside_text_does_not_truncate_it():
    """A comment splitting a name is dropped and the text joined, as exclusive c14n sees it
    (a reader taking only the text before the comment would read something the signature did not cover)."""
    data = pain001().replace("<Nm>张三</Nm>".encode(), "<Nm>张<!-- x -->三</Nm>".encode())
    assert b"<!-- x -->" in data
    transfers = list(I.read_pain001(data)[1])
    assert transfers[0].creditor_name == "张三"


REPORT = I.StatusReport(msg_id="R2026113000001", created_at="2026-11-30T16:00:00+08:00",
                        orig_msg_id="B2026112800001", orig_msg_nm_id="pain.001.001.10", group_status="PART",
                        group_reason=None, group_info=None, orig_pmt_inf_id="B2026112800001")
STATUSES = [
    I.TxStatus("B2026112800001-1", "O202611001-1", "ACSC", None, None, 1, "6222000011112222",
               "2026-11-30T15:00:00+08:00", "SN0001"),
    I.TxStatus("B2026112800001-2", "O202611001-2", "RJCT", "AC04", "账户已销户" * 30, 250000, None, "2026-11-30", None),
    I.TxStatus("B2026112800001-3", "O202611001-3", "PDNG", None, None, None, None, None, None),
    I.TxStatus("B2026112800001-4", "O202611001-4", "RJCT", "NARR", "柜面核实", None, None, None, "SN0004"),
]


def test_pain002_round_trip_validates(tmp_path):
    """A written pain.002 passes validate() and xmllint and reads back the same report and statuses
    (long AddtlInf split over several elements and joined again, date or date-time acceptance)."""
    out = io.BytesIO()
    assert I.write_pain002(out, REPORT, iter(STATUSES)) == 4
    data = out.getvalue()
    both_accept(tmp_path, data, I.PAIN002)
    assert data.count(b"<AddtlInf>") == 3  # 150 characters in two, and one
    report, it = I.read_pain002(data)
    assert report == REPORT
    assert list(it) == STATUSES


def test_pain002_whole_batch_rejection_without_statuses(tmp_path):
    """A group rejection (AM04) with no transfer statuses is valid and reads back with an empty iterator."""
    report = I.StatusReport(msg_id="R2", created_at="2026-11-30T16:00:00Z", orig_msg_id="B2",
                            orig_msg_nm_id="pain.001.001.10", group_status="RJCT", group_reason="AM04",
                            group_info="余额不足")
    out = io.BytesIO()
    assert I.write_pain002(out, report, []) == 0
    both_accept(tmp_path, out.getvalue(), I.PAIN002)
    got, it = I.read_pain002(out.getvalue())
    assert got == report and list(it) == []
    assert I.reason_outcome(got.group_reason) == "batch_retry"


ENTRIES = (
    I.Entry("N0001", 250000, True, "2026-12-03", "BOOK", "O202611001-2", "B2026112800001-2", "AC04", "SN9001"),
    I.Entry("N0002", 1, False, "2026-12-03", "BOOK", None, None, None, None),
    I.Entry("N0003", 500, False, "2026-12-04", "PDNG", "R2026-1", None, None, "SN9003"),
)


def test_camt054_round_trip_validates(tmp_path):
    """A written camt.054 passes validate() and xmllint and reads back the same entries."""
    n = I.Notification("N2026120300001", "2026-12-03T08:00:00+08:00", "34001234567890123", ENTRIES)
    out = io.BytesIO()
    I.write_camt054(out, n)
    both_accept(tmp_path, out.getvalue(), I.CAMT054)
    assert I.read_camt054(out.getvalue()) == n


def test_camt053_round_trip_and_balance_check(tmp_path):
    """A camt.053 with a debit (negative) opening balance validates and reads back; pending entries do
    not move the balance; a closing balance one fen off is refused by the reader naming CLBD."""
    s = I.Statement("S2026120100001", "2026-12-05T08:00:00+08:00", "STMT-2026-11", "34001234567890123",
                    "2026-11-01", "2026-11-30", -100, -100 + 250000 - 1, ENTRIES)
    out = io.BytesIO()
    I.write_camt053(out, s)
    data = out.getvalue()
    both_accept(tmp_path, data, I.CAMT053)
    assert I.read_camt053(data) == s
    bad = data.replace(b'<Amt Ccy="CNY">2498.99</Amt><CdtDbtInd>CRDT</CdtDbtInd>',
                       b'<Amt Ccy="CNY">2499.00</Amt><CdtDbtInd>CRDT</CdtDbtInd>')
    assert bad != data
    I.validate(bad)
    with pytest.raises(I.Iso20022Error) as exc:
        I.read_camt053(bad)
    assert exc.value.element == "Stmt/Bal[CLBD]"
    with pytest.raises(I.Iso20022Error):
        I.write_camt053(io.BytesIO(), I.Statement(**{**s.__dict__, "closing_fen": s.closing_fen + 1}))


def test_message_type_and_foreign_documents(tmp_path):
    """message_type names each of the four types from the root namespace, leaves a file object where it
    was, and refuses other namespaces (pacs.004) and non-ISO roots."""
    data = pain001()
    f = io.BytesIO(data)
    assert I.message_type(f) == I.PAIN001 and f.tell() == 0
    path = tmp_path / "p.xml"
    path.write_bytes(data)
    assert I.message_type(str(path)) == I.PAIN001
    assert I.message_type(path) == I.PAIN001
    for ns in ("urn:iso:std:iso:20022:tech:xsd:pacs.004.001.10", "urn:example"):
        with pytest.raises(I.Iso20022Error):
            I.message_type(f'<Document xmlns="{ns}"/>'.encode())
    with pytest.raises(I.Iso20022Error):
        I.message_type(b"not xml")
    with pytest.raises(I.Iso20022Error):  # a camt.053 handed to the pain.002 reader
        out = io.BytesIO()
        I.write_camt054(out, I.Notification("N1", "2026-12-03T08:00:00Z", "1", ENTRIES))
        I.read_pain002(out.getvalue())


def test_entities_are_not_expanded():
    """A document declaring an external entity is not resolved (no XXE): the reader fails or reads it
    literally, and never with the contents of /etc/passwd."""
    data = pain001().replace(b"<Document", b'<!DOCTYPE Document [<!ENTITY x SYSTEM "file:///etc/passwd">]><Document', 1)
    data = data.replace("<Nm>张三</Nm>".encode(), b"<Nm>&x;</Nm>")
    try:
        names = [t.creditor_name for t in I.read_pain001(data)[1]]
    except I.Iso20022Error:
        return
    assert not any("root:" in n for n in names)


def test_reason_table_follows_the_spec():
    """Each code in iso20022.md maps to the spec's outcome; unknown codes and NARR go to an operator."""
    spec = {"AC01": "fixable", "AC04": "fixable", "AC06": "fixable", "AG01": "fixable", "BE01": "fixable",
            "BE17": "fixable", "AM05": "not_fixable", "MD07": "refund", "AM04": "batch_retry",
            "AM10": "batch_bug", "DU01": "ask_status", "DS0B": "batch_alarm", "DS09": "batch_alarm",
            "NARR": "operator"}
    assert {code: outcome for code, (outcome, _) in I.REASONS.items()} == spec
    assert all(re.search(r"[\u4e00-\u9fff]", text) for _, text in I.REASONS.values())
    assert I.reason_outcome("ZZ99") == "operator" and I.reason_outcome(None) == "operator"


def test_20000_transfers_stream_through_write_validate_read(tmp_path):
    """20,000 transfers written to a file, validated and read back in order with the right totals."""
    n = 20000
    header = I.PaymentInitiation(**{**HEADER.__dict__, "nb_of_txs": n, "ctrl_sum_fen": sum(range(1, n + 1))})
    transfers = (I.CreditTransfer(f"B2026112800001-{i}", f"O202611001-{i}", i, "张三", f"6222{i:012d}",
                                  "工商银行", "340121199001011234", "耕地补贴") for i in range(1, n + 1))
    path = tmp_path / "big.xml"
    with open(path, "wb") as f:
        assert I.write_pain001(f, header, transfers) == (n, header.ctrl_sum_fen)
    I.validate(str(path))
    got, it = I.read_pain001(str(path))
    assert got == header
    count = 0
    for count, t in enumerate(it, 1):
        assert t.amount_fen == count and t.end_to_end_id == f"O202611001-{count}"
    assert count == n


# --- hostile documents ---------------------------------------------------------------------

_HOSTILE_PAIN002 = (b'<?xml version="1.0"?>\n<!DOCTYPE Document [<!ENTITY x "boom">]>\n'
                    b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.11"><CstmrPmtStsRpt>'
                    b'<GrpHdr><MsgId>&x;</MsgId><CreDtTm>2026-01-01T00:00:00</CreDtTm></GrpHdr>'
                    b'<OrgnlGrpInfAndSts><OrgnlMsgId>A</OrgnlMsgId><OrgnlMsgNmId>pain.001.001.10</OrgnlMsgNmId>'
                    b'<Bad/></OrgnlGrpInfAndSts></CstmrPmtStsRpt></Document>')


def test_a_doctype_is_refused_outright():
    """A document with a DOCTYPE (an entity declared and referenced) is refused as such by
    message_type, validate and the readers, with Iso20022Error; before, validate let the
    streaming pass through and the line locator raised lxml's XMLSchemaValidateError."""
    for call in (lambda d: I.message_type(io.BytesIO(d)), lambda d: I.validate(io.BytesIO(d), I.PAIN002),
                 lambda d: I.validate(io.BytesIO(d)), lambda d: I.read_pain002(io.BytesIO(d))):
        with pytest.raises(I.Iso20022Error, match="DOCTYPE"):
            call(_HOSTILE_PAIN002)
    external = b'<!DOCTYPE Document SYSTEM "http://127.0.0.1:9/x.dtd">' + _HOSTILE_PAIN002.split(b"]>\n", 1)[1]
    with pytest.raises(I.Iso20022Error, match="DOCTYPE"):
        I.message_type(io.BytesIO(external.replace(b"&x;", b"M")))


def test_the_line_locator_never_raises_lxml_errors():
    """_locate (the second look that names an error's line) gives back the first error when the
    tree validator fails internally (an entity reference), instead of raising it."""
    from lxml import etree
    exc = etree.XMLSyntaxError("Element 'Bad': This element is not expected.", 0, 0, 0)
    err = I._locate(io.BytesIO(_HOSTILE_PAIN002), 0, I.PAIN002, exc)
    assert isinstance(err, I.SchemaError)


def test_a_foreign_version_names_the_version_expected():
    """A pain.002 of another version (pain.002.001.03) is refused naming what it is and the
    version the gateway takes."""
    doc = (b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"><CstmrPmtStsRpt/></Document>')
    with pytest.raises(I.Iso20022Error, match=r"pain\.002\.001\.03 is not a version the gateway takes: "
                                              r"pain\.002\.001\.11 expected"):
        I.message_type(io.BytesIO(doc))


def test_a_document_cut_off_is_not_well_formed():
    """The streaming reader lets a pain.002 cut off after a transfer through (it reads one
    status and stops); well_formed(), which the feed runs on every received document,
    refuses it naming the line, and passes the whole document."""
    report = I.StatusReport(msg_id="M", created_at="2026-01-01T00:00:00", orig_msg_id="A",
                            orig_msg_nm_id=I.PAIN001, group_status="ACSC", group_reason=None, group_info=None)
    statuses = [I.TxStatus(f"A-{n}", f"O-{n}", "ACSC", None, None, 100, "123", None, f"S{n}") for n in (1, 2)]
    out = io.BytesIO()
    I.write_pain002(out, report, statuses)
    doc = out.getvalue()
    cut = doc[:doc.index(b"</TxInfAndSts>") + len(b"</TxInfAndSts>")]
    _, read = I.read_pain002(io.BytesIO(cut))
    assert len(list(read)) == 1                      # what the reader alone would have believed
    with pytest.raises(I.Iso20022Error, match="not well-formed XML: line"):
        I.well_formed(io.BytesIO(cut))
    with pytest.raises(I.Iso20022Error, match="DOCTYPE"):
        I.well_formed(io.BytesIO(_HOSTILE_PAIN002))
    I.well_formed(io.BytesIO(doc))


def test_market_practice_slev_and_the_creditor_agent_by_cnaps_code(tmp_path):
    """iso20022.md market practice: ChrgBr is SLEV; an item carrying a 12-digit CNAPS code names
    its creditor agent by ClrSysMmbId (ClrSysId/Cd CNAPS, MmbId the code) and not by name, one
    without is named by name; the document passes both validators and reads back the same; a code
    that is not 12 digits is refused naming the transfer's MmbId."""
    coded = I.CreditTransfer("B2026112800001-1", "O202611001-1", 1, "张三", "6222000011112222",
                             "工商银行长丰支行", None, "耕地补贴", creditor_agent_cnaps="102361000012")
    plain = I.CreditTransfer("B2026112800001-2", "O202611001-2", 2, "李四", "6222000011113333",
                             "农业银行长丰支行", None, "耕地补贴")
    header = I.PaymentInitiation(**{**HEADER.__dict__, "nb_of_txs": 2, "ctrl_sum_fen": 3})
    data = pain001(header, [coded, plain])
    both_accept(tmp_path, data, I.PAIN001)
    assert data.count(b"<ChrgBr>SLEV</ChrgBr>") == 1
    first, second = data.split(b"<CdtTrfTxInf>")[1:]
    assert (b"<CdtrAgt><FinInstnId><ClrSysMmbId><ClrSysId><Cd>CNAPS</Cd></ClrSysId>"
            b"<MmbId>102361000012</MmbId></ClrSysMmbId></FinInstnId></CdtrAgt>") in first
    assert "工商银行长丰支行".encode() not in first
    assert "<CdtrAgt><FinInstnId><Nm>农业银行长丰支行</Nm></FinInstnId></CdtrAgt>".encode() in second
    _, it = I.read_pain001(data)
    got = list(it)
    assert got[0].creditor_agent_cnaps == "102361000012" and got[0].creditor_agent_name is None
    assert got[1] == plain
    for bad in ("10236100001", "10236100001X"):
        with pytest.raises(I.Iso20022Error) as exc:
            pain001(header, [I.CreditTransfer(**{**coded.__dict__, "creditor_agent_cnaps": bad}), plain])
        assert exc.value.element == "CdtTrfTxInf[1]/CdtrAgt/FinInstnId/ClrSysMmbId/MmbId"
