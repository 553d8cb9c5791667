"""A damaged build cache heals itself: each cached file kind of the small tile's Icarus build
(the compiled simulation, the exported Verilog, the port map) and its Yosys result, truncated,
zeroed or deleted, is detected, rebuilt with one line saying so, and the report is the same.
A simulator that dies on a signal invalidates its entry, which is rebuilt once."""

import json
import os
from pathlib import Path

import pytest

from moepim.sim import build as build_mod
from moepim.sim.build import MANIFEST, Build, SimulatorCrash, verify_manifest, write_manifest
from moepim.sim.cli import main

from .conftest import SMALL, need_icarus

FIELDS = ("cycles", "time_ns", "golden_match", "n_mismatches", "counters")


def _report(folder: Path) -> dict:
    r = json.loads((folder / "report.json").read_text())
    return {**{k: r[k] for k in FIELDS}, "energy_pj": r["energy_pj"]["total"],
            "area_mm2": r["area_mm2"]["total"]}


pytestmark = pytest.mark.xdist_group("cache-integrity")     # one worker: one private cache


@pytest.fixture(scope="module")
def private_root(tmp_path_factory):
    """A private build root with the small tile's Icarus build and Yosys result."""
    need_icarus()
    root = tmp_path_factory.mktemp("buildroot")
    old = os.environ.get("MOEPIM_BUILD_ROOT")
    os.environ["MOEPIM_BUILD_ROOT"] = str(root)
    try:
        out = root / "baseline"
        assert main(["run", str(SMALL), "--out", str(out), "--sim", "icarus", "--quiet"]) == 0
    finally:
        if old is None:
            os.environ.pop("MOEPIM_BUILD_ROOT", None)
        else:
            os.environ["MOEPIM_BUILD_ROOT"] = old
    (entry,) = [p for p in (root / "cache").glob("icarus-*") if p.is_dir()]
    return root, entry, _report(out)


