"""Routing traces: read, write, generate, and their load statistics.

A trace is a 0/1 array ``(layers, tokens, experts)``: ``trace[l, t, e] == 1`` when token ``t``
went to expert ``e`` in MoE layer ``l``. Formats:

* ``.npy``: the primary paper's format, exactly that array (any integer or bool dtype holding
  only 0 and 1).
* ``.csv``: the NeuPIMs / DynaNDE router-score format, header ``layer_id,token_id,expert_0..``;
  a token's experts are those with a non-zero score (scores are kept by :func:`read_csv_scores`).

Synthetic generators (seeded): ``uniform`` (k distinct experts uniformly), ``zipf`` (expert
popularity ``p_i ~ 1/(i+1)**skew`` over a per-layer random permutation), ``neupims`` (the
NeuPIMs fork's rule: weights ``1/(i+1)`` for the top 5 % of experts and ``0.2/(i+1)`` for the
rest), each with optional temporal ``locality`` (probability that a token repeats the previous
token's experts).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

__all__ = ["TraceError", "read_trace", "write_trace", "read_csv_scores", "write_csv",
           "check_csv_size",
           "generate_trace", "load_stats", "check_trace", "SYNTHETIC_KINDS",
           "PAPER_LOAD_FACTORS", "largest_group_loads", "match_group_loads",
           "generate_matched_trace"]

SYNTHETIC_KINDS = ("uniform", "zipf", "neupims")


class TraceError(ValueError):
    """A malformed trace; the message names the file and the problem."""


DEFAULT_MAX_BYTES = 1 << 30     # largest array a read may allocate unless told otherwise


def check_trace(trace: np.ndarray, source: str, *, n_experts: int | None = None) -> np.ndarray:
    arr = np.asarray(trace)
    if arr.ndim != 3:
        raise TraceError(f"{source}: trace has rank {arr.ndim} (shape {arr.shape}); expected "
                         "rank 3 (layers, tokens, experts)")
    if arr.dtype.kind not in "biuf":
        raise TraceError(f"{source}: trace has dtype {arr.dtype}; expected 0/1 integers")
    for axis, name in enumerate(("layers", "tokens", "experts")):
        if arr.shape[axis] == 0:
            raise TraceError(f"{source}: trace has 0 {name} (shape {arr.shape}); expected at "
                             f"least one layer, token and expert")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise TraceError(f"{source}: trace holds {arr[where]!r} at (layer, token, expert) = "
                         f"{where}; only 0 and 1 are allowed")
    if n_experts is not None and arr.shape[2] != n_experts:
        raise TraceError(f"{source}: trace has {arr.shape[2]} experts; the model has "
                         f"{n_experts}")
    return arr.astype(np.uint8)


def _too_big(path, shape, itemsize: int, max_bytes: int | None) -> None:
    need = math.prod(shape) * itemsize
    if max_bytes is not None and need > max_bytes:
        raise TraceError(f"{path}: the trace claims shape {tuple(shape)} ({need / 2**30:.1f} "
                         f"GiB); the limit is {max_bytes / 2**30:.1f} GiB (override with "
                         "--allow-large)")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    if path.is_dir():
        raise TraceError(f"{path}: is a folder; expected a .npy or .csv trace file")
    if not path.is_file():
        raise TraceError(f"{path}: not a regular file; expected a .npy or .csv trace file")


def _read_npy(path: Path, max_bytes: int | None) -> np.ndarray:
    """A ``.npy`` array, its header checked (rank, dtype, size, length) before allocating."""
    size = path.stat().st_size
    if size == 0:
        raise TraceError(f"{path}: empty file; expected a .npy array")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many kinds
        raise TraceError(f"{path}: not a readable .npy array ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise TraceError(f"{path}: trace has dtype {dtype}; expected 0/1 integers")
    if len(shape) != 3:
        raise TraceError(f"{path}: trace has rank {len(shape)} (shape {shape}); expected rank "
                         "3 (layers, tokens, experts)")
    _too_big(path, shape, dtype.itemsize, max_bytes)
    if size - offset < math.prod(shape) * dtype.itemsize:
        raise TraceError(f"{path}: truncated: the header claims shape {shape} "
                         f"({math.prod(shape) * dtype.itemsize} bytes of data), the file holds "
                         f"{size - offset}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad user file
        raise TraceError(f"{path}: not a readable .npy array ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None


def read_trace(path, *, n_experts: int | None = None,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """A ``.npy`` or ``.csv`` trace as a checked ``(layers, tokens, experts)`` uint8 array.
    ``max_bytes``: refuse a trace whose array would be larger (``None``: no limit)."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".npy":
        arr = _read_npy(path, max_bytes)
    elif path.suffix == ".csv":
        arr = (read_csv_scores(path, max_bytes=max_bytes) != 0).astype(np.uint8)
    else:
        raise TraceError(f"{path}: unknown trace format {path.suffix!r}; expected .npy or .csv")
    return check_trace(arr, str(path), n_experts=n_experts)


