"""The timing level (``--sim model``): every window's cycles and every counter of the MoE
layer's RTL, computed from the plan without simulating RTL.

For each window it gives what the ``moe_layer`` bench returns (``moepim.testbenches.benches``):
the cycles from the first token beat to the last output beat, and the layer's counters after
the window (cumulative, as the RTL's). The formulas, per window of ``n`` tokens, ``J`` jobs,
``T`` timestamps loading ``K`` tokens in all, ``B = d_model / lanes`` blocks:

* ``cycles`` (timestamps): the timing model's (``moepim.spec.timing.LayerTiming``);
  ``timestamps = T``, ``token_loads = K``, ``busy[g]`` = group ``g``'s jobs;
* ``token_writes = n B`` (the window's token beats), ``token_reads = K B`` (each timestamp
  reads its distinct tokens once), ``out_reads = out_writes = (K + n) B`` (the combine
  unit's read-modify-write of each loaded token's row, then the read-out clearing every row);
* ``engine_busy_cycles``: ``job_latency - 1`` per job (the engine is not ready from the cycle
  after its start until its results are readable);
* ``dac_drives``: per job and bank, one word-line pulse per '1' bit of the bank's input (the
  token for ``up``/``gate_proj``, the expert's hidden activation for ``down``) at every column
  tile (``moepim_matrix_bank``'s counter); the hidden activations come from the golden model;
* routing (``route_mode`` not host): ``route_cycles`` the route unit's recurrence
  (``LayerTiming.route_cycles``), ``gate_mvms = n``, ``gate_dac_drives`` as the
  experts' (an MLP gate: its tanh hidden layer into its second bank), the GO cache's counters
  from its model (``moepim.models.gocache``), ``route_drops`` the window's dropped selections;
* the window: ``n B + route_cycles + max(1, J) + cycles + n B + 1`` and the scheduler's
  settle cycle (``LayerTiming.window_cycles``, ``settle_cycles``), without input gaps or
  back-pressure.

The property test ``tests/test_timing_level.py`` asserts that these equal the RTL's numbers
under Verilator on random small layers. Output values are not simulated: the report says so
and its ``golden_match`` is ``null``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from moepim.models.gocache import GoCacheModel
from moepim.models.pim import tiles_of
from moepim.models.quant import ffn_hidden_int, gate_hidden_int
from moepim.spec.numerics import SCORE_BITS
from moepim.spec.timing import MODE_CACHED, MODE_HOST, MODE_WINDOW

from .moe_run import expected_compute_cycles, expected_route_cycles

__all__ = ["model_results", "bit_ones", "known_synthesis",
           "remember_synthesis", "NO_SYNTHESIS"]

def bit_ones(x, bits: int) -> np.ndarray:
    """Per row, the '1' bits of the two's-complement ``bits``-bit codes of ``x`` (a DAC's
    word-line pulses over the bit planes)."""
    u = np.asarray(x, dtype=np.int64) & ((1 << bits) - 1)
    ones = np.zeros(u.shape[:-1], dtype=np.int64)
    for b in range(bits):
        ones += ((u >> b) & 1).sum(axis=-1)
    return ones


def _prefix(expert: int, cfg) -> str:
    return "shared" if expert == cfg.n_experts else f"experts.{expert}"


class _Drives:
    """DAC drives of the banks, from the golden model's bank inputs. Every (token, expert)
    pair's hidden activation is computed once, an expert's tokens in one batch (a token's
    hidden activation is the same in every window)."""

    def __init__(self, wl, spec, shape, matmul, windows, token_keys):
        self.wl, self.spec, self.shape, self.mm = wl, spec, shape, matmul
        self.bits = wl.cfg.quant.act_bits
        cfg = wl.cfg
        d = cfg.d_model
        self.ct_up = {False: tiles_of(d, cfg.d_ff, shape)[1],
                      True: tiles_of(d, cfg.shared.d_ff or 1, shape)[1]}
        self.ct_down = {False: tiles_of(cfg.d_ff, d, shape)[1],
                        True: tiles_of(cfg.shared.d_ff or 1, d, shape)[1]}
        self.first_banks = 2 if cfg.ffn == "swiglu" else 1      # up (and gate_proj)
        rows: dict[int, dict[int, np.ndarray]] = {}
        for w, first in zip(windows, token_keys):
            for job in w.jobs:
                tok, exp = job.token, job.expert
                rows.setdefault(exp, {}).setdefault(first + tok, w.x[tok])
        self.hidden_ones = {}
        for exp, by_token in rows.items():
            keys = list(by_token)
            h = ffn_hidden_int(np.stack([by_token[k] for k in keys]), wl.quant,
                               _prefix(exp, cfg), matmul)
            for k, ones in zip(keys, bit_ones(h, self.bits)):
                self.hidden_ones[(k, exp)] = int(ones)

    def job(self, x_row, token_key, expert) -> int:
        shared = expert == self.wl.cfg.n_experts
        ones_x = int(bit_ones(x_row, self.bits))
        return (self.first_banks * self.ct_up[shared] * ones_x
                + self.ct_down[shared] * self.hidden_ones[(token_key, expert)])

    def gate(self, x) -> int:
        cfg, q = self.wl.cfg, self.wl.quant
        d = cfg.d_model
        n_cols = cfg.n_experts + (1 if self.spec.shared_gate else 0)
        if self.spec.gate_hidden:
            ct1 = tiles_of(d, self.spec.gate_hidden, self.shape)[1]
            ct2 = tiles_of(self.spec.gate_hidden, n_cols, self.shape)[1]
            th = gate_hidden_int(x, q, self.mm)
            return int(ct1 * bit_ones(x, self.bits).sum() + ct2 * bit_ones(th, self.bits).sum())
        return int(tiles_of(d, n_cols, self.shape)[1] * bit_ones(x, self.bits).sum())


def _go_counters(windows, wl, spec) -> list[dict]:
    """Per window, the GO cache's counter increments (its model, driven as the RTL is: a
    prompt window with ``go_insert`` stores every row, a cached decode decides and stores)."""
    if not spec.go_cache_rows:
        return [{} for _ in windows]
    cache = GoCacheModel(n_experts=wl.cfg.n_experts, score_bits=SCORE_BITS,
                         go_cache_rows=spec.go_cache_rows)
    factor = wl.cfg.router.ec_capacity_factor
    scores = wl.routing.scores
    out, t_next = [], 0
    for w in windows:
        before = dict(cache.counters)
        if w.route_mode == MODE_WINDOW and w.go_insert:
            for t in range(len(w.x)):
                cache.insert(scores[t])
            t_next = len(w.x)
        elif w.route_mode == MODE_CACHED:
            cache.decide_and_insert(scores[t_next], factor)
            t_next += 1
        out.append({f"go_{k}": cache.counters[k] - before[k] for k in cache.counters})
    return out


def model_results(windows, restarts, spec, timing, dut, wl, shape, matmul) -> list[dict]:
    """What the ``moe_layer`` bench returns for ``windows`` (one simulation per run of
    windows between ``restarts``), computed by the formulas of the module docstring with the
    layer's timing model ``timing`` (``moepim.spec.timing.LayerTiming``). ``dut``: the layer's
    component object, for its counters' names only (nothing is elaborated)."""
    B = timing.blocks
    n_routed = spec.n_routed_experts
    # token keys: a window's row i is sequence token i (prompt, no-cache recomputation), a
    # generated token's window row 0 is token P + step - 1
    P = wl.n_prompt
    firsts = [P + w.step - 1 if (w.kind == "decode" and len(w.x) == 1) else 0
              for w in windows]
    drives = _Drives(wl, spec, shape, matmul, windows, firsts)
    go = _go_counters(windows, wl, spec)
    n_groups = spec.n_groups
    ru = dut.route_unit
    route_names = ([] if ru is None else
                   ["route_cycles"] + [name for name, _ in ru.counters.shape()])
    results, total = [], None
    for i, w in enumerate(windows):
        if total is None or i in restarts:
            total = dict.fromkeys(("cycles", "timestamps", "token_loads", "token_reads",
                                   "token_writes", "out_reads", "out_writes",
                                   "engine_busy_cycles", "dac_drives", *route_names), 0)
            total["busy"] = [0] * n_groups
        n, sched, first_token = len(w.x), w.sched, firsts[i]
        compute = expected_compute_cycles(w, timing)
        loads = sched.tokens_loaded
        d = {"cycles": compute, "timestamps": sched.timestamps, "token_loads": loads,
             "token_reads": loads * B, "token_writes": n * B,
             "out_reads": (loads + n) * B, "out_writes": (loads + n) * B}
        busy = [0] * n_groups
        dac = busy_cycles = 0
        for job in w.jobs:
            g, tok, exp = job.group, job.token, job.expert
            busy[g] += 1
            busy_cycles += timing.group_latencies[g] - 1
            dac += drives.job(w.x[tok], first_token + tok, exp)
        d["engine_busy_cycles"], d["dac_drives"] = busy_cycles, dac
        route = 0
        if ru is not None:
            routed = w.route_mode != MODE_HOST
            route = expected_route_cycles(w, timing) or 0
            d["route_cycles"] = route
            d["gate_mvms"] = n if routed else 0
            d["gate_dac_drives"] = drives.gate(w.x) if routed else 0
            d.update(go[i])
            if "route_drops" in route_names:
                d["route_drops"] = int(w.dropped.sum()) if (routed and w.dropped is not None) \
                    else 0
        for k, v in d.items():
            total[k] += v
        total["busy"] = [a + b for a, b in zip(total["busy"], busy)]
        settle = timing.settle_cycles([j.group for j in w.jobs])
        cycles = timing.window_cycles(n, len(w.jobs), compute, route, settle)
        results.append({"outputs": w.golden, "routes": w.expected_routes(
            n_routed + int(spec.shared_gate)) if ru is not None and w.route_mode != MODE_HOST
            else [], "cycles": cycles, "counters": {k: (list(v) if isinstance(v, list) else v)
                                                    for k, v in total.items()}})
    return results


