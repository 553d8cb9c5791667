"""``moepim sweep``: a grid of experiments on Dask distributed, each point cached by content.

A sweep file (``configs/sweeps/*.yaml``)::

    version: 1
    kind: sweep
    base: ../experiments/layer-small.yaml     # the experiment every point starts from
    axes:                                     # key path -> values; full product
      workload.grouping: [U1, U2, S2]
      workload.policy: [compact, reschedule]
    zip:                                      # optional: axes that move together
      - {layer.lanes: [16, 32], tile.n_adcs: [8, 16]}
    skip:                                     # optional: points left out on purpose
      - {workload.grouping: U1, workload.policy: reschedule}
    reference:                                # optional: published figures to mark
      - source: "Gao & Yang, ISCAS 2026: area efficiency relative to U1"
        metric: tops_per_mm2                  # a column of the results
        axis: workload.grouping               # one of the axes
        values: {U1: 1.0, U2: 1.11, S2: 1.45}  # the publication's figure per axis value
        relative_to: U1                       # optional: ours as a ratio to this axis value
        where: {workload.policy: compact}     # optional: the points compared

A key path names a key of the experiment (``workload.seed``) or of a file it references
(``tile.n_adcs`` when ``tile:`` names a ``configs/hw`` file, ``model.n_experts``): the
referenced file is copied with the change into the point's folder. Every point is checked as
``moepim run`` would check it; an invalid point is recorded with the reason (status
``invalid``) and the sweep goes on. So is a point whose run fails (status ``error``, with its
message) or disagrees with the golden model (status ``mismatch``).

Each point is identified by the SHA-256 of its resolved configuration, the simulator and the
code version (a digest of the installed ``moepim`` sources): its finished report is kept under
``<build root>/sweep-cache/<hash>/``, so an interrupted sweep resumes where it stopped and a
repeated one is instant. Points run as tasks on a Dask ``LocalCluster`` (``--workers``
processes, one thread each) or on an existing cluster (``--scheduler tcp://host:port``; its
workers need moepim installed, and keep their own cache unless the build root is shared).

Outputs in ``--out``: ``results.parquet`` and ``results.csv`` (one row per point: its axis
values, status, cycles, time, energy and its breakdown, area and its breakdown, efficiency,
GO-cache ratios, accuracy, wall time), ``points/<label>/`` (each point's report and config),
``pareto.png`` (area vs energy, coloured by latency, the Pareto-optimal points marked),
``axes.png`` (each metric per axis value), ``reference.png`` (with ``reference``: ours beside
the publication's figure per axis value) and ``sweep.json`` (the expanded sweep).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, _read_yaml, _resolve_path, load_experiment, resolved_dict

__all__ = ["SweepSpec", "Point", "load_sweep", "expand", "run_sweep", "code_version",
           "STATUSES", "RESULT_COLUMNS", "verify_on_rtl", "first_difference",
           "SweepVerificationError"]

STATUSES = ("ok", "mismatch", "invalid", "skipped", "error")
# keys of an experiment whose value is a path to another YAML file (overridable inside)
REFERENCE_KEYS = ("model", "tile", "tech", "dram")
# keys whose value is a path to a data file, resolved against the experiment's folder
PATH_KEYS = ("workload.trace", "workload.profile_trace", "workload.weights")
SIMULATORS = ("verilator", "icarus", "amaranth", "model")
MARKER = "sweep.json"
# the headline metrics of every row, in the order the tables show them
RESULT_COLUMNS = ("cycles", "time_us", "energy_uj", "area_mm2", "tops", "tops_per_mm2",
                  "gops_per_w_per_mm2", "go_cache_speedup", "go_cache_energy_ratio",
                  "golden_match", "wall_s")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file: ``axes`` (key path -> values, full product), ``zip`` (groups of
    key paths moving together), ``skip`` (partial points to leave out)."""

    source: Path
    base: Path
    axes: dict
    zip: list
    skip: list
    reference: list = field(default_factory=list)

    @property
    def axis_names(self) -> list[str]:
        """Every axis: the product's, then the zip groups'."""
        return list(self.axes) + [k for g in self.zip for k in g]


# what a ``reference`` entry may compare: the results' numeric headline columns
REFERENCE_METRICS = ("cycles", "time_us", "energy_uj", "area_mm2", "tops", "tops_per_mm2",
                     "gops_per_w_per_mm2", "go_cache_speedup", "go_cache_energy_ratio")


