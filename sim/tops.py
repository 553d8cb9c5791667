"""The blocks an experiment can export or synthesise (``moepim export|synth --top NAME``).

Each top is built from the experiment's own parameters, so the exported block is the one the
run simulates (the router, softmax, top-k and GO-cache blocks at this model's size):

* tile experiments: ``tile_group``, ``peripheral_set``, ``crossbar_array``;
* MoE-layer experiments additionally: ``moe_layer`` (the whole accelerator), ``expert_engine``
  and ``matrix_bank`` (group 0's), ``group_scheduler``, ``route_unit`` (the layer's routing
  front end) and the blocks of that front end, the very objects the layer instantiates:
  ``router`` (``ExpertChoiceRouter`` or ``TokenChoiceRouter``), ``gate_softmax``, ``topk``
  (the router's top-k unit) and ``go_cache``, where the layer has them;
* decoder experiments: their MoE layer's, and the decoder's digital units
  (``attention_unit``, ``norm_unit``, ``residual_unit``, ``rope_unit``, ``projection_<matrix>``,
  ``argmax_unit``: ``moepim.sim.generation_run.decoder_unit_specs``).
"""

from __future__ import annotations

import dataclasses

from .build import silence_unused
from .config import ConfigError, DecoderExperiment, TileExperiment

__all__ = ["TILE_TOPS", "LAYER_TOPS", "ROUTING_TOPS", "EXPORT_TOPS", "export_tops", "make_top",
           "top_parameters"]

TILE_TOPS = ("tile_group", "peripheral_set", "crossbar_array")
LAYER_TOPS = ("moe_layer", "expert_engine", "matrix_bank", "group_scheduler", "route_unit")
ROUTING_TOPS = ("router", "gate_softmax", "topk", "go_cache")
EXPORT_TOPS = TILE_TOPS + LAYER_TOPS + ROUTING_TOPS


def _decoder_units(exp) -> dict:
    from .generation_run import decoder_unit_specs

    return {name: (cls, kw) for name, cls, kw, _ in decoder_unit_specs(exp)}


def _plain(kw: dict) -> dict:
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in kw.items()}


def export_tops(exp) -> tuple[str, ...]:
    """The tops of ``exp``: a tile experiment's, or every block of a layer experiment's
    layer (the routing blocks its route unit has), and a decoder's units."""
    if isinstance(exp, DecoderExperiment):
        return export_tops(exp.moe_experiment()) + tuple(_decoder_units(exp))
    if isinstance(exp, TileExperiment):
        return TILE_TOPS
    spec, tile, _ = _layer_params(exp, "route_unit")
    return LAYER_TOPS + _routing_tops(spec, tile)


_ROUTING_PARAMS: dict[str, dict] = {}


def _routing_params(spec, tile) -> dict:
    """Per routing top the layer of ``spec`` has, its parameters (building the route unit
    tells; kept by the specs' text, so listing the tops of many experiments builds each
    layer once)."""
    key = repr((spec, tile))
    if key not in _ROUTING_PARAMS:
        ru, blocks = _routing_blocks_of(spec, tile)
        _ROUTING_PARAMS[key] = {t: _block_params(spec, tile, ru, t, blocks[t])
                                for t in ROUTING_TOPS if blocks[t] is not None}
    return _ROUTING_PARAMS[key]


def _routing_tops(spec, tile) -> tuple[str, ...]:
    return tuple(_routing_params(spec, tile))


def make_top(exp, top: str):
    """``(component, parameters)`` of block ``top`` of experiment ``exp``; parameters are the
    constructor arguments written into the export's JSON."""
    if isinstance(exp, DecoderExperiment):
        units = _decoder_units(exp)
        if top in units:
            cls, kw = units[top]
            block = cls(**kw)
            silence_unused(block)
            return block, _plain(kw)
        if top not in export_tops(exp):
            raise ConfigError("--top", "--top", top, "one of " + ", ".join(export_tops(exp)))
        exp = exp.moe_experiment()
    allowed = TILE_TOPS if isinstance(exp, TileExperiment) else EXPORT_TOPS
    if top not in allowed:
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
    shape = set(exp.tile.shape_kwargs())
    build = {k: v for k, v in kw.items() if k not in shape}
    return block(tile=exp.tile.spec(), **build), kw


def top_parameters(exp, top: str) -> dict:
    """The parameters :func:`make_top` writes for ``top``, without building the block (a
    layer's blocks are built from the whole layer)."""
    if isinstance(exp, DecoderExperiment):
        units = _decoder_units(exp)
        if top in units:
            return _plain(units[top][1])
        exp = exp.moe_experiment()
    if top in export_tops(exp):
        if top in TILE_TOPS:
            return _tile_params(exp, top)
        if top in LAYER_TOPS:
            return _layer_params(exp, top)[2]
        spec, tile, _ = _layer_params(exp, "route_unit")
        return _routing_params(spec, tile)[top]
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


ROUTE_FIELDS = ("router", "top_k", "renormalize", "c_max", "go_cache_rows", "max_sequence",
                "gate_hidden", "shared_gate", "drop")
ENGINE_FIELDS = ("d_ff", "n_groups", "group_size", "ffn")


def _routing_blocks(exp):
    """The routing blocks inside the experiment's layer (its route unit's), by top name;
    ``None`` for a block this layer does not have."""
    spec, tile, _ = _layer_params(exp, "route_unit")
    return (spec, tile) + _routing_blocks_of(spec, tile)


def _routing_blocks_of(spec, tile):
    from .moe_run import make_component

    ru = make_component(spec, tile).route_unit
    router = ru.ec if ru.ec is not None else ru.tc
    softmax = ru.softmax if ru.softmax is not None else getattr(ru.tc, "softmax", None)
    return ru, {"router": router, "gate_softmax": softmax, "go_cache": ru.go,
                "topk": router.topk if router is not None else None}


def _routing_top(exp, top: str):
    """A block of the layer's routing front end, the very object the layer instantiates (so
    its export is the simulated block), with the arguments it was built with."""
    spec, tile, ru, blocks = _routing_blocks(exp)
    block = blocks[top]
    if block is None:
        raise ConfigError(exp.source, "--top", top,
                          "a block of this experiment's layer, which has none: "
                          + ("a GO cache needs the expert-choice router, workload.go_cache "
                             "and n_generate > 0" if top == "go_cache" else
                             f"its router ({spec.router}) has no {top}") + "; one of "
                          + ", ".join(export_tops(exp)))
    return block, _block_params(spec, tile, ru, top, block)


def _block_params(spec, tile, ru, top: str, block) -> dict:
    """The arguments routing block ``top`` of route unit ``ru`` was built with."""
    if top == "gate_softmax":
        return {"n_experts": block.n_experts, "logit_bits": ru.logit_bits}
    if top == "go_cache":
        return {"n_experts": block.n_experts, "go_cache_rows": block.go_cache_rows,
                "max_tokens": spec.max_sequence, "counter_bits": tile["counter_bits"]}
    if top == "router":
        if spec.router == "expert_choice":
            params = {"n_tokens": spec.n_tokens, "n_experts": ru.n_experts, "c_max": spec.c_max}
        else:
            params = {"n_experts": ru.n_experts, "k": spec.top_k, "logit_bits": ru.logit_bits,
                      "renormalize": spec.renormalize, "gate_bits": spec.gate_bits}
        return {"kind": type(block).__name__, **params}
    return {"n_items": block.n_items, "k": block.k, "score_bits": block.score_bits,
            "signed_scores": block.signed_scores}
