"""A hostile iso20022 bank feed, over the real HTTPS path on loopback: each bad document is refused
alone, journaled, alarmed once, and the feed, the order and the other banks go on.

The daemon's service runs in the test's reactor against the ISO bank simulator (mutual TLS);
the simulator's hooks make the next report hostile (a DOCTYPE with an entity, a lone surrogate
in the JSON string, a document over max_document_bytes, a foreign message version), inject
signed valid pain.002 documents naming a MsgId never sent or the wrong OrgnlMsgNmId, or pad
pages past the page cap. The gateway must refuse exactly those, keep the cursor moving past
them, ask the bank again for what they may have said (the pain.001 re-POSTed, never a new
payment), and settle the order.
"""

from __future__ import annotations

import datetime

import pytest
import pytest_twisted
from twisted.internet import task

from simulators import datagen, harness
from simulators.isobank import install as isoinstall
from tests.support import InProcess, spec

pytestmark = [pytest.mark.loopback]


def _iso_order(order_no: str, count: int = 4, seed: int = 3) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=order_no, bank_id=isoinstall.ISO_BANK_ID, count=count, seed=seed,
        budget_unit="长丰县民政局", project_code="MZ2026-03", project_name="2026年高龄津贴",
        project_short="高龄津贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={}, corrupt=None)


async def _install(reactor, tmp_path, orders, *, iso_extra="", transport_extra="", result_delay_s=0.0):
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    sims = await harness.start_simulators(reactor, p, keys, orders, token="test-token")
    cfg = harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.2, status_poll_s=0.1)
    pki = isoinstall.make_pki(p.keys)
    bank, port = isoinstall.start_iso_bank(reactor, pki, result_delay_s=result_delay_s)
    isoinstall.write_bank_file(p.banks, pki, port, status_poll_s=0.1, iso_extra=iso_extra,
                               transport_extra=transport_extra)
    harness.migrate(cfg)
    ip = InProcess(reactor, p, keys, sims, cfg)
    ip.flow = ip.gw.flows[isoinstall.ISO_BANK_ID]
    return ip, bank


async def _close(ip, bank):
    try:
        await bank.stop()
    finally:
        await ip.close()


def _batch_state(ip, order_no):
    async def check():
        rows = await ip.query("SELECT state FROM batches WHERE order_no = :o", o=order_no)
        return rows == [{"state": "DONE"}]
    return check


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("case", ["doctype", "surrogate", "oversized", "foreign_version"])
async def test_a_hostile_report_is_refused_alone_and_the_order_still_settles(reactor, tmp_path, case):
    """The order's pain.002 arrives hostile: it is journaled failed with what arrived (the raw
    string, or the head of one too large), one report-refused alarm is raised, the cursor moves
    past it, the batch's status is asked again (same bytes; the bank pays once) and the good
    copy the bank serves then settles the order. Before: the feed stopped for good, silently."""
    ip, bank = await _install(reactor, tmp_path, [_iso_order("ISOH0001")],
                              iso_extra="max_document_bytes = 200000")
    if case == "foreign_version":
        # A report of a foreign version (its feed type 21 characters long) before ours.
        bank.inject_report("pain.002.001.03.ch.02", '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:'
                           'pain.002.001.03"><CstmrPmtStsRpt/></Document>')
        bank.mangle_next_report(lambda d: d.replace("pain.002.001.11", "pain.002.001.03"))
    else:
        bank.hostile_next_report(case, size=600_000)
    try:
        await ip.until(_batch_state(ip, "ISOH0001"), 60, "the batch settled after the refusal")
        for _ in range(5):
            await ip.flow.tick()
        alarms = await ip.query("SELECT kind, count, message FROM alarms WHERE bank_id = :b "
                                "AND kind LIKE 'report-%'", b=isoinstall.ISO_BANK_ID)
        refused = await ip.query("SELECT tx_code, verified, payload_size, decoded FROM journal "
                                 "WHERE direction = 'in' AND peer = :b AND verified LIKE 'failed%' "
                                 "ORDER BY id", b=isoinstall.ISO_BANK_ID)
        order = await ip.query("SELECT state FROM orders WHERE order_no = 'ISOH0001'")
        items = await ip.query("SELECT status, count(*) AS n FROM items GROUP BY status")
        cursor = await ip.query("SELECT cursor FROM bank_feeds")
    finally:
        await _close(ip, bank)
    assert order == [{"state": "SETTLED"}] and items == [{"status": "PAID", "n": 4}]
    assert bank.payments_received("ISOH0001-P01") == 1 and bank.double_credits() == []
    expected_alarms = 2 if case == "foreign_version" else 1
    assert [a["kind"] for a in alarms] == ["report-refused"] * expected_alarms, alarms
    assert len(refused) == expected_alarms, refused
    why = refused[-1]["verified"]
    if case == "doctype":
        assert "DOCTYPE" in why
    elif case == "surrogate":
        assert "lone surrogate U+D800" in why
    elif case == "oversized":
        assert "over max_document_bytes 200000" in why and refused[0]["payload_size"] <= 65536
    else:
        assert refused[0]["tx_code"] == "pain.002.001.03.ch.02"      # whole, not cut at 20
        assert "pain.002.001.11 expected" in why or "not signed" in refused[0]["verified"]
    assert int(cursor[0]["cursor"]) >= 2     # moved past the refused document


