"""Golden integer model of one crossbar-tile MVM, bit-exact with ``moepim.hw`` ``TileGroup``.

The model follows the hardware's arithmetic step by step, so that every quantisation and
saturation is explicit:

1. **Weights** (``weight_encoding``). A signed weight ``w`` of ``weight_bits`` is stored in
   ``weight_bits // bits_per_cell`` slices of ``bits_per_cell`` bits, least significant first;
   one *line* (an ADC input) per slice:

   * ``offset`` (the paper's): the unsigned ``u = w + 2**(weight_bits-1)`` (sign bit flipped)
     is sliced into one column per slice; a line is a column. Every column sum carries the
     common-mode term of the offset, removed digitally after conversion.
   * ``reference_column``: the same cells, plus one extra column per crossbar of mid-scale
     cells ``h = 2**(bits_per_cell-1)``. Its sum ``h * popcount(plane)`` is subtracted from
     every column in the analog domain, before the ADC: a line is ``column - reference``
     (signed). Per slice: every slice column subtracts the same reference, so slice ``j``
     holds ``u_j - h``; the combine leaves ``u - h * sum_j 2**(j*bits_per_cell)``, and the
     small remainder ``2**(weight_bits-1) - h * sum_j 2**(j*bits_per_cell)`` times ``sum(x)``
     (zero when a weight is one cell) is corrected digitally.
   * ``differential``: the positive part ``max(w, 0)`` and the negative part ``max(-w, 0)``
     (each fits ``weight_bits`` unsigned bits) in two adjacent columns per slice; the pair's
     currents are subtracted in the analog domain before the ADC: a line is
     ``column(pos) - column(neg)`` (signed), so no offset remains. Twice the columns per
     weight: ``n_outputs = n_columns / (2 * slices)``.

   Output ``o`` uses lines ``o*spw .. o*spw+spw-1``; line ``l`` is column ``l`` (offset,
   reference column) or columns ``2l`` (positive) and ``2l+1`` (negative).
2. **Bit-serial inputs.** The signed input ``x`` (``input_bits``, two's complement) is applied
   one bit plane per DAC drive, least significant first; plane ``b`` has weight ``2**b``
   except the sign plane, weighted ``-2**(input_bits-1)``.
3. **Analog line sums.** For each plane and line, ``s = sum_r plane[r] * cell[r, c]`` (minus
   the negative column or the reference), an exact integer in ``sum_range``.
4. **ADC.** ``code = clip(s >> adc_shift, code_min, code_max)`` (arithmetic shift: floor) and
   the converted value is ``code << adc_shift``: truncation of the ``adc_shift`` low bits,
   then saturation. Codes are unsigned ``0 .. 2**adc_bits - 1`` for ``offset`` and signed
   ``-2**(adc_bits-1) .. 2**(adc_bits-1) - 1`` for the signed encodings. ``adc_shift=None``
   picks the smallest shift that can never saturate, ``max(0, sum_bits - adc_bits)``; an
   ideal ADC (``adc_bits >= sum_bits``) makes the tile exact. ``adc_range="calibrated"``:
   the shift is a run-time value per matrix (``moepim.models.pim.calibrate_shift``), passed
   as ``adc_shift`` to each call.
5. **Shift-and-add** per line over the planes, then per output over its slices
   (``<< j*bits_per_cell``), and the offset correction ``- offset_correction * sum(x)``.

With an ideal ADC the result equals ``x @ W`` on integers.
"""

from __future__ import annotations

import numpy as np

from moepim.spec.tile import ADC_RANGES, WEIGHT_ENCODINGS, TileSpec

__all__ = ["adc_convert", "tile_mvm", "tile_mvm_events", "tile_error_bound", "encode_cells",
           "line_sums", "WEIGHT_ENCODINGS", "ADC_RANGES"]

def adc_convert(shape: TileSpec, sums, shift: int | None = None):
    """The ADC: converted values of line sums (any int array) at ``shift`` (default: the
    tile's resolved shift): truncation of the ``shift`` low bits, then saturation."""
    shift = shape.resolved_adc_shift if shift is None else shift
    lo, hi = shape.code_range
    return np.clip(np.asarray(sums) >> shift, lo, hi) << shift


def _shape(kwargs) -> TileSpec:
    return kwargs if isinstance(kwargs, TileSpec) else TileSpec(**kwargs)


def encode_cells(weights, shape: TileSpec) -> np.ndarray:
    """Cell values ``(n_rows, n_columns)`` stored for signed ``weights`` ``(n_rows, n_outputs)``."""
    w = np.asarray(weights)
    if w.shape != (shape.n_rows, shape.n_outputs):
        raise ValueError(f"weights have shape {w.shape}; the tile needs "
                         f"(n_rows, n_outputs) = ({shape.n_rows}, {shape.n_outputs})")
    return encode_lines(w, shape).astype(np.int64)


