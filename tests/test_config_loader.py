"""The strict config loader: YAML 1.2 scalars, duplicate keys, depth, encoding, file kinds,
numeric checks, physical constants, missing sections, referenced files, the resource guard and
``moepim check``. Every failure is exit 2 with one line naming the file and the key."""

import math

import pytest
import yaml

from moepim.sim.cli import main
from moepim.sim.config import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_SOFTMAX_EXPERTS,
    REPO_ROOT,
    ConfigError,
    load_dram,
    load_experiment,
    load_tech,
    parse_yaml,
    resolved_dict,
)

from .conftest import SMALL

CONFIGS = REPO_ROOT / "configs"
TECH = CONFIGS / "tech" / "isaac-32nm.yaml"
LAYER = CONFIGS / "experiments" / "layer-small.yaml"


def _tile_text(**workload) -> str:
    raw = yaml.safe_load(SMALL.read_text())
    raw["tech"] = str(TECH)
    raw["workload"].update(workload)
    return yaml.safe_dump(raw, sort_keys=False)


def _layer(tmp_path, mutate=None, model_mutate=None, name="layer.yaml"):
    raw = yaml.safe_load(LAYER.read_text())
    for key in ("model", "tile", "tech", "dram"):
        raw[key] = str((LAYER.parent / raw[key]).resolve())
    if model_mutate:
        m = yaml.safe_load(open(raw["model"]).read())
        model_mutate(m)
        (tmp_path / "model.yaml").write_text(yaml.safe_dump(m))
        raw["model"] = str(tmp_path / "model.yaml")
    if mutate:
        mutate(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _check(capsys, path, *extra) -> tuple[int, list[str]]:
    code = main(["check", str(path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _one_line(err, *words):
    assert len(err) == 1, err
    for w in words:
        assert str(w) in err[0], (w, err[0])
    assert "Traceback" not in err[0]


# -- YAML 1.2 scalars ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("030", 30), ("0o30", 24), ("0x1F", 31), ("+7", 7), ("-7", -7),
    ("1e9", 1e9), ("1.5", 1.5), (".inf", math.inf),
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"),
    ("true", True), ("False", False), ("null", None), ("~", None),
    ("1_000", "1_000"), ("2001-12-14", "2001-12-14"), ("1:30", "1:30"),
])
def test_yaml_1_2_scalars(text, value):
    assert parse_yaml(f"k: {text}\n", "f.yaml") == {"k": value}


def test_octal_looking_integer_is_decimal(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(_tile_text().replace("n_mvms: 24", "n_mvms: 030"))
    assert load_experiment(path).workload.n_mvms == 30


def test_yaml_1_1_boolean_words_are_not_booleans(tmp_path, capsys):
    path = _layer(tmp_path, lambda r: r["workload"].update(go_cache="yes"))
    # safe_dump quotes 'yes'; write it bare as a user would
    path.write_text(path.read_text().replace("go_cache: 'yes'", "go_cache: yes"))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, path.name, "workload.go_cache", "'yes'", "true or false")


def test_duplicate_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text(_tile_text().replace("  seed: 7\n", "  seed: 7\n  seed: 8\n"))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "dup.yaml", "'seed'", "line", "once")


def test_nesting_depth_limit(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\nkind: tile\ntile: " + "[" * 5000 + "]" * 5000 + "\n")
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "deep.yaml", f"{MAX_DEPTH} levels")
    path.write_text("version: 1\nkind: tile\ntile: " + "{a: " * (MAX_DEPTH + 5) + "1"
                    + "}" * (MAX_DEPTH + 5) + "\n")
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "deep.yaml", f"{MAX_DEPTH} levels")


@pytest.mark.parametrize("data, words", [
    ("version: 1\nkind: t\u00e9le\n".encode("latin-1"), ["line 2", "0xe9", "UTF-8"]),
    ("version: 1\nkind: tile\n".encode("utf-16"), ["0xff", "UTF-8"]),
    (b"version: 1\n\x00\x01\x02", ["NUL"]),
])
def test_encodings(tmp_path, capsys, data, words):
    path = tmp_path / "enc.yaml"
    path.write_bytes(data)
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "enc.yaml", *words)


