"""Every block ``moepim export|synth --top`` offers is the block inside the layer the run
simulates (``moepim.sim.tops``): same Verilog, and its written parameters rebuild it."""

import hashlib

import pytest
from amaranth.back import verilog

from moepim.hw.gocache import GateOutputCache
from moepim.hw.routers import ExpertChoiceRouter, TokenChoiceRouter
from moepim.hw.softmax import GateSoftmax
from moepim.hw.topk import StreamingTopK
from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_run import layer_spec
from moepim.sim.moe_run import make_component
from moepim.sim.tops import LAYER_TOPS, ROUTING_TOPS, export_tops, make_top

EXPERIMENTS = REPO_ROOT / "configs" / "experiments"
# every router kind: expert choice with the GO cache, top-k, Switch's dropping, the MLP gate,
# a shared expert's sigmoid gate
LAYERS = ("gocache-small", "layer-switch-small", "layer-mlpgate-small", "layer-shared-small")
CLASSES = {"gate_softmax": GateSoftmax, "go_cache": GateOutputCache, "topk": StreamingTopK,
           "ExpertChoiceRouter": ExpertChoiceRouter, "TokenChoiceRouter": TokenChoiceRouter}


def _digest(component, name: str) -> str:
    text = verilog.convert(component, name=name, emit_src=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _inside(layer, top: str):
    """Where the run's layer holds block ``top`` (the route unit's router kind decides)."""
    ru = layer.route_unit
    router = ru.ec if ru.ec is not None else ru.tc
    return {"expert_engine": layer.engine, "matrix_bank": layer.engine.up,
            "group_scheduler": layer.scheduler, "route_unit": ru, "router": router,
            "topk": router.topk, "go_cache": ru.go,
            "gate_softmax": ru.softmax if ru.softmax is not None else ru.tc.softmax}[top]


@pytest.mark.parametrize("name", LAYERS)
def test_exported_blocks_are_the_simulated_layer_s(name):
    exp = load_experiment(EXPERIMENTS / f"{name}.yaml")
    spec, tile = layer_spec(exp)
    layer = make_component(spec, tile)          # the run's layer, built as layer_run builds it
    tops = export_tops(exp)
    assert set(LAYER_TOPS) <= set(tops)
    for top in tops:
        if top in ("moe_layer", "expert_engine", "matrix_bank"):
            # the layer itself and its datapath (the layer's own objects, exported by
            # test_cli; the slowest to convert)
            continue
        block, params = make_top(exp, top)
        inner = _inside(layer, top)
        assert inner is not None, top
        assert _digest(block, top) == _digest(inner, top), (name, top)
        if top in ROUTING_TOPS:
            # the export's parameters are the block's constructor arguments: they rebuild it
            kw = dict(params)
            cls = CLASSES[kw.pop("kind")] if top == "router" else CLASSES[top]
            assert _digest(cls(**kw), top) == _digest(inner, top), (name, top, params)


def test_a_block_the_layer_does_not_have_is_refused_with_the_reason(capsys, tmp_path):
    """Switch routes by top-k: no GO cache to export; the message names the config and why."""
    cfg = EXPERIMENTS / "layer-switch-small.yaml"
    assert "go_cache" not in export_tops(load_experiment(cfg))
    assert main(["export", str(cfg), "--top", "go_cache", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "layer-switch-small.yaml" in err and "GO cache" in err and "expert-choice" in err
    assert not (tmp_path / "e").exists()
