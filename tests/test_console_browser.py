"""The console in real headless Chromium (Debian's chromium + chromium-driver, through Selenium)
against the real gatewayd after a small demo-like run: one order of 40 items, some failed with
R001 and one of them corrected through the RPC.

Selenium blocks, and the simulators run in this test's reactor: every browser step runs on a
thread (deferToThread) so the bank and the core keep answering the daemon meanwhile. Under
CI=true a missing browser fails the test; elsewhere it skips. About 30-45 s.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from gateway import rpc_client
from gateway.console.auth import add_user
from simulators import harness
from tests.support import install, spec, wait_for

pytestmark = [pytest.mark.loopback, pytest.mark.slow]
ORDER = "CONS0001"
NEW_ACCOUNT = "6228480000000123457"
PASSWORD = "correct horse battery"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ID18 = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])")
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")   # a folder: the main pages are saved there (docs/)


def clear_ids(text: str) -> list[str]:
    """18-digit resident ID numbers in *text*: a birth date in place and the MOD 11-2 check digit
    right (a BankBatchNo of 18 digits is not one)."""
    out = []
    for m in ID18.finditer(text):
        v = m.group(0).upper()
        born = v[6:14]
        if not (born[:2] in ("19", "20") and "01" <= born[4:6] <= "12" and "01" <= born[6:] <= "31"):
            continue
        total = sum(int(c) * w for c, w in zip(v[:17], (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)))
        if "10X98765432"[total % 11] == v[17]:
            out.append(v)
    return out


def _need_browser():
    if CHROMIUM and DRIVER:
        try:
            import selenium  # noqa: F401
            return
        except ImportError:
            pass
    why = "chromium, chromium-driver and selenium are needed (tests/services.sh installs the browser)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless Chromium with a fresh profile; every method blocks (call it on a thread)."""

    def __init__(self, base: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        self.base = base
        self.profile = tempfile.mkdtemp(prefix="console-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                  "--disable-dev-shm-usage", f"--user-data-dir={self.profile}"):
            opts.add_argument(a)
        self.d = webdriver.Chrome(service=Service(DRIVER), options=opts)
        self.d.set_page_load_timeout(30)

    def get(self, path: str) -> str:
        self.d.get(self.base + path)
        return self.d.page_source

    def click(self, el) -> None:
        """Click what loads a new page, and wait until that page has replaced this one (Selenium's
        click does not wait: reading right after it raced the navigation under load)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait
        old = self.d.find_element(By.TAG_NAME, "html")
        el.click()
        WebDriverWait(self.d, 30).until(ec.staleness_of(old))

    def css(self, sel: str):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def text(self, sel: str) -> str:
        return " ".join(e.text for e in self.css(sel))

    def sign_in(self, user: str, password: str = PASSWORD) -> None:
        self.get("/login")
        self.css("#user")[0].send_keys(user)
        self.css("#password")[0].send_keys(password)
        self.click(self.css("#sign-in")[0])
        poll(lambda: f"{user} (" in self.text("header .who"), 15, f"{user} signed in")

    def sign_out(self) -> None:
        self.click(self.css("header form button")[0])
        poll(lambda: self.css("#sign-in"), 15, "the sign-in page after signing out")

    def cookie(self) -> str:
        return self.d.get_cookie("gwconsole")["value"]

    def csrf(self) -> str:
        return self.css("header form input[name=csrf]")[0].get_attribute("value")

    def shot(self, name: str) -> None:
        if SHOTS:
            self.d.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))

    def close(self) -> None:
        self.d.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


def http(base: str, path: str, data: dict | None = None, cookie: str | None = None):
    """One request without a browser (no redirects followed): (status, location, body)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    req = urllib.request.Request(base + path, data=urllib.parse.urlencode(data).encode() if data is not None else None)
    if cookie:
        req.add_header("Cookie", f"gwconsole={cookie}")
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status, r.headers.get("location"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("location"), e.read()


def poll(fn, timeout: float, what: str):
    """Blocking: call fn until truthy (it reloads a page), at most *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


@pytest_twisted.ensureDeferred
async def test_console_in_chromium_against_the_real_daemon(reactor, tmp_path):
    """Sign-in; the overview shows the bank down while its message port is closed and up again
    after; an order is found by number and a failed item's correction history reached (masked,
    with who confirmed and approved); a BP01 entry shows its envelope head and a masked body; the
    log filters by message type; an operator acknowledges an alarm and the acknowledgement is in
    the journal; a viewer sees no reveal or download and is refused when posting one anyway; no
    session or a wrong CSRF token is refused; an auditor's reveal and download need a reason and
    are journaled; no page a viewer sees holds a clear ID number or account number."""
    _need_browser()
    s = spec(ORDER, 40, failures={"R001": 0.15}, seed=11)
    p, keys, sims, cfg = await install(reactor, tmp_path, [s])
    port = _free_port()
    users = p.conf / "console-users"
    for name, role in (("op", "operator"), ("view", "viewer"), ("aud", "auditor")):
        add_user(str(users), name, role, PASSWORD, rounds=4)
    with open(cfg, "a") as f:
        f.write(f'\n[console]\nlisten = "127.0.0.1:{port}"\nusers_file = "console-users"\n')
    with open(p.banks / f"{harness.BANK_ID}.toml", "a") as f:
        f.write("heartbeat_s = 0.5\nlink_alarm_after_s = 1\n")   # [cnbank] is the file's last table
    base = f"http://127.0.0.1:{port}"
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    browser = None
    try:
        async def reported():
            return (await sims.core.summary())["orders"][ORDER]["reported_items"] == s.count
        await wait_for(reactor, reported, 90, "the order's results", daemon)
        failed = sorted(seq for seq, r in (await sims.core.results(ORDER)).items() if r["status"] == "FAILED")
        assert len(failed) >= 2
        fixed = failed[0]
        await deferToThread(rpc_client.call, "item.correct", {
            "order_no": ORDER, "seq": fixed, "account_no": NEW_ACCOUNT, "confirmed_by": "收款人本人",
            "approved_by": "李科长", "approval_ref": "NY[2026]17号"}, unix_path=str(p.rpc_socket))
        import sqlalchemy as sa
        engine = sa.create_engine(f"sqlite:///{p.gateway_db}")
        with engine.connect() as c:
            clear = {v for r in c.execute(sa.text("SELECT id_number, account_no FROM items")) for v in r}
        engine.dispose()
        clear.add(NEW_ACCOUNT)

        browser = await deferToThread(Browser, base)
        b = browser

        # -- no session, wrong CSRF ----------------------------------------------------------
        st, loc, _ = await deferToThread(http, base, "/orders")
        assert st == 303 and loc.startswith("/login")
        st, _, body = await deferToThread(http, base, "/alarms/1/ack", {"comment": "x", "csrf": "x"})
        assert st == 403 and "not signed in" in body.decode()

        # -- operator: sign in, overview, bank down then up ---------------------------------
        def operator_overview():
            b.sign_in("op")
            assert b.d.current_url == base + "/" and "op (operator)" in b.text("header"), b.d.page_source[-1500:]
            assert "主用 active" in b.text("#node-role")
            return poll(lambda: "正常 up" in (b.get("/") and b.text(".link-state")), 20, "the bank link up")
        await deferToThread(operator_overview)
        bank_tcp = sims.bank._ports[0]      # the message port (listen_tcp came first)
        await bank_tcp.stopListening()
        for conn in list(sims.bank._connections):
            conn.transport.abortConnection()

        def seen_down():
            txt = poll(lambda: "中断 down" in (b.get("/") and b.text(".link-state")) and b.text("#links"),
                       20, "the bank link down")
            poll(lambda: "bank-link-down" in (b.get("/alarms") and b.text("#alarms")), 20,
                 "the bank-link-down alarm")
            b.get("/")
            b.shot("overview")
            return txt
        down = await deferToThread(seen_down)
        assert harness.BANK_ID in down and re.search(r"\d{4}-\d\d-\d\dT", down)   # since when, last error at
        sims.bank.listen_tcp(port=sims.ports.bank_tcp)
        await deferToThread(lambda: poll(lambda: "正常 up" in (b.get("/") and b.text(".link-state")), 20,
                                         "the bank link up again"))

        # -- an order, its failed item's correction history ----------------------------------
        def order_and_item():
            b.get("/orders")
            b.css("#q-order")[0].send_keys(ORDER)
            b.click(b.css("#search")[0])
            b.click(b.css(f"#orders a[href='/orders/{ORDER}']")[0])
            assert b.d.current_url == f"{base}/orders/{ORDER}"
            line = b.text("#conservation")
            assert "funded" in line and "不平" not in line and "元" in line, line
            assert ORDER in b.text("#batches") and "已完成 DONE" in b.text("#batches")
            b.shot("order")
            b.click(b.css("#do-query")[0])       # the operator's status query: order.status, the flow woken
            assert "status queried: DISPATCHED" in b.text("#flash"), b.text("main")[:500]
            assert b.d.current_url.startswith(f"{base}/orders/{ORDER}?")
            b.click(b.css(f"#corrections a[href='/orders/{ORDER}/items/{fixed}']")[0])
            hist = b.text("#item-corrections")
            assert "李科长" in hist and "NY[2026]17号" in hist and "收款人本人" in hist, hist
            assert NEW_ACCOUNT not in b.d.page_source and NEW_ACCOUNT[:4] + "*" in hist
            b.shot("item")
            # the failed items, filtered by state (and reason) through the counts' links
            b.get(f"/orders/{ORDER}?status=FAILED&reason=R001")
            # the rows' text in one call: elements looked up one by one went stale once (a run
            # under load), the page being replaced between the lookup and the read
            rows = b.d.execute_script(
                "return Array.from(document.querySelectorAll('#items tr')).slice(1).map(r => r.innerText)")
            assert rows and all("R001" in r and "失败 FAILED" in r for r in rows)
        await deferToThread(order_and_item)

        # -- message log: filter by type, a BP01 entry decoded and masked --------------------
        def journal():
            b.get("/journal")
            b.css("#f-type")[0].send_keys("BP01")
            b.click(b.css("#filter")[0])
            assert "type=BP01" in b.d.current_url
            rows = b.css("#entries tr.entry")
            assert rows and {r.get_attribute("data-tx") for r in rows} == {"BP01"}
            assert re.search(r"entry \d+ [0-9a-f]{64}", b.text("#chain"))
            b.shot("journal")
            out = [r for r in rows if "\nout\n" in f"\n{r.text.replace(' ', chr(10))}\n"]
            b.click((out or rows)[0].find_element("css selector", "a"))
            head = b.text("#envelope-head")
            assert "BP01" in head and "msg_id" in head, head
            body = b.text("#decoded")
            assert body.strip() and not clear_ids(body)
            assert b.text("#verified")
            b.shot("entry")
            # the related batch file's lines, decrypted with the gateway's own key and masked
            bp01 = b.d.current_url
            lines = b.css("#file-lines tr.file-line")
            assert b.css("#file-lines")[0].get_attribute("data-file") == "batch", b.text("main")[:1500]
            count, fails = int(b.text("#batch-count")), int(b.text("#batch-fail-cnt"))
            assert len(lines) == count > 0, (len(lines), count)    # 40 items at most: one page
            table = b.text("#file-lines")
            assert not clear_ids(table) and not [v for v in clear if v and v in b.d.page_source]
            assert ORDER in b.text("#file-header") and "**" in table
            assert "(SM3)" in b.text("#batch-file") and len(b.text("#batch-file-digest")) == 64   # cnbank's digest
            b.d.execute_script("arguments[0].scrollIntoView()", b.css("#links")[0])
            b.shot("entry-file")
            b.click(b.css("#show-result-file")[0])
            assert b.css("#file-lines")[0].get_attribute("data-file") == "result"
            result = [r.text for r in b.css("#file-lines tr.file-line")]
            assert len(result) == count and sum(" F " in f" {r} " for r in result) == fails, result[:3]
            # links: the answer to this BP01, which points back; the batch whose state it moved
            b.get(bp01[len(base):])
            b.click(b.css("#links a.answered-by")[0])
            assert "BP01" in b.text("h1") and b.d.current_url != bp01
            b.click(b.css("#links a.answers")[0])
            assert b.d.current_url == bp01
            change = b.css("#links a.state-change")[0]
            target = change.get_attribute("href")
            assert target.startswith(f"{base}/orders/{ORDER}#batch-{ORDER}"), target
            b.click(change)
            assert b.css(f"tr[id='{target.split('#')[1]}']"), "the order page has no row for the batch"
        await deferToThread(journal)

        # -- alarms: acknowledge one (the link-down episode), see it journaled ---------------
        def ack():
            b.get("/alarms?which=all")
            form = b.css("#alarms .ack form")
            assert form, b.text("#alarms")
            row = form[0].find_element("xpath", "./ancestor::tr")
            alarm_id = row.get_attribute("id").split("-")[1]
            form[0].find_element("css selector", ".ack-comment").send_keys("已电话联系银行 called the bank")
            b.click(form[0].find_element("css selector", ".ack-button"))
            # the answer's page, not the one the click left (read too early once, under load)
            from selenium.webdriver.support.ui import WebDriverWait
            WebDriverWait(b.d, 30).until(lambda d: b.text("#flash"))
            flash = b.text("#flash")
            assert f"#{alarm_id}" in flash and "journal" in flash, b.d.page_source[-1500:]
            assert "op" in b.text(f"#alarm-{alarm_id} .ack") and "called the bank" in b.text(f"#alarm-{alarm_id}")
            b.shot("alarms")
            b.get("/journal?type=console.alarm.ack")
            assert b.css("#entries tr.entry"), "the acknowledgement is not in the journal"
            return b.cookie()
        op_cookie = await deferToThread(ack)
        st, _, body = await deferToThread(http, base, "/alarms/1/ack", {"comment": "x", "csrf": "wrong"}, op_cookie)
        assert st == 403 and "CSRF" in body.decode()
        await deferToThread(b.sign_out)

        # -- viewer: masked everywhere, no reveal or download ---------------------------------
        def viewer():
            b.sign_in("view")
            pages = ["/", "/orders", f"/orders/{ORDER}", f"/orders/{ORDER}?status=FAILED",
                     f"/orders/{ORDER}/items/{fixed}", "/journal", "/journal?type=BP01", "/alarms?which=all"]
            b.get("/journal?type=BP01")
            pages += [a.get_attribute("href")[len(base):] for a in b.css("#entries tr.entry a")[:3]]
            b.get(f"/journal?order={ORDER}")
            pages += [a.get_attribute("href")[len(base):] for a in b.css("#entries tr.entry td:first-child a")[:8]]
            pages += [pages[8] + "?file=batch", pages[8] + "?file=result"]     # a BP01's file lines
            for path in pages:
                html = b.get(path)
                leaked = [v for v in clear if v and v in html]
                assert not leaked and not clear_ids(html), (path, leaked, clear_ids(html))
            b.get(f"/orders/{ORDER}/items/{fixed}")
            assert not b.css("#reveal-form")
            b.get(pages[-1])
            assert not b.css("#download-form")
            return b.cookie(), b.csrf()
        view_cookie, view_csrf = await deferToThread(viewer)
        st, _, body = await deferToThread(http, base, f"/orders/{ORDER}/items/{fixed}/reveal",
                                          {"csrf": view_csrf, "field": "id_number", "reason": "x"}, view_cookie)
        assert st == 403 and "viewer" in body.decode()
        st, _, _ = await deferToThread(http, base, "/journal/1/download", {"csrf": view_csrf, "reason": "x"},
                                       view_cookie)
        assert st == 403
        await deferToThread(b.sign_out)

        # -- auditor: reveal and download need a reason and are journaled ---------------------
        def auditor():
            b.sign_in("aud")
            assert "aud (auditor)" in b.text("header"), b.d.page_source[-800:]
            b.get(f"/orders/{ORDER}/items/{failed[1]}")
            assert b.css("#reveal-reason"), b.d.page_source[-1500:]
            b.css("#reveal-reason")[0].send_keys("核对身份 identity check, ticket 42")
            b.click(b.css("#reveal")[0])
            # the click returns once the POST is sent, not always once its answer has loaded
            shown = poll(lambda: b.text("#revealed"), 15, "the revealed value")
            assert clear_ids(shown), shown
            b.get("/journal?type=console.reveal")
            return b.cookie(), b.csrf(), len(b.css("#entries tr.entry"))
        aud_cookie, aud_csrf, reveals = await deferToThread(auditor)
        assert reveals == 1
        st, _, _ = await deferToThread(http, base, "/journal/1/download", {"csrf": aud_csrf, "reason": ""}, aud_cookie)
        assert st == 400
        st, _, raw = await deferToThread(http, base, "/journal/2/download", {"csrf": aud_csrf, "reason": "audit 42"},
                                         aud_cookie)
        assert st == 200 and raw
        downloads = await deferToThread(lambda: b.get("/journal?type=console.download") and
                                        len(b.css("#entries tr.entry")))
        assert downloads == 1
    finally:
        if browser is not None:
            await deferToThread(browser.close)
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0, p.log.read_text()[-3000:]
