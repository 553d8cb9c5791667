"""The blocks an experiment can export or synthesise (``moepim export|synth --top NAME``).

Each top is built from the experiment's own parameters, so the exported block is the one the
run simulates (the router, softmax, top-k and GO-cache blocks at this model's size):

* tile experiments: ``tile_group``, ``peripheral_set``, ``crossbar_array``;
* MoE-layer experiments additionally: ``moe_layer`` (the whole accelerator), ``expert_engine``
  and ``matrix_bank`` (group 0's), ``group_scheduler``, ``route_unit`` (the layer's routing
  front end), ``router`` (the model's router kind:
  ``ExpertChoiceRouter`` over the prompt + generated window, or ``TokenChoiceRouter``),
  ``gate_softmax``, ``topk`` (the router's top-k unit) and ``go_cache``.
"""

from __future__ import annotations

import dataclasses

from .build import silence_unused
from .config import ConfigError, TileExperiment

__all__ = ["TILE_TOPS", "LAYER_TOPS", "ROUTING_TOPS", "EXPORT_TOPS", "export_tops", "make_top",
           "top_parameters"]

TILE_TOPS = ("tile_group", "peripheral_set", "crossbar_array")
LAYER_TOPS = ("moe_layer", "expert_engine", "matrix_bank", "group_scheduler", "route_unit")
ROUTING_TOPS = ("router", "gate_softmax", "topk", "go_cache")
EXPORT_TOPS = TILE_TOPS + LAYER_TOPS + ROUTING_TOPS


def export_tops(exp) -> tuple[str, ...]:
    """The tops of ``exp``: a tile experiment's, or every block of a layer experiment."""
    return TILE_TOPS if isinstance(exp, TileExperiment) else EXPORT_TOPS


def make_top(exp, top: str):
    """``(component, parameters)`` of block ``top`` of experiment ``exp``; parameters are the
    constructor arguments written into the export's JSON."""
    if top not in export_tops(exp):
        raise ConfigError("--top", "--top", top, "one of " + ", ".join(export_tops(exp)))
    if top in TILE_TOPS:
        block, params = _tile_top(exp, top)
    elif top in LAYER_TOPS:
        block, params = _layer_top(exp, top)
    else:
        block, params = _routing_top(exp, top)
    silence_unused(block)         # listing or exporting one block must not warn about the rest
    return block, params


def _tile_params(exp, top: str) -> dict:
    kw = exp.tile.hw_kwargs()
    if top == "peripheral_set":
        kw.pop("core")
    elif top == "crossbar_array":
        kw.pop("group_size")            # its core (macro or logic) as configured
    return kw


def _tile_top(exp, top: str):
    from moepim.hw import CrossbarArray, PeripheralSet, TileGroup

    kw = _tile_params(exp, top)
    block = {"tile_group": TileGroup, "peripheral_set": PeripheralSet,
             "crossbar_array": CrossbarArray}[top]
    return block(**kw), kw


def top_parameters(exp, top: str) -> dict:
    """The parameters :func:`make_top` writes for ``top``, without building the block (a
    layer's blocks are built from the whole layer)."""
    if top in export_tops(exp):
        if top in TILE_TOPS:
            return _tile_params(exp, top)
        if top in LAYER_TOPS:
            return _layer_params(exp, top)[2]
    return make_top(exp, top)[1]


def _layer_params(exp, top: str):
    from .layer_run import layer_spec

    spec, tile = layer_spec(exp)
    params = dataclasses.asdict(spec)
    # a block's parameters are the layer's that shape it: the routing front end's are not
    # the expert side's, the experts' widths and grouping are not the routing front end's
    if top == "route_unit":
        for name in ENGINE_FIELDS:
            params.pop(name)
    elif top != "moe_layer":
        for name in ROUTE_FIELDS:
            params.pop(name)
    return spec, tile, {**params, **tile}


def _layer_top(exp, top: str):
    """The layer of the experiment, or the scheduler / an engine / a bank it is built from."""
    from .moe_run import make_component

    spec, tile, params = _layer_params(exp, top)
    layer = make_component(spec, tile)
    block = {"moe_layer": layer, "expert_engine": layer.engine,
             "matrix_bank": layer.engine.up, "group_scheduler": layer.scheduler,
             "route_unit": layer.route_unit}[top]
    return block, params


ROUTE_FIELDS = ("router", "top_k", "renormalize", "c_max", "go_rows", "max_sequence",
                "gate_hidden", "shared_gate", "drop")
ENGINE_FIELDS = ("d_ff", "n_groups", "group_size", "ffn")


def logit_bits(exp) -> int:
    """Signed width of the gate logits: a dot product of ``act_bits`` inputs and
    ``weight_bits`` weights over the gate's contraction length (``d_model``, or the MLP gate's
    hidden width for its second layer, whichever is longer)."""
    from moepim.hw.params import signed_bits

    m = exp.model
    length = max(m.d_model, m.router.gate_hidden if m.router.kind == "mlp_gate" else 0)
    bound = length * (1 << (m.quant.act_bits - 1)) * (1 << (m.quant.weight_bits - 1))
    return signed_bits(-bound, bound)


def _routing_top(exp, top: str):
    from moepim.hw.gocache import GateOutputCache
    from moepim.hw.routers import ExpertChoiceRouter, TokenChoiceRouter
    from moepim.hw.softmax import GateSoftmax
    from moepim.models.routing import expert_choice_capacity

    m, wl = exp.model, exp.workload
    window = wl.n_prompt + wl.n_generate
    if top == "gate_softmax":
        params = dict(n_experts=m.n_experts, logit_bits=logit_bits(exp))
        return GateSoftmax(**params), params
    if top == "go_cache":
        params = dict(n_experts=m.n_experts, capacity=exp.go_cache_rows, max_tokens=window)
        return GateOutputCache(**params), params
    if m.router.kind == "expert_choice":
        params = dict(n_tokens=window, n_experts=m.n_experts,
                      c_max=expert_choice_capacity(window, m.n_experts,
                                                   m.router.ec_capacity_factor))
        router = ExpertChoiceRouter(**params)
    else:
        params = dict(n_experts=m.n_experts, k=m.router.top_k, logit_bits=logit_bits(exp),
                      renormalize=m.router.renormalize, gate_bits=m.quant.gate_bits)
        router = TokenChoiceRouter(**params)
    silence_unused(router)
    if top == "router":
        return router, {"kind": type(router).__name__, **params}
    unit = router.topk
    return unit, {"n_items": unit.n_items, "k": unit.k, "score_bits": unit.score_bits,
                  "signed_scores": unit.signed_scores}
