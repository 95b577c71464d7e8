"""Small leaks closed: a secret copied out of the configuration, a number that is an account,
a redirect from the core."""

from __future__ import annotations

import dataclasses

import pytest_twisted
from twisted.internet import defer
from twisted.web import resource, server

from adapters.core_http import CoreClient, CoreContractError
from gateway.config import CoreSettings, Secret
from gateway.masking import mask_fields


def test_asdict_of_the_configuration_never_holds_the_token():
    """dataclasses.asdict (a natural way to dump the config as JSON) keeps the Secret opaque."""
    core = CoreSettings(base_url="http://core", token=Secret("s3cr3t-token-value", "/etc/t"),
                        poll_interval_s=1, timeout_s=1, results_chunk=1, retry_max_delay_s=1)
    dumped = dataclasses.asdict(core)
    assert "s3cr3t-token-value" not in repr(dumped) and "s3cr3t-token-value" not in str(dumped)
    assert dumped["token"].value == "s3cr3t-token-value"   # still usable by the code that needs it


def test_account_and_id_numbers_sent_as_json_numbers_are_masked():
    """An account number that arrived as an int (or in a list) is masked like a string."""
    out = mask_fields({"account_no": 6228480000000123457, "IdNo": ["110105194912310021"],
                       "nested": {"AcctNo": 62284800001234}, "seq": 12})
    assert out == {"account_no": "6228***********3457", "IdNo": ["1101**********0021"],
                   "nested": {"AcctNo": "6228******1234"}, "seq": 12}


class _Redirect(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.calls = 0

    def render_GET(self, request):  # noqa: N802
        self.calls += 1
        request.setResponseCode(302)
        request.setHeader(b"location", b"http://elsewhere/")
        return b""


@pytest_twisted.ensureDeferred
async def test_a_redirect_from_the_core_is_a_contract_fault_not_retried(reactor):
    """The core contract has no redirects: a 3xx is raised as a contract fault at once."""
    r = _Redirect()
    port = reactor.listenTCP(0, server.Site(r), interface="127.0.0.1")
    client = CoreClient(reactor, f"http://127.0.0.1:{port.getHost().port}", "token", attempts=3)
    try:
        try:
            await client.get_json("/api/orders/X")
        except CoreContractError as e:
            assert e.status == 302
        else:
            raise AssertionError("a 302 was accepted")
        assert r.calls == 1
    finally:
        await client.close()
        await defer.maybeDeferred(port.stopListening)
