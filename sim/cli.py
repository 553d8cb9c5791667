"""The ``moepim`` command line.

    moepim run CONFIG --out DIR [--sim verilator|icarus|amaranth] [--quiet]
    moepim export CONFIG --top NAME --out DIR

User mistakes (bad configs, missing tools) end with one clear line on stderr and exit code 2;
a run whose hardware disagrees with the golden model exits 1 (its report is still written).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from .config import ConfigError, TileExperiment, load_experiment, resolved_dict
from .toolchain import SIMULATORS, ToolchainError

EXIT_MISMATCH, EXIT_USAGE = 1, 2
EXPORT_TOPS = ("tile_group", "peripheral_set", "crossbar_array")


def _progress(quiet: bool):
    if quiet:
        return None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return say


def cmd_run(args) -> int:
    from .report import atomic_run_dir, tile_area_mm2, tile_energy_pj, write_report
    from .tile_run import check_outputs, make_scenario, run_scenario

    exp: TileExperiment = load_experiment(args.config)
    sim = args.sim or exp.simulator
    say = _progress(args.quiet)
    t0 = time.monotonic()
    # resolve tech-dependent figures before simulating: a bad tech table fails fast
    area = tile_area_mm2(exp.tile, exp.tech)
    scenario = make_scenario(exp)
    with atomic_run_dir(Path(args.out)) as folder:
        run = run_scenario(exp, scenario, sim, progress=say)
        check = check_outputs(exp, scenario, run)
        energy = tile_energy_pj(exp.tile, exp.tech, run.counters)
        wall = time.monotonic() - t0
        report = {
            "sim": sim,
            "cycles": run.cycles,
            "time_ns": run.cycles * exp.tech.clock_ns.value,
            "load_cycles": run.load_cycles,
            "mvm_latency": check["mvm_latency"],
            "latency_min": check["latency_min"],
            "latency_max": check["latency_max"],
            "energy_pj": energy,
            "area_mm2": area,
            "counters": run.counters,
            "golden_match": check["golden_match"],
            "mismatches": check["mismatches"],
            "n_mismatches": check["n_mismatches"],
            "wall_s": wall,
            "sim_s": run.sim_s,
            "build": run.build,
            "host": {"python": platform.python_version(), "machine": platform.machine()},
            "config": resolved_dict(exp),
        }
        write_report(folder, report, exp)
    status = "bit-exact" if check["golden_match"] else f"{check['n_mismatches']} MISMATCHES"
    print(f"{sim}: {len(scenario.xs)} MVMs, {run.cycles} cycles, {status}; "
          f"report in {Path(args.out) / 'report.json'} ({wall:.1f} s)")
    return 0 if check["golden_match"] else EXIT_MISMATCH


def _export_component(exp: TileExperiment, top: str):
    from moepim.hw import CrossbarArray, PeripheralSet, TileGroup

    kw = exp.tile.hw_kwargs()
    if top == "tile_group":
        return TileGroup(**kw)
    if top == "peripheral_set":
        kw.pop("core")
        return PeripheralSet(**kw)
    kw.pop("group_size")
    return CrossbarArray(**kw)


def cmd_export(args) -> int:
    import yaml

    from .build import export_component
    from .report import atomic_run_dir

    exp = load_experiment(args.config)
    if args.top not in EXPORT_TOPS:
        raise ConfigError("--top", "--top", args.top, "one of " + ", ".join(EXPORT_TOPS))
    component = _export_component(exp, args.top)
    with atomic_run_dir(Path(args.out)) as folder:
        export_component(component, args.top, folder,
                         parameters=resolved_dict(exp.tile))
        (folder / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(exp),
                                                                    sort_keys=False))
    ports = json.loads((Path(args.out) / f"{args.top}.json").read_text())["ports"]
    print(f"wrote {Path(args.out) / (args.top + '.v')} ({len(ports)} ports)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moepim", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an experiment and write DIR/report.json")
    r.add_argument("config", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--sim", choices=SIMULATORS, default=None,
                   help="simulator (default: the config's `simulator`)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("export", help="export a block's Verilog and port map")
    e.add_argument("config", type=Path)
    e.add_argument("--top", required=True, help="one of " + ", ".join(EXPORT_TOPS))
    e.add_argument("--out", type=Path, required=True)
    e.set_defaults(func=cmd_export)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ToolchainError) as e:
        print(f"moepim: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("moepim: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
