"""The moepim command line: runs, exports (lint + Icarus compile), and errors users can act on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.lint import compile_icarus, lint_verilator
from moepim.sim.report import REPORT_VERSION
from moepim.sim.tops import export_tops, make_top, top_parameters

from .conftest import SMALL, need_icarus

CONFIGS = sorted((REPO_ROOT / "configs" / "experiments").rglob("*.yaml"))
FULL_SIZE_EXPORT = ("moe_layer", "expert_engine")    # minutes at d_model 4096: benchmarks


def _size_class(v):
    """A parameter value with its sizes reduced to 0, 1 or many: the export tests cover each
    structure of a block once (one-entry queues, single groups, absent units are structures
    of their own; 8 and 16 experts are one)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if v in (0, 1) else "n"
    if isinstance(v, dict):
        return {k: _size_class(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_size_class(x) for x in v]
    return repr(v)


def _size(exp):
    m = getattr(exp, "model", None)
    return (m.d_model, m.n_experts) if m is not None else (0, 0)


def _export_cases():
    """One (config, top) per structurally different exported design: experiments whose
    block parameters differ only in sizes share one case (see :func:`_size_class`), exported
    from the smallest of them.
    Full-size layer and engine exports (minutes each) are left to the benchmarks."""
    cases = {}
    exps = sorted(((load_experiment(c), c) for c in CONFIGS),
                  key=lambda e: (_size(e[0]), str(e[1])))
    for exp, config in exps:      # the smallest experiment of each structure exports it
        for top in export_tops(exp):
            if top in FULL_SIZE_EXPORT and _size(exp)[0] > 1024:
                continue
            params = _size_class(top_parameters(exp, top))
            key = (top, json.dumps(params, sort_keys=True, default=str))
            cases.setdefault(key, pytest.param(config, top, id=f"{config.stem}-{top}"))
    return list(cases.values())


def test_run_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(SMALL), "--out", str(out), "--sim", "amaranth", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("sim", "cycles", "time_ns", "counters", "golden_match", "mismatches", "wall_s",
                "config", "energy_pj", "area_mm2"):
        assert key in report
    assert report["sim"] == "amaranth" and report["golden_match"] is True
    assert report["mismatches"] == []
    # the schema's version comes first (README changelog: what each version renamed)
    assert next(iter(report)) == "report_version" and report["report_version"] == REPORT_VERSION
    assert report["counters"]["peripherals"]["mvms"] == report["config"]["workload"]["n_mvms"]
    # energy and area against hand computation (tile-small: 24 MVMs of 4-bit inputs on
    # 16 x 16 cells, 4 ADCs of 6 bits; tech: ADC 1.20 pJ per conversion of which 10 % is
    # leakage, at 1.2 GS/s; the set leaks only over its busy cycles, the RTL's counter)
    per = report["counters"]["peripherals"]
    assert per["adc_conversions"] == per["shift_adds"] == 24 * 4 * 16
    e = report["energy_pj"]["breakdown"]
    assert e["adc"] == pytest.approx(24 * 4 * 16 * 1.20 * 0.9)
    assert e["shift_add"] == pytest.approx(24 * 4 * 16 * 0.021)
    assert e["crossbar"] == pytest.approx(24 * 4 * 16 * 16 * 1.83e-3)  # planes x cells x fJ
    assert e["dac"] == pytest.approx(per["dac_drives"] * 0.0039)
    assert per["busy_cycles"] >= 24 * (4 * 4 + 4)            # mvm_latency 20 per MVM
    assert e["leakage"] == pytest.approx(per["busy_cycles"] * 1.0 * 4 * 1.20 * 0.1 * 1.2)
    assert report["energy_pj"]["power_gating"]["mode"] == "idle"
    assert report["area_mm2"]["breakdown"]["adcs"] == pytest.approx(4 * 627e-6)
    assert report["area_mm2"]["breakdown"]["arrays"] == pytest.approx(3 * 16 * 16 * 0.001526e-6)
    assert (out / "config.resolved.yaml").exists() and (out / "report.csv").exists()
    assert "bit-exact" in capsys.readouterr().out
    # Amaranth's simulator writes no SAIF: switching energy is listed as missing, not guessed;
    # the digital area comes from Yosys whatever the simulator
    assert "digital_switching" not in report["energy_pj"]["breakdown"]
    assert any("switching" in x for x in report["energy_pj"]["not_included"])
    area = report["area_mm2"]
    assert area["breakdown"]["digital_logic"] > 0
    assert area["digital_logic"]["flip_flops"] > 0
    assert area["breakdown"]["dacs"] == pytest.approx(16 * 0.166e-6)
    assert area["breakdown"]["shift_adds"] == pytest.approx(4 * 60e-6)


@pytest.mark.xdist_group("verilator-small")
def test_console_script_runs_verilator(tmp_path):
    exe = Path(sys.executable).with_name("moepim")
    out = tmp_path / "v"
    r = subprocess.run([str(exe), "run", str(SMALL), "--out", str(out)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["sim"] == "verilator" and report["golden_match"]
    # switching activity from the run's SAIF, priced by the tech file's per-toggle energy
    e = report["energy_pj"]
    sw = e["switching"]
    assert sw["toggles"] > 0 and sw["nets"] > 0
    assert e["breakdown"]["digital_switching"] == pytest.approx(
        sw["toggles"] * report["config"]["tech"]["net_toggle_energy_fj"]["value"] * 1e-3)
    assert "tile_group.peripherals" in sw["toggles_by_module"]


def _bad_config(tmp_path, mutate, name="bad.yaml"):
    raw = yaml.safe_load(SMALL.read_text())
    raw["tech"] = str(REPO_ROOT / "configs" / "tech" / "isaac-32nm.yaml")
    mutate(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate, key, value", [
    (lambda r: r["tile"].update(n_adc=4), "tile.n_adc", "4"),
    (lambda r: r["tile"].update(n_adcs=5), "tile.n_adcs", "5"),
    (lambda r: r["tile"].update(weight_bits=5), "tile.weight_bits", "5"),
    (lambda r: r["tile"].update(bits_per_cell=3), "tile.bits_per_cell", "3"),
    (lambda r: r["tile"].update(core="spice"), "tile.core", "'spice'"),
    (lambda r: r["workload"].update(n_mvms=0), "workload.n_mvms", "0"),
    (lambda r: r.update(version=2), "version", "2"),
    (lambda r: r.update(simulator="vcs"), "simulator", "'vcs'"),
    (lambda r: r["tile"].update(adc_bits=12), "tile.adc_bits", "12"),
])
def test_bad_configs_exit_2_with_one_clear_line(tmp_path, capsys, mutate, key, value):
    path = _bad_config(tmp_path, mutate)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--sim", "amaranth", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert key in err[0] and value in err[0]
    assert str(path) in err[0]
    assert "expected" in err[0]
    assert not out.exists()


def test_missing_and_malformed_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nkind: tile\ntile: [1, 2\n")
    assert main(["run", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml" in err and "line" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("config, top", _export_cases())
def test_every_export_lints_clean_and_compiles_in_icarus(tmp_path, config, top):
    out = tmp_path / top
    assert main(["export", str(config), "--top", top, "--out", str(out)]) == 0
    meta = json.loads((out / f"{top}.json").read_text())
    names = {p["name"] for p in meta["ports"]}
    assert {"clk", "rst"} <= names | {"clk", "rst"}
    assert meta["parameters"] == json.loads(json.dumps(make_top(load_experiment(config),
                                                                top)[1]))
    assert meta["ports"]
    exp = load_experiment(config)
    if top in ("tile_group", "crossbar_array") and exp.tile.core == "macro":
        # the analog core stays a black box: never elaborated into per-cell logic
        assert "moepim_xbar_macro" in (out / f"{top}.v").read_text()
    lint = lint_verilator(out / f"{top}.v", top)
    assert lint.returncode == 0, lint.stderr[-3000:]
    need_icarus()
    comp = compile_icarus(out / f"{top}.v", top)
    assert comp.returncode == 0, comp.stderr[-3000:]


def test_logic_core_export_lints_clean(tmp_path):
    path = _bad_config(tmp_path, lambda r: r["tile"].update(core="logic"), "logic.yaml")
    out = tmp_path / "x"
    assert main(["export", str(path), "--top", "tile_group", "--out", str(out)]) == 0
    lint = lint_verilator(out / "tile_group.v", "tile_group")
    assert lint.returncode == 0, lint.stderr[-3000:]


def test_export_rejects_unknown_top(tmp_path, capsys):
    assert main(["export", str(SMALL), "--top", "router", "--out", str(tmp_path / "e")]) == 2
    assert "router" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
