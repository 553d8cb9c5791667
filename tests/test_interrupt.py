"""Interrupting ``moepim run``: SIGINT (Ctrl-C: the whole foreground process group) and SIGKILL
during a Verilator build and during an Icarus simulation. Afterwards: no output folder, no
process of the run left (compiler, make, simulator, watchdog), and the next run works (removing
a killed run's staging folder)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from moepim.sim.config import REPO_ROOT

from .conftest import SMALL, need_icarus

MOEPIM = Path(sys.executable).with_name("moepim")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out[int(d.name)] = (ppid, name)
    return out


def _descendants(pid: int) -> dict[int, str]:
    procs = _processes()
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, (ppid, name) in procs.items():
            if ppid == p and child not in found:
                found[child] = name
                todo.append(child)
    return found


def _alive(pids) -> list[int]:
    alive = []
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            alive.append(p)
    return alive


def _as_a_shell_starts_it():
    """In the child before exec: SIGINT at its default action and not blocked, as an
    interactive shell starts a command. A child inherits both from its parent, and the test
    worker's own may differ (an earlier test's library left SIGINT ignored or blocked: then
    the run never sees the Ctrl-C and finishes with 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start(config: Path, out: Path, root: Path, sim: str) -> subprocess.Popen:
    env = {**os.environ, "MOEPIM_BUILD_ROOT": str(root)}
    p = subprocess.Popen([str(MOEPIM), "run", str(config), "--out", str(out), "--sim", sim,
                          "--quiet"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_as_a_shell_starts_it)
    # what the worker itself had (reported if the run ignores the interrupt)
    p.worker_sigint = (signal.getsignal(signal.SIGINT),
                       sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    return p


def _wait_for(p: subprocess.Popen, names: tuple[str, ...], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            pytest.fail(f"moepim ended before {names} started: {p.communicate()}")
        kids = _descendants(p.pid)
        if any(n in names for n in kids.values()):
            time.sleep(0.5)
            return _descendants(p.pid)
        time.sleep(0.2)
    p.kill()
    pytest.fail(f"{names} never started")


def _interrupt(p: subprocess.Popen, how: str, kids: dict) -> tuple[int, str]:
    if how == "SIGINT":
        os.killpg(p.pid, signal.SIGINT)           # Ctrl-C: the terminal signals the group
    else:
        p.kill()
    _, err = p.communicate(timeout=60)
    deadline = time.monotonic() + 15
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {k: kids[k] for k in _alive(kids)}
    assert not left, f"processes of the run still alive after {how}: {left}"
    return p.returncode, err


def _check_result(how: str, code: int, err: str, out: Path, note: str = "") -> None:
    if how == "SIGINT":
        assert code == 130, f"{err} ({note})"
        assert err.strip().splitlines() == ["moepim: interrupted; no output written"], err
    else:
        assert code == -signal.SIGKILL
    assert not out.exists()


def _next_run_is_fine(root: Path, out: Path) -> None:
    r = subprocess.run([str(MOEPIM), "run", str(SMALL), "--out", str(out), "--sim", "icarus",
                        "--quiet"], env={**os.environ, "MOEPIM_BUILD_ROOT": str(root)},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "report.json").read_text())["golden_match"] is True
    assert [p.name for p in out.parent.iterdir() if "staging" in p.name] == []


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupt_during_a_build(tmp_path, how):
    root = tmp_path / "root"            # a private cache: the build really runs
    out = tmp_path / "out"
    p = _start(SMALL, out, root, "verilator")
    kids = _wait_for(p, ("cc1plus", "make", "c++", "g++"))
    code, err = _interrupt(p, how, kids)
    _check_result(how, code, err, out, f"test worker's SIGINT handler, blocked signals: "
                  f"{p.worker_sigint}")
    need_icarus()
    _next_run_is_fine(root, out)


@pytest.fixture(scope="module")
def long_config(tmp_path_factory):
    """tile-small with enough MVMs that Icarus simulates for several seconds."""
    folder = tmp_path_factory.mktemp("long")
    raw = yaml.safe_load(SMALL.read_text())
    raw["tech"] = str(REPO_ROOT / "configs" / "tech" / "isaac-32nm.yaml")
    raw["workload"]["n_mvms"] = 3000
    path = folder / "long.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupt_during_a_simulation(tmp_path, long_config, how):
    need_icarus()
    root = tmp_path / "root"
    out = tmp_path / "out"
    p = _start(long_config, out, root, "icarus")
    kids = _wait_for(p, ("vvp",))
    code, err = _interrupt(p, how, kids)
    _check_result(how, code, err, out, f"test worker's SIGINT handler, blocked signals: "
                  f"{p.worker_sigint}")
    if how == "SIGKILL":                 # the killed run's staging folder is still there
        assert [x.name for x in tmp_path.iterdir() if "staging" in x.name]
    _next_run_is_fine(root, out)
