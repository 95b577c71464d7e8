"""Console accounts, sign-in, lockout, sessions and CSRF tokens, on an injected clock.

The users file holds one account a line, `name:role:bcrypt-hash` (never a clear password),
written 0600 by `gatewayctl console add-user`. Sessions and wrong-password counters live in
a store: the daemon's is the database (DbStore: tables console_sessions and console_lockouts),
so a restart or a second daemon (a standby serving read-only) keeps everyone signed in and
keeps a locked account locked. A session is stored by the SHA-256 of its id only, and its
CSRF token is derived from the id: what the database holds opens no session.
MemoryStore is the same store in a dict, for tools and tests without a database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable

import bcrypt

from gateway.console import ROLES  # noqa: F401  (re-exported)

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class UsersFileError(Exception):
    pass


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    hash: bytes


def hash_password(password: str, rounds: int = 12) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds))


def read_users(path: str) -> dict[str, Account]:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise UsersFileError(f"cannot read {path}: {e.strerror}") from None
    users: dict[str, Account] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not _NAME.fullmatch(parts[0]) or parts[1] not in ROLES \
                or not parts[2].startswith(("$2a$", "$2b$", "$2y$")):
            raise UsersFileError(f"{path}:{n}: expected name:role:bcrypt-hash (role one of {', '.join(ROLES)})")
        users[parts[0]] = Account(parts[0], parts[1], parts[2].encode())
    return users


def add_user(path: str, name: str, role: str, password: str, rounds: int = 12) -> None:
    """Add or replace an account; the file is (re)written 0600."""
    if not _NAME.fullmatch(name):
        raise UsersFileError(f"user name {name!r}: letters, digits, '.', '_' and '-' only (1-64)")
    if role not in ROLES:
        raise UsersFileError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise UsersFileError("the password must be at least 8 characters")
    users = read_users(path) if os.path.exists(path) else {}
    users[name] = Account(name, role, hash_password(password, rounds))
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# gateway console accounts: name:role:bcrypt-hash (gatewayctl console add-user)\n")
        for a in users.values():
            f.write(f"{a.name}:{a.role}:{a.hash.decode()}\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


_DUMMY = bcrypt.hashpw(b"not a password", bcrypt.gensalt(4))


@dataclass
class Session:
    sid: str
    user: str
    role: str
    csrf: str
    last_seen: float


def sid_hash(sid: str) -> str:
    """What a store keeps of a session id."""
    return hashlib.sha256(b"gwconsole-sid\0" + sid.encode()).hexdigest()


def csrf_of(sid: str) -> str:
    """The session's CSRF token: derived from its id (never stored), useless without it."""
    return hmac.new(sid.encode(), b"gwconsole-csrf", hashlib.sha256).hexdigest()


@dataclass
class StoredSession:
    user: str
    role: str
    signed_in_at: float
    last_seen: float


class MemoryStore:
    """Sessions and lockouts in this process's memory (a restart forgets them)."""

    def __init__(self):
        self.sessions: dict[str, StoredSession] = {}
        self.lockouts: dict[str, tuple[int, float]] = {}

    def lockout(self, name: str) -> tuple[int, float]:
        return self.lockouts.get(name, (0, 0.0))

    def set_lockout(self, name: str, failures: int, locked_until: float) -> None:
        if failures == 0 and locked_until == 0.0:
            self.lockouts.pop(name, None)
        else:
            self.lockouts[name] = (failures, locked_until)

    def add_session(self, h: str, s: StoredSession, expired_before: float) -> None:
        for k in [k for k, v in self.sessions.items() if v.last_seen < expired_before]:
            del self.sessions[k]
        self.sessions[h] = s

    def get_session(self, h: str) -> StoredSession | None:
        s = self.sessions.get(h)
        return None if s is None else StoredSession(s.user, s.role, s.signed_in_at, s.last_seen)

    def touch_session(self, h: str, now: float) -> None:
        if h in self.sessions:
            self.sessions[h].last_seen = now

    def drop_session(self, h: str) -> None:
        self.sessions.pop(h, None)


