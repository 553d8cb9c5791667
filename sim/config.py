"""Versioned YAML configs loaded into frozen, typed classes.

Every problem is reported as one :class:`ConfigError` line naming the file, the key path, the
bad value and what is allowed. Unknown keys are errors. Each class's field names are the YAML
keys, the hardware constructor arguments and the golden-model arguments.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "TileConfig", "TechConfig", "TileWorkload", "TileExperiment", "load_model",
           "load_experiment", "load_tech", "resolved_dict", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A user mistake in a config file; ``str()`` is the one-line message to print."""

    def __init__(self, file, key, value, allowed):
        self.file, self.key, self.value, self.allowed = file, key, value, allowed
        super().__init__(f"{file}: {key}: {value!r} is not allowed; expected {allowed}")


# ---------------------------------------------------------------------------------------------
# schema classes

@dataclass(frozen=True)
class TileConfig:
    """One crossbar group: ``group_size`` crossbars sharing one set of peripherals."""

    n_rows: int = 256
    n_columns: int = 256
    bits_per_cell: int = 8
    weight_bits: int = 8
    input_bits: int = 8
    n_adcs: int = 32
    adc_bits: int = 8
    adc_shift: int | None = None
    # signed weights: offset (w + 2**(weight_bits-1), the paper's), differential (positive and
    # negative columns subtracted before the ADC) or reference_column (a mid-scale column
    # subtracted before the ADC); see moepim.models.tile
    weight_encoding: Literal["offset", "differential", "reference_column"] = "offset"
    # fixed: adc_shift for every matrix; calibrated: a run-time shift per matrix from a
    # seeded calibration batch (moepim.models.pim.calibrate_shift)
    adc_range: Literal["fixed", "calibrated"] = "fixed"
    group_size: int = 1
    core: Literal["macro", "logic"] = "macro"
    counter_bits: int = 48

    def hw_kwargs(self) -> dict:
        return dataclasses.asdict(self)

    def shape_kwargs(self) -> dict:
        """The golden model's arguments (the tile shape, without grouping and build options)."""
        d = dataclasses.asdict(self)
        for k in ("group_size", "core", "counter_bits"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class Constant:
    """A technology constant and where it comes from."""

    value: float
    source: str


@dataclass(frozen=True)
class TechConfig:
    """Per-event energies and per-component areas at one technology node."""

    name: str
    node_nm: int
    clock_ns: Constant
    cell_read_energy_fj: Constant
    cell_area_um2: Constant
    dac_drive_energy_pj: Constant
    dac_area_um2: Constant
    adc_energy_pj: dict[int, Constant]
    adc_area_um2: dict[int, Constant]
    shift_add_energy_pj: Constant
    shift_add_area_um2: Constant
    transistor_area_um2: Constant
    sram_energy_pj_per_bit: Constant
    sram_area_um2_per_bit: Constant
    int_add_energy_pj: Constant
    int_mult_energy_pj: Constant
    adc_leakage_mw: Constant
    net_toggle_energy_fj: Constant


@dataclass(frozen=True)
class TileWorkload:
    """Random seeded MVMs. ``arrival``: ``simultaneous`` (every crossbar requests at once, in
    rounds) or ``random`` (each request after a random idle gap of 0..``max_gap`` cycles)."""

    seed: int = 1
    n_mvms: int = 16
    arrival: Literal["simultaneous", "random"] = "simultaneous"
    max_gap: int = 8
    backpressure: float = 0.0


@dataclass(frozen=True)
class TileExperiment:
    version: int
    kind: Literal["tile"]
    tile: TileConfig
    tech: TechConfig
    workload: TileWorkload = field(default_factory=TileWorkload)
    simulator: Literal["verilator", "icarus", "amaranth"] = "verilator"
    source: str = ""


@dataclass(frozen=True)
class DramConfig:
    """Off-chip DRAM channel (``moepim.models.dram``): transfers queue first come, first
    served, each occupying the channel ``bytes / bandwidth`` and done ``latency_ns`` after its
    transfer; energy = active power x busy time + idle power x the rest of the run (the energy
    per byte is ``active_power / bandwidth``)."""

    name: str
    bandwidth_gbps: Constant          # GB/s
    latency_ns: Constant
    active_power_w: Constant
    idle_power_w: Constant


@dataclass(frozen=True)
class LayerHw:
    """MoE-layer hardware beyond the tile: ``lanes`` = width of the digital datapath (values
    per cycle of the token broadcast, the partial-sum adders and the combine unit);
    ``go_cache_rows`` = GO-cache SRAM capacity in tokens (``null``: the whole run fits);
    ``switching_activity``: Verilator runs record every RTL net's toggles (SAIF) for the
    digital switching energy (a traced build: longer build and simulation)."""

    lanes: int = 64
    go_cache_rows: int | None = None
    switching_activity: bool = True


@dataclass(frozen=True)
class LayerWorkload:
    """The prompt window and generated tokens streamed through the layer.

    ``grouping``: ``U<n>``, ``S<n>`` or explicit groups (lists of expert indices); sorted
    groups take their loads from ``profile_trace`` if given, else from the prompt's routing.
    ``trace``: replaces the gate's selection (``.npy``/``.csv``, layer ``trace_layer``).
    ``no_cache``: how the decode steps without the GO cache (every earlier token recomputed)
    are obtained for comparison: ``simulate`` (run on the hardware too), ``model`` (the
    schedule's cycle formula, checked against the RTL in the tests), ``off``.
    """

    seed: int = 1
    n_prompt: int = 32
    n_generate: int = 8
    grouping: str | list[list[int]] = "S2"
    policy: Literal["single_token", "compact", "reschedule", "reschedule_heuristic"] = \
        "reschedule"
    go_cache: bool = True
    no_cache: Literal["simulate", "model", "off"] = "model"
    trace: str | None = None
    trace_layer: int = 0
    profile_trace: str | None = None
    weights: str | None = None
    input_gaps: float = 0.0
    backpressure: float = 0.0


@dataclass(frozen=True)
class LayerExperiment:
    version: int
    kind: Literal["moe_layer"]
    model: Any
    tile: TileConfig
    tech: TechConfig
    dram: DramConfig
    layer: LayerHw = field(default_factory=LayerHw)
    workload: LayerWorkload = field(default_factory=LayerWorkload)
    simulator: Literal["verilator", "icarus", "amaranth"] = "verilator"
    allow_large: bool = False
    source: str = ""


# ---------------------------------------------------------------------------------------------
# generic checked conversion

def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def _convert(value, tp, file, key):
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(file, key, value, _describe(tp))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, file, key)
            except ConfigError:
                pass
        raise ConfigError(file, key, value, _describe(tp))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(file, key, value, "null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(file, key, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(file, key, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(file, key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(file, key, value, "a string")
    if origin is list:
        (etp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(file, key, value, "a list")
        return [_convert(v, etp, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        ktp, vtp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(file, key, value, "a mapping")
        return {_convert(k, ktp, file, f"{key}.{k}"): _convert(v, vtp, file, f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, key)
    raise TypeError(f"unsupported schema type {tp!r}")


def _build(cls, raw, file, key):
    if not isinstance(raw, dict):
        raise ConfigError(file, key or "(top level)", raw, _describe(cls))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            raise ConfigError(file, f"{key}.{k}" if key else k, raw[k],
                              f"no such key; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], file, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(file, sub, "(missing)", f"a value: {_describe(hints[name])}")
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(path, "(file)", str(path), "an existing YAML file") from None
    except OSError as e:
        raise ConfigError(path, "(file)", str(path), f"a readable file ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        raise ConfigError(path, where, getattr(e, "problem", str(e)), "valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "(top level)", raw, "a mapping")
    version = raw.get("version")
    if version != CONFIG_VERSION:
        raise ConfigError(path, "version", version, f"{CONFIG_VERSION}")
    return raw


def _resolve_path(ref: str, relative_to: Path) -> Path:
    p = Path(ref)
    if p.is_absolute():
        return p
    for base in (relative_to.parent, REPO_ROOT, Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return (relative_to.parent / p).resolve()


# ---------------------------------------------------------------------------------------------
# loaders

def load_tech(path) -> TechConfig:
    path = Path(path)
    raw = _read_yaml(path)
    raw = {k: v for k, v in raw.items() if k != "version"}
    return _build(TechConfig, raw, path, "")


def _check_tile(tile: TileConfig, file, prefix: str) -> None:
    """Cross-key rules, checked by the hardware constructors themselves (one source of truth)."""
    from moepim.hw.params import ParameterError, check_tile_group

    try:
        check_tile_group(**tile.hw_kwargs())
    except ParameterError as e:
        raise ConfigError(file, prefix + e.name, e.value, e.allowed) from None


def load_experiment(path) -> TileExperiment | LayerExperiment:
    path = Path(path)
    raw = _read_yaml(path)
    if raw.get("kind") == "moe_layer":
        return _load_layer_experiment(path, raw)
    allowed = [f.name for f in dataclasses.fields(TileExperiment) if f.name != "source"]
    for k in raw:
        if k not in allowed:
            raise ConfigError(path, k, raw[k], f"no such key; allowed keys: {', '.join(allowed)}")
    kind = raw.get("kind")
    if kind != "tile":
        raise ConfigError(path, "kind", kind, "'tile' or 'moe_layer'")
    tile, tile_file = _load_tile(raw, path)
    tech, tech_path = _load_checked_tech(raw, path, tile, tile_file)
    wl = _build(TileWorkload, raw.get("workload", {}), path, "workload")
    if wl.n_mvms < 1:
        raise ConfigError(path, "workload.n_mvms", wl.n_mvms, "a positive integer")
    if wl.max_gap < 0:
        raise ConfigError(path, "workload.max_gap", wl.max_gap, "an integer >= 0")
    if not 0.0 <= wl.backpressure < 1.0:
        raise ConfigError(path, "workload.backpressure", wl.backpressure,
                          "a probability in [0, 1)")
    simulator = _convert(raw.get("simulator", "verilator"),
                         typing.get_type_hints(TileExperiment)["simulator"], path, "simulator")
    return TileExperiment(version=CONFIG_VERSION, kind="tile", tile=tile, tech=tech,
                          workload=wl, simulator=simulator, source=str(path))


def _load_tile(raw, path):
    # tile: inline mapping or a path to configs/hw/*.yaml
    tile_ref = raw.get("tile", {})
    if isinstance(tile_ref, str):
        tile_file = _resolve_path(tile_ref, path)
        tile_raw = {k: v for k, v in _read_yaml(tile_file).items() if k != "version"}
        tile = _build(TileConfig, tile_raw, tile_file, "")
        _check_tile(tile, tile_file, "")
    else:
        tile_file = path
        tile = _build(TileConfig, tile_ref, path, "tile")
        _check_tile(tile, path, "tile.")
    return tile, tile_file


def _load_checked_tech(raw, path, tile, tile_file):
    tech_ref = raw.get("tech")
    if not isinstance(tech_ref, str):
        raise ConfigError(path, "tech", tech_ref, "a path to a configs/tech/*.yaml file")
    tech_path = _resolve_path(tech_ref, path)
    tech = load_tech(tech_path)
    for table in ("adc_energy_pj", "adc_area_um2"):
        known = sorted(getattr(tech, table))
        if tile.adc_bits not in known:
            raise ConfigError(tile_file, "adc_bits" if tile_file != path else "tile.adc_bits",
                              tile.adc_bits, f"a resolution that {tech_path} lists under "
                              f"{table}: {known}")
    return tech, tech_path


def load_dram(path) -> DramConfig:
    path = Path(path)
    raw = {k: v for k, v in _read_yaml(path).items() if k != "version"}
    dram = _build(DramConfig, raw, path, "")
    for key in ("bandwidth_gbps", "active_power_w"):
        if not getattr(dram, key).value > 0:
            raise ConfigError(path, f"{key}.value", getattr(dram, key).value, "a number > 0")
    for key in ("latency_ns", "idle_power_w"):
        if getattr(dram, key).value < 0:
            raise ConfigError(path, f"{key}.value", getattr(dram, key).value, "a number >= 0")
    return dram


def _load_layer_experiment(path: Path, raw: dict) -> LayerExperiment:
    allowed = [f.name for f in dataclasses.fields(LayerExperiment) if f.name != "source"]
    for k in raw:
        if k not in allowed:
            raise ConfigError(path, k, raw[k], f"no such key; allowed keys: {', '.join(allowed)}")
    model_ref = raw.get("model")
    if not isinstance(model_ref, str):
        raise ConfigError(path, "model", model_ref, "a path to a configs/models/*.yaml file")
    model = load_model(_resolve_path(model_ref, path))
    tile, tile_file = _load_tile(raw, path)
    tech, _ = _load_checked_tech(raw, path, tile, tile_file)
    dram_ref = raw.get("dram")
    if not isinstance(dram_ref, str):
        raise ConfigError(path, "dram", dram_ref, "a path to a configs/dram/*.yaml file")
    dram = load_dram(_resolve_path(dram_ref, path))
    layer = _build(LayerHw, raw.get("layer", {}), path, "layer")
    wl = _build(LayerWorkload, raw.get("workload", {}), path, "workload")
    hints = typing.get_type_hints(LayerExperiment)
    simulator = _convert(raw.get("simulator", "verilator"), hints["simulator"], path,
                         "simulator")
    allow_large = _convert(raw.get("allow_large", False), bool, path, "allow_large")
    if layer.lanes < 1 or model.d_model % layer.lanes:
        raise ConfigError(path, "layer.lanes", layer.lanes,
                          f"a positive divisor of the model's d_model={model.d_model}")
    if layer.go_cache_rows is not None and layer.go_cache_rows < 1:
        raise ConfigError(path, "layer.go_cache_rows", layer.go_cache_rows,
                          "null or a positive integer")
    if wl.n_prompt < 1:
        raise ConfigError(path, "workload.n_prompt", wl.n_prompt, "a positive integer")
    if wl.n_generate < 0:
        raise ConfigError(path, "workload.n_generate", wl.n_generate, "an integer >= 0")
    for key in ("input_gaps", "backpressure"):
        if not 0.0 <= getattr(wl, key) < 1.0:
            raise ConfigError(path, f"workload.{key}", getattr(wl, key),
                              "a probability in [0, 1)")
    if tile.input_bits != model.quant.act_bits or tile.weight_bits != model.quant.weight_bits:
        raise ConfigError(tile_file, "input_bits/weight_bits",
                          f"{tile.input_bits}/{tile.weight_bits}",
                          f"the model's act_bits/weight_bits = "
                          f"{model.quant.act_bits}/{model.quant.weight_bits}")
    return LayerExperiment(version=CONFIG_VERSION, kind="moe_layer", model=model, tile=tile,
                           tech=tech, dram=dram, layer=layer, workload=wl, simulator=simulator,
                           allow_large=allow_large, source=str(path))


def resolved_dict(obj) -> Any:
    """Plain data of a config object, for ``config.resolved.yaml`` and ``report.json``."""
    if dataclasses.is_dataclass(obj):
        return {f.name: resolved_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: resolved_dict(v) for k, v in obj.items()}
    return obj


def load_model(path):
    """A ``configs/models/*.yaml`` file as a validated :class:`moepim.models.zoo.ModelConfig`."""
    from moepim.models.zoo import ModelConfig

    path = Path(path)
    raw = {k: v for k, v in _read_yaml(path).items() if k != "version"}
    cfg = _build(ModelConfig, raw, path, "")
    for key, value, allowed in cfg.validate():
        raise ConfigError(path, key, value, allowed)
    return cfg


def model_config_paths() -> list[Path]:
    return sorted((REPO_ROOT / "configs" / "models").glob("*.yaml"))
