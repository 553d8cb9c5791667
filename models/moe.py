"""The float MoE layer in torch, for every router kind of the zoo, and its weights.

Weights are a flat state dict (names below), seeded-random at the model's
``initializer_range`` (no downloads) or loaded from a user's ``.pt`` / ``.safetensors`` file
with the same names and shapes:

    gate.weight                (E, d)            softmax_topk, expert_choice
    gate.fc1.weight            (gate_hidden, d)  mlp_gate (LLaMA-MoE)
    gate.fc2.weight            (E, gate_hidden)  mlp_gate
    experts.{e}.up.weight      (d_ff, d)
    experts.{e}.gate.weight    (d_ff, d)         swiglu only
    experts.{e}.down.weight    (d, d_ff)
    shared.up/gate/down.weight (as experts, shared.d_ff wide)   if shared.n_shared > 0
    shared_gate.weight         (1, d)            if shared.gate == sigmoid
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .routing import (
    apply_capacity,
    capacity_limit,
    expert_choice_capacity,
    expert_choice_mask,
    topk_mask,
)
from .zoo import ModelConfig

__all__ = ["weight_shapes", "init_weights", "load_weights", "Routing", "route_float",
           "moe_forward_float", "WeightsError"]


class WeightsError(ValueError):
    """A user's weight file does not fit the model; the message names the file and tensor."""


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f, n_exp = cfg.d_model, cfg.d_ff, cfg.n_experts
    shapes = {}
    if cfg.router.kind == "mlp_gate":
        shapes["gate.fc1.weight"] = (cfg.router.gate_hidden, d)
        shapes["gate.fc2.weight"] = (n_exp, cfg.router.gate_hidden)
    else:
        shapes["gate.weight"] = (n_exp, d)

    def ffn(prefix, width):
        shapes[f"{prefix}.up.weight"] = (width, d)
        if cfg.ffn == "swiglu":
            shapes[f"{prefix}.gate.weight"] = (width, d)
        shapes[f"{prefix}.down.weight"] = (d, width)

    for e in range(n_exp):
        ffn(f"experts.{e}", f)
    if cfg.shared.n_shared:
        ffn("shared", cfg.shared.d_ff)
        if cfg.shared.gate == "sigmoid":
            shapes["shared_gate.weight"] = (1, d)
    return shapes


def init_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded ``N(0, initializer_range)`` weights (the HF initialisation of these models)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen, dtype=torch.float32) * cfg.initializer_range
            for name, shape in weight_shapes(cfg).items()}


def load_weights(path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A user's state dict (``.pt``/``.pth`` or ``.safetensors``), checked against the model."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unknown weight format {path.suffix!r}; "
                               "expected .pt, .pth, .bin or .safetensors")
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad user file
        raise WeightsError(f"{path}: cannot be read as a state dict ({e})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    expected = weight_shapes(cfg)
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing; "
                           f"model {cfg.name} needs {len(expected)} tensors)")
    extra = [k for k in state if k not in expected]
    if extra:
        raise WeightsError(f"{path}: tensor {extra[0]!r} is not a weight of {cfg.name}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise WeightsError(f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}; "
                               f"{cfg.name} needs {shape}")
    return {k: state[k].to(torch.float32) for k in expected}


@dataclass
class Routing:
    """Routing of a window of tokens: ``mask`` (T, E) selected, ``weights`` (T, E) gate weights
    (0 where not selected), ``dropped`` (T, E) chosen by the gate but over capacity,
    ``scores`` (T, E) what the selection ranked."""

    mask: np.ndarray
    weights: np.ndarray
    dropped: np.ndarray
    scores: np.ndarray


def _gate_logits(x: torch.Tensor, w: dict, cfg: ModelConfig) -> torch.Tensor:
    if cfg.router.kind == "mlp_gate":
        return torch.tanh(x @ w["gate.fc1.weight"].T) @ w["gate.fc2.weight"].T
    return x @ w["gate.weight"].T


def route_float(x: torch.Tensor, w: dict, cfg: ModelConfig, mask=None) -> Routing:
    """Float routing of a window ``x`` (T, d); ``mask`` (T, E) from a trace overrides selection."""
    r = cfg.router
    logits = _gate_logits(x, w, cfg).double()
    probs = torch.softmax(logits, dim=-1)
    scores = (logits if r.kind == "mlp_gate" else probs).numpy()
    n_tokens = x.shape[0]
    dropped = np.zeros(scores.shape, dtype=bool)
    if mask is None:
        if r.kind == "expert_choice":
            cap = expert_choice_capacity(n_tokens, cfg.n_experts, r.ec_capacity_factor)
            mask = expert_choice_mask(scores, cap)
        else:
            mask = topk_mask(scores, r.top_k)
            if r.drops:
                cap = capacity_limit(n_tokens, cfg.n_experts, r.top_k, r.capacity_factor)
                mask, dropped = apply_capacity(mask, cap)
    mask = np.asarray(mask, dtype=bool)
    m = torch.from_numpy(mask)
    if r.kind == "mlp_gate":
        sel = torch.softmax(logits.masked_fill(~m, float("-inf")), dim=-1)
        weights = torch.nan_to_num(sel, nan=0.0) * r.score_scale
    elif r.renormalize:
        p = probs * m
        weights = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    else:
        weights = probs * m
    return Routing(mask, weights.numpy(), dropped, scores)


def _ffn(x, w, prefix, cfg):
    up = x @ w[f"{prefix}.up.weight"].T
    if cfg.ffn == "swiglu":
        h = torch.nn.functional.silu(x @ w[f"{prefix}.gate.weight"].T) * up
    else:
        h = torch.relu(up)
    return h @ w[f"{prefix}.down.weight"].T


def moe_forward_float(x: torch.Tensor, w: dict, cfg: ModelConfig, mask=None):
    """Float MoE layer output (T, d) and its routing; experts see only their tokens."""
    x = x.to(torch.float32)
    routing = route_float(x, w, cfg, mask)
    y = torch.zeros_like(x, dtype=torch.float64)
    weights = torch.from_numpy(routing.weights)
    for e in range(cfg.n_experts):
        tokens = np.flatnonzero(routing.mask[:, e])
        if tokens.size:
            out = _ffn(x[tokens], w, f"experts.{e}", cfg).double()
            y[tokens] += weights[tokens, e:e + 1] * out
    if cfg.shared.n_shared:
        out = _ffn(x, w, "shared", cfg).double()
        if cfg.shared.gate == "sigmoid":
            out = torch.sigmoid((x @ w["shared_gate.weight"].T).double()) * out
        y += out
    return y.to(torch.float32), routing
