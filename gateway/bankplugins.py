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
from adapters.settings import AdapterError, bank_passphrase, require_encrypted  # noqa: F401  (re-exported)


class UnknownDialect(Exception):
    """No adapter is registered for a dialect, or the registered one is broken."""


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