def encode_lines(weights, shape: TileSpec) -> np.ndarray:
    """Cell values of signed ``weights`` ``(rows, k * n_outputs)``: ``(rows, k * n_columns)``,
    the cells of output ``o`` in columns ``o * n_columns / n_outputs`` onwards (a column's
    cells depend on its own output's weights only, so ``k`` column tiles side by side encode
    at once)."""
    w = np.asarray(weights)
    half = 1 << (shape.weight_bits - 1)
    if w.size and (w.min() < -half or w.max() > half - 1):
        raise ValueError(f"weights must be signed {shape.weight_bits}-bit integers "
                         f"in [{-half}, {half - 1}]")
    # cell arithmetic on the narrowest type that holds the offset (or magnitude) weights
    w = w.astype(np.int16 if shape.weight_bits <= 8 else np.int32)
    mask = (1 << shape.bits_per_cell) - 1
    rows, spw = w.shape[0], shape.slices_per_weight

    def sliced(u, out):
        # line o*spw + j holds slice j of output o
        for j in range(spw):
            out[..., j] = (u >> (j * shape.bits_per_cell)) & mask

    if shape.weight_encoding == "differential":
        # column 2l: positive part, 2l+1: negative part of line l
        out = np.empty((rows, w.shape[1], spw, 2), dtype=np.uint8)
        sliced(np.maximum(w, 0), out[..., 0])
        sliced(np.maximum(-w, 0), out[..., 1])
    else:
        out = np.empty((rows, w.shape[1], spw), dtype=np.uint8)
        sliced(w + (1 << (shape.weight_bits - 1)), out)
    return out.reshape(rows, -1)


def line_sums(column_sums, planes, shape: TileSpec):
    """ADC inputs from the column sums ``(..., n_columns)`` of the bit ``planes``
    ``(..., n_rows)``: the differential pairs' differences, or the columns minus the
    reference column's sum (``reference_cell * popcount(plane)``)."""
    if shape.weight_encoding == "differential":
        return column_sums[..., 0::2] - column_sums[..., 1::2]
    if shape.weight_encoding == "reference_column":
        ref = shape.reference_cell * np.asarray(planes).sum(axis=-1, keepdims=True)
        return column_sums - ref.astype(np.int64)
    return column_sums


def _check_inputs(x, shape: TileSpec) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    if x.ndim not in (1, 2) or x.shape[-1] != shape.n_rows:
        raise ValueError(f"inputs have shape {x.shape}; the tile needs (..., n_rows={shape.n_rows})")
    half = 1 << (shape.input_bits - 1)
    if x.size and (x.min() < -half or x.max() > half - 1):
        raise ValueError(f"inputs must be signed {shape.input_bits}-bit integers "
                         f"in [{-half}, {half - 1}]")
    return x


def _planes(x: np.ndarray, shape: TileSpec) -> np.ndarray:
    """Bit planes ``(input_bits, ..., n_rows)`` of two's-complement ``x``, LSB first."""
    u = x & ((1 << shape.input_bits) - 1)
    return np.stack([(u >> b) & 1 for b in range(shape.input_bits)])


def _plane_weights(shape: TileSpec) -> np.ndarray:
    w = np.array([1 << b for b in range(shape.input_bits)], dtype=np.int64)
    w[-1] = -w[-1]
    return w


def tile_mvm(x, weights, window=None, **shape_kwargs) -> np.ndarray:
    """Exact tile output for inputs ``x`` ``(n_rows,)`` or ``(batch, n_rows)``.

    ``weights`` is the signed ``(n_rows, n_outputs)`` matrix; keyword arguments are the tile
    parameters (see :class:`TileSpec`). ``window``: with ``adc_range="calibrated"``, the
    crossbar's run-time ADC shifts, one per weight slice (required then). Returns int64
    outputs ``(..., n_outputs)``.
    """
    shape = _shape(shape_kwargs)
    if shape.adc_range == "calibrated":
        if window is None or len(window) != shape.slices_per_weight:
            raise ValueError("adc_range 'calibrated': tile_mvm needs window, one ADC shift "
                             f"per weight slice ({shape.slices_per_weight})")
    elif window is not None:
        raise ValueError("window is for adc_range 'calibrated' only")
    x = _check_inputs(x, shape)
    cells = encode_cells(weights, shape)
    planes = _planes(x, shape)                                  # (B, ..., R)
    sums = line_sums(planes @ cells, planes, shape)             # (B, ..., L) exact line sums
    if window is None:
        converted = adc_convert(shape, sums)
    else:
        spw = shape.slices_per_weight
        converted = np.concatenate([adc_convert(shape, sums[..., j::spw], int(window[j]))[..., None]
                                    for j in range(spw)], axis=-1).reshape(sums.shape)
    acc = np.tensordot(_plane_weights(shape), converted, axes=(0, 0))   # (..., L)
    acc = acc.reshape(*acc.shape[:-1], shape.n_outputs, shape.slices_per_weight)
    slice_weights = np.array([1 << (j * shape.bits_per_cell)
                              for j in range(shape.slices_per_weight)], dtype=np.int64)
    combined = acc @ slice_weights
    return combined - shape.offset_correction * x.sum(axis=-1, keepdims=True)


def tile_mvm_events(x, **shape_kwargs) -> dict[str, int]:
    """Event counts of the MVMs of inputs ``x``, as the hardware counters report them.

    ``activations``: crossbar evaluations (one per input bit plane); ``dac_drives``: word-line
    pulses (one per '1' bit of each plane); ``adc_conversions`` and ``shift_adds``: one per
    line (column, or differential column pair) per plane.
    """
    shape = _shape(shape_kwargs)
    x = _check_inputs(x, shape).reshape(-1, shape.n_rows)
    n = x.shape[0]
    return {
        "mvms": n,
        "activations": n * shape.input_bits,
        "dac_drives": int(_planes(x, shape).sum()),
        "adc_conversions": n * shape.input_bits * shape.n_lines,
        "shift_adds": n * shape.input_bits * shape.n_lines,
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
