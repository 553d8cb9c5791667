"""moepim.spec: the neutral leaf of the package. Validated, frozen specifications of the
hardware (the tile, the MoE layer) with every value derived from them, and the timing model
(every cycle formula of the RTL in one place).

``moepim.hw`` (the RTL) and ``moepim.models`` (the golden models) both import it and never
each other; it imports neither, nor anything heavy (no numpy, torch or Amaranth).
"""
