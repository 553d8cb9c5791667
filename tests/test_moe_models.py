"""Model zoo shapes, float vs integer MoE layers, workloads, weights loading."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from moepim.models.moe import (
    WeightsError,
    init_weights,
    load_weights,
    moe_forward_float,
    weight_shapes,
)
from moepim.models.quant import (
    EXP_LUT,
    Requant,
    dequantize_output,
    int_softmax,
    moe_forward_int,
    quantize_input,
    quantize_layer,
)
from moepim.models.workload import make_workload
from moepim.sim.config import ConfigError, load_model, model_config_paths

ZOO = {p.stem: p for p in model_config_paths()}

# published shapes (the checkpoints' config.json, cited in configs/models): d_model, expert d_ff, experts, top-k, 256x256
# crossbars per expert
PUBLISHED = {
    "llama-moe-3.5b-4-16": (4096, 688, 16, 4, 144),
    "llama-moe-3.5b-4-16-paper": (4096, 688, 16, 4, 96),
    "llama-moe-3.5b-2-8": (4096, 1376, 8, 2, 288),
    "mixtral-8x7b": (4096, 14336, 8, 2, 2688),
    "switch-base-128": (768, 3072, 128, 1, 72),
    "qwen1.5-moe-a2.7b": (2048, 1408, 60, 4, 144),
    "deepseek-moe-16b": (2048, 1408, 64, 6, 144),
    "olmoe-1b-7b": (2048, 1024, 64, 8, 96),
}


def test_zoo_is_complete():
    assert set(ZOO) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_zoo_shapes_match_published(name):
    cfg = load_model(ZOO[name])
    d, f, e, k, xbars = PUBLISHED[name]
    assert (cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.router.top_k) == (d, f, e, k)
    assert cfg.crossbars_per_expert() == xbars
    shapes = weight_shapes(cfg)
    n_params = sum(int(np.prod(s)) for n, s in shapes.items() if n.startswith("experts.0."))
    assert n_params == cfg.n_matrices * d * f


def test_zoo_special_features():
    qwen = load_model(ZOO["qwen1.5-moe-a2.7b"])
    assert (qwen.shared.n_shared, qwen.shared.d_ff, qwen.shared.gate) == (1, 5632, "sigmoid")
    ds = load_model(ZOO["deepseek-moe-16b"])
    assert ds.shared.d_ff == 2 * 1408 and not ds.is_moe_layer(0) and ds.is_moe_layer(1)
    sw = load_model(ZOO["switch-base-128"])
    assert sw.router.drop_policy == "drop" and [sw.is_moe_layer(i) for i in range(4)] == \
        [False, True, False, True]
    assert load_model(ZOO["mixtral-8x7b"]).router.renormalize
    assert load_model(ZOO["llama-moe-3.5b-4-16"]).router.kind == "mlp_gate"
    assert load_model(ZOO["llama-moe-3.5b-4-16-paper"]).router.kind == "expert_choice"


def small(name, **kw):
    """A zoo model shrunk for tests (same routing mechanics)."""
    cfg = load_model(ZOO[name])
    shared = dataclasses.replace(cfg.shared, d_ff=96 if cfg.shared.n_shared else 0)
    return dataclasses.replace(cfg, d_model=kw.pop("d_model", 128), d_ff=kw.pop("d_ff", 48),
                               n_experts=kw.pop("n_experts", min(cfg.n_experts, 16)),
                               shared=shared, **kw)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_integer_layer_tracks_float_layer(name):
    """Measured error of the integer layer against float, same routing: bounded at 8 %."""
    cfg = small(name)
    wl = make_workload(cfg, n_prompt=24, n_generate=4, seed=3)
    y_f, _ = moe_forward_float(wl.hidden, wl.weights, cfg, mask=wl.routing.mask)
    y_i = wl.y_dequantized()
    rel = np.linalg.norm(y_i - y_f.numpy()) / np.linalg.norm(y_f.numpy())
    assert rel < 0.08, rel
    # and the integer gate routes like the float gate on nearly every (token, expert)
    assert (wl.routing.mask == wl.routing_float.mask).mean() >= 0.9


def test_workload_is_deterministic():
    cfg = small("qwen1.5-moe-a2.7b")
    a = make_workload(cfg, n_prompt=8, n_generate=2, seed=11)
    b = make_workload(cfg, n_prompt=8, n_generate=2, seed=11)
    c = make_workload(cfg, n_prompt=8, n_generate=2, seed=12)
    digest = lambda w: hashlib.sha256(w.y_q.tobytes() + w.routing.mask.tobytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)
    assert a.y_q.dtype == np.int64 and np.abs(a.y_q).max() <= 127


def test_expert_choice_workload_balances_the_prompt_and_decodes_by_rule():
    cfg = small("llama-moe-3.5b-4-16-paper")
    wl = make_workload(cfg, n_prompt=32, n_generate=8, seed=5)
    per_expert = wl.routing.mask[:32].sum(axis=0)
    assert (per_expert == 8).all()                      # C = ceil(32 * 4 / 16)
    from moepim.models.routing import expert_choice_decode
    for t in range(32, 40):
        np.testing.assert_array_equal(
            wl.routing.mask[t],
            expert_choice_decode(wl.routing.scores[:t], wl.routing.scores[t], 4.0))


def test_switch_drops_over_capacity():
    cfg = small("switch-base-128", n_experts=8)
    wl = make_workload(cfg, n_prompt=64, seed=1)
    cap = int(np.ceil(1.25 * 64 * 1 / 8))
    assert wl.routing.mask.sum(axis=0).max() <= cap
    assert (wl.routing.mask.sum(axis=1) <= 1).all()


def test_trace_drives_routing():
    cfg = small("mixtral-8x7b", n_experts=8)
    trace = np.zeros((10, 8), dtype=np.uint8)
    trace[np.arange(10), np.arange(10) % 8] = 1
    trace[np.arange(10), (np.arange(10) + 3) % 8] = 1
    wl = make_workload(cfg, n_prompt=10, seed=2, trace=trace)
    np.testing.assert_array_equal(wl.routing.mask, trace.astype(bool))
    with pytest.raises(ValueError, match=r"\(10, 8\)"):
        make_workload(cfg, n_prompt=10, seed=2, trace=trace[:, :7])


def test_int_softmax_and_requant():
    r = Requant.from_ratio(0.3, 15)
    assert r.mult < 2 ** 15 and abs(r.mult / 2 ** r.shift - 0.3) < 1e-4
    np.testing.assert_array_equal(r.apply(np.array([10, -10, 0])), [3, -3, 0])
    p = int_softmax(np.array([[5, 5, 5, 5]]), Requant(1, 0))
    assert (p == 16384).all()
    assert EXP_LUT[0] == 65536 and EXP_LUT[16] == round(65536 * np.exp(-1))


def test_weights_roundtrip_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    cfg = small("olmoe-1b-7b", n_experts=4)
    w = init_weights(cfg, 9)
    torch.save(w, tmp_path / "w.pt")
    save_file(w, str(tmp_path / "w.safetensors"))
    for f in ("w.pt", "w.safetensors"):
        loaded = load_weights(tmp_path / f, cfg)
        assert all(torch.equal(loaded[k], w[k]) for k in w)
    bad = dict(w)
    bad["experts.0.up.weight"] = bad["experts.0.up.weight"][:, :5]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"bad.pt: tensor 'experts.0.up.weight' has shape"):
        load_weights(tmp_path / "bad.pt", cfg)
    missing = {k: v for k, v in w.items() if k != "gate.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="'gate.weight' is missing"):
        load_weights(tmp_path / "missing.pt", cfg)


def test_quantised_layer_is_exact_integer_arithmetic():
    """Same inputs, same integer outputs, whatever the batch split: no float in the path."""
    cfg = small("qwen1.5-moe-a2.7b")
    w = init_weights(cfg, 4)
    x = torch.randn(12, cfg.d_model, generator=torch.Generator().manual_seed(1))
    ql = quantize_layer(w, cfg, x)
    xq = quantize_input(x, ql)
    y_all, r = moe_forward_int(xq, ql)
    y_parts = np.concatenate([moe_forward_int(xq[i:i + 1], ql)[0] for i in range(12)])
    np.testing.assert_array_equal(y_all, y_parts)
    assert dequantize_output(y_all, ql).shape == (12, cfg.d_model)


def test_bad_model_config_names_file_and_key(tmp_path):
    text = ZOO["mixtral-8x7b"].read_text().replace("top_k: 2", "top_k: 9")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"m.yaml: router.top_k: 9"):
        load_model(path)
    path.write_text(text.replace("top_k: 9", "top_k: 2").replace("ffn: swiglu", "ffn: gelu"))
    with pytest.raises(ConfigError, match=r"m.yaml: ffn: 'gelu'"):
        load_model(path)