@pytest_twisted.ensureDeferred
async def test_a_signed_report_naming_nothing_we_sent_is_applied_to_nothing(reactor, tmp_path):
    """Signed, XSD-valid pain.002 documents for a MsgId the gateway never sent, and for our batch
    but with OrgnlMsgNmId pain.001.001.03, are journaled failed (unknown original), alarmed once
    each and kept nowhere; one served under another feed type is refused naming both types in
    order; the real batch's result and a later statement are taken."""
    ip, bank = await _install(reactor, tmp_path, [_iso_order("ISOU0001")])
    try:
        await ip.until(_batch_state(ip, "ISOU0001"), 60, "the batch's results")
        signed = await bank.inject_pain002("NEVERSENT-P01", group_status="RJCT")
        await bank.inject_pain002("ISOU0001-P01", "pain.001.001.03", group_status="RJCT")
        bank.inject_report("camt.054.001.08", signed)     # the feed's type is not the document's
        await bank.statement(datetime.date(2026, 11, 30))

        async def statement_kept():
            await ip.flow.adapter.sync(ip.flow)     # what a status or statement question does first
            return await ip.query("SELECT * FROM bank_reports WHERE kind = 'camt.053.001.08'")
        await ip.until(statement_kept, 30, "the statement after the unknown originals")
        for _ in range(3):
            await statement_kept()
        alarms = await ip.query("SELECT kind, message FROM alarms WHERE kind = 'report-unknown-original'")
        journaled = await ip.query("SELECT verified FROM journal WHERE peer = :b "
                                   "AND verified LIKE 'failed: unknown original%'", b=isoinstall.ISO_BANK_ID)
        kept = await ip.query("SELECT ref FROM bank_reports WHERE kind = 'pain.002.001.11'")
        mislabelled = await ip.query("SELECT verified, tx_code FROM journal WHERE peer = :b "
                                     "AND verified LIKE '%the feed says%'", b=isoinstall.ISO_BANK_ID)
        items = await ip.query("SELECT status, count(*) AS n FROM items GROUP BY status")
    finally:
        await _close(ip, bank)
    assert len(alarms) == 2, alarms
    text = " ".join(a["message"] for a in alarms)
    assert "NEVERSENT-P01" in text and "pain.001.001.03" in text and "pain.001.001.10 expected" in text
    assert len(journaled) == 2
    assert kept == [{"ref": "ISOU0001-P01"}]            # only the bank's real answer
    assert mislabelled == [{"tx_code": "camt.054.001.08", "verified": "failed: Iso20022Error: Document: the feed "
                            "says camt.054.001.08, the document is pain.002.001.11"}]
    assert items == [{"status": "PAID", "n": 4}]


