"""The cnbank dialect's part of a bank file: [keys], [tcp], [sftp], [cnbank] and its ids.

Read with the schema helpers of adapters/settings.py by gateway/config.py's
`load_bank` (the common keys, bank_id ... payer_name, are the daemon's); every
error is collected naming the file and key. The values land in the bank's
`BankConfig` (sender_id, receiver_id, key paths, `tcp`, `sftp`, `cnbank`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.settings import (
    SFTP, Field, Reader, SftpSettings, check_file, check_private, one_of, pattern, port, positive,
)

_ID = pattern(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", "letters, digits, '_' or '-' (at most 32)")


@dataclass(frozen=True)
class TcpSettings:
    host: str
    port: int
    connect_timeout_s: float
    read_timeout_s: float
    max_frame_bytes: int


@dataclass(frozen=True)
class CnBankSettings:
    """The per-bank choices of the cnbank dialect (cnbank.md, items marked *(per bank)*)."""

    length_width: int
    encoding: str
    sm2_cipher_order: str
    signature_encoding: str
    user_id: str
    amount_unit: str
    allow_plaintext: bool
    max_clock_skew_s: int
    late_return_window_days: int
    status_poll_s: float
    return_poll_s: float
    result_working_days: int
    statement_daily: bool = False
    heartbeat_s: float = 0.0          # HB01 this often (0 = off)
    link_alarm_after_s: float = 300.0  # one bank-link-down alarm once the link fails this long


# The cnbank dialect's part of a bank file (another dialect's adapter reads its own keys).
_CNBANK_TOP = {
    "sender_id": Field(str, check=_ID),
    "receiver_id": Field(str, check=_ID),
    "keys": Field(dict),
    "tcp": Field(dict),
    "sftp": Field(dict),
    "cnbank": Field(dict, {}),
}
_KEYS = {"our_private": Field(str, path=True), "bank_public": Field(str, path=True),
         "passphrase_file": Field(str, "", path=True), "passphrase_env": Field(str, ""),
         "allow_unencrypted": Field(bool, False)}
_TCP = {
    "host": Field(str),
    "port": Field(int, check=port),
    "connect_timeout_s": Field(float, 10.0, positive),
    "read_timeout_s": Field(float, 60.0, positive),
    "max_frame_bytes": Field(int, 16 * 1024 * 1024, positive),
}
_CNBANK = {
    "length_width": Field(int, 8, positive),
    "encoding": Field(str, "gb18030", one_of("gb18030")),
    "sm2_cipher_order": Field(str, "C1C3C2", one_of("C1C3C2", "C1C2C3")),
    "signature_encoding": Field(str, "raw", one_of("raw", "der")),
    "user_id": Field(str, "1234567812345678"),
    "amount_unit": Field(str, "yuan", one_of("yuan", "fen")),
    "allow_plaintext": Field(bool, False),
    "max_clock_skew_s": Field(int, 300, positive),
    "late_return_window_days": Field(int, 30, positive),
    "status_poll_s": Field(float, 5.0, positive),
    "return_poll_s": Field(float, 3600.0, positive),   # BQ01 of DONE batches, for late returns
    "result_working_days": Field(int, 2, positive),    # the bank's deadline for a batch's results
    "statement_daily": Field(bool, False),              # RC01 for yesterday (and last month on the 1st)
    "heartbeat_s": Field(float, 0.0, lambda v: None if v >= 0 else "must be 0 (off) or more"),
    "link_alarm_after_s": Field(float, 300.0, positive),   # bank-link-down once failing this long
}


def read_bank_file(r: Reader, data: dict, common: dict[str, Field]) -> tuple[dict, dict[str, Any]] | None:
    """A cnbank bank file read whole: the *common* keys' values (the daemon's schema: bank_id ...
    payer_name; read in the same table so an unknown key is named with every known one) and the
    BankConfig fields of the dialect's own part; None with the errors collected in *r*."""
    errors_before = len(r.errors)
    cnb = r.table(data, "", {**common, **_CNBANK_TOP})
    keys = r.table(cnb["keys"] or {}, "keys", _KEYS)
    tcp = r.table(cnb["tcp"] or {}, "tcp", _TCP)
    sftp = r.table(cnb["sftp"] or {}, "sftp", SFTP)
    cn = r.table(cnb["cnbank"] or {}, "cnbank", _CNBANK)
    check_file(r, "keys.our_private", keys.get("our_private"))
    check_file(r, "keys.bank_public", keys.get("bank_public"))
    check_file(r, "sftp.client_key", sftp.get("client_key"))
    check_private(r, "sftp.client_key", sftp.get("client_key"))
    check_file(r, "keys.passphrase_file", keys.get("passphrase_file"))
    if keys.get("passphrase_file") and keys.get("passphrase_env"):
        r.err("keys.passphrase_env", "set passphrase_file or passphrase_env, not both")
    if len(r.errors) > errors_before:
        return None
    return {k: cnb[k] for k in common}, dict(sender_id=cnb["sender_id"], receiver_id=cnb["receiver_id"],
                our_private_key=keys["our_private"], bank_public_key=keys["bank_public"],
                passphrase_file=keys["passphrase_file"], passphrase_env=keys["passphrase_env"],
                allow_unencrypted=bool(keys["allow_unencrypted"]),
                tcp=TcpSettings(**tcp), sftp=SftpSettings(**sftp), cnbank=CnBankSettings(**cn))
