"""The gateway's SFTP client against the simulators' Conch SFTP server and a real OpenSSH.

Every server here is real and listens on 127.0.0.1: the Conch server on an
ephemeral port, OpenSSH's sshd on a free port it reports binding.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.conch.ssh.filetransfer import FX_PERMISSION_DENIED
from twisted.internet import protocol

import simulators.sftp_server as sftp_server
from adapters.sftp import (
    AuthenticationFailed,
    HostKeyMismatch,
    RemoteFileTooLarge,
    SFTPClient,
    SFTPEndpoint,
    SFTPError,
    fingerprint,
)
from simulators.sftp_server import (
    generate_client_key,
    generate_host_key,
    make_sftp_server_factory,
    public_key_line,
)

SSHD = "/usr/sbin/sshd"
# Guards against a regression that hangs: a test fails after this many seconds.
HANG_GUARD = 60


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    k = SimpleNamespace()
    k.host_path = str(d / "host")
    k.host_line = generate_host_key(k.host_path)
    k.other_host_line = generate_host_key(str(d / "other_host"))
    k.client_path = str(d / "client")
    k.client_line = generate_client_key(k.client_path)
    k.stranger_path = str(d / "stranger")
    generate_client_key(k.stranger_path)
    return k


def _start_bank(reactor, tmp_path, keys, **kw):
    root = tmp_path / "root"
    for sub in ("in", "out"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    events: list[tuple[str, ...]] = []
    hooks: list = []

    def observe(op, *paths):
        events.append((op, *paths))
        for hook in hooks:
            hook(op, *paths)

    factory = make_sftp_server_factory(
        str(root), "gw", [keys.client_line.encode()], keys.host_path, on_operation=observe, **kw
    )
    port = factory.listen(reactor)
    bank = SimpleNamespace(factory=factory, port=port, root=root, events=events, hooks=hooks)
    bank.endpoint = lambda **over: SFTPEndpoint(
        **{
            "host": "127.0.0.1",
            "port": port.getHost().port,
            "username": "gw",
            "client_key_path": keys.client_path,
            "host_key": keys.host_line,
            **over,
        }
    )
    return bank


def _stop_bank(bank):
    bank.factory.disconnect_all()
    pytest_twisted.blockon(bank.port.stopListening())


@pytest.fixture
def bank(reactor, tmp_path, keys):
    b = _start_bank(reactor, tmp_path, keys)
    yield b
    _stop_bank(b)


@pytest.fixture
def strict_bank(reactor, tmp_path, keys):
    b = _start_bank(reactor, tmp_path, keys, strict_rename=True)
    yield b
    _stop_bank(b)


def guarded(d, reactor):
    return d.addTimeout(HANG_GUARD, reactor)


async def _session(reactor, endpoint):
    return await guarded(SFTPClient(reactor, endpoint).connect(), reactor)


async def _expect(exc_type, d, reactor):
    try:
        await guarded(d, reactor)
    except exc_type as e:
        return e
    pytest.fail(f"expected {exc_type.__name__}")


# -- against the simulators' Conch server -----------------------------------


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_upload_writes_temp_name_then_renames(reactor, bank, tmp_path):
    """An upload is written only under .{name}.part and appears under its name by one rename, complete."""
    data = os.urandom(1_000_000)
    src = tmp_path / "B1.req"
    src.write_bytes(data)
    final = bank.root / "in" / "B1.req"
    part = bank.root / "in" / ".B1.req.part"
    seen_at_close = []

    def at_close(op, *args):
        if op == "close" and args[0] == "/in/.B1.req.part":
            seen_at_close.append((final.exists(), part.read_bytes() == data))

    bank.hooks.append(at_close)
    s = await _session(reactor, bank.endpoint())
    try:
        assert await guarded(s.upload(str(src), "/in", "B1.req"), reactor) == len(data)
    finally:
        await s.close()
    assert seen_at_close == [(False, True)]
    assert bank.events == [
        ("open", "/in/.B1.req.part", "w"),
        ("close", "/in/.B1.req.part", "w"),
        ("rename", "/in/.B1.req.part", "/in/B1.req"),
    ]
    assert final.read_bytes() == data
    assert not part.exists()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_upload_replaces_existing_file_atomically(reactor, bank):
    """Uploading over an existing name replaces it by posix-rename, without removing it first."""
    (bank.root / "in" / "B1.req").write_bytes(b"old")
    s = await _session(reactor, bank.endpoint())
    try:
        await guarded(s.upload_bytes(b"new contents", "/in", "B1.req"), reactor)
    finally:
        await s.close()
    assert (bank.root / "in" / "B1.req").read_bytes() == b"new contents"
    assert [e[0] for e in bank.events] == ["open", "close", "rename"]


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_upload_over_existing_on_server_refusing_rename_over(reactor, strict_bank):
    """On a server whose RENAME refuses an existing target, the target is removed and the rename retried."""
    (strict_bank.root / "in" / "B1.req").write_bytes(b"old")
    s = await _session(reactor, strict_bank.endpoint())
    try:
        assert b"posix-rename@openssh.com" not in s.server_extensions
        await guarded(s.upload_bytes(b"new contents", "/in", "B1.req"), reactor)
    finally:
        await s.close()
    assert (strict_bank.root / "in" / "B1.req").read_bytes() == b"new contents"
    assert not (strict_bank.root / "in" / ".B1.req.part").exists()
    assert strict_bank.events[-2:] == [
        ("remove", "/in/B1.req"),
        ("rename", "/in/.B1.req.part", "/in/B1.req"),
    ]


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_download_and_read_bytes(reactor, bank, tmp_path):
    """A remote file downloads byte-exact into place (no .part left) and reads into memory."""
    data = os.urandom(300_001)
    (bank.root / "out" / "B1.rsp").write_bytes(data)
    local = tmp_path / "B1.rsp"
    s = await _session(reactor, bank.endpoint())
    try:
        assert await guarded(s.download("/out/B1.rsp", str(local), 10**6), reactor) == len(data)
        assert await guarded(s.read_bytes("/out/B1.rsp", 10**6), reactor) == data
        assert await guarded(s.read_bytes("/out/B1.rsp", len(data)), reactor) == data
    finally:
        await s.close()
    assert local.read_bytes() == data
    assert not (tmp_path / "B1.rsp.part").exists()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_listdir_exists_remove(reactor, bank):
    """listdir shows complete regular files only; exists and remove act on the named file."""
    out = bank.root / "out"
    for name in ("B1.rsp", "B1.rsp.sig", ".B2.rsp.part", "B3.rsp.part", "B4.tmp", ".hidden"):
        (out / name).write_bytes(b"x")
    (out / "sub").mkdir()
    s = await _session(reactor, bank.endpoint())
    try:
        assert await guarded(s.listdir("/out"), reactor) == ["B1.rsp", "B1.rsp.sig"]
        assert await guarded(s.exists("/out/B1.rsp"), reactor) is True
        assert await guarded(s.exists("/out/nope"), reactor) is False
        await guarded(s.remove("/out/B1.rsp"), reactor)
        assert await guarded(s.exists("/out/B1.rsp"), reactor) is False
        await _expect(SFTPError, s.remove("/out/B1.rsp"), reactor)
    finally:
        await s.close()
    assert not (out / "B1.rsp").exists()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_temporary_names_refused(reactor, bank, tmp_path):
    """Names that look temporary are refused for download and upload without asking the server."""
    for name in (".B1.rsp.part", "B1.rsp.part", "B1.rsp.tmp", ".B1.rsp"):
        (bank.root / "out" / name).write_bytes(b"partial")
    s = await _session(reactor, bank.endpoint())
    try:
        for name in (".B1.rsp.part", "B1.rsp.part", "B1.rsp.tmp", ".B1.rsp"):
            await _expect(SFTPError, s.download(f"/out/{name}", str(tmp_path / "x"), 100), reactor)
            await _expect(SFTPError, s.read_bytes(f"/out/{name}", 100), reactor)
            await _expect(ValueError, s.upload_bytes(b"x", "/in", name), reactor)
        await _expect(ValueError, s.upload_bytes(b"x", "/in", "../B1.req"), reactor)
    finally:
        await s.close()
    assert bank.events == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_max_size_refused_before_reading(reactor, bank, tmp_path, monkeypatch):
    """A file over max_size raises RemoteFileTooLarge without a single read and leaves no local file."""
    reads = []
    original = sftp_server._File.readChunk
    monkeypatch.setattr(
        sftp_server._File, "readChunk", lambda self, off, n: reads.append(off) or original(self, off, n)
    )
    (bank.root / "out" / "big.rsp").write_bytes(b"y" * 100_001)
    local = tmp_path / "big.rsp"
    s = await _session(reactor, bank.endpoint())
    try:
        e = await _expect(RemoteFileTooLarge, s.download("/out/big.rsp", str(local), 100_000), reactor)
        assert "100001" in str(e)
        await _expect(RemoteFileTooLarge, s.read_bytes("/out/big.rsp", 100_000), reactor)
        assert reads == []
        assert len(await guarded(s.read_bytes("/out/big.rsp", 100_001), reactor)) == 100_001
    finally:
        await s.close()
    assert not local.exists() and not (tmp_path / "big.rsp.part").exists()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_wrong_pinned_host_key(reactor, bank, keys, tmp_path):
    """A server presenting another host key than the pin is refused with both fingerprints; nothing uploaded."""
    src = tmp_path / "B1.req"
    src.write_bytes(b"data")
    for pin in (keys.other_host_line, fingerprint(keys.other_host_line)):
        d = SFTPClient(reactor, bank.endpoint(host_key=pin)).connect()
        d.addCallback(lambda s: s.upload(str(src), "/in", "B1.req"))
        e = await _expect(HostKeyMismatch, d, reactor)
        assert e.expected == fingerprint(keys.other_host_line)
        assert e.presented == fingerprint(keys.host_line)
        assert e.expected in str(e) and e.presented in str(e)
    assert bank.events == []
    assert list((bank.root / "in").iterdir()) == []


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_fingerprint_pin_accepted(reactor, bank, keys):
    """A SHA256: fingerprint pin of the right key connects as well as the key line."""
    s = await _session(reactor, bank.endpoint(host_key=fingerprint(keys.host_line)))
    try:
        assert await guarded(s.listdir("/in"), reactor) == []
    finally:
        await s.close()


@pytest.mark.loopback
@pytest.mark.parametrize(
    "kind, fmt",
    [("ed25519", "PKCS8"), ("ecdsa", "OpenSSH"), ("ecdsa", "TraditionalOpenSSL"), ("rsa", "TraditionalOpenSSL")],
)
@pytest_twisted.ensureDeferred
async def test_client_key_types_and_formats(reactor, tmp_path, keys, kind, fmt):
    """ed25519, ecdsa and rsa client keys authenticate, from OpenSSH, traditional PEM or PKCS#8 files."""
    path = str(tmp_path / f"client_{kind}")
    line = generate_client_key(path, kind=kind)
    key = serialization.load_ssh_private_key(open(path, "rb").read(), password=None)
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, getattr(serialization.PrivateFormat, fmt), serialization.NoEncryption()))
    keys.client_line = line
    b = _start_bank(reactor, tmp_path, keys)
    try:
        s = await _session(reactor, b.endpoint(client_key_path=path))
        assert await guarded(s.listdir("/in"), reactor) == []
        await s.close()
    finally:
        b.factory.disconnect_all()
        await b.port.stopListening()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_unauthorized_client_key(reactor, bank, keys):
    """A client key the server does not list fails with AuthenticationFailed naming user and key."""
    ep = bank.endpoint(client_key_path=keys.stranger_path)
    e = await _expect(AuthenticationFailed, SFTPClient(reactor, ep).connect(), reactor)
    assert "'gw'" in str(e) and fingerprint(public_key_line(keys.stranger_path)) in str(e)
    assert bank.events == []


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_path_escape_refused(reactor, bank, tmp_path):
    """Neither .. nor symlinks let a client read, list or write outside the server's root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.symlink(outside / "secret", bank.root / "out" / "link.rsp")
    os.symlink(outside, bank.root / "out" / "escape")
    s = await _session(reactor, bank.endpoint())
    try:
        for path in ("/../outside/secret", "../../outside/secret", "/out/link.rsp", "/out/escape/secret"):
            e = await _expect(SFTPError, s.read_bytes(path, 100), reactor)
            assert e.code == FX_PERMISSION_DENIED, path
            await _expect(SFTPError, s.exists(path), reactor)
        await _expect(SFTPError, s.listdir("/out/escape"), reactor)
        await _expect(SFTPError, s.listdir("/.."), reactor)
        await _expect(SFTPError, s.upload_bytes(b"pwned", "/../outside", "pwn.txt"), reactor)
        await _expect(SFTPError, s.upload_bytes(b"pwned", "/out/escape", "pwn.txt"), reactor)
        await _expect(SFTPError, s.remove("/out/escape/secret"), reactor)
        assert await guarded(s.listdir("/out"), reactor) == []
    finally:
        await s.close()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_20mb_round_trip(reactor, bank, tmp_path):
    """A 20 MiB file goes up and comes back byte-exact."""
    data = os.urandom(20 * 1024 * 1024)
    src, back = tmp_path / "big.req", tmp_path / "big.back"
    src.write_bytes(data)
    s = await _session(reactor, bank.endpoint())
    try:
        t0 = time.perf_counter()
        await guarded(s.upload(str(src), "/in", "big.req"), reactor)
        t1 = time.perf_counter()
        await guarded(s.download("/in/big.req", str(back), len(data)), reactor)
        t2 = time.perf_counter()
    finally:
        await s.close()
    print(f"\nConch<->Conch 20 MiB: upload {20 / (t1 - t0):.0f} MiB/s, download {20 / (t2 - t1):.0f} MiB/s")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (bank.root / "in" / "big.req").stat().st_size == len(data)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_stalled_server_times_out(reactor, bank):
    """When the server stops answering, the pending operation fails with SFTPError after idle_timeout."""
    s = await _session(reactor, bank.endpoint(idle_timeout=0.5))
    (server,) = bank.factory.connections
    server.transport.pauseProducing()
    t0 = reactor.seconds()
    e = await _expect(SFTPError, s.listdir("/in"), reactor)
    assert "no reply within 0.5s" in str(e)
    assert 0.4 <= reactor.seconds() - t0 < 5
    await _expect(SFTPError, s.exists("/in"), reactor)
    await s.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_dropped_connection_fails_download(reactor, bank, tmp_path):
    """A connection cut mid-download fails it with SFTPError and leaves no local file."""
    (bank.root / "out" / "big.rsp").write_bytes(os.urandom(8 * 1024 * 1024))

    def cut(op, *args):
        if op == "open" and args[0] == "/out/big.rsp":
            reactor.callLater(0, bank.factory.disconnect_all)

    bank.hooks.append(cut)
    local = tmp_path / "big.rsp"
    s = await _session(reactor, bank.endpoint())
    e = await _expect(SFTPError, s.download("/out/big.rsp", str(local), 10**8), reactor)
    assert "connection lost" in str(e)
    assert not local.exists() and not (tmp_path / "big.rsp.part").exists()
    await _expect(SFTPError, s.listdir("/out"), reactor)
    await s.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_connect_timeout_on_silent_server(reactor, keys):
    """A server that accepts TCP but never speaks SSH fails connect() after connect_timeout."""
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    try:
        ep = SFTPEndpoint("127.0.0.1", port.getHost().port, "gw", keys.client_path, keys.host_line, connect_timeout=0.5)
        e = await _expect(SFTPError, SFTPClient(reactor, ep).connect(), reactor)
        assert "within 0.5s" in str(e)
    finally:
        await port.stopListening()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_connection_refused(reactor, keys):
    """Connecting to a closed port fails with SFTPError naming the address."""
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    ep = SFTPEndpoint("127.0.0.1", number, "gw", keys.client_path, keys.host_line)
    e = await _expect(SFTPError, SFTPClient(reactor, ep).connect(), reactor)
    assert f"127.0.0.1:{number}" in str(e)


def test_bad_configuration_refused_at_construction(reactor, keys, tmp_path):
    """A malformed pin or a public key given as client key is refused when the client is built."""
    ep = SFTPEndpoint("127.0.0.1", 22, "gw", keys.client_path, "not a key")
    with pytest.raises(ValueError, match="host_key"):
        SFTPClient(reactor, ep)
    ep = SFTPEndpoint("127.0.0.1", 22, "gw", keys.client_path + ".pub", keys.host_line)
    with pytest.raises(ValueError, match="client_key_path"):
        SFTPClient(reactor, ep)


def test_fingerprint_matches_ssh_keygen(keys):
    """fingerprint() prints what `ssh-keygen -l` prints for the same key."""
    if shutil.which("ssh-keygen") is None:
        if os.environ.get("CI"):
            pytest.fail("ssh-keygen missing: CI must install openssh-client (tests/services.sh)")
        pytest.skip("ssh-keygen not installed")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", keys.host_path + ".pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.split()[1] == fingerprint(keys.host_line)


# -- against a real OpenSSH server -------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """OpenSSH's sshd on a loopback port, authorising an ed25519 and an RSA client key for the current user."""
    if not os.path.exists(SSHD):
        if os.environ.get("CI"):
            pytest.fail(f"{SSHD} missing: CI must install openssh-server")
        pytest.skip(f"{SSHD} not installed")
    d = tmp_path_factory.mktemp("sshd")
    env = SimpleNamespace(dir=d)
    env.host_path = str(d / "host_key")
    env.host_line = generate_host_key(env.host_path)
    env.client_path = str(d / "client_ed25519")
    env.rsa_path = str(d / "client_rsa")
    authorized = [generate_client_key(env.client_path), generate_client_key(env.rsa_path, kind="rsa")]
    (d / "authorized_keys").write_text("\n".join(authorized) + "\n")
    env.user = subprocess.run(["id", "-un"], check=True, capture_output=True, text=True).stdout.strip()
    # Privilege separation directory; Debian's package creates it only at boot.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    proc = None
    lines: list[str] = []
    for _ in range(3):
        port = _free_port()
        cfg = d / "sshd_config"
        cfg.write_text(
            f"""Port {port}
ListenAddress 127.0.0.1
HostKey {env.host_path}
AuthorizedKeysFile {d / "authorized_keys"}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
PidFile {d / "sshd.pid"}
UseDNS no
"""
        )
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = []
        listening = threading.Event()
        ended = threading.Event()

        def drain(stream=proc.stderr, lines=lines, listening=listening, ended=ended, port=port):
            # Drained for the server's whole life so its log pipe never fills.
            for line in stream:
                lines.append(line)
                if f"Server listening on 127.0.0.1 port {port}" in line:
                    listening.set()
            ended.set()
            listening.set()

        threading.Thread(target=drain, daemon=True).start()
        listening.wait(timeout=20)
        if not ended.is_set():
            break
        proc.wait(timeout=10)  # it exited: most likely the port was taken meanwhile
        proc = None
    if proc is None:
        pytest.fail("sshd did not start:\n" + "".join(lines))
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    env.port = port
    env.log = lines
    env.endpoint = lambda **over: SFTPEndpoint(
        **{
            "host": "127.0.0.1",
            "port": port,
            "username": env.user,
            "client_key_path": env.client_path,
            "host_key": env.host_line,
            **over,
        }
    )
    yield env
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.sshd
@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_openssh_upload_download_listdir_rename(reactor, sshd, tmp_path):
    """Against OpenSSH: upload via temp name, listdir hides temp files, download is exact, re-upload replaces."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / ".B9.req.part").write_bytes(b"in progress")
    (remote / "B8.req.tmp").write_bytes(b"in progress")
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "B1.req"
    src.write_bytes(data)
    local = tmp_path / "B1.back"
    s = await _session(reactor, sshd.endpoint())
    try:
        assert b"posix-rename@openssh.com" in s.server_extensions
        await guarded(s.upload(str(src), str(remote), "B1.req"), reactor)
        assert await guarded(s.listdir(str(remote)), reactor) == ["B1.req"]
        assert await guarded(s.download(str(remote / "B1.req"), str(local), len(data)), reactor) == len(data)
        assert local.read_bytes() == data
        await guarded(s.upload_bytes(b"second version", str(remote), "B1.req"), reactor)
        assert await guarded(s.read_bytes(str(remote / "B1.req"), 100), reactor) == b"second version"
        assert await guarded(s.exists(str(remote / "B1.req")), reactor) is True
        await guarded(s.remove(str(remote / "B1.req")), reactor)
        assert await guarded(s.exists(str(remote / "B1.req")), reactor) is False
    finally:
        await s.close()
    assert sorted(p.name for p in remote.iterdir()) == [".B9.req.part", "B8.req.tmp"]


@pytest.mark.sshd
@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_openssh_rsa_key_and_fingerprint_pin(reactor, sshd, tmp_path):
    """Against OpenSSH: an RSA client key authenticates (rsa-sha2) and a SHA256: pin from ssh-keygen works."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", sshd.host_path + ".pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pin = out.split()[1]
    s = await _session(reactor, sshd.endpoint(client_key_path=sshd.rsa_path, host_key=pin))
    try:
        assert await guarded(s.listdir(str(tmp_path)), reactor) == []
    finally:
        await s.close()


