"""Golden integer model of one crossbar-tile MVM, bit-exact with ``moepim.hw`` ``TileGroup``.

The model follows the hardware's arithmetic step by step, so that every quantisation and
saturation is explicit:

1. **Weights, offset-encoded.** A signed weight ``w`` of ``weight_bits`` is stored as the
   unsigned value ``u = w + 2**(weight_bits-1)`` (flip of the sign bit) and sliced into
   ``weight_bits // bits_per_cell`` cells of ``bits_per_cell`` bits, least significant slice in
   the lowest column. Output ``o`` of the tile uses columns ``o*spw .. o*spw+spw-1``.
2. **Bit-serial inputs.** The signed input ``x`` (``input_bits``, two's complement) is applied
   one bit plane per DAC drive, least significant first; plane ``b`` has weight ``2**b``
   except the sign plane, weighted ``-2**(input_bits-1)``.
3. **Analog column sums.** For each plane and column, ``s = sum_r plane[r] * cell[r, c]``, an
   exact integer in ``0 .. n_rows*(2**bits_per_cell - 1)``.
4. **ADC.** ``code = min(s >> adc_shift, 2**adc_bits - 1)`` and the converted value is
   ``code << adc_shift``: truncation of the ``adc_shift`` low bits, then saturation at full
   scale. ``adc_shift=None`` picks the smallest shift that can never saturate,
   ``max(0, sum_bits - adc_bits)`` with ``sum_bits`` the width of the largest column sum; an
   ideal ADC (``adc_bits >= sum_bits``) makes the tile exact.
5. **Shift-and-add** per column over the planes, then per output over its slices
   (``<< j*bits_per_cell``), and the offset correction ``- 2**(weight_bits-1) * sum(x)``.

With an ideal ADC the result equals ``x @ W`` on integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TileShape", "tile_mvm", "tile_mvm_events", "tile_error_bound", "encode_cells"]

_BITS_PER_CELL_ALLOWED = (1, 2, 4, 8)


@dataclass(frozen=True)
class TileShape:
    """Validated geometry of a tile, with the derived counts the model needs.

    Argument names are those of the hardware constructors (``CrossbarArray``,
    ``PeripheralSet``) and of the YAML keys.
    """

    n_rows: int = 256
    n_columns: int = 256
    bits_per_cell: int = 8
    weight_bits: int = 8
    input_bits: int = 8
    n_adcs: int = 32
    adc_bits: int = 16
    adc_shift: int | None = None

    def __post_init__(self):
        def need(cond, name, value, allowed):
            if not cond:
                raise ValueError(f"{name}={value!r} is not allowed: {allowed}")

        for name in ("n_rows", "n_columns", "n_adcs"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, name, value, "a positive integer")
        need(self.bits_per_cell in _BITS_PER_CELL_ALLOWED, "bits_per_cell", self.bits_per_cell,
             f"one of {_BITS_PER_CELL_ALLOWED}")
        need(isinstance(self.weight_bits, int) and 2 <= self.weight_bits <= 16, "weight_bits",
             self.weight_bits, "an integer from 2 to 16")
        need(self.weight_bits % self.bits_per_cell == 0, "weight_bits", self.weight_bits,
             f"a multiple of bits_per_cell={self.bits_per_cell}")
        need(self.n_columns % self.slices_per_weight == 0, "n_columns", self.n_columns,
             f"a multiple of weight_bits/bits_per_cell={self.slices_per_weight}")
        need(isinstance(self.input_bits, int) and 2 <= self.input_bits <= 16, "input_bits",
             self.input_bits, "an integer from 2 to 16")
        need(self.n_columns % self.n_adcs == 0, "n_adcs", self.n_adcs,
             f"a divisor of n_columns={self.n_columns}")
        need(isinstance(self.adc_bits, int) and 1 <= self.adc_bits <= 32, "adc_bits",
             self.adc_bits, "an integer from 1 to 32")
        if self.adc_shift is not None:
            need(isinstance(self.adc_shift, int) and 0 <= self.adc_shift <= self.sum_bits,
                 "adc_shift", self.adc_shift, f"null or an integer from 0 to {self.sum_bits}")

    @property
    def slices_per_weight(self) -> int:
        return self.weight_bits // self.bits_per_cell

    @property
    def n_outputs(self) -> int:
        return self.n_columns // self.slices_per_weight

    @property
    def columns_per_adc(self) -> int:
        return self.n_columns // self.n_adcs

    @property
    def max_column_sum(self) -> int:
        return self.n_rows * ((1 << self.bits_per_cell) - 1)

    @property
    def sum_bits(self) -> int:
        return self.max_column_sum.bit_length()

    @property
    def resolved_adc_shift(self) -> int:
        if self.adc_shift is not None:
            return self.adc_shift
        return max(0, self.sum_bits - self.adc_bits)

    @property
    def ideal_adc(self) -> bool:
        """True when the ADC loses nothing: no truncation and no saturation is possible."""
        shift = self.resolved_adc_shift
        return shift == 0 and self.max_column_sum <= (1 << self.adc_bits) - 1


def _shape(kwargs) -> TileShape:
    return kwargs if isinstance(kwargs, TileShape) else TileShape(**kwargs)


def encode_cells(weights, shape: TileShape) -> np.ndarray:
    """Cell values ``(n_rows, n_columns)`` stored for signed ``weights`` ``(n_rows, n_outputs)``."""
    w = np.asarray(weights, dtype=np.int64)
    if w.shape != (shape.n_rows, shape.n_outputs):
        raise ValueError(f"weights have shape {w.shape}; the tile needs "
                         f"(n_rows, n_outputs) = ({shape.n_rows}, {shape.n_outputs})")
    half = 1 << (shape.weight_bits - 1)
    if w.min(initial=0) < -half or w.max(initial=0) > half - 1:
        raise ValueError(f"weights must be signed {shape.weight_bits}-bit integers "
                         f"in [{-half}, {half - 1}]")
    u = w + half
    mask = (1 << shape.bits_per_cell) - 1
    slices = [(u >> (j * shape.bits_per_cell)) & mask for j in range(shape.slices_per_weight)]
    # column o*spw + j holds slice j of output o
    return np.stack(slices, axis=-1).reshape(shape.n_rows, shape.n_columns)


def _check_inputs(x, shape: TileShape) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if x.ndim not in (1, 2) or x.shape[-1] != shape.n_rows:
        raise ValueError(f"inputs have shape {x.shape}; the tile needs (..., n_rows={shape.n_rows})")
    half = 1 << (shape.input_bits - 1)
    if x.size and (x.min() < -half or x.max() > half - 1):
        raise ValueError(f"inputs must be signed {shape.input_bits}-bit integers "
                         f"in [{-half}, {half - 1}]")
    return x


def _planes(x: np.ndarray, shape: TileShape) -> np.ndarray:
    """Bit planes ``(input_bits, ..., n_rows)`` of two's-complement ``x``, LSB first."""
    u = x & ((1 << shape.input_bits) - 1)
    return np.stack([(u >> b) & 1 for b in range(shape.input_bits)])


