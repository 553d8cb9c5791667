"""Golden model of one decoder layer: pre-norm attention with rotary positions and a KV cache,
then the MoE layer, each with its residual; in float (torch, the reference) and in integers
(what the accelerator computes).

The layer (LLaMA-family order; ``norm: layernorm`` models use LayerNorm instead of RMSNorm)::

    h   = norm(x)                              # attn_norm
    q, k, v = h Wq^T, h Wk^T, h Wv^T           # n_heads query heads, n_kv_heads K/V heads
    q, k = rope(q, pos), rope(k, pos)          # rotate_half convention, base rope_theta
    a_h = softmax(q_h K_g^T / sqrt(head_dim) + causal) V_g      # g = h // (n_heads/n_kv_heads)
    x1  = x + a Wo^T
    y   = x1 + moe(norm(x1))                   # moe_norm, then moepim.models.moe / quant

**Integer arithmetic** (:func:`decoder_forward_int`; every scale symmetric per tensor, fixed
once from the float layer on a calibration window, like :mod:`moepim.models.quant`):

* **Norm**: ``c = x - m`` with ``m = round(sum(x) / d)`` (LayerNorm) or ``m = 0`` (RMSNorm);
  ``ms = sum(c**2) // d + eps_q``; the reciprocal square root as an integer square root then
  one division per token: ``r = isqrt(ms << 2F)`` (``F = NORM_FRAC_BITS``: ``r`` is
  ``sqrt(ms)`` with ``F`` fractional bits, the digit-by-digit root a hardware unit computes one
  bit per cycle), ``inv = 2**NORM_RECIP_BITS // max(r, 1)``; then per element
  ``h = clamp(Requant(c * gamma * inv) + beta)`` (``gamma`` and ``beta`` quantised per tensor).
* **Projections** Q/K/V/O: integer matrices through ``matmul`` (exact, or the crossbar tiles'
  arithmetic, ``moepim.models.pim.CrossbarMatmul``), requantised to ``act_bits``.
* **RoPE**: integer tables ``cos, sin`` in Q1.``ROPE_FRAC_BITS`` per position and pair;
  ``q'_i = (q_i cos - q_{i+D/2} sin + half) >> ROPE_FRAC_BITS`` and
  ``q'_{i+D/2} = (q_i sin + q_{i+D/2} cos + half) >> ROPE_FRAC_BITS``, clamped.
* **Attention**: integer ``s = q . k`` over earlier and current tokens; the Q0.16 softmax of
  :func:`moepim.models.quant.int_softmax` (the ``1/sqrt(head_dim)`` scale folded into its
  index requantisation); ``a = clamp((sum_j p16_j v_j + 2**15) >> 16)`` at V's scale.
* **Residual adds**: both operands requantised to the sum's scale, then added and clamped.
* **MoE**: :func:`moepim.models.quant.moe_forward_int` on the MoE norm's output (its input
  scale is the MoE layer's calibrated ``s_x``).

**KV cache**: K (after RoPE) and V of every token, per K/V head, as ``act_bits`` codes. A
decode step computes only the new token's Q, K, V and attends over the cached rows; its output
equals the last row of a full recomputation bit for bit (nothing of an earlier token depends on
a later one), which :func:`decoder_forward_int` with ``cache`` lets tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from moepim.spec.numerics import NORM_FRAC_BITS, NORM_RECIP_BITS, ROPE_FRAC_BITS, SCORE_BITS

from .moe import Routing, init_weights, moe_forward_float
from .quant import (
    EXP_STEPS_PER_UNIT,
    QuantLayer,
    Requant,
    int_matmul,
    int_softmax,
    moe_forward_int,
    quantize_layer,
)
from .zoo import ModelConfig

__all__ = ["attention_shapes", "init_decoder_weights", "decoder_forward_float",
           "DecoderQuant", "quantize_decoder", "decoder_forward_int", "KVCache", "kv_row_bytes",
           "attention_int", "attend_int",
           "int_norm", "rope_tables", "NORM_FRAC_BITS", "NORM_RECIP_BITS", "ROPE_FRAC_BITS"]


def attention_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Float weights of the attention half and the two norms (torch ``(out, in)`` layout)."""
    d, hd = cfg.d_model, cfg.head_size
    shapes = {"attn_norm.weight": (d,), "attn.q.weight": (cfg.n_heads * hd, d),
              "attn.k.weight": (cfg.kv_heads * hd, d), "attn.v.weight": (cfg.kv_heads * hd, d),
              "attn.o.weight": (d, cfg.n_heads * hd), "moe_norm.weight": (d,)}
    if cfg.norm == "layernorm":
        shapes.update({"attn_norm.bias": (d,), "moe_norm.bias": (d,)})
    return shapes


