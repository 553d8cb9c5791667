"""moepim.sim."""
