import dataclasses
import os
import shutil

import pytest

from moepim.sim.config import REPO_ROOT, load_experiment

SMALL = REPO_ROOT / "configs" / "experiments" / "tile-small.yaml"

# Simulator builds are cached by content hash under build/ of the checkout, shared by the
# pytest-xdist workers (a lock serialises builders of the same design).
os.environ.setdefault("MOEPIM_BUILD_ROOT", str(REPO_ROOT / "build"))


def small_experiment(**overrides):
    """tile-small.yaml with tile and workload keys overridden."""
    exp = load_experiment(SMALL)
    wl_keys = {f.name for f in dataclasses.fields(exp.workload)}
    wl = {k: overrides.pop(k) for k in list(overrides) if k in wl_keys}
    sim = overrides.pop("simulator", exp.simulator)
    return dataclasses.replace(exp, tile=dataclasses.replace(exp.tile, **overrides),
                               workload=dataclasses.replace(exp.workload, **wl), simulator=sim)


def need_icarus():
    if shutil.which("iverilog") is None:
        pytest.fail("Icarus Verilog is not installed: run `make setup` as root, or "
                    "`apt-get install -y iverilog`", pytrace=False)


SIMULATORS = ("amaranth", "verilator", "icarus")


def need_simulator(sim):
    if sim == "icarus":
        need_icarus()
