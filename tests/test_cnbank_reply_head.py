"""How the cnbank link judges a reply's Head (cnbank.md, Envelope), fed bytes, no sockets.

A reply must answer the request sent: the request's TxCode and MsgId, SenderId and
ReceiverId swapped, a well-formed Head (Ver, RetCode set, dates). One that does not is
refused (LinkError); one dated outside max_clock_skew_s is accepted with its skew, for
the adapter to alarm. Also the backoff arithmetic every repeated question uses.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from adapters.cnbank.link import CnBankLink, LinkError
from gateway import backoff
from protocols import cnbank_envelope as env
from protocols import sm

GW, BANK = "GW3301", "CNBANK01"


@dataclasses.dataclass
class _Bank:
    sender_id: str = GW
    receiver_id: str = BANK


@pytest.fixture(scope="module")
def keys():
    return sm.generate_keypair(), sm.generate_keypair()


@pytest.fixture
def link(keys):
    ours, theirs = keys
    lk = CnBankLink.__new__(CnBankLink)   # only what open_reply needs: no sockets, no SFTP
    lk.bank, lk.our_key, lk.bank_key = _Bank(), ours, theirs.public_key
    lk.settings = env.EnvelopeSettings(max_skew_s=300)
    return lk


NOW = datetime(2026, 11, 30, 10, 0, 0, tzinfo=env.CN_TZ).timestamp()


def _reply(keys, link, out, *, at=NOW, **changes) -> bytes:
    ours, theirs = keys
    request = env.request_head(out.tx_code, GW, BANK, out.msg_id, datetime.fromtimestamp(NOW, env.CN_TZ))
    head = env.reply_head(request, datetime.fromtimestamp(at, env.CN_TZ), "0000", "")
    head = dataclasses.replace(head, **changes)
    inner = env.build_inner("Rsp", {"BatchNo": "X-P01", "Status": "PROC"})
    return env.build_message(head, inner, theirs, ours.public_key, link.settings)


def _out(tx="BQ01"):
    from adapters.cnbank.link import Outgoing
    return Outgoing(tx, "a" * 32, b"", {"BatchNo": "X-P01"}, "")


def test_a_reply_that_answers_the_request_is_accepted_in_the_window(keys, link):
    """The request's TxCode and MsgId, ids swapped, dated 20 s later: accepted, no skew."""
    out = _out()
    inc = link.open_reply(out, _reply(keys, link, out, at=NOW + 20), NOW)
    assert inc.ret_code == "0000" and inc.fields["Status"] == "PROC" and inc.skew_s is None


@pytest.mark.parametrize("offset", [400, -400])
def test_a_reply_dated_outside_the_window_is_accepted_with_its_skew(keys, link, offset):
    """A reply 400 s ahead or behind our clock (window 300 s) is accepted, not refused: its
    MsgId echo proves freshness; the skew is returned for the adapter's alarm."""
    out = _out()
    inc = link.open_reply(out, _reply(keys, link, out, at=NOW + offset), NOW)
    assert inc.skew_s == offset and inc.fields["BatchNo"] == "X-P01"


@pytest.mark.parametrize("changes, named", [
    ({"msg_id": "b" * 32}, "MsgId"),
    ({"tx_code": "RQ01"}, "TxCode"),
    ({"sender_id": GW, "receiver_id": BANK}, "SenderId/ReceiverId"),
    ({"ver": "2.0"}, "Ver"),
    ({"ret_code": "", "ret_msg": ""}, "RetCode"),
    ({"ret_code": "OK"}, "RetCode"),
])
def test_a_reply_head_that_does_not_answer_the_request_is_refused(keys, link, changes, named):
    """Signed by the bank's key, but the Head does not answer our request or is malformed:
    refused (LinkError naming the field), whatever its time."""
    out = _out()
    with pytest.raises(LinkError) as e:
        link.open_reply(out, _reply(keys, link, out, **changes), NOW)
    assert named in str(e.value)


def test_backoff_doubles_per_failure_up_to_the_cap_and_never_below_the_interval():
    """The interval after a good answer, doubled per consecutive failure, capped at 15
    minutes; an interval longer than the cap (return_poll_s, say) is never shortened."""
    assert backoff.delay(5, 0) == 5
    assert [backoff.delay(5, n) for n in (1, 2, 3)] == [10, 20, 40]
    assert backoff.delay(5, 50) == backoff.CAP_S == 900
    assert backoff.delay(3600, 0) == backoff.delay(3600, 7) == 3600
    assert backoff.next_at(1000.0, 0.1, 1) == 1000
    assert backoff.next_at(1000.0, 60, 2) == 1240
    assert timedelta(seconds=backoff.delay(0.1, 40)) == timedelta(minutes=15)