@pytest.fixture
def cache(private_root, monkeypatch):
    monkeypatch.setenv("MOEPIM_BUILD_ROOT", str(private_root[0]))
    return private_root


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
    elif how == "zero":
        path.write_bytes(b"\0" * path.stat().st_size)
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncate", "zero", "delete"])
@pytest.mark.parametrize("kind", ["sim.vvp", "tile_group.v", "ports.json", "synth"])
def test_damaged_cache_entry_is_rebuilt(cache, capsys, kind, how):
    root, entry, baseline = cache
    assert verify_manifest(entry) is None
    if kind == "synth":
        (target,) = (root / "cache" / "synth").glob("*.json")
    else:
        target = entry / kind
    _damage(target, how)
    if kind != "synth":
        assert verify_manifest(entry) is not None
    capsys.readouterr()
    out = root / f"after-{kind}-{how}"
    assert main(["run", str(SMALL), "--out", str(out), "--sim", "icarus", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    if kind == "synth" and how == "delete":
        assert err == []                       # a missing result is simply computed
    else:
        assert len(err) == 1, err
        word = "re-running yosys" if kind == "synth" else "rebuilding"
        assert word in err[0] and (target.name in err[0] or entry.name in err[0]), err
    assert _report(out) == baseline
    assert verify_manifest(entry) is None
    if (kind, how) == ("sim.vvp", "truncate"):     # the healed entry is then used as it is
        again = root / "again"
        assert main(["run", str(SMALL), "--out", str(again), "--sim", "icarus", "--quiet"]) == 0
        assert capsys.readouterr().err.strip() == ""
        assert json.loads((again / "report.json").read_text())["build"]["cached"] is True


def test_manifest_detects_size_and_content_changes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("hello")
    write_manifest(tmp_path)
    assert verify_manifest(tmp_path) is None
    # same bytes rewritten (mtime moves): hashed, still intact
    (tmp_path / "sub" / "b.txt").write_text("hello")
    assert verify_manifest(tmp_path) is None
    (tmp_path / "sub" / "b.txt").write_text("hellO")
    assert "sub/b.txt" in verify_manifest(tmp_path) and "SHA-256" in verify_manifest(tmp_path)
    write_manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert "3 bytes, 300 were built" in verify_manifest(tmp_path)
    (tmp_path / "a.bin").unlink()
    assert "a.bin is missing" in verify_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    assert "unreadable" in verify_manifest(tmp_path)
    (tmp_path / MANIFEST).unlink()
    assert "no manifest" in verify_manifest(tmp_path)


class _FakeRunner:
    def __init__(self, outcomes):
        self.outcomes = outcomes

    def test(self, **kwargs):
        what = self.outcomes.pop(0)
        if isinstance(what, BaseException):
            raise what
        return (what, kwargs["build_dir"])


def _entry(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "sim.bin").write_bytes(b"x" * 10)
    (d / "build.ok").write_text("{}")
    write_manifest(d)
    return d


def test_simulator_killed_by_a_signal_invalidates_and_rebuilds(tmp_path, monkeypatch, capsys):
    outcomes = [RuntimeError("Command failed with return code: -11"), "ran"]
    monkeypatch.setattr(build_mod, "_make_runner", lambda sim: _FakeRunner(outcomes))
    monkeypatch.setattr(build_mod, "setup_simulator", lambda sim: None)
    old = _entry(tmp_path, "old")
    rebuilt = []

    def rebuild():
        rebuilt.append(1)
        return Build("verilator", "top", _entry(tmp_path, "new"), False, 1.0)

    b = Build("verilator", "top", old, True, 0.0, rebuild)
    runner = b.runner()
    assert runner.rebuilt is None
    assert runner.test(build_dir=old) == ("ran", tmp_path / "new")
    assert rebuilt == [1] and not old.exists()
    # the run's report then says the build was not cached (sim/block_run.py reads this)
    assert runner.rebuilt.directory == tmp_path / "new" and runner.rebuilt.cached is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SIGSEGV" in err[0] and "rebuilding" in err[0]


def test_simulator_crashing_twice_is_reported(tmp_path, monkeypatch):
    outcomes = [RuntimeError("Command failed with return code: -6"),
                RuntimeError("Command failed with return code: -6")]
    monkeypatch.setattr(build_mod, "_make_runner", lambda sim: _FakeRunner(outcomes))
    monkeypatch.setattr(build_mod, "setup_simulator", lambda sim: None)
    fresh = []

    def rebuild():
        fresh.append(_entry(tmp_path, "new"))
        return Build("icarus", "top", fresh[0], False, 1.0)

    b = Build("icarus", "top", _entry(tmp_path, "old"), True, 0.0, rebuild)
    with pytest.raises(SimulatorCrash, match="SIGABRT"):
        b.runner().test(build_dir=tmp_path / "old")
    assert not fresh[0].exists()                   # the fresh entry is not trusted either


def test_ordinary_simulator_failure_is_not_a_crash(tmp_path, monkeypatch):
    outcomes = [RuntimeError("Command failed with return code: 1")]
    monkeypatch.setattr(build_mod, "_make_runner", lambda sim: _FakeRunner(outcomes))
    monkeypatch.setattr(build_mod, "setup_simulator", lambda sim: None)
    entry = _entry(tmp_path, "old")
    b = Build("icarus", "top", entry, True, 0.0, lambda: pytest.fail("rebuilt"))
    with pytest.raises(RuntimeError, match="return code: 1"):
        b.runner().test(build_dir=entry)
    assert verify_manifest(entry) is None


def test_scratch_folders_of_dead_processes_are_removed(tmp_path):
    """A run killed with SIGKILL leaves its scratch folder; the next run removes it, and never
    a live process's or another host's."""
    import socket
    import subprocess

    from moepim.sim.build import scratch_dir

    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = tmp_path / "runs-tmp"
    root.mkdir()
    stale = root / f"{dead.pid}@{host}-abc"
    live = root / f"{os.getpid()}@{host}-def"
    other = root / f"{dead.pid}@elsewhere-ghi"
    for d in (stale, live, other):
        (d / "sub").mkdir(parents=True)
    with scratch_dir(tmp_path) as tmp:
        assert Path(tmp).parent == root and Path(tmp).name.startswith(f"{os.getpid()}@{host}-")
        assert not stale.exists() and live.exists() and other.exists()
    assert not Path(tmp).exists()
