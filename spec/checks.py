"""Argument checks every specification and hardware constructor shares.

Every check raises :class:`ParameterError` naming the argument, the value and what is allowed,
so a constructor fails at once with a message the user can act on.
"""

from __future__ import annotations

__all__ = ["ParameterError", "need", "need_positive", "signed_bits", "index_bits", "ceil_div"]


class ParameterError(ValueError):
    """A constructor argument out of range; carries the argument name, value and rule."""

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={value!r} is not allowed: {allowed}")


def need(cond: bool, name: str, value, allowed: str) -> None:
    if not cond:
        raise ParameterError(name, value, allowed)


def need_positive(name: str, value) -> None:
    need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value,
         "a positive integer")


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer of ``[lo, hi]``."""
    return max((-lo - 1).bit_length() if lo < 0 else 0, hi.bit_length()) + 1


def index_bits(n: int) -> int:
    """Width of an index into ``n`` items (at least 1, so ports never vanish)."""
    return max(1, (n - 1).bit_length())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
