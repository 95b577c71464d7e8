"""SFTP client the gateway uses to exchange batch, result and statement files with banks.

Conch has no high-level SFTP client, so this module wires one from its parts:
an SSH client transport that checks the bank's host key against a pin from
configuration (Conch never reads known_hosts), public-key authentication with
the gateway's key only, one ``session`` channel running the ``sftp`` subsystem
and Conch's ``FileTransferClient`` on top. Files follow the dialect's rule that
a reader never takes an incomplete file: uploads go to ``.{name}.part`` and are
renamed into place; downloads refuse temporary-looking names and land in
``{local}.part`` before being renamed. Throughput comes from keeping many
read/write requests in flight over a 4 MiB channel window. Every operation is
bounded by the endpoint's idle timeout, and a lost connection fails the
operation's Deferred with :class:`SFTPError`.

Algorithms: Conch offers AES-CTR (and CBC, which we do not offer) with
HMAC-SHA2, but neither chacha20-poly1305 nor AES-GCM nor the ``-etm`` MACs; a
bank server that allows only those cannot be reached with this client.
SHA-1 based key exchanges, MACs and signatures are not offered either.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.conch.ssh import channel, common, connection, keys, transport, userauth
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import (
    FX_NO_SUCH_FILE,
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FileTransferClient,
)
from twisted.internet import defer, error, protocol, threads
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from adapters.interface import TransportError  # noqa: E402
from protocols import keyfile  # noqa: E402

log = Logger()

# One SFTP request carries at most this much file data; OpenSSH's own client
# uses the same size, and every server accepts it.
CHUNK_SIZE = 32 * 1024
# Requests kept in flight per transfer: enough to cover the round trip and the
# server's disk latency without buffering more than a megabyte.
REQUESTS_IN_FLIGHT = 32
# The channel window we grant the server; the default 128 KiB caps a download
# at one window per round trip.
CHANNEL_WINDOW = 4 * 1024 * 1024
CHANNEL_MAX_PACKET = 64 * 1024
# A reply bigger than this is not an SFTP v3 reply to anything we send: drop
# the connection rather than buffer it.
MAX_SFTP_PACKET = 1024 * 1024
MAX_DIR_ENTRIES = 100_000

_POSIX_RENAME = b"posix-rename@openssh.com"

# Preference order of what we offer; anything weaker is left out on purpose.
_CIPHERS = [b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"]
# SHA-256 first: with SHA-NI (common on servers) it is the faster of the two.
_MACS = [b"hmac-sha2-256", b"hmac-sha2-512"]
_KEX = [
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
    b"diffie-hellman-group-exchange-sha256",
]
_HOST_KEY_ALGORITHMS = [
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
]


@dataclass(frozen=True)
class SFTPEndpoint:
    """Where and how to reach one bank's SFTP server.

    ``host_key`` pins the server: either its OpenSSH public key line
    (``ssh-ed25519 AAAA...``) or its ``SHA256:...`` fingerprint as printed by
    ``ssh-keygen -l``. Prefer the key line: with it the client asks the server
    for exactly that key type, whereas with a bare fingerprint a server holding
    several host keys may present another type than the one pinned.
    """

    host: str
    port: int
    username: str
    client_key_path: str
    host_key: str
    connect_timeout: float = 10
    idle_timeout: float = 60


class SFTPError(TransportError):
    """An SFTP operation failed: refused by the server, timed out or cut off.

    ``code`` is the SFTP status code when the server refused the request.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class HostKeyMismatch(SFTPError):
    """The server presented a host key other than the pinned one."""

    def __init__(self, host: str, expected: str, presented: str) -> None:
        super().__init__(
            f"host key of {host} does not match the pin: "
            f"expected {expected}, presented {presented}"
        )
        self.expected = expected
        self.presented = presented


class AuthenticationFailed(SFTPError):
    """The server did not accept our client key for the user."""


class RemoteFileTooLarge(SFTPError):
    """A remote file is bigger than the caller is prepared to read."""


