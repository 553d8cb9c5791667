"""StreamingTopK against the routing model, with gaps and back-pressure, under all simulators."""

import numpy as np
import pytest

from moepim.hw.topk import StreamingTopK
from moepim.models.routing import topk_mask
from moepim.sim.block_run import run_bench

from .conftest import SIMULATORS, need_simulator


def _expected(scores, count):
    order = np.argsort(-np.asarray(scores, dtype=np.int64), kind="stable")
    return order[:max(1, min(count, len(scores)))].tolist()


def _windows(rng, k, lo, hi, n=25):
    return [(rng.integers(lo, hi, size=int(rng.integers(1, 40))).tolist(),
             int(rng.integers(1, k + 1))) for _ in range(n)]


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("signed_scores, gap_p, stall_p", [
    (True, 0.0, 0.0), (True, 0.3, 0.3), (False, 0.5, 0.2)])
def test_topk_matches_model(sim, signed_scores, gap_p, stall_p):
    need_simulator(sim)
    k = 6
    unit = StreamingTopK(n_items=40, k=k, score_bits=7, signed_scores=signed_scores)
    lo, hi = (-8, 8) if signed_scores else (0, 12)        # narrow range: many ties
    windows = _windows(np.random.default_rng(1), k, lo, hi)
    r = run_bench(unit, top="topk", bench="topk_windows", sim=sim,
                  args=dict(windows=windows, gap_p=gap_p, stall_p=stall_p, seed=2))
    for (scores, count), got, span in zip(windows, r["selected"], r["spans"]):
        assert got == _expected(scores, count)
        bound = unit.window_cycles(len(scores), min(count, len(scores)))
        assert span == bound if gap_p == stall_p == 0 else span >= bound


def test_topk_keeps_more_than_64():
    """Expert choice over long windows needs large k (C = 128 for 512 tokens, 16 experts)."""
    rng = np.random.default_rng(5)
    windows = [(rng.integers(0, 40, size=n).tolist(), c) for n, c in
               ((150, 130), (200, 100), (90, 130), (130, 130))]
    unit = StreamingTopK(n_items=200, k=130, score_bits=8, signed_scores=False)
    r = run_bench(unit, top="topk", bench="topk_windows", sim="amaranth",
                  args=dict(windows=windows, gap_p=0.0, stall_p=0.0, seed=0))
    for (scores, count), got in zip(windows, r["selected"]):
        assert got == _expected(scores, count)


def test_topk_agrees_with_routing_topk_mask():
    """Per token, the unit's top-k set is the routing model's top-k set."""
    scores = np.random.default_rng(3).integers(-50, 50, size=(10, 16))
    r = run_bench(StreamingTopK(n_items=16, k=4, score_bits=12), top="topk",
                  bench="topk_windows", sim="amaranth",
                  args=dict(windows=[(row.tolist(), 4) for row in scores], gap_p=0.0,
                            stall_p=0.0, seed=0))
    for row_mask, got in zip(topk_mask(scores, 4), r["selected"]):
        assert sorted(got) == np.flatnonzero(row_mask).tolist()


def test_topk_export_lints_clean_and_compiles(tmp_path):
    from moepim.sim.build import export_component
    from moepim.sim.lint import compile_icarus, lint_verilator

    from .conftest import need_icarus

    unit = StreamingTopK(n_items=64, k=8, score_bits=16, signed_scores=False)
    v, _ = export_component(unit, "topk", tmp_path)
    lint = lint_verilator(v, "topk")
    assert lint.returncode == 0, lint.stderr[-3000:]
    need_icarus()
    assert compile_icarus(v, "topk").returncode == 0
