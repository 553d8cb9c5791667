"""The typed stimulus of the layer's host bench (``moepim.testbenches.benches.moe_layer``).

``moepim.sim.moe_run.bench_args`` builds a :class:`LayerStimulus` from a run's plan; the
bench rebuilds it from the JSON a cocotb simulator process receives
(:meth:`LayerStimulus.to_json` / :meth:`LayerStimulus.from_json`), so both sides name the
same typed fields and a missing or misspelt one fails at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["RequantConstants", "LayerJob", "LayerWindow", "LayerStimulus"]


@dataclass(frozen=True)
class RequantConstants:
    """A requantiser's run-time constants: ``(v * mult + round) >> shift``."""

    mult: int
    shift: int


@dataclass(frozen=True)
class LayerJob:
    """One job beat of the plan: ``(token, expert)`` on ``group`` after ``idle_before`` idle
    timestamps, with the job's operands (the engine's job layout: slot, gate weight,
    requantisation constants) by field name."""

    group: int
    token: int
    expert: int
    idle_before: int
    operands: dict[str, int]


@dataclass(frozen=True)
class LayerWindow:
    """One window: its token vectors (``d_model`` values each), its plan (empty: no expert
    work) and, when the layer routes, the held route inputs (``route_mode`` 0: the host's
    routes)."""

    tokens: list[list[int]]
    jobs: list[LayerJob]
    route_mode: int = 0
    route_cap: int = 0
    go_insert: int = 0


@dataclass(frozen=True)
class LayerStimulus:
    """Everything the host bench drives into ``MoELayerAccelerator``.

    ``silu_tables``: ``(group, addr, value)`` writes of the SwiGLU experts' SiLU tables;
    ``gate_tables``: ``(table, addr, value)`` writes of the gate's tanh / sigmoid tables;
    ``gate_index``: the softmax's index requantisation (``None``: the layer has no router);
    ``gate_hidden`` / ``gate_shared``: the MLP gate's hidden and the shared gate's logit
    requantisation; ``dram``: the layer has the GO cache's DRAM port; ``gap_p`` /
    ``stall_p`` / ``route_stall_p``: seeded input gaps and back-pressure on the outputs and
    the routes; ``extra_counters``: counters read after each window besides the basic ones;
    ``progress_file``: where the simulated cycles are reported."""

    windows: list[LayerWindow]
    lanes: int
    act_bits: int
    n_groups: int
    combine: RequantConstants
    gap_p: float = 0.0
    stall_p: float = 0.0
    seed: int = 0
    silu_tables: list[tuple[int, int, int]] = field(default_factory=list)
    gate_index: RequantConstants | None = None
    gate_hidden: RequantConstants | None = None
    gate_shared: RequantConstants | None = None
    gate_tables: list[tuple[int, int, int]] = field(default_factory=list)
    dram: bool = False
    route_stall_p: float = 0.0
    extra_counters: list[str] = field(default_factory=list)
    progress_file: str | None = None
    timeout: int = 10_000_000

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> LayerStimulus:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TypeError(f"LayerStimulus: unknown fields {sorted(unknown)}")

        def requant(v):
            return None if v is None else RequantConstants(**v)

        windows = [LayerWindow(**{**w, "jobs": [LayerJob(**j) for j in w["jobs"]]})
                   for w in d["windows"]]
        return cls(**{**d, "windows": windows, "combine": requant(d["combine"]),
                      "gate_index": requant(d.get("gate_index")),
                      "gate_hidden": requant(d.get("gate_hidden")),
                      "gate_shared": requant(d.get("gate_shared")),
                      "silu_tables": [tuple(x) for x in d.get("silu_tables", [])],
                      "gate_tables": [tuple(x) for x in d.get("gate_tables", [])]})
