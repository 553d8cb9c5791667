"""Versioned YAML configs loaded into frozen, typed classes.

Every problem is reported as one :class:`ConfigError` line naming the file, the key path, the
bad value and what is allowed. Unknown keys are errors. Each class's field names are the YAML
keys, the hardware constructor arguments and the golden-model arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from moepim.models.policies import POLICIES
from moepim.spec.checks import ParameterError
from moepim.spec.tile import TileSpec

__all__ = ["ConfigError", "TileConfig", "TechConfig", "TileWorkload", "TileExperiment",
           "DecoderExperiment", "DecoderHw", "DecoderWorkload", "GENERATION_MODES", "load_model",
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
class TileConfig(TileSpec):
    """The YAML's ``tile`` section: the tile's specification (:class:`TileSpec`: its fields,
    defaults and checks, declared there once) and the build options of one crossbar group:
    ``group_size`` crossbars sharing one set of peripherals. In a MoE-layer experiment the
    workload's grouping sets it (the experts of a group share their peripheral sets): the
    loader replaces the tile file's value with the largest group's size."""

    group_size: int = 1
    core: Literal["macro", "logic"] = "macro"
    counter_bits: int = 48

    def hw_kwargs(self) -> dict:
        return dataclasses.asdict(self)

    def shape_kwargs(self) -> dict:
        """The golden model's arguments (the tile shape, without grouping and build options)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TileSpec)}

    def spec(self) -> TileSpec:
        """The tile's specification: a plain :class:`TileSpec` (what caches key on)."""
        return TileSpec(**self.shape_kwargs())

    def build_kwargs(self) -> dict:
        """A ``TileGroup``'s constructor arguments: the specification and the build options."""
        return {"tile": self.spec(), "group_size": self.group_size, "core": self.core,
                "counter_bits": self.counter_bits}


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
    adc_leakage_share: Constant
    adc_sample_rate_gsps: Constant
    peripheral_wakeup_energy_pj: Constant
    net_toggle_energy_fj: Constant
    int8_add_energy_pj: Constant | None = None
    int8_mult_energy_pj: Constant | None = None
    digital_static_power_mw: Constant | None = None


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
    # ``idle``: the peripheral set leaks only over its busy cycles; ``none``: the whole run
    power_gating: Literal["none", "idle"] = "idle"
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
    digital switching energy (a traced build: longer build and simulation);
    ``power_gating``: ``idle`` (a peripheral set is powered, and its ADCs leak, only over its
    MVMs) or ``none`` (every peripheral set powered for the whole run)."""

    lanes: int = 64
    go_cache_rows: int | None = None
    switching_activity: bool = True
    power_gating: Literal["none", "idle"] = "idle"


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
    policy: Literal[POLICIES] = "reschedule"
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
    simulator: Literal["verilator", "icarus", "amaranth", "model"] = "verilator"
    allow_large: bool = False
    source: str = ""

    @property
    def go_cache_rows(self) -> int:
        """Rows of the GO-cache SRAM: ``layer.go_cache_rows``, at most the run's tokens (more
        rows could never be filled; ``null``: every token of the run)."""
        seq = self.workload.n_prompt + self.workload.n_generate
        return min(self.layer.go_cache_rows or seq, seq)


GENERATION_MODES = ("none", "kv", "go", "kv_go")     # moepim.models.generation.MODES
# tech entries a decoder experiment needs beyond a MoE layer's
DECODER_TECH_KEYS = ("int8_add_energy_pj", "int8_mult_energy_pj", "digital_static_power_mw")


@dataclass(frozen=True)
class DecoderHw(LayerHw):
    """A decoder layer's hardware beyond the MoE layer's (:class:`LayerHw`):
    ``n_attention_units`` attention units working on different heads at once
    (``moepim.hw.attention.AttentionUnit``, one head of one row each); ``kv_cache_rows``
    tokens' K and V kept in an on-chip SRAM before DRAM (0: every cached row in DRAM)."""

    n_attention_units: int = 4
    kv_cache_rows: int = 0


