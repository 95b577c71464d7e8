"""RPC callers and what they may call ([[rpc.callers]]), and the TLS listener with pinned client certificates.

Real listeners on a Unix socket, 127.0.0.1 TCP and 127.0.0.1 TLS, against the
recording FakeCommands of test_rpc: each test says what the caller got back and
whether a method ran at all. TLS clients are Python's ssl module in a worker
thread; the PKIs are made in memory (tests/tlsfixtures.py) and written to a
temporary directory only because the listener reads files, as the daemon does.
"""

from __future__ import annotations

import grp
import hashlib
import http.client
import json
import os
import pwd
import shutil
import ssl
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet.threads import deferToThreadPool

from gateway.config import ConfigError, load
from gateway.rpc import listen_rpc, rpc_site
from gateway.rpc_api import NOT_ALLOWED, Caller, CallerRule, method_allowed
from tests.test_config import _edit, _has, inst  # noqa: F401  (fixture)
from tests.test_rpc import TOKEN, FakeCommands, _http, req, short_dir, write_token
from tests.tlsfixtures import issue, make_ca

pytestmark = pytest.mark.loopback

ME = pwd.getpwuid(os.geteuid()).pw_name
MY_GROUP = grp.getgrgid(os.getegid()).gr_name
READ_ONLY = ("health", "order.status", "report.*")
CORRECTION = {"order_no": "O1", "seq": 1, "account_no": "6222021234567890123", "confirmed_by": "a",
              "approved_by": "b", "approval_ref": "c"}


def _in_thread(reactor, f, *args):
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


