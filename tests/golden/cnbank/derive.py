#!/usr/bin/env python3
"""Derives the cnbank golden samples from cnbank.md by hand, with the `openssl` command line.

Independent of the code under test on purpose: this script imports nothing from
protocols/, gateway/, adapters/ or simulators/ (only the standard library), writes
every plaintext byte literally from the layouts in cnbank.md, and leaves every
cryptographic operation to `openssl` (SM3 `dgst -sm3`, SM4 `enc -sm4-cbc` with fixed
key and IV, SM2 `pkeyutl -encrypt` / `-sign -rawin -digest sm3 -pkeyopt
distid:1234567812345678`). The only conversions done here are the ones cnbank.md
spells out: OpenSSL's DER SM2 ciphertext SEQUENCE{x, y, C3, C2} -> 04||x||y||C3||C2
(C1C3C2), a DER ECDSA-Sig-Value SEQUENCE{r, s} -> r||s (raw, 32 bytes each),
base64 without line breaks, and the 8-digit length prefix.

SM2 signatures and encryptions are randomised, so running this again gives other
bytes for SignValue, EncKey, FileEncKey and .sig (everything else is the same); the
tests check those by verifying or decrypting, and the committed files are the ones
of record. Run from anywhere: `python3 tests/golden/cnbank/derive.py`; it reuses
the key files if they exist.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DISTID = "distid:1234567812345678"

# --- fixed inputs (README.md lists them too) ----------------------------------------------
SENDER, RECEIVER = "GW000001", "CNBANK01"
MSG_ID = "GW2026120100000001"
ORDER = "FS3401212026120001"
BATCH = ORDER + "-P01"
BANK_BATCH = "B2026120100000001"
# SM4 keys and IVs (16 bytes each), chosen by hand
BODY_REQ = ("00112233445566778899aabbccddeeff", "0f0e0d0c0b0a09080706050403020100")
BODY_RSP = ("ffeeddccbbaa99887766554433221100", "000102030405060708090a0b0c0d0e0f")
FILE_REQ = ("0123456789abcdeffedcba9876543210", "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
FILE_RSP = ("fedcba98765432100123456789abcdef", "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")


def openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def der_items(der: bytes) -> list[bytes]:
    """The contents of the elements of a DER SEQUENCE (short or long lengths)."""
    assert der[0] == 0x30
    i, out = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F), []
    while i < len(der):
        n = der[i + 1]
        i += 2
        if n >= 0x80:
            k = n & 0x7F
            n = int.from_bytes(der[i:i + k], "big")
            i += k
        out.append(der[i:i + n])
        i += n
    return out


def int32(b: bytes) -> bytes:
    return int.from_bytes(b, "big").to_bytes(32, "big")


def sm2_encrypt_c1c3c2(pub_pem: str, plain: bytes) -> bytes:
    with tempfile.NamedTemporaryFile() as f:
        f.write(plain)
        f.flush()
        x, y, c3, c2 = der_items(openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", pub_pem, "-in", f.name))
    return b"\x04" + int32(x) + int32(y) + c3 + c2


def sm2_sign_raw(key_pem: str, data: bytes) -> bytes:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        r, s = der_items(openssl("pkeyutl", "-sign", "-inkey", key_pem, "-rawin", "-digest", "sm3",
                                 "-pkeyopt", DISTID, "-in", f.name))
    return int32(r) + int32(s)


def sm4_cbc(key_iv: tuple[str, str], plain: bytes) -> bytes:
    return openssl("enc", "-sm4-cbc", "-K", key_iv[0], "-iv", key_iv[1], data=plain)


def sm3_hex(data: bytes) -> str:
    return openssl("dgst", "-sm3", "-r", data=data).split()[0].decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gb(text: str) -> bytes:
    return text.encode("gb18030")


def id_check(first17: str) -> str:
    """GB 11643 check character, from the standard's weights (not from python-stdnum)."""
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return first17 + "10X98765432"[sum(int(c) * w for c, w in zip(first17, weights)) % 11]