# the layer's synthesis when none is known: no digital logic, no memories (stated in the report)
NO_SYNTHESIS = {"flow": None, "cells": 0, "flip_flops": 0, "transistors": 0, "memories": [],
                "memory_bits": 0, "logic_area_mm2": 0.0, "memory_area_mm2": 0.0,
                "method": "not synthesised", "transistor_area_um2": None, "source": None,
                "excluded": []}


def _design_path(key: dict, root: Path) -> Path:
    from .build import _hw_digest

    blob = json.dumps({"design": key, "hw": _hw_digest()}, sort_keys=True, default=str)
    return Path(root) / "cache" / "synth-index" / \
        f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


def remember_synthesis(key: dict, synth: dict, root) -> None:
    """Keep a layer's synthesis by its build parameters (and the RTL sources' digest), for
    the timing level to price the same design without exporting it."""
    path = _design_path(key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(synth, default=str))
    os.replace(tmp, path)


def known_synthesis(key: dict, tech, root) -> dict | None:
    """The synthesis an RTL run of the same design made, re-priced with ``tech``'s
    per-transistor and per-bit areas; ``None`` when no run made one."""
    path = _design_path(key, root)
    try:
        synth = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    t, sram = tech.transistor_area_um2, tech.sram_area_um2_per_bit
    logic = synth["transistors"] * t.value * 1e-6
    memory = synth["memory_bits"] * sram.value * 1e-6
    return {**synth, "logic_area_mm2": logic, "memory_area_mm2": memory,
            "area_mm2": logic + memory, "transistor_area_um2": t.value, "source": t.source}