def test_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + _tile_text().encode())
    assert load_experiment(path).workload.n_mvms == 24


def test_only_regular_files_below_the_size_limit(tmp_path, capsys):
    code, err = _check(capsys, tmp_path)
    assert code == 2
    _one_line(err, str(tmp_path), "folder")
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n" + "#" * MAX_CONFIG_BYTES + "\n")
    code, err = _check(capsys, big)
    assert code == 2
    _one_line(err, "big.yaml", str(MAX_CONFIG_BYTES))
    ref = tmp_path / "ref.yaml"
    ref.write_text(_tile_text().replace(f"tech: {TECH}", "tech: /dev/zero"))
    code, err = _check(capsys, ref)
    assert code == 2
    _one_line(err, "ref.yaml", "tech", "/dev/zero", "not a regular file")


# -- numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, allowed", [
    ("seed", -5, "from 0 to"),
    ("n_mvms", 1e9, "an integer"),
    ("n_mvms", True, "an integer"),
    ("backpressure", float("nan"), "finite"),
    ("backpressure", float("inf"), "finite"),
    ("max_gap", -1, "from 0 to"),
])
def test_workload_numbers(tmp_path, capsys, key, value, allowed):
    path = tmp_path / "w.yaml"
    path.write_text(_tile_text(**{key: value}))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "w.yaml", f"workload.{key}", allowed)


def _tech_with(tmp_path, old: str, new: str):
    text = TECH.read_text()
    assert old in text
    tech = tmp_path / "tech.yaml"
    tech.write_text(text.replace(old, new, 1))
    return tech


@pytest.mark.parametrize("old, new, key, allowed", [
    ("value: 1.0\n", "value: -1\n", "clock_ns.value", "> 0"),
    ("value: 1.0\n", "value: 0\n", "clock_ns.value", "> 0"),
    ("value: 1.67,", "value: .nan,", "adc_energy_pj.8", "finite"),
    ("value: 0.001526\n", "value: -0.001526\n", "cell_area_um2.value", "> 0"),
    ("value: 1.0\n", "value: .inf\n", "clock_ns.value", "finite"),
    ("value: 1.0\n", "value: '1.0'\n", "clock_ns.value", "a number"),
])
def test_tech_constants_must_be_finite_and_positive(tmp_path, capsys, old, new, key, allowed):
    tech = _tech_with(tmp_path, old, new)
    with pytest.raises(ConfigError) as e:
        load_tech(tech)
    assert key in str(e.value) and allowed in str(e.value) and "tech.yaml" in str(e.value)
    path = tmp_path / "t.yaml"
    path.write_text(_tile_text().replace(f"tech: {TECH}", f"tech: {tech}"))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "tech.yaml", key)


def test_zero_only_where_it_means_something(tmp_path):
    dram = CONFIGS / "dram" / "hbm2.yaml"
    for key, ok in (("latency_ns", True), ("idle_power_w", True), ("bandwidth_gbps", False),
                    ("active_power_w", False)):
        text = dram.read_text()
        start = text.index(f"{key}: {{value: ") + len(f"{key}: {{value: ")
        end = text.index(",", start)
        path = tmp_path / f"{key}.yaml"
        path.write_text(text[:start] + "0" + text[end:])
        if ok:
            assert getattr(load_dram(path), key).value == 0
        else:
            with pytest.raises(ConfigError, match=f"{key}.value.*> 0"):
                load_dram(path)
        path.write_text(text[:start] + "-1" + text[end:])
        with pytest.raises(ConfigError, match=f"{key}.value"):
            load_dram(path)
        path.write_text(text[:start] + ".inf" + text[end:])
        with pytest.raises(ConfigError, match=f"{key}.value.*finite"):
            load_dram(path)


# -- sections, references, groupings -------------------------------------------------------------

def test_missing_tile_section_is_an_error(tmp_path, capsys):
    raw = yaml.safe_load(_tile_text())
    del raw["tile"]
    path = tmp_path / "notile.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "notile.yaml", "tile", "missing")
    code, err = _check(capsys, _layer(tmp_path, lambda r: r.pop("tile")))
    assert code == 2
    _one_line(err, "layer.yaml", "tile", "missing")


