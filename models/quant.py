"""The quantised integer MoE layer: exactly what the hardware computes.

Scales are symmetric, per tensor, chosen once from the float weights and a calibration window;
everything after that is integer arithmetic on int64 numpy arrays:

* **Matrices**: ``act_bits`` activations times ``weight_bits`` weights, exact integer
  accumulation (:func:`int_matmul`).
* **Requantisation** between matrices: ``q = clamp((acc * M + 2**(S-1)) >> S)`` (round half
  up), ``M < 2**multiplier_bits`` and ``S`` chosen from the float scale ratio
  (:class:`Requant`).
* **Activations**: ReLU is exact (``max(q, 0)``). SiLU, tanh (LLaMA-MoE gate) and sigmoid
  (Qwen shared gate) are lookup tables over the ``2**act_bits`` input codes, each entry
  ``round(f(q * s_in) / s_out)`` clamped.
* **Gate scores**: integer softmax ``p16``: ``z = l_max - l``, index
  ``min((z * M) >> S, 255)`` into ``EXP_LUT[j] = round(2**16 * exp(-j/16))``, then
  ``p16 = min((e << 16) // sum(e), 2**16 - 1)``: a Q0.16 probability. Selections rank integer
  scores (logits for top-k, ``p16`` for expert choice) with the tie-breaks of
  :mod:`moepim.models.routing`; combine weights are ``p16 >> (16 - gate_bits)``.
* **Combine**: ``sum_e w_e * out_e`` (+ shared, gated by the sigmoid table) in one integer
  accumulator, requantised to the output scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from moepim.spec.numerics import EXP_ENTRIES, EXP_STEPS_PER_UNIT, SCORE_BITS

from .moe import Routing, moe_forward_float
from .routing import (
    apply_capacity,
    capacity_limit,
    expert_choice_capacity,
    expert_choice_mask,
    topk_mask,
)
from .zoo import ModelConfig

__all__ = ["Requant", "int_matmul", "QuantLayer", "quantize_layer", "quantize_input",
           "int_softmax", "route_int", "moe_forward_int", "shared_gate_int",
           "dequantize_output", "EXP_LUT", "ffn_hidden_int", "gate_hidden_int"]

EXP_LUT = np.array([round((1 << SCORE_BITS) * math.exp(-j / EXP_STEPS_PER_UNIT))
                    for j in range(EXP_ENTRIES)], dtype=np.int64)


@dataclass(frozen=True)
class Requant:
    """Integer multiplier and shift approximating a positive scale ratio."""

    mult: int
    shift: int

    @classmethod
    def from_ratio(cls, ratio: float, multiplier_bits: int) -> Requant:
        if not ratio > 0:
            raise ValueError(f"requantisation ratio must be > 0, got {ratio}")
        shift = 0
        while shift < 62 and round(ratio * 2 ** (shift + 1)) < (1 << multiplier_bits):
            shift += 1
        mult = max(1, round(ratio * 2 ** shift))
        return cls(mult, shift)

    def apply(self, acc: np.ndarray) -> np.ndarray:
        acc = np.asarray(acc, dtype=np.int64) * self.mult
        if self.shift:
            acc = (acc + (1 << (self.shift - 1))) >> self.shift
        return acc


def _clamp(q, bits):
    lim = (1 << (bits - 1)) - 1
    return np.clip(q, -lim, lim)


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer ``a @ b``. Uses float64 BLAS when every partial sum is below 2**53."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    bound = int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0)) * a.shape[-1]
    if bound < 2 ** 53:
        return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a @ b


def _scale(t, bits) -> float:
    m = float(np.abs(np.asarray(t, dtype=np.float64)).max(initial=0.0))
    return (m if m > 0 else 1.0) / ((1 << (bits - 1)) - 1)


def _quant(t, scale, bits) -> np.ndarray:
    return _clamp(np.rint(np.asarray(t, dtype=np.float32) / np.float32(scale)).astype(np.int64),
                  bits)


def _lut(fn, s_in, s_out, bits) -> np.ndarray:
    """Table over input codes ``-2**(bits-1) .. 2**(bits-1)-1`` (index = code + 2**(bits-1))."""
    codes = np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.float64)
    return _clamp(np.rint(fn(codes * s_in) / s_out).astype(np.int64), bits)


@dataclass
class QuantLayer:
    cfg: ModelConfig
    s_x: float
    s_y: float
    tensors: dict = field(default_factory=dict)     # int weights
    requant: dict = field(default_factory=dict)     # name -> Requant
    luts: dict = field(default_factory=dict)        # name -> table
    gate_index: Requant | None = None               # logit difference -> EXP_LUT index


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def quantize_layer(w: dict, cfg: ModelConfig, calib_x: torch.Tensor) -> QuantLayer:
    """Integer weights, scales, multipliers and tables from float weights and a calibration
    window (every calibration token through every expert, so all scales are covered)."""
    q = cfg.quant
    ab, wb, mb = q.act_bits, q.weight_bits, q.multiplier_bits
    x = calib_x.to(torch.float64)
    store = np.int8 if wb <= 8 else np.int16

    class _Float64:                       # float64 copies one tensor at a time (memory)
        def __getitem__(self, name):
            return w[name].to(torch.float64)

    wd = _Float64()
    ql = QuantLayer(cfg, s_x=_scale(x, ab), s_y=1.0)
    for name, t in w.items():
        s = _scale(t, wb)
        ql.tensors[name] = _quant(t.numpy().T, s, wb).astype(store)   # transposed: x @ W^T
        ql.tensors[name + ".scale"] = s

    def rq(name, ratio):
        ql.requant[name] = Requant.from_ratio(ratio, mb)

    sw = lambda n: ql.tensors[n + ".scale"]                 # noqa: E731
    # gate
    if cfg.router.kind == "mlp_gate":
        h = x @ wd["gate.fc1.weight"].T
        s_h = _scale(h, ab)
        rq("gate.fc1", ql.s_x * sw("gate.fc1.weight") / s_h)
        s_t = 1.0 / ((1 << (ab - 1)) - 1)
        ql.luts["tanh"] = _lut(np.tanh, s_h, s_t, ab)
        s_logit = s_t * sw("gate.fc2.weight")
    else:
        s_logit = ql.s_x * sw("gate.weight")
    ql.gate_index = Requant.from_ratio(s_logit * EXP_STEPS_PER_UNIT, mb)

    # experts (and shared): one output scale common to all, so one combine accumulator
    outs = []
    prefixes = [f"experts.{e}" for e in range(cfg.n_experts)]
    if cfg.shared.n_shared:
        prefixes.append("shared")
    stats = {}
    for p in prefixes:
        up = x @ wd[f"{p}.up.weight"].T
        s_u = _scale(up, ab)
        rq(f"{p}.up", ql.s_x * sw(f"{p}.up.weight") / s_u)
        if cfg.ffn == "swiglu":
            g = x @ wd[f"{p}.gate.weight"].T
            s_g = _scale(g, ab)
            rq(f"{p}.gate", ql.s_x * sw(f"{p}.gate.weight") / s_g)
            a = torch.nn.functional.silu(g)
            s_a = _scale(a, ab)
            ql.luts[f"{p}.silu"] = _lut(_silu, s_g, s_a, ab)
            h = a * up
            s_h = _scale(h, ab)
            rq(f"{p}.mul", s_a * s_u / s_h)
        else:
            h = torch.relu(up)
            s_h = s_u
        out = h @ wd[f"{p}.down.weight"].T
        stats[p] = (s_h, out)
        outs.append(out)
    s_o = _scale(torch.cat([o.reshape(-1) for o in outs]), ab)
    for p, (s_h, _) in stats.items():
        rq(f"{p}.down", s_h * sw(f"{p}.down.weight") / s_o)
    ql.tensors["out.scale"] = s_o
    if cfg.shared.gate == "sigmoid":
        l_s = x @ wd["shared_gate.weight"].T
        s_l = _scale(l_s, ab)
        rq("shared_gate", ql.s_x * sw("shared_gate.weight") / s_l)
        full = (1 << q.gate_bits) - 1
        codes = np.arange(-(1 << (ab - 1)), 1 << (ab - 1), dtype=np.float64)
        ql.luts["sigmoid"] = np.rint(_sigmoid(codes * s_l) * full).astype(np.int64)
    # output scale from the float layer on the calibration window
    y, _ = moe_forward_float(calib_x, w, cfg)
    ql.s_y = _scale(y, ab)
    ratio = s_o / (1 << q.gate_bits) / ql.s_y
    if cfg.router.kind == "mlp_gate":
        ratio *= cfg.router.score_scale
    rq("combine", ratio)
    return ql


def quantize_input(x, ql: QuantLayer) -> np.ndarray:
    return _quant(torch.as_tensor(x).numpy(), ql.s_x, ql.cfg.quant.act_bits)


def dequantize_output(y_q, ql: QuantLayer) -> np.ndarray:
    return np.asarray(y_q, dtype=np.float64) * ql.s_y


def int_softmax(logits: np.ndarray, index: Requant, mask=None) -> np.ndarray:
    """Q0.16 softmax of integer logits over the last axis (only over ``mask`` if given)."""
    logits = np.asarray(logits, dtype=np.int64)
    if mask is None:
        mask = np.ones(logits.shape, dtype=bool)
    big = np.iinfo(np.int64).min // 4
    top = np.where(mask, logits, big).max(axis=-1, keepdims=True)
    z = np.where(mask, top - logits, 0)
    idx = np.minimum(index.apply(z), len(EXP_LUT) - 1)
    e = np.where(mask, EXP_LUT[idx], 0)
    total = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    return np.minimum((e << SCORE_BITS) // total, (1 << SCORE_BITS) - 1)


def _lut_apply(table, q, bits):
    return table[np.asarray(q, dtype=np.int64) + (1 << (bits - 1))]


def gate_hidden_int(x_q: np.ndarray, ql: QuantLayer, matmul=int_matmul) -> np.ndarray:
    """An MLP gate's hidden layer (LLaMA-MoE): ``tanh`` table of the requantised ``W_1 x``,
    the input of its second gate matrix."""
    ab = ql.cfg.quant.act_bits
    h = _clamp(ql.requant["gate.fc1"].apply(matmul(x_q, ql.tensors["gate.fc1.weight"])), ab)
    return _lut_apply(ql.luts["tanh"], h, ab)


def gate_logits_int(x_q: np.ndarray, ql: QuantLayer, matmul=int_matmul) -> np.ndarray:
    t = ql.tensors
    if ql.cfg.router.kind == "mlp_gate":
        return matmul(gate_hidden_int(x_q, ql, matmul), t["gate.fc2.weight"])
    return matmul(x_q, t["gate.weight"])


def gate_scores_int(logits: np.ndarray, ql: QuantLayer) -> np.ndarray:
    """What the router ranks: logits for top-k routers, ``p16`` for expert choice."""
    if ql.cfg.router.kind == "expert_choice":
        return int_softmax(logits, ql.gate_index)
    return logits


def route_int(x_q: np.ndarray, ql: QuantLayer, mask=None, logits=None,
              matmul=int_matmul) -> Routing:
    cfg, r = ql.cfg, ql.cfg.router
    if logits is None:
        logits = gate_logits_int(x_q, ql, matmul)
    scores = gate_scores_int(logits, ql)
    dropped = np.zeros(logits.shape, dtype=bool)
    if mask is None:
        if r.kind == "expert_choice":
            mask = expert_choice_mask(scores, expert_choice_capacity(
                len(logits), cfg.n_experts, r.ec_capacity_factor))
        else:
            mask = topk_mask(scores, r.top_k)
            if r.drops:
                mask, dropped = apply_capacity(mask, capacity_limit(
                    len(logits), cfg.n_experts, r.top_k, r.capacity_factor))
    mask = np.asarray(mask, dtype=bool)
    if r.kind == "mlp_gate" or r.renormalize:
        p16 = int_softmax(logits, ql.gate_index, mask)
    else:
        p16 = int_softmax(logits, ql.gate_index)
    weights = np.where(mask, p16 >> (SCORE_BITS - cfg.quant.gate_bits), 0)
    return Routing(mask, weights, dropped, scores)


def ffn_hidden_int(x_q, ql, p, matmul=int_matmul):
    """Expert ``p``'s hidden activation (ReLU of ``up``, or SwiGLU's requantised product):
    the input of its ``down`` matrix."""
    t, ab = ql.tensors, ql.cfg.quant.act_bits
    u = _clamp(ql.requant[f"{p}.up"].apply(matmul(x_q, t[f"{p}.up.weight"])), ab)
    if ql.cfg.ffn == "swiglu":
        g = _clamp(ql.requant[f"{p}.gate"].apply(matmul(x_q, t[f"{p}.gate.weight"])), ab)
        a = _lut_apply(ql.luts[f"{p}.silu"], g, ab)
        return _clamp(ql.requant[f"{p}.mul"].apply(a * u), ab)
    return np.maximum(u, 0)


def _ffn_int(x_q, ql, p, matmul=int_matmul):
    t, ab = ql.tensors, ql.cfg.quant.act_bits
    h = ffn_hidden_int(x_q, ql, p, matmul)
    return _clamp(ql.requant[f"{p}.down"].apply(matmul(h, t[f"{p}.down.weight"])), ab)


def shared_gate_int(x_q: np.ndarray, ql: QuantLayer, matmul=int_matmul) -> np.ndarray:
    """Per token, the shared experts' combine weight (``gate_bits`` unsigned): the sigmoid
    table of the requantised shared-gate logit, or full scale for an ungated shared expert."""
    cfg, ab = ql.cfg, ql.cfg.quant.act_bits
    x_q = np.asarray(x_q, dtype=np.int64)
    if cfg.shared.gate == "sigmoid":
        lg = _clamp(ql.requant["shared_gate"].apply(
            matmul(x_q, ql.tensors["shared_gate.weight"])), ab)
        return _lut_apply(ql.luts["sigmoid"], lg, ab)[:, 0]
    return np.full(x_q.shape[0], (1 << cfg.quant.gate_bits) - 1, dtype=np.int64)


def moe_forward_int(x_q: np.ndarray, ql: QuantLayer, mask=None, routing: Routing | None = None,
                    matmul=int_matmul):
    """Integer MoE layer: ``y_q`` (T, d) at scale ``ql.s_y``, and the routing used.

    ``matmul`` computes every weight product (default exact; ``moepim.models.pim.
    CrossbarMatmul`` gives what crossbar tiles with their ADCs compute)."""
    cfg, ab = ql.cfg, ql.cfg.quant.act_bits
    x_q = np.asarray(x_q, dtype=np.int64)
    if routing is None:
        routing = route_int(x_q, ql, mask, matmul=matmul)
    acc = np.zeros((x_q.shape[0], cfg.d_model), dtype=np.int64)
    for e in range(cfg.n_experts):
        tokens = np.flatnonzero(routing.mask[:, e])
        if tokens.size:
            acc[tokens] += routing.weights[tokens, e:e + 1] * _ffn_int(x_q[tokens], ql,
                                                                        f"experts.{e}", matmul)
    if cfg.shared.n_shared:
        out = _ffn_int(x_q, ql, "shared", matmul)
        acc += shared_gate_int(x_q, ql, matmul)[:, None] * out
    return _clamp(ql.requant["combine"].apply(acc), ab), routing
