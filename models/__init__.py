"""moepim.models."""
