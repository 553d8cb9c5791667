"""GroupScheduler RTL against the functional schedules, slot by slot, under back-pressure."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from moepim.hw.scheduler import GroupScheduler
from moepim.models.grouping import make_groups
from moepim.models.schedule import IDLE, schedule
from moepim.models.traces import generate_trace


def run_plan(plan, *, n_tokens, n_experts, gap_p, stall_p, seed, windows=1):
    """Play a plan (``windows`` times); return slot records, issues per group, counters,
    cycles per window."""
    n_groups = len(plan)
    depth = max(1, max(len(p) for p in plan))
    unit = GroupScheduler(n_groups=n_groups, n_tokens=n_tokens, n_experts=n_experts,
                          depth=depth)
    rng = np.random.default_rng(seed)
    jobs = [(g, job) for g in range(n_groups) for job in plan[g]]
    out = {"slots": [], "issues": [[] for _ in range(n_groups)], "cycles": []}
    sim = Simulator(unit)
    sim.add_clock(1e-8)

    async def bench(ctx):
        for _ in range(windows):
            pending = list(jobs)
            start, cycle, slots_before = None, 0, len(out["slots"])
            expected_slots = None
            while True:
                if pending and rng.random() >= gap_p:
                    g, (tok, exp, idle) = pending[0]
                    ctx.set(unit.i_jobs.valid, 1)
                    ctx.set(unit.i_jobs.payload.group, g)
                    ctx.set(unit.i_jobs.payload.job.token, tok)
                    ctx.set(unit.i_jobs.payload.job.expert, exp)
                    ctx.set(unit.i_jobs.payload.job.idle_before, idle)
                    ctx.set(unit.i_jobs.payload.last, len(pending) == 1)
                else:
                    ctx.set(unit.i_jobs.valid, 0)
                ready = [int(rng.random() >= stall_p) for _ in range(n_groups + 1)]
                for g in range(n_groups):
                    ctx.set(unit.o_issue[g].ready, ready[g])
                ctx.set(unit.o_slots.ready, ready[-1])
                took = ctx.get(unit.i_jobs.valid) and ctx.get(unit.i_jobs.ready)
                for g in range(n_groups):
                    if ctx.get(unit.o_issue[g].valid) and ready[g]:
                        out["issues"][g].append((ctx.get(unit.o_issue[g].payload.token),
                                                 ctx.get(unit.o_issue[g].payload.expert)))
                last_slot = False
                if ctx.get(unit.o_slots.valid) and ready[-1]:
                    p = unit.o_slots.payload
                    active = ctx.get(p.active)
                    toks = [ctx.get(p.tokens[g]) for g in range(n_groups)]
                    exps = [ctx.get(p.experts[g]) for g in range(n_groups)]
                    out["slots"].append(([t if active >> g & 1 else IDLE
                                          for g, t in enumerate(toks)],
                                         [e if active >> g & 1 else IDLE
                                          for g, e in enumerate(exps)],
                                         ctx.get(p.n_loads)))
                    last_slot = bool(ctx.get(p.last))
                if took:
                    start = cycle if start is None else start
                    pending.pop(0)
                await ctx.tick()
                cycle += 1
                if last_slot:
                    expected_slots = len(out["slots"]) - slots_before
                    break
                assert cycle < 20_000, "no progress"
            ctx.set(unit.i_jobs.valid, 0)
            # the last timestamp completes once the issues of that slot have gone too
            for _ in range(200):
                if not ctx.get(unit.o_slots.valid) and all(
                        not ctx.get(unit.o_issue[g].valid) for g in range(n_groups)):
                    break
                for g in range(n_groups):
                    ctx.set(unit.o_issue[g].ready, 1)
                    if ctx.get(unit.o_issue[g].valid):
                        out["issues"][g].append((ctx.get(unit.o_issue[g].payload.token),
                                                 ctx.get(unit.o_issue[g].payload.expert)))
                await ctx.tick()
                cycle += 1
            out["cycles"].append((cycle - start, expected_slots))
        c = unit.counters
        out["counters"] = {"timestamps": ctx.get(c.timestamps),
                           "tokens_loaded": ctx.get(c.tokens_loaded),
                           "busy": [ctx.get(c.busy[g]) for g in range(n_groups)],
                           "idle": [ctx.get(c.idle[g]) for g in range(n_groups)],
                           "stall_cycles": ctx.get(c.stall_cycles)}

    sim.add_testbench(bench)
    sim.run()
    return out


CASES = [(policy, grouping, seed) for policy in ("single_token", "compact", "reschedule",
                                                  "reschedule_heuristic")
         for grouping, seed in (("U2", 1), ("S4", 2))]


@pytest.mark.parametrize("policy, grouping, seed", CASES)
def test_rtl_schedule_matches_model_under_backpressure(policy, grouping, seed):
    mask = generate_trace("zipf", n_layers=1, n_tokens=12, n_experts=8, top_k=3, seed=seed,
                          skew=1.0)[0].astype(bool)
    groups = make_groups(grouping, 8, mask.sum(axis=0))
    sc = schedule(mask, groups, policy)
    out = run_plan(sc.plan(), n_tokens=12, n_experts=8, gap_p=0.3, stall_p=0.3, seed=seed,
                   windows=2)
    want = [(sc.tokens[s].tolist(), sc.experts[s].tolist(), int(sc.loads_per_slot[s]))
            for s in range(sc.timestamps)]
    assert out["slots"] == want * 2
    for g, jobs in enumerate(sc.plan()):
        assert out["issues"][g] == [(t, e) for t, e, _ in jobs] * 2
    stats = sc.group_stats()
    assert out["counters"]["timestamps"] == 2 * sc.timestamps
    assert out["counters"]["tokens_loaded"] == 2 * sc.tokens_loaded
    assert out["counters"]["busy"] == [2 * s["busy"] for s in stats]
    assert out["counters"]["idle"] == [2 * s["idle"] for s in stats]
    assert out["counters"]["stall_cycles"] > 0


def test_rtl_cycle_count_without_backpressure():
    mask = generate_trace("uniform", n_layers=1, n_tokens=10, n_experts=8, top_k=2,
                          seed=4)[0].astype(bool)
    sc = schedule(mask, make_groups("U2", 8), "reschedule")
    out = run_plan(sc.plan(), n_tokens=10, n_experts=8, gap_p=0.0, stall_p=0.0, seed=0)
    n_jobs = int(mask.sum())
    cycles, slots = out["cycles"][0]
    assert slots == sc.timestamps
    # cycles counted to the tick after the last slot record
    assert cycles == GroupScheduler.window_cycles(n_jobs, sc.timestamps)
    assert out["counters"]["stall_cycles"] == 0


def test_scheduler_export_lints_clean_and_compiles(tmp_path):
    from moepim.sim.build import export_component
    from moepim.sim.lint import compile_icarus, lint_verilator

    from .conftest import need_icarus

    v, _ = export_component(GroupScheduler(n_groups=8, n_tokens=512, n_experts=16, depth=512),
                            "group_scheduler", tmp_path)
    lint = lint_verilator(v, "group_scheduler")
    assert lint.returncode == 0, lint.stderr[-3000:]
    need_icarus()
    assert compile_icarus(v, "group_scheduler").returncode == 0
