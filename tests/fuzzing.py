"""Fuzzing harness of the command line, shared by ``tests/test_fuzz_cli.py`` (hypothesis, a few
dozen examples per property) and ``tools/fuzz_cli.py`` (a longer seeded campaign with counts).

Each case runs ``moepim.sim.cli.main(argv)`` in-process, in a fresh folder holding files the
user owns (``precious.txt``, ``keep/notes.txt``), and is classified:

* ``clean``: exit 0, or exit 2 with exactly one line on stderr naming the file (and the key, where
  the case names one); no output folder on failure; the user's files untouched;
* ``traceback``: any other exit code (3: an internal error), a traceback, several lines;
* ``unclear``: exit 2 with one line that names neither the file nor the key;
* ``silently_wrong``: exit 0 on an input the case knows to be invalid, or a converted trace that
  moepim then rejects;
* ``lost``: a user's file changed or vanished (without ``--force`` naming it);
* ``left_output``: an output folder exists after a failure;
* ``hang``: no answer within the time limit.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT

SMALL = REPO_ROOT / "configs" / "experiments" / "tile-small.yaml"
TECH = REPO_ROOT / "configs" / "tech" / "isaac-32nm.yaml"
VERDICTS = ("clean", "traceback", "unclear", "silently_wrong", "lost", "left_output", "hang")
PRECIOUS = "precious.txt"
KEEP = "keep"


class _Timeout(BaseException):
    pass


@dataclass
class Case:
    """One invocation: the files to create (name -> bytes, or None for a folder), argv (names
    relative to the case folder), what it must do."""

    argv: list[str]
    files: dict = field(default_factory=dict)
    invalid: bool = False            # exit 0 would be silently wrong
    names: tuple[str, ...] = ()      # words a refusal must contain (file, key)
    out: str | None = None           # an output that must not exist after a failure
    then: list[list[str]] = field(default_factory=list)   # run after a success, must exit 0
    label: str = ""
    any_of: tuple[str, ...] = ()     # a refusal must contain one of these (e.g. either file)


@dataclass
class Result:
    verdict: str
    code: int | None
    stderr: str
    case: Case


def _snapshot(folder: Path) -> dict:
    return {PRECIOUS: (folder / PRECIOUS).read_bytes() if (folder / PRECIOUS).is_file() else None,
            KEEP: (folder / KEEP / "notes.txt").read_bytes()
            if (folder / KEEP / "notes.txt").is_file() else None}


def invoke(argv, timeout_s: float = 60.0) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise _Timeout()

    use_alarm = hasattr(signal, "SIGALRM") and timeout_s
    old = signal.signal(signal.SIGALRM, alarm) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
    except _Timeout:
        code = None
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def run_case(case: Case, folder: Path, timeout_s: float = 60.0) -> Result:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PRECIOUS).write_text("the user's own file\n")
    (folder / KEEP).mkdir(exist_ok=True)
    (folder / KEEP / "notes.txt").write_text("the user's notes\n")
    for name, data in case.files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(data)
    before = _snapshot(folder)
    before["out"] = _exists(folder, case.out)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code, _, err = invoke(case.argv, timeout_s)
        verdict = _classify(case, code, err, folder, before)
        if verdict == "clean" and code == 0:
            for argv in case.then:
                c2, _, e2 = invoke(argv, timeout_s)
                if c2 != 0:
                    verdict, err = "silently_wrong", f"then {argv}: exit {c2}: {e2}"
                    break
    finally:
        os.chdir(cwd)
    return Result(verdict, code, err, case)


def _exists(folder: Path, name) -> bool:
    if not name:
        return False
    try:
        return (folder / name).exists()
    except OSError:
        return False


def _classify(case: Case, code, err: str, folder: Path, before: dict) -> str:
    after = _snapshot(folder)
    # replacing is asked for: a folder named with --force, a file named as a trace command's
    # output (like cp, those overwrite the file they are told to write)
    asked = "--force" in case.argv or case.argv[:1] == ["trace"]
    for name in (PRECIOUS, KEEP):
        if after[name] != before[name] and not (asked and name in case.argv):
            return "lost"
    if code is None:
        return "hang"
    lines = err.strip().splitlines()
    if code not in (0, 2) or "Traceback" in err:
        return "traceback"
    if code == 0:
        return "silently_wrong" if case.invalid else "clean"
    if case.out and not before["out"] and _exists(folder, case.out):
        return "left_output"
    if len(lines) != 1:
        return "traceback"
    if case.names and not all(w in lines[0] for w in case.names):
        return "unclear"
    if case.any_of and not any(w in lines[0] for w in case.any_of):
        return "unclear"
    return "clean"


# ---------------------------------------------------------------------------------------------
# generators (each takes a random.Random; hypothesis draws the seed)

WEIRD_NUMBERS = [-5, -1, 0, 1, 2, 3, 7, 8, 16, 255, 256, 4096, 10**9, 10**12, 2**63, -2**63,
                 0.5, -0.5, 1e9, 1e-300, float("nan"), float("inf"), float("-inf")]
WEIRD_SCALARS = ["", "yes", "no", "on", "030", "0x1F", "1_000", "~", "abc", "\u00e9",
                 True, False, None, [], {}, [1, 2], {"a": 1}]


def _weird(rng: random.Random):
    return rng.choice(WEIRD_NUMBERS if rng.random() < 0.6 else WEIRD_SCALARS)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield (*prefix, k), v
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


def _set(d, keys, value, delete=False):
    for k in keys[:-1]:
        d = d[k]
    if delete:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


def _must_refuse(key: str, old, new) -> bool:
    """Values no config key accepts: negative, non-finite, or of another type than a number
    where a number was."""
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is not type(new) and isinstance(old, bool)
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        if not isinstance(new, (int, float)) or isinstance(new, bool):
            return True
        if isinstance(new, float) and not math.isfinite(new):
            return True
        if new < 0:
            return True
        if isinstance(old, int) and isinstance(new, float) and not key.endswith(".value"):
            return True                 # an integer key (a Constant's value is a number)
        if key.endswith(".value") and new == 0 and not any(
                z in key for z in ("latency_ns", "idle_power_w", "adc_leakage_mw")):
            return True
    return False


def config_case(rng: random.Random) -> Case:
    """tile-small.yaml (or the tech file it uses) with one key changed, removed or added, or the
    text damaged (duplicate key, YAML 1.1 octal, bytes)."""
    raw = yaml.safe_load(SMALL.read_text())
    tech = yaml.safe_load(TECH.read_text())
    raw["tech"] = "tech.yaml"
    target_is_tech = rng.random() < 0.35
    doc, fname = (tech, "tech.yaml") if target_is_tech else (raw, "exp.yaml")
    paths = [p for p, _ in _paths(doc)]
    op = rng.choice(["set", "set", "set", "delete", "add", "text"])
    invalid, key = False, None
    if op in ("set", "delete"):
        keys = rng.choice(paths)
        key = ".".join(map(str, keys))
        old = dict(_paths(doc))[keys]
        if op == "set":
            new = _weird(rng)
            _set(doc, keys, new)
            invalid = _must_refuse(key, old, new)
        else:
            _set(doc, keys, None, delete=True)
            invalid = str(keys[-1]) in ("version", "kind", "tile", "tech", "value", "source",
                                        "name", "clock_ns") and keys[0] != "workload"
    elif op == "add":
        parents = [()] + [p for p, v in _paths(doc) if isinstance(v, dict)]
        parent = rng.choice(parents)
        d = doc
        for k in parent:
            d = d[k]
        name = rng.choice(["n_adc", "bogus", "Seed", "tile2"])
        d[name] = _weird(rng)
        key = ".".join(map(str, (*parent, name)))
        invalid = True
    texts = {"exp.yaml": yaml.safe_dump(raw, sort_keys=False),
             "tech.yaml": yaml.safe_dump(tech, sort_keys=False)}
    if op == "text":
        t = texts[fname]
        kind = rng.choice(["dup", "octal", "bytes", "truncate", "deep", "tab"])
        lines = t.splitlines(keepends=True)
        i = rng.randrange(1, len(lines))
        if kind == "dup" and ":" in lines[i] and not lines[i].strip().startswith("-"):
            t = "".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
            invalid = True
        elif kind == "octal" and fname == "exp.yaml":
            t = t.replace("n_mvms: 24", "n_mvms: 030")
        elif kind == "bytes":
            b = bytearray(t.encode())
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            texts[fname] = bytes(b)
            t = None
        elif kind == "truncate":
            t = t[:rng.randrange(len(t))]
        elif kind == "deep":
            t = t + "extra: " + "[" * 3000 + "]" * 3000 + "\n"
            invalid = True
        elif kind == "tab":
            t = t.replace("  ", "\t", 1)
            invalid = True
        if t is not None:
            texts[fname] = t
    files = {k: v if isinstance(v, bytes) else v.encode() for k, v in texts.items()}
    names = (fname,) + ((key.split(".")[-1],) if key and op == "set" and invalid else ())
    out = "out"
    return Case(["check", "exp.yaml"], files, invalid=invalid, names=names, out=out,
                then=[], label=f"config {op} {fname} {key or ''}")


LAYER = REPO_ROOT / "configs" / "experiments" / "layer-small.yaml"


def layer_config_case(rng: random.Random) -> Case:
    """layer-small.yaml, its model or its DRAM file with one key changed, removed or added."""
    raw = yaml.safe_load(LAYER.read_text())
    for key in ("model", "tile", "tech", "dram"):
        raw[key] = str((LAYER.parent / raw[key]).resolve())
    model = yaml.safe_load(Path(raw["model"]).read_text())
    dram = yaml.safe_load(Path(raw["dram"]).read_text())
    raw["model"], raw["dram"] = "model.yaml", "dram.yaml"
    docs = {"exp.yaml": raw, "model.yaml": model, "dram.yaml": dram}
    fname = rng.choice(list(docs))
    doc = docs[fname]
    paths = [p for p, _ in _paths(doc)]
    op = rng.choice(["set", "set", "set", "delete", "add"])
    invalid, key = False, None
    if op == "add":
        parents = [()] + [p for p, v in _paths(doc) if isinstance(v, dict)]
        parent = rng.choice(parents)
        d = doc
        for k in parent:
            d = d[k]
        name = rng.choice(["bogus", "N_experts", "lane"])
        d[name] = _weird(rng)
        key, invalid = ".".join(map(str, (*parent, name))), True
    else:
        keys = rng.choice(paths)
        key = ".".join(map(str, keys))
        old = dict(_paths(doc))[keys]
        if op == "set":
            new = _weird(rng)
            if rng.random() < 0.3 and keys[-1] == "grouping":
                new = rng.choice(["U3", "S3", "U0", "S16", [[0, 1]], "x"])
            _set(doc, keys, new)
            invalid = _must_refuse(key, old, new)
        else:
            _set(doc, keys, None, delete=True)
            invalid = (str(keys[-1]) in ("version", "kind", "model", "tile", "tech", "dram")
                       and keys[0] != "workload" and fname == "exp.yaml") or (
                fname == "dram.yaml" and (len(keys) == 2 or keys[0] in ("version", "name")))
    files = {k: yaml.safe_dump(v, sort_keys=False).encode() for k, v in docs.items()}
    # a value that breaks a rule across files (experts vs grouping, d_model vs lanes, the
    # resource estimate) is reported where the rule is checked: the file or the experiment
    names = ((fname,) + (key.split(".")[-1],)) if op == "set" and invalid else ()
    return Case(["check", "exp.yaml"], files, invalid=invalid, names=names, out="out",
                any_of=(fname, "exp.yaml"), label=f"layer config {op} {fname} {key}")


def config_run_case(case: Case) -> Case:
    """The same config under ``run`` into ``out``: used when ``check`` refused it (a refused
    config must never leave an output folder, nor build anything)."""
    return Case(["run", "exp.yaml", "--out", "out", "--quiet", "--sim", "amaranth"],
                case.files, invalid=True, names=case.names[:1], out="out",
                any_of=case.any_of, label=case.label + " (run)")


def _csv_text(tr: np.ndarray) -> str:
    n_layers, n_tokens, n_experts = tr.shape
    rows = ["layer_id,token_id," + ",".join(f"expert_{i}" for i in range(n_experts))]
    for layer in range(n_layers):
        for t in range(n_tokens):
            rows.append(f"{layer},{t}," + ",".join(str(int(v)) for v in tr[layer, t]))
    return "\n".join(rows) + "\n"


def trace_case(rng: random.Random) -> Case:
    """A valid small trace, damaged one way or another, then ``trace inspect``; a trace that
    passes must also convert to a file ``trace inspect`` accepts."""
    shape = (rng.randint(1, 2), rng.randint(1, 12), rng.randint(1, 8))
    tr = (np.random.default_rng(rng.randrange(1 << 30)).random(shape) < 0.4).astype(np.uint8)
    fmt = rng.choice(["csv", "npy"])
    name = f"t.{fmt}"
    if fmt == "npy":
        b = io.BytesIO()
        np.save(b, tr)
        data = b.getvalue()
    else:
        data = _csv_text(tr).encode()
    kind = rng.choice(["none", "truncate", "flip", "dup", "nan", "inf", "neg", "two", "hugeid",
                       "utf16", "latin1", "empty", "dir", "zero", "header", "bom", "blank",
                       "shape", "dtype"])
    invalid = kind in ("empty", "dir", "zero") or (
        fmt == "csv" and kind in ("dup", "nan", "inf", "utf16", "hugeid"))
    if kind == "truncate":
        data = data[:rng.randrange(len(data))]
    elif kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    elif fmt == "csv" and kind in ("dup", "nan", "inf", "neg", "two", "hugeid"):
        lines = data.decode().splitlines()
        i = rng.randrange(1, len(lines))
        f = lines[i].split(",")
        if kind == "dup":
            lines.append(lines[i])
        elif kind == "hugeid":
            f[1] = str(10**12)
            lines[i] = ",".join(f)
        else:
            f[2 + rng.randrange(len(f) - 2)] = {"nan": "nan", "inf": "inf", "neg": "-1",
                                                "two": "2"}[kind]
            lines[i] = ",".join(f)
        data = ("\n".join(lines) + "\n").encode()
    elif fmt == "npy" and kind in ("nan", "inf", "two", "neg"):
        arr = tr.astype(np.float64 if kind in ("nan", "inf") else np.int64)
        arr.flat[rng.randrange(arr.size)] = {"nan": np.nan, "inf": np.inf, "two": 2,
                                             "neg": -1}[kind]
        b = io.BytesIO()
        np.save(b, arr)
        data = b.getvalue()
        invalid = True
    elif kind == "utf16":
        data = data.decode("latin-1").encode("utf-16")
        invalid = fmt == "csv"
    elif kind == "latin1" and fmt == "csv":
        data = data.replace(b"expert_0", "expert_\u00e9".encode("latin-1"))
        invalid = True
    elif kind == "empty":
        data = b""
    elif kind == "zero":
        b = io.BytesIO()
        np.save(b, np.zeros((1, 0, shape[2]), np.uint8))
        data = b.getvalue() if fmt == "npy" else _csv_text(np.zeros((1, 0, 2))).encode()
    elif kind == "header" and fmt == "csv":
        data = data.replace(b"layer_id", b"layer", 1)
        invalid = True
    elif kind == "bom" and fmt == "csv":
        data = b"\xef\xbb\xbf" + data
    elif kind == "blank" and fmt == "csv":
        data = data.replace(b"\n", b"\n\n", 2)
    elif kind == "shape" and fmt == "npy":
        data = data.replace(str(shape).encode(), b"(99999, 99999, 999)".ljust(len(str(shape)))
                            [:len(str(shape))], 1) if len(str(shape)) >= 9 else data
    elif kind == "dtype" and fmt == "npy":
        b = io.BytesIO()
        np.save(b, np.array([[["a"]]]))
        data = b.getvalue()
        invalid = True
    files = {name: None if kind == "dir" else data}
    argv = ["trace", "inspect", name]
    extra = rng.choice([[], ["--json", "s.json"], ["--json", "nodir/s.json"], ["--json", KEEP],
                        ["--plot", "p.png"], ["--plot", KEEP]])
    argv += extra
    if extra and extra[1] in (KEEP, "nodir/s.json"):
        invalid = True
    then = [["trace", "convert", name, "c.csv"], ["trace", "inspect", "c.csv"],
            ["trace", "convert", "c.csv", "c.npy"], ["trace", "inspect", "c.npy"]]
    return Case(argv, files, invalid=invalid, names=(extra[1] if invalid and extra
                                                     and extra[1] in (KEEP, "nodir/s.json")
                                                     else name,),
                then=then, label=f"trace {fmt} {kind} {' '.join(extra)}")


def _opt_value(rng):
    return rng.choice(["0", "-1", "1", "3", "1000000000000", "nan", "inf", "x", "", "U2", "S2",
                       "U3", "S3", "U0", "zipf", "reschedule", "bogus"])


def _path_value(rng):
    return rng.choice(["nope.yaml", PRECIOUS, KEEP, ".", "..", "/proc/x", "/sys/x", "a" * 300,
                       f"{PRECIOUS}/sub", "nodir/x", "t.npy", "t.csv", "bad.yaml", "newdir",
                       "exp.yaml", "/dev/null", "/dev/zero"])


def args_case(rng: random.Random) -> Case:
    """A command line drawn from a grammar of the subcommands with wrong, odd or missing
    arguments (never one that would build a simulator: runs and exports get no valid
    config)."""
    tr = np.zeros((1, 8, 4), np.uint8)
    tr[0, np.arange(8), np.arange(8) % 4] = 1
    b = io.BytesIO()
    np.save(b, tr)
    files = {"t.npy": b.getvalue(), "t.csv": _csv_text(tr).encode(),
             "bad.yaml": b"version: 1\nkind: tile\ntile: {n_rows: -1}\ntech: x\n"}
    cmd = rng.choice(["run", "export", "synth", "check", "schedule", "trace generate",
                      "trace inspect", "trace convert", "waves", "", "bogus", "trace"])
    argv = cmd.split()
    opts = {"run": ["--out", "--sim", "--allow-large", "--force", "--waves", "--quiet"],
            "export": ["--top", "--out", "--force"], "synth": ["--top", "--out", "--flow"],
            "check": ["--allow-large"],
            "schedule": ["--trace", "--layer", "--groups", "--policy", "--out", "--profile",
                         "--model", "--force", "--allow-large"],
            "trace generate": ["--kind", "--experts", "--top-k", "--tokens", "--layers",
                               "--skew", "--locality", "--seed", "--out", "--model"],
            "trace inspect": ["--json", "--plot", "--model"], "trace convert": ["--allow-large"],
            "waves": ["--update-golden"]}.get(cmd, ["--help", "--x"])
    if cmd in ("run", "export", "synth", "check", "trace inspect", "trace convert"):
        pool = ["nope.yaml", PRECIOUS, KEEP, "bad.yaml", "t.npy", "t.csv", "/dev/zero"]
        if cmd == "check":
            pool.append(str(SMALL))
        argv.append(rng.choice(pool))
    if cmd == "trace convert":
        argv.append(_path_value(rng))
    if cmd == "waves":
        argv += [rng.choice(["record", "check", "x"]), rng.choice(["nope", "bad.yaml"])]
    if cmd == "schedule":
        argv += ["--trace", rng.choice(["t.npy", "t.csv", "nope.npy", KEEP, "bad.yaml"])]
    for _ in range(rng.randint(0, 4)):
        o = rng.choice(opts)
        argv.append(o)
        if o in ("--out", "--json", "--plot", "--model", "--profile", "--trace"):
            argv.append(_path_value(rng))
        elif o not in ("--allow-large", "--force", "--waves", "--quiet", "--update-golden",
                       "--help"):
            argv.append(_opt_value(rng))
    if cmd == "trace generate" and rng.random() < 0.5:
        argv += ["--experts", "4", "--top-k", "2", "--tokens", rng.choice(["8", "0", "-3"])]
    outs = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "--out"]
    out = outs[-1] if outs else None             # argparse keeps the last
    return Case(argv, files, out=out if out not in (PRECIOUS, KEEP, ".", "..") else None,
                label="args " + " ".join(argv)[:120])


def summarize(results: list[Result]) -> dict:
    counts = {v: 0 for v in VERDICTS}
    for r in results:
        counts[r.verdict] += 1
    return {"tried": len(results), **counts}


def describe(r: Result) -> str:
    return json.dumps({"verdict": r.verdict, "code": r.code, "label": r.case.label,
                       "argv": r.case.argv, "stderr": r.stderr.strip()[-400:]})
