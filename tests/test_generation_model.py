"""Golden generation loop (``moepim.models.generation``): the four cache modes generate the
same tokens and the same output rows bit for bit (KV- and GO-cached decode equal to
recomputation), on token-choice and expert-choice routers, grouped-query and multi-query
attention, RMSNorm and LayerNorm; and each mode's work per step is ordered as the caches
promise (none >= kv >= kv_go, none >= go >= kv_go)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moepim.models.generation import MODES, StepWork, build_generator, generate, step_work
from moepim.sim.config import REPO_ROOT, load_model

REDUCED = REPO_ROOT / "configs" / "models" / "reduced"
COMPUTE = ("embed_rows", "attn_norm_rows", "q_rows", "kv_rows", "attn_rows", "attn_keys",
           "o_rows", "moe_rows")


def tiny(name, **changes):
    return dataclasses.replace(load_model(REDUCED / f"{name}.yaml"), **changes)


def _all_modes(cfg, n_prompt, n_generate, seed):
    prompt = np.random.default_rng(seed).integers(0, cfg.vocab_size, n_prompt).tolist()
    gen = build_generator(cfg, prompt, seed=seed)
    return {m: generate(gen, prompt, n_generate, m) for m in MODES}


def _assert_same(results):
    base = results["none"]
    for mode, r in results.items():
        assert r.tokens == base.tokens, f"{mode}: tokens"
        for step, (a, b) in enumerate(zip(r.rows, base.rows)):
            np.testing.assert_array_equal(a, b, err_msg=f"{mode}: step {step} output row")


@pytest.mark.parametrize("name, changes", [
    ("tiny-swiglu-256", {}),                                      # top-2, RMSNorm, MHA
    ("tiny-ec-256", {"n_kv_heads": 2}),                           # expert choice, GQA
    ("tiny-ec-256", {"norm": "layernorm", "n_kv_heads": 1}),      # LayerNorm, multi-query
])
def test_every_mode_generates_the_same_tokens(name, changes):
    results = _all_modes(tiny(name, **changes), n_prompt=5, n_generate=4, seed=2)
    _assert_same(results)
    assert len(results["kv_go"].tokens) == 4
    # the generated tokens are not all one value (the loop feeds back real choices)
    assert len(set(results["none"].tokens)) > 1


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), heads=st.sampled_from([(4, 4), (4, 2), (4, 1)]),
       n_prompt=st.integers(1, 5), norm=st.sampled_from(["rmsnorm", "layernorm"]))
def test_modes_agree_on_random_small_configs(seed, heads, n_prompt, norm):
    cfg = tiny("tiny-ec-256", n_heads=heads[0], n_kv_heads=heads[1], norm=norm)
    _assert_same(_all_modes(cfg, n_prompt, 3, seed))


def test_step_work_by_hand():
    """A 3-token prompt, decode step 2 (L = 5): ``none`` recomputes every row and every
    key (5 * 6 / 2 = 15); ``kv`` projects K/V for the new row only and reads the 4 cached
    rows back once for every row's attention (15 keys); ``go`` attends from the new row only
    (5 keys) but projects K/V for all 5; ``kv_go`` does one row and reads the 4 cached
    ones."""
    none, kv, go, kvgo = (step_work(m, 2, 3) for m in MODES)
    assert (none.q_rows, none.kv_rows, none.attn_keys, none.moe_rows) == (5, 5, 15, 5)
    assert (kv.q_rows, kv.kv_rows, kv.attn_keys, kv.kv_read_rows, kv.kv_write_rows) == \
        (5, 1, 15, 4, 1)
    assert (go.q_rows, go.kv_rows, go.attn_keys, go.moe_rows, go.go_rows) == (1, 5, 5, 1, 4)
    assert (kvgo.embed_rows, kvgo.q_rows, kvgo.kv_rows, kvgo.attn_keys, kvgo.kv_read_rows,
            kvgo.moe_cached) == (1, 1, 1, 5, 4, True)
    assert none.lm_rows == kvgo.lm_rows == 1
    # the prompt step is the same work in every mode, but for what the caches keep
    p = [step_work(m, 0, 3) for m in MODES]
    assert {dataclasses.replace(w, kv_write_rows=0) for w in p} == \
        {dataclasses.replace(p[0], kv_write_rows=0)}
    assert [w.kv_write_rows for w in p] == [0, 3, 0, 3]


@settings(max_examples=30, deadline=None)
@given(n_prompt=st.integers(1, 64), step=st.integers(1, 64))
def test_cached_modes_never_do_more_work(n_prompt, step):
    w = {m: step_work(m, step, n_prompt) for m in MODES}
    for field in COMPUTE:
        none, kv, go, kvgo = (getattr(w[m], field) for m in MODES)
        assert none >= kv >= kvgo, field
        assert none >= go >= kvgo, field
    assert w["kv_go"].attn_keys == n_prompt + step


def test_generation_refuses_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        step_work("kvgo", 1, 3)
    cfg = tiny("tiny-swiglu-256")
    gen = build_generator(cfg, [1, 2], seed=1)
    with pytest.raises(ValueError, match="n_generate"):
        generate(gen, [1, 2], 0, "none")
    with pytest.raises(ValueError, match="mode"):
        generate(gen, [1, 2], 2, "cache")
    assert isinstance(step_work("none", 0, 1), StepWork)
