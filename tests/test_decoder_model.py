"""Golden decoder layer (``moepim.models.decoder``): the integer norm and RoPE against their
float definitions, KV-cached decode equal to full recomputation bit for bit (grouped-query and
LayerNorm models among them), the integer layer against the float layer."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moepim.models.decoder import (
    NORM_FRAC_BITS,
    NORM_RECIP_BITS,
    ROPE_FRAC_BITS,
    KVCache,
    NormQuant,
    _quant,
    _rope_float,
    _rope_int,
    decoder_forward_float,
    decoder_forward_int,
    init_decoder_weights,
    int_norm,
    kv_row_bytes,
    quantize_decoder,
    rope_tables,
)
from moepim.models.pim import CrossbarMatmul
from moepim.models.quant import Requant, int_matmul, moe_forward_int, route_int
from moepim.models.routing import expert_choice_decode
from moepim.models.workload import hidden_states
from moepim.sim.config import REPO_ROOT, load_model
from moepim.spec.tile import TileSpec

REDUCED = REPO_ROOT / "configs" / "models" / "reduced"


def tiny(name="tiny-swiglu-256", **changes):
    return dataclasses.replace(load_model(REDUCED / f"{name}.yaml"), **changes)


def test_norm_by_hand():
    """RMSNorm of one row [3, -4]: ms = (9 + 16) // 2 = 12, r = isqrt(12 << 16) = 886,
    inv = 2**30 // 886 = 1211898; gain 1, requant mult 1 shift 20: y = (c * inv + 2**19)
    >> 20."""
    nq = NormQuant(gamma=np.array([1, 1]), beta=None, eps=0, requant=Requant(1, 20),
                   center=False)
    assert NORM_FRAC_BITS == 8 and NORM_RECIP_BITS == 30
    assert math.isqrt(12 << 16) == 886 and (1 << 30) // 886 == 1211898
    y = int_norm(np.array([[3, -4]]), nq, 8)
    assert y.tolist() == [[(3 * 1211898 + (1 << 19)) >> 20, (-4 * 1211898 + (1 << 19)) >> 20]]
    # LayerNorm centres on the rounded mean: [3, 6] -> mean round(4.5) = 5 -> c = [-2, 1]
    nq = dataclasses.replace(nq, center=True, beta=np.array([10, -10]))
    ms = (4 + 1) // 2
    inv = (1 << 30) // math.isqrt(ms << 16)
    y = int_norm(np.array([[3, 6]]), nq, 8)
    assert y.tolist() == [[((-2 * inv + (1 << 19)) >> 20) + 10, ((inv + (1 << 19)) >> 20) - 10]]


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_integer_norm_tracks_the_float_norm(norm):
    cfg = tiny(norm=norm)
    w = init_decoder_weights(cfg, seed=4)
    x = hidden_states(cfg, 12, seed=5)
    dq = quantize_decoder(w, cfg, x)
    from moepim.models.decoder import _norm_float
    x_q = _quant(x, dq.s_x, 8)
    h = int_norm(x_q, dq.norms["attn_norm"], 8)
    h_float = _norm_float(torch.as_tensor(x_q * dq.s_x, dtype=torch.float32), w,
                          "attn_norm", cfg).numpy()
    s_h = np.abs(h_float).max() / 127
    # within 2 codes of the float norm of the same (quantised) input
    assert np.abs(h - h_float / s_h).max() <= 2.0


def test_rope_tables_and_rotation_match_float():
    cfg = tiny()
    cos, sin = rope_tables(cfg, 40)
    one = 1 << ROPE_FRAC_BITS
    assert cos[0].tolist() == [one] * (cfg.head_size // 2) and not sin[0].any()
    rng = np.random.default_rng(0)
    t = rng.integers(-80, 81, size=(40, 2, cfg.head_size))    # |pair| < 127: no clamping
    pos = np.arange(40)
    got = _rope_int(t, pos, cfg)
    want = _rope_float(torch.as_tensor(t, dtype=torch.float64), pos, cfg).numpy()
    assert np.abs(got - want).max() <= 1        # one rounding per output


def _decode_equals_recompute(cfg, n_prompt, n_gen, seed, matmul=int_matmul):
    """Prefill, then one token at a time from the KV cache; each new token's output equals
    the last row of the whole window recomputed without a cache. Routing: top-k decides each
    token alone; expert choice takes the prompt's window, then each new token by the GO
    cache's rule on the earlier tokens' scores (both paths get that same selection)."""
    w = init_decoder_weights(cfg, seed)
    x = hidden_states(cfg, n_prompt + n_gen, seed + 7)
    dq = quantize_decoder(w, cfg, x[:n_prompt])
    x_q = _quant(x, dq.s_x, cfg.quant.act_bits)
    _, cache, f = decoder_forward_int(x_q[:n_prompt], dq, matmul=matmul)
    assert len(cache) == n_prompt
    scores, mask = f["routing"].scores, f["routing"].mask
    ec = cfg.router.kind == "expert_choice"
    for t in range(n_prompt, n_prompt + n_gen):
        # full recomputation of the window (its own routing first, for the new scores)
        _, _, g = decoder_forward_int(x_q[:t + 1], dq, matmul=matmul)
        full_routing = new_routing = None
        if ec:
            sel = expert_choice_decode(scores, g["routing"].scores[-1],
                                       cfg.router.ec_capacity_factor)
            scores = np.vstack([scores, g["routing"].scores[-1:]])
            mask = np.vstack([mask, sel[None]])
            full_routing = route_int(g["h2"], dq.moe, mask=mask, matmul=matmul)
            new_routing = route_int(g["h2"][-1:], dq.moe, mask=sel[None], matmul=matmul)
        y_full, _, _ = decoder_forward_int(x_q[:t + 1], dq, routing=full_routing,
                                           matmul=matmul)
        # the cached step: the new token only
        y_new, cache, h = decoder_forward_int(x_q[t:t + 1], dq, cache=cache,
                                              routing=new_routing, matmul=matmul)
        assert len(cache) == t + 1
        np.testing.assert_array_equal(h["h2"][0], g["h2"][-1])
        np.testing.assert_array_equal(y_new[0], y_full[-1])


@pytest.mark.parametrize("name, changes", [
    ("tiny-swiglu-256", {}),                                   # top-2, RMSNorm, MHA
    ("tiny-swiglu-256", {"n_kv_heads": 2}),                    # grouped-query attention
    ("tiny-ec-256", {"norm": "layernorm", "n_kv_heads": 1}),   # LayerNorm, multi-query
    ("tiny-swiglu-256", {"rope_theta": None}),                 # no rotary positions
])
def test_kv_cached_decode_equals_recomputation(name, changes):
    _decode_equals_recompute(tiny(name, **changes), n_prompt=6, n_gen=3, seed=2)


def test_kv_cached_decode_through_crossbar_tiles():
    """The same property with every product on 64x64 crossbar tiles (ADC truncation)."""
    cfg = tiny(n_kv_heads=2)
    mm = CrossbarMatmul(TileSpec(n_rows=64, n_columns=64, n_adcs=8, adc_bits=8))
    _decode_equals_recompute(cfg, n_prompt=4, n_gen=2, seed=3, matmul=mm)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 1)]),
       n_prompt=st.integers(1, 6), norm=st.sampled_from(["rmsnorm", "layernorm"]))
def test_kv_cache_property(seed, heads, n_prompt, norm):
    cfg = tiny(n_heads=heads[0], n_kv_heads=heads[1], norm=norm)
    _decode_equals_recompute(cfg, n_prompt=n_prompt, n_gen=2, seed=seed)


@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 2, "norm": "layernorm"}])
def test_integer_layer_tracks_the_float_layer(changes):
    """Integer decoder layer vs the float layer with the integer routing's selection: the
    relative L2 error of the output stays within the MoE layer's own bound (8 %)."""
    cfg = tiny(**changes)
    w = init_decoder_weights(cfg, seed=11)
    x = hidden_states(cfg, 16, seed=12)
    dq = quantize_decoder(w, cfg, x)
    y_q, _, f = decoder_forward_int(_quant(x, dq.s_x, 8), dq)
    y_float, _ = decoder_forward_float(x, w, cfg, mask=f["routing"].mask)
    y = y_q * dq.s_y
    err = np.linalg.norm(y - y_float.numpy()) / np.linalg.norm(y_float.numpy())
    assert err < 0.08, err
    # the MoE half is exactly moepim.models.quant's layer on the MoE norm's output
    moe, _ = moe_forward_int(f["h2"], dq.moe, routing=f["routing"])
    np.testing.assert_array_equal(moe, f["moe"])


def test_kv_row_bytes_and_empty_cache():
    cfg = tiny(n_kv_heads=2)
    assert kv_row_bytes(cfg) == 2 * 2 * (256 // 4) * 1
    assert len(KVCache.empty(cfg)) == 0


@pytest.mark.parametrize("changes, key", [
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"n_heads": 5}, "n_heads"),
    ({"head_dim": 7}, "head_dim"),
    ({"rope_theta": 0.5}, "rope_theta"),
])
def test_bad_attention_shapes_are_named(changes, key):
    cfg = tiny(**changes)
    assert key in [k for k, _, _ in cfg.validate()]


def test_every_zoo_model_has_a_valid_attention_shape():
    from moepim.sim.config import model_config_paths
    for p in model_config_paths():
        m = load_model(p)
        assert m.n_heads % m.kv_heads == 0 and m.head_size * m.n_heads >= m.d_model // 2
    mixtral = load_model(REPO_ROOT / "configs" / "models" / "mixtral-8x7b.yaml")
    assert (mixtral.n_heads, mixtral.kv_heads, mixtral.head_size) == (32, 8, 128)
