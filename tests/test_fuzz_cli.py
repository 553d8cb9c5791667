"""Fuzzing the command line (hypothesis, a few dozen examples per property): mutated configs,
damaged traces and odd command lines must end in exit 0 or 2, with one line on stderr naming
the file (and the key, where there is one), no output folder after a failure, and no file of the
user's touched. The harness is ``tests/fuzzing.py``; ``tools/fuzz_cli.py`` runs it longer."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzzing import (
    args_case,
    config_case,
    config_run_case,
    describe,
    layer_config_case,
    run_case,
    trace_case,
)

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _assert_clean(result):
    assert result.verdict == "clean", describe(result)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_configs(tmp_path_factory, seed):
    folder = tmp_path_factory.mktemp("cfg")
    case = config_case(random.Random(seed))
    result = run_case(case, folder)
    _assert_clean(result)
    if result.code == 2:        # a refused config refuses a run too, and writes nothing
        _assert_clean(run_case(config_run_case(case), folder))


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_damaged_traces(tmp_path_factory, seed):
    _assert_clean(run_case(trace_case(random.Random(seed)), tmp_path_factory.mktemp("tr")))


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_odd_command_lines(tmp_path_factory, seed):
    _assert_clean(run_case(args_case(random.Random(seed)), tmp_path_factory.mktemp("args")))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_layer_configs(tmp_path_factory, seed):
    folder = tmp_path_factory.mktemp("layer")
    case = layer_config_case(random.Random(seed))
    result = run_case(case, folder)
    _assert_clean(result)
    if result.code == 2:
        _assert_clean(run_case(config_run_case(case), folder))
