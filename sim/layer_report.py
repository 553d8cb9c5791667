"""Energy, area, throughput and plots of a MoE-layer run (``moepim run`` on a ``moe_layer``
experiment).

Energy = events x per-event energy + leakage x time, every constant from the tech and DRAM
files (with their sources):

* crossbar (cells read per bit plane), DAC drives (the RTL's counters), ADC conversions and
  shift-adds: per tile-position MVM, every bank of a job (up, down; SwiGLU: and gate_proj);
* router: the gate MVM of every routed token on its own crossbar tiles (same events; the RTL's
  gate-MVM counter when the layer routes on its own hardware, ``moepim.hw.route_unit``);
* digital: partial-sum adds, requantisation, SwiGLU products and gate multiplies, combine
  adds;
* buffers: token and output buffer SRAM bits (the RTL's row counters), SiLU-table reads;
* GO cache: SRAM bits of the cached gate scores (the RTL's counters when the layer routes,
  otherwise ``moepim.models.gocache``);
* DRAM: active power x transfer time (prompt in, results out, GO-cache spill and read-back,
  on the channel timeline of ``moepim.sim.layer_run.dram_timeline``) + idle power;
* leakage: the ADCs' leakage power x the time their peripheral set is powered
  (``layer.power_gating``): ``idle`` (default, as PUMA's energy model charges it: a unit leaks
  only over its active cycles) powers a peripheral set over its MVMs only, ``mvm_latency``
  cycles per tile-position MVM (the macro's ``busy`` cycles), plus a wake-up energy per MVM;
  ``none`` powers every peripheral set for the whole run, DRAM stalls included. The ADC's
  per-conversion energy is its dynamic part only (the tech file splits the source's total
  power into dynamic and leakage), so a converting ADC pays both once.

The energy is also grouped (``groups``): ``dynamic`` (every per-event term), ``leakage`` and
``dram``.

Area: arrays, ADCs, DACs, shift-adds of every peripheral set from the tech file; the digital
logic and the layer's memories (token/output buffers, scheduler queues, the router's score rows
and the GO cache when the layer routes) from Yosys on the layer's RTL, memories priced as SRAM.
"""

from __future__ import annotations

import numpy as np

from moepim.models.pim import tiles_of

__all__ = ["layer_geometry", "layer_energy_pj", "layer_area_mm2", "write_layer_plots",
           "adc_split", "powered_set_cycles"]


def _matrix_tiles(model, d_ff: int, shape) -> dict:
    up = tiles_of(model.d_model, d_ff, shape)
    mats = {"up": up, "down": tiles_of(d_ff, model.d_model, shape)}
    if model.ffn == "swiglu":
        mats["gate_proj"] = up
    return mats


def layer_geometry(model, tile, n_groups: int, group_size: int) -> dict:
    """Tiles of every expert matrix (``matrix_tiles``: name -> (row tiles, column tiles); the
    shared expert's in ``shared_matrix_tiles``), of the router's gate matrices
    (``gate_tiles``: the linear gate with the shared gate's column, or the MLP gate's two
    layers), crossbar and peripheral-set counts. ``n_groups``: routed groups (a shared expert
    has its own engine: one slot, its own peripheral sets)."""
    shape = tile.spec()
    matrices = _matrix_tiles(model, model.d_ff, shape)
    shared = _matrix_tiles(model, model.shared.d_ff, shape) if model.shared.n_shared else {}
    gate_columns = model.n_experts + (1 if model.shared.n_shared and
                                      model.shared.gate == "sigmoid" else 0)
    if model.router.kind == "mlp_gate":
        hidden = model.router.gate_hidden
        gate = {"fc1": tiles_of(model.d_model, hidden, shape),
                "fc2": tiles_of(hidden, gate_columns, shape)}
    else:
        gate = {"gate": tiles_of(model.d_model, gate_columns, shape)}
    gate_crossbars = sum(r * c for r, c in gate.values())
    per_expert = sum(r * c for r, c in matrices.values())
    per_shared = sum(r * c for r, c in shared.values())
    return {"matrix_tiles": matrices, "shared_matrix_tiles": shared, "gate_tiles": gate,
            "crossbars_per_expert": per_expert, "crossbars_per_shared": per_shared,
            "expert_crossbars": per_expert * model.n_experts + per_shared,
            "gate_crossbars": gate_crossbars,
            "peripheral_sets": per_expert * n_groups + per_shared + gate_crossbars,
            "n_groups": n_groups, "group_size": group_size}


