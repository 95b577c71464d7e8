"""The console's parts that need no browser: accounts and the users file, lockout and session
expiry on an injected clock, CSRF tokens, [console] settings, `gatewayctl console add-user`,
and the queries' paging and masking on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import pytest_twisted
from sqlalchemy import insert

from gateway import config as configmod
from gateway.console import queries as Q
from gateway.console.auth import Auth, DbStore, MemoryStore, UsersFileError, add_user, read_users
from tests.test_config import _has, inst  # noqa: F401  (fixture)

ID = "110101199003078515"
ACCT = "6222020200112233445"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _auth(tmp_path, **kw) -> tuple[Auth, Clock]:
    path = str(tmp_path / "users")
    add_user(path, "wang", "operator", "correct horse", rounds=4)
    clock = Clock()
    return Auth(read_users(path), clock, **kw), clock


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path):
    """Where sessions and lockouts are kept: a dict, or the database (SQLite, PostgreSQL)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    from gateway import db as dbmod
    url = f"sqlite:///{tmp_path}/gateway.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    dbmod.upgrade(url)
    engine = dbmod.make_engine(url)
    yield DbStore(engine)
    engine.dispose()


def test_users_file_holds_bcrypt_hashes_only_and_is_0600(tmp_path):
    """add_user writes name:role:bcrypt-hash, mode 0600, never the password; a second call replaces
    the account; a bad role, name or short password is refused; a clear-text line is refused on read."""
    path = str(tmp_path / "users")
    add_user(path, "wang", "viewer", "correct horse", rounds=4)
    add_user(path, "li", "auditor", "battery staple", rounds=4)
    add_user(path, "wang", "operator", "another secret", rounds=4)
    text = open(path).read()
    assert "correct horse" not in text and "another secret" not in text and "battery staple" not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = read_users(path)
    assert {n: a.role for n, a in users.items()} == {"wang": "operator", "li": "auditor"}
    assert users["wang"].hash.startswith(b"$2b$")
    for name, role, pw in (("x y", "viewer", "longenough"), ("x", "admin", "longenough"), ("x", "viewer", "short")):
        with pytest.raises(UsersFileError):
            add_user(path, name, role, pw, rounds=4)
    (tmp_path / "clear").write_text("wang:viewer:correct horse\n")
    with pytest.raises(UsersFileError, match="bcrypt"):
        read_users(str(tmp_path / "clear"))


def test_five_wrong_passwords_lock_the_account_for_the_lockout_time(tmp_path, store):
    """The fifth wrong password locks the account: even the right one is refused until
    lockout_s has passed on the clock; then the right one signs in. A success resets the count.
    The same with the counters in memory and in the database."""
    auth, clock = _auth(tmp_path, lockout_after=5, lockout_s=900, store=store)
    for _ in range(4):
        assert auth.sign_in("wang", "wrong")[0] is None
    s, _ = auth.sign_in("wang", "correct horse")
    assert s is not None                                   # four wrong ones do not lock
    for _ in range(5):
        s, why = auth.sign_in("wang", "wrong")
    assert s is None and "locked" in why
    clock.t += 899
    s, why = auth.sign_in("wang", "correct horse")
    assert s is None and "locked" in why
    clock.t += 2
    s, why = auth.sign_in("wang", "correct horse")
    assert s is not None and s.role == "operator", why
    s2, why = auth.sign_in("nobody", "correct horse")
    assert s2 is None and why == "用户名或密码错误 wrong name or password"


def test_sessions_expire_after_idle_time_and_csrf_tokens_are_per_session(tmp_path, store):
    """A session lives while used within session_s of its last request and is gone after;
    its CSRF token is its own (another session's token, an empty one or none are refused).
    The same with sessions in memory and in the database."""
    auth, clock = _auth(tmp_path, session_s=60, store=store)
    a, _ = auth.sign_in("wang", "correct horse")
    b, _ = auth.sign_in("wang", "correct horse")
    assert a.sid != b.sid and a.csrf != b.csrf
    assert auth.csrf_ok(a, a.csrf)
    assert not auth.csrf_ok(a, b.csrf) and not auth.csrf_ok(a, "") and not auth.csrf_ok(a, None)
    clock.t += 59
    assert auth.session(a.sid).csrf == a.csrf              # used: pushed back
    clock.t += 59
    assert (auth.session(a.sid).user, auth.session(a.sid).role) == ("wang", "operator")
    assert auth.session(b.sid) is None                     # idle 118 s > 60
    clock.t += 61
    assert auth.session(a.sid) is None
    assert auth.session(None) is None and auth.session("forged") is None