@dataclass(frozen=True)
class DecoderWorkload:
    """Generation: a ``n_prompt``-token prompt then ``n_generate`` tokens, each fed back
    (``moepim.models.generation``); ``modes``: the cache modes run; ``embedding`` and
    ``lm_head``: the token embedding and the vocabulary projection on crossbars counted in
    each step (false: left out of the totals, as a study of the decoder layer alone)."""

    seed: int = 1
    n_prompt: int = 32
    n_generate: int = 8
    grouping: str | list[list[int]] = "S2"
    policy: Literal[POLICIES] = "reschedule"
    modes: list[Literal[GENERATION_MODES]] = field(
        default_factory=lambda: list(GENERATION_MODES))
    embedding: bool = True
    lm_head: bool = True


@dataclass(frozen=True)
class Reference:
    """A published figure beside ours: ``metric`` (a key of the report's ratios), its
    ``value`` and the ``source`` it comes from, and what it compares (``scope``)."""

    metric: str
    value: float
    source: str
    scope: str = ""


@dataclass(frozen=True)
class DecoderExperiment:
    version: int
    kind: Literal["decoder"]
    model: Any
    tile: TileConfig
    tech: TechConfig
    dram: DramConfig
    layer: DecoderHw = field(default_factory=DecoderHw)
    workload: DecoderWorkload = field(default_factory=DecoderWorkload)
    simulator: Literal["verilator", "icarus", "amaranth", "model"] = "verilator"
    reference: list[Reference] = field(default_factory=list)
    allow_large: bool = False
    source: str = ""

    def moe_experiment(self) -> LayerExperiment:
        """The MoE layer inside the decoder layer, as a ``moe_layer`` experiment: the prompt
        window, then one GO-cached window per decode step (``n_generate - 1``), the no-cache
        windows by the cycle formula."""
        wl = self.workload
        layer = LayerHw(**{f.name: getattr(self.layer, f.name)
                           for f in dataclasses.fields(LayerHw)})
        return LayerExperiment(
            version=self.version, kind="moe_layer", model=self.model, tile=self.tile,
            tech=self.tech, dram=self.dram, layer=layer,
            workload=LayerWorkload(seed=wl.seed, n_prompt=wl.n_prompt,
                                   n_generate=wl.n_generate - 1, grouping=wl.grouping,
                                   policy=wl.policy, go_cache=True, no_cache="model"),
            simulator=self.simulator, allow_large=self.allow_large, source=self.source)


# ---------------------------------------------------------------------------------------------
# generic checked conversion
#
# Numbers are checked by type, whatever the field: an ``int`` field takes an integer from 0 to
# MAX_INT (no config count, width, index or seed is negative; rules of a field's own range
# follow in the loaders and the hardware checks), a ``float`` field a finite number, and a
# :class:`Constant` (a physical figure with its source) a value > 0, or >= 0 for the keys below,
# where zero is a meaningful figure.

MAX_INT = 1 << 40
ZERO_MEANS_SOMETHING = {
    "latency_ns": "no added latency",
    "idle_power_w": "no background power",
    "adc_leakage_mw": "no leakage charged",
    "adc_leakage_share": "the conversion energy has no leakage part",
    "peripheral_wakeup_energy_pj": "waking a power-gated peripheral set costs nothing",
}


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
            if not 0 <= value <= MAX_INT:
                raise ConfigError(file, key, value, f"an integer from 0 to {MAX_INT}")
            return value
        raise ConfigError(file, key, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(file, key, value, "a finite number")
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
    if cls is Constant:
        _check_constant(kwargs["value"], file, key)
    try:
        return cls(**kwargs)
    except ParameterError as e:         # the class's own checks (``TileSpec.__post_init__``)
        raise ConfigError(file, f"{key}.{e.name}" if key else e.name, e.value,
                          e.allowed) from None


def _check_constant(value: float, file, key: str) -> None:
    """A physical constant is finite and > 0; or >= 0 where zero means something."""
    # the field's name (a table's entries, e.g. ``adc_energy_pj.8``, share their table's)
    name = next((k for k in reversed(key.split(".")[-2:]) if k in ZERO_MEANS_SOMETHING), None)
    if name is not None:
        if not value >= 0:
            raise ConfigError(file, f"{key}.value", value,
                              f"a finite number >= 0 (0: {ZERO_MEANS_SOMETHING[name]})")
    elif not value > 0:
        raise ConfigError(file, f"{key}.value", value, "a finite number > 0")


MAX_CONFIG_BYTES = 1 << 20      # a config file above 1 MiB is a mistake (or /dev/zero)
MAX_DEPTH = 32                  # nesting depth of a config's mappings and lists


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's scalars (``030`` is 30, not
    octal 24; ``yes``/``no``/``on``/``off`` are strings; ``1e9`` is a number; no
    timestamps), duplicate keys refused and a nesting-depth limit."""

    yaml_implicit_resolvers = {}
    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels at line "
                                     f"{mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value",
                    key_node.start_mark) from None
            if key in seen:
                raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first, line):
        self.key, self.first, self.line = key, first, line
        super().__init__(f"duplicate key {key!r}")


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)                     # YAML 1.2: leading zeros are decimal


def _construct_float(loader, node):
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def parse_yaml(text: str, path) -> Any:
    """Parse config text with the strict loader; problems become one :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(path, f"line {e.line}", e.key,
                          f"each key once per mapping (first given at line {e.first})") \
            from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        raise ConfigError(path, where, getattr(e, "problem", None) or str(e),
                          "valid YAML") from None
    except RecursionError:
        raise ConfigError(path, "(parse)", "too deeply nested",
                          f"at most {MAX_DEPTH} levels of nesting") from None