def _job_ops(model, mats: dict, d_ff: int) -> tuple[int, int, int]:
    """Digital work of one job: adds (the row tiles' partial sums of every matrix output, the
    combine add), multiplies (requantisations, SwiGLU's product, the gate weight) and
    SiLU-table bits read."""
    n_out = {"up": d_ff, "down": model.d_model, "gate_proj": d_ff}
    adds = sum((rt - 1) * n_out[k] for k, (rt, _) in mats.items()) + model.d_model
    swiglu = "gate_proj" in mats
    mults = d_ff + 2 * model.d_model + (2 * d_ff if swiglu else 0)
    lut_bits = d_ff * model.quant.act_bits if swiglu else 0
    return adds, mults, lut_bits


def _mvm_events(tile, n_tile_mvms: int) -> dict:
    # cells read and lines converted per bit plane follow from the weight encoding
    shape = tile.spec()
    return {"cells": n_tile_mvms * tile.input_bits * shape.cells_per_crossbar,
            "adc_conversions": n_tile_mvms * tile.input_bits * shape.n_lines,
            "shift_adds": n_tile_mvms * tile.input_bits * shape.n_lines}


def adc_split(tech, adc_bits: int) -> tuple[float, float]:
    """The ADC's dynamic energy per conversion (pJ) and its leakage power while powered (mW),
    from the tech file's total energy per conversion at the ADC's sample rate
    (``adc_energy_pj``, ``adc_sample_rate_gsps``) and the leakage share of that power
    (``adc_leakage_share``): total power = energy x rate; leakage = share x total power;
    dynamic per conversion = (1 - share) x energy."""
    total = tech.adc_energy_pj[adc_bits].value
    share = tech.adc_leakage_share.value
    return (1.0 - share) * total, share * total * tech.adc_sample_rate_gsps.value


def powered_set_cycles(geo: dict, events: dict, power_gating: str, time_ns: float,
                       clock_ns: float) -> dict:
    """Peripheral-set cycles powered: ``idle``: every tile-position MVM (expert banks, the
    shared expert's, the gate's) powers its set for ``mvm_latency`` cycles (one wake-up each);
    ``none``: every set for the whole run."""
    mvms = (events["jobs"] * geo["crossbars_per_expert"]
            + events.get("shared_jobs", 0) * geo["crossbars_per_shared"]
            + events["routed_tokens"] * geo["gate_crossbars"])
    if power_gating == "idle":
        return {"set_cycles": mvms * events["mvm_latency"], "wakeups": mvms,
                "rule": "each peripheral set powered over its MVMs (mvm_latency cycles per "
                        "tile-position MVM), idle sets power-gated"}
    if power_gating == "none":
        return {"set_cycles": geo["peripheral_sets"] * time_ns / clock_ns, "wakeups": 0,
                "rule": "every peripheral set powered for the whole run"}
    raise ValueError(f"power_gating={power_gating!r}: 'none' or 'idle'")


DYNAMIC_KEYS = ("crossbar", "dac", "adc", "shift_add", "router", "digital_arithmetic",
                "buffers", "go_cache", "digital_switching", "wakeup")