@dataclass
class Point:
    index: int
    values: dict                        # key path -> value
    label: str
    status: str = "pending"
    reason: str = ""
    config_path: Path | None = None
    hash: str = ""
    extra: dict = field(default_factory=dict)


def _need(cond, file, key, value, allowed):
    if not cond:
        raise ConfigError(file, key, value, allowed)


def load_sweep(path) -> SweepSpec:
    """Read and check a sweep file (one :class:`ConfigError` line per problem)."""
    path = Path(path)
    raw = _read_yaml(path)
    allowed = ("version", "kind", "base", "axes", "zip", "skip", "reference")
    for k in raw:
        _need(k in allowed, path, k, raw[k], f"no such key; allowed keys: {', '.join(allowed)}")
    _need(raw.get("kind") == "sweep", path, "kind", raw.get("kind"), "'sweep'")
    base = raw.get("base")
    _need(isinstance(base, str), path, "base", base, "a path to a configs/experiments/*.yaml")
    base_path = _resolve_path(base, path)
    _need(base_path.is_file(), path, "base", base, "an existing experiment file")
    axes = raw.get("axes") or {}
    _need(isinstance(axes, dict), path, "axes", axes, "a mapping of key path -> list of values")
    for k, v in axes.items():
        _need(isinstance(k, str) and k, path, "axes", k, "key paths such as workload.seed")
        _need(isinstance(v, list) and v, path, f"axes.{k}", v, "a non-empty list of values")
    zips = raw.get("zip") or []
    _need(isinstance(zips, list), path, "zip", zips, "a list of mappings key path -> values")
    for i, group in enumerate(zips):
        _need(isinstance(group, dict) and group, path, f"zip[{i}]", group,
              "a mapping of key path -> list of values")
        lengths = set()
        for k, v in group.items():
            _need(isinstance(v, list) and v, path, f"zip[{i}].{k}", v,
                  "a non-empty list of values")
            lengths.add(len(v))
        _need(len(lengths) == 1, path, f"zip[{i}]", {k: len(v) for k, v in group.items()},
              "lists of equal length (the axes of a zip group move together)")
    names = list(axes) + [k for g in zips for k in g]
    dup = sorted({k for k in names if names.count(k) > 1})
    _need(not dup, path, "axes/zip", dup, "each key path in one axis only")
    _need(names, path, "axes", None, "at least one axis (in axes or zip)")
    skip = raw.get("skip") or []
    _need(isinstance(skip, list) and all(isinstance(s, dict) and s for s in skip), path, "skip",
          skip, "a list of mappings key path -> value")
    for i, rule in enumerate(skip):
        for k in rule:
            _need(k in names, path, f"skip[{i}].{k}", rule[k], f"one of the axes: {names}")
    values_of = {**axes, **{k: v for g in zips for k, v in g.items()}}
    refs = raw.get("reference") or []
    _need(isinstance(refs, list) and all(isinstance(r, dict) for r in refs), path, "reference",
          refs, "a list of mappings (source, metric, axis, values, optional relative_to and "
          "where)")
    for i, r in enumerate(refs):
        key = f"reference[{i}]"
        extra = sorted(set(r) - {"source", "metric", "axis", "values", "relative_to", "where"})
        _need(not extra, path, f"{key}.{extra[0] if extra else ''}", None,
              "no such key; allowed keys: source, metric, axis, values, relative_to, where")
        _need(isinstance(r.get("source"), str) and r["source"].strip(), path, f"{key}.source",
              r.get("source"), "the publication (authors, venue, table or figure)")
        _need(r.get("metric") in REFERENCE_METRICS, path, f"{key}.metric", r.get("metric"),
              f"one of {', '.join(REFERENCE_METRICS)}")
        _need(r.get("axis") in values_of, path, f"{key}.axis", r.get("axis"),
              f"one of the axes: {names}")
        ax_values = values_of.get(r["axis"], [])
        vals = r.get("values")
        _need(isinstance(vals, dict) and vals and all(
            k in ax_values and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in vals.items()), path, f"{key}.values", vals,
            f"a mapping of values of {r['axis']} ({ax_values}) -> numbers")
        if "relative_to" in r:
            _need(r["relative_to"] in ax_values, path, f"{key}.relative_to", r["relative_to"],
                  f"one of the values of {r['axis']}: {ax_values}")
        where = r.get("where") or {}
        _need(isinstance(where, dict) and all(k in values_of and k != r["axis"] and
                                              v in values_of[k] for k, v in where.items()),
              path, f"{key}.where", where, "a mapping of other axes -> one of their values")
    return SweepSpec(source=path, base=base_path, axes=dict(axes), zip=list(zips),
                     skip=list(skip), reference=[dict(r) for r in refs])


