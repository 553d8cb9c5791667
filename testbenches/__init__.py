"""moepim.testbenches: the simulator-independent benches, runtime code as well as test code.

``benches.moe_layer`` is the host of every ``moepim run`` of a layer (it streams the windows,
collects the routes, serves the GO cache's DRAM and reads the counters), ``benches.
tile_scenario`` the host of a tile run; the other benches drive single blocks for the tests and
the waveform regressions. They are composed of the components of :mod:`.streams` (stream
source with seeded gaps, stream sink with seeded back-pressure, DRAM responder, table writer)
and drive a design through :mod:`.harness` (Amaranth's simulator, or cocotb on Verilator and
Icarus: ``moepim.sim.block_run.run_bench``).
"""
