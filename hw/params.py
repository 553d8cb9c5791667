"""Checks and helpers of the RTL blocks alone (build options, adder trees); the checks every
specification shares are ``moepim.spec.checks``, the tile's are ``moepim.spec.tile``.

Every check raises ``moepim.spec.checks.ParameterError`` naming the argument, the value and
what is allowed, so a constructor fails at once with a message the user can act on.
"""

from __future__ import annotations

from amaranth import Mux

from moepim.spec.checks import need, need_positive
from moepim.spec.tile import TileSpec

CORES = ("logic", "macro")     # a crossbar's analog core: RTL cells or the macro


class AmaranthSimulation:
    """The platform a design is elaborated for when Amaranth's simulator runs it
    (``elaborate(platform)``; ``moepim.sim.block_run.amaranth_simulator``). That simulator
    cannot run the macros' Verilog models, so under this platform the crossbar and
    matrix-bank macros are left out (their outputs driven by the simulator processes of
    ``moepim.sim.amaranth_macro``), the SRAM macros are ``amaranth.lib.memory`` memories with
    the same ports and timing, and the layer elaborates each group's engine in place of its
    ``Instance``. Export, Verilator, Icarus and Yosys elaborate with no platform: the macros.
    The RTL constructors take no simulator option."""


SIMULATION = AmaranthSimulation()


def simulating(platform) -> bool:
    """Whether ``platform`` is Amaranth's simulator's (:class:`AmaranthSimulation`)."""
    return isinstance(platform, AmaranthSimulation)


def check_counter_bits(counter_bits) -> None:
    need(isinstance(counter_bits, int) and 8 <= counter_bits <= 64, "counter_bits",
         counter_bits, "an integer from 8 to 64")


def check_group_size(group_size) -> None:
    need_positive("group_size", group_size)
    need(group_size <= 16, "group_size", group_size, "an integer from 1 to 16")


def check_tile(tile) -> None:
    need(isinstance(tile, TileSpec), "tile", tile,
         "a moepim.spec.tile.TileSpec (a config's: TileConfig.spec())")


MULTIPLIER_BITS_MAX = 31      # the widest requantiser multiplier the RTL accepts


def check_multiplier_bits(multiplier_bits) -> None:
    """The requantisers' multiplier width (the expert engines' and the route unit's)."""
    need(isinstance(multiplier_bits, int) and 1 <= multiplier_bits <= MULTIPLIER_BITS_MAX,
         "multiplier_bits", multiplier_bits, f"an integer from 1 to {MULTIPLIER_BITS_MAX}")


def check_core(core) -> None:
    need(core in CORES, "core", core, f"one of {CORES}")


def tree_sum(values):
    """Sum as a balanced adder tree: log-depth logic (and expressions Amaranth can compile)."""
    values = list(values)
    if not values:
        return 0
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        values = pairs + ([values[-1]] if len(values) % 2 else [])
    return values[0]


def requantize_unclamped(value, mult, shift):
    """``(value * mult + 2**(shift-1)) >> shift`` (``shift`` 0: ``value * mult``), exactly
    ``Requant.apply`` of ``moepim.models.quant``, without a clamp. Rounding uses
    ``floor((x + 2**(s-1)) / 2**s) == (floor(x / 2**(s-1)) + 1) >> 1``, so no shifter is
    wider than the product."""
    prod = value * mult
    return Mux(shift == 0, prod, ((prod >> (shift - 1)[:len(shift)]) + 1) >> 1)


def clamp_symmetric(value, bits: int):
    """``value`` clamped to ``+-(2**(bits-1) - 1)`` (the models' symmetric clamp)."""
    lim = (1 << (bits - 1)) - 1
    return Mux(value > lim, lim, Mux(value < -lim, -lim, value))