def test_sessions_are_kept_by_hash_and_outlive_the_auth_that_made_them(tmp_path, store):
    """A second Auth over the same store (a restarted daemon, or a standby) knows the session
    and its CSRF token, and knows a locked account is locked; the store holds neither the
    session id nor the CSRF token; signing out ends the session for both; an account removed
    from the users file, or given another role, loses its sessions."""
    from gateway.console.auth import sid_hash
    first, clock = _auth(tmp_path, lockout_after=2, store=store)
    s, _ = first.sign_in("wang", "correct horse")
    for _ in range(2):
        first.sign_in("li", "wrong")
    second = Auth(read_users(str(tmp_path / "users")), clock, lockout_after=2, store=store)
    again = second.session(s.sid)
    assert again is not None and (again.user, again.role, again.csrf) == ("wang", "operator", s.csrf)
    assert "locked" in second.locked("li")
    kept = store.sessions if isinstance(store, MemoryStore) else {
        r[0]: r for r in store.engine.connect().execute(__import__("sqlalchemy").text(
            "SELECT sid_hash, user_name, role FROM console_sessions"))}
    assert list(kept) == [sid_hash(s.sid)] and s.sid not in repr(kept) and s.csrf not in repr(kept)
    second.sign_out(s.sid)
    assert first.session(s.sid) is None
    s, _ = first.sign_in("wang", "correct horse")
    add_user(str(tmp_path / "users"), "wang", "viewer", "correct horse", rounds=4)
    demoted = Auth(read_users(str(tmp_path / "users")), clock, store=store)
    assert demoted.session(s.sid) is None and first.session(s.sid) is None


