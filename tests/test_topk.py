"""StreamingTopK in Amaranth's simulator against the routing model, with gaps and back-pressure."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from moepim.hw.topk import StreamingTopK
from moepim.models.routing import topk_mask


def _expected(scores, count):
    order = np.argsort(-np.asarray(scores, dtype=np.int64), kind="stable")
    return order[:max(1, min(count, len(scores)))].tolist()


def run_windows(unit, windows, *, gap_p, stall_p, seed):
    """Feed windows of (scores, count); return per window the selected indices and the cycles
    from its first item's handshake to its last result's handshake."""
    rng = np.random.default_rng(seed)
    sim = Simulator(unit)
    sim.add_clock(1e-8)
    results, spans = [], []

    async def bench(ctx):
        cycle = 0
        for scores, count in windows:
            got, start = [], None
            pending = list(enumerate(scores))
            while True:
                # input side
                if pending and rng.random() >= gap_p:
                    i, sc = pending[0]
                    ctx.set(unit.i_items.valid, 1)
                    ctx.set(unit.i_items.payload.index, i)
                    ctx.set(unit.i_items.payload.score, int(sc))
                    ctx.set(unit.i_items.payload.count, count)
                    ctx.set(unit.i_items.payload.last, len(pending) == 1)
                else:
                    ctx.set(unit.i_items.valid, 0)
                ready_out = int(rng.random() >= stall_p)
                ctx.set(unit.o_selected.ready, ready_out)
                took = ctx.get(unit.i_items.valid) and ctx.get(unit.i_items.ready)
                done = False
                if ctx.get(unit.o_selected.valid) and ready_out:
                    got.append(ctx.get(unit.o_selected.payload.index))
                    done = bool(ctx.get(unit.o_selected.payload.last))
                if took:
                    if start is None:
                        start = cycle
                    pending.pop(0)
                await ctx.tick()
                cycle += 1
                if done:
                    break
                assert cycle < 10_000, "no progress"
            ctx.set(unit.i_items.valid, 0)
            results.append(got)
            spans.append(cycle - start)

    sim.add_testbench(bench)
    sim.run()
    return results, spans


@pytest.mark.parametrize("signed_scores, gap_p, stall_p", [
    (True, 0.0, 0.0), (True, 0.3, 0.3), (False, 0.5, 0.2)])
def test_topk_matches_model(signed_scores, gap_p, stall_p):
    k = 6
    unit = StreamingTopK(n_items=40, k=k, score_bits=7, signed_scores=signed_scores)
    rng = np.random.default_rng(1)
    lo, hi = (-8, 8) if signed_scores else (0, 12)        # narrow range: many ties
    windows = [(rng.integers(lo, hi, size=rng.integers(1, 40)).tolist(),
                int(rng.integers(1, k + 1))) for _ in range(25)]
    results, spans = run_windows(unit, windows, gap_p=gap_p, stall_p=stall_p, seed=2)
    for (scores, count), got, span in zip(windows, results, spans):
        assert got == _expected(scores, count)
        expect_count = min(count, len(scores))
        if gap_p == stall_p == 0:
            assert span == unit.window_cycles(len(scores), expect_count)
        else:
            assert span >= unit.window_cycles(len(scores), expect_count)


def test_topk_agrees_with_routing_topk_mask():
    """Per token, the unit's top-k set is the routing model's top-k set."""
    unit = StreamingTopK(n_items=16, k=4, score_bits=12)
    rng = np.random.default_rng(3)
    scores = rng.integers(-50, 50, size=(10, 16))
    results, _ = run_windows(unit, [(row.tolist(), 4) for row in scores], gap_p=0.0,
                             stall_p=0.0, seed=0)
    mask = topk_mask(scores, 4)
    for row_mask, got in zip(mask, results):
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
