"""Golden model of matrices mapped onto crossbar tiles, and of the MoE layer accelerator's timing.

:class:`CrossbarMatmul` is ``a @ b`` as the accelerator computes it: ``b`` (``n_in x n_out``) is
cut into ``ceil(n_in/n_rows) x ceil(n_out/n_outputs)`` tiles (zero padded), every tile computes
:func:`moepim.models.tile.tile_mvm` (bit-serial inputs, offset-encoded cells, ADC truncation
and saturation), and the partial outputs of a column of tiles are summed exactly. With an
ideal ADC it equals the exact integer product. Passed as ``matmul`` to
:func:`moepim.models.quant.moe_forward_int`, it gives the layer's accelerator-exact golden.

:func:`bank_image` lays a group's matrices out as the matrix-bank macro loads them.

:func:`window_cycles` is the layer's cycle formula (documented with
``moepim.hw.MoELayerAccelerator``): per timestamp with ``n`` distinct tokens,
``n * 2 * blocks + job_latency + 5`` cycles (``job_latency``: of the slowest engine working in
that timestamp).
"""

from __future__ import annotations

import hashlib

import numpy as np

from .tile import TileShape, _plane_weights, _planes, encode_cells

__all__ = ["CrossbarMatmul", "bank_image", "bank_file_words", "column_sum_packing",
           "row_tile_outputs", "tiles_of", "window_cycles"]


