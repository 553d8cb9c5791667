"""Routing traces: formats, round trips, generators, statistics, CLI, clear errors."""

import hashlib

import numpy as np
import pytest

from moepim.models.traces import (
    TraceError,
    generate_trace,
    load_stats,
    read_csv_scores,
    read_trace,
    write_trace,
)
from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT

MODEL = REPO_ROOT / "configs" / "models" / "llama-moe-3.5b-4-16.yaml"


@pytest.mark.parametrize("kind", ["uniform", "zipf", "neupims"])
def test_generators_are_deterministic_and_pick_k_distinct(kind):
    a = generate_trace(kind, n_layers=2, n_tokens=100, n_experts=16, top_k=4, seed=7, skew=1.3)
    b = generate_trace(kind, n_layers=2, n_tokens=100, n_experts=16, top_k=4, seed=7, skew=1.3)
    c = generate_trace(kind, n_layers=2, n_tokens=100, n_experts=16, top_k=4, seed=8, skew=1.3)
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    assert not np.array_equal(a, c)
    assert (a.sum(axis=2) == 4).all()


def test_skew_raises_imbalance_and_locality_repeats():
    flat = generate_trace("uniform", n_layers=1, n_tokens=4000, n_experts=16, top_k=2, seed=1)
    skewed = generate_trace("zipf", n_layers=1, n_tokens=4000, n_experts=16, top_k=2, seed=1,
                            skew=1.5)
    assert load_stats(skewed)[0]["imbalance"] > load_stats(flat)[0]["imbalance"] + 0.5
    assert load_stats(flat)[0]["imbalance"] < 1.2
    local = generate_trace("uniform", n_layers=1, n_tokens=2000, n_experts=16, top_k=2, seed=1,
                           locality=0.8)
    repeats = (local[0, 1:] == local[0, :-1]).all(axis=1).mean()
    assert 0.75 < repeats < 0.9


def test_neupims_rule_concentrates_load_on_top_5_percent():
    tr = generate_trace("neupims", n_layers=1, n_tokens=5000, n_experts=64, top_k=1, seed=3)
    loads = np.sort(tr[0].sum(axis=0))[::-1]
    # top 4 experts (ceil 5 % of 64) at weights 1/(i+1); the rest at 0.2/(i+1)
    w = np.where(np.arange(64) < 4, 1.0, 0.2) / (np.arange(64) + 1)
    expected_top = w[:4].sum() / w.sum()
    assert abs(loads[:4].sum() / 5000 - expected_top) < 0.03


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_round_trip(tmp_path, suffix):
    tr = generate_trace("zipf", n_layers=3, n_tokens=20, n_experts=8, top_k=2, seed=4)
    path = write_trace(tmp_path / f"t{suffix}", tr)
    np.testing.assert_array_equal(read_trace(path, n_experts=8), tr)


def test_csv_scores_are_kept(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("layer_id,token_id,expert_0,expert_1,expert_2\n0,0,0.7,0,0.3\n0,1,0,1.0,0\n")
    scores = read_csv_scores(p)
    assert scores.shape == (1, 2, 3) and scores[0, 0, 0] == pytest.approx(0.7)
    np.testing.assert_array_equal(read_trace(p)[0], [[1, 0, 1], [0, 1, 0]])


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 16), dtype=np.uint8), "rank 2"),
    (np.full((1, 2, 16), 2, dtype=np.int64), "only 0 and 1"),
    (np.zeros((1, 2, 8), dtype=np.uint8), "8 experts; the model has 16"),
])
def test_malformed_npy_traces_name_file_and_problem(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(TraceError, match=match) as e:
        read_trace(path, n_experts=16)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ("layer,token,e0\n", "header"),
    ("layer_id,token_id,expert_0\n0,0\n", "line 2 has 2 fields"),
    ("layer_id,token_id,expert_0\n0,x,1\n", "line 2 is not numeric"),
])
def test_malformed_csv_traces(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=match):
        read_trace(path)


def test_trace_cli_generate_inspect_convert(tmp_path, capsys):
    npy, csv_path, png = tmp_path / "t.npy", tmp_path / "t.csv", tmp_path / "loads.png"
    assert main(["trace", "generate", "--kind", "zipf", "--skew", "1.2", "--model", str(MODEL),
                 "--tokens", "64", "--layers", "2", "--seed", "5", "--out", str(npy)]) == 0
    assert read_trace(npy).shape == (2, 64, 16)
    assert main(["trace", "inspect", str(npy), "--model", str(MODEL), "--plot", str(png),
                 "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "imbalance" in out and png.stat().st_size > 1000
    assert main(["trace", "convert", str(npy), str(csv_path)]) == 0
    np.testing.assert_array_equal(read_trace(csv_path), read_trace(npy))
    mixtral = REPO_ROOT / "configs" / "models" / "mixtral-8x7b.yaml"
    assert main(["trace", "inspect", str(npy), "--model", str(mixtral)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "16 experts; the model has 8" in err[0] and str(npy) in err[0]