def _label(values: dict) -> str:
    def short(v):
        s = json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:40]
    return "__".join(f"{k.split('.')[-1]}={short(v)}" for k, v in values.items())


def expand(spec: SweepSpec) -> list[Point]:
    """Every point of the sweep, in order: the product of the axes and the zip groups; points
    matching a ``skip`` rule get status ``skipped``."""
    factors = [[{k: v} for v in vals] for k, vals in spec.axes.items()]
    for group in spec.zip:
        n = len(next(iter(group.values())))
        factors.append([{k: vals[i] for k, vals in group.items()} for i in range(n)])
    points = []
    for i, combo in enumerate(itertools.product(*factors)):
        values = {k: v for part in combo for k, v in part.items()}
        p = Point(index=i, values=values, label=f"{i:04d}__{_label(values)}")
        for j, rule in enumerate(spec.skip):
            if all(values.get(k) == v for k, v in rule.items()):
                p.status, p.reason = "skipped", f"matches skip[{j}] of {spec.source}"
                break
        points.append(p)
    return points


def _set_path(raw: dict, key: str, value, base: Path, written: dict) -> None:
    """Set ``key`` (dotted) in the experiment ``raw``; a key inside a referenced file changes
    a copy of that file (``written``, by reference key), which the caller writes out."""
    parts = key.split(".")
    head = parts[0]
    if head in REFERENCE_KEYS and len(parts) > 1 and isinstance(raw.get(head), str):
        ref = _resolve_path(raw[head], base)
        sub = written.get(head)
        if sub is None:
            sub = {k: v for k, v in _read_yaml(ref).items()}
            written[head] = sub
        _set_in(sub, parts[1:], value, key)
        return
    _set_in(raw, parts, value, key)


