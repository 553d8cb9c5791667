"""Outputs never lose a user's file: ``--out`` replaces only a previous moepim output (marker
file) or an empty folder unless ``--force``; impossible paths are one line, exit 2; a killed
run's staging folder is removed by the next run."""

import os

import numpy as np
import pytest

from moepim.sim.cli import main
from moepim.sim.report import MARKER


@pytest.fixture
def trace(tmp_path):
    tr = np.zeros((1, 8, 4), np.uint8)
    tr[0, np.arange(8), np.arange(8) % 4] = 1
    path = tmp_path / "t.npy"
    np.save(path, tr)
    return path


def _schedule(trace, out, *extra):
    return main(["schedule", "--trace", str(trace), "--groups", "U2", "--policy", "compact",
                 "--out", str(out), *extra])


def _one_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], (w, err[0])


def test_previous_output_is_replaced_and_marked(tmp_path, trace):
    out = tmp_path / "s"
    assert _schedule(trace, out) == 0
    assert (out / MARKER).is_file() and (out / "schedule.json").is_file()
    first = (out / "schedule.json").read_text()
    assert _schedule(trace, out) == 0                 # `make run` twice
    assert (out / "schedule.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "t.npy"]   # nothing left over


def test_empty_folder_is_used(tmp_path, trace):
    out = tmp_path / "empty"
    out.mkdir()
    assert _schedule(trace, out) == 0
    assert (out / "schedule.json").is_file()


def test_a_users_folder_is_refused_unless_forced(tmp_path, trace, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _schedule(trace, out) == 2
    _one_line(capsys, "mine", MARKER, "--force")
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "schedule.json").exists()
    assert _schedule(trace, out, "--force") == 0
    assert not (out / "notes.txt").exists() and (out / "schedule.json").is_file()


def test_a_regular_file_is_refused_unless_forced(tmp_path, trace, capsys):
    out = tmp_path / "file.txt"
    out.write_text("mine")
    assert _schedule(trace, out) == 2
    _one_line(capsys, "file.txt", "existing file", "--force")
    assert out.read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert _schedule(trace, out, "--force") == 0
    assert (out / "schedule.json").is_file()


@pytest.mark.parametrize("out, words", [
    ("/proc/moepim-out", ["/proc", "system folder"]),
    ("/sys/moepim-out", ["/sys", "system folder"]),
    (".", ["must name a new"]),
    ("x" * 300, ["300 bytes", "255"]),
])
def test_impossible_out_paths(trace, capsys, out, words):
    assert _schedule(trace, out) == 2
    _one_line(capsys, *words)


def test_out_below_a_regular_file(tmp_path, trace, capsys):
    (tmp_path / "f").write_text("mine")
    assert _schedule(trace, tmp_path / "f" / "sub") == 2
    _one_line(capsys, "is a file, not a folder")
    assert (tmp_path / "f").read_text() == "mine"


def test_stale_staging_is_removed_by_the_next_run(tmp_path, trace):
    dead = 2**22 + 12345                       # above the default pid_max: no such process
    stale = tmp_path / f".s.moepim-staging.{dead}.abcd"
    stale.mkdir()
    (stale / "report.json").write_text("{}")
    live = tmp_path / f".s.moepim-staging.{os.getpid()}.efgh"
    live.mkdir()
    old = tmp_path / f".s.moepim-old.{dead}"
    old.mkdir()
    assert _schedule(trace, tmp_path / "s") == 0
    assert not stale.exists() and not old.exists()
    assert live.exists()                        # a running process's folder is left alone


@pytest.mark.parametrize("argv_tail, words", [
    (["--json", "nodir/s.json"], ["nodir", "does not exist"]),
    (["--json", "."], ["--json"]),
    (["--plot", "out.txt"], ["--plot", ".png"]),
])
def test_trace_inspect_outputs(tmp_path, trace, capsys, monkeypatch, argv_tail, words):
    monkeypatch.chdir(tmp_path)
    assert main(["trace", "inspect", str(trace), *argv_tail]) == 2
    _one_line(capsys, *words)


def test_trace_convert_onto_a_folder_or_into_a_missing_one(tmp_path, trace, capsys):
    (tmp_path / "d.csv").mkdir()
    assert main(["trace", "convert", str(trace), str(tmp_path / "d.csv")]) == 2
    _one_line(capsys, "d.csv", "is a folder")
    assert main(["trace", "convert", str(trace), str(tmp_path / "no" / "x.csv")]) == 2
    _one_line(capsys, "does not exist")
