"""The MoE layer's specification (:class:`LayerSpec`): everything that sizes its hardware
besides the tile, with the values derived from it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LayerSpec"]


@dataclass(frozen=True)
class LayerSpec:
    """Everything that sizes the hardware (the build key) besides the tile. ``n_experts`` and
    ``n_groups`` count the shared expert and its group (the last) when ``shared_d_ff`` > 0."""

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
