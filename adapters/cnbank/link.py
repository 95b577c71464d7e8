"""The `cnbank` bank link: messages over framed TCP, batch and result files over SFTP.

Binds the pure codecs in `protocols/` to one bank's endpoints, keys and
settings. CPU-heavy work (SM2, SM4 over big files, parsing) runs in threads;
the reactor thread only moves bytes. The link never touches the database: the
flow journals what it returns, before acting on it.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from twisted.internet.threads import deferToThread

from adapters import tcp
from adapters.sftp import SFTPClient, SFTPEndpoint
from protocols.masking import mask_fields
from protocols import cnbank_envelope as env
from protocols import cnbank_files as files
from protocols import sm
from protocols.chinatime import CST

CHUNK = 1 << 20


class LinkError(Exception):
    """Something from the bank failed verification, decryption or parsing; nothing may act on it."""

    def __init__(self, message: str, raw: bytes | None = None, code: str = ""):
        super().__init__(message)
        self.raw = raw
        self.code = code


@dataclass
class Outgoing:
    tx_code: str
    msg_id: str
    raw: bytes
    fields: dict
    decoded: str


@dataclass
class Incoming:
    tx_code: str
    msg_id: str
    raw: bytes
    ret_code: str
    ret_msg: str
    fields: dict
    decoded: str
    journal_id: int | None = None
    # Seconds between the reply's TxDate/TxTime and our clock when over the bank's
    # max_clock_skew_s: accepted (the MsgId echo proves freshness) but alarmed. None: in window.
    skew_s: int | None = None


AUDIT_KEY_SUFFIX = ".gwkey"    # beside a batch file: its key||iv under the gateway's own SM2 key


def decrypt_for_audit(our_key: sm.SM2PrivateKey, wrapped_b64: bytes, ciphertext: bytes) -> bytes:
    """A sent batch file's plaintext from the journal: the audit key (AUDIT_KEY_SUFFIX) opened
    with our private key, then SM4-CBC. Raises ValueError/sm.CryptoError when it cannot."""
    key_iv = sm.sm2_decrypt(our_key, base64.b64decode(wrapped_b64, validate=True), sm.C1C3C2)
    if len(key_iv) != 32:
        raise ValueError(f"the audit key holds {len(key_iv)} bytes, not key||iv (32)")
    dec = sm.SM4CBCDecryptor(key_iv[:16], key_iv[16:])
    return dec.update(ciphertext) + dec.finalize()


@dataclass
class BuiltFile:
    """A batch file ready to upload: ciphertext, signature, and what BP01 says about it."""

    name: str
    cipher_path: str
    sig_path: str
    sm3: str
    enc_key: str
    count: int
    amount: int
    header_decoded: str = ""


@dataclass
class FetchedFile:
    name: str
    cipher_path: str
    sig_path: str
    plain_path: str
    sm3: str


class _HashingWriter:
    """Takes the plaintext: feeds SM3 and the SM2 signature digest, writes it SM4-encrypted."""

    def __init__(self, f, signer_pub: sm.SM2PublicKey, uid: bytes, enc: sm.SM4CBCEncryptor):
        self.f = f
        self.sm3 = sm.SM3Hasher()
        self.sig = sm.SM2DigestHasher(signer_pub, uid)
        self.enc = enc

    def write(self, data: bytes) -> int:
        self.sm3.update(data)
        self.sig.update(data)
        self.f.write(self.enc.update(data))
        return len(data)

    def finish(self) -> None:
        self.f.write(self.enc.finalize())


def _decoded(tx_code: str, direction: str, head: dict, fields: dict) -> str:
    return json.dumps({"tx": tx_code, "dir": direction, "head": head, "body": mask_fields(fields)},
                      ensure_ascii=False, default=str)


class CnBankLink:
    def __init__(self, reactor, bank, our_key: sm.SM2PrivateKey,
                 bank_key: sm.SM2PublicKey, work_dir: str):
        self.reactor = reactor
        self.bank = bank
        self.our_key = our_key
        self.bank_key = bank_key
        self.work_dir = work_dir
        c = bank.cnbank
        self.uid = c.user_id.encode()
        self.settings = env.EnvelopeSettings(
            uid=self.uid, sm2_order=c.sm2_cipher_order, signature=c.signature_encoding,
            encoding=c.encoding, allow_plaintext=c.allow_plaintext, max_skew_s=c.max_clock_skew_s)
        s = bank.sftp
        self.sftp = SFTPClient(reactor, SFTPEndpoint(
            host=s.host, port=s.port, username=s.username, client_key_path=s.client_key,
            host_key=s.host_key, connect_timeout=s.connect_timeout_s, idle_timeout=s.idle_timeout_s))
        os.makedirs(work_dir, exist_ok=True)

    # --- messages ---------------------------------------------------------

    def make_request(self, tx_code: str, fields: dict, now: float) -> Outgoing:
        """Build, encrypt and sign a request (blocking: call in a thread)."""
        t = datetime.datetime.fromtimestamp(now, CST)
        msg_id = uuid.uuid4().hex
        head = env.Head(tx_code=tx_code, sender_id=self.bank.sender_id,
                        receiver_id=self.bank.receiver_id, msg_id=msg_id,
                        tx_date=t.strftime("%Y%m%d"), tx_time=t.strftime("%H%M%S"))
        inner = env.build_inner("Req", fields)
        raw = env.build_message(head, inner, self.our_key, self.bank_key, self.settings)
        decoded = _decoded(tx_code, "out", {"MsgId": msg_id, "TxDate": head.tx_date,
                                             "TxTime": head.tx_time}, fields)
        return Outgoing(tx_code, msg_id, raw, fields, decoded)

    def open_reply(self, out: Outgoing, raw: bytes, now: float) -> Incoming:
        """Decrypt, verify, judge the Head of and parse a reply whole (blocking); LinkError if any
        step fails.

        The Head is judged as the bank judges a request's (cnbank.md, Envelope): it must carry
        the request's TxCode and MsgId with SenderId and ReceiverId swapped, and be well-formed
        (Ver, dates, RetCode); a reply that does not answer the request sent on this connection
        is refused. A time outside max_clock_skew_s is not a refusal (the MsgId echo already
        proves the reply is fresh): it is returned in `skew_s` for the caller to alarm.
        """
        try:
            opened = env.open_message(raw, self.our_key, self.bank_key, self.settings)
        except env.EnvelopeError as e:
            raise LinkError(f"reply to {out.tx_code} {out.msg_id} refused: {e}", raw, e.code) from None
        h = opened.head
        problems = []
        if h.tx_code != out.tx_code:
            problems.append(f"TxCode {h.tx_code} does not answer {out.tx_code}")
        if h.msg_id != out.msg_id:
            problems.append(f"MsgId {h.msg_id} does not answer {out.msg_id}")
        if h.sender_id != self.bank.receiver_id or h.receiver_id != self.bank.sender_id:
            problems.append(f"SenderId/ReceiverId {h.sender_id}/{h.receiver_id} are not the bank's "
                            f"reply to {self.bank.sender_id}/{self.bank.receiver_id}")
        if problems:
            raise LinkError(f"reply to {out.tx_code} {out.msg_id} refused: " + "; ".join(problems),
                            raw, "E999")
        skew_s = None
        when = datetime.datetime.fromtimestamp(now, CST)
        try:
            env.check_head(h, now=when, expect_tx=out.tx_code, max_skew_s=self.settings.max_skew_s,
                           reply=True, expect_sender=self.bank.receiver_id,
                           expect_receiver=self.bank.sender_id)
        except env.EnvelopeError as e:
            if e.code != "E009":
                raise LinkError(f"reply to {out.tx_code} {out.msg_id} refused: {e}", raw,
                                e.code) from None
            # check_head judges the time last: everything else about the Head is good.
            sent = datetime.datetime.strptime(h.tx_date + h.tx_time, "%Y%m%d%H%M%S").replace(tzinfo=CST)
            skew_s = int((sent - when).total_seconds())
        try:
            fields = env.parse_reply(out.tx_code, opened.inner_xml, h.ret_code)
        except env.EnvelopeError as e:
            raise LinkError(f"reply to {out.tx_code} is malformed: {e}", raw, e.code) from None
        decoded = _decoded(out.tx_code, "in", {"MsgId": h.msg_id, "TxDate": h.tx_date,
                                                "TxTime": h.tx_time, "RetCode": h.ret_code,
                                                "RetMsg": h.ret_msg}, fields)
        return Incoming(out.tx_code, h.msg_id, raw, h.ret_code, h.ret_msg, fields, decoded,
                        skew_s=skew_s)

    async def exchange(self, out: Outgoing) -> bytes:
        """Send one request, return the raw reply; tcp.ExchangeError says whether it may have been sent."""
        t = self.bank.tcp
        return await tcp.exchange(self.reactor, t.host, t.port, out.raw,
                                  width=self.bank.cnbank.length_width, max_size=t.max_frame_bytes,
                                  connect_timeout=t.connect_timeout_s, read_timeout=t.read_timeout_s)

    def build(self, tx_code: str, fields: dict, now: float):
        return deferToThread(self.make_request, tx_code, fields, now)

    def open(self, out: Outgoing, raw: bytes, now: float):
        return deferToThread(self.open_reply, out, raw, now)

    # --- files --------------------------------------------------------------

    def write_batch_file(self, header: files.BatchHeader, lines: Iterable[files.BatchLine],
                         kind: str = "PAY", *, blocks: Iterable[list[tuple]] = ()) -> BuiltFile:
        """Write, sign and encrypt a batch file from streamed lines (blocking: call in a thread).

        *blocks*, after *lines*: lists of tuples in BatchLine's field order
        (BatchFileWriter.write_block), the fast way for a large batch.
        """
        name = f"{header.batch_no}.req"
        key, iv = os.urandom(16), os.urandom(16)
        cipher = os.path.join(self.work_dir, name)
        # Encrypted as it is written: the plaintext of personal data never touches the disk, and
        # the file takes its name only once whole.
        part = cipher + ".part"
        try:
            with open(part, "wb") as f:
                hw = _HashingWriter(f, self.our_key.public_key, self.uid, sm.SM4CBCEncryptor(key, iv))
                w = files.BatchFileWriter(hw, header, unit=self.bank.cnbank.amount_unit,
                                          encoding=self.bank.cnbank.encoding, kind=kind)
                for line in lines:
                    w.write_line(line)
                for block in blocks:
                    w.write_block(block)
                w.close()
                hw.finish()
            os.replace(part, cipher)
        except BaseException:
            _unlink(part)
            raise
        signature = sm.sm2_sign_digest(self.our_key, hw.sig.e(),
                                       der=self.bank.cnbank.signature_encoding == "der")
        sig_path = cipher + ".sig"
        with open(sig_path, "wb") as f:
            f.write(signature)
        enc_key = base64.b64encode(
            sm.sm2_encrypt(self.bank_key, key + iv, self.bank.cnbank.sm2_cipher_order)).decode()
        # The same key||iv wrapped for the gateway itself (its own SM2 key): journaled with the
        # upload, so that what was sent can be shown again, audited (gatewayctl journal show
        # --decrypt), when only the bank could open FileEncKey.
        with open(cipher + AUDIT_KEY_SUFFIX, "wb") as f:
            f.write(base64.b64encode(sm.sm2_encrypt(self.our_key.public_key, key + iv, sm.C1C3C2)))
        return BuiltFile(name, cipher, sig_path, hw.sm3.hexdigest(), enc_key,
                         header.total_count, header.total_amount)

    async def upload(self, built: BuiltFile) -> None:
        """Upload the .sig, then the file; each lands under a temporary name and is renamed."""
        session = await self.sftp.connect()
        try:
            await session.upload(built.sig_path, self.bank.sftp.in_dir, built.name + ".sig")
            await session.upload(built.cipher_path, self.bank.sftp.in_dir, built.name)
        finally:
            await session.close()

    async def remove_uploads(self, name: str) -> None:
        session = await self.sftp.connect()
        try:
            for n in (name, name + ".sig"):
                await session.remove(f"{self.bank.sftp.in_dir}/{n}")
        finally:
            await session.close()

    async def download(self, name: str) -> tuple[str, str]:
        """Fetch a complete file and its .sig from the bank's out dir into the work dir."""
        local = os.path.join(self.work_dir, "in-" + name)
        session = await self.sftp.connect()
        try:
            out_dir = self.bank.sftp.out_dir
            await session.download(f"{out_dir}/{name}.sig", local + ".sig", 4096)
            await session.download(f"{out_dir}/{name}", local, self.bank.sftp.max_file_bytes)
        finally:
            await session.close()
        return local, local + ".sig"

    def open_file(self, name: str, cipher_path: str, sig_path: str, enc_key_b64: str,
                  expected_sm3: str) -> FetchedFile:
        """Decrypt, digest-check and verify a downloaded file (blocking); LinkError on any failure."""
        try:
            key_iv = sm.sm2_decrypt(self.our_key, base64.b64decode(enc_key_b64, validate=True),
                                    self.bank.cnbank.sm2_cipher_order)
        except (ValueError, sm.CryptoError) as e:
            raise LinkError(f"{name}: FileEncKey cannot be decrypted: {e}", code="E002") from None
        if len(key_iv) != 32:
            raise LinkError(f"{name}: FileEncKey holds {len(key_iv)} bytes, not key||iv (32)",
                            code="E002")
        plain = cipher_path + ".plain"
        hasher = sm.SM3Hasher()
        sig_hasher = sm.SM2DigestHasher(self.bank_key, self.uid)
        try:
            _decrypt_file(cipher_path, plain, key_iv[:16], key_iv[16:], (hasher, sig_hasher))
        except sm.CryptoError as e:
            _unlink(plain)
            raise LinkError(f"{name}: cannot be decrypted: {e}", code="E002") from None
        digest = hasher.hexdigest()
        if digest.lower() != expected_sm3.lower():
            _unlink(plain)
            raise LinkError(f"{name}: SM3 {digest} does not match FileSM3 {expected_sm3}", code="E006")
        with open(sig_path, "rb") as f:
            signature = f.read(4096)
        if not sm.sm2_verify_digest(self.bank_key, sig_hasher.e(), signature,
                                    der=self.bank.cnbank.signature_encoding == "der"):
            _unlink(plain)
            raise LinkError(f"{name}: the bank's signature (.sig) does not verify", code="E006")
        return FetchedFile(name, cipher_path, sig_path, plain, digest)

    def audit_read(self, kind: str, ciphertext: bytes, key_b64: bytes | str):
        """(header, lines) of a journaled file, opened for an audited or masked view (blocking):
        kind "batch", a batch file this gateway sent, *key_b64* the key||iv it kept under its own
        SM2 key (AUDIT_KEY_SUFFIX); kind "result", a result file the bank sent, *key_b64* its
        FileEncKey. Raises ValueError, sm.CryptoError or files.FileFormatError when it cannot."""
        import io
        c = self.bank.cnbank
        if kind == "batch":
            plain = decrypt_for_audit(self.our_key, key_b64 if isinstance(key_b64, bytes) else key_b64.encode(),
                                      ciphertext)
            return files.read_batch_file(io.BytesIO(plain), unit=c.amount_unit, encoding=c.encoding)
        if kind != "result":
            raise ValueError(f"kind must be batch or result, not {kind!r}")
        key_iv = sm.sm2_decrypt(self.our_key, base64.b64decode(key_b64, validate=True), c.sm2_cipher_order)
        if len(key_iv) != 32:
            raise ValueError(f"FileEncKey holds {len(key_iv)} bytes, not key||iv (32)")
        dec = sm.SM4CBCDecryptor(key_iv[:16], key_iv[16:])
        plain = dec.update(ciphertext) + dec.finalize()
        return files.read_result_file(io.BytesIO(plain), unit=c.amount_unit, encoding=c.encoding)

    def result_lines(self, plain_path: str) -> tuple[files.ResultHeader, Iterator[files.ResultLine]]:
        f = open(plain_path, "rb")  # noqa: SIM115  (closed when the iterator is exhausted)
        try:
            header, lines = files.read_result_file(f, unit=self.bank.cnbank.amount_unit,
                                                   encoding=self.bank.cnbank.encoding)
        except BaseException:
            f.close()
            raise

        def gen():
            try:
                yield from lines
            finally:
                f.close()
        return header, gen()


def _decrypt_file(src: str, dest: str, key: bytes, iv: bytes, hashers) -> None:
    dec = sm.SM4CBCDecryptor(key, iv)
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        def out(data: bytes) -> None:
            for h in hashers:
                h.update(data)
            fo.write(data)
        while chunk := fi.read(CHUNK):
            out(dec.update(chunk))
        out(dec.finalize())


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