def _set_in(d: dict, parts: list[str], value, key: str) -> None:
    for p in parts[:-1]:
        nxt = d.get(p)
        if nxt is None:
            nxt = d[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError("sweep", key, nxt, f"a mapping at '{p}' to set '{key}' inside")
        d = nxt
    d[parts[-1]] = value


def materialize(spec: SweepSpec, point: Point, folder: Path) -> Path:
    """Write the point's experiment (and any referenced file it changes) into ``folder``;
    every path is made absolute, so the file loads from anywhere. Returns its path."""
    import yaml

    raw = copy.deepcopy(_read_yaml(spec.base))
    base = spec.base
    for k in REFERENCE_KEYS:
        if isinstance(raw.get(k), str):
            raw[k] = str(_resolve_path(raw[k], base))
    for key in PATH_KEYS:
        sect, name = key.split(".")
        ref = (raw.get(sect) or {}).get(name)
        if isinstance(ref, str):
            raw[sect][name] = str(_resolve_path(ref, base))
    written: dict = {}
    for key, value in point.values.items():
        _set_path(raw, key, value, base, written)
    folder.mkdir(parents=True, exist_ok=True)
    for head, sub in written.items():
        target = folder / f"{head}.yaml"
        target.write_text(yaml.safe_dump(sub, sort_keys=False))
        raw[head] = str(target)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _check_grouping(exp) -> None:
    """A layer experiment's grouping must fit its experts (checked here, before any build,
    as the run would check it)."""
    import numpy as np

    from moepim.models.grouping import GroupingError, make_groups

    if getattr(exp, "kind", None) != "moe_layer":
        return
    try:
        make_groups(exp.workload.grouping, exp.model.n_experts, np.ones(exp.model.n_experts))
    except GroupingError as e:
        raise ConfigError(exp.source, "workload.grouping", exp.workload.grouping,
                          str(e)) from None


def code_version() -> str:
    """SHA-256 of the installed moepim sources (``.py`` and ``.v``) and of the resource
    estimate's fitted coefficients: a change of either changes every point's hash."""
    import moepim.hw
    import moepim.models
    import moepim.sim
    import moepim.spec
    import moepim.testbenches

    from .build import source_digest
    from .logic_estimate import COEFFICIENTS_FILE

    code = source_digest(moepim.spec, moepim.hw, moepim.models, moepim.sim,
                         moepim.testbenches)
    return hashlib.sha256(code.encode() + COEFFICIENTS_FILE.read_bytes()).hexdigest()


def point_hash(resolved: dict, sim: str, version: str) -> str:
    blob = json.dumps({"config": resolved, "sim": sim, "code": version}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_point(config_path: str, sim: str, cache_dir: str, build_root: str,
              synthesize: bool = True) -> dict:
    """Run one point (on a Dask worker): ``moepim run`` in this process into the cache entry
    ``cache_dir`` (written atomically by the run). Returns ``{status, reason, wall_s}``; the
    report stays in ``cache_dir``. ``synthesize``: False adds ``--no-synth``."""
    from . import cli

    os.environ["MOEPIM_BUILD_ROOT"] = build_root
    t0 = time.monotonic()
    err = io.StringIO()
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(["run", config_path, "--out", cache_dir, "--sim", sim, "--quiet",
                             "--no-plots", *([] if synthesize else ["--no-synth"])])
    except BaseException as e:          # noqa: BLE001 - a point's failure is its record
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"status": "error", "reason": f"{type(e).__name__}: {e}",
                "wall_s": time.monotonic() - t0}
    lines = [x for x in err.getvalue().splitlines() if x.strip()]
    reason = lines[-1] if lines else ""
    status = {0: "ok", 1: "mismatch", 2: "invalid"}.get(code, "error")
    if status == "ok" and not (Path(cache_dir) / "report.json").is_file():
        status, reason = "error", "the run ended without a report"
    return {"status": status, "reason": reason if status != "ok" else "",
            "wall_s": time.monotonic() - t0}


def _metrics(report: dict) -> dict:
    """The row of one finished point: headline metrics in units a person reads, the energy
    and area breakdowns, GO-cache ratios, accuracy."""
    row = {"cycles": report.get("cycles"),
           "time_us": report["time_ns"] / 1e3 if report.get("time_ns") is not None else None,
           "golden_match": report.get("golden_match"), "wall_s": report.get("wall_s")}
    energy = report.get("energy_pj") or {}
    if "total" in energy:
        row["energy_uj"] = energy["total"] / 1e6
        for k, v in (energy.get("breakdown") or {}).items():
            row[f"energy_uj.{k}"] = v / 1e6
    area = report.get("area_mm2") or {}
    if "total" in area:
        row["area_mm2"] = area["total"]
        for k, v in (area.get("breakdown") or {}).items():
            row[f"area_mm2.{k}"] = v
        # where the digital logic's area comes from: Yosys, the resource estimate or nowhere
        flow = (area.get("digital_logic") or {}).get("flow")
        row["area_digital_logic"] = ("estimate" if flow == "estimate" else
                                     "not included" if flow is None else "synthesis")
    eff = report.get("efficiency") or {}
    for k in ("tops", "tops_per_mm2", "gops_per_w_per_mm2"):
        if k in eff:
            row[k] = eff[k]
    comp = report.get("go_cache_comparison") or {}
    if comp:
        row["go_cache_speedup"] = comp.get("speedup")
        row["go_cache_energy_ratio"] = comp.get("energy_ratio")
    for k, v in (report.get("accuracy") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            row[f"accuracy.{k}"] = v
    return row


def _axis_value(v):
    return v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)


def _prepare_out(out: Path, force: bool) -> None:
    """``out`` may be new, a previous sweep's folder (resumed: its marker file is there) or,
    with ``force``, anything else (replaced). Nothing else of the user's is touched."""
    if out.exists() and not out.is_dir():
        if not force:
            raise ConfigError("command line", "--out", str(out),
                              "a folder (this is a file; --force replaces it)")
        out.unlink()
    elif out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        if not force:
            raise ConfigError("command line", "--out", str(out),
                              "a new folder or a previous sweep's (this one holds other "
                              "files; --force replaces it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_sweep(sweep_path, out, *, workers: int | None = None, scheduler: str | None = None,
              sim: str = "verilator", force: bool = False, progress: bool = True,
              build_root=None, cache_dir=None, verify_rtl: int = 0) -> dict:
    """Expand, check, run (cached) and tabulate a sweep; returns the summary (counts per
    status, the table's path, per-point overhead of the cluster). ``build_root``: where the
    simulator builds are cached (default ``$MOEPIM_BUILD_ROOT`` or ``./build``);
    ``cache_dir``: the finished points (default ``<build_root>/sweep-cache``).
    ``verify_rtl``: with ``sim="model"``, re-run that many finished points under Verilator
    (the extremes of cycles and energy first, then a seeded choice) and compare every
    window's cycles and counters (:func:`verify_on_rtl`)."""
    if sim not in SIMULATORS:
        raise ConfigError("command line", "--sim", sim, f"one of {', '.join(SIMULATORS)}")
    if workers is not None and workers < 1:
        raise ConfigError("command line", "--workers", workers, "a positive integer")
    if verify_rtl and sim != "model":
        raise ConfigError("command line", "--verify-rtl", verify_rtl,
                          "0 unless --sim model (it re-checks timing-level points on the RTL)")
    if verify_rtl < 0:
        raise ConfigError("command line", "--verify-rtl", verify_rtl, "an integer >= 0")
    spec = load_sweep(sweep_path)
    out = Path(out)
    _prepare_out(out, force)
    root = Path(build_root or os.environ.get("MOEPIM_BUILD_ROOT", Path.cwd() / "build"))
    root = root.resolve()
    cache = Path(cache_dir).resolve() if cache_dir else root / "sweep-cache"
    cache.mkdir(parents=True, exist_ok=True)
    version = code_version()
    points = expand(spec)
    t0 = time.monotonic()
    # check every point as `moepim run` would, before anything runs
    for p in points:
        if p.status == "skipped":
            continue
        folder = out / "points" / p.label
        try:
            p.config_path = materialize(spec, p, folder)
            exp = load_experiment(p.config_path)
            _check_grouping(exp)
        except ConfigError as e:
            p.status, p.reason = "invalid", str(e)
            continue
        p.hash = point_hash(resolved_dict(exp), sim, version)
    _write_atomic(out / MARKER, json.dumps({
        "sweep": str(spec.source), "base": str(spec.base), "sim": sim, "code": version,
        "points": [{"index": p.index, "label": p.label, "values": p.values, "hash": p.hash}
                   for p in points]}, indent=1, default=str).encode())
    todo = [p for p in points if p.status == "pending"
            and not (cache / p.hash / "report.json").is_file()]
    for p in points:
        if p.status == "pending" and p not in todo:
            p.status, p.extra["cached"] = "cached", True
    results = {}
    overhead = None
    if todo:
        results, overhead = _run_on_dask(todo, sim, cache, root, workers, scheduler, progress)
    for p in points:
        if p.hash and p.hash in results:
            r = results[p.hash]
            p.status, p.reason = r["status"], r["reason"]
            p.extra["task_wall_s"] = r["wall_s"]
        elif p.status == "cached":
            p.status = _cached_status(cache / p.hash)
    rows = _collect(points, spec, cache, out)
    table = _write_tables(rows, out)
    references = [(ref, reference_table(rows, ref, spec.axis_names)) for ref in spec.reference]
    plots = _write_plots(rows, spec, out, references)
    counts = {s: sum(1 for p in points if p.status == s) for s in STATUSES}
    counts["cached"] = sum(1 for p in points if p.extra.get("cached"))
    verified = verify_on_rtl(rows, points, cache, root, verify_rtl, progress) \
        if verify_rtl else None
    refs = [{**ref, "values": {str(k): v for k, v in ref["values"].items()}, "table": table}
            for ref, table in references]
    summary = {"points": len(points), "counts": counts, "results": table, "plots": plots,
               "reference": refs,
               "wall_s": time.monotonic() - t0, "dask_overhead_s_per_point": overhead,
               "verify_rtl": verified}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str).encode())
    return summary


