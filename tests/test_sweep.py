"""``moepim sweep``: the sweep file, the expansion of its points, and a real sweep of small layer
points on a two-worker Dask LocalCluster (an invalid point, a resume, the result tables)."""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from moepim.sim.config import REPO_ROOT, ConfigError, load_experiment
from moepim.sim.sweep import expand, load_sweep, materialize, pareto_mask, run_sweep

SMALL = REPO_ROOT / "configs" / "experiments" / "layer-small.yaml"


def write_sweep(tmp_path, body: dict, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"version": 1, "kind": "sweep", "base": str(SMALL),
                                    **body}))
    return path


def test_product_zip_and_skip(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {
        "axes": {"workload.grouping": ["U2", "S2"], "workload.seed": [1, 2, 3]},
        "zip": [{"layer.lanes": [16, 32], "workload.n_prompt": [4, 8]}],
        "skip": [{"workload.grouping": "U2", "workload.seed": 3}]}))
    points = expand(spec)
    assert len(points) == 2 * 3 * 2
    # the zip group moves together: lanes 16 always with 4 prompt tokens
    assert {(p.values["layer.lanes"], p.values["workload.n_prompt"]) for p in points} == \
        {(16, 4), (32, 8)}
    skipped = [p for p in points if p.status == "skipped"]
    assert len(skipped) == 2 and all(p.values["workload.grouping"] == "U2" and
                                     p.values["workload.seed"] == 3 for p in skipped)
    assert len({p.label for p in points}) == len(points)


REF = {"source": "A. Author, Venue 2026, Table 1", "metric": "cycles", "axis": "workload.seed",
       "values": {1: 100.0}}


@pytest.mark.parametrize("body, key", [
    ({"axes": {"workload.seed": []}}, "axes.workload.seed"),
    ({"axes": {"workload.seed": 3}}, "axes.workload.seed"),
    ({"axes": {}}, "axes"),
    ({"axes": {"workload.seed": [1]}, "zip": [{"layer.lanes": [16, 32],
                                               "workload.n_prompt": [4]}]}, "zip[0]"),
    ({"axes": {"workload.seed": [1]}, "zip": [{"workload.seed": [2]}]}, "axes/zip"),
    ({"axes": {"workload.seed": [1]}, "skip": [{"layer.lanes": 16}]}, "skip[0].layer.lanes"),
    ({"axes": {"workload.seed": [1]}, "bogus": 1}, "bogus"),
    ({"axes": {"workload.seed": [1]}, "reference": [{**REF, "metric": "speed"}]},
     "reference[0].metric"),
    ({"axes": {"workload.seed": [1]}, "reference": [{**REF, "axis": "layer.lanes"}]},
     "reference[0].axis"),
    ({"axes": {"workload.seed": [1]}, "reference": [{**REF, "values": {2: 1.0}}]},
     "reference[0].values"),
    ({"axes": {"workload.seed": [1]}, "reference": [{**REF, "relative_to": 5}]},
     "reference[0].relative_to"),
    ({"axes": {"workload.seed": [1]}, "reference": [{**REF, "source": ""}]},
     "reference[0].source"),
    ({"axes": {"workload.seed": [1]}, "reference": [{**REF, "where": {"layer.lanes": 16}}]},
     "reference[0].where"),
])
def test_bad_sweep_files_name_the_key(tmp_path, body, key):
    with pytest.raises(ConfigError) as e:
        load_sweep(write_sweep(tmp_path, body))
    assert e.value.key == key
    assert str(tmp_path / "s.yaml") in str(e.value)


def test_base_must_exist(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "kind": "sweep", "base": "nope.yaml",
                                    "axes": {"workload.seed": [1]}}))
    with pytest.raises(ConfigError, match="base"):
        load_sweep(path)


def test_point_config_overrides_inside_referenced_files(tmp_path):
    """``tile.n_adcs`` changes a copy of the referenced tile file; the original is untouched
    and every path of the point's experiment is absolute."""
    spec = load_sweep(write_sweep(tmp_path, {"axes": {"tile.n_adcs": [16],
                                                      "workload.seed": [7]}}))
    (p,) = expand(spec)
    path = materialize(spec, p, tmp_path / "point")
    exp = load_experiment(path)
    base = load_experiment(SMALL)
    assert exp.tile.n_adcs == 16 and base.tile.n_adcs != 16
    assert exp.workload.seed == 7
    assert exp.model == base.model and exp.tech == base.tech
    raw = yaml.safe_load(path.read_text())
    assert all(raw[k].startswith("/") for k in ("model", "tile", "tech", "dram"))
    assert raw["tile"] == str(tmp_path / "point" / "tile.yaml")


def test_pareto_mask_by_hand():
    pts = [(1, 5, 1), (2, 2, 2), (3, 3, 3), (1, 5, 2), (5, 1, 1)]
    # (3,3,3) is dominated by (2,2,2); (1,5,2) by (1,5,1)
    assert pareto_mask(pts) == [True, True, False, False, True]


