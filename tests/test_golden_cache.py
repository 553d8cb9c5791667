"""The golden model kept per workload (``moepim.sim.golden``) and the row memo of the layer's
products (``moepim.models.pim.RowMemo``): what is kept is what would be computed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moepim.models.pim import (
    CrossbarMatmul,
    MemoMatmul,
    _cells,
    _padded_inputs,
    row_tile_outputs,
    tiles_of,
)
from moepim.models.quant import int_matmul, moe_forward_int
from moepim.sim import golden
from moepim.sim.config import REPO_ROOT, load_experiment, load_model
from moepim.spec.tile import TileSpec

TINY = REPO_ROOT / "configs" / "models" / "reduced" / "tiny-ec-256.yaml"
DEFAULT = REPO_ROOT / "configs" / "experiments" / "default.yaml"
SMALL = TileSpec(n_rows=8, n_columns=16, weight_bits=4, input_bits=4, adc_bits=3,
                  bits_per_cell=2, n_adcs=4, weight_encoding="reference_column")


def _direct(a, b, shape):
    """The crossbar product computed from the tiles, without the memo."""
    rt, _ = tiles_of(*b.shape, shape)
    x = _padded_inputs(a, rt, shape)
    return row_tile_outputs(x, _cells(b, shape), shape).sum(axis=1)[:, :b.shape[1]]


def test_row_memo_gives_what_the_tiles_compute_for_repeated_and_new_rows():
    rng = np.random.default_rng(1)
    b = rng.integers(-8, 8, size=(20, 11))
    a = rng.integers(-8, 8, size=(6, 20))
    mm = CrossbarMatmul(SMALL)
    first = mm(a, b)
    assert np.array_equal(first, _direct(a, b, SMALL)) and len(mm.memo) == 6
    # rows seen before, a duplicate, new rows, in another order: each row as computed alone
    mixed = np.vstack([a[3], a[0], a[3], rng.integers(-8, 8, size=(2, 20))])
    assert np.array_equal(mm(mixed, b), _direct(mixed, b, SMALL)) and len(mm.memo) == 8
    assert np.array_equal(mm(a[2], b), _direct(a[2:3], b, SMALL)[0])
    # another matrix with the same rows is another product
    b2 = b.copy()
    b2[0, 0] ^= 1
    assert np.array_equal(mm(a, b2), _direct(a, b2, SMALL))
    # the memo hands out copies: changing a result does not change the next one
    out = mm(a, b)
    out[:] = 0
    assert np.array_equal(mm(a, b), first)
    with pytest.raises(ValueError, match="signed 4-bit"):
        mm(np.full((1, 20), 9), b)
    exact = MemoMatmul(int_matmul)
    assert np.array_equal(exact(a, b), a @ b) and np.array_equal(exact(mixed, b), mixed @ b)


def test_golden_kept_in_the_process_and_on_disk_equals_a_fresh_one(tmp_path, monkeypatch):
    """Kept in the process, read back from disk, or computed: the same workload, ADC windows
    and products; the disk entry holds the rows a run computed; a damaged entry is computed
    again; another seed or tile is another entry."""
    monkeypatch.setattr(golden, "_KEPT", type(golden._KEPT)())
    cfg = load_model(TINY)
    shape = TileSpec(**load_experiment(DEFAULT).tile.shape_kwargs())   # calibrated window
    kw = dict(n_prompt=8, n_generate=2, seed=3, shape=shape, root=tmp_path)
    g = golden.golden_for(cfg, **kw)
    assert g.source == "computed" and g.wl.weights == {}
    # a run's products: the layer through the crossbars and exactly
    y_exact, _ = moe_forward_int(g.wl.x_q, g.wl.quant, routing=g.wl.routing, matmul=g.exact)
    g.save(tmp_path)
    (entry,) = (tmp_path / "cache" / "golden").glob("*.pkl")
    assert golden.golden_for(cfg, **kw) is g and g.source == "process"

    golden._KEPT.clear()
    d = golden.golden_for(cfg, **kw)
    assert d.source == "disk" and d is not g
    for name in ("x_q", "y_q", "y_float"):
        assert np.array_equal(getattr(d.wl, name), getattr(g.wl, name))
    for name in ("mask", "weights", "dropped", "scores"):
        assert np.array_equal(getattr(d.wl.routing, name), getattr(g.wl.routing, name))
    t = d.wl.quant.tensors
    assert all(d.matmul.shift_for(t[n]) == g.matmul.shift_for(g.wl.quant.tensors[n])
               for n in t if n.endswith(".weight"))
    rows = d.rows
    assert rows == g.rows > 0
    again, _ = moe_forward_int(d.wl.x_q, d.wl.quant, routing=d.wl.routing, matmul=d.exact)
    assert np.array_equal(again, y_exact) and d.rows == rows      # every row was kept
    # the kept crossbar rows are what the tiles compute
    name = "experts.0.up.weight"
    x = d.wl.x_q[:3]
    fresh = CrossbarMatmul(shape)
    fresh.set_shifts(t[name], d.matmul.shift_for(t[name]))
    assert np.array_equal(d.matmul(x, t[name]), fresh(x, t[name]))

    for damage in (b"", b"not a pickle", entry.read_bytes()[:1000]):
        golden._KEPT.clear()
        entry.write_bytes(damage)
        r = golden.golden_for(cfg, **kw)
        assert r.source == "computed" and np.array_equal(r.wl.y_q, g.wl.y_q)
        r.save(tmp_path)
    golden._KEPT.clear()
    assert golden.golden_for(cfg, **kw).source == "disk"
    golden.golden_for(cfg, **{**kw, "seed": 4}).save(tmp_path)
    wider = dataclasses.replace(shape, adc_bits=shape.adc_bits + 1)
    golden.golden_for(cfg, **{**kw, "shape": wider}).save(tmp_path)
    assert len(list((tmp_path / "cache" / "golden").glob("*.pkl"))) == 3
    # the ADC count decides the timing, not the values: the same golden model
    fewer = dataclasses.replace(shape, n_adcs=shape.n_adcs // 2)
    assert golden.golden_key(cfg, n_prompt=8, n_generate=2, seed=3, shape=fewer) == \
        golden.golden_key(cfg, n_prompt=8, n_generate=2, seed=3, shape=shape) != \
        golden.golden_key(cfg, n_prompt=8, n_generate=2, seed=3, shape=wider)


def test_kept_workloads_stay_within_their_memory_share(tmp_path, monkeypatch):
    """At most KEEP_IN_PROCESS workloads, and fewer when they would hold more than their share
    of the available memory; the newest is always kept."""
    monkeypatch.setattr(golden, "_KEPT", type(golden._KEPT)())
    cfg = load_model(TINY)
    shape = TileSpec(**load_experiment(DEFAULT).tile.shape_kwargs())
    made = [golden.golden_for(cfg, n_prompt=4, n_generate=0, seed=s, shape=shape, root=None)
            for s in (1, 2, 3)]
    assert list(golden._KEPT.values()) == made[1:]          # the oldest forgotten
    assert all(g.nbytes >= sum(np.asarray(t).nbytes for t in g.wl.quant.tensors.values()) > 0
               for g in made)
    monkeypatch.setattr("moepim.sim.guard.mem_available", lambda: made[0].nbytes)
    golden.golden_for(cfg, n_prompt=4, n_generate=0, seed=4, shape=shape, root=None)
    assert len(golden._KEPT) == 1                            # over the share: the newest only
