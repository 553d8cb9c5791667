"""Progress bars of long run steps: a build against its estimate, a simulation against the
cycle formula (reported through a file by the bench)."""

import re
import time

from moepim.sim.progress import file_bar, timed_bar
from moepim.testbenches.benches import report_progress


def test_file_bar_follows_the_reported_cycles_with_an_eta(tmp_path, capsys):
    path = tmp_path / "p"
    with file_bar("simulating", 1000, path):
        for done in (100, 500):
            report_progress(path, done)
            time.sleep(0.7)
        err = capsys.readouterr().err
    assert "simulating" in err and "500/1000" in err
    assert "<" in err                       # tqdm's remaining-time (ETA) field
    assert path.read_text() == "500"
    assert "100%" in capsys.readouterr().err          # closed at the end of the step


def test_timed_bar_grows_its_total_when_the_step_overruns(capsys):
    with timed_bar("building", 1.0):
        time.sleep(2.2)
    err = capsys.readouterr().err
    assert "building" in err and "100%" in err
    done, total = map(int, re.findall(r"(\d+)/(\d+) \[", err)[-1])
    assert done == total >= 2               # the 1 s estimate grew with the elapsed time


def test_disabled_bars_print_nothing(tmp_path, capsys):
    with file_bar("x", 10, tmp_path / "p", enabled=False), timed_bar("y", 1, enabled=False):
        report_progress(tmp_path / "p", 5)
    assert capsys.readouterr().err == ""