def init_decoder_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights: projections ``N(0, initializer_range)`` (HF initialisation), norm
    gains ``1 + N(0, 0.1)`` and biases ``N(0, 0.1)`` (a trained layer's norms are not exactly
    one), then the MoE layer's (:func:`moepim.models.moe.init_weights`, seed + 1)."""
    gen = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in attention_shapes(cfg).items():
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            w[name] = 1.0 + 0.1 * t
        elif name.endswith("norm.bias"):
            w[name] = 0.1 * t
        else:
            w[name] = cfg.initializer_range * t
    w.update(init_weights(cfg, seed + 1))
    return w


# ---------------------------------------------------------------------------------------------
# float reference

def _norm_float(x, w, prefix, cfg):
    if cfg.norm == "layernorm":
        return torch.nn.functional.layer_norm(x, (cfg.d_model,), w[f"{prefix}.weight"],
                                              w[f"{prefix}.bias"], eps=cfg.norm_eps)
    ms = x.pow(2).mean(dim=-1, keepdim=True)
    return x * torch.rsqrt(ms + cfg.norm_eps) * w[f"{prefix}.weight"]


def _inv_freq(cfg) -> np.ndarray:
    hd = cfg.head_size
    return 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))


def _rope_float(t, pos, cfg):
    """``t`` (T, heads, hd) at positions ``pos`` (T,): rotate_half convention."""
    if cfg.rope_theta is None:
        return t
    ang = torch.as_tensor(np.outer(pos, _inv_freq(cfg)), dtype=t.dtype)      # (T, hd/2)
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    half = cfg.head_size // 2
    a, b = t[..., :half], t[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def _attention_float(h, w, cfg, pos):
    T, hd, H, G = h.shape[0], cfg.head_size, cfg.n_heads, cfg.kv_heads
    q = (h @ w["attn.q.weight"].T).reshape(T, H, hd)
    k = (h @ w["attn.k.weight"].T).reshape(T, G, hd)
    v = (h @ w["attn.v.weight"].T).reshape(T, G, hd)
    q, k = _rope_float(q, pos, cfg), _rope_float(k, pos, cfg)
    rep = H // G
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~causal, float("-inf"))
    a = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), v).reshape(T, H * hd)
    return a, a @ w["attn.o.weight"].T


def decoder_forward_float(x: torch.Tensor, w: dict, cfg: ModelConfig, mask=None):
    """The float layer over a window ``x`` (T, d) at positions 0..T-1; ``mask``: the MoE
    routing's selection (as :func:`moepim.models.moe.moe_forward_float`). Returns ``y`` and
    the intermediate tensors (``h``, ``attn``, ``x1``, ``h2``, ``moe``, ``routing``)."""
    x = x.to(torch.float32)
    pos = np.arange(x.shape[0])
    h = _norm_float(x, w, "attn_norm", cfg)
    a, o = _attention_float(h, w, cfg, pos)
    x1 = x + o
    h2 = _norm_float(x1, w, "moe_norm", cfg)
    moe, routing = moe_forward_float(h2, w, cfg, mask=mask)
    return x1 + moe, {"h": h, "attn": a, "attn_out": o, "x1": x1, "h2": h2, "moe": moe,
                      "routing": routing}


# ---------------------------------------------------------------------------------------------
# integer layer

def _scale(t, bits) -> float:
    m = float(torch.as_tensor(t).abs().max()) if torch.as_tensor(t).numel() else 0.0
    return (m if m > 0 else 1.0) / ((1 << (bits - 1)) - 1)


