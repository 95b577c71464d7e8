"""The entry point of the `iso20022` dialect: reads its part of a bank file and builds the adapter.

Bank file keys (besides bank_id, name, dialect, payer_acct, payer_name):

    [iso20022]  initiating_party, debtor_agent_id, debtor_agent_bic?, signature ("xmldsig"|"none"),
                refund_account, refund_account_name, status_poll_s, return_poll_s,
                result_working_days, late_return_window_days, statement_daily, transport ("https"|"sftp"),
                max_document_bytes (each received document, capped while reading; 64 MiB),
                charset ("utf-8"|"latin": Latin-only banks get names and remittance text in pinyin),
                max_transfers_per_message, max_message_bytes (0: no limit; a batch over either goes
                out as several pain.001 messages {BatchNo}-{part:03d})
    [https]     base_url, server_name?, timeout_s, max_body_bytes (a report page, bytes read; 1 GiB)
                                                                           (transport "https")
    [sftp]      as a cnbank bank's [sftp]: host, port, username, client_key, host_key, in_dir, out_dir
                                                                           (transport "sftp")
    [keys]      our_rsa_key, our_certificate, bank_certificate, bank_previous_certificate?,
                bank_previous_until?, bank_ca, passphrase_file? | passphrase_env?
    [testing]   allow_unsigned_reports (only with signature = "none" over SFTP: result files that
                nobody authenticates are refused at load unless this says so; never in production)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from zope.interface import provider

from adapters.interface import IBankAdapterFactory


@dataclass(frozen=True)
class IsoSettings:
    initiating_party: str
    debtor_agent_id: str
    debtor_agent_bic: str
    signature: str
    refund_account: str
    refund_account_name: str
    status_poll_s: float
    return_poll_s: float
    result_working_days: int
    late_return_window_days: int
    statement_daily: bool
    transport: str
    base_url: str
    server_name: str
    timeout_s: float
    max_body_bytes: int
    our_rsa_key: str
    our_certificate: str
    bank_certificate: str
    bank_previous_certificate: str
    bank_previous_until: str
    bank_ca: str
    passphrase_file: str
    passphrase_env: str
    allow_unencrypted: bool = False   # [keys]: our RSA key may be plain (demo/tests only; warned at start)
    max_document_bytes: int = 64 * 1024 * 1024
    charset: str = "utf-8"
    max_transfers_per_message: int = 0
    max_message_bytes: int = 0
    allow_unsigned_reports: bool = False
    link_alarm_after_s: float = 300.0   # one bank-link-down episode once the link fails this long
    sftp: Any = None          # adapters.settings.SftpSettings when transport = "sftp"


def _schemas():
    from adapters.settings import REQUIRED, Field, one_of, pattern, positive  # noqa: F401
    top = {"iso20022": Field(dict), "https": Field(dict, None), "sftp": Field(dict, None),
           "keys": Field(dict), "testing": Field(dict, None)}
    dialect = {
        "initiating_party": Field(str),
        "debtor_agent_id": Field(str),
        "debtor_agent_bic": Field(str, "", pattern(r"([A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?)?",
                                                   "a BIC (8 or 11 characters) or empty")),
        "signature": Field(str, "xmldsig", one_of("xmldsig", "none")),
        "refund_account": Field(str, check=pattern(r"[0-9A-Za-z]{4,34}", "4 to 34 letters or digits")),
        "refund_account_name": Field(str),
        "status_poll_s": Field(float, 5.0, positive),
        "return_poll_s": Field(float, 3600.0, positive),
        "link_alarm_after_s": Field(float, 300.0, positive),   # bank-link-down once failing this long
        "result_working_days": Field(int, 2, positive),
        "late_return_window_days": Field(int, 30, positive),
        # read the feed once a day for camt.053 even when no batch is open (statements are pushed)
        "statement_daily": Field(bool, True),
        "transport": Field(str, "https", one_of("https", "sftp")),
        "max_document_bytes": Field(int, 64 * 1024 * 1024, positive),
        "charset": Field(str, "utf-8", one_of("utf-8", "latin")),
        "max_transfers_per_message": Field(int, 0),
        "max_message_bytes": Field(int, 0),
    }
    https = {
        "base_url": Field(str, check=pattern(r"https://[^\s]+", "an https:// URL")),
        "server_name": Field(str, ""),
        "timeout_s": Field(float, 60.0, positive),
        # A page is parsed as it arrives and each document capped on its own, so this bounds
        # the bytes read for one page (time on the wire), not the memory held.
        "max_body_bytes": Field(int, 1024 * 1024 * 1024, positive),
    }
    keys = {
        "our_rsa_key": Field(str, path=True),
        "our_certificate": Field(str, path=True),
        "bank_certificate": Field(str, path=True),
        "bank_previous_certificate": Field(str, "", path=True),
        "bank_previous_until": Field(str, "", pattern(r"([0-9]{4}-[0-9]{2}-[0-9]{2})?", "a date YYYY-MM-DD")),
        "bank_ca": Field(str, "", path=True),        # required for transport https
        "passphrase_file": Field(str, "", path=True),
        "passphrase_env": Field(str, ""),
        "allow_unencrypted": Field(bool, False),
    }
    testing = {"allow_unsigned_reports": Field(bool, False)}
    return top, dialect, https, keys, testing


@provider(IBankAdapterFactory)
class factory:  # noqa: N801  (the entry point's object)
    dialect = "iso20022"

    @staticmethod
    def load_settings(reader, data, base_dir):
        top_s, dialect_s, https_s, keys_s, testing_s = _schemas()
        top = reader.table(data, "", top_s)
        d = reader.table(top["iso20022"] or {}, "iso20022", dialect_s)
        k = reader.table(top["keys"] or {}, "keys", keys_s)
        t_s = reader.table(top["testing"] or {}, "testing", testing_s)
        if d.get("signature") == "none" and d.get("transport") == "sftp" and not t_s.get("allow_unsigned_reports"):
            reader.err("iso20022.signature", '"none" with transport "sftp" takes result files nobody '
                                             'authenticates (anyone who can write the out folder could '
                                             'report a batch paid): refused unless [testing] '
                                             'allow_unsigned_reports = true')
        for key in ("max_transfers_per_message", "max_message_bytes"):
            if isinstance(d.get(key), int) and d[key] < 0:
                reader.err(f"iso20022.{key}", "must be 0 (no limit) or a positive integer")
        sftp = None
        if d.get("transport") == "sftp":
            from adapters.settings import SFTP, SftpSettings
            t = reader.table(top["sftp"] or {}, "sftp", SFTP)
            if t.get("client_key") and not os.path.isfile(t["client_key"]):
                reader.err("sftp.client_key", f"file {t['client_key']} does not exist")
            sftp = SftpSettings(**t) if None not in t.values() else None
            h = {"base_url": "", "server_name": "", "timeout_s": 60.0, "max_body_bytes": 1024 * 1024 * 1024}
        else:
            h = reader.table(top["https"] or {}, "https", https_s)
            if not k.get("bank_ca"):
                reader.err("keys.bank_ca", "is required for transport \"https\" (the bank's CA for TLS)")
        for key in ("our_rsa_key", "our_certificate", "bank_certificate", "bank_previous_certificate",
                    "bank_ca", "passphrase_file"):
            if k.get(key) and not os.path.isfile(k[key]):
                reader.err(f"keys.{key}", f"file {k[key]} does not exist")
        if bool(k.get("bank_previous_certificate")) != bool(k.get("bank_previous_until")):
            reader.err("keys.bank_previous_until", "bank_previous_certificate and bank_previous_until "
                                                  "go together: set both or neither")
        if k.get("passphrase_file") and k.get("passphrase_env"):
            reader.err("keys.passphrase_env", "set passphrase_file or passphrase_env, not both")
        if any(v is None for v in (*d.values(), *h.values(), *k.values())) or (
                d.get("transport") == "sftp" and sftp is None):
            return None
        return IsoSettings(**d, **h, **k, allow_unsigned_reports=bool(t_s.get("allow_unsigned_reports")),
                           sftp=sftp)

    @staticmethod
    def make(reactor, bank, cfg, faults):
        from adapters.https import HttpsBankClient
        from adapters.iso20022.adapter import IsoAdapter
        from adapters import keys as keystore
        from adapters.settings import AdapterError, bank_passphrase, require_encrypted
        s = bank.settings
        passphrase = bank_passphrase(bank.file, s.passphrase_file, s.passphrase_env)
        require_encrypted(bank.file, "keys.our_rsa_key", s.our_rsa_key, s.allow_unencrypted)
        try:
            key = keystore.load_private_key(s.our_rsa_key, passphrase)
        except (keystore.KeystoreError, OSError) as e:
            raise AdapterError(f"{bank.file}: keys.our_rsa_key: {e}") from None
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        try:
            cert = keystore.load_certificate(s.our_certificate)
        except (keystore.KeystoreError, OSError) as e:
            raise AdapterError(f"{bank.file}: keys.our_certificate: {e}") from None
        try:
            rotation = keystore.CertRotation(
                s.bank_certificate, s.bank_previous_certificate or None,
                datetime.date.fromisoformat(s.bank_previous_until) if s.bank_previous_until else None)
        except (keystore.KeystoreError, OSError, ValueError) as e:
            raise AdapterError(f"{bank.file}: keys.bank_certificate: {e}") from None
        pem = serialization.Encoding.PEM

        def pinned(now):
            return [(c.public_bytes(pem), None) for c in rotation.acceptable(now)]
        if s.transport == "sftp":
            from adapters.iso20022.sftp_transport import SftpIsoTransport
            from adapters.sftp import SFTPClient, SFTPEndpoint
            t = s.sftp
            try:
                sftp = SFTPClient(reactor, SFTPEndpoint(
                    host=t.host, port=t.port, username=t.username, client_key_path=t.client_key,
                    host_key=t.host_key, connect_timeout=t.connect_timeout_s, idle_timeout=t.idle_timeout_s))
            except ValueError as e:
                raise AdapterError(f"{bank.file}: sftp.client_key: {e}") from None
            client = SftpIsoTransport(sftp, t.in_dir, t.out_dir, t.max_file_bytes, s.max_document_bytes)
        else:
            try:
                ca = keystore.load_certificate(s.bank_ca)
            except (keystore.KeystoreError, OSError) as e:
                raise AdapterError(f"{bank.file}: keys.bank_ca: {e}") from None
            client = HttpsBankClient(reactor, s.base_url, ca_pem=ca.public_bytes(pem),
                                     client_cert_pem=cert.public_bytes(pem), client_key_pem=key_pem,
                                     server_name=s.server_name or urlsplit(s.base_url).hostname,
                                     timeout_s=s.timeout_s, max_body=s.max_body_bytes,
                                     max_document=s.max_document_bytes)
        return IsoAdapter(reactor, bank, s, client, key_pem=key_pem, cert_pem=cert.public_bytes(pem),
                          pinned=pinned, work_dir=str(Path(cfg.work_dir) / bank.bank_id))