@pytest.mark.slow
@pytest.mark.xdist_group("layer-verilator")
def test_sweep_on_two_workers_resumes_tabulates_and_verifies(tmp_path):
    """Ten points of the reduced layer on the timing level and a two-worker LocalCluster:
    eight run, one is invalid (U3 does not divide 8 experts), one skipped; two points re-run
    under Verilator (--verify-rtl 2) agree; a resume after an interruption (two points'
    cache entries lost) re-runs only those two."""
    sweep = write_sweep(tmp_path, {
        "axes": {"workload.grouping": ["U2", "S2", "U3"],
                 "workload.policy": ["compact", "reschedule"],
                 "workload.seed": [3, 4]},
        "skip": [{"workload.grouping": "U3", "workload.policy": "reschedule"}],
        "reference": [{"source": "A. Author, Venue 2026, Fig. 2", "metric": "cycles",
                       "axis": "workload.grouping", "values": {"U2": 1.0, "S2": 1.5},
                       "relative_to": "U2", "where": {"workload.policy": "compact"}}]})
    # the simulator builds in the suite's build root (shared with the layer tests), the
    # finished points in a cache of this test's own
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    s1 = run_sweep(sweep, out, workers=2, sim="model", progress=False, cache_dir=cache,
                   verify_rtl=2)
    assert s1["points"] == 12
    assert s1["counts"]["ok"] == 8 and s1["counts"]["invalid"] == 2 \
        and s1["counts"]["skipped"] == 2 and s1["counts"]["error"] == 0, s1["counts"]
    assert len(s1["verify_rtl"]) == 2 and all(v["equal"] for v in s1["verify_rtl"])
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 12
    bad = next(r for r in table if r["status"] == "invalid")
    assert bad["workload.grouping"] == "U3" and "workload.grouping" in bad["reason"]
    ok = [r for r in table if r["status"] == "ok"]
    for r in ok:
        report = json.loads((out / "points" / r["label"] / "report.json").read_text())
        assert report["sim"] == "model" and report["golden_match"] is None
        assert r["cycles"] == report["cycles"]
        assert r["energy_uj"] == pytest.approx(report["energy_pj"]["total"] / 1e6)
        assert r["area_mm2"] == pytest.approx(report["area_mm2"]["total"])
        # the timing level prices the digital logic by synthesis or by the estimate, never 0
        assert r["area_digital_logic"] in ("synthesis", "estimate")
        assert r["area_mm2.digital_logic"] > 0 and not report["area_mm2"]["not_included"]
    # U2 and S2 differ in which experts share, not in the hardware: same analog area
    by = {(r["workload.grouping"], r["workload.policy"], r["workload.seed"]): r for r in ok}
    assert by[("U2", "compact", 3)]["area_mm2.adcs"] == \
        pytest.approx(by[("S2", "compact", 3)]["area_mm2.adcs"])
    assert (out / "pareto.png").stat().st_size > 0 and (out / "axes.png").stat().st_size > 0
    assert (out / "results.csv").read_text().count("\n") == 13
    # the publication's figures beside ours: compact points, cycles relative to U2 (same seed)
    (ref,) = s1["reference"]
    got = {r["value"]: (sorted(r["ours"]), r["publication"]) for r in ref["table"]}
    s2_ratio = sorted(by[("S2", "compact", k)]["cycles"] / by[("U2", "compact", k)]["cycles"]
                      for k in (3, 4))
    assert got == {"U2": ([1.0, 1.0], 1.0), "S2": (s2_ratio, 1.5)}
    assert (out / "reference.png").stat().st_size > 0

    # an interruption lost two finished points: the next run re-runs those two only
    import shutil
    for r in ok[:2]:
        shutil.rmtree(cache / r["hash"])
    s2 = run_sweep(sweep, out, workers=2, sim="model", progress=False, cache_dir=cache)
    assert s2["counts"]["cached"] == 6 and s2["counts"]["ok"] == 8
    again = {r["label"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    for r in ok:
        assert again[r["label"]]["cycles"] == r["cycles"]
    # a third run is all cached
    s3 = run_sweep(sweep, out, workers=1, sim="model", progress=False, cache_dir=cache)
    assert s3["counts"]["cached"] == 8


def test_verify_rtl_needs_the_timing_level(tmp_path):
    sweep = write_sweep(tmp_path, {"axes": {"workload.seed": [1]}})
    with pytest.raises(ConfigError, match="--verify-rtl"):
        run_sweep(sweep, tmp_path / "o", sim="verilator", verify_rtl=1, progress=False,
                  cache_dir=tmp_path / "c")


def test_first_difference_names_the_field():
    from moepim.sim.sweep import first_difference
    a = {"cycles": 10, "windows": [{"cycles": 10, "counters": {"dac_drives": 5}}]}
    assert first_difference(a, a) is None
    b = {"cycles": 10, "windows": [{"cycles": 10, "counters": {"dac_drives": 6}}]}
    assert first_difference(a, b) == "windows[0].counters.dac_drives: 5 vs RTL 6"
    assert first_difference({**a, "cycles": 11}, a).startswith("cycles: 11")


def test_out_holding_user_files_is_refused(tmp_path):
    sweep = write_sweep(tmp_path, {"axes": {"workload.grouping": ["U3"]}})
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="--out"):
        run_sweep(sweep, out, workers=1, progress=False, cache_dir=tmp_path / "c")
    assert (out / "notes.txt").read_text() == "keep me"
    # an all-invalid sweep needs no cluster and still writes its table
    s = run_sweep(sweep, tmp_path / "new", workers=1, progress=False,
                  cache_dir=tmp_path / "c")
    assert s["counts"]["invalid"] == 1
    assert pq.read_table(tmp_path / "new" / "results.parquet").num_rows == 1