def layer_energy_pj(exp, geo: dict, events: dict, time_ns: float) -> dict:
    """``events``: jobs (routed), shared_jobs, dac_drives, routed tokens (gate MVMs),
    ``hw_routing`` (the layer's RTL routes: its selection and softmax logic are in the
    switching count), SRAM bits, GO-cache bits, DRAM busy ns, ``mvm_latency`` (cycles a
    peripheral set is busy per MVM), and ``net_toggles`` (the RTL's switching activity;
    ``None`` when not measured)."""
    tech, tile, model = exp.tech, exp.tile, exp.model
    adc, leak_mw = adc_split(tech, tile.adc_bits)
    gating = exp.layer.power_gating
    clock = tech.clock_ns.value
    powered = powered_set_cycles(geo, events, gating, time_ns, clock)
    jobs, shared_jobs = events["jobs"], events.get("shared_jobs", 0)
    tile_mvms = jobs * geo["crossbars_per_expert"] + shared_jobs * geo["crossbars_per_shared"]
    ex = _mvm_events(tile, tile_mvms)
    gx = _mvm_events(tile, events["routed_tokens"] * geo["gate_crossbars"])
    cell = tech.cell_read_energy_fj.value * 1e-3
    ops = [(jobs, _job_ops(model, geo["matrix_tiles"], model.d_ff))]
    if shared_jobs:
        ops.append((shared_jobs, _job_ops(model, geo["shared_matrix_tiles"],
                                          model.shared.d_ff)))
    adds = sum(n * o[0] for n, o in ops)
    mults = sum(n * o[1] for n, o in ops) + events["output_values"]
    lut_bits = sum(n * o[2] for n, o in ops)
    sram = tech.sram_energy_pj_per_bit.value
    dram_busy = events["dram_busy_ns"]
    breakdown = {
        "crossbar": ex["cells"] * cell,
        "dac": events["dac_drives"] * tech.dac_drive_energy_pj.value,
        "adc": ex["adc_conversions"] * adc,
        "shift_add": ex["shift_adds"] * tech.shift_add_energy_pj.value,
        "router": (gx["cells"] * cell + gx["adc_conversions"] * adc
                   + gx["shift_adds"] * tech.shift_add_energy_pj.value),
        "digital_arithmetic": (adds * tech.int_add_energy_pj.value
                               + mults * tech.int_mult_energy_pj.value),
        # token/output buffer rows (RTL counters) and SwiGLU's SiLU-table reads
        "buffers": (events["buffer_bits"] + lut_bits) * sram,
        "go_cache": events["go_cache_bits"] * sram,
        "dram": (exp.dram.active_power_w.value * dram_busy
                 + exp.dram.idle_power_w.value * max(0.0, time_ns - dram_busy)) * 1e3,
        # mW x ns = pJ
        "leakage": powered["set_cycles"] * clock * tile.n_adcs * leak_mw,
        "wakeup": powered["wakeups"] * tech.peripheral_wakeup_energy_pj.value,
    }
    not_included = ["attention, KV cache and the rest of the transformer"]
    if not events.get("hw_routing"):
        not_included.insert(0, "router selection and softmax (routes supplied by the host; "
                               "the gate MVM is included)")
    toggles = events.get("net_toggles")
    if toggles is None:
        not_included.append("digital switching (toggle counts need a Verilator run with "
                            "layer.switching_activity and without --waves: SAIF)")
    else:
        breakdown["digital_switching"] = toggles * tech.net_toggle_energy_fj.value * 1e-3
    groups = {"dynamic": sum(v for k, v in breakdown.items() if k in DYNAMIC_KEYS),
              "leakage": breakdown["leakage"], "dram": breakdown["dram"]}
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "groups": groups,
            "power_gating": {"mode": gating, **powered,
                             "adc_dynamic_pj_per_conversion": adc,
                             "adc_leakage_mw": leak_mw},
            "events": {"expert_tile_mvms": tile_mvms,
                       "gate_tile_mvms": events["routed_tokens"] * geo["gate_crossbars"],
                       "adds": adds, "mults": mults, **events},
            "method": "events x per-event energy + RTL net toggles x net_toggle_energy_fj + "
                      "ADC leakage x powered time (power_gating); constants and sources in the resolved tech and DRAM "
                      "configs. digital_arithmetic prices the datapath's adds and multiplies "
                      "per operation; digital_switching the toggles of every RTL net (an "
                      "arithmetic unit's internal gate nodes are not RTL nets)",
            "not_included": not_included}


