"""moepim.testbenches."""