def write(name: str, data: bytes | str) -> None:
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main() -> None:
    keys = {n: os.path.join(HERE, n) for n in ("gateway_key.pem", "gateway_pub.pem", "bank_key.pem",
                                                "bank_pub.pem")}
    for who in ("gateway", "bank"):
        if not os.path.exists(keys[f"{who}_key.pem"]):
            openssl("genpkey", "-algorithm", "SM2", "-out", keys[f"{who}_key.pem"])
            openssl("pkey", "-in", keys[f"{who}_key.pem"], "-pubout", "-out", keys[f"{who}_pub.pem"])

    # Batch file {BatchNo}.req (cnbank.md "Files"): GB18030, CRLF, '|', yuan with two decimals.
    # Item 2's name holds U+3402, which GBK cannot encode (four bytes in GB18030).
    id1, id2 = id_check("11010519491231002"), id_check("34012119800101001")
    req_lines = [
        f"H|{BATCH}|{ORDER}|6228480000000000001|长丰县财政局|2|1234.61|20261201|耕地补贴",
        f"D|1|张三|{id1}|6228480000000123457|中国农业银行长丰支行|1234.56|NY2026-01|耕地地力保护补贴|",
        f"D|2|李\u3402|{id2}|6228480000000765432||0.05|NY2026-01||",
    ]
    req_plain = gb("".join(line + "\r\n" for line in req_lines))
    write(f"{BATCH}.req.plain", req_plain)
    write(f"{BATCH}.req", sm4_cbc(FILE_REQ, req_plain))
    write(f"{BATCH}.req.sig", sm2_sign_raw(keys["gateway_key.pem"], req_plain))
    file_sm3 = sm3_hex(req_plain)
    file_enc_key = b64(sm2_encrypt_c1c3c2(keys["bank_pub.pem"], bytes.fromhex("".join(FILE_REQ))))

    # Result file {BatchNo}.rsp: one S line, one F line (R001), ProcDate as PostDate of the F line.
    rsp_lines = [
        f"H|{BATCH}|{BANK_BATCH}|2|1234.61|1|1234.56|1|0.05|20261202",
        "D|1|6228480000000123457|1234.56|S|0000|成功|SN202612020000000001|20261202",
        "D|2|6228480000000765432|0.05|F|R001|账号不存在||20261202",
    ]
    rsp_plain = gb("".join(line + "\r\n" for line in rsp_lines))
    write(f"{BATCH}.rsp.plain", rsp_plain)
    write(f"{BATCH}.rsp", sm4_cbc(FILE_RSP, rsp_plain))
    write(f"{BATCH}.rsp.sig", sm2_sign_raw(keys["bank_key.pem"], rsp_plain))
    rsp_enc_key = b64(sm2_encrypt_c1c3c2(keys["gateway_pub.pem"], bytes.fromhex("".join(FILE_RSP))))

    decl = '<?xml version="1.0" encoding="GB18030"?>'
    # BP01 request: the Head's ten fields in order, empty RetCode/RetMsg as empty elements.
    req_head = (f"<Head><TxCode>BP01</TxCode><Ver>1.0</Ver><SenderId>{SENDER}</SenderId>"
                f"<ReceiverId>{RECEIVER}</ReceiverId><MsgId>{MSG_ID}</MsgId><TxDate>20261201</TxDate>"
                "<TxTime>093000</TxTime><EncFlag>1</EncFlag><RetCode/><RetMsg/></Head>").encode()
    req_inner = gb(f"{decl}<Req><BatchNo>{BATCH}</BatchNo><Kind>PAY</Kind><OrderNo>{ORDER}</OrderNo>"
                   f"<FileName>{BATCH}.req</FileName><FileSM3>{file_sm3}</FileSM3>"
                   f"<FileEncKey>{file_enc_key}</FileEncKey><TotalCount>2</TotalCount>"
                   "<TotalAmount>1234.61</TotalAmount></Req>")
    # BP01 reply: TxCode and MsgId echoed, SenderId/ReceiverId swapped, RetCode 0000.
    rsp_head = (f"<Head><TxCode>BP01</TxCode><Ver>1.0</Ver><SenderId>{RECEIVER}</SenderId>"
                f"<ReceiverId>{SENDER}</ReceiverId><MsgId>{MSG_ID}</MsgId><TxDate>20261201</TxDate>"
                "<TxTime>093001</TxTime><EncFlag>1</EncFlag><RetCode>0000</RetCode><RetMsg/></Head>").encode()
    rsp_inner = gb(f"{decl}<Rsp><BatchNo>{BATCH}</BatchNo><BankBatchNo>{BANK_BATCH}</BankBatchNo></Rsp>")

    for name, head, inner, body_key, their_pub, our_key in (
            ("bp01_request", req_head, req_inner, BODY_REQ, "bank_pub.pem", "gateway_key.pem"),
            ("bp01_reply", rsp_head, rsp_inner, BODY_RSP, "gateway_pub.pem", "bank_key.pem")):
        body = b64(sm4_cbc(body_key, inner))
        enc_key = b64(sm2_encrypt_c1c3c2(keys[their_pub], bytes.fromhex("".join(body_key))))
        sign = b64(sm2_sign_raw(keys[our_key], head + inner))   # sign data = Head bytes || inner XML
        message = (decl.encode() + b"\n<CnBank>" + head + b"<Body>" + body.encode() + b"</Body><EncKey>"
                   + enc_key.encode() + b"</EncKey><SignValue>" + sign.encode() + b"</SignValue></CnBank>")
        write(f"{name}.inner.xml", inner)
        write(f"{name}.head.xml", head)
        write(f"{name}.frame", f"{len(message):08d}".encode() + message)
    write("values.txt", "".join(f"{k}={v}\n" for k, v in (
        ("FileSM3", file_sm3), ("req_id1", id1), ("req_id2", id2), ("FileEncKey.req", file_enc_key),
        ("FileEncKey.rsp", rsp_enc_key))))


if __name__ == "__main__":
    main()
