"""The digital part of a run's report: logic area from Yosys, switching energy from SAIF.

* ``digital_area``: ``moepim.sim.synth`` (gate flow) on the Verilog the run simulated; the
  analog macros are black boxes, memories are priced as SRAM by the technology table.
* ``switching_energy``: the run's toggle counts (Verilator ``--trace-saif``, read by
  ``moepim.sim.activity``) x ``net_toggle_energy_fj`` of the technology file. The macro models
  are excluded from tracing (``tracing_off``), so the counts are the digital nets' only.
"""

from __future__ import annotations

from pathlib import Path

from .activity import module_toggles
from .build import scratch_dir, silence_unused, to_verilog
from .synth import synthesize

__all__ = ["digital_area", "component_area", "switching_energy", "SWITCHING_SIMULATORS"]

SWITCHING_SIMULATORS = ("verilator",)      # SAIF needs Verilator 5.042+


def digital_area(verilog: Path, top: str, tech, *, blackbox=(), build_root=None) -> dict:
    t, sram = tech.transistor_area_um2, tech.sram_area_um2_per_bit
    return synthesize(verilog, top, transistor_area_um2=t.value, source=t.source,
                      sram_area_um2_per_bit=sram.value, sram_source=sram.source,
                      blackbox=tuple(blackbox), build_root=build_root)


def component_area(component, top: str, tech, *, sim: str, build_dir=None, blackbox=(),
                   build_root=None) -> dict:
    """``digital_area`` of the Verilog a run simulated: a Verilator build keeps the plain
    export; other simulators' copies are adapted, so the component is exported afresh."""
    silence_unused(component)       # not elaborated when the build's copy is used
    built = Path(build_dir) / f"{top}.v" if build_dir else None
    if sim == "verilator" and built is not None and built.exists():
        return digital_area(built, top, tech, blackbox=blackbox, build_root=build_root)
    with scratch_dir(build_root) as tmp:
        path = Path(tmp) / f"{top}.v"
        path.write_text(to_verilog(component, top))
        return digital_area(path, top, tech, blackbox=blackbox, build_root=build_root)


def switching_energy(saif: Path, tech, *, top_modules: int = 12) -> dict:
    """Toggles of every net of the run, per module (the largest ``top_modules``), and their
    energy in pJ."""
    modules, nets = module_toggles(saif)
    toggles = sum(modules.values())
    e = tech.net_toggle_energy_fj
    largest = dict(sorted(modules.items(), key=lambda kv: -kv[1])[:top_modules])
    return {"toggles": toggles, "nets": nets, "energy_pj": toggles * e.value * 1e-3,
            "toggles_by_module": largest,
            "method": "toggles of the exported RTL's nets (Verilator SAIF) x "
                      "net_toggle_energy_fj",
            "net_toggle_energy_fj": e.value, "source": e.source}