def _quant(t, scale, bits) -> np.ndarray:
    lim = (1 << (bits - 1)) - 1
    q = np.rint(torch.as_tensor(t, dtype=torch.float64).numpy() / scale).astype(np.int64)
    return np.clip(q, -lim, lim)


def _clamp(q, bits):
    lim = (1 << (bits - 1)) - 1
    return np.clip(q, -lim, lim)


def rope_tables(cfg: ModelConfig, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos, sin`` (positions, head_dim/2) in Q1.ROPE_FRAC_BITS."""
    ang = np.outer(np.arange(n_positions), _inv_freq(cfg))
    one = 1 << ROPE_FRAC_BITS
    return (np.rint(np.cos(ang) * one).astype(np.int64),
            np.rint(np.sin(ang) * one).astype(np.int64))


def _rope_int(t, pos, cfg):
    """``t`` (T, heads, hd) integer codes rotated at positions ``pos``; clamped to act_bits."""
    if cfg.rope_theta is None:
        return t
    cos, sin = rope_tables(cfg, int(pos.max()) + 1)
    cos, sin = cos[pos][:, None, :], sin[pos][:, None, :]
    half = cfg.head_size // 2
    a, b = t[..., :half], t[..., half:]
    rnd = 1 << (ROPE_FRAC_BITS - 1)
    ra = (a * cos - b * sin + rnd) >> ROPE_FRAC_BITS
    rb = (a * sin + b * cos + rnd) >> ROPE_FRAC_BITS
    return _clamp(np.concatenate([ra, rb], axis=-1), cfg.quant.act_bits)


@dataclass
class NormQuant:
    gamma: np.ndarray               # (d,) gains at scale s_gamma
    beta: np.ndarray | None         # (d,) biases at the output scale (LayerNorm)
    eps: int                        # eps in squared input codes
    requant: Requant                # c * gamma * inv -> output codes
    center: bool                    # LayerNorm: subtract the rounded mean


def int_norm(x_q: np.ndarray, nq: NormQuant, bits: int) -> np.ndarray:
    """RMSNorm / LayerNorm of integer rows (module docstring), ``bits``-bit output codes."""
    x = np.asarray(x_q, dtype=np.int64)
    d = x.shape[-1]
    if nq.center:
        s = x.sum(axis=-1, keepdims=True)
        mean = np.floor_divide(2 * s + d, 2 * d)            # round half up of s / d
        c = x - mean
    else:
        c = x
    ms = (c * c).sum(axis=-1) // d + nq.eps
    r = np.array([math.isqrt(int(v) << (2 * NORM_FRAC_BITS)) for v in ms.reshape(-1)],
                 dtype=np.int64).reshape(ms.shape)
    inv = (1 << NORM_RECIP_BITS) // np.maximum(r, 1)
    y = nq.requant.apply(c * nq.gamma * inv[..., None])
    if nq.beta is not None:
        y = y + nq.beta
    return _clamp(y, bits)


def _norm_quant(w, prefix, cfg, s_in, s_out, mb) -> NormQuant:
    ab = cfg.quant.act_bits
    g = w[f"{prefix}.weight"]
    s_g = _scale(g, ab)
    # y = c s_in gamma / (sqrt(ms) s_in) = c gamma_q s_g 2**F / r; inv = 2**P / r
    ratio = s_g * 2.0 ** (NORM_FRAC_BITS - NORM_RECIP_BITS) / s_out
    beta = None
    if cfg.norm == "layernorm":
        beta = _quant(w[f"{prefix}.bias"], s_out, ab)
    eps = int(round(cfg.norm_eps / (s_in * s_in)))
    return NormQuant(_quant(g, s_g, ab), beta, eps, Requant.from_ratio(ratio, mb),
                     cfg.norm == "layernorm")


@dataclass
class DecoderQuant:
    """Integer weights, scales and requantisations of a decoder layer (:func:`quantize_decoder`)."""

    cfg: ModelConfig
    s_x: float
    s_y: float
    tensors: dict = field(default_factory=dict)
    requant: dict = field(default_factory=dict)
    norms: dict = field(default_factory=dict)
    attn_index: Requant | None = None
    moe: QuantLayer | None = None


def quantize_decoder(w: dict, cfg: ModelConfig, calib_x: torch.Tensor) -> DecoderQuant:
    """Scales from the float layer on the calibration window ``calib_x`` (T, d)."""
    ab, wb, mb = cfg.quant.act_bits, cfg.quant.weight_bits, cfg.quant.multiplier_bits
    _, f = decoder_forward_float(calib_x, w, cfg)
    x = calib_x.to(torch.float64)
    T, hd = x.shape[0], cfg.head_size
    dq = DecoderQuant(cfg, s_x=_scale(x, ab), s_y=1.0)
    for name in ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight"):
        s = _scale(w[name], wb)
        dq.tensors[name] = _quant(w[name].T, s, wb)
        dq.tensors[name + ".scale"] = s
    sw = lambda n: dq.tensors[n + ".scale"]                 # noqa: E731
    s_h = _scale(f["h"], ab)
    dq.norms["attn_norm"] = _norm_quant(w, "attn_norm", cfg, dq.s_x, s_h, mb)
    h = f["h"].to(torch.float64)
    pos = np.arange(T)
    scales = {}
    for name, heads in (("q", cfg.n_heads), ("k", cfg.kv_heads), ("v", cfg.kv_heads)):
        t = (h @ w[f"attn.{name}.weight"].to(torch.float64).T).reshape(T, heads, hd)
        if name != "v":
            t = _rope_float(t, pos, cfg)        # the rotated codes share the scale
        scales[name] = _scale(t, ab)
        dq.requant[f"attn.{name}"] = Requant.from_ratio(s_h * sw(f"attn.{name}.weight")
                                                        / scales[name], mb)
    dq.tensors.update({f"{k}.scale_out": v for k, v in scales.items()})
    # softmax index: (s_max - s) * s_q * s_k / sqrt(hd) natural-log units, 16 steps each
    dq.attn_index = Requant.from_ratio(scales["q"] * scales["k"] / math.sqrt(hd)
                                       * EXP_STEPS_PER_UNIT, mb)
    # attention output at V's scale; O projection and the first residual
    s_x1 = _scale(f["x1"], ab)
    dq.requant["attn.o"] = Requant.from_ratio(scales["v"] * sw("attn.o.weight") / s_x1, mb)
    dq.requant["res1.x"] = Requant.from_ratio(dq.s_x / s_x1, mb)
    # the MoE layer, calibrated on the float MoE norm's output
    dq.moe = quantize_layer({k: v for k, v in w.items() if not k.startswith(("attn", "moe_norm"))},
                            cfg, f["h2"])
    dq.norms["moe_norm"] = _norm_quant(w, "moe_norm", cfg, s_x1, dq.moe.s_x, mb)
    y, _ = decoder_forward_float(calib_x, w, cfg)
    dq.s_y = _scale(y, ab)
    dq.requant["res2.x1"] = Requant.from_ratio(s_x1 / dq.s_y, mb)
    dq.requant["res2.moe"] = Requant.from_ratio(dq.moe.s_y / dq.s_y, mb)
    dq.tensors["x1.scale"] = s_x1
    return dq


@dataclass
class KVCache:
    """Per token, K (after RoPE) and V codes: ``k``, ``v`` (tokens, kv_heads, head_dim)."""

    k: np.ndarray
    v: np.ndarray

    @classmethod
    def empty(cls, cfg: ModelConfig) -> KVCache:
        z = np.zeros((0, cfg.kv_heads, cfg.head_size), dtype=np.int64)
        return cls(z, z.copy())

    def __len__(self) -> int:
        return len(self.k)


def kv_row_bytes(cfg: ModelConfig) -> int:
    """DRAM bytes of one token's K and V (``act_bits`` codes, byte aligned)."""
    return 2 * cfg.kv_heads * cfg.head_size * -(-cfg.quant.act_bits // 8)


def attention_int(h_q, dq: DecoderQuant, cache: KVCache, matmul=int_matmul):
    """Attention of the new rows ``h_q`` (T, d) at positions ``len(cache) ..``: returns the
    attention output codes (T, n_heads*head_dim, at V's scale) and the cache with their K, V
    appended."""
    cfg, ab = dq.cfg, dq.cfg.quant.act_bits
    T, hd, H, G = h_q.shape[0], cfg.head_size, cfg.n_heads, cfg.kv_heads
    t = dq.tensors
    pos = np.arange(len(cache), len(cache) + T)
    proj = {}
    for name, heads in (("q", H), ("k", G), ("v", G)):
        acc = matmul(h_q, t[f"attn.{name}.weight"])
        proj[name] = _clamp(dq.requant[f"attn.{name}"].apply(acc), ab).reshape(T, heads, hd)
    q, k = _rope_int(proj["q"], pos, cfg), _rope_int(proj["k"], pos, cfg)
    cache = KVCache(np.concatenate([cache.k, k]), np.concatenate([cache.v, proj["v"]]))
    rep = H // G
    kk = np.repeat(cache.k, rep, axis=1)                          # (L, H, hd)
    vv = np.repeat(cache.v, rep, axis=1)
    a = attend_int(q, kk, vv, pos, dq.attn_index, ab)
    return a.reshape(T, H * hd), cache


def attend_int(q, k, v, pos, index: Requant, act_bits: int) -> np.ndarray:
    """The attention core (``moepim.hw.attention.AttentionUnit``, one head and row at a time):
    queries ``q`` (T, H, hd) at positions ``pos`` (T,) over keys and values ``k``, ``v``
    (L, H, hd); row t attends to keys ``0 .. pos[t]``. Integer scores, the Q0.16 softmax
    with the table-index requantisation ``index``, then
    ``clamp((sum_j p16_j v_j + 2**15) >> 16)``: (T, H, hd) codes at V's scale."""
    q, k, v = (np.asarray(t, dtype=np.int64) for t in (q, k, v))
    L = k.shape[0]
    s = np.einsum("thd,lhd->htl", q, k)                           # exact integers
    causal = np.arange(L)[None, :] <= np.asarray(pos)[:, None]    # (T, L)
    p16 = int_softmax(s, index, np.broadcast_to(causal, s.shape))
    acc = np.einsum("htl,lhd->thd", p16, v)
    return _clamp((acc + (1 << (SCORE_BITS - 1))) >> SCORE_BITS, act_bits)


def decoder_forward_int(x_q: np.ndarray, dq: DecoderQuant, *, cache: KVCache | None = None,
                        routing: Routing | None = None, matmul=int_matmul):
    """The integer layer on new rows ``x_q`` (T, d) after the tokens in ``cache`` (positions
    continue from ``len(cache)``; ``None``: a fresh window). ``routing``: the MoE layer's
    routing of these rows (default: :func:`moepim.models.quant.route_int` over them, the
    expert-choice window over the T rows). Returns ``y`` (T, d) at ``dq.s_y``, the updated
    cache and the intermediates (``h``, ``attn``, ``x1``, ``h2``, ``moe``, ``routing``)."""
    cfg, ab = dq.cfg, dq.cfg.quant.act_bits
    x_q = np.asarray(x_q, dtype=np.int64)
    cache = cache if cache is not None else KVCache.empty(cfg)
    h = int_norm(x_q, dq.norms["attn_norm"], ab)
    a, cache = attention_int(h, dq, cache, matmul)
    o = dq.requant["attn.o"].apply(matmul(a, dq.tensors["attn.o.weight"]))
    x1 = _clamp(dq.requant["res1.x"].apply(x_q) + o, ab)
    h2 = int_norm(x1, dq.norms["moe_norm"], ab)
    moe, routing = moe_forward_int(h2, dq.moe, routing=routing, matmul=matmul)
    y = _clamp(dq.requant["res2.x1"].apply(x1) + dq.requant["res2.moe"].apply(moe), ab)
    return y, cache, {"h": h, "attn": a, "x1": x1, "h2": h2, "moe": moe, "routing": routing}
