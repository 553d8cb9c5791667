"""Run a bench of :mod:`moepim.testbenches.benches` on a block under any of the simulators."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from moepim.testbenches.benches import BENCHES
from moepim.testbenches.harness import AmaranthIO

from .build import build_simulator, scratch_dir
from .ports import port_map

__all__ = ["run_bench", "no_pytest_env", "amaranth_simulator"]


def amaranth_simulator(component):
    """Amaranth's simulator for ``component``, elaborated for its platform
    (``moepim.hw.params.SIMULATION``: the macros left to the simulator processes that
    ``setup`` adds, the SRAMs as memories, the layer's engines in place), with a 10 ns clock.
    The clock domain comes from a wrapper, so a block whose elaboration has no ``sync`` logic
    (a matrix bank, an empty module under this platform) is simulated too."""
    from amaranth.hdl import ClockDomain, Fragment, Module
    from amaranth.sim import Simulator

    from moepim.hw.params import SIMULATION

    wrapper = Module()
    wrapper.domains.sync = ClockDomain()
    wrapper.submodules.dut = component
    s = Simulator(Fragment.get(wrapper, SIMULATION))
    s.add_clock(1e-8)
    return s


@contextmanager
def no_pytest_env():
    """cocotb's runner calls sys.exit on failures under pytest; results are checked here."""
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved


def run_bench(component, *, top: str, bench: str, args: dict, sim: str, build_root=None,
              trace: str | None = None, trace_to: Path | None = None, setup=None,
              info: dict | None = None, progress=None, plusargs: list[str] | None = None,
              key_params: dict | None = None, build_estimate_s: float | None = None,
              during_sim=None, preset: dict | None = None):
    """The bench's result (plain data); raises if the simulation fails. ``args``: the bench's
    keyword arguments, or a typed stimulus with ``to_json()``. ``trace`` (``"vcd"``
    or ``"saif"``, cocotb simulators only) keeps the run's value-change or toggle file at
    ``trace_to``. ``setup(simulator)`` adds processes to Amaranth's simulator (behavioural
    macro models); ``plusargs`` go to the cocotb simulators (e.g. the matrix banks' cell
    images); ``info`` receives the build facts and the simulation's wall time.
    ``build_estimate_s``: a progress bar for a cold build (with ``progress``); ``during_sim``:
    a context-manager factory entered around the simulation itself (its progress bar).
    ``preset``: input ports (by their flattened Verilog name) set before the first clock
    edge, e.g. a matrix bank's ``bank_id``. Under Amaranth the block needs no ``sync`` logic
    of its own (the simulation's clock domain is defined around it)."""
    during_sim = during_sim or nullcontext
    info = info if info is not None else {}
    if hasattr(args, "to_json"):        # a typed stimulus (moepim.testbenches.stimulus)
        args = args.to_json()
    fn = BENCHES[bench]
    if sim == "amaranth":
        out = {}
        s = amaranth_simulator(component)

        async def tb(ctx):
            io = AmaranthIO(component, ctx)        # the block's ports, not the wrapper's
            for name, value in (preset or {}).items():
                io.set(name.replace("__", "."), value)
            out["result"] = await fn(io, **args)

        s.add_testbench(tb)
        if setup is not None:
            setup(s)
        t0 = time.monotonic()
        with during_sim():
            s.run()
        info.update(sim_s=time.monotonic() - t0, cached=False, build_s=0.0)
        return json.loads(json.dumps(out["result"]))    # same plain types as cocotb's

    from cocotb_tools.check_results import get_results

    if (trace is None) != (trace_to is None):
        raise ValueError("give both trace and trace_to, or neither")
    waves = trace is not None
    build = build_simulator(component, sim=sim, top=top, build_root=build_root, trace=trace,
                            progress=progress, key_params=key_params,
                            build_estimate_s=build_estimate_s)
    info.update(cached=build.cached, build_s=build.build_s, directory=str(build.directory))
    with scratch_dir(build_root) as tmp:
        folder = Path(tmp)
        spec = {"bench": bench, "args": args, "ports": port_map(component),
                "preset": preset or {}, "result": str(folder / "result.json")}
        (folder / "bench.json").write_text(json.dumps(spec))
        t0 = time.monotonic()
        runner = build.runner()
        with no_pytest_env(), during_sim():
            xml = runner.test(
                test_module="moepim.testbenches.block", hdl_toplevel=top,
                hdl_toplevel_lang="verilog", build_dir=build.directory, test_dir=folder,
                extra_env={"MOEPIM_BENCH": str(folder / "bench.json")},
                timescale=("1ns", "1ps"), waves=waves, log_file=folder / "sim.log",
                plusargs=list(plusargs or []))
        info["sim_s"] = time.monotonic() - t0
        if runner.rebuilt is not None:     # the cached simulator crashed and was rebuilt
            info.update(cached=False, build_s=build.build_s + runner.rebuilt.build_s,
                        directory=str(runner.rebuilt.directory))
        n_tests, n_failed = get_results(Path(xml))
        if n_tests != 1 or n_failed or not (folder / "result.json").exists():
            log = (folder / "sim.log").read_text()[-4000:]
            raise RuntimeError(f"{sim} bench {bench} failed; end of its log:\n{log}")
        if waves:
            Path(trace_to).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder / f"dump.{trace}", trace_to)
        return json.loads((folder / "result.json").read_text())