def read_config_text(path: Path, key: str = "(file)") -> str:
    """The text of a config file: a regular file below :data:`MAX_CONFIG_BYTES`, UTF-8."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(path, key, str(path), "an existing YAML file") from None
    except OSError as e:
        raise ConfigError(path, key, str(path), f"a readable file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(path, key, f"{path} is {what}", "a regular YAML file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(path, key, f"{st.st_size} bytes",
                          f"a config file of at most {MAX_CONFIG_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, key, str(path), f"a readable file ({e.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, key, f"more than {MAX_CONFIG_BYTES} bytes",
                          f"a config file of at most {MAX_CONFIG_BYTES} bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(path, f"line {line}", f"byte 0x{data[e.start]:02x}",
                          "a UTF-8 text file") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError(path, f"line {line}", "a NUL byte", "a text file") from None
    return text


def _read_yaml(path: Path, key: str = "(file)") -> dict:
    raw = parse_yaml(read_config_text(path, key), path)
    if not isinstance(raw, dict):
        raise ConfigError(path, "(top level)", raw, "a mapping")
    version = raw.get("version")
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise ConfigError(path, "version", version, f"{CONFIG_VERSION}")
    return raw


def _referenced(ref, path: Path, key: str, what: str) -> Path:
    """The file that key ``key`` of ``path`` points at; missing or not a file: an error naming
    the key."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(path, key, ref, f"a path to {what}")
    target = _resolve_path(ref, path)
    if not target.exists():
        raise ConfigError(path, key, ref, f"a path to {what} (no such file: {target})")
    if not target.is_file():
        raise ConfigError(path, key, ref, f"a path to {what} ({target} is not a regular file)")
    return target


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
    tech = _build(TechConfig, raw, path, "")
    if not tech.adc_leakage_share.value < 1:
        raise ConfigError(path, "adc_leakage_share.value", tech.adc_leakage_share.value,
                          "a share from 0 to below 1 of the ADC's energy per conversion")
    return tech


def _check_tile(tile: TileConfig, file, prefix: str) -> None:
    """The build options' rules, checked by the hardware's own checks (one source of truth);
    the specification's were checked by its constructor (:func:`_build`), ``core`` by its
    type."""
    from moepim.hw.params import check_counter_bits, check_group_size

    try:
        check_group_size(tile.group_size)
        check_counter_bits(tile.counter_bits)
    except ParameterError as e:
        raise ConfigError(file, prefix + e.name, e.value, e.allowed) from None


def load_experiment(path) -> TileExperiment | LayerExperiment | DecoderExperiment:
    path = Path(path)
    raw = _read_yaml(path)
    if raw.get("kind") == "moe_layer":
        return _load_layer_experiment(path, raw)
    if raw.get("kind") == "decoder":
        return _load_decoder_experiment(path, raw)
    allowed = [f.name for f in dataclasses.fields(TileExperiment) if f.name != "source"]
    for k in raw:
        if k not in allowed:
            raise ConfigError(path, k, raw[k], f"no such key; allowed keys: {', '.join(allowed)}")
    kind = raw.get("kind")
    if kind != "tile":
        raise ConfigError(path, "kind", kind, "'tile', 'moe_layer' or 'decoder'")
    if "tile" not in raw:
        raise ConfigError(path, "tile", "(missing)", "a tile section: a mapping of "
                          f"{', '.join(f.name for f in dataclasses.fields(TileConfig))}, or a "
                          "path to a configs/hw/*.yaml file")
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
    gating = _convert(raw.get("power_gating", "idle"),
                      typing.get_type_hints(TileExperiment)["power_gating"], path, "power_gating")
    return TileExperiment(version=CONFIG_VERSION, kind="tile", tile=tile, tech=tech,
                          workload=wl, simulator=simulator, power_gating=gating,
                          source=str(path))