def test_console_settings_loopback_by_default_and_tls_required_elsewhere(inst):  # noqa: F811
    """[console] defaults to 127.0.0.1:8470; another address without tls_cert and tls_key is
    refused naming each missing key; with both (the key file private) it loads."""
    users = inst.conf / "console-users"
    add_user(str(users), "wang", "viewer", "correct horse", rounds=4)
    text = inst.gateway.read_text()
    inst.gateway.write_text(text + '\n[console]\nusers_file = "console-users"\n')
    c = configmod.load(inst.gateway).console
    assert (c.host, c.port, c.users_file, c.lockout_after, c.lockout_s) == \
        ("127.0.0.1", 8470, str(users), 5, 900.0)
    inst.gateway.write_text(text + '\n[console]\nusers_file = "console-users"\nlisten = "0.0.0.0:8470"\n')
    errors = inst.errors()
    assert _has(errors, inst.gateway, "console.tls_cert", "not loopback")
    assert _has(errors, inst.gateway, "console.tls_key", "not loopback")
    from tests import tlsfixtures
    server = tlsfixtures.issue(tlsfixtures.make_ca(), "console.example", ips=("127.0.0.1",))
    (inst.conf / "c.pem").write_bytes(server.cert_pem)
    fd = os.open(inst.conf / "k.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, server.key_pem)
    os.close(fd)
    inst.gateway.write_text(text + '\n[console]\nusers_file = "console-users"\nlisten = "0.0.0.0:8470"\n'
                                   'tls_cert = "c.pem"\ntls_key = "k.pem"\n')
    c = configmod.load(inst.gateway).console
    assert c.host == "0.0.0.0" and c.tls_cert == str(inst.conf / "c.pem")


def test_gatewayctl_console_add_user_writes_the_file_0600(tmp_path):
    """`gatewayctl console add-user NAME --role auditor --users-file F --password-stdin` writes
    an auditor with a bcrypt hash, 0600; an unknown role is refused by the parser."""
    path = tmp_path / "users"
    r = subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                        "console", "add-user", "zhao", "--role", "auditor", "--users-file", str(path),
                        "--password-stdin", "--rounds", "4"], input="s3cret-pass\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert read_users(str(path))["zhao"].role == "auditor"
    assert "s3cret-pass" not in path.read_text() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    r = subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                        "console", "add-user", "zhao", "--role", "root", "--users-file", str(path),
                        "--password-stdin"], input="s3cret-pass\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_order_items_page_by_seq_masked_and_grouped(db_url):
    """An order's page: one grouped count gives the conservation line (funded = paid + refunded +
    in flight) and the per-state counts; items come 50 at a time after a seq, filtered by state
    and reason, with ID and account numbers masked."""
    from gateway import db as dbmod
    from gateway.models import items, orders
    dbmod.upgrade(db_url)
    engine = dbmod.make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(orders).values(order_no="O1", bank_id="b", budget_unit="u", project_code="P",
                                           project_name="p", project_short="p", region="r", total_amount=120 * 100,
                                           total_count=120, funded_at="2026-11-02", state="DISPATCHED",
                                           created_at="x", updated_at="x"))
        conn.execute(insert(items), [dict(order_no="O1", seq=i, name="n", id_number=ID, account_no=ACCT,
                                          account_bank="b", amount=100, remark="",
                                          status="PAID" if i % 3 else "FAILED",
                                          reason_code=None if i % 3 else ("R001" if i % 2 else "R002"))
                                     for i in range(1, 121)])
        page = Q.order_page(conn, "O1")
        assert (page["paid"], page["refunded"], page["in_flight"], page["balanced"]) == (8000, 0, 4000, True)
        assert {(g["status"], g["reason_code"]): g["n"] for g in page["groups"]} == \
            {("PAID", None): 80, ("FAILED", "R001"): 20, ("FAILED", "R002"): 20}
        first = Q.order_items(conn, "O1", None, None)
        assert [r["seq"] for r in first] == list(range(1, 51))
        assert [r["seq"] for r in Q.order_items(conn, "O1", None, None, after=first[-1]["seq"])][:2] == [51, 52]
        failed = Q.order_items(conn, "O1", "FAILED", "R002")
        assert [r["seq"] for r in failed][:3] == [6, 12, 18] and len(failed) == 20
        assert all(r["id_number"] == "1101**********8515" and r["account_no"] == "6222***********3445"
                   for r in first)
    engine.dispose()


