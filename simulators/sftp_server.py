"""SFTP server for the bank simulators, on Twisted Conch, jailed in one directory.

A simulated bank exposes its ``/in/`` and ``/out/`` folders through this
server exactly as a real bank's OpenSSH would: key authentication only, one
user, every path resolved inside ``root_dir`` (``..`` and symlinks cannot
leave it), rename with POSIX semantics (overwrite allowed, as OpenSSH's
``posix-rename@openssh.com``, which is advertised). ``strict_rename=True``
makes plain RENAME refuse an existing target, as the SFTP v3 draft allows and
OpenSSH's plain RENAME does, and hides the extension, so the gateway's
fallback for such servers can be exercised. ``on_operation`` lets a simulator
react to uploads (open, close, rename, remove, mkdir, rmdir) without polling.
File reads and writes are small (at most 256 KiB) positional calls on the
reactor thread: acceptable for a simulator, whose disk is the page cache.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch import avatar
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser, ISFTPFile, ISFTPServer
from twisted.conch.ls import lsLine
from twisted.conch.ssh import common, factory, filetransfer, keys, session, transport
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

MAX_READ = 256 * 1024
# Bigger than any request a client needs to send (a 256 KiB write plus header).
MAX_REQUEST = 512 * 1024
SESSION_WINDOW = 4 * 1024 * 1024
_POSIX_RENAME = b"posix-rename@openssh.com"

Observer = Callable[..., None]


# -- keys -------------------------------------------------------------------


def _write_private(path: str, key: Any) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with open(path + ".pub", "wb") as f:
        f.write(line + b"\n")
    return line.decode("ascii")


def generate_host_key(path: str) -> str:
    """Write a new ed25519 host key (OpenSSH format, mode 0600) and ``path.pub``; return the public line."""
    return _write_private(path, ed25519.Ed25519PrivateKey.generate())


def generate_client_key(path: str, kind: str = "ed25519") -> str:
    """Write a new client key (``ed25519``, ``ecdsa`` P-256 or ``rsa`` 3072) and ``path.pub``; return the public line."""
    if kind == "ed25519":
        key: Any = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    return _write_private(path, key)


def public_key_line(path: str) -> str:
    """The OpenSSH public key line ("ssh-ed25519 AAAA...") of a private or public key file."""
    return keys.Key.fromFile(path).public().toString("openssh").decode("ascii")


# -- the jailed file system --------------------------------------------------


def _attrs(s: os.stat_result) -> dict[str, int]:
    return {
        "size": s.st_size,
        "uid": s.st_uid,
        "gid": s.st_gid,
        "permissions": s.st_mode,
        "atime": int(s.st_atime),
        "mtime": int(s.st_mtime),
    }


def _denied(path: str) -> PermissionError:
    return PermissionError(errno.EACCES, f"{path}: outside the SFTP root")


class _Jail:
    """Maps client paths to real paths that provably stay under the root."""

    def __init__(self, root_dir: str) -> None:
        self.root = os.path.realpath(root_dir)

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def virtual(self, path: bytes) -> str:
        """The normalised absolute client path; ``..`` above the root is refused."""
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise OSError(errno.EINVAL, "path is not UTF-8")
        if "\0" in text:
            raise OSError(errno.EINVAL, "path contains NUL")
        parts: list[str] = []
        for part in text.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise _denied(text)
                parts.pop()
            else:
                parts.append(part)
        return "/" + "/".join(parts)

    def resolve(self, path: bytes, follow: bool = True) -> str:
        """The real path for ``path``. With ``follow`` the final component's
        symlinks are followed too; without, only the parent's are (lstat,
        remove and rename act on a link itself)."""
        vpath = self.virtual(path)
        lexical = os.path.join(self.root, vpath.lstrip("/"))
        if follow or vpath == "/":
            real = os.path.realpath(lexical)
        else:
            parent = os.path.realpath(os.path.dirname(lexical))
            if not self._inside(parent):
                raise _denied(vpath)
            real = os.path.join(parent, os.path.basename(lexical))
        if not self._inside(real):
            raise _denied(vpath)
        return real

    def to_virtual(self, real: str) -> str:
        rel = os.path.relpath(real, self.root)
        return "/" if rel == "." else "/" + rel.replace(os.sep, "/")


class Faults:
    """Faults the next operations meet (the fault campaign, chaos/run.py): counters, each
    used up by one file. `lose_uploads`: a rename into place answers success but the file is
    dropped (a server that reports an upload it did not keep); `short_reads`: a file opened for
    reading ends at half its size (listed and read while still being written); `corrupt_reads`:
    a file opened for reading has one byte flipped in its first chunk."""

    def __init__(self) -> None:
        self.lose_uploads = 0
        self.short_reads = 0
        self.corrupt_reads = 0
        self.injected: dict[str, int] = {"lose_upload": 0, "short_read": 0, "corrupt_read": 0}


@implementer(ISFTPFile)
class _File:
    def __init__(self, fd: int, vpath: str, mode: str, observe: Observer,
                 limit: int | None = None, corrupt: bool = False) -> None:
        self.fd: int | None = fd
        self.vpath = vpath
        self.mode = mode
        self._observe = observe
        self._limit = limit
        self._corrupt = corrupt

    def readChunk(self, offset: int, length: int) -> bytes:
        if self._limit is not None:
            length = max(0, min(length, self._limit - offset))
        data = os.pread(self.fd, min(length, MAX_READ), offset)
        if self._corrupt and offset == 0 and data:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return data

    def writeChunk(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def getAttrs(self) -> dict[str, int]:
        return _attrs(os.fstat(self.fd))

    def setAttrs(self, attrs: dict[str, Any]) -> None:
        raise NotImplementedError("setstat is not supported")

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
            self._observe("close", self.vpath, self.mode)


class _Directory:
    def __init__(self, real: str) -> None:
        entries = []
        with os.scandir(real) as it:
            for entry in it:
                try:
                    s = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append((os.fsencode(entry.name), lsLine(entry.name, s).encode("utf-8"), _attrs(s)))
        entries.sort()
        self._entries = iter(entries)

    def __iter__(self) -> Any:
        return self._entries

    def close(self) -> None:
        self._entries = iter(())


@implementer(IConchUser, ISFTPServer)
class _SFTPUser(avatar.ConchUser):
    """The logged-in user; also its own ISFTPServer, so Conch's
    ``ISFTPServer(avatar)`` finds it without a global adapter registration."""

    def __init__(self, username: bytes, jail: _Jail, strict_rename: bool, observe: Observer,
                 faults: Faults | None = None) -> None:
        super().__init__()
        self.faults = faults or Faults()
        self.username = username
        self.jail = jail
        self.strict_rename = strict_rename
        self._observe = observe
        self.channelLookup[b"session"] = _Session
        self.subsystemLookup[b"sftp"] = _FileTransferServer

    # ISFTPServer

    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return {} if self.strict_rename else {_POSIX_RENAME: b"1"}

    def openFile(self, filename: bytes, flags: int, attrs: dict[str, Any]) -> _File:
        vpath = self.jail.virtual(filename)
        real = self.jail.resolve(filename)
        readable = bool(flags & filetransfer.FXF_READ)
        writable = bool(flags & filetransfer.FXF_WRITE)
        if readable and writable:
            oflags, mode = os.O_RDWR, "rw"
        elif writable:
            oflags, mode = os.O_WRONLY, "w"
        else:
            oflags, mode = os.O_RDONLY, "r"
        if flags & filetransfer.FXF_CREAT:
            oflags |= os.O_CREAT
        if flags & filetransfer.FXF_TRUNC:
            oflags |= os.O_TRUNC
        if flags & filetransfer.FXF_EXCL:
            oflags |= os.O_EXCL
        if flags & filetransfer.FXF_APPEND:
            oflags |= os.O_APPEND
        # The path is already resolved; O_NOFOLLOW closes the gap if a link
        # appears in between.
        fd = os.open(real, oflags | os.O_NOFOLLOW, attrs.get("permissions", 0o644) & 0o777)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, f"{vpath} is a directory")
        self._observe("open", vpath, mode)
        limit, corrupt, f = None, False, self.faults
        if mode == "r" and f.short_reads:
            f.short_reads -= 1
            f.injected["short_read"] += 1
            limit = os.fstat(fd).st_size // 2
        elif mode == "r" and f.corrupt_reads:
            f.corrupt_reads -= 1
            f.injected["corrupt_read"] += 1
            corrupt = True
        return _File(fd, vpath, mode, self._observe, limit, corrupt)

    def _lost(self, old: str, newpath: bytes) -> bool:
        """A rename into /in that the server answers OK but does not keep (Faults.lose_uploads)."""
        if self.faults.lose_uploads and self.jail.virtual(newpath).startswith("/in/"):
            self.faults.lose_uploads -= 1
            self.faults.injected["lose_upload"] += 1
            os.unlink(old)
            return True
        return False

    def removeFile(self, filename: bytes) -> None:
        real = self.jail.resolve(filename, follow=False)
        os.unlink(real)
        self._observe("remove", self.jail.virtual(filename))

    def renameFile(self, oldpath: bytes, newpath: bytes) -> None:
        old = self.jail.resolve(oldpath, follow=False)
        new = self.jail.resolve(newpath, follow=False)
        if self._lost(old, newpath):
            return
        if self.strict_rename:
            # OpenSSH's sftp-server: link + unlink, so an existing target is refused.
            try:
                os.link(old, new, follow_symlinks=False)
            except FileExistsError:
                raise filetransfer.SFTPError(filetransfer.FX_FAILURE, "target exists")
            os.unlink(old)
        else:
            os.rename(old, new)
        self._observe("rename", self.jail.virtual(oldpath), self.jail.virtual(newpath))

    def posixRename(self, oldpath: bytes, newpath: bytes) -> None:
        old = self.jail.resolve(oldpath, follow=False)
        new = self.jail.resolve(newpath, follow=False)
        if self._lost(old, newpath):
            return
        os.rename(old, new)
        self._observe("rename", self.jail.virtual(oldpath), self.jail.virtual(newpath))

    def makeDirectory(self, path: bytes, attrs: dict[str, Any]) -> None:
        os.mkdir(self.jail.resolve(path, follow=False), attrs.get("permissions", 0o755) & 0o777)
        self._observe("mkdir", self.jail.virtual(path))

    def removeDirectory(self, path: bytes) -> None:
        os.rmdir(self.jail.resolve(path, follow=False))
        self._observe("rmdir", self.jail.virtual(path))

    def openDirectory(self, path: bytes) -> _Directory:
        return _Directory(self.jail.resolve(path))

    def getAttrs(self, path: bytes, followLinks: bool) -> dict[str, int]:
        real = self.jail.resolve(path, follow=bool(followLinks))
        return _attrs(os.stat(real) if followLinks else os.lstat(real))

    def setAttrs(self, path: bytes, attrs: dict[str, Any]) -> None:
        raise NotImplementedError("setstat is not supported")

    def readLink(self, path: bytes) -> bytes:
        raise NotImplementedError("readlink is not supported")

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        # Client-made links would be a way out of the jail.
        raise NotImplementedError("symlink is not supported")

    def realPath(self, path: bytes) -> bytes:
        return self.jail.to_virtual(self.jail.resolve(path)).encode("utf-8")

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> bytes:
        raise NotImplementedError(f"extension {extendedName!r} is not supported")


class _FileTransferServer(filetransfer.FileTransferServer):
    def dataReceived(self, data: bytes) -> None:
        if len(self.buf) + len(data) >= 4:
            head = (self.buf + data[:4])[:4]
            if struct.unpack("!L", head)[0] > MAX_REQUEST:
                log.warn("SFTP request over {limit} bytes; closing", limit=MAX_REQUEST)
                self.buf = b""
                self.transport.loseConnection()
                return
        super().dataReceived(data)

    def packet_EXTENDED(self, data: bytes) -> None:
        requestId = data[:4]
        name, rest = common.getNS(data[4:])
        if name == _POSIX_RENAME and not self.client.strict_rename:
            old, new, _ = common.getNS(rest, 2)
            # Answered with STATUS, as OpenSSH does, not EXTENDED_REPLY.
            d = defer.maybeDeferred(self.client.posixRename, old, new)
            d.addCallback(self._cbStatus, requestId, b"rename succeeded")
            d.addErrback(self._ebStatus, requestId, b"rename failed")
            return
        super().packet_EXTENDED(data)


class _Session(session.SSHSession):
    def __init__(self, *args: Any, **kw: Any) -> None:
        # A bigger window than Conch's 128 KiB default lets uploads stream.
        kw.setdefault("localWindow", SESSION_WINDOW)
        super().__init__(*args, **kw)


class _Realm:
    def __init__(self, jail: _Jail, strict_rename: bool, observe: Observer, faults: Faults) -> None:
        self.jail = jail
        self.strict_rename = strict_rename
        self.observe = observe
        self.faults = faults

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH users")
        user = _SFTPUser(avatarId, self.jail, self.strict_rename, self.observe, self.faults)
        return IConchUser, user, lambda: None


class _ServerTransport(transport.SSHServerTransport):
    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)


class SFTPServerFactory(factory.SSHFactory):
    """Conch SSH factory serving the jailed SFTP subsystem.

    ``connections`` holds the live server transports (tests use it to stall
    or cut a connection); ``faults`` (Faults) the faults the next operations meet;
    :meth:`listen` binds it.
    """

    protocol = _ServerTransport

    def __init__(
        self,
        root_dir: str,
        username: str,
        authorized_keys: Iterable[bytes | str],
        host_key_path: str,
        *,
        strict_rename: bool = False,
        on_operation: Observer | None = None,
    ) -> None:
        if not os.path.isdir(root_dir):
            raise ValueError(f"root_dir {root_dir} is not a directory")
        host_key = keys.Key.fromFile(host_key_path)
        if host_key.isPublic():
            raise ValueError(f"host_key_path {host_key_path} holds no private key")
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        authorized = []
        for line in authorized_keys:
            raw = line.encode("ascii") if isinstance(line, str) else line
            authorized.append(keys.Key.fromString(raw.strip()))
        self.jail = _Jail(root_dir)
        self.connections: set[_ServerTransport] = set()

        def observe(op: str, *paths: str) -> None:
            log.debug("sftp {op} {paths}", op=op, paths=paths)
            if on_operation is not None:
                try:
                    on_operation(op, *paths)
                except Exception:
                    log.failure("on_operation observer failed for {op}", op=op)

        self.faults = Faults()
        realm = _Realm(self.jail, strict_rename, observe, self.faults)
        checker = SSHPublicKeyChecker(InMemorySSHKeyDB({username.encode("utf-8"): authorized}))
        self.portal = Portal(realm, [checker])

    def listen(self, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> Any:
        """Listen on ``interface:port``; returns the IListeningPort (``.getHost().port``)."""
        return reactor.listenTCP(port, self, interface=interface)

    def disconnect_all(self) -> None:
        for t in list(self.connections):
            t.transport.abortConnection()


def make_sftp_server_factory(
    root_dir: str,
    username: str,
    authorized_keys: list[bytes],
    host_key_path: str,
    *,
    strict_rename: bool = False,
    on_operation: Observer | None = None,
) -> SFTPServerFactory:
    """A Conch SFTP server factory jailed in ``root_dir`` for one key-authenticated user.

    ``on_operation(op, *paths)`` is called after each successful ``open``
    (path, "r"/"w"/"rw"), ``close`` (path, mode), ``rename`` (old, new),
    ``remove``, ``mkdir`` and ``rmdir``, with client paths.
    """
    return SFTPServerFactory(
        root_dir,
        username,
        authorized_keys,
        host_key_path,
        strict_rename=strict_rename,
        on_operation=on_operation,
    )


__all__ = [
    "Faults",
    "SFTPServerFactory",
    "generate_client_key",
    "generate_host_key",
    "make_sftp_server_factory",
    "public_key_line",
]