def layer_area_mm2(exp, geo: dict, go_cache_bits: int, synth: dict) -> dict:
    """Analog parts from the technology table; from ``synth`` (``moepim.sim.synth`` on the
    layer's RTL) the digital logic and the layer's memories (buffers, queues) as SRAM, with the
    GO cache's SRAM (not part of the layer's RTL) beside them."""
    tech, tile = exp.tech, exp.tile
    sets = geo["peripheral_sets"]
    crossbars = geo["expert_crossbars"] + geo["gate_crossbars"]
    sram_bits = {"go_cache": go_cache_bits, "layer_memories": synth["memory_bits"]}
    um2 = {
        "arrays": crossbars * tile.spec().cells_per_crossbar
        * tech.cell_area_um2.value,
        "adcs": sets * tile.n_adcs * tech.adc_area_um2[tile.adc_bits].value,
        "dacs": sets * tile.n_rows * tech.dac_area_um2.value,
        "shift_adds": sets * tile.n_adcs * tech.shift_add_area_um2.value,
        "digital_logic": synth["logic_area_mm2"] * 1e6,
        "sram": sum(sram_bits.values()) * tech.sram_area_um2_per_bit.value,
    }
    digital = {k: synth[k] for k in ("flow", "cells", "flip_flops", "transistors", "memories",
                                     "method", "transistor_area_um2", "source", "excluded")}
    breakdown = {k: v * 1e-6 for k, v in um2.items()}
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "sram_bits": sram_bits,
            "crossbars": crossbars, "peripheral_sets": sets, "digital_logic": digital,
            "not_included": []}


def write_layer_plots(folder, report: dict, windows) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def bar(data: dict, title: str, unit: str, name: str):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        keys = list(data)
        ax.barh(keys, [data[k] for k in keys], color="tab:blue")
        ax.set_xlabel(unit)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(name)

    bar(report["energy_pj"]["breakdown"], "Energy breakdown", "pJ", "energy.png")
    bar(report["area_mm2"]["breakdown"], "Area breakdown", "mm$^2$", "area.png")

    # per-group timeline of the prompt window's schedule
    sched = windows[0].sched
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.35 * sched.timestamps),
                                    1 + 0.4 * sched.tokens.shape[1]))
    for s in range(sched.timestamps):
        for g in range(sched.tokens.shape[1]):
            t = sched.tokens[s, g]
            if t >= 0:
                ax.add_patch(plt.Rectangle((s, g), 0.95, 0.9, color="tab:orange"))
                if sched.timestamps <= 48:
                    ax.text(s + 0.45, g + 0.45, str(t), ha="center", va="center", fontsize=6)
    ax.set_xlim(0, sched.timestamps)
    ax.set_ylim(0, sched.tokens.shape[1])
    ax.set_xlabel("timestamp")
    ax.set_ylabel("group")
    ax.set_title(f"prompt schedule ({sched.policy}): {sched.timestamps} timestamps, "
                 f"{sched.tokens_loaded} token loads")
    fig.tight_layout()
    fig.savefig(folder / "timeline.png", dpi=110)
    plt.close(fig)
    written.append("timeline.png")

    steps = report["decode"]
    if steps:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = np.arange(1, len(steps) + 1)
        ax.plot(x, [s["cycles"] for s in steps], "o-", label="GO cache")
        if all(s.get("no_cache_cycles") is not None for s in steps):
            ax.plot(x, [s["no_cache_cycles"] for s in steps], "s-", label="no cache")
        ax.set_xlabel("decode step")
        ax.set_ylabel("cycles")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("Cycles per decode step")
        fig.tight_layout()
        fig.savefig(folder / "decode_cycles.png", dpi=110)
        plt.close(fig)
        written.append("decode_cycles.png")
    return written