def first_difference(model: dict, rtl: dict) -> str | None:
    """The first field in which a timing-level report differs from an RTL report of the same
    point (the run's cycles, then each window's cycles and counters), or ``None``."""
    if model.get("cycles") != rtl.get("cycles"):
        return f"cycles: {model.get('cycles')} vs RTL {rtl.get('cycles')}"
    mw, rw = model.get("windows", []), rtl.get("windows", [])
    if len(mw) != len(rw):
        return f"windows: {len(mw)} vs RTL {len(rw)}"
    for i, (a, b) in enumerate(zip(mw, rw)):
        if a.get("cycles") != b.get("cycles"):
            return f"windows[{i}].cycles: {a.get('cycles')} vs RTL {b.get('cycles')}"
        for k, v in b.get("counters", {}).items():
            if a.get("counters", {}).get(k) != v:
                return (f"windows[{i}].counters.{k}: {a.get('counters', {}).get(k)} vs RTL "
                        f"{v}")
    return None


def verify_on_rtl(rows, points, cache: Path, root: Path, k: int, progress: bool) -> list:
    """Re-run ``k`` finished timing-level points under Verilator: the points of least and
    most cycles and energy first, then a seeded choice of the rest; the RTL runs without
    input gaps and back-pressure (bench stimuli the timing level leaves out). Raises
    :class:`SweepVerificationError` naming the point and the first differing field when any
    differs."""
    import random

    done = [r for r in rows if r["status"] == "ok" and r.get("cycles") is not None]
    chosen = []
    for key in ("cycles", "energy_uj"):
        vals = [r for r in done if r.get(key) is not None]
        for r in (min(vals, key=lambda r: r[key], default=None),
                  max(vals, key=lambda r: r[key], default=None)):
            if r is not None and r not in chosen:
                chosen.append(r)
    rest = [r for r in done if r not in chosen]
    random.Random(0).shuffle(rest)
    chosen = (chosen + rest)[:k]
    by_label = {p.label: p for p in points}
    out = []
    for r in chosen:
        p = by_label[r["label"]]
        staging = cache / f".verify-{p.hash}"
        shutil.rmtree(staging, ignore_errors=True)
        if progress:
            print(f"verifying point {p.index} ({p.label}) under verilator", file=sys.stderr)
        config = _without_stimulus_gaps(p.config_path)
        # timing and counters are compared, not the area: no Yosys for the check
        res = run_point(str(config), "verilator", str(staging), str(root), synthesize=False)
        diff = f"the RTL run ended {res['status']}: {res['reason']}"
        if res["status"] == "ok":
            model = json.loads((cache / p.hash / "report.json").read_text())
            rtl = json.loads((staging / "report.json").read_text())
            diff = first_difference(model, rtl)
        shutil.rmtree(staging, ignore_errors=True)
        out.append({"point": p.index, "label": p.label, "equal": diff is None,
                    "first_difference": diff})
        if diff is not None:
            raise SweepVerificationError(
                f"point {p.index} ({p.label}): the timing level differs from Verilator at "
                f"{diff}")
    return out