# reading a CSV holds every field as a Python string (~50 bytes for a 2-byte "0,"): a CSV may
# be at most this fraction of the memory limit
CSV_BLOWUP = 32


def check_csv_size(shape, max_bytes: int | None, source) -> None:
    """Refuse to write a CSV trace that :func:`read_trace` would refuse under ``max_bytes``
    (its text, about 2 bytes per score plus the ids, and its float scores)."""
    if max_bytes is None:
        return
    n_layers, n_tokens, n_experts = shape
    text = n_layers * n_tokens * (2 * n_experts + 16)
    if text > max_bytes // CSV_BLOWUP or math.prod(shape) * 8 > max_bytes:
        raise TraceError(f"{source}: a CSV of shape {tuple(shape)} (about {text / 2**20:.0f} "
                         f"MiB) could not be read back under the limit of "
                         f"{max_bytes // CSV_BLOWUP / 2**20:.0f} MiB of CSV; write .npy, or "
                         "override with --allow-large")


def _csv_text(path: Path, max_bytes: int | None) -> str:
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes // CSV_BLOWUP:
        raise TraceError(f"{path}: {size / 2**20:.0f} MiB of CSV; the limit is "
                         f"{max_bytes // CSV_BLOWUP / 2**20:.0f} MiB (override with "
                         "--allow-large)")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise TraceError(f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; "
                         "expected a UTF-8 (or ASCII) CSV text file") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise TraceError(f"{path}: line {line}: a NUL byte; expected a CSV text file "
                         "(UTF-16 or binary data?)")
    return text