def tiles_of(n_in: int, n_out: int, shape: TileShape) -> tuple[int, int]:
    """Row tiles and column tiles of an ``n_in x n_out`` matrix."""
    return -(-n_in // shape.n_rows), -(-n_out // shape.n_outputs)


def _padded(b: np.ndarray, shape: TileShape) -> np.ndarray:
    rt, ct = tiles_of(*b.shape, shape)
    out = np.zeros((rt * shape.n_rows, ct * shape.n_outputs), dtype=np.int64)
    out[:b.shape[0], :b.shape[1]] = b
    return out


def _cells(b: np.ndarray, shape: TileShape) -> np.ndarray:
    """Cells ``(row_tiles, col_tiles, n_rows, n_columns)`` of the padded matrix."""
    p = _padded(b, shape)
    rt, ct = p.shape[0] // shape.n_rows, p.shape[1] // shape.n_outputs
    out = np.empty((rt, ct, shape.n_rows, shape.n_columns), dtype=np.uint8 if
                   shape.bits_per_cell <= 8 else np.uint16)
    for i in range(rt):
        for j in range(ct):
            out[i, j] = encode_cells(p[i * shape.n_rows:(i + 1) * shape.n_rows,
                                       j * shape.n_outputs:(j + 1) * shape.n_outputs], shape)
    return out


def row_tile_outputs(x: np.ndarray, cells: np.ndarray, shape: TileShape) -> np.ndarray:
    """What the tiles of one matrix compute, per row tile: ``x`` ``(B, row_tiles * n_rows)``
    signed inputs, ``cells`` ``(row_tiles, col_tiles, n_rows, n_columns)`` (as
    :func:`bank_image` lays them out); returns ``(B, row_tiles, col_tiles * n_outputs)``, each
    row tile's outputs with its own offset correction (so their sum over row tiles is the
    matrix product through the crossbars)."""
    s = shape
    rt, ct = cells.shape[:2]
    planes = _planes(x, s).astype(np.float32)                  # (IB, B, rt*R)
    shift, top = s.resolved_adc_shift, (1 << s.adc_bits) - 1
    pw = _plane_weights(s)
    slice_w = np.array([1 << (j * s.bits_per_cell) for j in range(s.slices_per_weight)],
                       dtype=np.int64)
    half_w = 1 << (s.weight_bits - 1)
    out = np.zeros((x.shape[0], rt, ct * s.n_outputs), dtype=np.int64)
    for i in range(rt):
        rows = slice(i * s.n_rows, (i + 1) * s.n_rows)
        p = planes[:, :, rows]                                  # (IB, B, R)
        c = cells[i].transpose(1, 0, 2).reshape(s.n_rows, -1).astype(np.float32)
        # column sums < 2**24: exact in float32 whatever the summation order
        sums = np.rint(p.reshape(-1, s.n_rows) @ c).astype(np.int64)
        sums = sums.reshape(p.shape[0], p.shape[1], ct, s.n_columns)
        conv = np.minimum(sums >> shift, top) << shift
        acc = np.tensordot(pw, conv, axes=(0, 0))              # (B, ct, C)
        acc = acc.reshape(*acc.shape[:2], s.n_outputs, s.slices_per_weight) @ slice_w
        out[:, i] = acc.reshape(x.shape[0], -1) - half_w * x[:, rows].sum(axis=1,
                                                                          keepdims=True)
    return out


class CrossbarMatmul:
    """``a @ b`` through crossbar tiles of ``shape`` (see the module docstring)."""

    def __init__(self, shape: TileShape):
        self.shape = shape
        # the cell image of each weight matrix, encoded once (keyed by the matrix's
        # contents: a digest is ~1000x cheaper than the encoding)
        self._cells = {}

    def cells(self, b) -> np.ndarray:
        """The tiles' cells of weight matrix ``b`` (encoded once per distinct matrix)."""
        b = np.ascontiguousarray(b)
        key = (b.shape, b.dtype.str, hashlib.sha1(b.view(np.uint8)).hexdigest())
        cells = self._cells.get(key)
        if cells is None:
            cells = self._cells[key] = _cells(b.astype(np.int64), self.shape)
        return cells

    def __call__(self, a, b) -> np.ndarray:
        s = self.shape
        a = np.asarray(a, dtype=np.int64)
        cells = self.cells(b)
        b = np.asarray(b, dtype=np.int64)
        if a.shape[-1] != b.shape[0]:
            raise ValueError(f"inner dimensions differ: {a.shape} @ {b.shape}")
        squeeze = a.ndim == 1
        a = a.reshape(-1, a.shape[-1])
        rt, _ = tiles_of(*b.shape, s)
        x = np.zeros((a.shape[0], rt * s.n_rows), dtype=np.int64)
        x[:, :a.shape[1]] = a
        half_x = 1 << (s.input_bits - 1)
        if x.size and (x.min() < -half_x or x.max() > half_x - 1):
            raise ValueError(f"inputs must be signed {s.input_bits}-bit integers")
        out = row_tile_outputs(x, cells, s).sum(axis=1)[:, :b.shape[1]]
        return out[0] if squeeze else out


def bank_image(matrices, n_slots: int, n_in: int, n_out: int, shape: TileShape) -> np.ndarray:
    """Cell bytes of one matrix bank: slot-major, then row tile, column tile, row, column
    (the order ``moepim_matrix_bank`` reads). Slots without a matrix hold zero weights."""
    if len(matrices) > n_slots:
        raise ValueError(f"{len(matrices)} matrices for a bank of {n_slots} slots")
    zero = np.zeros((n_in, n_out), dtype=np.int64)
    parts = []
    for k in range(n_slots):
        w = np.asarray(matrices[k] if k < len(matrices) else zero)
        if w.shape != (n_in, n_out):
            raise ValueError(f"matrix {k} has shape {w.shape}; the bank needs ({n_in}, {n_out})")
        parts.append(_cells(w, shape).reshape(-1))
    return np.concatenate(parts).astype(np.uint8)


def column_sum_packing(shape: TileShape) -> tuple[int, int, int]:
    """``(sum_bits, per_word, words)``: a crossbar column's sum over all rows fits
    ``sum_bits`` bits; ``per_word`` such sums share a 64-bit word without carries between
    them; ``words`` words hold one crossbar row (``n_columns`` cells)."""
    sum_bits = (shape.n_rows * ((1 << shape.bits_per_cell) - 1)).bit_length()
    per_word = 64 // sum_bits
    return sum_bits, per_word, -(-shape.n_columns // per_word)


def bank_file_words(image: np.ndarray, shape: TileShape) -> np.ndarray:
    """The file ``moepim_matrix_bank`` loads for a :func:`bank_image`: each crossbar row's
    cells packed ``per_word`` to a 64-bit word (cell ``k`` of a word at bits ``k*sum_bits``,
    :func:`column_sum_packing`; unused lanes zero), words big-endian (Verilog's ``$fread``
    order). The macro adds whole words: ``per_word`` column sums per addition."""
    sum_bits, per_word, words = column_sum_packing(shape)
    rows = np.asarray(image, dtype=np.uint64).reshape(-1, shape.n_columns)
    padded = np.zeros((len(rows), words * per_word), dtype=np.uint64)
    padded[:, :shape.n_columns] = rows
    lanes = padded.reshape(len(rows), words, per_word)
    shifts = (np.arange(per_word, dtype=np.uint64) * np.uint64(sum_bits))
    return (lanes << shifts).sum(axis=2, dtype=np.uint64).reshape(-1).astype(">u8")


def window_cycles(loads_per_slot, *, blocks: int, job_latency) -> int:
    """Cycles the layer spends in the timestamps of one window. ``job_latency``: one number,
    or per timestamp (the slowest engine working in it, when engines differ)."""
    loads = np.asarray(loads_per_slot, dtype=np.int64)
    return int((loads * 2 * blocks + job_latency + 5).sum())