@pytest.mark.parametrize("tile, key, value, allowed", [
    ({"n_adcs": 3}, "n_adcs", 3, "a divisor of the 16 ADC inputs per crossbar (n_columns)"),
    ({"weight_encoding": "foo"}, "weight_encoding", "foo",
     "one of 'offset', 'differential', 'reference_column'"),
    ({"adc_range": "calibrated"}, "adc_range", "calibrated", "'fixed' with weight_encoding"),
    ({"bits_per_cell": 3}, "bits_per_cell", 3, "one of (1, 2, 4, 8)"),
    ({"group_size": 0}, "group_size", 0, "a positive integer"),
    ({"counter_bits": 4}, "counter_bits", 4, "an integer from 8 to 64"),
    ({"core": "spice"}, "core", "spice", "one of 'macro', 'logic'"),
])
def test_bad_tile_value_names_file_key_value_and_rule(tmp_path, capsys, tile, key, value,
                                                      allowed):
    """The tile's checks (``TileSpec``'s constructor, the build options' hardware checks) reach
    the user as one ConfigError: the file, the key (``tile.`` inline), the value, the rule."""
    raw = yaml.safe_load(_tile_text())
    raw["tile"].update(tile)
    path = tmp_path / "bad-tile.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert (e.value.file, e.value.key, e.value.value) == (path, f"tile.{key}", value)
    assert allowed in e.value.allowed
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "bad-tile.yaml", f"tile.{key}: {value!r} is not allowed", allowed)


def test_bad_value_in_a_tile_file_names_that_file_and_key(tmp_path):
    hw = yaml.safe_load((LAYER.parent / yaml.safe_load(LAYER.read_text())["tile"]).read_text())
    hw["n_adcs"] = 5
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(hw, sort_keys=False))
    path = _layer(tmp_path, lambda r: r.update(tile=str(tmp_path / "hw.yaml")))
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert (e.value.file, e.value.key, e.value.value) == (tmp_path / "hw.yaml", "n_adcs", 5)
    assert "a divisor of the 64 ADC inputs" in e.value.allowed


def test_tile_config_is_the_tile_spec_plus_the_build_options():
    """The tile's schema is declared once (``TileSpec``): the config adds only the build
    options, and hands the hardware and the caches a plain ``TileSpec``."""
    import dataclasses
    import typing

    from moepim.sim.config import TileConfig
    from moepim.spec.tile import TileSpec

    spec_fields = [f.name for f in dataclasses.fields(TileSpec)]
    assert issubclass(TileConfig, TileSpec)
    assert [f.name for f in dataclasses.fields(TileConfig)] == \
        spec_fields + ["group_size", "core", "counter_bits"]
    hints, spec_hints = typing.get_type_hints(TileConfig), typing.get_type_hints(TileSpec)
    assert {k: hints[k] for k in spec_fields} == spec_hints
    assert {f.name: f.default for f in dataclasses.fields(TileConfig)
            if f.name in spec_fields} == {f.name: f.default for f in dataclasses.fields(TileSpec)}
    tile = load_experiment(SMALL).tile
    assert type(tile.spec()) is TileSpec
    assert tile.arithmetic == tile.spec().arithmetic
    assert not {"group_size", "core", "counter_bits"} & set(tile.arithmetic)


@pytest.mark.parametrize("key", ["model", "tile", "tech", "dram"])
def test_missing_referenced_file_names_the_key(tmp_path, capsys, key):
    path = _layer(tmp_path, lambda r: r.update({key: "nowhere/gone.yaml"}))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "layer.yaml", f"{key}:", "gone.yaml", "no such file")


@pytest.mark.parametrize("key", ["trace", "profile_trace", "weights"])
def test_missing_workload_file_names_the_key(tmp_path, capsys, key):
    path = _layer(tmp_path, lambda r: r["workload"].update({key: "gone.npy"}))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "layer.yaml", f"workload.{key}", "gone.npy")


