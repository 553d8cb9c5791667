"""A layer run's golden model, computed once per workload and kept.

Every layer run needs its workload's golden model (``moepim.models.workload.make_workload``
through the crossbar arithmetic of its tile): the integer weights and inputs, the golden
routing and outputs, the calibrated ADC windows, and then every product the run asks of the
crossbars and of exact integer arithmetic (the windows' expected outputs, the no-cache
recomputation, the timing level's DAC counts, the accuracy block). All of it depends on the
model, the tokens, the seed, the weights and trace files and the tile's arithmetic, and on
nothing else: not on the grouping, the policy, the GO cache, the lanes, the peripheral sets,
the DRAM or the technology. So the points of a sweep that vary the hardware share one, and a
second run of a workload reads it instead of computing it.

:func:`golden_for` gives a :class:`Golden` (the workload, its :class:`CrossbarMatmul` and an
exact integer product, both keeping every row they computed: ``moepim.models.pim.RowMemo``):

* kept in the process: the last :data:`KEEP_IN_PROCESS` workloads (a sweep's worker runs many
  points), fewer when together they would hold more than :data:`KEEP_MEMORY_SHARE` of the
  memory available (a large model's weights and encoded cells are gigabytes);
* kept on disk: ``<build_root>/cache/golden/<key>.pkl``, the SHA-256 ``key`` of everything the
  golden model depends on (the model's configuration, tokens, seed, the weights' and trace's
  values, the tile's arithmetic: its shape but the ADC count, the calibration's constants, the
  versions of numpy and torch and the source of ``moepim.models`` and of this module). It holds the workload without its float
  weights (only the float reference's outputs are used after it is made), the ADC windows and
  the memoised rows of both products, and is rewritten (atomically) when a run computed rows it
  did not hold. An unreadable entry is computed again and rewritten.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moepim.models.pim import CrossbarMatmul, MemoMatmul
from moepim.models.quant import int_matmul
from moepim.models.workload import Workload, make_workload
from moepim.spec.tile import TileSpec

from .report import atomic_write_bytes

__all__ = ["Golden", "golden_for", "golden_key", "KEEP_IN_PROCESS", "FORMAT"]

KEEP_IN_PROCESS = 2          # workloads kept per process (each: the layer's integer weights)
KEEP_MEMORY_SHARE = 0.25     # ... and together at most this share of the memory available
FORMAT = 1                   # the on-disk entry's layout


@dataclass
class Golden:
    """A workload's golden model: ``wl``, the crossbar product ``matmul`` (calibrated) and the
    exact integer product ``exact``, both keeping their rows."""

    wl: Workload
    matmul: CrossbarMatmul
    exact: MemoMatmul
    key: str
    source: str              # "computed", "process" or "disk"
    _saved_rows: int = -1    # memoised rows when last written (or read)

    @property
    def rows(self) -> int:
        return len(self.matmul.memo) + len(self.exact.memo)

    @property
    def nbytes(self) -> int:
        """What keeping it holds in memory: the integer weights and the encoded cells."""
        return (sum(np.asarray(t).nbytes for t in self.wl.quant.tensors.values())
                + self.matmul.cells_bytes)

    def save(self, root: Path) -> None:
        """Write the entry when it holds rows the disk copy does not (an unwritable cache only
        costs time)."""
        if self.rows == self._saved_rows:
            return
        names = {id(t): name for name, t in self.wl.quant.tensors.items()}
        shifts = {names[id(b)]: sh for b, sh in self.matmul.known_shifts() if id(b) in names}
        blob = {"format": FORMAT, "key": self.key,
                "workload": dataclasses.replace(self.wl, weights={}), "shifts": shifts,
                "matmul_rows": self.matmul.memo.export(names),
                "exact_rows": self.exact.memo.export(names)}
        path = _path(root, self.key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
            self._saved_rows = self.rows
        except OSError:
            pass


_KEPT: collections.OrderedDict[str, Golden] = collections.OrderedDict()


def _path(root: Path, key: str) -> Path:
    return Path(root) / "cache" / "golden" / f"{key}.pkl"


def _source_digest() -> str:
    import moepim.models
    import moepim.spec

    from .build import source_digest

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(source_digest(moepim.spec, moepim.models).encode())
    return h.hexdigest()


def golden_key(model, *, n_prompt: int, n_generate: int, seed: int, shape: TileSpec,
               weights: dict | None = None, trace: np.ndarray | None = None) -> str:
    """SHA-256 of everything the golden model of this workload depends on."""
    import torch

    from moepim.models import pim

    h = hashlib.sha256()
    h.update(repr((FORMAT, dataclasses.asdict(model), n_prompt, n_generate, seed,
                   shape.arithmetic, pim.CALIBRATION_CLIP_FRACTION,
                   pim.CALIBRATION_TOKENS, pim.CALIBRATION_SEED_OFFSET, np.__version__,
                   torch.__version__)).encode())
    h.update(_source_digest().encode())
    for name in sorted(weights or {}):
        a = np.ascontiguousarray(weights[name].detach().cpu().numpy()
                                 if hasattr(weights[name], "detach") else weights[name])
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    if trace is not None:
        a = np.ascontiguousarray(trace)
        h.update(f"trace{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read(path: Path, key: str, shape: TileSpec) -> Golden | None:
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f)
        if not (isinstance(blob, dict) and blob.get("format") == FORMAT
                and blob.get("key") == key and isinstance(blob.get("workload"), Workload)):
            return None
        wl = blob["workload"]
        tensors = wl.quant.tensors
        mm = CrossbarMatmul(shape)
        for name, shifts in blob["shifts"].items():
            mm.set_shifts(tensors[name], shifts)
        mm.memo.restore(blob["matmul_rows"], tensors)
        exact = MemoMatmul(int_matmul)
        exact.memo.restore(blob["exact_rows"], tensors)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError,
            ValueError, ImportError):
        return None                      # damaged or from another layout: computed again
    g = Golden(wl, mm, exact, key, "disk")
    g._saved_rows = g.rows
    return g


def golden_for(model, *, n_prompt: int, n_generate: int, seed: int, shape: TileSpec,
               weights: dict | None = None, trace: np.ndarray | None = None,
               trace_source: str = "trace", root: Path | None = None) -> Golden:
    """The golden model of this workload: from the process, else from ``root``'s cache, else
    computed (``make_workload`` on a fresh :class:`CrossbarMatmul`, its ADC windows from the
    calibration cache). ``root``: the build root (``None``: nothing read or written on disk)."""
    key = golden_key(model, n_prompt=n_prompt, n_generate=n_generate, seed=seed, shape=shape,
                     weights=weights, trace=trace)
    hit = _KEPT.get(key)
    if hit is not None:
        _KEPT.move_to_end(key)
        hit.source = "process"
        return hit
    g = _read(_path(root, key), key, shape) if root is not None else None
    if g is None:
        mm = CrossbarMatmul(shape)
        wl = make_workload(model, n_prompt=n_prompt, n_generate=n_generate, seed=seed,
                           weights=weights, trace=trace, trace_source=trace_source, matmul=mm,
                           calibration_cache=(Path(root) / "cache" / "calibration"
                                              if root is not None else None))
        g = Golden(dataclasses.replace(wl, weights={}), mm, MemoMatmul(int_matmul), key,
                   "computed")
    _KEPT[key] = g
    _trim()
    return g


def _trim() -> None:
    """Forget the oldest kept workloads beyond :data:`KEEP_IN_PROCESS`, or while the kept ones
    hold more than :data:`KEEP_MEMORY_SHARE` of the available memory (the newest stays)."""
    from .guard import mem_available

    budget = KEEP_MEMORY_SHARE * (mem_available() + sum(g.nbytes for g in _KEPT.values()))
    while len(_KEPT) > 1 and (len(_KEPT) > KEEP_IN_PROCESS
                              or sum(g.nbytes for g in _KEPT.values()) > budget):
        _KEPT.popitem(last=False)