class DbStore:
    """Sessions and lockouts in the gateway's database (migration 0018); every call is one
    short transaction and blocks: call the Auth methods off the reactor thread."""

    def __init__(self, engine):
        self.engine = engine

    def lockout(self, name: str) -> tuple[int, float]:
        from sqlalchemy import select

        from gateway.models import console_lockouts as t
        with self.engine.connect() as c:
            r = c.execute(select(t.c.failures, t.c.locked_until).where(t.c.user_name == name)).first()
        return (int(r.failures), float(r.locked_until)) if r else (0, 0.0)

    def set_lockout(self, name: str, failures: int, locked_until: float) -> None:
        from sqlalchemy import delete, insert, update

        from gateway.models import console_lockouts as t
        with self.engine.begin() as c:
            if failures == 0 and locked_until == 0.0:
                c.execute(delete(t).where(t.c.user_name == name))
            elif c.execute(update(t).where(t.c.user_name == name).values(
                    failures=failures, locked_until=locked_until)).rowcount == 0:
                c.execute(insert(t).values(user_name=name, failures=failures, locked_until=locked_until))

    def add_session(self, h: str, s: StoredSession, expired_before: float) -> None:
        from sqlalchemy import delete, insert

        from gateway.models import console_sessions as t
        with self.engine.begin() as c:
            c.execute(delete(t).where(t.c.last_seen < expired_before))
            c.execute(insert(t).values(sid_hash=h, user_name=s.user, role=s.role, signed_in_at=s.signed_in_at,
                                       last_seen=s.last_seen))

    def get_session(self, h: str) -> StoredSession | None:
        from sqlalchemy import select

        from gateway.models import console_sessions as t
        with self.engine.connect() as c:
            r = c.execute(select(t.c.user_name, t.c.role, t.c.signed_in_at, t.c.last_seen)
                          .where(t.c.sid_hash == h)).first()
        return StoredSession(r.user_name, r.role, float(r.signed_in_at), float(r.last_seen)) if r else None

    def touch_session(self, h: str, now: float) -> None:
        from sqlalchemy import update

        from gateway.models import console_sessions as t
        with self.engine.begin() as c:
            c.execute(update(t).where(t.c.sid_hash == h).values(last_seen=now))

    def drop_session(self, h: str) -> None:
        from sqlalchemy import delete

        from gateway.models import console_sessions as t
        with self.engine.begin() as c:
            c.execute(delete(t).where(t.c.sid_hash == h))


@dataclass
class Auth:
    """Accounts checked against bcrypt hashes; lockout and sessions in *store*, on the injected
    clock. With a DbStore every method but csrf_ok touches the database: run them on a thread."""

    users: dict[str, Account]
    clock: Callable[[], float]
    session_s: float = 1800.0
    lockout_after: int = 5
    lockout_s: float = 900.0
    store: MemoryStore | DbStore = field(default_factory=MemoryStore)
    # A session's last_seen is written at most this often (a page view is not a write each time).
    touch_every_s: float = 30.0

    def locked(self, name: str) -> str:
        """Why this account may not sign in now ("" when it may)."""
        _, until = self.store.lockout(name)
        now = self.clock()
        if until > now:
            return f"账户已锁定 locked: too many wrong passwords; try again in {int(until - now) + 1} s"
        return ""

    def verify(self, name: str, password: str) -> bool:
        """The bcrypt check alone (slow by design: run it off the reactor thread)."""
        acct = self.users.get(name)
        if acct is None:
            bcrypt.checkpw(password.encode(), _DUMMY)   # the same time for an unknown name
            return False
        return bcrypt.checkpw(password.encode(), acct.hash)

    def sign_in(self, name: str, password: str, ok: bool | None = None) -> tuple[Session | None, str]:
        """A new session, or None and why (the same words for an unknown name and a wrong password).
        *ok* is verify()'s answer when the caller ran it on a thread."""
        why = self.locked(name)
        if why:
            return None, why
        now = self.clock()
        acct = self.users.get(name)
        if ok is None:
            ok = self.verify(name, password)
        if not ok or acct is None:
            count, _ = self.store.lockout(name)
            count += 1
            if count >= self.lockout_after:
                self.store.set_lockout(name, 0, now + self.lockout_s)
                return None, "账户已锁定 locked: too many wrong passwords"
            self.store.set_lockout(name, count, 0.0)
            return None, "用户名或密码错误 wrong name or password"
        self.store.set_lockout(name, 0, 0.0)
        sid = secrets.token_urlsafe(32)
        self.store.add_session(sid_hash(sid), StoredSession(acct.name, acct.role, now, now), now - self.session_s)
        return Session(sid, acct.name, acct.role, csrf_of(sid), now), ""

    def session(self, sid: str | None) -> Session | None:
        """The live session of this cookie (its expiry pushed back), or None. An account
        removed from the users file, or given another role, ends its sessions."""
        if not sid or len(sid) > 200:
            return None
        h = sid_hash(sid)
        st = self.store.get_session(h)
        now = self.clock()
        if st is None:
            return None
        acct = self.users.get(st.user)
        if now - st.last_seen > self.session_s or acct is None or acct.role != st.role:
            self.store.drop_session(h)
            return None
        if now - st.last_seen >= self.touch_every_s:
            self.store.touch_session(h, now)
        return Session(sid, st.user, st.role, csrf_of(sid), now)

    def sign_out(self, sid: str | None) -> None:
        if sid:
            self.store.drop_session(sid_hash(sid))

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
