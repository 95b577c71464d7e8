"""The console's twisted.web resource: routing, sign-in, CSRF, roles, rendering (Jinja2).

Every page renders on the server from gateway/console/queries.py, on the console's own
database thread pool (never the flows' one): a slow page never holds a bank step up.
Every form carries the session's CSRF token and every POST is checked against it; a
request without a live session is sent to the sign-in page (GET) or refused (POST).
A standby daemon serves every page but refuses every action (read-only, said in the header).
"""

from __future__ import annotations

import json
import re
import secrets
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import resource, server, static

from gateway.console import queries as Q
from gateway.console.auth import Auth, Session
from gateway.journal import Entry
from gateway.masking import mask_text
from gateway.rpc_api import Caller, RpcError
from protocols.chinatime import CST, iso as _cst_iso

log = Logger()
COOKIE, PRE_COOKIE = b"gwconsole", b"gwconsole_pre"
_TX = re.compile(r"[A-Za-z0-9._-]{1,35}")

STATE_ZH = {"FUNDED": "已拨款", "LOADING": "加载中", "INVALID": "无效", "LOADED": "已加载", "DISPATCHED": "已发送",
            "SETTLED": "已结清", "PENDING": "待发", "SENT": "已发", "PAID": "已付", "FAILED": "失败",
            "CORRECTED": "已更正", "REFUND_PENDING": "退款中", "REFUNDED": "已退款", "BUILDING": "生成中",
            "BUILT": "已生成", "UPLOADED": "已上传", "SUBMITTING": "提交中", "ACCEPTED": "已受理",
            "REFUSED": "已拒绝", "DONE": "已完成", "RJCT": "整批退回", "up": "正常", "degraded": "不稳",
            "down": "中断", "unknown": "未知", "critical": "严重", "warning": "警告",
            "active": "主用", "standby": "备用"}


def _iso(ts: float | None) -> str:
    return _cst_iso(ts) or "-"