def _load_tile(raw, path):
    # tile: inline mapping or a path to configs/hw/*.yaml
    tile_ref = raw.get("tile", {})
    if isinstance(tile_ref, str):
        tile_file = _referenced(tile_ref, path, "tile", "a configs/hw/*.yaml file")
        tile_raw = {k: v for k, v in _read_yaml(tile_file).items() if k != "version"}
        tile = _build(TileConfig, tile_raw, tile_file, "")
        _check_tile(tile, tile_file, "")
    else:
        tile_file = path
        tile = _build(TileConfig, tile_ref, path, "tile")
        _check_tile(tile, path, "tile.")
    return tile, tile_file


def _load_checked_tech(raw, path, tile, tile_file):
    tech_path = _referenced(raw.get("tech"), path, "tech", "a configs/tech/*.yaml file")
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
    model_path = _referenced(raw.get("model"), path, "model", "a configs/models/*.yaml file")
    model = load_model(model_path)
    if "tile" not in raw:
        raise ConfigError(path, "tile", "(missing)", "a tile section: a mapping of "
                          f"{', '.join(f.name for f in dataclasses.fields(TileConfig))}, or a "
                          "path to a configs/hw/*.yaml file")
    tile, tile_file = _load_tile(raw, path)
    tech, _ = _load_checked_tech(raw, path, tile, tile_file)
    dram = load_dram(_referenced(raw.get("dram"), path, "dram", "a configs/dram/*.yaml file"))
    layer = _build(LayerHw, raw.get("layer", {}), path, "layer")
    wl = _build(LayerWorkload, raw.get("workload", {}), path, "workload")
    # trace files: relative to the experiment file (as model, tile, tech and dram)
    wl = dataclasses.replace(wl, **{k: str(_resolve_path(getattr(wl, k), path))
                                    for k in ("trace", "profile_trace") if getattr(wl, k)})
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
    for key in ("trace", "profile_trace", "weights"):
        ref = getattr(wl, key)
        if ref is not None:
            target = _resolve_path(ref, path)
            if not target.is_file():
                raise ConfigError(path, f"workload.{key}", ref,
                                  f"a path to an existing file (no such file: {target})")
            wl = dataclasses.replace(wl, **{key: str(target)})
    # the tile's group size is the grouping's (crossbars sharing a peripheral set = experts
    # of a group): one parameter, so the resolved config states the banks the run builds
    tile = dataclasses.replace(tile, group_size=_check_grouping(wl.grouping, model, path,
                                                                model_path))
    if tile.input_bits != model.quant.act_bits or tile.weight_bits != model.quant.weight_bits:
        raise ConfigError(tile_file, "input_bits/weight_bits",
                          f"{tile.input_bits}/{tile.weight_bits}",
                          f"the model's act_bits/weight_bits = "
                          f"{model.quant.act_bits}/{model.quant.weight_bits}")
    return LayerExperiment(version=CONFIG_VERSION, kind="moe_layer", model=model, tile=tile,
                           tech=tech, dram=dram, layer=layer, workload=wl, simulator=simulator,
                           allow_large=allow_large, source=str(path))


