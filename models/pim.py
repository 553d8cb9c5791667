"""Golden model of matrices mapped onto crossbar tiles, and of the MoE layer accelerator's timing.

:class:`CrossbarMatmul` is ``a @ b`` as the accelerator computes it: ``b`` (``n_in x n_out``) is
cut into ``ceil(n_in/n_rows) x ceil(n_out/n_outputs)`` tiles (zero padded), every tile computes
:func:`moepim.models.tile.tile_mvm` (bit-serial inputs, offset-encoded cells, ADC truncation
and saturation), and the partial outputs of a column of tiles are summed exactly. With an
ideal ADC it equals the exact integer product. Passed as ``matmul`` to
:func:`moepim.models.quant.moe_forward_int`, it gives the layer's accelerator-exact golden.

:func:`bank_image` lays a group's matrices out as the matrix-bank macro loads them. The
layer's cycles are the timing model's (``moepim.spec.timing``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from moepim.spec.tile import TileSpec

from .tile import _plane_weights, _planes, adc_convert, encode_lines

__all__ = ["CrossbarMatmul", "RowMemo", "MemoMatmul", "bank_image", "bank_file_words", "column_sum_packing",
           "row_tile_outputs", "tiles_of", "calibrate_shift",
           "CALIBRATION_CLIP_FRACTION", "CALIBRATION_TOKENS", "CALIBRATION_SEED_OFFSET"]

# The calibrated ADC range (``adc_range: calibrated``): per matrix and weight slice, the
# smallest ``adc_shift`` at which at most this fraction of the slice's ADC conversions of the
# calibration batch clip (saturate), over every bit plane and every line of the slice in the
# matrix's real outputs. (Slices differ by 2**bits_per_cell in significance and their line
# sums by orders of magnitude in range: one window per slice.)
CALIBRATION_CLIP_FRACTION = 1e-4
# The calibration batch: this many tokens drawn like the workload's hidden states, with the
# workload's seed + CALIBRATION_SEED_OFFSET, every expert evaluated on every token (inputs of
# the later matrices from the exact integer layer).
CALIBRATION_TOKENS = 32
CALIBRATION_SEED_OFFSET = 1000


def tiles_of(n_in: int, n_out: int, shape: TileSpec) -> tuple[int, int]:
    """Row tiles and column tiles of an ``n_in x n_out`` matrix."""
    return -(-n_in // shape.n_rows), -(-n_out // shape.n_outputs)


def _cells(b: np.ndarray, shape: TileSpec) -> np.ndarray:
    """Cells ``(row_tiles, col_tiles, n_rows, n_columns)`` of ``b`` padded with zero weights
    to whole tiles."""
    b = np.asarray(b)
    rt, ct = tiles_of(*b.shape, shape)
    p = np.zeros((rt * shape.n_rows, ct * shape.n_outputs), dtype=b.dtype)
    p[:b.shape[0], :b.shape[1]] = b
    cells = encode_lines(p, shape)                   # (rt * n_rows, ct * n_columns)
    return np.ascontiguousarray(cells.reshape(rt, shape.n_rows, ct, shape.n_columns)
                                .transpose(0, 2, 1, 3))


def _row_tile_line_sums(x: np.ndarray, cells: np.ndarray, shape: TileSpec):
    """Per row tile ``i``: ``(rows, line sums (IB, B, ct, n_lines))`` of the tiles of one
    matrix."""
    s = shape
    rt, ct = cells.shape[:2]
    planes = _planes(x, s).astype(np.float32)                  # (IB, B, rt*R)
    for i in range(rt):
        rows = slice(i * s.n_rows, (i + 1) * s.n_rows)
        p = planes[:, :, rows]                                  # (IB, B, R)
        c = cells[i].transpose(1, 0, 2).reshape(s.n_rows, -1).astype(np.float32)
        # column sums < 2**24: exact in float32 whatever the summation order
        sums = np.rint(p.reshape(-1, s.n_rows) @ c).astype(np.int64)
        sums = sums.reshape(p.shape[0], p.shape[1], ct, s.n_columns)
        if s.weight_encoding == "differential":
            sums = sums[..., 0::2] - sums[..., 1::2]
        elif s.weight_encoding == "reference_column":
            sums = sums - s.reference_cell * p.sum(axis=-1).astype(np.int64)[:, :, None, None]
        yield rows, sums


def row_tile_outputs(x: np.ndarray, cells: np.ndarray, shape: TileSpec,
                     adc_shift: int | None = None) -> np.ndarray:
    """What the tiles of one matrix compute, per row tile: ``x`` ``(B, row_tiles * n_rows)``
    signed inputs, ``cells`` ``(row_tiles, col_tiles, n_rows, n_columns)`` (as
    :func:`bank_image` lays them out); returns ``(B, row_tiles, col_tiles * n_outputs)``, each
    row tile's outputs with its own offset correction (so their sum over row tiles is the
    matrix product through the crossbars). ``adc_shift``: the matrix's calibrated window, one
    shift per weight slice (default: the shape's fixed shift)."""
    s = shape
    rt, ct = cells.shape[:2]
    pw = _plane_weights(s)
    slice_w = np.array([1 << (j * s.bits_per_cell) for j in range(s.slices_per_weight)],
                       dtype=np.int64)
    out = np.zeros((x.shape[0], rt, ct * s.n_outputs), dtype=np.int64)
    per_slice = adc_shift is not None and not isinstance(adc_shift, (int, np.integer))
    for i, (rows, sums) in enumerate(_row_tile_line_sums(x, cells, s)):
        if per_slice:
            sums = sums.reshape(*sums.shape[:3], s.n_outputs, s.slices_per_weight)
            conv = np.stack([adc_convert(s, sums[..., j], int(adc_shift[j]))
                             for j in range(s.slices_per_weight)], axis=-1).reshape(
                                 *sums.shape[:3], s.n_lines)
        else:
            conv = adc_convert(s, sums, adc_shift)
        acc = np.tensordot(pw, conv, axes=(0, 0))              # (B, ct, L)
        acc = acc.reshape(*acc.shape[:2], s.n_outputs, s.slices_per_weight) @ slice_w
        out[:, i] = acc.reshape(x.shape[0], -1) - s.offset_correction * x[:, rows].sum(
            axis=1, keepdims=True)
    return out


def _padded_inputs(a: np.ndarray, rt: int, shape: TileSpec) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1])
    x = np.zeros((a.shape[0], rt * shape.n_rows), dtype=np.int64)
    x[:, :a.shape[1]] = a
    half_x = 1 << (shape.input_bits - 1)
    if x.size and (x.min() < -half_x or x.max() > half_x - 1):
        raise ValueError(f"inputs must be signed {shape.input_bits}-bit integers")
    return x