@pytest.mark.parametrize("grouping, words", [
    ("U3", ["group size 3 must divide", "8 experts"]),
    ("S3", ["group size 3 must divide"]),
    ("X2", ["U<n>, S<n>"]),
    ([[0, 1], [2, 3]], ["partition"]),
])
def test_grouping_errors_name_file_and_key(tmp_path, capsys, grouping, words):
    path = _layer(tmp_path, lambda r: r["workload"].update(grouping=grouping))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "layer.yaml", "workload.grouping", *words)


def test_expert_limit_of_the_expert_choice_router(tmp_path, capsys):
    path = _layer(tmp_path, model_mutate=lambda m: m.update(n_experts=4096))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "model.yaml", "n_experts", "4096", f"at most {MAX_SOFTMAX_EXPERTS}")


def test_softmax_limit_agrees_with_the_hardware():
    from moepim.hw.softmax import GateSoftmax
    from moepim.spec.checks import ParameterError

    GateSoftmax(n_experts=MAX_SOFTMAX_EXPERTS, logit_bits=12)
    with pytest.raises(ParameterError):
        GateSoftmax(n_experts=MAX_SOFTMAX_EXPERTS + 1, logit_bits=12)


# -- resource guard ------------------------------------------------------------------------------

@pytest.mark.parametrize("workload, words", [
    ({"n_mvms": 1_000_000_000}, ["n_mvms=1000000000", "GiB", "limit"]),
    ({"max_gap": 10**12, "arrival": "random"}, ["max_gap=1000000000000", "cycles", "limit"]),
])
def test_tile_guard_refuses_before_allocating(tmp_path, capsys, workload, words):
    path = tmp_path / "big.yaml"
    path.write_text(_tile_text(**workload))
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "big.yaml", *words, "--allow-large")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    # --allow-large: the estimate is printed, not refused
    assert main(["check", str(path), "--allow-large"]) == 0


@pytest.mark.parametrize("mutate, model_mutate, words", [
    (lambda r: r["workload"].update(n_prompt=100_000), None, ["limit", "--allow-large"]),
    (lambda r: r["workload"].update(n_prompt=1_000_000_000), None, ["GiB", "limit"]),
    (None, lambda m: m.update(d_model=10**12), ["GiB", "limit"]),
])
def test_layer_guard_refuses_before_allocating(tmp_path, capsys, mutate, model_mutate, words):
    path = _layer(tmp_path, mutate, model_mutate)
    code, err = _check(capsys, path)
    assert code == 2
    _one_line(err, "layer.yaml", *words)


# -- moepim check --------------------------------------------------------------------------------

def test_check_prints_resolved_config_and_estimate(tmp_path, capsys):
    assert main(["check", str(SMALL)]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out.rsplit("\n", 2)[0])
    assert doc["config"]["workload"]["n_mvms"] == 24
    assert doc["config"]["tile"]["n_rows"] == 16
    # 24 MVMs x (4 input bits x 4 columns per ADC + 4 + 2) cycles, scaled by the back-pressure
    # (0.3: / 0.7), plus 24 gaps of 6 / 2 cycles
    assert doc["estimate"]["cycles"] == int(24 * 22 / 0.7 + 24 * 3)
    assert out.strip().endswith("ok")
    assert not list(tmp_path.iterdir())
    assert main(["check", str(LAYER)]) == 0
    doc = yaml.safe_load(capsys.readouterr().out.rsplit("\n", 2)[0])
    assert doc["estimate"]["crossbars"] > 0 and doc["estimate"]["memory_bytes"] > 0


@pytest.mark.parametrize("name, size", [("u1-compact", 1), ("s2-compact", 2), ("u4-compact", 4)])
def test_layer_tile_group_size_is_the_grouping_s(name, size):
    """One parameter: in a layer experiment the grouping sets the tile's group size (the
    tile file says 2), so the resolved config states the banks the layer builds."""
    from moepim.sim.layer_run import layer_spec

    exp = load_experiment(REPO_ROOT / "configs" / "experiments" / "layer" / f"{name}.yaml")
    assert exp.tile.group_size == size == layer_spec(exp)[0].group_size
    assert resolved_dict(exp)["tile"]["group_size"] == size