@pytest_twisted.ensureDeferred
async def test_console_over_http_standby_is_read_only_and_every_post_needs_the_csrf_token(reactor, tmp_path):
    """The console resource on a loopback port: a standby says so in the header and refuses an
    acknowledgement (409) even with the right token; active, a POST with a wrong token is refused
    (403) and changes nothing; with the session's token the alarm is acknowledged by the signed-in
    operator and the acknowledgement is journaled with who and the comment."""
    import http.cookiejar
    import re
    import urllib.error
    import urllib.parse
    import urllib.request
    from types import SimpleNamespace

    from sqlalchemy import select
    from twisted.internet.threads import deferToThread
    from twisted.web import server

    from gateway import db as dbmod
    from gateway.alarms import raise_alarm
    from gateway.console.web import Console
    from gateway.journal import Journal
    from gateway.models import alarms, journal

    url = f"sqlite:///{tmp_path}/gw.db"
    dbmod.upgrade(url)
    database = dbmod.Database(reactor, dbmod.make_engine(url), 1)
    database.start()
    with database.engine.begin() as c:
        aid = raise_alarm(c, "2026-11-02T10:00:00+08:00", "critical", "bank-link-down", "no answer", bank_id="b1")
    users = str(tmp_path / "users")
    add_user(users, "wang", "operator", "correct horse", rounds=4)
    lead = SimpleNamespace(active=False, status=lambda: {"role": "standby", "since": None, "leases": {}})
    gw = SimpleNamespace(flows={}, tickers={}, leadership=lead, commands=None)
    res = Console(reactor, Auth(read_users(users), reactor.seconds), database, gw, Journal(str(tmp_path / "j")))
    port = reactor.listenTCP(0, server.Site(res), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(path, data=None):
        try:
            with opener.open(base + path, urllib.parse.urlencode(data).encode() if data is not None else None) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    try:
        _, page = await deferToThread(call, "/login")
        pre = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        st, page = await deferToThread(call, "/login", {"csrf": pre, "user": "wang", "password": "correct horse",
                                                         "next": "/alarms"})
        assert st == 200 and "wang (operator)" in page and 'id="standby-banner"' in page
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        st, page = await deferToThread(call, f"/alarms/{aid}/ack", {"csrf": token, "comment": "seen"})
        assert st == 409 and "standby" in page
        lead.active = True
        st, page = await deferToThread(call, f"/alarms/{aid}/ack", {"csrf": token + "x", "comment": "seen"})
        assert st == 403 and "CSRF" in page
        st, page = await deferToThread(call, f"/alarms/{aid}/ack", {"comment": "seen"})
        assert st == 403
        with database.engine.connect() as c:
            assert c.execute(select(alarms.c.acknowledged_by).where(alarms.c.id == aid)).scalar() is None
        st, page = await deferToThread(call, f"/alarms/{aid}/ack", {"csrf": token, "comment": "已联系银行 called"})
        assert st == 200 and f"#{aid}" in page and 'id="standby-banner"' not in page
        with database.engine.connect() as c:
            a = c.execute(select(alarms).where(alarms.c.id == aid)).mappings().one()
            e = c.execute(select(journal).where(journal.c.tx_code == "console.alarm.ack")).mappings().one()
        assert (a["acknowledged_by"], a["ack_comment"]) == ("wang", "已联系银行 called")
        assert e["peer"] == "console:wang" and "called" in e["decoded"] and f"#{aid}" in e["decoded"]
    finally:
        await port.stopListening()
        database.stop()


@pytest_twisted.ensureDeferred
async def test_console_service_serves_https_with_the_configured_certificate(reactor, tmp_path):
    """With tls_cert and tls_key the console listens with TLS only: the sign-in page comes over
    https with that certificate (its subject seen by the client), and plain http gets no page."""
    import ssl
    import urllib.request
    from types import SimpleNamespace

    from twisted.internet.threads import deferToThread

    from gateway import db as dbmod
    from gateway.config import ConsoleSettings
    from gateway.console.service import ConsoleService
    from gateway.journal import Journal
    from tests import tlsfixtures

    url = f"sqlite:///{tmp_path}/gw.db"
    dbmod.upgrade(url)
    server = tlsfixtures.issue(tlsfixtures.make_ca(), "console.example", ips=("127.0.0.1",))
    (tmp_path / "c.pem").write_bytes(server.cert_pem)
    (tmp_path / "k.pem").write_bytes(server.key_pem)
    add_user(str(tmp_path / "users"), "wang", "viewer", "correct horse", rounds=4)
    settings = ConsoleSettings("127.0.0.1", _free_port(), str(tmp_path / "users"), 1800, 5, 900,
                               str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    svc = ConsoleService(reactor, settings, url, SimpleNamespace(flows={}, tickers={}, leadership=None),
                         Journal(str(tmp_path / "j")))
    svc.startService()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

        def fetch(scheme):
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{settings.port}/login", context=ctx, timeout=20) as r:
                return r.status, r.read().decode()

        def peer_cert():
            import socket
            with socket.create_connection(("127.0.0.1", settings.port), timeout=20) as raw, \
                    ctx.wrap_socket(raw) as s:
                return s.getpeercert(binary_form=True)
        st, page = await deferToThread(fetch, "https")
        assert st == 200 and 'name="password"' in page
        from cryptography import x509
        der = await deferToThread(peer_cert)
        assert x509.load_der_x509_certificate(der).subject == server.subject
        with pytest.raises(Exception):   # noqa: B017  (a reset or a bad status line: no page either way)
            await deferToThread(fetch, "http")
    finally:
        await svc.stopService()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_console_sessions_and_lockouts_survive_a_restart_of_the_real_daemon(reactor, tmp_path):
    """The real gatewayd, restarted: a browser session signed in before the restart is still
    signed in after it, with the same CSRF token in its forms; an account locked by wrong
    passwords before the restart is still locked after it; signing out after the restart ends
    the session. Nothing of the session's cookie is in the database."""
    import http.cookiejar
    import re
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    import sqlalchemy as sa
    from twisted.internet.threads import deferToThread

    from simulators import harness
    from tests.support import install, wait_for

    p, _keys, sims, cfg = await install(reactor, tmp_path, [])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    users = p.conf / "console-users"
    add_user(str(users), "op", "operator", "correct horse", rounds=4)
    add_user(str(users), "view", "viewer", "correct horse", rounds=4)
    with open(cfg, "a") as f:
        f.write(f'\n[console]\nlisten = "127.0.0.1:{port}"\nusers_file = "console-users"\nlockout_after = 3\n')
    base = f"http://127.0.0.1:{port}"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def call(path, data=None):
        try:
            with opener.open(base + path, urllib.parse.urlencode(data).encode() if data is not None else None,
                             timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return None, ""

    def sign_in(user, password):
        _, page = call("/login")
        pre = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        return call("/login", {"csrf": pre, "user": user, "password": password, "next": "/alarms"})

    async def serving():
        return (await deferToThread(call, "/login"))[0] == 200

    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    try:
        await wait_for(reactor, serving, 60, "the console", daemon)
        st, page = await deferToThread(sign_in, "op", "correct horse")
        assert st == 200 and "op (operator)" in page, page[-800:]
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        for _ in range(3):
            st, _ = await deferToThread(sign_in, "view", "wrong password")
        assert st == 401
        assert await daemon.stop_async(reactor) == 0

        daemon = harness.Daemon(cfg, p.log)
        daemon.start()
        await wait_for(reactor, serving, 60, "the console after the restart", daemon)
        st, page = await deferToThread(call, "/alarms")
        assert st == 200 and "op (operator)" in page, page[-800:]
        assert re.search(r'name="csrf" value="([^"]+)"', page).group(1) == token
        st, page = await deferToThread(sign_in, "view", "correct horse")
        assert st == 401 and "locked" in page
        sid = next(c.value for c in jar if c.name == "gwconsole")
        engine = sa.create_engine(f"sqlite:///{p.gateway_db}")
        with engine.connect() as c:
            stored = c.execute(sa.text("SELECT * FROM console_sessions")).all()
        engine.dispose()
        assert len(stored) == 1 and sid not in repr(stored) and token not in repr(stored)
        st, _ = await deferToThread(call, "/logout", {"csrf": token})
        assert st == 200
        st, page = await deferToThread(call, "/alarms")
        assert "op (operator)" not in page and 'id="sign-in"' in page
    finally:
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0, p.log.read_text()[-3000:]


def test_file_lines_are_paged_and_masked():
    """A journaled file's lines come 50 a page after the n-th line, with whether more follow;
    ID and account numbers masked in the lines and the payer's account in the header."""
    from protocols import cnbank_files as files
    header = files.BatchHeader("B1", "O1", "6222020200112233445", "财政局", 120, 120 * 100, "20261208", "耕地补贴")
    made = lambda: (header, iter(files.BatchLine(n, "张三", ID, ACCT, "农商行", 100, "NY2026-01")  # noqa: E731
                                 for n in range(1, 121)))
    first = Q.file_page(made, 0)
    assert [x["seq"] for x in first["lines"]] == list(range(1, 51)) and first["more"]
    third = Q.file_page(made, 100)
    assert [x["seq"] for x in third["lines"]] == list(range(101, 121)) and not third["more"]
    assert ID not in repr(first) + repr(third) and ACCT not in repr(first) + repr(third)
    assert first["lines"][0]["id_no"] == "1101**********8515" and first["header"]["payer_acct"].startswith("6222*")