class Forbidden(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Console(resource.Resource):
    isLeaf = True

    def __init__(self, reactor, auth: Auth, database, gateway, journal, journal_key=None, *,
                 secure_cookies: bool = False):
        super().__init__()
        self.reactor, self.auth, self.db, self.gw, self.journal = reactor, auth, database, gateway, journal
        self.journal_key = journal_key
        self.secure = secure_cookies
        self.env = Environment(loader=PackageLoader("gateway.console", "templates"),
                               autoescape=select_autoescape(default=True))
        self.env.filters["yuan"] = Q.yuan
        self.env.filters["m"] = lambda v: mask_text(str(v)) if v is not None else ""
        self.env.filters["zh"] = lambda s: f"{STATE_ZH.get(s, '')} {s}".strip() if s else "-"
        self.env.globals["qs"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")})
        self.static = static.File(str(__import__("pathlib").Path(__file__).parent / "static"))
        self.links: dict[str, tuple[str, float]] = {}   # bank -> (state, since): what the overview last saw
        self.counts: dict[str, tuple[float, str, list]] = {}   # order -> (counted at, its updated_at, groups)
        self.count_ttl_s = 30.0

    # -- plumbing -------------------------------------------------------------------------------
    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/static/"):
            request.postpath = [p for p in path[len("/static/"):].split("/") if p]
            child = self.static
            for seg in request.postpath[:-1]:
                child = child.getChild(seg.encode(), request)
            child = child.getChild(request.postpath[-1].encode(), request) if request.postpath else child
            return child.render(request)
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                          b"frame-ancestors 'none'")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-store")
        d = defer.ensureDeferred(self._dispatch(request, path))
        d.addErrback(self._failed, request)
        d.addCallback(self._write, request)
        return server.NOT_DONE_YET

    def _failed(self, f, request):
        if f.check(Forbidden):
            request.setResponseCode(f.value.code)
            return self._page(request, "error.html", None, code=f.value.code, message=str(f.value))
        log.failure("console page {path}", f, path=request.path)
        request.setResponseCode(500)
        return "<h1>500 内部错误 internal error</h1>"

    def _write(self, body, request):
        if body is None:
            request.finish()
            return
        if isinstance(body, str):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            body = body.encode("utf-8")
        request.write(body)
        request.finish()

    def _arg(self, request, name: str, max_len: int = 100) -> str:
        v = request.args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()
        return v[:max_len]

    def _redirect(self, request, to: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", to.encode())
        return b""

    def _cookie(self, request, name: bytes, value: str, max_age: int | None = None) -> None:
        request.addCookie(name, value.encode(), path=b"/", httpOnly=True, secure=self.secure,
                          sameSite=b"strict", max_age=str(max_age).encode() if max_age is not None else None)

    @property
    def active(self) -> bool:
        lead = getattr(self.gw, "leadership", None)
        return True if lead is None else bool(lead.active)

    def _page(self, request, template: str, s: Session | None, **ctx) -> str:
        return self.env.get_template(template).render(
            user=s.user if s else None, role=s.role if s else None, csrf=s.csrf if s else "",
            active=self.active, path=request.path.decode("utf-8", "replace"), **ctx)

    def _read(self, fn, *args):
        def work():
            with self.db.engine.connect() as conn:
                return fn(conn, *args)
        return self.db.run_plain(work)

    def _now_iso(self) -> str:
        return _iso(self.reactor.seconds())

    def _today(self) -> str:
        return datetime.fromtimestamp(self.reactor.seconds(), CST).strftime("%Y-%m-%d")

    # -- routing --------------------------------------------------------------------------------
    async def _dispatch(self, request, path: str):
        method = request.method.decode()
        if path == "/favicon.ico":
            raise Forbidden(404, "no icon")
        if path == "/login":
            return await (self._login_post(request) if method == "POST" else self._login_get(request))
        cookie = request.getCookie(COOKIE)
        s = await self.db.run_plain(self.auth.session, cookie.decode("ascii", "replace") if cookie else None)
        if s is None:
            if method == "POST":
                raise Forbidden(403, "未登录 not signed in: sign in first")
            return self._redirect(request, "/login?" + urlencode({"next": request.uri.decode("utf-8", "replace")}))
        if method == "POST":
            if not self.auth.csrf_ok(s, self._arg(request, "csrf", 200)):
                raise Forbidden(403, "CSRF 令牌无效 the form's CSRF token is missing or wrong")
            if path == "/logout":
                await self.db.run_plain(self.auth.sign_out, s.sid)
                self._cookie(request, COOKIE, "", 0)
                return self._redirect(request, "/login")
            if not self.active:
                raise Forbidden(409, "备用节点只读 this daemon is a standby: the console is read-only here")
            return await self._post(request, path, s)
        if method not in ("GET", "HEAD"):
            raise Forbidden(405, f"{method} not allowed")
        return await self._get(request, path, s)

    async def _get(self, request, path: str, s: Session):
        parts = [p for p in path.split("/") if p]
        if not parts:
            return await self.overview(request, s)
        if parts == ["orders"]:
            return await self.orders(request, s)
        if len(parts) == 2 and parts[0] == "orders":
            return await self.order(request, s, parts[1])
        if len(parts) == 4 and parts[0] == "orders" and parts[2] == "items" and parts[3].isdigit():
            return await self.item(request, s, parts[1], int(parts[3]))
        if parts == ["journal"]:
            return await self.journal_list(request, s)
        if len(parts) == 2 and parts[0] == "journal" and parts[1].isdigit():
            return await self.entry(request, s, int(parts[1]))
        if parts == ["alarms"]:
            return await self.alarms(request, s)
        raise Forbidden(404, "没有这个页面 no such page")

    async def _post(self, request, path: str, s: Session):
        parts = [p for p in path.split("/") if p]
        if len(parts) == 3 and parts[0] == "alarms" and parts[2] == "ack" and parts[1].isdigit():
            return await self.ack(request, s, int(parts[1]))
        if len(parts) == 3 and parts[0] == "orders" and parts[2] in ("retry", "query"):
            return await self.order_action(request, s, parts[1], parts[2])
        if len(parts) == 5 and parts[0] == "orders" and parts[2] == "items" and parts[4] == "reveal" \
                and parts[3].isdigit():
            return await self.reveal(request, s, parts[1], int(parts[3]))
        if len(parts) == 3 and parts[0] == "journal" and parts[2] == "download" and parts[1].isdigit():
            return await self.download(request, s, int(parts[1]))
        raise Forbidden(404, "没有这个操作 no such action")

    # -- sign-in --------------------------------------------------------------------------------
    async def _login_get(self, request, message: str = ""):
        # One pre-sign-in token per browser: kept while the cookie lasts, so a second tab (or
        # the browser's own /favicon.ico fetch) does not void the form already shown.
        pre = (request.getCookie(PRE_COOKIE) or b"").decode()
        if not re.fullmatch(r"[A-Za-z0-9_-]{32}", pre):
            pre = secrets.token_urlsafe(24)
            self._cookie(request, PRE_COOKIE, pre)
        nxt = self._arg(request, "next", 500)
        return self._page(request, "login.html", None, pre=pre, message=message,
                          next=nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")

    async def _login_post(self, request):
        pre_cookie = (request.getCookie(PRE_COOKIE) or b"").decode()
        if not pre_cookie or not self.auth.csrf_ok(Session("", "", "", pre_cookie, 0), self._arg(request, "csrf", 200)):
            raise Forbidden(403, "CSRF 令牌无效 the sign-in form's CSRF token is missing or wrong")
        name, password = self._arg(request, "user", 64), self._arg(request, "password", 200)
        why = await self.db.run_plain(self.auth.locked, name)
        if not why:
            ok = await threads.deferToThread(self.auth.verify, name, password)
            s, why = await self.db.run_plain(self.auth.sign_in, name, password, ok)
            if s is not None:
                self._cookie(request, COOKIE, s.sid)
                log.info("console: {user} ({role}) signed in", user=s.user, role=s.role)
                nxt = self._arg(request, "next", 500)
                return self._redirect(request, nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")
        log.warn("console: sign-in refused for {user}: {why}", user=name, why=why)
        request.setResponseCode(401)
        return await self._login_get(request, why)

    # -- pages ----------------------------------------------------------------------------------
    def _links(self) -> list[dict]:
        now = self.reactor.seconds()
        out = []
        for bank_id, flow in sorted(getattr(self.gw, "flows", {}).items()):
            adapter = getattr(flow, "adapter", None)
            ticker = self.gw.tickers.get(bank_id) if hasattr(self.gw, "tickers") else None
            ls = adapter.link_state() if hasattr(adapter, "link_state") else None
            error, error_at = "", None
            if ticker is not None and not ticker.running:
                state = "unknown"
                error = "本节点不运行该银行流程 this daemon does not run this bank's flow (standby)"
            elif ls is None:
                state = "unknown"
            else:
                error, error_at = ls.get("last_error") or "", ls.get("last_error_at")
                dialect = getattr(flow.bank, "cnbank", None) or getattr(flow.bank, "settings", None)
                after = getattr(dialect, "link_alarm_after_s", 300.0)   # cnbank and iso20022 alike
                if ls.get("failures", 0) == 0:
                    state = "up" if ls.get("last_ok_at") else "unknown"
                elif ls.get("failures", 0) >= 3 or now - (ls.get("failing_since") or now) >= after:
                    state = "down"
                else:
                    state = "degraded"
            prev = self.links.get(bank_id)
            if prev is not None and prev[0] == state:
                since = prev[1]
            elif state in ("down", "degraded"):
                since = (ls or {}).get("failing_since") or now
            else:
                since = now          # up (or unknown) since this console first saw it so
            self.links[bank_id] = (state, since)
            out.append({"bank_id": bank_id, "name": getattr(flow.bank, "name", ""), "state": state,
                        "since": _iso(since), "last_error": mask_text(error)[:300], "last_error_at": _iso(error_at),
                        "last_ok_at": _iso((ls or {}).get("last_ok_at"))})
        return out

    async def overview(self, request, s):
        data = await self._read(Q.overview, self._today())
        lead = getattr(self.gw, "leadership", None)
        role = lead.status() if lead is not None else {"role": "active", "since": None, "leases": {}}
        return self._page(request, "overview.html", s, links=self._links(), role_status=role, today=self._today(),
                          **data)

    async def orders(self, request, s):
        f = {k: self._arg(request, k, 64) for k in ("order_no", "bank", "project", "state", "funded")}
        after = self._arg(request, "after", 64) or None
        rows = await self._read(Q.search_orders, f, after)
        return self._page(request, "orders.html", s, f=f, rows=rows, page=Q.PAGE,
                          banks=sorted(getattr(self.gw, "flows", {})), states=list(STATE_ZH)[:6])

    async def order(self, request, s, order_no: str):
        status, reason = self._arg(request, "status", 16), self._arg(request, "reason", 8)
        after = int(self._arg(request, "after", 12) or 0) if self._arg(request, "after", 12).isdigit() else 0

        def groups_of(conn, o):
            # The grouped count reads ix_items_order_counts alone (about 150 ms for a million
            # items, bench/console_pages.py); kept count_ttl_s seconds while the order's row is
            # unchanged so a reload costs nothing, and the page says when it was counted.
            hit = self.counts.get(order_no)
            now = self.reactor.seconds()
            if hit is not None and hit[1] == o["updated_at"] and now - hit[0] < self.count_ttl_s:
                return hit[2]
            groups = Q.item_groups(conn, order_no)
            self.counts[order_no] = (now, o["updated_at"], groups)
            if len(self.counts) > 200:
                self.counts.pop(next(iter(self.counts)))
            return groups

        def read(conn):
            page = Q.order_page(conn, order_no, groups_of)
            if page is not None:
                page["counted_at"] = _iso(self.counts[order_no][0]) if order_no in self.counts else None
                page["items"] = Q.order_items(conn, order_no, status or None, reason or None, after)
            return page
        page = await self._read(read)
        if page is None:
            raise Forbidden(404, f"没有这个发放单 no order {order_no}")
        flash = self._arg(request, "done", 300)
        return self._page(request, "order.html", s, status=status, reason=reason, after=after, flash=flash,
                          page_size=Q.PAGE, **page)

    async def item(self, request, s, order_no: str, seq: int):
        page = await self._read(Q.item_page, order_no, seq)
        if page is None:
            raise Forbidden(404, f"没有这个明细 no item {order_no}/{seq}")
        return self._page(request, "item.html", s, order_no=order_no, seq=seq, revealed=None, **page)

    async def journal_list(self, request, s):
        f = {k: self._arg(request, k, 64) for k in ("bank", "order", "batch", "type", "direction", "since",
                                                     "until", "verified")}
        before = int(self._arg(request, "before", 12)) if self._arg(request, "before", 12).isdigit() else None

        def read(conn):
            return Q.search_journal(conn, f, before), Q.chain_status(conn, self.journal_key)
        rows, chain = await self._read(read)
        return self._page(request, "journal.html", s, f=f, rows=rows, chain=chain, page=Q.PAGE,
                          types=["BP01", "BQ01", "RF01", "RQ01", "DP01", "pain.001", "pain.002", "camt.054"])

    async def entry(self, request, s, entry_id: int):
        def read(conn):
            e = Q.journal_entry(conn, entry_id)
            if e is None:
                return None
            batch = None
            if e["batch_no"]:
                batch = conn.execute(Q.select(Q.batches).where(Q.batches.c.batch_no == e["batch_no"])
                                     ).mappings().first()
                batch = dict(batch) if batch else None
            answers, answered_by = Q.answer_of(conn, e)
            return {"e": e, "chain": Q.chain_status(conn, self.journal_key), "batch": batch,
                    "files": Q.related_files(conn, e, batch), "answers": answers, "answered_by": answered_by,
                    "caused": Q.caused(conn, entry_id)}
        page = await self._read(read)
        if page is None:
            raise Forbidden(404, f"没有这条报文 no journal entry {entry_id}")
        e = page["e"]
        head = None
        raw = e.pop("payload", None)
        if e["channel"] == "tcp" and raw:
            try:
                from protocols.cnbank_envelope import peek_head
                h = peek_head(raw)
                head = {k: mask_text(str(v)) for k, v in vars(h).items()}
            except Exception as ex:  # noqa: BLE001  (a page shows what it cannot decode)
                head = {"error": mask_text(str(ex))[:300]}
        decoded = e["decoded"] or ""
        try:
            decoded = json.dumps(json.loads(decoded), ensure_ascii=False, indent=2)
        except ValueError:
            pass
        decoded = mask_text(decoded)
        files = page["files"]
        which = self._arg(request, "file", 8)
        if which not in ("batch", "result"):
            which = "result" if files.get("result") and files["result"]["id"] == entry_id else "batch"
        after = int(self._arg(request, "lines_after", 9)) if self._arg(request, "lines_after", 9).isdigit() else 0
        lines = await self._file_lines(e, page["batch"], files, which, after) if files.get(which) else None
        return self._page(request, "entry.html", s, head=head, decoded=decoded, which=which, lines=lines, **page)

    async def _file_lines(self, e: dict, batch: dict, files: dict, which: str, after: int) -> dict:
        """One masked page of the batch's own file or its result file, opened with the keys
        the daemon holds for that bank (its adapter's audit_read); {"error": why} when it cannot.
        Not journaled: it shows no more than the order's masked items do."""
        adapter = getattr(getattr(self.gw, "flows", {}).get(e["peer"]), "adapter", None)
        if not hasattr(adapter, "audit_read"):
            return {"error": f"本节点不能打开 {e['peer']} 的文件 this daemon holds no file keys for bank "
                             f"{e['peer']} (not a cnbank bank configured here)"}
        f = files[which]
        if which == "batch" and not files.get("key_id"):
            return {"error": "没有网关自留密钥 no key of the gateway's own was journaled for this batch file "
                             "(built before the gateway kept one): only the bank can open it"}

        def work():
            with self.db.engine.connect() as conn:
                row = conn.execute(Q.select(Q.journal).where(Q.journal.c.id == f["id"])).first()
                key = batch["result_enc_key"]
                if which == "batch":
                    key = self.journal.payload_of(conn.execute(Q.select(Q.journal).where(
                        Q.journal.c.id == files["key_id"])).first())
            cipher = self.journal.payload_of(row)
            return Q.file_page(lambda: adapter.audit_read(which, cipher, key), after)
        try:
            return await self.db.run_plain(work)
        except Exception as ex:  # noqa: BLE001  (a file that cannot be opened is shown as such)
            log.warn("console: cannot open {which} file of journal entry {id}: {why}", which=which, id=f["id"],
                     why=mask_text(str(ex)))
            return {"error": f"文件无法打开 the file cannot be opened: {type(ex).__name__}: {mask_text(str(ex))[:300]}"}

    async def alarms(self, request, s):
        which = "all" if self._arg(request, "which", 8) == "all" else "open"
        before = int(self._arg(request, "before", 12)) if self._arg(request, "before", 12).isdigit() else None
        rows = await self._read(Q.alarm_list, which, before)
        return self._page(request, "alarms.html", s, rows=rows, which=which, page=Q.PAGE,
                          flash=self._arg(request, "done", 300))

    # -- actions --------------------------------------------------------------------------------
    def _need(self, s: Session, *roles: str) -> None:
        if s.role not in roles:
            raise Forbidden(403, f"权限不足 {s.role} may not do this (needs {' or '.join(roles)})")

    def _journal_event(self, conn, s: Session, tx: str, decoded: str, **kw) -> int:
        payload = json.dumps({"user": s.user, "role": s.role, "action": tx, **kw}, ensure_ascii=False).encode()
        return self.journal.append(conn, Entry("event", f"console:{s.user}"[:64], "console", tx, decoded,
                                               payload=payload, order_no=kw.get("order_no"),
                                               batch_no=kw.get("batch_no")), self._now_iso())

    async def ack(self, request, s, alarm_id: int):
        self._need(s, "operator")
        comment = self._arg(request, "comment", 500)
        if not comment:
            raise Forbidden(400, "请填写说明 a comment is required to acknowledge an alarm")
        from gateway.alarms import acknowledge_alarm

        def write(conn):
            a = Q.alarm(conn, alarm_id)
            if a is None:
                return None
            acknowledge_alarm(conn, self._now_iso(), alarm_id, s.user, comment)
            return self._journal_event(conn, s, "console.alarm.ack",
                                       f"{s.user} acknowledged alarm #{alarm_id} ({a['kind']}): {mask_text(comment)}",
                                       alarm_id=alarm_id, comment=comment, order_no=a["order_no"],
                                       batch_no=a["batch_no"])
        jid = await self.db.run(write)
        if jid is None:
            raise Forbidden(404, f"没有这个告警 no alarm {alarm_id}")
        return self._redirect(request, "/alarms?" + urlencode({"which": "all", "done": f"已确认 acknowledged "
                                                                f"#{alarm_id} (journal {jid})"}))

    async def order_action(self, request, s, order_no: str, what: str):
        self._need(s, "operator")
        commands = getattr(self.gw, "commands", None)
        method = "order.retry" if what == "retry" else "order.status"
        try:
            result = await commands.call(method, {"order_no": order_no}, Caller("console", s.user))
        except RpcError as e:
            raise Forbidden(409, f"{method}: {e.message}") from None
        if what == "query":
            bank = (await self._read(lambda c: c.execute(Q.select(Q.orders.c.bank_id)
                                                         .where(Q.orders.c.order_no == order_no)).scalar()))
            if bank:
                self.gw.kick(bank)   # the flow asks the bank about the order's batches now
            done = f"已查询 status queried: {result.get('state', '')}"
        else:
            done = f"已请求重发 retry requested: {json.dumps(result, ensure_ascii=False)[:200]}"
        return self._redirect(request, f"/orders/{quote(order_no)}?" + urlencode({"done": mask_text(done)}))

    async def reveal(self, request, s, order_no: str, seq: int):
        self._need(s, "auditor")
        field_, reason = self._arg(request, "field", 16), self._arg(request, "reason", 500)
        if field_ not in ("id_number", "account_no"):
            raise Forbidden(400, "field: id_number or account_no")
        if not reason:
            raise Forbidden(400, "请填写原因 a reason is required to reveal a clear value")

        def write(conn):
            value = Q.clear_item_field(conn, order_no, seq, field_)
            if value is None:
                return None, None
            jid = self._journal_event(conn, s, "console.reveal",
                                      f"{s.user} revealed {field_} of {order_no}/{seq}: {mask_text(reason)}",
                                      order_no=order_no, seq=seq, field=field_, reason=reason)
            return value, jid
        value, jid = await self.db.run(write)
        if value is None:
            raise Forbidden(404, f"没有这个明细 no item {order_no}/{seq}")
        page = await self._read(Q.item_page, order_no, seq)
        log.info("console: {user} revealed {field} of {order}/{seq} (journal {jid})", user=s.user, field=field_,
                 order=order_no, seq=seq, jid=jid)
        return self._page(request, "item.html", s, order_no=order_no, seq=seq,
                          revealed={"field": field_, "value": value, "journal_id": jid}, **page)

    async def download(self, request, s, entry_id: int):
        self._need(s, "auditor")
        reason = self._arg(request, "reason", 500)
        if not reason:
            raise Forbidden(400, "请填写原因 a reason is required to download a raw payload")

        def write(conn):
            e = Q.journal_entry(conn, entry_id)
            if e is None:
                return None, None
            jid = self._journal_event(conn, s, "console.download",
                                      f"{s.user} downloaded the raw payload of journal entry {entry_id}: "
                                      f"{mask_text(reason)}", entry_id=entry_id, reason=reason,
                                      order_no=e["order_no"], batch_no=e["batch_no"])
            return e, jid
        e, jid = await self.db.run(write)
        if e is None:
            raise Forbidden(404, f"没有这条报文 no journal entry {entry_id}")
        raw = await self.db.run_plain(self.journal.payload_of, SimpleNamespace(**e))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-disposition", f'attachment; filename="journal-{entry_id}.bin"'.encode())
        return raw