def calibrate_shift(a, b, shape: TileSpec,
                    clip_fraction: float = CALIBRATION_CLIP_FRACTION,
                    cells: np.ndarray | None = None) -> tuple[int, ...]:
    """The calibrated ADC window of matrix ``b`` for calibration inputs ``a``: per weight
    slice ``j``, the smallest shift at which at most ``clip_fraction`` of the slice's
    conversions (every plane, every line of slice ``j`` of the real outputs) saturate."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    rt, ct = tiles_of(*b.shape, shape)
    x = _padded_inputs(a, rt, shape)
    spw = shape.slices_per_weight
    real = np.zeros(ct * shape.n_outputs, dtype=bool)
    real[:b.shape[1]] = True
    real = real.reshape(ct, shape.n_outputs)
    n_shifts = shape.sum_bits + 1
    # per slice, how many conversions need each shift: the smallest k with
    # code_min <= v >> k <= code_max is max(0, bit_length(m) - (adc_bits - 1)) with m = v for
    # v >= 0 and m = -v - 1 for v < 0 (two's-complement magnitude; signed codes)
    need = np.zeros((spw, n_shifts + 1), dtype=np.int64)
    cells = _cells(b, shape) if cells is None else cells
    for _, sums in _row_tile_line_sums(x, cells, shape):
        sums = sums.reshape(*sums.shape[:3], shape.n_outputs, spw)
        for j in range(spw):
            v = sums[..., j][..., real].reshape(-1)
            m = np.where(v >= 0, v, -v - 1).astype(np.float64)    # < 2**53: exact
            k = np.maximum(np.frexp(m)[1] - (shape.adc_bits - 1), 0)
            need[j] += np.bincount(k, minlength=n_shifts + 1)[:n_shifts + 1]
    shifts = []
    for j in range(spw):
        total = need[j].sum()
        # conversions that clip at shift k: those needing more than k
        clipping = total - np.cumsum(need[j])
        shifts.append(next(k for k in range(n_shifts) if clipping[k] <= clip_fraction * total
                           or k == n_shifts - 1))
    return tuple(shifts)


class RowMemo:
    """Results of a row-wise product ``f(a, b)`` (each output row depends on its input row and
    ``b`` only, as every product of the layer does), kept per matrix object and input row: a
    row asked for again (the same token through the same expert, window after window; the
    no-cache recomputation of a prefix; the timing level's DAC counts) is not recomputed.
    ``tag`` distinguishes settings that change ``f`` for a matrix (e.g. its ADC window)."""

    def __init__(self):
        # id(b) -> (b, {(tag, row digest): output row})
        self._rows: dict[int, tuple[object, dict]] = {}

    @staticmethod
    def _digest(row: np.ndarray) -> bytes:
        return hashlib.blake2b(row.tobytes(), digest_size=16).digest()

    def __call__(self, f, a: np.ndarray, b, tag=None) -> np.ndarray:
        """``f(a, b)`` for the 2-D int64 ``a``, from the memo where it has the rows."""
        if not len(a):
            return f(a, b)
        hit = self._rows.get(id(b))
        if hit is None or hit[0] is not b:
            hit = self._rows[id(b)] = (b, {})
        rows = hit[1]
        keys = [(tag, self._digest(r)) for r in a]
        missing = {k: i for i, k in enumerate(keys) if k not in rows}   # duplicates once
        if missing:
            fresh = f(a[list(missing.values())], b)
            for k, r in zip(missing, fresh):
                rows[k] = r
        return np.stack([rows[k] for k in keys])

    def export(self, names: dict[int, str]) -> dict[str, dict]:
        """The memo by matrix name (``names``: ``id(b) -> name``; others left out)."""
        return {names[k]: dict(v[1]) for k, v in self._rows.items() if k in names}

    def restore(self, saved: dict[str, dict], tensors: dict) -> None:
        """Take back an :meth:`export`, onto the matrices ``tensors`` (``name -> matrix``)."""
        for name, rows in saved.items():
            if name in tensors:
                b = tensors[name]
                self._rows[id(b)] = (b, dict(rows))

    def __len__(self) -> int:
        return sum(len(v[1]) for v in self._rows.values())


class MemoMatmul:
    """A row-wise product ``f(a, b)`` (e.g. the exact ``int_matmul``) with its rows kept
    (:class:`RowMemo`, ``memo``)."""

    def __init__(self, f):
        self.f = f
        self.memo = RowMemo()

    def __call__(self, a, b) -> np.ndarray:
        a = np.asarray(a, dtype=np.int64)
        out = self.memo(self.f, a.reshape(-1, a.shape[-1]), b)
        return out[0] if a.ndim == 1 else out


class CrossbarMatmul:
    """``a @ b`` through crossbar tiles of ``shape`` (see the module docstring).

    With ``adc_range: calibrated`` every matrix has its own ADC shift: :meth:`calibrate` sets
    them from recorded calibration products, :meth:`shift_for` gives a matrix's (the value
    the bank file carries for its slot). Products are kept per matrix and input row
    (:class:`RowMemo`, ``memo``)."""

    def __init__(self, shape: TileSpec):
        self.shape = shape
        self._shifts: dict[int, tuple[np.ndarray, int]] = {}
        self._cells: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # id(b) -> (b, cells)
        self.memo = RowMemo()

    @property
    def needs_calibration(self) -> bool:
        return self.shape.adc_range == "calibrated" and not self._shifts

    def calibrate(self, products, clip_fraction: float = CALIBRATION_CLIP_FRACTION) -> dict:
        """``products``: ``(a, b)`` pairs (calibration inputs of each matrix ``b``; a matrix
        may appear several times). Returns ``{id(b): shifts per slice}``."""
        inputs: dict[int, tuple[np.ndarray, list]] = {}
        for a, b in products:
            inputs.setdefault(id(b), (b, []))[1].append(np.asarray(a).reshape(-1, b.shape[0]))
        for key, (b, parts) in inputs.items():
            self._shifts[key] = (b, calibrate_shift(np.concatenate(parts), b, self.shape,
                                                    clip_fraction, self._cells_of(b)))
        return {k: v[1] for k, v in self._shifts.items()}

    def set_shifts(self, b, shifts) -> None:
        """Give matrix ``b`` the ADC window ``shifts`` (one per weight slice), e.g. read back
        from a calibration cache."""
        shifts = tuple(int(k) for k in shifts)
        if len(shifts) != self.shape.slices_per_weight or not all(
                0 <= k <= self.shape.sum_bits for k in shifts):
            raise ValueError(f"ADC window {shifts}: need {self.shape.slices_per_weight} shifts "
                             f"in 0..{self.shape.sum_bits}")
        self._shifts[id(b)] = (b, shifts)

    def known_shifts(self) -> list[tuple[object, tuple[int, ...]]]:
        """``(matrix, shifts)`` of every matrix with an ADC window (calibrated or set)."""
        return list(self._shifts.values())

    def shift_for(self, b) -> tuple[int, ...] | None:
        """The ADC shifts of matrix ``b``, one per weight slice (``None`` with a fixed
        range)."""
        if self.shape.adc_range != "calibrated":
            return None
        hit = self._shifts.get(id(b))
        if hit is None or hit[0] is not b:
            raise ValueError("adc_range 'calibrated': this matrix has no calibrated ADC "
                             "window (calibrate the CrossbarMatmul on the layer's matrices)")
        return hit[1]

    def __call__(self, a, b) -> np.ndarray:
        a = np.asarray(a, dtype=np.int64)
        shift = self.shift_for(b)
        if a.shape[-1] != np.shape(b)[0]:
            raise ValueError(f"inner dimensions differ: {a.shape} @ {np.shape(b)}")
        squeeze = a.ndim == 1
        out = self.memo(self._compute, a.reshape(-1, a.shape[-1]), b, shift)
        return out[0] if squeeze else out

    def _compute(self, a: np.ndarray, b) -> np.ndarray:
        s = self.shape
        cells = self._cells_of(b)    # cached per matrix object (before any conversion)
        b_rows, b_cols = np.shape(b)
        rt, _ = tiles_of(b_rows, b_cols, s)
        x = _padded_inputs(a, rt, s)
        return row_tile_outputs(x, cells, s, self.shift_for(b)).sum(axis=1)[:, :b_cols]

    def cells_of(self, b) -> np.ndarray:
        """The cells of matrix ``b`` (``(row_tiles, col_tiles, n_rows, n_columns)``), encoded
        once per matrix object."""
        return self._cells_of(b)

    @property
    def cells_bytes(self) -> int:
        """Memory held by the encoded cells kept so far."""
        return sum(c.nbytes for _, c in self._cells.values())

    def _cells_of(self, b: np.ndarray) -> np.ndarray:
        """The cells of ``b``, encoded once per matrix object (the layer's golden calls the
        same expert matrices window after window)."""
        hit = self._cells.get(id(b))
        if hit is None or hit[0] is not b:
            hit = self._cells[id(b)] = (b, _cells(b, self.shape))
        return hit[1]


def bank_image(matrices, n_slots: int, n_in: int, n_out: int, shape: TileSpec,
               shifts=None, matmul: CrossbarMatmul | None = None) -> np.ndarray:
    """Cell bytes of one matrix bank: slot-major, then row tile, column tile, row, column
    (the order ``moepim_matrix_bank`` reads). Slots without a matrix hold zero weights.
    ``adc_range: calibrated``: ``shifts`` (one tuple per matrix, a shift per weight slice)
    follow as ``n_slots x 8`` bytes (the run-time ADC window of each slot, byte ``j`` the
    shift of slice ``j``; empty slots 0). ``matmul``: the golden model's, whose cells of
    these matrices are already encoded (its tile shape must be ``shape``)."""
    if matmul is not None and matmul.shape.arithmetic != shape.arithmetic:
        raise ValueError("bank_image: the CrossbarMatmul's tile arithmetic is not the bank's")
    calibrated = shape.adc_range == "calibrated"
    if calibrated and (shifts is None or len(shifts) != len(matrices)):
        raise ValueError("adc_range 'calibrated': bank_image needs one ADC shift per matrix")
    if len(matrices) > n_slots:
        raise ValueError(f"{len(matrices)} matrices for a bank of {n_slots} slots")
    zero = np.zeros((n_in, n_out), dtype=np.int64)
    parts = []
    for k in range(n_slots):
        w = np.asarray(matrices[k] if k < len(matrices) else zero)
        if w.shape != (n_in, n_out):
            raise ValueError(f"matrix {k} has shape {w.shape}; the bank needs ({n_in}, {n_out})")
        cells = matmul.cells_of(matrices[k]) if (matmul is not None and k < len(matrices)) \
            else _cells(w, shape)
        parts.append(cells.reshape(-1))
    if calibrated:
        window = np.zeros((n_slots, 8), dtype=np.uint8)     # shifts <= sum_bits < 256
        for k, sh in enumerate(shifts):
            window[k, :len(sh)] = sh
        parts.append(window.reshape(-1))
    return np.concatenate(parts).astype(np.uint8, copy=False)


def split_bank_image(image: np.ndarray, n_slots: int, shape: TileSpec):
    """``(cells, shifts (n_slots, slices))`` of a :func:`bank_image` (``shifts`` ``None``
    with a fixed range)."""
    image = np.asarray(image, dtype=np.uint8)
    if shape.adc_range != "calibrated":
        return image, None
    window = image[-8 * n_slots:].reshape(n_slots, 8).astype(np.int64)
    return image[:-8 * n_slots], window[:, :shape.slices_per_weight]


def column_sum_packing(shape: TileSpec) -> tuple[int, int, int]:
    """``(sum_bits, per_word, words)``: a crossbar column's sum over all rows fits
    ``sum_bits`` bits; ``per_word`` such sums share a 64-bit word without carries between
    them; ``words`` words hold one crossbar row (``n_columns`` cells)."""
    sum_bits = (shape.n_rows * ((1 << shape.bits_per_cell) - 1)).bit_length()
    per_word = 64 // sum_bits
    return sum_bits, per_word, -(-shape.n_columns // per_word)


def bank_file_words(image: np.ndarray, shape: TileSpec, n_slots: int | None = None) -> np.ndarray:
    """The file ``moepim_matrix_bank`` loads for a :func:`bank_image`: each crossbar row's
    cells packed ``per_word`` to a 64-bit word (cell ``k`` of a word at bits ``k*sum_bits``,
    :func:`column_sum_packing`; unused lanes zero), words big-endian (Verilog's ``$fread``
    order). The macro adds whole words: ``per_word`` column sums per addition. With a
    calibrated ADC range (``n_slots`` then required) one 64-bit word per slot follows: its
    ADC window, byte ``j`` (bits ``8j..8j+7``) the shift of weight slice ``j``."""
    sum_bits, per_word, words = column_sum_packing(shape)
    shifts = None
    if shape.adc_range == "calibrated":
        if n_slots is None:
            raise ValueError("adc_range 'calibrated': bank_file_words needs n_slots")
        image, shifts = split_bank_image(image, n_slots, shape)
    rows = np.asarray(image, dtype=np.uint8).reshape(-1, shape.n_columns)
    shift_words = shifts
    words_out = np.zeros((len(rows), words), dtype=np.uint64)
    # in blocks of rows (a full-size bank is hundreds of MB of cells): lane k of every word
    # ORed in at bit k * sum_bits
    block = 1 << 16
    for r0 in range(0, len(rows), block):
        part = rows[r0:r0 + block]
        padded = np.zeros((len(part), words * per_word), dtype=np.uint8)
        padded[:, :shape.n_columns] = part
        lanes = padded.reshape(len(part), words, per_word)
        out = words_out[r0:r0 + block]
        for k in range(per_word):
            out |= lanes[:, :, k].astype(np.uint64) << np.uint64(k * sum_bits)
    words_out = words_out.reshape(-1)
    if shift_words is not None:
        sw = np.zeros(len(shift_words), dtype=np.uint64)
        for j in range(shift_words.shape[1]):
            sw |= shift_words[:, j].astype(np.uint64) << np.uint64(8 * j)
        words_out = np.concatenate([words_out, sw])
    return words_out.astype(">u8")
