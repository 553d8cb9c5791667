"""The crossbar tile's specification (:class:`TileSpec`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

from . import timing
from .checks import need, need_positive, signed_bits

__all__ = ["TileSpec", "BITS_PER_CELL_ALLOWED", "WEIGHT_ENCODINGS", "ADC_RANGES"]

BITS_PER_CELL_ALLOWED = (1, 2, 4, 8)
# signed weights: offset (w + 2**(weight_bits-1), the paper's), differential (positive and
# negative columns subtracted before the ADC) or reference_column (a mid-scale column
# subtracted before the ADC); see moepim.models.tile
WeightEncoding = Literal["offset", "differential", "reference_column"]
# fixed: adc_shift for every matrix; calibrated: a run-time shift per matrix from a seeded
# calibration batch (moepim.models.pim.calibrate_shift)
AdcRange = Literal["fixed", "calibrated"]
WEIGHT_ENCODINGS = get_args(WeightEncoding)
ADC_RANGES = get_args(AdcRange)


@dataclass(frozen=True)
class TileSpec:
    """One crossbar tile: validated parameters and every count and width derived from them.

    The one declaration of the tile's parameters: the YAML's ``tile`` keys
    (``moepim.sim.config.TileConfig``: this class plus the build options), the golden model
    (``moepim.models.tile``) and the hardware (``moepim.hw``) all take this object. The
    arithmetic (signed weights encoded per ``weight_encoding`` and sliced over
    ``weight_bits // bits_per_cell`` lines, bit-serial signed inputs, ADC truncation then
    saturation) is documented in ``moepim.models.tile``.
    With ``adc_range="calibrated"`` the ADC shift is a run-time input: every width covers any
    shift ``0 .. sum_bits``.
    """

    n_rows: int = 256
    n_columns: int = 256
    bits_per_cell: int = 8
    weight_bits: int = 8
    input_bits: int = 8
    n_adcs: int = 32
    adc_bits: int = 8
    adc_shift: int | None = None
    weight_encoding: WeightEncoding = "offset"
    adc_range: AdcRange = "fixed"

    def __post_init__(self):
        for name in ("n_rows", "n_columns", "n_adcs"):
            need_positive(name, getattr(self, name))
        need(self.bits_per_cell in BITS_PER_CELL_ALLOWED, "bits_per_cell", self.bits_per_cell,
             f"one of {BITS_PER_CELL_ALLOWED}")
        need(isinstance(self.weight_bits, int) and 2 <= self.weight_bits <= 16, "weight_bits",
             self.weight_bits, "an integer from 2 to 16")
        need(self.weight_encoding in WEIGHT_ENCODINGS, "weight_encoding", self.weight_encoding,
             f"one of {WEIGHT_ENCODINGS}")
        need(self.adc_range in ADC_RANGES, "adc_range", self.adc_range, f"one of {ADC_RANGES}")
        need(not (self.adc_range == "calibrated" and self.weight_encoding == "offset"),
             "adc_range", self.adc_range, "'fixed' with weight_encoding 'offset' (its column "
             "sums carry the offset's common-mode term, no window narrower than the full "
             "scale fits them): choose 'differential' or 'reference_column' to calibrate")
        need(self.weight_bits % self.bits_per_cell == 0, "weight_bits", self.weight_bits,
             f"a multiple of bits_per_cell={self.bits_per_cell}")
        per = self.slices_per_weight * self.columns_per_line
        need(self.n_columns % per == 0, "n_columns", self.n_columns,
             f"a multiple of {per} (weight_bits/bits_per_cell slices"
             + (" x 2 columns, differential)" if self.columns_per_line == 2 else ")"))
        need(isinstance(self.input_bits, int) and 2 <= self.input_bits <= 16, "input_bits",
             self.input_bits, "an integer from 2 to 16")
        need(self.n_lines % self.n_adcs == 0, "n_adcs", self.n_adcs,
             f"a divisor of the {self.n_lines} ADC inputs per crossbar (n_columns"
             + (" / 2: differential column pairs)" if self.columns_per_line == 2 else ")"))
        need(isinstance(self.adc_bits, int) and 1 <= self.adc_bits <= 32, "adc_bits",
             self.adc_bits, "an integer from 1 to 32")
        if self.adc_shift is not None:
            need(isinstance(self.adc_shift, int) and 0 <= self.adc_shift <= self.sum_bits,
                 "adc_shift", self.adc_shift, f"null or an integer from 0 to {self.sum_bits}")

    @property
    def arithmetic(self) -> dict:
        """The fields that decide what the tile computes (every one but ``n_adcs``, which only
        decides how long it takes): what a golden model or a calibrated window depends on.
        Only :class:`TileSpec`'s own fields, in their order: a subclass's (a config's build
        options) never enter a cache key."""
        return {f.name: getattr(self, f.name) for f in fields(TileSpec) if f.name != "n_adcs"}

    # geometry
    @property
    def slices_per_weight(self) -> int:
        return self.weight_bits // self.bits_per_cell

    @property
    def columns_per_line(self) -> int:
        """Columns per ADC input: 2 for a differential pair, else 1."""
        return 2 if self.weight_encoding == "differential" else 1

    @property
    def n_lines(self) -> int:
        """ADC inputs per crossbar (columns, or column pairs for ``differential``)."""
        return self.n_columns // self.columns_per_line

    @property
    def n_outputs(self) -> int:
        return self.n_lines // self.slices_per_weight

    @property
    def columns_per_adc(self) -> int:
        """ADC inputs muxed onto one ADC (conversions per ADC per bit plane)."""
        return self.n_lines // self.n_adcs

    @property
    def n_physical_columns(self) -> int:
        """Columns of cells per crossbar, the reference column included."""
        return self.n_columns + (1 if self.weight_encoding == "reference_column" else 0)

    @property
    def cells_per_crossbar(self) -> int:
        """Cells of one crossbar (read on every bit plane), the reference column included."""
        return self.n_rows * self.n_physical_columns

    @property
    def signed_sums(self) -> bool:
        return self.weight_encoding != "offset"

    @property
    def calibrated(self) -> bool:
        return self.adc_range == "calibrated"

    @property
    def reference_cell(self) -> int:
        return 1 << (self.bits_per_cell - 1)

    # widths
    @property
    def max_column_sum(self) -> int:
        """Largest sum of one physical column (unsigned cells)."""
        return self.n_rows * ((1 << self.bits_per_cell) - 1)

    @property
    def column_sum_bits(self) -> int:
        return self.max_column_sum.bit_length()

    @property
    def sum_range(self) -> tuple[int, int]:
        """Range of a line sum, the ADC's input."""
        top = self.max_column_sum
        if self.weight_encoding == "differential":
            return -top, top
        if self.weight_encoding == "reference_column":
            return -self.n_rows * self.reference_cell, top - self.n_rows * self.reference_cell
        return 0, top

    @property
    def sum_bits(self) -> int:
        """Width of a line sum (two's complement for the signed encodings)."""
        lo, hi = self.sum_range
        return signed_bits(lo, hi) if self.signed_sums else hi.bit_length()

    @property
    def code_range(self) -> tuple[int, int]:
        if self.signed_sums:
            return -(1 << (self.adc_bits - 1)), (1 << (self.adc_bits - 1)) - 1
        return 0, (1 << self.adc_bits) - 1

    @property
    def shift_bits(self) -> int:
        """Width of the run-time ADC shift (``adc_range="calibrated"``): 0 .. sum_bits."""
        return (self.sum_bits).bit_length()

    @property
    def resolved_adc_shift(self) -> int:
        if self.adc_shift is not None:
            return self.adc_shift
        return max(0, self.sum_bits - self.adc_bits)

    @property
    def shifts(self) -> range:
        """ADC shifts the hardware must support."""
        if self.calibrated:
            return range(self.sum_bits + 1)
        return range(self.resolved_adc_shift, self.resolved_adc_shift + 1)

    def converted_range(self, shift: int) -> tuple[int, int]:
        (lo, hi), (clo, chi) = self.sum_range, self.code_range
        return max(lo >> shift, clo) << shift, min(hi >> shift, chi) << shift

    @property
    def converted_bounds(self) -> tuple[int, int]:
        """Smallest and largest value the ADC can hand to the shift-and-add."""
        ranges = [self.converted_range(k) for k in self.shifts]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    @property
    def max_converted(self) -> int:
        """Largest magnitude the ADC can hand to the shift-and-add."""
        lo, hi = self.converted_bounds
        return max(-lo, hi)

    @property
    def code_bits(self) -> int:
        if self.signed_sums:
            return self.adc_bits
        return max(1, min(self.adc_bits, (self.max_column_sum >> self.resolved_adc_shift)
                          .bit_length()))

    @property
    def offset_correction(self) -> int:
        """Multiple of ``sum(x)`` the combine step subtracts (``moepim.models.tile``)."""
        if self.weight_encoding == "differential":
            return 0
        half = 1 << (self.weight_bits - 1)
        if self.weight_encoding == "reference_column":
            return half - self.reference_cell * sum(
                1 << (j * self.bits_per_cell) for j in range(self.slices_per_weight))
        return half

    def _acc_range(self) -> tuple[int, int]:
        half = 1 << (self.input_bits - 1)
        lo, hi = self.converted_bounds
        if not self.signed_sums:        # unchanged widths for the offset encoding
            return -half * hi, (half - 1) * hi
        plane_sum = (1 << self.input_bits) - 1
        m = max(-lo, hi)
        return -plane_sum * m, plane_sum * m

    @property
    def acc_bits(self) -> int:
        """Width of one column accumulator of the shift-and-add."""
        return signed_bits(*self._acc_range())

    @property
    def output_range(self) -> tuple[int, int]:
        lo, hi = self._acc_range()
        slice_sum = sum(1 << (j * self.bits_per_cell) for j in range(self.slices_per_weight))
        offset = self.offset_correction
        half = 1 << (self.input_bits - 1)
        x_lo, x_hi = -half * self.n_rows, (half - 1) * self.n_rows
        if offset >= 0:
            return lo * slice_sum - offset * x_hi, hi * slice_sum - offset * x_lo
        return lo * slice_sum - offset * x_lo, hi * slice_sum - offset * x_hi

    @property
    def output_bits(self) -> int:
        return signed_bits(*self.output_range)

    @property
    def conversions_per_plane(self) -> int:
        return self.n_lines

    @property
    def ideal_adc(self) -> bool:
        """True when the ADC loses nothing: no truncation and no saturation is possible."""
        (lo, hi), (clo, chi) = self.sum_range, self.code_range
        return self.resolved_adc_shift == 0 and clo <= lo and hi <= chi

    @property
    def mvm_latency(self) -> int:
        """Cycles of one MVM (``moepim.spec.timing.mvm_latency``)."""
        return timing.mvm_latency(self.input_bits, self.columns_per_adc)
