"""Number formats the golden models and the RTL share (one definition each)."""

from __future__ import annotations

__all__ = ["SCORE_BITS", "RECIP_SHIFT", "RECIP_BITS", "EXP_ENTRIES", "EXP_STEPS_PER_UNIT",
           "ROPE_FRAC_BITS", "NORM_FRAC_BITS", "NORM_RECIP_BITS"]

SCORE_BITS = 16                 # gate scores / softmax probabilities in Q0.16 (the GO cache's)
# the softmax's reciprocal of the sum: R = floor(2**RECIP_SHIFT / sum); every numerator
# e << 16 is below 2**RECIP_SHIFT (e <= 2**16), and sum >= 2**16 (the maximum's entry)
# bounds R below 2**RECIP_BITS
RECIP_SHIFT = 2 * SCORE_BITS + 1
RECIP_BITS = RECIP_SHIFT - SCORE_BITS + 1
EXP_ENTRIES, EXP_STEPS_PER_UNIT = 256, 16   # exp table: 256 entries of 1/16 log unit each
ROPE_FRAC_BITS = 14             # RoPE cos/sin tables in Q1.14 (models.decoder.rope_tables)
# the integer norm (models.decoder.int_norm, hw.norm.NormUnit): r = isqrt(ms << 2F) is
# sqrt(ms) with F = NORM_FRAC_BITS fractional bits; the per-token reciprocal
# 2**NORM_RECIP_BITS // r (r < 2**17 for 8-bit codes)
NORM_FRAC_BITS = 8
NORM_RECIP_BITS = 30
