"""Resource guard: refuse work that would exhaust this machine, before allocating anything.

Each check estimates memory (and, where it dominates, time) from the config or the trace's
shape and raises :class:`ResourceError` naming the estimate and the limit; ``--allow-large``
(``allow_large: true`` in an experiment) overrides it. The layer run's estimate is
``moepim.sim.layer_run.estimate_resources``; this module holds the tile run's, the traces' and
the scheduler's, and the limits they share. Nothing here imports torch or Amaranth.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ResourceError", "mem_available", "memory_limit", "trace_limit_bytes",
           "tile_estimate", "check_tile_resources", "check_generate", "check_schedule",
           "MAX_SIM_CYCLES", "MAX_SCHEDULE_STEPS"]

# Simulated cycles above which a run is refused without --allow-large: about an hour at the
# slowest simulator's measured free-running speed (Amaranth's, ~40k cycles/s; README speed).
MAX_SIM_CYCLES = 40_000 * 3600
# Inner-loop steps of the scheduler (its exact alignment is one step per job and timestamp,
# pure Python): ~1e6 steps/s measured here, so 1e9 steps is about a quarter of an hour.
MAX_SCHEDULE_STEPS = 10**9
# Python ints in the bench's argument lists: ~36 bytes each (list slot + int object)
_PY_INT_BYTES = 36


class ResourceError(RuntimeError):
    """The work will not fit this machine (the message says why and how to override)."""


def mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


def memory_limit() -> int:
    """Memory a command may plan to use: 80 % of what is available now."""
    return int(0.8 * mem_available())


def trace_limit_bytes() -> int:
    """Largest trace array a command reads without --allow-large: a quarter of the limit
    (reading a CSV holds its float scores and the 0/1 array; statistics copy it again)."""
    return memory_limit() // 4


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def tile_estimate(exp, sim: str) -> dict:
    """Memory and simulated cycles of a tile experiment, from its config alone."""
    t, wl = exp.tile, exp.workload
    outputs = t.n_columns // max(1, t.weight_bits // t.bits_per_cell)
    columns_per_adc = -(-t.n_columns // max(1, t.n_adcs))
    mvm_latency = t.input_bits * columns_per_adc + 4
    gaps = wl.max_gap / 2 if wl.arrival == "random" else 0
    stall = 1 / (1 - wl.backpressure) if wl.backpressure < 1 else float("inf")
    cycles = wl.n_mvms * (mvm_latency + 2) * stall + wl.n_mvms * gaps
    # inputs and weights as numpy arrays and again as the bench's Python lists
    elements = wl.n_mvms * (t.n_rows + outputs + 4) + t.group_size * t.n_rows * outputs
    memory = elements * (8 + _PY_INT_BYTES) + (300 << 20)
    return {"memory_bytes": int(memory), "cycles": int(min(cycles, 2**62)),
            "available_bytes": mem_available(), "sim": sim}


def check_tile_resources(exp, sim: str, *, allow_large: bool = False) -> dict:
    est = tile_estimate(exp, sim)
    if allow_large:
        return est
    limit = memory_limit()
    if est["memory_bytes"] > limit:
        raise ResourceError(
            f"{exp.source}: workload.n_mvms={exp.workload.n_mvms} needs about "
            f"{_gib(est['memory_bytes'])}; the limit is {_gib(limit)} (80 % of available "
            "memory); use fewer MVMs, or override with --allow-large")
    if est["cycles"] > MAX_SIM_CYCLES:
        raise ResourceError(
            f"{exp.source}: workload (n_mvms={exp.workload.n_mvms}, "
            f"max_gap={exp.workload.max_gap}, backpressure={exp.workload.backpressure}) "
            f"simulates about {est['cycles']:.3g} cycles; the limit is {MAX_SIM_CYCLES:.3g} "
            "(about an hour); use fewer MVMs or shorter gaps, or override with --allow-large")
    return est


def check_generate(n_layers: int, n_tokens: int, n_experts: int, *,
                   allow_large: bool = False) -> None:
    """``trace generate``: the 0/1 array plus the generator's per-token work."""
    cells = n_layers * n_tokens * n_experts
    steps = n_layers * n_tokens
    if allow_large:
        return
    limit = trace_limit_bytes()
    if cells > limit:
        raise ResourceError(
            f"command line: --layers {n_layers} x --tokens {n_tokens} x {n_experts} experts "
            f"is {_gib(cells)} of trace; the limit is {_gib(limit)}; generate fewer tokens, "
            "or override with --allow-large")
    if steps > 10**8:
        raise ResourceError(
            f"command line: --layers {n_layers} x --tokens {n_tokens} = {steps:.3g} tokens to "
            "draw (about 10 us each); the limit is 1e8; generate fewer tokens, or override "
            "with --allow-large")


def check_schedule(mask, groups, policy: str, *, source: str,
                   allow_large: bool = False) -> dict:
    """Memory and steps of ``moepim.models.schedule.schedule`` on ``mask`` (tokens, experts)
    and ``groups``, from the per-group job counts (cheap: one pass over the mask)."""
    per_expert = mask.sum(axis=0)
    queues = [int(sum(per_expert[e] for e in g)) for g in groups]
    length = max(queues, default=0)
    n_tokens = mask.shape[0]
    if policy == "single_token":
        length = int(mask.sum())
    table = 2 * 8 * (length + 1) * len(groups)
    steps = sum(queues)
    memory = table
    if policy == "reschedule":      # exact alignment: a jobs x timestamps table per group, 4 rounds
        steps += 4 * sum(q * length for q in queues)
        memory += 2 * 8 * (length + 1) * (length + 1)
    if policy in ("reschedule", "reschedule_heuristic"):
        steps += n_tokens * len(groups)
    est = {"memory_bytes": int(memory), "steps": int(steps), "jobs": int(sum(queues))}
    if allow_large:
        return est
    limit = memory_limit()
    if memory > limit:
        raise ResourceError(
            f"{source}: scheduling {sum(queues)} jobs on {len(groups)} groups ({policy}) "
            f"needs about {_gib(memory)}; the limit is {_gib(limit)}; use a shorter trace, "
            "policy compact, or override with --allow-large")
    if steps > MAX_SCHEDULE_STEPS:
        raise ResourceError(
            f"{source}: scheduling {sum(queues)} jobs on {len(groups)} groups ({policy}) "
            f"takes about {steps:.3g} steps; the limit is {MAX_SCHEDULE_STEPS:.0e} (about a "
            "quarter of an hour); use a shorter trace, policy compact, or override with "
            "--allow-large")
    return est