def _without_stimulus_gaps(config: Path) -> Path:
    """A copy of a point's experiment with ``input_gaps`` and ``backpressure`` at 0."""
    import yaml

    raw = _read_yaml(config)
    raw.setdefault("workload", {}).update(input_gaps=0.0, backpressure=0.0)
    out = config.with_name("experiment-rtl-check.yaml")
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


class SweepVerificationError(RuntimeError):
    """``--verify-rtl`` found a point where the timing level and the RTL disagree."""


def _cached_status(entry: Path) -> str:
    try:
        report = json.loads((entry / "report.json").read_text())
    except (OSError, ValueError):
        return "error"
    ok = report.get("golden_match") is not False and report.get("cycles_match_formula", True) \
        and report.get("go_cache_exact") is not False
    return "ok" if ok else "mismatch"


def _run_on_dask(todo, sim, cache: Path, root: Path, workers, scheduler, progress):
    """Submit every point; collect as they finish (a progress bar with an ETA). Returns the
    per-hash results and the cluster's overhead per point: the workers' busy time (elapsed x
    workers) not spent inside the runs, divided by the points."""
    import logging

    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        n = workers or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    results, run_times = {}, []
    n_workers = len(client.scheduler_info().get("workers", {})) or 1
    t_submit = time.monotonic()
    # one task per distinct configuration (identical points share it)
    unique = {}
    for p in todo:
        unique.setdefault(p.hash, p)
    try:
        futures = {}
        started = {}
        for h, p in unique.items():
            f = client.submit(_run_cached_point, str(p.config_path), sim, str(cache / h),
                              str(root), key=f"moepim-point-{h[:16]}", pure=False)
            futures[f] = h
            started[h] = time.monotonic()
        bar = tqdm(total=len(futures), desc="sweep points", unit="point", disable=not progress,
                   file=sys.stderr)
        for f in as_completed(futures):
            h = futures[f]
            try:
                r = f.result()
            except Exception as e:      # noqa: BLE001 - a dead worker fails this point only
                r = {"status": "error", "reason": f"{type(e).__name__}: {e}", "wall_s": None}
            results[h] = r
            if r.get("run_s") is not None:
                run_times.append(r["run_s"])
            bar.update(1)
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    # the cluster's overhead per point: worker time not spent in the runs themselves
    elapsed = time.monotonic() - t_submit
    overhead = (max(0.0, elapsed * min(n_workers, len(unique)) - sum(run_times))
                / len(unique)) if run_times else None
    return results, overhead