@pytest.mark.sshd
@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_openssh_wrong_pin(reactor, sshd, keys):
    """Against OpenSSH: a wrong pin fails with HostKeyMismatch before authenticating."""
    e = await _expect(HostKeyMismatch, SFTPClient(reactor, sshd.endpoint(host_key=keys.host_line)).connect(), reactor)
    assert e.presented == fingerprint(sshd.host_line)


@pytest.mark.sshd
@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_openssh_20mb_round_trip(reactor, sshd, tmp_path):
    """Against OpenSSH: a 20 MiB file goes up and comes back byte-exact."""
    data = os.urandom(20 * 1024 * 1024)
    src, back = tmp_path / "big.req", tmp_path / "big.back"
    src.write_bytes(data)
    remote = tmp_path / "remote"
    remote.mkdir()
    s = await _session(reactor, sshd.endpoint())
    try:
        t0 = time.perf_counter()
        await guarded(s.upload(str(src), str(remote), "big.req"), reactor)
        t1 = time.perf_counter()
        await guarded(s.download(str(remote / "big.req"), str(back), len(data)), reactor)
        t2 = time.perf_counter()
    finally:
        await s.close()
    print(f"\nConch->OpenSSH 20 MiB: upload {20 / (t1 - t0):.0f} MiB/s, download {20 / (t2 - t1):.0f} MiB/s")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
