"""Waveform regression: every recorded scenario still matches; a delay is caught."""

import json

import pytest

from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT, ConfigError
from moepim.sim.waves import GOLDEN_DIR, capture, check, delay_signal, load_scenario, record

SCENARIOS = sorted(p.stem for p in (REPO_ROOT / "configs" / "waves").glob("*.yaml"))


def test_every_scenario_has_a_golden_file():
    assert SCENARIOS and all((GOLDEN_DIR / f"{load_scenario(n).name}.json").exists()
                             for n in SCENARIOS)


@pytest.mark.xdist_group("verilator-small")
@pytest.mark.parametrize("name", SCENARIOS)
def test_waves_check(name, capsys):
    assert main(["waves", "check", name]) == 0, capsys.readouterr().out


@pytest.mark.xdist_group("verilator-small")
def test_one_cycle_delay_is_reported_at_the_right_cycle():
    sc = load_scenario("scheduler")
    waves = capture(sc)
    assert check(sc, waves=waves) == []
    for signal in ("o_timestamps__valid", "o_timestamps__payload"):
        first = next(c for c, _ in waves[signal] if c > 0)
        diffs = check(sc, waves=delay_signal(waves, signal))
        assert len(diffs) == 1 and diffs[0]["signal"] == signal
        assert diffs[0]["cycle"] == first
        golden = json.loads((GOLDEN_DIR / "scheduler.json").read_text())["signals"][signal]
        assert diffs[0]["expected"] == dict(golden["changes"])[first]
        assert diffs[0]["actual"] == waves[signal][0][1]      # still the old value


def test_record_does_not_overwrite_without_update_golden(tmp_path):
    sc = load_scenario("topk")
    before = (GOLDEN_DIR / "topk.json").read_text()
    with pytest.raises(ConfigError, match="--update-golden"):
        record(sc)
    assert (GOLDEN_DIR / "topk.json").read_text() == before


def test_bad_scenarios(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nname: x\nblock: nope\nseed: 1\nsignals: [a]\n")
    assert main(["waves", "check", str(p)]) == 2
    assert "block" in capsys.readouterr().err
    p.write_text("version: 1\nname: x\nblock: topk\nseed: 1\nsignals: [no_such_port]\n")
    assert main(["waves", "check", str(p)]) == 2      # no golden file for 'x'
