"""The scheduling policies of ``moepim.models.schedule``, by name: a leaf module (no numpy), so
the config loader and the command line can name them without importing the scheduler."""

POLICIES = ("single_token", "compact", "reschedule", "reschedule_heuristic")