def _plane_weights(shape: TileShape) -> np.ndarray:
    w = np.array([1 << b for b in range(shape.input_bits)], dtype=np.int64)
    w[-1] = -w[-1]
    return w


def tile_mvm(x, weights, **shape_kwargs) -> np.ndarray:
    """Exact tile output for inputs ``x`` ``(n_rows,)`` or ``(batch, n_rows)``.

    ``weights`` is the signed ``(n_rows, n_outputs)`` matrix; keyword arguments are the tile
    parameters (see :class:`TileShape`). Returns int64 outputs ``(..., n_outputs)``.
    """
    shape = _shape(shape_kwargs)
    x = _check_inputs(x, shape)
    cells = encode_cells(weights, shape)
    planes = _planes(x, shape)                                  # (B, ..., R)
    sums = planes @ cells                                       # (B, ..., C) exact column sums
    shift = shape.resolved_adc_shift
    codes = np.minimum(sums >> shift, (1 << shape.adc_bits) - 1)
    converted = codes << shift
    acc = np.tensordot(_plane_weights(shape), converted, axes=(0, 0))   # (..., C)
    acc = acc.reshape(*acc.shape[:-1], shape.n_outputs, shape.slices_per_weight)
    slice_weights = np.array([1 << (j * shape.bits_per_cell)
                              for j in range(shape.slices_per_weight)], dtype=np.int64)
    combined = acc @ slice_weights
    offset = 1 << (shape.weight_bits - 1)
    return combined - offset * x.sum(axis=-1, keepdims=True)


def tile_mvm_events(x, **shape_kwargs) -> dict[str, int]:
    """Event counts of the MVMs of inputs ``x``, as the hardware counters report them.

    ``activations``: crossbar evaluations (one per input bit plane); ``dac_drives``: word-line
    pulses (one per '1' bit of each plane); ``adc_conversions`` and ``shift_adds``: one per
    column per plane.
    """
    shape = _shape(shape_kwargs)
    x = _check_inputs(x, shape).reshape(-1, shape.n_rows)
    n = x.shape[0]
    return {
        "mvms": n,
        "activations": n * shape.input_bits,
        "dac_drives": int(_planes(x, shape).sum()),
        "adc_conversions": n * shape.input_bits * shape.n_columns,
        "shift_adds": n * shape.input_bits * shape.n_columns,
    }


def tile_error_bound(**shape_kwargs) -> int:
    """Largest ``|tile_mvm - x @ W|`` the ADC can cause when it does not saturate.

    Each converted value is at most ``2**adc_shift - 1`` below the column sum, and the
    shift-and-add weighs a column of plane ``b`` and slice ``j`` by ``2**b * 2**(j*bpc)``.
    """
    shape = _shape(shape_kwargs)
    step = (1 << shape.resolved_adc_shift) - 1
    plane_sum = (1 << shape.input_bits) - 1
    slice_sum = sum(1 << (j * shape.bits_per_cell) for j in range(shape.slices_per_weight))
    return step * plane_sum * slice_sum