def fingerprint(public_key: str | bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key line or key blob."""
    if isinstance(public_key, str):
        blob = keys.Key.fromString(public_key.strip().encode("ascii")).blob()
    else:
        blob = public_key
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def looks_temporary(name: str) -> bool:
    """True for names writers use while a file is incomplete."""
    base = posixpath.basename(name)
    return base.startswith(".") or base.endswith((".part", ".tmp"))


def _check_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")
    if looks_temporary(name):
        raise ValueError(f"{name!r} looks like a temporary name; readers would never take it")


def _remote(path: str) -> bytes:
    if "\0" in path:
        raise ValueError(f"remote path {path!r} contains NUL")
    return path.encode("utf-8")


class _Pin:
    """The pinned host key, as a fingerprint plus the algorithms to ask for."""

    def __init__(self, host_key: str) -> None:
        text = host_key.strip()
        if text.startswith("SHA256:"):
            self.fingerprint = text.rstrip("=")
            self.algorithms = list(_HOST_KEY_ALGORITHMS)
        else:
            try:
                key = keys.Key.fromString(text.encode("ascii"))
            except (keys.BadKeyError, ValueError, UnicodeEncodeError) as e:
                raise ValueError(f"host_key is neither a key line nor SHA256 fingerprint: {e}")
            if not key.isPublic():
                raise ValueError("host_key must be a public key")
            self.fingerprint = fingerprint(key.blob())
            # Ask for the pinned type only, so a server with several host keys
            # presents the one we know.
            self.algorithms = [
                a for a in key.supportedSignatureAlgorithms() if a in _HOST_KEY_ALGORITHMS
            ]


class _Attempt:
    """One connection attempt: fires ``ready`` once with a session or an error."""

    def __init__(self, client: SFTPClient) -> None:
        self.client = client
        self.endpoint = client.endpoint
        self.ready: defer.Deferred[SFTPSession] = defer.Deferred()
        self.stage = "connecting"
        self.error: SFTPError | None = None
        self.remote_reason = ""
        self.transport: _ClientTransport | None = None
        self.session: SFTPSession | None = None
        self.timer: Any = None

    @property
    def settled(self) -> bool:
        return self.ready.called

    def fail(self, err: SFTPError) -> None:
        if self.error is None:
            self.error = err
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if not self.settled:
            self.ready.errback(err)
        if self.transport is not None and self.transport.transport is not None:
            self.transport.transport.loseConnection()

    def succeed(self, session: SFTPSession) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.stage = "ready"
        self.session = session
        if not self.settled:
            self.ready.callback(session)

    def timed_out(self) -> None:
        err = SFTPError(
            f"could not open SFTP to {self.endpoint.host}:{self.endpoint.port} within "
            f"{self.endpoint.connect_timeout}s (stuck while {self.stage})"
        )
        self.error = err
        if not self.settled:
            self.ready.errback(err)
        if self.transport is not None and self.transport.transport is not None:
            self.transport.transport.abortConnection()

    def lost(self, reason: Failure) -> None:
        if self.settled:
            if self.session is not None:
                self.session._connection_lost(reason)
            return
        if self.error is not None:
            err = self.error
        elif self.stage == "authentication":
            err = AuthenticationFailed(
                f"{self.endpoint.host}:{self.endpoint.port} refused user "
                f"{self.endpoint.username!r} with key {self.client.key_fingerprint}"
                + (f" ({self.remote_reason})" if self.remote_reason else "")
            )
        else:
            detail = self.remote_reason or reason.getErrorMessage()
            err = SFTPError(
                f"connection to {self.endpoint.host}:{self.endpoint.port} lost while "
                f"{self.stage}: {detail}"
            )
        self.fail(err)


class _ClientTransport(transport.SSHClientTransport):
    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        # Instance attributes shadow Conch's class-wide algorithm lists, which
        # offer CBC, SHA-1 and MD5.
        self.supportedCiphers = list(_CIPHERS)
        self.supportedMACs = list(_MACS)
        self.supportedKeyExchanges = [
            k for k in transport.SSHClientTransport.supportedKeyExchanges if k in _KEX
        ]
        self.supportedPublicKeys = attempt.client.pin.algorithms
        self.supportedCompressions = [b"none"]

    def connectionMade(self) -> None:
        self.attempt.transport = self
        self.attempt.stage = "exchanging keys"
        super().connectionMade()

    def verifyHostKey(self, hostKey: bytes, fp: bytes) -> defer.Deferred[bool]:
        presented = fingerprint(hostKey)
        expected = self.attempt.client.pin.fingerprint
        if presented != expected:
            err = HostKeyMismatch(self.attempt.endpoint.host, expected, presented)
            self.attempt.error = err
            log.error(
                "host key mismatch for {host}: expected {expected}, presented {presented}",
                host=self.attempt.endpoint.host,
                expected=expected,
                presented=presented,
            )
            return defer.fail(err)
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.attempt.stage = "authentication"
        conn = _Connection(self.attempt)
        self.requestService(
            _KeyAuth(self.attempt.endpoint.username.encode("utf-8"), conn, self.attempt.client.key)
        )

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.attempt.remote_reason = description.decode("utf-8", "replace")

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.attempt.lost(reason or Failure(error.ConnectionDone()))


class _KeyAuth(userauth.SSHUserAuthClient):
    """Public-key authentication with one key, signing on the first offer.

    Conch's own client signs RSA requests as ``ssh-rsa`` (SHA-1), which
    OpenSSH 8.8 and later refuse; this one uses ``rsa-sha2-512``/``-256``.
    """

    preferredOrder = [b"publickey"]

    def __init__(self, user: bytes, instance: connection.SSHConnection, key: keys.Key) -> None:
        super().__init__(user, instance)
        self._key = key
        self._offered = False

    def _algorithm(self) -> bytes:
        if self._key.type() != "RSA":
            return self._key.sshType()
        offered = self.transport.peerExtensions.get(b"server-sig-algs", b"").split(b",")
        for alg in (b"rsa-sha2-512", b"rsa-sha2-256"):
            if alg in offered:
                return alg
        # A server that does not list its algorithms (RFC 8308 predates it)
        # still gets SHA-2: we do not send SHA-1 signatures.
        return b"rsa-sha2-256"

    def auth_publickey(self) -> defer.Deferred[bool]:
        if self._offered:
            return defer.succeed(False)
        self._offered = True
        alg = self._algorithm()
        blob = self._key.public().blob()
        # RFC 4252 7: a signed request may be sent without first asking whether
        # the key is acceptable; that saves a round trip.
        signed = (
            common.NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(alg)
            + common.NS(blob)
        )
        signature = self._key.sign(signed, signatureType=alg)
        self.askForAuth(b"publickey", b"\x01" + common.NS(alg) + common.NS(blob) + common.NS(signature))
        return defer.succeed(True)

    def auth_password(self) -> bool:
        return False

    def auth_keyboard_interactive(self) -> bool:
        return False


class _Connection(connection.SSHConnection):
    def __init__(self, attempt: _Attempt) -> None:
        super().__init__()
        self.attempt = attempt

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.attempt.stage = "opening the sftp channel"
        self.openChannel(_SFTPChannel(self.attempt, conn=self))


class _SFTPChannel(channel.SSHChannel):
    name = b"session"

    def __init__(self, attempt: _Attempt, conn: connection.SSHConnection) -> None:
        super().__init__(localWindow=CHANNEL_WINDOW, localMaxPacket=CHANNEL_MAX_PACKET, conn=conn)
        self.attempt = attempt
        client = attempt.client
        self.protocol = _SFTPProtocol(client.reactor, attempt.endpoint.idle_timeout, attempt)

    def channelOpen(self, specificData: bytes) -> None:
        self.attempt.stage = "starting the sftp subsystem"
        d = self.conn.sendRequest(self, b"subsystem", common.NS(b"sftp"), wantReply=True)
        d.addCallbacks(self._subsystemStarted, self._subsystemRefused)

    def _subsystemStarted(self, _: object) -> None:
        self.attempt.stage = "negotiating the sftp version"
        self.protocol.makeConnection(self)

    def _subsystemRefused(self, reason: Failure) -> None:
        self.attempt.fail(
            SFTPError(f"{self.attempt.endpoint.host} refused the sftp subsystem: {reason.getErrorMessage()}")
        )

    def openFailed(self, reason: Any) -> None:
        self.attempt.fail(SFTPError(f"{self.attempt.endpoint.host} refused a session channel: {reason}"))

    def dataReceived(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        # The server's stderr carries nothing we act on; it is not buffered.
        pass

    def eofReceived(self) -> None:
        self.loseConnection()

    def closed(self) -> None:
        if self.protocol.connected:
            self.protocol.connectionLost(Failure(error.ConnectionDone("sftp channel closed")))
        # The subsystem is the only reason for the connection to exist.
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.loseConnection()


def _warnings_only(event: dict[str, Any]) -> None:
    if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
        globalLogPublisher(event)


class _SFTPProtocol(FileTransferClient):
    """FileTransferClient plus a watchdog and a cap on reply size.

    The watchdog runs only while requests are outstanding: if the server sends
    nothing for ``idle_timeout`` seconds the connection is aborted, which fails
    every outstanding request.
    """

    # Conch logs every SFTP packet at info level: thousands of lines per batch
    # file. Its warnings and failures still reach the log.
    _log = Logger(namespace="adapters.sftp.conch", observer=_warnings_only)

    def __init__(self, clock: Any, idle_timeout: float, attempt: _Attempt) -> None:
        super().__init__()
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.attempt = attempt
        self.extensions: dict[bytes, bytes] = {}
        self.timed_out = False
        self.oversized = False
        self._last_heard = 0.0
        self._watchdog: Any = None

    def gotServerVersion(self, serverVersion: int, extData: dict[bytes, bytes]) -> None:
        self.extensions = dict(extData)
        self.attempt.succeed(SFTPSession(self.attempt, self))

    def _sendRequest(self, msg: int, data: bytes) -> defer.Deferred[Any]:
        if not self.openRequests:
            self._last_heard = self.clock.seconds()
        d = super()._sendRequest(msg, data)
        if self._watchdog is None and self.connected:
            self._watchdog = self.clock.callLater(self.idle_timeout, self._check)
        return d

    def _check(self) -> None:
        self._watchdog = None
        if not self.openRequests or not self.connected:
            return
        silent = self.clock.seconds() - self._last_heard
        if silent < self.idle_timeout:
            self._watchdog = self.clock.callLater(self.idle_timeout - silent, self._check)
            return
        self.timed_out = True
        log.warn(
            "no SFTP reply from {host} for {seconds}s; aborting the connection",
            host=self.attempt.endpoint.host,
            seconds=self.idle_timeout,
        )
        self._abort()

    def _abort(self) -> None:
        ssh = self.attempt.transport
        if ssh is not None and ssh.transport is not None:
            ssh.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._last_heard = self.clock.seconds()
        super().dataReceived(data)
        if len(self.buf) >= 4 and int.from_bytes(self.buf[:4], "big") > MAX_SFTP_PACKET:
            self.oversized = True
            self.buf = b""
            self._abort()

    def connectionLost(self, reason: Failure) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        super().connectionLost(reason)


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> _ClientTransport:
        p = _ClientTransport(self.attempt)
        p.factory = self
        return p

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        ep = self.attempt.endpoint
        self.attempt.fail(SFTPError(f"cannot connect to {ep.host}:{ep.port}: {reason.getErrorMessage()}"))


def _load_private_key(path: str) -> keys.Key:
    """An unencrypted OpenSSH, traditional PEM or PKCS#8 PEM private key, refused (ValueError naming the
    mode) when group or others may read or write it, as our other private keys are."""
    try:
        data = keyfile.read_private_bytes(path)
    except keyfile.KeyFileError as e:
        raise ValueError(str(e).removeprefix(f"{path}: ")) from None
    if data.lstrip().startswith(b"-----BEGIN PRIVATE KEY-----"):
        # Conch reads OpenSSH and traditional PEM but not PKCS#8.
        return keys.Key(serialization.load_pem_private_key(data, password=None))
    return keys.Key.fromString(data)


class SFTPClient:
    """Opens SFTP sessions to one bank endpoint.

    ``chunk_size`` and ``requests_in_flight`` tune transfers; the defaults
    suit OpenSSH and the bundled simulator.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: SFTPEndpoint,
        *,
        chunk_size: int = CHUNK_SIZE,
        requests_in_flight: int = REQUESTS_IN_FLIGHT,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.chunk_size = chunk_size
        self.requests_in_flight = requests_in_flight
        # Configuration errors surface here, at start-up, not at the first transfer.
        self.pin = _Pin(endpoint.host_key)
        try:
            self.key = _load_private_key(endpoint.client_key_path)
        except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError, TypeError) as e:
            raise ValueError(f"client_key_path {endpoint.client_key_path}: {e}") from e
        if self.key.isPublic() or self.key.type() not in ("Ed25519", "EC", "RSA"):
            raise ValueError(
                f"client_key_path {endpoint.client_key_path}: need an ed25519, ecdsa or rsa private key"
            )
        self.key_fingerprint = fingerprint(self.key.public().blob())

    def connect(self) -> defer.Deferred[SFTPSession]:
        """Connect, check the host key, authenticate and start SFTP."""
        attempt = _Attempt(self)
        ep = self.endpoint
        attempt.timer = self.reactor.callLater(ep.connect_timeout, attempt.timed_out)
        connector = self.reactor.connectTCP(
            ep.host, ep.port, _ClientFactory(attempt), timeout=ep.connect_timeout
        )

        def stop_connecting(f: Failure) -> Failure:
            # A timeout before TCP connected leaves the connector trying.
            if attempt.transport is None and connector.state == "connecting":
                connector.stopConnecting()
            return f

        attempt.ready.addErrback(stop_connecting)
        return attempt.ready