def _load_decoder_experiment(path: Path, raw: dict) -> DecoderExperiment:
    """A ``kind: decoder`` experiment: its MoE part is checked as the ``moe_layer``
    experiment it contains (:meth:`DecoderExperiment.moe_experiment`), with the same keys."""
    allowed = [f.name for f in dataclasses.fields(DecoderExperiment) if f.name != "source"]
    for k in raw:
        if k not in allowed:
            raise ConfigError(path, k, raw[k], f"no such key; allowed keys: {', '.join(allowed)}")
    layer = _build(DecoderHw, raw.get("layer", {}), path, "layer")
    wl = _build(DecoderWorkload, raw.get("workload", {}), path, "workload")
    reference = _convert(raw.get("reference", []), list[Reference], path, "reference")
    moe_raw = {k: v for k, v in raw.items() if k in ("model", "tile", "tech", "dram",
                                                     "simulator", "allow_large")}
    moe_raw["layer"] = {f.name: getattr(layer, f.name) for f in dataclasses.fields(LayerHw)}
    moe_raw["workload"] = {"seed": wl.seed, "n_prompt": wl.n_prompt,
                           "n_generate": max(0, wl.n_generate - 1), "grouping": wl.grouping,
                           "policy": wl.policy}
    moe = _load_layer_experiment(path, {"kind": "moe_layer", **moe_raw})
    if wl.n_generate < 1:
        raise ConfigError(path, "workload.n_generate", wl.n_generate, "a positive integer")
    tech_path = _referenced(raw.get("tech"), path, "tech", "a configs/tech/*.yaml file")
    for key in DECODER_TECH_KEYS:
        if getattr(moe.tech, key) is None:
            raise ConfigError(tech_path, key, "(missing)",
                              "a {value, source} entry: decoder experiments price their "
                              "digital units with it")
    if not wl.modes or len(set(wl.modes)) != len(wl.modes):
        raise ConfigError(path, "workload.modes", wl.modes,
                          f"a non-empty list of distinct modes from {list(GENERATION_MODES)}")
    if layer.n_attention_units < 1:
        raise ConfigError(path, "layer.n_attention_units", layer.n_attention_units,
                          "a positive integer")
    m = moe.model
    for key, dim in (("head_dim", m.head_size), ("d_model", m.d_model)):
        if dim % layer.lanes:
            raise ConfigError(path, "layer.lanes", layer.lanes,
                              f"a divisor of the model's {key} ({dim}): the attention and "
                              "norm units take lanes codes per beat")
    if m.rope_theta is not None and (m.head_size // 2) % layer.lanes:
        raise ConfigError(path, "layer.lanes", layer.lanes,
                          f"a divisor of half the model's head_dim ({m.head_size // 2}): "
                          "the rotary unit takes lanes pairs per beat")
    return DecoderExperiment(version=CONFIG_VERSION, kind="decoder", model=m, tile=moe.tile,
                             tech=moe.tech, dram=moe.dram, layer=layer, workload=wl,
                             simulator=moe.simulator, reference=reference,
                             allow_large=moe.allow_large, source=str(path))


# ``moepim.hw.softmax.GateSoftmax`` (the softmax of both routers of the layer) takes at most
# this many experts (its own check; tests/test_config_loader.py asserts the two agree)
MAX_SOFTMAX_EXPERTS = 256


def _check_grouping(grouping, model, path, model_path) -> int:
    """The workload's grouping against the model's experts, and the router's expert limit,
    named by file and key (checked again by the hardware; here before anything is built).
    Returns the largest group's size."""
    from moepim.models.grouping import GroupingError, make_groups

    n = model.n_experts
    if n > MAX_SOFTMAX_EXPERTS:
        raise ConfigError(model_path, "n_experts", n,
                          f"at most {MAX_SOFTMAX_EXPERTS} experts on the layer's hardware (its "
                          "router's gate softmax)")
    import numpy as np

    try:
        groups = make_groups(grouping, n, np.ones(n))
    except (GroupingError, ValueError) as e:
        raise ConfigError(path, "workload.grouping", grouping,
                          f"a grouping of the model's {n} experts ({e})") from None
    return max(len(g) for g in groups)


def resolved_dict(obj) -> Any:
    """Plain data of a config object, for ``config.resolved.yaml`` and ``report.json``."""
    if dataclasses.is_dataclass(obj):
        return {f.name: resolved_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: resolved_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolved_dict(v) for v in obj]
    return obj


def load_model(path):
    """A ``configs/models/*.yaml`` file as a validated :class:`moepim.models.zoo.ModelConfig`."""
    from moepim.models.zoo import ModelConfig

    path = Path(path)
    raw = {k: v for k, v in _read_yaml(path).items() if k != "version"}
    cfg = _build(ModelConfig, raw, path, "")
    for key, value, allowed in cfg.validate():
        raise ConfigError(path, key, value, allowed)
    if cfg.router.top_k > cfg.n_experts:
        raise ConfigError(path, "router.top_k", cfg.router.top_k,
                          f"an integer from 1 to n_experts={cfg.n_experts}")
    return cfg


def model_config_paths() -> list[Path]:
    return sorted((REPO_ROOT / "configs" / "models").glob("*.yaml"))