def read_csv_scores(path, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Scores ``(layers, tokens, experts)`` of a NeuPIMs/DynaNDE CSV (missing rows are 0).
    A (layer, token) given twice, or a score that is not a finite number, is an error."""
    path = Path(path)
    _check_file(path)
    text = _csv_text(path, max_bytes)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise TraceError(f"{path}: not a readable CSV ({e})") from None
    if not rows:
        raise TraceError(f"{path}: empty file; expected a header layer_id,token_id,expert_0,...")
    header = [h.strip() for h in rows[0]]
    n_experts = len(header) - 2
    want = ["layer_id", "token_id"] + [f"expert_{i}" for i in range(n_experts)]
    if n_experts < 1 or header != want:
        raise TraceError(f"{path}: header {','.join(header[:4])[:80]}... is not "
                         "layer_id,token_id,expert_0,expert_1,...")
    entries = []
    seen: dict[tuple[int, int], int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise TraceError(f"{path}: line {line} has {len(row)} fields; expected {len(header)}")
        try:
            layer, token = int(row[0]), int(row[1])
            scores = [float(v) for v in row[2:]]
        except ValueError:
            raise TraceError(f"{path}: line {line} is not numeric: "
                             f"{','.join(row[:4])[:80]}...") from None
        if layer < 0 or token < 0:
            raise TraceError(f"{path}: line {line}: negative layer or token id")
        bad = [i for i, v in enumerate(scores) if not math.isfinite(v)]
        if bad:
            raise TraceError(f"{path}: line {line}: expert_{bad[0]} = {row[2 + bad[0]]}; "
                             "scores must be finite numbers")
        if (layer, token) in seen:
            raise TraceError(f"{path}: line {line}: layer {layer} token {token} is also on "
                             f"line {seen[layer, token]}; each (layer, token) once")
        seen[layer, token] = line
        entries.append((layer, token, scores))
    if not entries:
        raise TraceError(f"{path}: no data rows")
    n_layers = max(e[0] for e in entries) + 1
    n_tokens = max(e[1] for e in entries) + 1
    _too_big(path, (n_layers, n_tokens, n_experts), 8, max_bytes)
    out = np.zeros((n_layers, n_tokens, n_experts), dtype=np.float64)
    for layer, token, scores in entries:
        out[layer, token] = scores
    return out


def write_trace(path, trace: np.ndarray) -> Path:
    """Write a trace as ``.npy`` or ``.csv`` (by suffix), atomically."""
    path = Path(path)
    arr = check_trace(trace, str(path))
    if path.suffix not in (".npy", ".csv"):
        raise TraceError(f"{path}: unknown trace format {path.suffix!r}; expected .npy or .csv")
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, arr)
        else:
            write_csv(tmp, arr.astype(np.float64))
        tmp.replace(path)
    except BaseException:            # an interrupted write leaves neither file half-written
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_csv(path, scores: np.ndarray) -> None:
    n_layers, n_tokens, n_experts = scores.shape
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer_id", "token_id"] + [f"expert_{i}" for i in range(n_experts)])
        for layer in range(n_layers):
            for t in range(n_tokens):
                w.writerow([layer, t] + [f"{v:g}" for v in scores[layer, t]])


def _popularity(kind: str, n_experts: int, skew: float) -> np.ndarray:
    ranks = np.arange(n_experts, dtype=np.float64)
    if kind == "uniform":
        w = np.ones(n_experts)
    elif kind == "zipf":
        w = 1.0 / (ranks + 1) ** skew
    elif kind == "neupims":
        top = max(1, math.ceil(0.05 * n_experts))
        w = np.where(ranks < top, 1.0, 0.2) / (ranks + 1)
    else:
        raise ValueError(f"kind={kind!r} is not allowed: one of {SYNTHETIC_KINDS}")
    return w / w.sum()


def generate_trace(kind: str, *, n_layers: int, n_tokens: int, n_experts: int, top_k: int,
                   seed: int, skew: float = 1.0, locality: float = 0.0) -> np.ndarray:
    """A seeded synthetic token-choice trace: each token picks ``top_k`` distinct experts."""
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k} is not allowed: an integer from 1 to {n_experts}")
    if not 0.0 <= locality <= 1.0:
        raise ValueError(f"locality={locality} is not allowed: a probability in [0, 1]")
    if n_layers < 1 or n_tokens < 1:
        raise ValueError("n_layers and n_tokens must be positive integers")
    rng = np.random.default_rng(seed)
    base = _popularity(kind, n_experts, skew)
    out = np.zeros((n_layers, n_tokens, n_experts), dtype=np.uint8)
    for layer in range(n_layers):
        p = base[np.argsort(rng.permutation(n_experts))]   # popularity per expert, shuffled
        prev = None
        for t in range(n_tokens):
            if prev is not None and locality and rng.random() < locality:
                chosen = prev
            else:
                chosen = rng.choice(n_experts, size=top_k, replace=False, p=p)
            out[layer, t, chosen] = 1
            prev = chosen
    return out


def load_stats(trace: np.ndarray) -> list[dict]:
    """Per layer: tokens per expert, experts per token (min/mean/max), imbalance max/mean."""
    arr = check_trace(trace, "trace")
    stats = []
    for layer in range(arr.shape[0]):
        per_expert = arr[layer].sum(axis=0).astype(int)
        per_token = arr[layer].sum(axis=1).astype(int)
        mean = per_expert.mean()
        stats.append({
            "layer": layer,
            "tokens_per_expert": per_expert.tolist(),
            "experts_per_token": {"min": int(per_token.min()), "mean": float(per_token.mean()),
                                  "max": int(per_token.max())},
            "imbalance": float(per_expert.max() / mean) if mean > 0 else 0.0,
            "idle_experts": int((per_expert == 0).sum()),
        })
    return stats


# ---------------------------------------------------------------------------------------------
# calibrated token-choice traces: per-grouping largest loads as the primary paper's

# Largest group load / tokens of the authors' compact schedules (their ``mvm_factor``, from
# their moe_schedule.py printout, used in their scripts.sh; Gao & Yang, ISCAS 2026, code
# github.com/superstarghy/MoEwithPIM): 16 experts, 4 per token (mean expert load 0.25 N).
PAPER_LOAD_FACTORS = {"U1": 0.4989, "U2": 0.7518, "S2": 0.5753, "U4": 1.2288, "S4": 1.0627}


def largest_group_loads(loads, groupings) -> dict:
    """For each grouping (``U<n>``/``S<n>``, ``moepim.models.grouping``), the largest total
    load of one group: the length of a compact schedule."""
    from .grouping import make_groups

    loads = np.asarray(loads, dtype=np.int64)
    return {g: int(max(loads[list(grp)].sum() for grp in make_groups(g, len(loads), loads)))
            for g in groupings}


def match_group_loads(targets: dict, *, n_tokens: int, n_experts: int, top_k: int, seed: int,
                      steps: int = 20000) -> np.ndarray:
    """Integer expert loads (each 0..``n_tokens``, summing to ``top_k * n_tokens``) whose
    largest group load per grouping is as close as integers allow to ``targets[g] *
    n_tokens`` (a seeded local search: move one selection from one expert to another when the
    summed distance does not grow)."""
    if not 1 <= top_k <= n_experts or n_tokens < 1:
        raise ValueError(f"top_k={top_k}, n_tokens={n_tokens}: need 1 <= top_k <= "
                         f"{n_experts} and n_tokens >= 1")
    want = {g: f * n_tokens for g, f in targets.items()}
    largest_group_loads(np.ones(n_experts), want)        # the groupings are valid
    arange = np.arange(n_experts)

    def largest(x, g):         # largest_group_loads' rule, vectorised for the search
        n = int(g[1:])
        if g[0].upper() == "U" or n == 1:
            return x.reshape(-1, n).sum(axis=1).max()
        order = np.lexsort((arange, x))
        half = n // 2
        return (x[order[:n_experts // 2]].reshape(-1, half).sum(axis=1)
                + x[order[::-1][:n_experts // 2]].reshape(-1, half).sum(axis=1)).max()

    def cost(x):
        return sum(abs(largest(x, g) - w) for g, w in want.items())

    rng = np.random.default_rng(seed)
    loads = np.full(n_experts, top_k * n_tokens // n_experts, dtype=np.int64)
    loads[: top_k * n_tokens - int(loads.sum())] += 1
    best = cost(loads)
    max_step = max(1, n_tokens // 32)
    for _ in range(steps):
        a, b = rng.choice(n_experts, size=2, replace=False)
        d = int(min(rng.integers(1, max_step + 1), loads[a], n_tokens - loads[b]))
        if d == 0:
            continue
        loads[a] -= d
        loads[b] += d
        c = cost(loads)
        if c <= best:
            best = c
        else:
            loads[a] += d
            loads[b] -= d
    return loads


def _rows_with_loads(loads: np.ndarray, top_k: int, rng) -> np.ndarray:
    """A random 0/1 block, ``top_k`` ones per row, column sums ``loads``: each token draws its
    experts with probability proportional to their remaining load, experts that need every
    remaining token first."""
    left = np.array(loads, dtype=np.int64)
    n_tokens = int(left.sum()) // top_k
    out = np.zeros((n_tokens, len(left)), dtype=np.uint8)
    for t in range(n_tokens):
        forced = np.flatnonzero(left == n_tokens - t)
        free = np.flatnonzero((left > 0) & (left < n_tokens - t))
        k = top_k - len(forced)
        pick = rng.choice(free, size=k, replace=False, p=left[free] / left[free].sum()) \
            if k else np.array([], dtype=np.int64)
        chosen = np.concatenate([forced, pick]).astype(np.int64)
        out[t, chosen] = 1
        left[chosen] -= 1
    return out


def generate_matched_trace(targets: dict, *, n_layers: int, n_tokens: int, n_experts: int,
                           top_k: int, seed: int, block: int | None = None) -> np.ndarray:
    """A seeded token-choice trace whose largest group loads match ``targets`` (grouping ->
    largest group load / tokens, e.g. :data:`PAPER_LOAD_FACTORS`): every ``block`` tokens
    (default: all) carry the loads of :func:`match_group_loads`, drawn at random token by
    token, so every block-aligned window (a 32-token prompt, the whole trace) has them."""
    block = block or n_tokens
    if n_layers < 1 or n_tokens < 1 or block < 1 or n_tokens % block:
        raise ValueError(f"n_tokens={n_tokens} must be a positive multiple of block={block} "
                         "and n_layers positive")
    loads = match_group_loads(targets, n_tokens=block, n_experts=n_experts, top_k=top_k,
                              seed=seed)
    rng = np.random.default_rng(seed)
    return np.stack([np.concatenate([_rows_with_loads(loads, top_k, rng)
                                     for _ in range(n_tokens // block)])
                     for _ in range(n_layers)])

