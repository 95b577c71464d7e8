"""Console accounts, sign-in, lockout, sessions and CSRF tokens: sans-IO, clock injected.

The users file holds one account a line, `name:role:bcrypt-hash` (never a clear password),
written 0600 by `gatewayctl console add-user`. Sessions live in the daemon's memory: a
restart signs everybody out, which is the safe direction.
"""

from __future__ import annotations

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


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass
class Auth:
    """Accounts checked against bcrypt hashes; lockout and sessions on the injected clock."""

    users: dict[str, Account]
    clock: Callable[[], float]
    session_s: float = 1800.0
    lockout_after: int = 5
    lockout_s: float = 900.0
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, _Failures] = field(default_factory=dict)

    def locked(self, name: str) -> str:
        """Why this account may not sign in now ("" when it may)."""
        f = self.failures.get(name)
        now = self.clock()
        if f is not None and f.locked_until > now:
            return f"账户已锁定 locked: too many wrong passwords; try again in {int(f.locked_until - now) + 1} s"
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
        f = self.failures.setdefault(name, _Failures())
        acct = self.users.get(name)
        if ok is None:
            ok = self.verify(name, password)
        if not ok or acct is None:
            f.count += 1
            if f.count >= self.lockout_after:
                f.count, f.locked_until = 0, now + self.lockout_s
                return None, "账户已锁定 locked: too many wrong passwords"
            return None, "用户名或密码错误 wrong name or password"
        self.failures.pop(name, None)
        s = Session(secrets.token_urlsafe(32), acct.name, acct.role, secrets.token_urlsafe(32), now)
        self.sessions[s.sid] = s
        return s, ""

    def session(self, sid: str | None) -> Session | None:
        """The live session of this cookie (its expiry pushed back), or None."""
        if not sid:
            return None
        s = self.sessions.get(sid)
        now = self.clock()
        if s is None:
            return None
        if now - s.last_seen > self.session_s:
            del self.sessions[sid]
            return None
        s.last_seen = now
        return s

    def sign_out(self, sid: str | None) -> None:
        self.sessions.pop(sid or "", None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
