"""The MoE layer's specification (:class:`LayerSpec`): everything that sizes its hardware
besides the tile, with the values derived from it."""

from __future__ import annotations

from dataclasses import dataclass

from .checks import need, need_positive

__all__ = ["LayerSpec", "ROUTERS", "FFNS"]

ROUTERS = ("expert_choice", "top_k")        # the layer's routing front ends
FFNS = ("relu", "swiglu")                   # the experts' FFN kinds


@dataclass(frozen=True)
class LayerSpec:
    """Everything that sizes the hardware (the build key) besides the tile. ``n_experts`` and
    ``n_groups`` count the shared expert and its group (the last) when ``shared_d_ff`` > 0.
    ``MoELayerAccelerator`` takes this object; the relations between its fields are checked
    here, once (``moepim.spec.checks.ParameterError`` naming the field)."""

    d_model: int
    d_ff: int
    n_experts: int
    n_groups: int
    group_size: int
    n_tokens: int
    lanes: int
    gate_bits: int
    multiplier_bits: int
    ffn: str = "relu"
    shared_d_ff: int = 0
    # routing front end (``moepim.hw.route_unit``): None = routes come from the host
    router: str | None = None
    top_k: int = 1
    renormalize: bool = False
    c_max: int = 1
    go_cache_rows: int = 0
    max_sequence: int = 0
    gate_hidden: int = 0            # MLP gate (LLaMA-MoE): its hidden width; 0 = linear gate
    shared_gate: bool = False       # the shared expert's sigmoid gate on the layer's router
    drop: bool = False              # capacity dropping (Switch) on the layer's top-k router

    def __post_init__(self):
        for name in ("d_model", "d_ff", "n_experts", "n_groups", "group_size", "n_tokens",
                     "lanes", "gate_bits"):
            need_positive(name, getattr(self, name))
        need(self.ffn in FFNS, "ffn", self.ffn, f"one of {', '.join(FFNS)}")
        need(self.router is None or self.router in ROUTERS, "router", self.router,
             f"None (routes from the host) or one of {', '.join(ROUTERS)}")
        need(isinstance(self.shared_d_ff, int) and self.shared_d_ff >= 0, "shared_d_ff",
             self.shared_d_ff, "0 (no shared expert) or a width")
        n_sh = 1 if self.shared_d_ff else 0
        need(self.n_groups > n_sh and self.n_experts > n_sh, "n_groups", self.n_groups,
             "at least one routed group besides the shared expert's")
        need(self.n_routed_groups * self.group_size >= self.n_routed_experts, "n_groups",
             self.n_groups,
             f"(routed groups) * group_size >= routed experts ({self.n_routed_experts})")
        need(self.d_model % self.lanes == 0, "lanes", self.lanes,
             f"a divisor of d_model={self.d_model}")
        need(not self.shared_gate or (n_sh and self.router is not None), "shared_gate",
             self.shared_gate, "False without a shared expert (shared_d_ff) or a router")
        need(isinstance(self.go_cache_rows, int) and self.go_cache_rows >= 0, "go_cache_rows",
             self.go_cache_rows, "0 (no GO cache) or a row count")

    @property
    def n_routed_experts(self) -> int:
        """Experts the router chooses from (the shared expert excluded)."""
        return self.n_experts - (1 if self.shared_d_ff else 0)

    @property
    def n_routed_groups(self) -> int:
        """Groups of routed experts (the shared expert's group excluded)."""
        return self.n_groups - (1 if self.shared_d_ff else 0)

    @property
    def blocks(self) -> int:
        """``lanes``-wide blocks of a token vector."""
        return self.d_model // self.lanes

    @property
    def queue_depth(self) -> int:
        """Jobs each group's scheduler queue holds: a window's tokens times the group's
        slots."""
        return self.n_tokens * self.group_size
