"""The journal's HMAC-SM3 key: reading it (mode 0600, 64 hex digits), generating it, using it.

Apart from gateway.journal so that loading the configuration (which reads the key)
needs neither SQLAlchemy nor cryptography until a MAC is computed.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import stat

KEY_BYTES = 32


class JournalKeyError(Exception):
    """The journal key file is missing, unsafe or malformed, or does not fit the journal."""


def _hmac_sm3(key: bytes, data: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as chmac
    h = chmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h.finalize().hex()


class JournalKey:
    """The journal's HMAC-SM3 key; its repr never shows it.

    Entry MACs and head-file MACs are computed under distinct labels, so a MAC of
    one kind can never be passed off as the other.
    """

    __slots__ = ("_key", "source")

    def __init__(self, key: bytes, source: str = ""):
        if len(key) < 16:
            raise JournalKeyError(f"{source or 'journal key'}: a journal key has at least 128 bits")
        object.__setattr__(self, "_key", bytes(key))
        object.__setattr__(self, "source", source)

    def __setattr__(self, name, value):  # noqa: ANN001
        raise AttributeError("JournalKey is immutable")

    def __repr__(self) -> str:
        return f"JournalKey(<redacted>, source={self.source!r})"

    __str__ = __repr__

    def entry_mac(self, entry_hash: str) -> str:
        return _hmac_sm3(self._key, b"subsidy-gateway journal entry\x00" + entry_hash.encode("ascii"))

    def entry_mac_ok(self, entry_hash: str, mac: str | None) -> bool:
        return mac is not None and hmac.compare_digest(self.entry_mac(entry_hash), mac)

    def head_mac(self, at: str, last_id: int, head_hash: str, keyed_from: int | None) -> str:
        body = json.dumps([at, last_id, head_hash, keyed_from], separators=(",", ":"))
        return _hmac_sm3(self._key, b"subsidy-gateway journal head\x00" + body.encode("ascii"))


def generate_key_file(path: str | os.PathLike) -> None:
    """Write a new random 256-bit journal key as one line of hex, mode 0600; never overwrites."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise JournalKeyError(f"{path} already exists: a journal key is never overwritten "
                              "(entries made with it could no longer be verified)") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: str | os.PathLike) -> JournalKey:
    """Read the journal key, refusing a file that group or others may read or write."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise JournalKeyError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise JournalKeyError(f"{path} may be read or written by group or others "
                                  f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
        with open(path, "rb") as f:
            text = f.read(4096).decode("ascii", "replace").strip()
    except OSError as e:
        raise JournalKeyError(f"cannot read {path}: {e.strerror}") from None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise JournalKeyError(f"{path} must hold one line of 64 hex digits (a 256-bit key), as "
                              "`gatewayctl keys generate-journal` writes it")
    return JournalKey(bytes.fromhex(text), path)
