"""Bank adapters found by dialect name through the entry-point group `subsidy_gateway.bank_adapters`.

A site adds a bank in its own package by registering a factory there (see
README "Adding a bank"); the factory and every adapter it makes are checked
with zope.interface's verifyObject when loaded, so a half-written adapter stops
the start with a message instead of failing on the first batch.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from adapters.interface import ENTRY_POINT_GROUP, IBankAdapter, IBankAdapterFactory


class UnknownDialect(Exception):
    """No adapter is registered for a dialect, or the registered one is broken."""


class AdapterError(Exception):
    """An adapter cannot be made for a bank; the message names the bank file and key."""


def bank_passphrase(bank_file: str, passphrase_file: str, passphrase_env: str):
    """The passphrase a bank file names for our private key (keys.passphrase_file or
    keys.passphrase_env), or None; AdapterError naming the file and key if it cannot be read."""
    from gateway import keystore
    try:
        if passphrase_file:
            return keystore.Passphrase.from_file(passphrase_file)
        if passphrase_env:
            return keystore.Passphrase.from_env(passphrase_env)
        return None
    except keystore.KeystoreError as e:
        key = "passphrase_file" if passphrase_file else "passphrase_env"
        raise AdapterError(f"{bank_file}: keys.{key}: {e}") from None


def require_encrypted(bank_file: str, key_name: str, path: str, allowed: bool) -> None:
    """Our private key must be encrypted at rest; a plain one only where the bank file's [keys] says
    allow_unencrypted = true (a demo or test installation), and then with a warning at every start.

    AdapterError naming the bank file and key otherwise (also for a key file group or others may
    read, as the loaders refuse it).
    """
    from protocols.keyfile import KeyFileError, read_private_bytes

    from gateway.keystore import private_key_encrypted
    try:
        data = read_private_bytes(path)
    except (KeyFileError, OSError) as e:
        raise AdapterError(f"{bank_file}: {key_name}: {e}") from None
    if private_key_encrypted(data):
        return
    if not allowed:
        raise AdapterError(
            f"{bank_file}: {key_name}: {path} is not encrypted at rest (私钥未加密); encrypt it under a "
            f"passphrase (gatewayctl keys generate/import, keys/README.md) and name passphrase_file or "
            f"passphrase_env, or, on a demo or test installation only, set allow_unencrypted = true in [keys]")
    from twisted.logger import Logger
    Logger(namespace="gateway.bankplugins").warn(
        "{file}: {key}: {path} is NOT encrypted at rest; allowed by [keys] allow_unencrypted = true "
        "(demo and tests only)", file=bank_file, key=key_name, path=path)


def known_dialects() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def factory_for(dialect: str):
    """The verified factory registered for `dialect`; UnknownDialect naming the known ones."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == dialect]
    if not found:
        known = ", ".join(repr(d) for d in known_dialects()) or "none"
        raise UnknownDialect(f"must be one of {known} (the registered dialects), got {dialect!r}; an adapter "
                             f"registers itself in the entry-point group {ENTRY_POINT_GROUP}")
    if len({ep.value for ep in found}) > 1:
        raise UnknownDialect(f"dialect {dialect!r} is registered by more than one package: "
                             f"{', '.join(sorted(ep.value for ep in found))}")
    try:
        factory = found[0].load()
    except Exception as e:  # noqa: BLE001  (a site's broken package: say which)
        raise UnknownDialect(f"dialect {dialect!r}: cannot load {found[0].value}: {e}") from None
    try:
        verifyObject(IBankAdapterFactory, factory)
    except Invalid as e:
        raise UnknownDialect(f"dialect {dialect!r}: {found[0].value} is not a bank adapter factory: "
                             f"{e}") from None
    if factory.dialect != dialect:
        raise UnknownDialect(f"dialect {dialect!r}: {found[0].value} says it is {factory.dialect!r}")
    return factory


def make_adapter(reactor, bank, cfg, faults):
    """The verified adapter for one bank; AdapterError naming the bank file otherwise."""
    try:
        factory = factory_for(bank.dialect)
    except UnknownDialect as e:
        raise AdapterError(f"{bank.file}: dialect: {e}") from None
    adapter = factory.make(reactor, bank, cfg, faults)
    try:
        verifyObject(IBankAdapter, adapter)
    except Invalid as e:
        raise AdapterError(f"{bank.file}: dialect: the {bank.dialect} adapter is incomplete: {e}") from None
    if adapter.bank_id != bank.bank_id:
        raise AdapterError(f"{bank.file}: bank_id: the adapter serves {adapter.bank_id!r}")
    return adapter
