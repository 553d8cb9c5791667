"""Routing rules: top-k, capacity drops, expert choice, and the expert-choice decode rule."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from moepim.models.routing import (
    apply_capacity,
    capacity_limit,
    expert_choice_capacity,
    expert_choice_decode,
    expert_choice_mask,
    topk_mask,
)

int_scores = st.integers(1, 12).flatmap(lambda t: st.integers(1, 10).flatmap(
    lambda e: arrays(np.int64, (t, e), elements=st.integers(-4, 4))))


@settings(max_examples=300, deadline=None)
@given(int_scores, st.data())
def test_topk_picks_k_distinct_largest(scores, data):
    k = data.draw(st.integers(1, scores.shape[1]))
    mask = topk_mask(scores, k)
    assert (mask.sum(axis=1) == k).all()
    for t in range(scores.shape[0]):
        picked, rest = scores[t][mask[t]], scores[t][~mask[t]]
        if rest.size:
            assert picked.min() >= rest.max()
            # tie-break: a picked expert never has a higher index than an unpicked equal one
            tie = picked.min()
            hi_pick = np.flatnonzero(mask[t] & (scores[t] == tie)).max()
            lo_rest = np.flatnonzero(~mask[t] & (scores[t] == tie))
            assert not lo_rest.size or lo_rest.min() > hi_pick


@settings(max_examples=300, deadline=None)
@given(int_scores, st.data())
def test_expert_choice_gives_every_expert_exactly_c_tokens(scores, data):
    c = data.draw(st.integers(1, scores.shape[0]))
    mask = expert_choice_mask(scores, c)
    assert (mask.sum(axis=0) == c).all()
    for e in range(scores.shape[1]):
        col = scores[:, e]
        if (~mask[:, e]).any():
            assert col[mask[:, e]].min() >= col[~mask[:, e]].max()   # no unpicked outscores


@settings(max_examples=300, deadline=None)
@given(int_scores, st.floats(0.25, 4.0))
def test_decode_rule_equals_full_recomputation(scores, factor):
    """The new token's experts from earlier scores = column top-C over the whole window."""
    L, n_experts = scores.shape
    new = expert_choice_decode(scores[:-1], scores[-1], factor)
    full = expert_choice_mask(scores, expert_choice_capacity(L, n_experts, factor))[-1]
    np.testing.assert_array_equal(new, full)


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 8))), st.integers(1, 10))
def test_capacity_drops_follow_token_order(mask, capacity):
    kept, dropped = apply_capacity(mask, capacity)
    assert (kept | dropped == mask).all() and not (kept & dropped).any()
    assert (kept.sum(axis=0) == np.minimum(mask.sum(axis=0), capacity)).all()
    for e in range(mask.shape[1]):
        tokens = np.flatnonzero(mask[:, e])
        assert (np.flatnonzero(kept[:, e]) == tokens[:capacity]).all()


def test_capacity_formula_and_errors():
    assert capacity_limit(64, 128, 1, 1.25) == 1            # ceil(0.625)
    assert capacity_limit(512, 8, 2, 1.25) == 160
    assert expert_choice_capacity(32, 16, 4.0) == 8
    assert expert_choice_capacity(3, 16, 2.0) == 1
    with pytest.raises(ValueError, match="top_k=5"):
        topk_mask(np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="capacity=0"):
        expert_choice_mask(np.zeros((3, 2)), 0)
    with pytest.raises(ValueError, match="capacity=0"):
        apply_capacity(np.zeros((3, 2), dtype=bool), 0)


def test_topk_agrees_with_torch_on_distinct_scores():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((50, 16))
    ours = topk_mask(scores, 4)
    idx = torch.topk(torch.tensor(scores), 4, dim=-1).indices.numpy()
    theirs = np.zeros_like(ours)
    np.put_along_axis(theirs, idx, True, axis=-1)
    np.testing.assert_array_equal(ours, theirs)
