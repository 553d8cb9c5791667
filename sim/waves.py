"""Waveform regression: record compact signatures of watched signals, check them later.

A scenario (``configs/waves/*.yaml``) names a block, its seeded stimulus and the signals to
watch (top-level ports, e.g. ``o_timestamps__payload``). ``record`` runs it under Verilator
with a VCD trace and stores, per signal, the SHA-256 of its value-change sequence (cycle, value) and
the changes themselves (hex values; the first ``HEAD`` as readable text, all of them for
locating a divergence) in ``tests/golden/waves/<name>.json``. ``check`` re-runs and reports the first
divergence of each differing signal: cycle, expected and actual value. Golden files change
only through ``record --update-golden``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from .config import REPO_ROOT, ConfigError, _build, _read_yaml

__all__ = ["WaveScenario", "load_scenario", "capture", "record", "check", "GOLDEN_DIR"]

GOLDEN_DIR = REPO_ROOT / "tests" / "golden" / "waves"
PERIOD_PS = 10_000          # the benches' 10 ns clock
HEAD = 16


@dataclasses.dataclass(frozen=True)
class WaveScenario:
    name: str
    block: str
    seed: int
    signals: list[str]
    params: dict[str, float | str] = dataclasses.field(default_factory=dict)


def load_scenario(ref) -> WaveScenario:
    path = Path(ref)
    if not path.suffix:
        path = REPO_ROOT / "configs" / "waves" / f"{ref}.yaml"
    raw = {k: v for k, v in _read_yaml(path).items() if k != "version"}
    sc = _build(WaveScenario, raw, path, "")
    if sc.block not in _BUILDERS:
        raise ConfigError(path, "block", sc.block, "one of " + ", ".join(_BUILDERS))
    if not sc.signals:
        raise ConfigError(path, "signals", sc.signals, "a non-empty list of port names")
    return sc


# --- scenario builders: (component, top, bench, args) from the scenario's seed and params ---

def _topk(sc):
    from moepim.hw.topk import StreamingTopK

    p = sc.params
    n, k = int(p.get("n_items", 20)), int(p.get("k", 4))
    rng = np.random.default_rng(sc.seed)
    windows = [(rng.integers(-8, 8, size=int(rng.integers(1, n + 1))).tolist(),
                int(rng.integers(1, k + 1))) for _ in range(int(p.get("windows", 6)))]
    return (StreamingTopK(n_items=n, k=k, score_bits=5), "topk", "topk_windows",
            dict(windows=windows, gap_p=p.get("gap_p", 0.3), stall_p=p.get("stall_p", 0.3),
                 seed=sc.seed))


def _scheduler(sc):
    from moepim.hw.scheduler import GroupScheduler
    from moepim.models.grouping import make_groups
    from moepim.models.schedule import schedule
    from moepim.models.traces import generate_trace

    p = sc.params
    n_tok, n_exp = int(p.get("n_tokens", 12)), int(p.get("n_experts", 8))
    mask = generate_trace("zipf", n_layers=1, n_tokens=n_tok, n_experts=n_exp,
                          top_k=int(p.get("top_k", 3)), seed=sc.seed)[0].astype(bool)
    groups = make_groups(str(p.get("grouping", "S4")), n_exp, mask.sum(axis=0))
    plan = schedule(mask, groups, str(p.get("policy", "reschedule"))).plan()
    unit = GroupScheduler(n_groups=len(plan), n_tokens=n_tok, n_experts=n_exp,
                          depth=max(1, max(len(q) for q in plan)))
    return (unit, "group_scheduler", "scheduler_plan",
            dict(plan=[[list(j) for j in q] for q in plan], windows=1,
                 gap_p=p.get("gap_p", 0.3), stall_p=p.get("stall_p", 0.3), seed=sc.seed))


def _go_cache(sc):
    from moepim.hw.gocache import OP_CLEAR, OP_DECIDE, OP_INSERT, GateOutputCache
    from moepim.models.routing import expert_choice_capacity

    p = sc.params
    n_exp, n_prompt, n_gen = int(p.get("n_experts", 8)), int(p.get("n_prompt", 8)), \
        int(p.get("n_generate", 4))
    rng = np.random.default_rng(sc.seed)
    scores = rng.integers(0, 1 << 16, size=(n_prompt + n_gen, n_exp))
    commands = [[OP_CLEAR, 0, [0] * n_exp]]
    commands += [[OP_INSERT, 0, row.tolist()] for row in scores[:n_prompt]]
    commands += [[OP_DECIDE, expert_choice_capacity(t + 1, n_exp, 2.0), scores[t].tolist()]
                 for t in range(n_prompt, n_prompt + n_gen)]
    unit = GateOutputCache(n_experts=n_exp, go_cache_rows=int(p.get("go_cache_rows", 4)),
                           max_tokens=64)
    return (unit, "go_cache", "go_cache_commands",
            dict(commands=commands, score_bits=16, decide_op=OP_DECIDE, latency_max=4,
                 stall_p=p.get("stall_p", 0.3), seed=sc.seed))


def _tile(sc):
    from moepim.hw import TileGroup

    from .config import load_experiment
    from .tile_run import make_scenario

    exp = load_experiment(REPO_ROOT / "configs" / "experiments" /
                          f"{sc.params.get('experiment', 'tile-small')}.yaml")
    exp = dataclasses.replace(exp, workload=dataclasses.replace(exp.workload, seed=sc.seed))
    scen = make_scenario(exp)
    group = TileGroup(**exp.tile.build_kwargs())
    return group, "tile_group", "tile_scenario", scen.bench_args(exp, group)


def _moe_layer(sc):
    """A reduced MoE layer (the ``experiment`` of the params, default layer-small), seeded,
    planned as a run plans it (``moepim.sim.layer_run.plan_layer``); its banks' cell images
    travel as the 5th item (written next to the run)."""
    from moepim.models.pim import bank_file_words

    from .config import load_experiment
    from .layer_run import plan_layer
    from .moe_run import bank_images, bench_args, make_component

    exp = load_experiment(REPO_ROOT / "configs" / "experiments" /
                          f"{sc.params.get('experiment', 'layer-small')}.yaml")
    wl_cfg = dataclasses.replace(exp.workload, seed=sc.seed, no_cache="off")
    plan = plan_layer(dataclasses.replace(exp, workload=wl_cfg), check_resources=False)
    # the files the macros load (bank_file_words)
    banks = [(name, bank_file_words(image, plan.shape))
             for name, image in bank_images(plan.wl, plan.groups, plan.spec, plan.shape,
                                            plan.golden.matmul)]
    args = bench_args(plan.windows, plan.spec, plan.wl.quant,
                      gap_p=float(sc.params.get("gap_p", 0.1)),
                      stall_p=float(sc.params.get("stall_p", 0.2)), seed=sc.seed)
    return make_component(plan.spec, plan.hw_tile), "moe_layer", "moe_layer", args, banks


_BUILDERS = {"tile_group": _tile, "topk": _topk, "group_scheduler": _scheduler,
             "go_cache": _go_cache, "moe_layer": _moe_layer}


# --- capture, signatures, comparison ---

def capture(sc: WaveScenario, *, build_root=None) -> dict[str, list[list]]:
    """Per watched signal, its value changes ``[cycle, value]`` (value as a bit string)."""
    import pywellen

    from .block_run import run_bench

    component, top, bench, args, *files = _BUILDERS[sc.block](sc)
    with tempfile.TemporaryDirectory() as tmp:
        vcd = Path(tmp) / "run.vcd"
        plusargs = []
        for name, image in (files[0] if files else []):
            image.tofile(Path(tmp) / f"{name}.bin")
            plusargs.append(f"+{name}={Path(tmp) / f'{name}.bin'}")
        run_bench(component, top=top, bench=bench, args=args, sim="verilator",
                  build_root=build_root, trace="vcd", trace_to=vcd, plusargs=plusargs)
        wave = pywellen.Waveform(str(vcd))
        by_name = {v.full_name: v for v in wave.all_vars()}
        out = {}
        for name in sc.signals:
            var = by_name.get(f"$rootio.{name}") or by_name.get(f"{top}.{name}")
            if var is None:
                raise ConfigError(f"scenario {sc.name}", "signals", name,
                                  f"a port of {top}: " + ", ".join(
                                      sorted(k.split(".", 1)[1] for k in by_name
                                             if k.startswith("$rootio."))))
            width = var.bitwidth
            changes = []
            for time, value in var.signal:
                changes.append([int(time) // PERIOD_PS, _text(value, width)])
            out[name] = changes
    return out


def _text(value, width: int) -> str:
    """Hex for 2-state values (compact), the bit string when X or Z bits are present."""
    if isinstance(value, str):
        if set(value) <= {"0", "1"}:
            value = int(value, 2)
        else:
            return value
    return format(int(value), f"0{(width + 3) // 4}x")


def _digest(changes) -> str:
    return hashlib.sha256(json.dumps(changes).encode()).hexdigest()


def _golden_path(sc: WaveScenario) -> Path:
    return GOLDEN_DIR / f"{sc.name}.json"


def record(sc: WaveScenario, *, update_golden: bool = False, build_root=None) -> Path:
    path = _golden_path(sc)
    if path.exists() and not update_golden:
        raise ConfigError(path, "(golden)", sc.name,
                          "no existing golden file: pass --update-golden to replace it")
    waves = capture(sc, build_root=build_root)
    data = {"scenario": sc.name, "block": sc.block, "seed": sc.seed,
            "signals": {name: {"digest": _digest(ch), "n_changes": len(ch),
                               "head": [f"{c}:{v}" for c, v in ch[:HEAD]], "changes": ch}
                        for name, ch in waves.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(path)
    return path


def _value_at(changes, cycle):
    value = None
    for c, v in changes:
        if c > cycle:
            break
        value = v
    return value


def first_divergence(expected, actual) -> dict | None:
    for i in range(max(len(expected), len(actual))):
        e = expected[i] if i < len(expected) else None
        a = actual[i] if i < len(actual) else None
        if e != a:
            cycle = min(x[0] for x in (e, a) if x is not None)
            return {"cycle": cycle, "expected": _value_at(expected, cycle),
                    "actual": _value_at(actual, cycle)}
    return None


def check(sc: WaveScenario, *, waves: dict | None = None, build_root=None) -> list[dict]:
    """Divergences (empty when the run matches the golden file)."""
    path = _golden_path(sc)
    if not path.exists():
        raise ConfigError(path, "(golden)", sc.name,
                          "a recorded golden file: run `moepim waves record` first")
    golden = json.loads(path.read_text())["signals"]
    waves = waves if waves is not None else capture(sc, build_root=build_root)
    out = []
    for name in sc.signals:
        if name not in golden:
            out.append({"signal": name, "cycle": None, "expected": "(not recorded)",
                        "actual": "(present)"})
            continue
        if _digest(waves[name]) == golden[name]["digest"]:
            continue
        div = first_divergence(golden[name]["changes"], waves[name])
        out.append({"signal": name, **(div or {"cycle": None, "expected": "?",
                                               "actual": "?"})})
    return out


def delay_signal(waves: dict, name: str, cycles: int = 1) -> dict:
    """A copy of captured waves with one signal's changes (after time 0) delayed."""
    out = dict(waves)
    out[name] = [[c + cycles if c > 0 else c, v] for c, v in waves[name]]
    return out
