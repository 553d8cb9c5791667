"""``moepim.spec.layer.LayerSpec``: the layer's relations checked once, where the spec is
made (the hardware takes the object), each refusal naming the field; derived counts."""

from __future__ import annotations

import dataclasses

import pytest

from moepim.spec.checks import ParameterError
from moepim.spec.layer import LayerSpec

GOOD = LayerSpec(d_model=64, d_ff=32, n_experts=5, n_groups=3, group_size=2, n_tokens=4,
                 lanes=8, gate_bits=8, multiplier_bits=15, shared_d_ff=16,
                 router="expert_choice", shared_gate=True)


def test_derived_counts_by_hand():
    # 5 experts of which the last is the shared one: 4 routed, in 2 routed groups of 2
    assert (GOOD.n_routed_experts, GOOD.n_routed_groups) == (4, 2)
    assert GOOD.blocks == 64 // 8 == 8
    assert GOOD.queue_depth == 4 * 2


@pytest.mark.parametrize("change, name", [
    (dict(d_model=0), "d_model"),
    (dict(lanes=7), "lanes"),                       # 64 is not a multiple of 7
    (dict(n_groups=2), "n_groups"),                 # 1 routed group of 2 < 4 routed experts
    (dict(n_groups=1), "n_groups"),                 # only the shared expert's group
    (dict(shared_d_ff=-1), "shared_d_ff"),
    (dict(shared_d_ff=0, n_experts=4, n_groups=2), "shared_gate"),   # no shared expert
    (dict(router=None), "shared_gate"),             # a shared gate needs the layer's router
    (dict(router="switch"), "router"),
    (dict(ffn="gelu"), "ffn"),
    (dict(go_cache_rows=-2), "go_cache_rows"),
])
def test_bad_layers_are_refused_naming_the_field(change, name):
    with pytest.raises(ParameterError) as e:
        dataclasses.replace(GOOD, **change)
    assert e.value.name == name


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_the_layer_hardware_takes_the_spec():
    from moepim.hw.moe_layer import MoELayerAccelerator
    from moepim.spec.tile import TileSpec

    tile = TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4,
                    n_adcs=4)
    layer = MoELayerAccelerator(layer=GOOD, tile=tile)
    assert layer.spec is GOOD and layer.route_unit.n_experts == GOOD.n_routed_experts
    assert layer.scheduler is not None and layer.blocks == GOOD.blocks
    with pytest.raises(ParameterError, match="layer"):
        MoELayerAccelerator(layer=dataclasses.asdict(GOOD), tile=tile)
