"""Routing rules shared by the float and the integer MoE layers (numpy, any score dtype).

Tie-break everywhere: among equal scores the lower expert index (top-k) or the earlier token
(top-C) wins. This makes every selection a deterministic function of the scores, so integer
scores give bit-reproducible routing.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["topk_mask", "capacity_limit", "apply_capacity", "expert_choice_capacity",
           "expert_choice_mask", "expert_choice_decode"]


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """``(T, E)`` bool: per token the ``k`` highest scores (lower expert index wins ties)."""
    scores = np.asarray(scores)
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"top_k={k} is not allowed: an integer from 1 to {scores.shape[-1]}")
    key = -scores.astype(np.float64 if scores.dtype.kind == "f" else np.int64)
    order = np.argsort(key, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def capacity_limit(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Switch-style expert capacity ``ceil(capacity_factor * tokens * top_k / experts)``."""
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def apply_capacity(mask: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per expert, its first ``capacity`` tokens in token order; return (kept, dropped)."""
    if capacity < 1:
        raise ValueError(f"capacity={capacity} is not allowed: a positive integer")
    rank = np.cumsum(mask, axis=0)             # 1-based position of each token in its queue
    kept = mask & (rank <= capacity)
    return kept, mask & ~kept


def expert_choice_capacity(window: int, n_experts: int, factor: float) -> int:
    """Tokens each expert takes from a window: ``ceil(window * factor / n_experts)``, at most
    the window, at least 1."""
    if window < 1:
        raise ValueError(f"window={window} is not allowed: a positive integer")
    return min(window, max(1, math.ceil(window * factor / n_experts)))


def expert_choice_mask(scores: np.ndarray, capacity: int) -> np.ndarray:
    """``(T, E)`` bool: each expert (column) takes its ``capacity`` best tokens ("column top-K");
    among equal scores the earlier token wins."""
    scores = np.asarray(scores)
    if not 1 <= capacity <= scores.shape[0]:
        raise ValueError(f"capacity={capacity} is not allowed: an integer from 1 to "
                         f"{scores.shape[0]} (the window)")
    return topk_mask(scores.T, capacity).T


def expert_choice_decode(prev_scores: np.ndarray, new_scores: np.ndarray,
                         factor: float) -> np.ndarray:
    """Experts that select a newly generated token (the decode rule the GO cache must meet).

    The window is every token so far: ``L = len(prev_scores) + 1`` and each expert's capacity is
    ``C(L) = expert_choice_capacity(L, E, factor)``. Expert ``e`` selects the new token iff it is
    among the ``C(L)`` best of column ``e`` over all ``L`` tokens, earlier tokens winning ties:
    i.e. fewer than ``C(L)`` earlier tokens score ``>=`` the new token. Earlier tokens'
    selections are never revisited (their outputs already exist), so the decision needs the
    earlier gate scores only, never their hidden states.
    """
    prev = np.asarray(prev_scores)
    new = np.asarray(new_scores)
    n_experts = new.shape[-1]
    cap = expert_choice_capacity(prev.shape[0] + 1, n_experts, factor)
    at_least = (prev >= new[None, :]).sum(axis=0)
    return at_least < cap
