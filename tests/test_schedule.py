"""Expert grouping and the group-wise schedules (functional models)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moepim.models.grouping import GroupingError, make_groups
from moepim.models.schedule import IDLE, reschedule_optimal, schedule
from moepim.models.traces import generate_trace
from moepim.sim.cli import main

# the schedule figure: 8 experts, 6 tokens, 4 experts per token, groups (1,2)(3,4)(5,6)(7,8)
FIGURE = [[2, 4, 6, 8], [2, 3, 4, 7], [1, 2, 5, 7], [1, 2, 3, 5], [1, 4, 5, 7], [3, 4, 5, 7]]


def figure_mask():
    mask = np.zeros((6, 8), dtype=bool)
    for t, experts in enumerate(FIGURE):
        mask[t, [e - 1 for e in experts]] = True
    return mask


@pytest.mark.parametrize("policy, groups, timestamps, loads", [
    ("single_token", "U1", 6, 6),          # default: no sharing
    ("single_token", "U2", 10, 10),        # expert grouping
    ("compact", "U2", 7, 16),
    ("reschedule", "U2", 7, 12),           # the figure's value
    ("reschedule_heuristic", "U2", 7, 13),  # the authors' code on the same example
])
def test_schedule_figure_example(policy, groups, timestamps, loads):
    sc = schedule(figure_mask(), make_groups(groups, 8), policy)
    assert (sc.timestamps, sc.tokens_loaded) == (timestamps, loads)


def test_heuristic_reproduces_the_authors_published_table():
    sc = schedule(figure_mask(), make_groups("U2", 8), "reschedule_heuristic")
    published = [[1, 1, 1, 1], [2, 2, 0, 2], [3, 2, 0, 0], [3, 4, 3, 3], [4, 5, 4, 0],
                 [4, 6, 5, 5], [5, 6, 6, 6]]                       # 1-based, 0 = idle
    assert (sc.tokens + 1).tolist() == published
    assert reschedule_optimal(figure_mask(), make_groups("U2", 8)) == 12


def _random_mask(seed, n_tokens, n_experts, k):
    return generate_trace("zipf", n_layers=1, n_tokens=n_tokens, n_experts=n_experts, top_k=k,
                          seed=seed, skew=1.0)[0].astype(bool)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10 ** 6), st.integers(1, 40), st.sampled_from(["U2", "S2", "U4", "S4"]))
def test_reschedule_keeps_compact_length_and_beats_the_heuristic(seed, n_tokens, grouping):
    mask = _random_mask(seed, n_tokens, 16, 4)
    groups = make_groups(grouping, 16, mask.sum(axis=0))
    compact = schedule(mask, groups, "compact")
    ours = schedule(mask, groups, "reschedule")
    theirs = schedule(mask, groups, "reschedule_heuristic")
    assert ours.timestamps == compact.timestamps == theirs.timestamps
    assert ours.tokens_loaded <= theirs.tokens_loaded <= compact.tokens_loaded
    # every job exactly once, each group's jobs in token order
    for sc in (ours, theirs, compact):
        jobs = sorted((int(t), int(e)) for t, e in zip(sc.tokens.ravel(), sc.experts.ravel())
                      if t != IDLE)
        assert jobs == sorted((int(t), int(e)) for t, e in zip(*np.nonzero(mask)))
        for g in range(sc.tokens.shape[1]):
            col = sc.tokens[:, g][sc.tokens[:, g] != IDLE]
            assert (np.diff(col) >= 0).all()
            assert set(sc.experts[:, g][sc.experts[:, g] != IDLE]) <= set(groups[g])


def test_reschedule_is_near_optimal_on_small_traces():
    gaps = []
    for seed in range(12):
        mask = _random_mask(seed, 7, 8, 3)
        groups = make_groups("U2", 8)
        best = reschedule_optimal(mask, groups)
        ours = schedule(mask, groups, "reschedule").tokens_loaded
        assert ours >= best
        gaps.append(ours - best)
    assert np.mean(gaps) <= 0.5, gaps


def test_stats_are_consistent():
    sc = schedule(figure_mask(), make_groups("U2", 8), "reschedule")
    stats = sc.group_stats()
    assert sum(s["busy"] for s in stats) == figure_mask().sum()
    assert all(s["busy"] + s["idle"] == sc.timestamps for s in stats)
    assert [s["stalls"] for s in stats] == [0, 0, 1, 1]
    assert sc.buffer_peak() == 3
    d = sc.to_dict()
    assert d["tokens_loaded"] == sum(d["loads_per_timestamp"]) == 12


def test_sorted_grouping_pairs_heavy_with_light():
    loads = np.array([5, 1, 9, 3, 7, 2, 8, 4])        # ascending: 1,5,3,7,0,4,6,2
    assert make_groups("S2", 8, loads) == [(1, 2), (5, 6), (3, 4), (7, 0)]
    assert make_groups("S4", 8, loads) == [(1, 5, 2, 6), (3, 7, 4, 0)]
    assert make_groups("U4", 8) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert make_groups([(0, 7), (1, 2, 3), (4, 5, 6)], 8) == [(0, 7), (1, 2, 3), (4, 5, 6)]


@pytest.mark.parametrize("spec, n, match", [
    ("U3", 8, "must divide"),
    ("S3", 9, "even"),
    ("S2", 8, "needs expert loads"),
    ("X2", 8, "not allowed"),
    ([(0, 1), (1, 2)], 3, "partition"),
])
def test_bad_groupings(spec, n, match):
    with pytest.raises(GroupingError, match=match):
        make_groups(spec, n)


def test_bad_policy():
    with pytest.raises(ValueError, match="policy='fastest'"):
        schedule(figure_mask(), make_groups("U2", 8), "fastest")


def test_schedule_cli(tmp_path, capsys):
    trace = tmp_path / "fig.npy"
    np.save(trace, figure_mask()[None].astype(np.uint8))
    out = tmp_path / "s"
    assert main(["schedule", "--trace", str(trace), "--groups", "U2", "--policy",
                 "reschedule", "--out", str(out)]) == 0
    data = json.loads((out / "schedule.json").read_text())
    assert (data["timestamps"], data["tokens_loaded"]) == (7, 12)
    assert len(data["by_timestamp"]["tokens"]) == 7 and len(data["per_group"]) == 4
    assert (out / "timeline.png").stat().st_size > 1000
    assert main(["schedule", "--trace", str(trace), "--groups", "U3", "--policy", "compact",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--groups" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["schedule", "--trace", str(trace), "--layer", "3", "--groups", "U2",
                 "--out", str(tmp_path / "bad")]) == 2
