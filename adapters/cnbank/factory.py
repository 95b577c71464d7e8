"""The entry point of the `cnbank` dialect: its settings schema is adapters/cnbank/settings.py
(read through gateway/config.py's load_bank into the bank's BankConfig), its keys loaded here."""

from __future__ import annotations

from zope.interface import provider

from adapters.cnbank.adapter import CnBankAdapter
from adapters.cnbank.link import CnBankLink
from adapters.interface import IBankAdapterFactory
from protocols import keyfile


@provider(IBankAdapterFactory)
class factory:  # noqa: N801  (the entry point's object; a class used as a namespace)
    dialect = "cnbank"

    @staticmethod
    def load_settings(reader, data, base_dir):
        raise AssertionError("cnbank bank files are read by adapters.cnbank.settings.read_bank_file")

    @staticmethod
    def make(reactor, bank, cfg, faults):
        from adapters.settings import AdapterError, bank_passphrase, require_encrypted
        passphrase = bank_passphrase(bank.file, bank.passphrase_file, bank.passphrase_env)
        require_encrypted(bank.file, "keys.our_private", bank.our_private_key, bank.allow_unencrypted)
        try:
            ours = keyfile.read_private_key_file(bank.our_private_key,
                                                 passphrase=passphrase.bytes() if passphrase else None)
        except (keyfile.KeyFileError, OSError) as e:
            raise AdapterError(f"{bank.file}: keys.our_private: {e}") from None
        try:
            theirs = keyfile.read_public_key_file(bank.bank_public_key)
        except (keyfile.KeyFileError, OSError) as e:
            raise AdapterError(f"{bank.file}: keys.bank_public: {e}") from None
        link = CnBankLink(reactor, bank, ours, theirs, f"{cfg.work_dir}/{bank.bank_id}")
        return CnBankAdapter(reactor, bank, link, faults)
