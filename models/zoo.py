"""Model-zoo schema: the shape and routing mechanics of one MoE layer.

YAML files under ``configs/models/`` are loaded into these classes by ``moepim.sim.config``;
a user can write one for a new model. Field names are the YAML keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RouterConfig", "SharedConfig", "QuantConfig", "ModelConfig", "FFN_MATRICES"]

FFN_MATRICES = {"relu": 2, "swiglu": 3}


@dataclass(frozen=True)
class RouterConfig:
    """How tokens and experts are matched.

    ``kind``:
      * ``softmax_topk``: ``p = softmax(W_g x)`` over all experts, the top ``top_k`` experts;
        ``renormalize`` rescales their weights to sum to 1 (Mixtral), else raw ``p`` (Qwen,
        DeepSeek, OLMoE, Switch).
      * ``mlp_gate``: LLaMA-MoE: ``logits = W_2 tanh(W_1 x)`` (``gate_hidden`` wide), top
        ``top_k`` logits, softmax over those k, times ``score_scale``.
      * ``expert_choice``: over a window of tokens, expert ``e`` takes the ``C`` tokens with the
        highest ``softmax(W_g x)[e]``, ``C = ceil(window * ec_capacity_factor / n_experts)``.
    ``capacity_factor`` (token choice only): per-expert capacity
    ``ceil(capacity_factor * tokens * top_k / n_experts)``; with ``drop_policy: drop`` tokens over
    capacity (in token order) lose that expert (Switch); ``null`` = unlimited.
    """

    kind: Literal["softmax_topk", "mlp_gate", "expert_choice"] = "softmax_topk"
    top_k: int = 2
    renormalize: bool = False
    capacity_factor: float | None = None
    drop_policy: Literal["none", "drop"] = "none"
    gate_hidden: int = 16
    score_scale: float = 1.0
    ec_capacity_factor: float = 2.0

    @property
    def drops(self) -> bool:
        """Token choice with a capacity that drops the selections over it (Switch)."""
        return (self.kind != "expert_choice" and self.capacity_factor is not None
                and self.drop_policy == "drop")


@dataclass(frozen=True)
class SharedConfig:
    """Always-on shared experts; ``gate: sigmoid`` scales them by ``sigmoid(w_s . x)`` (Qwen)."""

    n_shared: int = 0
    d_ff: int = 0
    gate: Literal["none", "sigmoid"] = "none"


@dataclass(frozen=True)
class QuantConfig:
    """Integer arithmetic of the quantised layer (see ``moepim.models.quant``)."""

    weight_bits: int = 8
    act_bits: int = 8
    multiplier_bits: int = 15
    gate_bits: int = 8


@dataclass(frozen=True)
class ModelConfig:
    name: str
    d_model: int
    d_ff: int
    n_experts: int
    ffn: Literal["relu", "swiglu"]
    router: RouterConfig
    shared: SharedConfig = field(default_factory=SharedConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    n_layers: int = 1
    first_k_dense: int = 0
    dense_d_ff: int = 0
    sparse_step: int = 1
    vocab_size: int = 32000
    n_heads: int = 32
    # attention (moepim.models.decoder): K/V heads (null = n_heads; fewer = grouped-query
    # attention), head width (null = d_model / n_heads), RoPE base (null = no rotary
    # positions), the norm before attention and before the MoE layer
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float | None = 10000.0
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    source: str = ""

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def n_matrices(self) -> int:
        return FFN_MATRICES[self.ffn]

    def crossbars_per_expert(self, n_rows: int = 256, n_columns: int = 256,
                             slices_per_weight: int = 1) -> int:
        """256x256 tiles of one expert: ``ceil(d/256) * ceil(d_ff/256)`` per matrix."""
        outputs = n_columns // slices_per_weight
        up = math.ceil(self.d_model / n_rows) * math.ceil(self.d_ff / outputs)
        down = math.ceil(self.d_ff / n_rows) * math.ceil(self.d_model / outputs)
        return up * (self.n_matrices - 1) + down

    def is_moe_layer(self, layer: int) -> bool:
        if layer < self.first_k_dense:
            return False
        return (layer - self.first_k_dense) % self.sparse_step == self.sparse_step - 1 \
            if self.sparse_step > 1 else True

    def validate(self) -> list[tuple[str, object, str]]:
        """Problems as ``(key, value, allowed)``; empty when the config is consistent."""
        bad = []
        for key in ("d_model", "d_ff", "n_experts", "n_layers", "sparse_step"):
            if getattr(self, key) < 1:
                bad.append((key, getattr(self, key), "a positive integer"))
        r = self.router
        if not 1 <= r.top_k <= min(8, self.n_experts) and r.kind != "expert_choice":
            bad.append(("router.top_k", r.top_k, f"an integer from 1 to {min(8, self.n_experts)}"))
        if r.capacity_factor is not None and r.capacity_factor <= 0:
            bad.append(("router.capacity_factor", r.capacity_factor, "null or a number > 0"))
        if r.drop_policy == "drop" and r.capacity_factor is None:
            bad.append(("router.drop_policy", r.drop_policy,
                        "'none' unless router.capacity_factor is set"))
        if r.ec_capacity_factor <= 0:
            bad.append(("router.ec_capacity_factor", r.ec_capacity_factor, "a number > 0"))
        if r.kind == "mlp_gate" and r.gate_hidden < 1:
            bad.append(("router.gate_hidden", r.gate_hidden, "a positive integer"))
        s = self.shared
        if s.n_shared < 0 or (s.n_shared > 0 and s.d_ff < 1):
            bad.append(("shared.d_ff", s.d_ff, "a positive integer when shared.n_shared > 0"))
        if self.n_heads < 1:
            bad.append(("n_heads", self.n_heads, "a positive integer"))
        elif self.head_dim is None and self.d_model % self.n_heads:
            bad.append(("n_heads", self.n_heads,
                        f"a divisor of d_model={self.d_model} (or set head_dim)"))
        elif not 1 <= self.kv_heads <= self.n_heads or self.n_heads % self.kv_heads:
            bad.append(("n_kv_heads", self.n_kv_heads,
                        f"null or a divisor of n_heads={self.n_heads}"))
        elif self.head_size < 2 or (self.rope_theta is not None and self.head_size % 2):
            bad.append(("head_dim", self.head_dim,
                        "null or an integer >= 2, even with rotary positions"))
        if self.rope_theta is not None and not self.rope_theta > 1:
            bad.append(("rope_theta", self.rope_theta, "null (no RoPE) or a number > 1"))
        if not 0 < self.norm_eps < 1:
            bad.append(("norm_eps", self.norm_eps, "a number in (0, 1)"))
        q = self.quant
        for key in ("weight_bits", "act_bits", "gate_bits"):
            if not 2 <= getattr(q, key) <= 16:
                bad.append((f"quant.{key}", getattr(q, key), "an integer from 2 to 16"))
        if not 8 <= q.multiplier_bits <= 30:
            bad.append(("quant.multiplier_bits", q.multiplier_bits, "an integer from 8 to 30"))
        if self.first_k_dense and self.dense_d_ff < 1:
            bad.append(("dense_d_ff", self.dense_d_ff, "a positive integer when first_k_dense > 0"))
        return bad