class SFTPSession:
    """An open SFTP session. All methods return Deferreds and are bounded by
    the endpoint's idle timeout. Remote paths are absolute or relative to the
    login directory, as the server defines them."""

    def __init__(self, attempt: _Attempt, proto: _SFTPProtocol) -> None:
        self._attempt = attempt
        self._proto = proto
        self._client = attempt.client
        self._closed: defer.Deferred[None] = defer.Deferred()
        self._lost = False
        ep = attempt.endpoint
        self.peer = f"{ep.host}:{ep.port}"
        log.info("SFTP session open to {peer} as {user}", peer=self.peer, user=ep.username)

    @property
    def server_extensions(self) -> dict[bytes, bytes]:
        return dict(self._proto.extensions)

    # -- plumbing ---------------------------------------------------------

    def _connection_lost(self, reason: Failure) -> None:
        self._lost = True
        if not self._closed.called:
            self._closed.callback(None)

    def _translate(self, f: Failure, what: str) -> Failure:
        """Turn Conch's and Twisted's failures into SFTPError naming the operation."""
        if f.check(SFTPError):
            return f
        if f.check(filetransfer.SFTPError):
            e = f.value
            return Failure(SFTPError(f"{what} on {self.peer}: {e.message} (SFTP status {e.code})", e.code))
        gone = self._lost or not self._proto.connected
        if f.check(error.ConnectionLost, error.ConnectionDone, error.ConnectionClosed) or (
            gone and f.check(Exception)
        ):
            if self._proto.timed_out:
                why = f"no reply within {self._attempt.endpoint.idle_timeout}s"
            elif self._proto.oversized:
                why = "server sent an oversized SFTP packet"
            else:
                why = "connection lost"
            return Failure(SFTPError(f"{what} on {self.peer}: {why}"))
        if f.check(EOFError):
            return Failure(SFTPError(f"{what} on {self.peer}: unexpected end of file"))
        if f.check(NotImplementedError):
            return Failure(SFTPError(f"{what} on {self.peer}: not supported by the server"))
        return f

    async def _call(self, what: str, d: defer.Deferred[Any]) -> Any:
        try:
            return await d
        except BaseException:
            self._translate(Failure(), what).raiseException()

    def _run(self, what: str, coro: Any) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(self._translate, what)
        return d

    @staticmethod
    def _swallow(pending: Any) -> None:
        # Requests still in flight after a failure will fail too (or not);
        # their outcome no longer matters and must not be logged as unhandled.
        for item in pending:
            d = item[-1] if isinstance(item, tuple) else item
            d.addErrback(lambda _: None)

    async def _read(self, d: defer.Deferred[bytes], what: str) -> bytes:
        """A read's data, or b"" at end of file."""
        try:
            return await d
        except EOFError:
            return b""
        except BaseException:
            self._translate(Failure(), what).raiseException()
            raise  # unreachable: raiseException always raises

    async def _rename(self, old: bytes, new: bytes, what: str) -> None:
        proto = self._proto
        if _POSIX_RENAME in proto.extensions:
            await self._call(what, proto.extendedRequest(_POSIX_RENAME, common.NS(old) + common.NS(new)))
            return
        try:
            await self._call(what, proto.renameFile(old, new))
        except SFTPError:
            if not await self._exists(new):
                raise
            # SFTP v3 (draft-ietf-secsh-filexfer-02, 6.5) lets a server refuse
            # to rename over an existing file, and many do: OpenSSH's plain
            # RENAME (link + unlink; we use its posix-rename extension
            # instead), servers without posix-rename such as ProFTPD's
            # mod_sftp in strict mode, Windows servers (Bitvise, CoreFTP) and
            # several bank appliances. A reader then briefly sees no file,
            # never a partial one.
            log.info("server refused rename over {new}; removing it first", new=new.decode("utf-8", "replace"))
            await self._call(what, proto.removeFile(new))
            await self._call(what, proto.renameFile(old, new))

    async def _exists(self, path: bytes) -> bool:
        try:
            await self._proto.getAttrs(path, 1)
        except filetransfer.SFTPError as e:
            if e.code == FX_NO_SUCH_FILE:
                return False
            self._translate(Failure(), f"stat {path.decode('utf-8', 'replace')}").raiseException()
        except BaseException:
            self._translate(Failure(), f"stat {path.decode('utf-8', 'replace')}").raiseException()
        return True

    async def _put(self, source: Callable[[int], bytes], remote_dir: str, name: str) -> int:
        _check_name(name)
        final = posixpath.join(remote_dir, name)
        part = posixpath.join(remote_dir, f".{name}.part")
        what = f"upload {final}"
        proto = self._proto
        started = self._client.reactor.seconds()
        handle = await self._call(what, proto.openFile(_remote(part), FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}))
        pending: deque[defer.Deferred[Any]] = deque()
        offset = 0
        try:
            try:
                while True:
                    chunk = source(self._client.chunk_size)
                    if not chunk:
                        break
                    pending.append(handle.writeChunk(offset, chunk))
                    offset += len(chunk)
                    if len(pending) >= self._client.requests_in_flight:
                        await self._call(what, pending.popleft())
                while pending:
                    await self._call(what, pending.popleft())
            except BaseException:
                self._swallow(pending)
                handle.close().addErrback(lambda _: None)
                raise
            # Closing is where some servers report a failed write (disk full).
            await self._call(what, handle.close())
            await self._rename(_remote(part), _remote(final), what)
        except BaseException:
            if proto.connected:
                proto.removeFile(_remote(part)).addErrback(lambda _: None)
            raise
        seconds = self._client.reactor.seconds() - started
        log.info(
            "uploaded {path} to {peer}: {size} bytes in {seconds:.2f}s",
            path=final,
            peer=self.peer,
            size=offset,
            seconds=seconds,
        )
        return offset

    async def _get(self, remote_path: str, max_size: int, sink: Callable[[int, bytes], None], what: str) -> int:
        if looks_temporary(remote_path):
            raise SFTPError(f"{what}: {remote_path!r} looks like a file still being written; refused")
        proto = self._proto
        handle = await self._call(what, proto.openFile(_remote(remote_path), FXF_READ, {}))
        pending: deque[tuple[int, int, defer.Deferred[bytes]]] = deque()
        try:
            # fstat on the open handle: the size belongs to the file we read.
            attrs = await self._call(what, handle.getAttrs())
            size = attrs.get("size")
            if size is None:
                raise SFTPError(f"{what}: server did not report the file's size")
            if "permissions" in attrs and not stat.S_ISREG(attrs["permissions"]):
                raise SFTPError(f"{what}: not a regular file")
            if size > max_size:
                raise RemoteFileTooLarge(f"{what}: {size} bytes is over the limit of {max_size}")
            chunk = self._client.chunk_size
            depth = self._client.requests_in_flight
            next_offset = 0

            def issue(off: int, length: int) -> None:
                pending.append((off, length, handle.readChunk(off, length)))

            def fill() -> None:
                nonlocal next_offset
                while next_offset < size and len(pending) < depth:
                    length = min(chunk, size - next_offset)
                    issue(next_offset, length)
                    next_offset += length

            fill()
            while pending:
                off, length, d = pending.popleft()
                data = await self._read(d, what)
                if not data:
                    raise SFTPError(f"{what}: file ended at {off} bytes, before its size {size}")
                if len(data) > length:
                    raise SFTPError(f"{what}: server answered a {length}-byte read with {len(data)} bytes")
                sink(off, data)
                if len(data) < length:
                    # Servers may return less than asked (OpenSSH caps reads);
                    # ask again for the rest.
                    issue(off + len(data), length - len(data))
                fill()
            # A file that grew after we took its size is still being written.
            if await self._read(handle.readChunk(size, 1), what):
                raise SFTPError(f"{what}: file grew past {size} bytes while being read; not complete")
        finally:
            self._swallow(pending)
            close = handle.close()
            close.addErrback(lambda _: None)
        return size

    # -- public operations ------------------------------------------------

    def upload(self, local_path: str, remote_dir: str, name: str) -> defer.Deferred[int]:
        """Upload a local file as ``{remote_dir}/{name}`` via ``.{name}.part``; fires with its size."""

        async def go() -> int:
            with open(local_path, "rb") as f:
                return await self._put(f.read, remote_dir, name)

        return self._run(f"upload {local_path}", go())

    def upload_bytes(self, data: bytes, remote_dir: str, name: str) -> defer.Deferred[int]:
        """Upload a small in-memory file the same way as :meth:`upload`."""
        view = memoryview(data)
        position = 0

        def source(n: int) -> bytes:
            nonlocal position
            piece = bytes(view[position : position + n])
            position += len(piece)
            return piece

        return self._run(f"upload {name}", self._put(source, remote_dir, name))

    def download(self, remote_path: str, local_path: str, max_size: int) -> defer.Deferred[int]:
        """Download a complete remote file to ``local_path``; fires with its size.

        The data goes to ``{local_path}.part``, is flushed to disk and renamed
        into place, so ``local_path`` never holds a partial file.
        """
        what = f"download {remote_path}"
        reactor = self._client.reactor

        async def go() -> int:
            part = local_path + ".part"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                size = await self._get(remote_path, max_size, lambda off, data: os.pwrite(fd, data, off), what)
            except BaseException:
                os.close(fd)
                _unlink_quietly(part)
                raise

            def finish() -> None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(part, local_path)

            try:
                # fsync of 100 MB can take seconds: not on the reactor thread.
                await threads.deferToThreadPool(reactor, reactor.getThreadPool(), finish)
            except BaseException:
                _unlink_quietly(part)
                raise
            log.info("downloaded {path} from {peer}: {size} bytes", path=remote_path, peer=self.peer, size=size)
            return size

        return self._run(what, go())

    def read_bytes(self, remote_path: str, max_size: int) -> defer.Deferred[bytes]:
        """Read a small complete remote file into memory."""
        what = f"read {remote_path}"
        buf = bytearray()

        def sink(off: int, data: bytes) -> None:
            end = off + len(data)
            if len(buf) < end:
                buf.extend(bytes(end - len(buf)))
            buf[off:end] = data

        async def go() -> bytes:
            size = await self._get(remote_path, max_size, sink, what)
            return bytes(buf[:size])

        return self._run(what, go())

    def listdir(self, remote_dir: str) -> defer.Deferred[list[str]]:
        """Names of the complete regular files in ``remote_dir``, sorted; temporary names hidden."""
        what = f"list {remote_dir}"
        proto = self._proto

        async def go() -> list[str]:
            directory = await self._call(what, proto.openDirectory(_remote(remote_dir)))
            names: list[str] = []
            seen = 0
            try:
                while True:
                    try:
                        entries = await directory.read()
                    except EOFError:
                        break
                    except BaseException:
                        self._translate(Failure(), what).raiseException()
                    seen += len(entries)
                    if seen > MAX_DIR_ENTRIES:
                        raise SFTPError(f"{what}: more than {MAX_DIR_ENTRIES} entries")
                    for filename, _longname, attrs in entries:
                        name = filename.decode("utf-8", "surrogateescape")
                        if name in (".", "..") or looks_temporary(name):
                            continue
                        if "permissions" in attrs and not stat.S_ISREG(attrs["permissions"]):
                            continue
                        names.append(name)
            finally:
                d = directory.close()
                d.addErrback(lambda _: None)
            return sorted(names)

        return self._run(what, go())

    def exists(self, path: str) -> defer.Deferred[bool]:
        """Whether ``path`` exists (following symlinks)."""
        return self._run(f"stat {path}", self._exists(_remote(path)))

    def remove(self, path: str) -> defer.Deferred[None]:
        """Remove a remote file."""
        what = f"remove {path}"

        async def go() -> None:
            await self._call(what, self._proto.removeFile(_remote(path)))

        return self._run(what, go())

    def close(self) -> defer.Deferred[None]:
        """Close the session; fires when the connection is gone."""
        ssh = self._attempt.transport
        if self._lost or ssh is None or ssh.transport is None:
            return defer.succeed(None)
        reactor = self._client.reactor
        ssh.loseConnection()
        # A peer that stops reading would keep a graceful close pending forever.
        timer = reactor.callLater(self._attempt.endpoint.idle_timeout, ssh.transport.abortConnection)
        d: defer.Deferred[None] = defer.Deferred()

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            d.callback(None)

        self._closed.addBoth(done)
        return d


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warn("could not remove {path}: {error}", path=path, error=e)
