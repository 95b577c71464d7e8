"""`Secret`: a value read from a file (token, passphrase) that no repr, str or copy ever shows.

Its own module, free of cryptography, so that loading the configuration stays quick for gatewayctl.
"""

from __future__ import annotations


class Secret:
    """A secret read from a file; repr and str never show it.

    Deliberately not a dataclass: `dataclasses.asdict` of the configuration
    would otherwise copy the value out into a plain dict.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = ""):
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "source", source)

    @property
    def value(self) -> str:
        return self._value

    def __setattr__(self, name, value):  # noqa: ANN001
        raise AttributeError("Secret is read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret(<redacted>, from {self.source})"

    __str__ = __repr__

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict) -> "Secret":
        return self