def _post(where, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _http(where, "POST", "/rpc", json.dumps(body).encode(), headers)


class Served:
    """A listening RPC with the given callers; `stop()` closes it."""

    def __init__(self, reactor, callers, **listen):
        self.reactor, self.dir, self.fake, self.journal = reactor, short_dir(), FakeCommands(), []
        self.sock = os.path.join(self.dir, "rpc.sock")
        site = rpc_site(self.fake, lambda *a: self.journal.append(a), reactor=reactor, callers=tuple(callers))
        self.listeners = listen_rpc(reactor, site, unix_path=self.sock, **listen)

    async def call(self, body, where=None, token=None):
        status, _, data = await _in_thread(self.reactor, _post, where or self.sock, body, token)
        return status, json.loads(data)

    def stop(self):
        pytest_twisted.blockon(self.listeners.stop())
        shutil.rmtree(self.dir)


@pytest.fixture
def serve(reactor):
    made = []

    def make(callers, **listen):
        made.append(Served(reactor, callers, **listen))
        return made[-1]
    yield make
    for s in made:
        s.stop()


# --- permissions -------------------------------------------------------------

def test_method_patterns():
    """A pattern is a method name, "prefix.*" or "*": report.* allows report.monthly and nothing outside report."""
    assert method_allowed(("report.*",), "report.monthly")
    assert not method_allowed(("report.*",), "order.status")
    assert method_allowed(("*",), "item.correct")
    assert not method_allowed(("order.status",), "order.statusx")
    assert not method_allowed((), "health")


def test_the_journal_names_a_caller_by_its_configured_name():
    """Caller.who, which the journal's entries carry, starts with the configured name and keeps the identity."""
    assert Caller("unix", "uid=5,gid=5", "core", ("*",)).who == "core (unix:uid=5,gid=5)"
    assert Caller("unix", "uid=5,gid=5").who == "unix:uid=5,gid=5"


@pytest_twisted.ensureDeferred
async def test_without_callers_everything_is_allowed_as_before(serve):
    """No [[rpc.callers]]: whoever reaches the socket calls any method, and has no name (existing installs)."""
    s = serve(())
    status, doc = await s.call(req("item.correct", CORRECTION))
    assert status == 200 and doc["result"]["state"] == "CORRECTED"
    assert s.fake.calls[0][2].name == "" and s.fake.calls[0][2].methods is None


@pytest_twisted.ensureDeferred
async def test_the_core_user_is_named_and_may_call_everything(serve):
    """unix_user matching the SO_PEERCRED uid names the caller; the method sees and the journal records that name."""
    s = serve([CallerRule("core", ("*",), unix_user=ME), CallerRule("operators", READ_ONLY, unix_group=MY_GROUP)])
    status, doc = await s.call(req("item.correct", CORRECTION))
    assert status == 200 and "result" in doc, doc
    caller = s.fake.calls[0][2]
    assert (caller.name, caller.identity) == ("core", f"uid={os.geteuid()},gid={os.getegid()}")
    assert s.journal[0][0].name == "core"


@pytest_twisted.ensureDeferred
async def test_a_read_only_group_is_refused_a_change_naming_the_method(serve):
    """An operators' group with read-only methods: item.correct is 1008 with data.method and never runs;
    order.status runs. Operators need none of the core's rights to read."""
    s = serve([CallerRule("operators", READ_ONLY, unix_group=MY_GROUP)])
    status, doc = await s.call(req("item.correct", CORRECTION))
    assert status == 200
    assert doc["error"]["code"] == NOT_ALLOWED
    assert doc["error"]["data"]["method"] == "item.correct" and doc["error"]["data"]["field"] == "method"
    assert "operators" in doc["error"]["message"] and "item.correct" in doc["error"]["message"]
    assert s.fake.calls == []
    assert s.journal[0][1] == "item.correct" and s.journal[0][3]["error"]["code"] == NOT_ALLOWED
    status, doc = await s.call(req("order.status", {"order_no": "O1"}))
    assert doc["result"]["state"] == "DISPATCHED"
    assert [c[2].name for c in s.fake.calls] == ["operators"]


@pytest_twisted.ensureDeferred
async def test_a_peer_no_entry_names_may_call_nothing(serve):
    """With callers declared, a uid and gid no entry matches is refused every method, told it is not declared."""
    other = "root" if os.geteuid() != 0 else "nobody"
    s = serve([CallerRule("core", ("*",), unix_user=other)])
    status, doc = await s.call(req("health"))
    assert doc["error"]["code"] == NOT_ALLOWED and doc["error"]["data"]["method"] == "health"
    assert "no [[rpc.callers]] entry" in doc["error"]["message"]
    assert s.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_tcp_tokens_name_their_callers(serve):
    """On 127.0.0.1 a caller's token_file names it and limits it; the bare [rpc] token is no caller once
    callers are declared; an unknown token is still 401."""
    d = short_dir()
    os.mkdir(os.path.join(d, "ops"))
    core_token = write_token(d, TOKEN)
    ops_token = write_token(os.path.join(d, "ops"), "operators-token-0123456789")
    try:
        t = serve([CallerRule("core", ("*",), token_file=core_token),
                   CallerRule("operators", READ_ONLY, token_file=ops_token)],
                  tcp_port=0, token_file=core_token)
    finally:
        shutil.rmtree(d)   # the tokens were read when listening began
    port = t.listeners.tcp.getHost().port
    status, doc = await t.call(req("item.correct", CORRECTION), port, "operators-token-0123456789")
    assert doc["error"]["code"] == NOT_ALLOWED and doc["error"]["data"]["method"] == "item.correct"
    status, doc = await t.call(req("item.correct", CORRECTION), port, TOKEN)
    assert doc["result"]["state"] == "CORRECTED"
    assert t.fake.calls[0][2].name == "core"
    status, _ = await t.call(req("health"), port, "not-a-token-0123456789")
    assert status == 401


# --- the TLS listener --------------------------------------------------------

def _write(d: Path, name: str, data: bytes, mode: int = 0o600) -> str:
    path = d / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def _sha256(issued) -> str:
    return hashlib.sha256(issued.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def pki():
    server_ca, client_ca, other_ca = make_ca("RPC server CA"), make_ca("RPC clients CA"), make_ca("Other CA")
    return {"server_ca": server_ca, "client_ca": client_ca,
            "server": issue(server_ca, "gateway.test", ips=("127.0.0.1",), server=True),
            "core": issue(client_ca, "core", client=True), "ops": issue(client_ca, "ops", client=True),
            "unpinned": issue(client_ca, "stranger", client=True),
            "foreign": issue(other_ca, "core", client=True)}


@pytest.fixture
def tls(serve, pki, tmp_path):
    files = {k: _write(tmp_path, k, v) for k, v in (
        ("cert", pki["server"].cert_pem), ("key", pki["server"].key_pem), ("ca", pki["client_ca"].cert_pem))}
    s = serve([CallerRule("core", ("*",), cert_sha256=_sha256(pki["core"])),
               CallerRule("operators", READ_ONLY, cert_sha256=_sha256(pki["ops"]))],
              tls_listen="127.0.0.1:0", tls_cert=files["cert"], tls_key=files["key"], client_ca=files["ca"])
    s.tls_port = s.listeners.tls.getHost().port

    def https(client, body):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=pki["server_ca"].cert_pem.decode())
        if client is not None:
            ctx.load_cert_chain(_write(tmp_path, "c.pem", pki[client].cert_pem),
                                _write(tmp_path, "k.pem", pki[client].key_pem))
        conn = http.client.HTTPSConnection("127.0.0.1", s.tls_port, context=ctx, timeout=10)
        try:
            conn.request("POST", "/rpc", json.dumps(body).encode(), {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    async def call(client, body):
        return await _in_thread(s.reactor, https, client, body)
    s.https = call
    return s


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("client", [None, "foreign"])
async def test_tls_without_a_certificate_from_the_client_ca_fails_the_handshake(tls, client):
    """No client certificate, or one another CA signed: the TLS handshake fails and no method runs."""
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        await tls.https(client, req("health"))
    assert tls.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_tls_pinned_certificate_is_its_caller(tls, pki):
    """A certificate pinned by cert_sha256 is answered as that caller (name in the method's Caller and journal)."""
    status, doc = await tls.https("core", req("item.correct", CORRECTION))
    assert status == 200 and doc["result"]["state"] == "CORRECTED"
    caller = tls.fake.calls[0][2]
    assert (caller.transport, caller.name) == ("tls", "core")
    assert caller.identity.startswith(f"cert:{_sha256(pki['core'])[:16]}@127.0.0.1:")
    assert tls.journal[0][0].name == "core"


@pytest_twisted.ensureDeferred
async def test_tls_certificate_the_ca_signed_but_nobody_pins_is_refused_naming_why(tls, pki):
    """The right CA is not enough: an unpinned certificate gets 403 / 1008 naming its fingerprint; nothing runs."""
    status, doc = await tls.https("unpinned", req("health"))
    assert status == 403
    assert doc["error"]["code"] == NOT_ALLOWED
    assert doc["error"]["data"]["cert_sha256"] == _sha256(pki["unpinned"])
    assert "pinned by no [[rpc.callers]]" in doc["error"]["message"]
    assert tls.fake.calls == []


@pytest_twisted.ensureDeferred
async def test_tls_read_only_caller_is_refused_a_change_and_allowed_a_read(tls):
    """Permissions hold on TLS too: the operators' certificate is refused item.correct naming the method,
    and served order.status."""
    status, doc = await tls.https("ops", req("item.correct", CORRECTION))
    assert doc["error"]["code"] == NOT_ALLOWED and doc["error"]["data"]["method"] == "item.correct"
    status, doc = await tls.https("ops", req("order.status", {"order_no": "O1"}))
    assert doc["result"]["state"] == "DISPATCHED"
    assert [(c[0], c[2].name) for c in tls.fake.calls] == [("order.status", "operators")]


def test_tls_listen_without_its_files_is_refused_before_listening(reactor):
    """listen_rpc with tls_listen but no client_ca names the missing setting and leaves nothing listening."""
    d = short_dir()
    try:
        sock = os.path.join(d, "rpc.sock")
        with pytest.raises(ValueError, match="client_ca: required"):
            listen_rpc(reactor, rpc_site(FakeCommands(), None, reactor=reactor), unix_path=sock,
                       tls_listen="127.0.0.1:0", tls_cert="/x", tls_key="/y")
        assert not os.path.exists(sock)
    finally:
        shutil.rmtree(d)


# --- configuration -----------------------------------------------------------

def test_config_reads_callers_and_tls(inst):  # noqa: F811
    """[[rpc.callers]] load as CallerRules (fingerprint normalised); the TLS settings are kept."""
    (inst.conf / "ca.pem").write_text("x")
    (inst.conf / "tls.pem").write_text("x")
    _write(inst.conf, "tls.key", b"x")
    fp = ":".join(["AB"] * 32)
    with open(inst.gateway, "a") as f:
        f.write(f'\n[rpc]\nunix_socket = "/tmp/gw-test.sock"\ntls_listen = "0.0.0.0:8443"\ntls_cert = "tls.pem"\n'
                f'tls_key = "tls.key"\nclient_ca = "ca.pem"\n'
                f'[[rpc.callers]]\nname = "core"\nunix_user = "{ME}"\nmethods = ["*"]\n'
                f'[[rpc.callers]]\nname = "remote"\ncert_sha256 = "{fp}"\nmethods = ["order.status", "report.*"]\n')
    cfg = load(inst.gateway)
    assert cfg.rpc.callers == (CallerRule("core", ("*",), unix_user=ME),
                               CallerRule("remote", ("order.status", "report.*"), cert_sha256="ab" * 32))
    assert cfg.rpc.tls_listen == "0.0.0.0:8443" and cfg.rpc.client_ca == str(inst.conf / "ca.pem")


@pytest.mark.parametrize("text,key,words", [
    ('tls_listen = "0.0.0.0:8443"\n', "rpc.client_ca", ("required",)),
    ('[[rpc.callers]]\nname = "x"\nmethods = ["*"]\n', "rpc.callers[0]", ("exactly one",)),
    ('[[rpc.callers]]\nname = "x"\nunix_user = "no-such-user-here"\nmethods = ["*"]\n', "rpc.callers[0].unix_user",
     ("no Unix user",)),
    ('[[rpc.callers]]\nname = "x"\nunix_group = "no-such-group-here"\nmethods = []\n', "rpc.callers[0].methods",
     ("method names",)),
    ('[[rpc.callers]]\nname = "x"\ncert_sha256 = "abc"\nmethods = ["*"]\n', "rpc.callers[0].cert_sha256",
     ("SHA-256",)),
])
def test_config_refuses_incomplete_callers_and_tls_naming_the_key(inst, text, key, words):  # noqa: F811
    """A TLS listener without all four settings, a caller without exactly one way to recognise it, an unknown
    user, no methods or a malformed fingerprint is refused at load, naming the key."""
    with open(inst.gateway, "a") as f:
        f.write(f'\n[rpc]\nunix_socket = "/tmp/gw-test.sock"\n{text}')
    with pytest.raises(ConfigError) as e:
        load(inst.gateway)
    assert _has(e.value.errors, inst.gateway, key, *words), e.value.errors


# --- the real daemon, with the demo's configuration --------------------------

@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_daemon_journals_the_callers_name_with_the_demo_callers(reactor, tmp_path):
    """`make demo`'s configuration declares "core" (this user): the daemon serves it, and the journal entry of
    its refused call names it "core"; the configuration loads with the "operators" group read-only."""
    from twisted.internet.threads import deferToThread

    from gateway import rpc_client
    from gateway.rpc_api import RpcError
    from simulators import harness
    from tests.support import install, wait_for
    from tests.test_e2e_cnbank import gatewayctl

    p, keys, sims, cfg = await install(reactor, tmp_path, [])
    assert [r.name for r in load(cfg).rpc.callers] == ["core", "operators"]
    assert load(cfg).rpc.callers[1].methods == harness.OPERATOR_METHODS
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    try:
        async def health():
            try:
                return await deferToThread(rpc_client.call, "health", {}, unix_path=str(p.rpc_socket))
            except rpc_client.RpcUnavailable:
                return None
        assert "role" in await wait_for(reactor, health, 30, "the RPC to answer", daemon)
        with pytest.raises(RpcError):
            await deferToThread(rpc_client.call, "order.status", {"order_no": "NO-SUCH-ORDER"},
                                unix_path=str(p.rpc_socket))
    finally:
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0
    shown = gatewayctl(cfg, "journal", "show", "--limit", "100").stdout
    line = next(x for x in shown.splitlines() if "order.status" in x)
    assert f"core (unix:uid={os.geteuid()}" in line, shown