@pytest_twisted.ensureDeferred
async def test_a_page_over_the_cap_is_asked_smaller_then_alarmed_once(reactor, tmp_path):
    """Pages over max_body_bytes are asked again with a smaller limit and taken; a page too large
    even one report at a time raises one feed-page-too-large alarm however often it is tried,
    the cursor stays, and the alarm clears once the page can be read."""
    ip, bank = await _install(reactor, tmp_path, [_iso_order("ISOP0001")],
                              transport_extra="max_body_bytes = 100000")
    bank.pad_pages(150_000, when_limit_over=1)
    try:
        await ip.until(_batch_state(ip, "ISOP0001"), 60, "the results read in small pages")
        bank.pad_pages(150_000, when_limit_over=0)
        await bank.statement(datetime.date(2026, 11, 30))
        before = await ip.query("SELECT cursor FROM bank_feeds")

        async def alarmed():
            return await ip.query("SELECT count, cleared_at FROM alarms WHERE kind = 'feed-page-too-large'")
        for _ in range(6):          # each a status or statement question reading the feed first
            await ip.flow.adapter.sync(ip.flow)
        stuck = await alarmed()
        after = await ip.query("SELECT cursor FROM bank_feeds")
        bank.pad_pages(0)
        await ip.flow.adapter.sync(ip.flow)
        cleared = await alarmed()
        statement = await ip.query("SELECT count(*) AS n FROM bank_reports WHERE kind = 'camt.053.001.08'")
        # Too large again with nothing new behind it: alarmed, then cleared by an empty page.
        bank.pad_pages(150_000, when_limit_over=0)
        await ip.flow.adapter.sync(ip.flow)
        bank.pad_pages(0)
        await ip.flow.adapter.sync(ip.flow)
        empty = await alarmed()
    finally:
        await _close(ip, bank)
    assert len(stuck) == 1 and stuck[0]["count"] >= 6 and stuck[0]["cleared_at"] is None
    assert after == before
    assert cleared[0]["cleared_at"] is not None and statement == [{"n": 1}]
    assert len(empty) == 2 and all(a["cleared_at"] is not None for a in empty)


@pytest_twisted.ensureDeferred
async def test_a_poisoned_report_between_good_ones_holds_up_no_order_and_no_bank(reactor, tmp_path):
    """End to end in one daemon: a good statement, then the first ISO order's pain.002 poisoned
    (a DOCTYPE with an entity), then the second ISO order's good pain.002, while a cnbank order
    pays in the same daemon. One alarm, one failed journal entry, and all three orders settle;
    the bank took each payment once."""
    orders = [_iso_order("ISOE0001", 5, seed=4), _iso_order("ISOE0002", 3, seed=5), spec("CNE00001", 4)]
    ip, bank = await _install(reactor, tmp_path, orders, result_delay_s=0.3)
    await bank.statement(datetime.date(2026, 11, 29))       # a good report before the poisoned one
    bank.hostile_next_report("doctype")
    try:
        deadline = reactor.seconds() + 90
        while True:
            for flow in ip.gw.flows.values():
                await flow.tick()
            states = {r["order_no"]: r["state"] for r in await ip.query("SELECT order_no, state FROM orders")}
            if states and all(s == "SETTLED" for s in states.values()) and len(states) == 3:
                break
            assert reactor.seconds() < deadline, f"orders not settled: {states}"
            await task.deferLater(reactor, 0.1, lambda: None)
        alarms = await ip.query("SELECT kind, bank_id FROM alarms WHERE kind LIKE 'report-%' "
                                "OR kind LIKE 'feed-%'")
        refused = await ip.query("SELECT verified FROM journal WHERE peer = :b AND verified LIKE 'failed%'",
                                 b=isoinstall.ISO_BANK_ID)
        kept = await ip.query("SELECT kind, ref FROM bank_reports ORDER BY id")
    finally:
        await _close(ip, bank)
    assert alarms == [{"kind": "report-refused", "bank_id": isoinstall.ISO_BANK_ID}]
    assert len(refused) == 1 and "DOCTYPE" in refused[0]["verified"]
    assert kept[0] == {"kind": "camt.053.001.08", "ref": None}
    assert {k["ref"] for k in kept if k["kind"] == "pain.002.001.11"} == {"ISOE0001-P01", "ISOE0002-P01"}
    for b in ("ISOE0001-P01", "ISOE0002-P01"):
        assert bank.payments_received(b) == 1
    assert bank.double_credits() == []