def _run_cached_point(config_path: str, sim: str, entry: str, build_root: str) -> dict:
    """A worker's task: run the point into its cache entry (atomically: a staging folder
    renamed when the run is complete). ``wall_s`` from the task's start; ``run_s`` the run's
    own wall time (the difference is the cluster's overhead)."""
    t0 = time.monotonic()
    entry_path = Path(entry)
    staging = entry_path.with_name(f".{entry_path.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    r = run_point(config_path, sim, str(staging), build_root)
    if (staging / "report.json").is_file():
        if entry_path.exists():
            shutil.rmtree(entry_path, ignore_errors=True)
        os.replace(staging, entry_path)
    shutil.rmtree(staging, ignore_errors=True)
    run_s = r["wall_s"]
    return {**r, "run_s": run_s, "wall_s": time.monotonic() - t0}


def _collect(points, spec: SweepSpec, cache: Path, out: Path) -> list[dict]:
    axes = spec.axis_names
    rows = []
    for p in points:
        row = {"point": p.index, "label": p.label, "status": p.status, "reason": p.reason,
               "hash": p.hash, "cached": bool(p.extra.get("cached"))}
        row.update({k: _axis_value(p.values.get(k)) for k in axes})
        entry = cache / p.hash if p.hash else None
        if entry is not None and (entry / "report.json").is_file():
            report = json.loads((entry / "report.json").read_text())
            row.update(_metrics(report))
            dest = out / "points" / p.label
            dest.mkdir(parents=True, exist_ok=True)
            for f in entry.iterdir():
                if f.is_file():
                    shutil.copyfile(f, dest / f.name)
        rows.append(row)
    return rows


def _write_tables(rows: list[dict], out: Path) -> dict:
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    data = {k: [r.get(k) for r in rows] for k in columns}
    arrays = {}
    for k, vals in data.items():
        try:
            arrays[k] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[k] = pa.array([None if v is None else str(v) for v in vals])
    table = pa.table(arrays)
    tmp = out / ".results.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / "results.parquet")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in columns})
    _write_atomic(out / "results.csv", buf.getvalue().encode())
    return {"parquet": str(out / "results.parquet"), "csv": str(out / "results.csv"),
            "rows": len(rows), "columns": columns}


def pareto_mask(points: list[tuple[float, ...]]) -> list[bool]:
    """True for each point no other point dominates (every objective minimised)."""
    mask = []
    for i, a in enumerate(points):
        dominated = any(all(b[k] <= a[k] for k in range(len(a))) and
                        any(b[k] < a[k] for k in range(len(a)))
                        for j, b in enumerate(points) if j != i)
        mask.append(not dominated)
    return mask


def _write_plots(rows: list[dict], spec: SweepSpec, out: Path,
                 references: list = ()) -> list[str]:
    """``pareto.png``, ``axes.png`` and, with ``references`` (``(entry, reference_table)``
    pairs), ``reference.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("energy_uj") is not None and r.get("area_mm2") is not None
            and r.get("time_us") is not None]
    paths = []
    if not done:
        return paths
    # Pareto front: area vs energy, colour = latency; Pareto-optimal over all three
    objs = [(r["area_mm2"], r["energy_uj"], r["time_us"]) for r in done]
    front = pareto_mask(objs)
    fig, ax = plt.subplots(figsize=(7, 5))
    sc = ax.scatter([o[0] for o in objs], [o[1] for o in objs], c=[o[2] for o in objs],
                    cmap="viridis", s=36, edgecolors="none")
    fx = [o for o, f in zip(objs, front) if f]
    ax.scatter([o[0] for o in fx], [o[1] for o in fx], facecolors="none", edgecolors="red",
               s=90, linewidths=1.2, label="Pareto-optimal (area, energy, latency)")
    if len(done) <= 40:
        for r, o in zip(done, objs):
            ax.annotate(str(r["point"]), (o[0], o[1]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="latency (us)")
    _log_if_wide(ax.set_xscale, [o[0] for o in objs])
    _log_if_wide(ax.set_yscale, [o[1] for o in objs])
    ax.set_xlabel("area (mm2)")
    ax.set_ylabel("energy (uJ)")
    ax.set_title(f"{spec.source.name}: {len(done)} points")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    paths.append(str(out / "pareto.png"))
    # each metric per axis value
    axes = spec.axis_names
    metrics = [m for m in ("time_us", "energy_uj", "area_mm2", "gops_per_w_per_mm2")
               if any(r.get(m) is not None for r in done)]
    fig, grid = plt.subplots(len(metrics), len(axes), squeeze=False,
                             figsize=(3.2 * len(axes) + 1, 2.4 * len(metrics) + 0.6))
    for j, a in enumerate(axes):
        cats = []
        for r in done:
            if r.get(a) not in cats:
                cats.append(r.get(a))
        pos = {c: i for i, c in enumerate(cats)}
        for i, m in enumerate(metrics):
            g = grid[i][j]
            xs = [pos[r.get(a)] for r in done if r.get(m) is not None]
            ys = [r[m] for r in done if r.get(m) is not None]
            if len(ys) > BOX_ABOVE * len(cats):
                # many points per value: their spread (box: quartiles and median, whiskers:
                # the extremes) instead of a column of overlapping dots
                g.boxplot([[y for x, y in zip(xs, ys) if x == k] for k in range(len(cats))],
                          positions=range(len(cats)), whis=(0, 100), widths=0.5)
            else:
                g.scatter(xs, ys, s=14, alpha=0.7)
            _log_if_wide(g.set_yscale, ys)
            g.set_xticks(range(len(cats)))
            g.set_xticklabels([str(c) for c in cats], rotation=30, fontsize=7)
            if j == 0:
                g.set_ylabel(m, fontsize=8)
            if i == 0:
                g.set_title(a, fontsize=9)
            g.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "axes.png", dpi=110)
    plt.close(fig)
    paths.append(str(out / "axes.png"))
    if references:
        fig, grid = plt.subplots(1, len(references), squeeze=False,
                                 figsize=(4.6 * len(references) + 0.4, 3.8))
        for g, (ref, table) in zip(grid[0], references):
            cats = list(dict.fromkeys([r["value"] for r in table] + list(ref["values"])))
            pos = {c: i for i, c in enumerate(cats)}
            ours = [(pos[r["value"]], o) for r in table for o in r["ours"]]
            g.scatter([x for x, _ in ours], [y for _, y in ours], s=30, label="moepim")
            g.scatter([pos[k] for k in ref["values"]], list(ref["values"].values()), marker="x",
                      s=60, color="red", label="publication")
            g.set_xticks(range(len(cats)))
            g.set_xticklabels([str(c) for c in cats], fontsize=8)
            g.set_xlabel(ref["axis"], fontsize=8)
            unit = f" / at {ref['relative_to']}" if "relative_to" in ref else ""
            g.set_ylabel(f"{ref['metric']}{unit}", fontsize=8)
            g.set_title(ref["source"], fontsize=7, wrap=True)
            g.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "reference.png", dpi=110)
        plt.close(fig)
        paths.append(str(out / "reference.png"))
    return paths


BOX_ABOVE = 12               # points per axis value above which axes.png draws box plots
LOG_ABOVE = 20               # a plotted range wider than this ratio gets a logarithmic scale


def _log_if_wide(set_scale, values) -> None:
    v = [x for x in values if x is not None]
    if v and min(v) > 0 and max(v) / min(v) > LOG_ABOVE:
        set_scale("log")


def reference_table(rows: list[dict], ref: dict, axes: list) -> list[dict]:
    """Per value of ``ref``'s axis: our figures (the finished points matching ``where``; with
    ``relative_to``, each divided by the point that differs only in the axis, set to that
    value) and the publication's."""
    where = ref.get("where") or {}
    chosen = [r for r in rows if all(r.get(k) == v for k, v in where.items())
              and r.get(ref["metric"]) is not None]
    others = [a for a in axes if a != ref["axis"]]
    base = {}                # the other axes' values -> the baseline point's figure
    for b in chosen:
        if b.get(ref["axis"]) == ref.get("relative_to"):
            base.setdefault(tuple(b.get(a) for a in others), b[ref["metric"]])
    out = {}
    for r in chosen:
        v = r[ref["metric"]]
        if "relative_to" in ref:
            b = base.get(tuple(r.get(a) for a in others))
            if not b:
                continue
            v = v / b
        out.setdefault(r[ref["axis"]], []).append(v)
    return [{"value": k, "ours": v, "publication": ref["values"].get(k)}
            for k, v in out.items()]


def summary_line(summary: dict, out: Path) -> str:
    c = summary["counts"]
    parts = ", ".join(f"{c[s]} {s}" for s in STATUSES if c.get(s))
    return (f"sweep: {summary['points']} points ({parts}; {c['cached']} from the cache); "
            f"results in {out / 'results.parquet'} ({summary['wall_s']:.1f} s)")

