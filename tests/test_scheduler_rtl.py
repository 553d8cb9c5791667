"""GroupScheduler RTL against the functional schedules, timestamp by timestamp, under
back-pressure."""

import pytest

from moepim.hw.scheduler import GroupScheduler
from moepim.models.grouping import make_groups
from moepim.models.schedule import schedule
from moepim.models.traces import generate_trace
from moepim.sim.block_run import run_bench

from .conftest import need_simulator


def run_plan(plan, *, n_tokens, n_experts, gap_p, stall_p, seed, windows=1, sim="amaranth"):
    depth = max(1, max(len(p) for p in plan))
    unit = GroupScheduler(n_groups=len(plan), n_tokens=n_tokens, n_experts=n_experts,
                          depth=depth)
    return run_bench(unit, top="group_scheduler", bench="scheduler_plan", sim=sim,
                     args=dict(plan=[[list(j) for j in p] for p in plan], windows=windows,
                               gap_p=gap_p, stall_p=stall_p, seed=seed))


CASES = [(policy, grouping, seed) for policy in ("single_token", "compact", "reschedule",
                                                  "reschedule_heuristic")
         for grouping, seed in (("U2", 1), ("S4", 2))]


@pytest.mark.parametrize("policy, grouping, seed", CASES)
def test_rtl_schedule_matches_model_under_backpressure(policy, grouping, seed):
    _check_policy(policy, grouping, seed, "amaranth")


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
@pytest.mark.parametrize("policy", ["single_token", "reschedule"])
def test_rtl_schedule_under_cocotb(sim, policy):
    need_simulator(sim)
    _check_policy(policy, "S4", 5, sim)


def _check_policy(policy, grouping, seed, sim):
    mask = generate_trace("zipf", n_layers=1, n_tokens=12, n_experts=8, top_k=3, seed=seed,
                          skew=1.0)[0].astype(bool)
    groups = make_groups(grouping, 8, mask.sum(axis=0))
    sc = schedule(mask, groups, policy)
    out = run_plan(sc.plan(), n_tokens=12, n_experts=8, gap_p=0.3, stall_p=0.3, seed=seed,
                   windows=2, sim=sim)
    want = [[sc.tokens[s].tolist(), sc.experts[s].tolist(), int(sc.loads_per_timestamp[s])]
            for s in range(sc.timestamps)]
    assert out["timestamps"] == want * 2
    for g, jobs in enumerate(sc.plan()):
        assert out["issues"][g] == [[t, e] for t, e, _ in jobs] * 2
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
    assert len(out["timestamps"]) == sc.timestamps
    # from the first job's handshake to the tick after the last timestamp record
    assert out["cycles"] == [GroupScheduler.window_cycles(n_jobs, sc.timestamps)]
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
