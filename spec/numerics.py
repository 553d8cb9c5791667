"""Number formats the golden models and the RTL share (one definition each)."""

from __future__ import annotations

__all__ = ["SCORE_BITS", "RECIP_SHIFT", "RECIP_BITS", "EXP_ENTRIES", "EXP_STEPS_PER_UNIT"]

SCORE_BITS = 16                 # gate scores / softmax probabilities in Q0.16 (the GO cache's)
# the softmax's reciprocal of the sum: R = floor(2**RECIP_SHIFT / sum); every numerator
# e << 16 is below 2**RECIP_SHIFT (e <= 2**16), and sum >= 2**16 (the maximum's entry)
# bounds R below 2**RECIP_BITS
RECIP_SHIFT = 2 * SCORE_BITS + 1
RECIP_BITS = RECIP_SHIFT - SCORE_BITS + 1
EXP_ENTRIES, EXP_STEPS_PER_UNIT = 256, 16   # exp table: 256 entries of 1/16 log unit each
