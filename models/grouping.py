"""Expert grouping: which experts share one peripheral set.

* ``U<n>`` (uniform): groups of ``n`` experts in index order: (0..n-1), (n..2n-1), ...
* ``S<n>`` (sorted, the primary paper's rule): ``s`` = experts sorted by ascending load (ties by
  index); group ``i`` takes the ``n/2`` next-lightest and the ``n/2`` next-heaviest experts:
  ``S2``: ``(s[i], s[E-1-i])``; ``S4``: ``(s[2i], s[2i+1], s[E-1-2i], s[E-2-2i])``. ``n`` must be
  even (``S1`` is ``U1``).
* explicit: a list of groups that partitions ``0..E-1``.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["GroupingError", "make_groups", "check_groups"]


class GroupingError(ValueError):
    """A grouping that cannot be built; the message names the value and what is allowed."""


def check_groups(groups, n_experts: int) -> list[tuple[int, ...]]:
    groups = [tuple(int(e) for e in g) for g in groups]
    flat = sorted(e for g in groups for e in g)
    if flat != list(range(n_experts)) or any(len(g) == 0 for g in groups):
        raise GroupingError(f"groups {groups} do not partition the experts 0..{n_experts - 1}: "
                            "every expert must be in exactly one non-empty group")
    return groups


def make_groups(spec, n_experts: int, loads=None) -> list[tuple[int, ...]]:
    """Groups from ``"U2"``, ``"S4"``, ... or an explicit list; sorted ones need ``loads``."""
    if not isinstance(spec, str):
        return check_groups(spec, n_experts)
    m = re.fullmatch(r"([US])(\d+)", spec.strip().upper())
    if not m:
        raise GroupingError(f"grouping {spec!r} is not allowed: U<n>, S<n> or an explicit list "
                            "of groups")
    kind, n = m.group(1), int(m.group(2))
    if n < 1 or n_experts % n:
        raise GroupingError(f"grouping {spec!r}: group size {n} must divide the "
                            f"{n_experts} experts")
    if kind == "U" or n == 1:
        return [tuple(range(i, i + n)) for i in range(0, n_experts, n)]
    if n % 2:
        raise GroupingError(f"grouping {spec!r}: sorted groups pair light with heavy experts, "
                            "so their size must be even")
    if loads is None:
        raise GroupingError(f"grouping {spec!r} needs expert loads (a profile trace or the "
                            "workload)")
    loads = np.asarray(loads)
    if loads.shape != (n_experts,):
        raise GroupingError(f"loads have shape {loads.shape}; expected ({n_experts},)")
    s = [int(e) for e in np.lexsort((np.arange(n_experts), loads))]
    half = n // 2
    groups = []
    for i in range(n_experts // n):
        light = s[i * half:(i + 1) * half]
        heavy = [s[n_experts - 1 - (i * half + j)] for j in range(half)]
        groups.append(tuple(light + heavy))
    return groups
