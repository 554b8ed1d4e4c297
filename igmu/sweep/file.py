"""The sweep file: one YAML file that describes one `igmu sweep`, loaded into typed, frozen dataclasses.

A sweep runs for hours, often queued on a cluster, so every mistake in its file must surface before
the first trial starts, as one line that points at the file, the key and its line, and lists what
would have been valid::

    sweeps/x.yaml:7: search.sampler: 'tpee' is not valid; valid: tpe, nsga2, random, grid

That is why this module reads YAML node by node (keeping every key's line) instead of calling
`yaml.safe_load`, and validates the whole file, including each hyperparameter against the range its
algorithm declares, inside `load_sweep`. The loader also reads YAML 1.2 floats such as `3e-5`,
which YAML 1.1 (and so plain PyYAML) returns as strings.

A file may name a `base:` file (relative to itself) whose mappings are deep-merged under its own,
so shared knobs live once in `sweeps/base.yaml`. The format is documented in `docs/sweep-file.md`;
`sweep_json_schema()` describes the same format for editors and CI (`docs/sweep-schema.json`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

import igmu.algorithms  # noqa: F401  (importing the package fills the ALGORITHMS registry)
from igmu.algorithms.base import ALGORITHMS, Unlearner, get_algorithm, make_params
from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS, BUDGETS
from igmu.world.concepts import ALL_CONCEPTS, get_concept

WORLD_MODEL = "world"
HMEAN_METRIC = "forget_retain_hmean"
EFFICIENCY_OBJECTIVE = "efficiency_seconds"
OBJECTIVE_NAMES = (*ASPECTS, EFFICIENCY_OBJECTIVE)
DIRECTIONS = ("max", "min")
SCHEDULER_METRICS = (HMEAN_METRIC, *ASPECTS)
DEFAULT_OBJECTIVES = {"forgetting": "max", "preservation": "max"}
OPTUNA_SAMPLERS = ("tpe", "nsga2")
GRID_SAMPLER = "grid"
JUDGE_PLACES = ("local", "serve")

RANGE_KINDS = ("uniform", "loguniform", "int")
LIST_KINDS = ("choice", "grid")
DISTRIBUTION_KINDS = (*RANGE_KINDS, *LIST_KINDS)

# Sweep names become MLflow experiment names and output folder names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
REQUIRED_KEYS = ("name", "target", "algorithm")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Sampler = Literal["tpe", "nsga2", "random", "grid"]
Scheduler = Literal["asha", "hyperband", "none"]
Direction = Literal["max", "min"]
DistributionKind = Literal["uniform", "loguniform", "int", "choice", "grid"]
Fixed = Union[bool, int, float, str]
KeyPath = tuple  # of str (mapping keys) and int (list positions)


# --- the typed configuration -------------------------------------------------------------------

def setting(default, doc: str, minimum: float | None = None, choices: tuple[str, ...] | None = None):
    """A section field whose doc and limits the loader, the JSON schema and the docs all share."""
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "choices": choices})


@dataclass(frozen=True)
class SearchConfig:
    """How trials are proposed."""

    sampler: Sampler = setting("tpe", "tpe / nsga2: Optuna (OptunaSearch); random / grid: Tune's own variant "
                                      "generator (grid enumerates `grid` values only)")
    num_samples: int = setting(8, "trials to run; with sampler grid, how many times the whole grid runs", minimum=1)
    max_concurrent: int = setting(2, "trials running at the same time", minimum=1)
    seed: int = setting(0, "seed of the sampler", minimum=0)


@dataclass(frozen=True)
class EarlyStopConfig:
    """How unpromising trials are stopped: a Tune scheduler on one scalar from interim evaluations."""

    scheduler: Scheduler = setting("asha", "asha (asynchronous successive halving), hyperband (synchronous, "
                                            "pauses trials) or none")
    metric: str = setting(HMEAN_METRIC, "the one scalar the scheduler compares, from the interim evaluation",
                          choices=SCHEDULER_METRICS)
    grace_period: int = setting(1, "interim evaluations every trial gets before it can be stopped", minimum=1)
    reduction_factor: int = setting(2, "keep the best 1/reduction_factor at each rung", minimum=2)
    eval_every: int = setting(25, "optimisation steps between interim evaluations", minimum=1)


@dataclass(frozen=True)
class Resources:
    """What one trial reserves; fractions share a device (Ray does not isolate GPU memory)."""

    cpu: float = setting(1.0, "CPUs per trial (fractions allowed)", minimum=0)
    gpu: float = setting(0.0, "GPUs per trial (fractions allowed: 0.5 runs two trials per GPU)", minimum=0)


@dataclass(frozen=True)
class EvalConfig:
    """Which evaluation budget scores a trial during training and at its end."""

    interim: str = setting("small", "budget of the interim evaluations the scheduler sees", choices=BUDGETS)
    final: str = setting("full", "budget of the final scorecard Optuna receives", choices=BUDGETS)
    judges: str = setting("local", "local: every trial loads the detector judges itself; serve: trials share the "
                                   "batched Ray Serve judges app (started on the sweep's Ray if not running); "
                                   "scores are identical either way", choices=JUDGE_PLACES)


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records the sweep."""

    experiment: str | None = setting(None, "MLflow experiment name (default: the sweep name)")
    uri: str | None = setting(None, "MLflow tracking URI (default: the runner's)")


SECTIONS: dict[str, type] = {"search": SearchConfig, "early_stop": EarlyStopConfig, "resources": Resources,
                             "eval": EvalConfig, "tracking": TrackingConfig}
TOP_LEVEL_KEYS = ("base", "name", "model", "target", "anchor", "algorithm", "params", "objectives",
                  *SECTIONS)


@dataclass(frozen=True)
class Distribution:
    """A searched hyperparameter: `kind` is a DISTRIBUTION_KINDS name; `args` is (low, high) for the
    range kinds (both inclusive) or the candidate values for choice and grid."""

    kind: DistributionKind
    args: tuple


@dataclass(frozen=True)
class AlgorithmSpace:
    """One algorithm's hyperparameters: fixed values and distributions, keyed by Params field name.
    Fields left out keep the algorithm's defaults."""

    name: str
    params: dict[str, Fixed | Distribution] = field(default_factory=dict)

    def distributions(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.params.items() if isinstance(v, Distribution)}

    def fixed(self) -> dict[str, Fixed]:
        return {k: v for k, v in self.params.items() if not isinstance(v, Distribution)}


@dataclass(frozen=True)
class Location:
    """Where a key was written: shown as `file:line`, the prefix of every error."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A validated sweep file. `locations` maps dotted key paths to where they were written, so later
    checks (such as `check_resources`) can point at the right line too."""

    name: str
    model: str = WORLD_MODEL
    target: str
    anchor: str | None = None
    algorithms: dict[str, AlgorithmSpace]
    search: SearchConfig = field(default_factory=SearchConfig)
    objectives: dict[str, Direction] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    resources: Resources = field(default_factory=Resources)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    path: str = ""
    locations: dict[str, Location] = field(default_factory=dict, compare=False, repr=False)


# --- reading YAML with line numbers -----------------------------------------------------------

class _SweepYamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-5` and `1.0e5` as floats (YAML 1.2); YAML 1.1 wants `3.0e-05`."""


_SweepYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


@dataclass(frozen=True)
class _Node:
    """A YAML value and where it was written (a mapping entry's key line, or a list item's line).
    Mappings hold `dict[str, _Node]`, lists hold `list[_Node]`, scalars hold plain values."""

    value: Any
    where: Location

    def plain(self) -> Any:
        if isinstance(self.value, dict):
            return {key: child.plain() for key, child in self.value.items()}
        if isinstance(self.value, list):
            return [child.plain() for child in self.value]
        return self.value


def _read_yaml(path: Path, shown: str) -> _Node:
    """Parse one file into `_Node`s; a missing file or a syntax error becomes a one-line UsageError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{shown}: sweep file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{shown}: cannot read the sweep file ({error})") from None
    loader = _SweepYamlLoader(text)
    try:
        root = loader.get_single_node()  # what yaml.compose does, with our float resolver
        if root is None:
            raise UsageError(f"{shown}:1: the sweep file is empty; it needs {', '.join(REQUIRED_KEYS)}")
        return _to_node(root, loader, shown)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise UsageError(f"{shown}:{line}: YAML syntax error: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{shown}: YAML syntax error: {error}") from None
    finally:
        loader.dispose()


def _to_node(node: yaml.Node, loader: yaml.SafeLoader, shown: str) -> _Node:
    where = Location(shown, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        entries: dict[str, _Node] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            key_where = Location(shown, key_node.start_mark.line + 1)
            if not isinstance(key, str):
                raise UsageError(f"{key_where}: key {key!r} must be text (quote it)")
            if key in entries:
                raise UsageError(f"{key_where}: {key}: duplicate key (first written on line {entries[key].where.line})")
            entries[key] = _Node(_to_node(value_node, loader, shown).value, key_where)
        return _Node(entries, where)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_to_node(item, loader, shown) for item in node.value], where)
    return _Node(loader.construct_object(node), where)


def read_yaml(path: str | Path) -> Any:
    """One file's data as plain Python, read exactly as `load_sweep` reads it, without layering
    (for the JSON schema, which describes single files)."""
    return _read_yaml(Path(path), str(path)).plain()


def _merge(base: _Node, over: _Node) -> _Node:
    """Deep merge: mappings merge key by key, anything else in `over` replaces what `base` had."""
    if not (isinstance(base.value, dict) and isinstance(over.value, dict)):
        return over
    merged = dict(base.value)
    for key, node in over.value.items():
        merged[key] = _merge(base.value[key], node) if key in base.value else node
    return _Node(merged, over.where)


def _read_layered(path: Path, shown: str, seen: tuple[Path, ...] = ()) -> _Node:
    """Read a file and, if it names a `base:`, merge it over that base (recursively)."""
    root = _read_yaml(path, shown)
    entries = _mapping(root, (), what="the sweep file")
    if "base" not in entries:
        return root
    base = entries["base"]
    if not isinstance(base.value, str) or not base.value.strip():
        raise _fail(base.where, ("base",), f"expected a file name relative to this file, got {_describe(base.value)}")
    base_path = path.parent / base.value
    base_shown = str(Path(shown).parent / base.value)
    if not base_path.is_file():
        raise _fail(base.where, ("base",), f"base file {base_shown!r} not found; valid: a path relative to {shown}")
    if base_path.resolve() in seen + (path.resolve(),):
        raise _fail(base.where, ("base",), f"{base_shown!r} is already being layered (a base cycle)")
    layered_base = _read_layered(base_path, base_shown, seen + (path.resolve(),))
    own = _Node({key: node for key, node in entries.items() if key != "base"}, root.where)
    return _merge(layered_base, own)


# --- error helpers -----------------------------------------------------------------------------

def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fail(where: Location, path: KeyPath, message: str) -> UsageError:
    """The one error format: `file:line: key.path: message`, always on one line."""
    text = f"{where}: {_dotted(path)}: {message}" if path else f"{where}: {message}"
    return UsageError(" ".join(text.splitlines()))


_TYPE_WORDS = {str: "text", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
               dict: "a mapping", type(None): "null"}
_KIND_WORDS = {str: "non-empty text", bool: "true or false", int: "an integer", float: "a number"}


def _describe(value: Any) -> str:
    word = _TYPE_WORDS.get(type(value), type(value).__name__)
    return word if isinstance(value, (list, dict)) or value is None else f"{value!r} ({word})"


def _closest_hint(word: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _mapping(node: _Node, path: KeyPath, what: str = "") -> dict[str, _Node]:
    if isinstance(node.value, dict):
        return node.value
    subject = f"{what} must be" if what else "expected"
    raise _fail(node.where, path, f"{subject} a mapping of keys, got {_describe(node.value)}")


def _check_keys(entries: dict[str, _Node], allowed: typing.Sequence[str], path: KeyPath, what: str = "key",
                note: str = "") -> None:
    """Reject unknown keys, naming the closest valid one: typos are the commonest sweep-file error."""
    for key, node in entries.items():
        if key not in allowed:
            raise _fail(node.where, path + (key,),
                        f"unknown {what} {key!r}{note}{_closest_hint(key, allowed)}; valid: {', '.join(allowed)}")


# --- scalar values -----------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _typed(kind: type, node: _Node, path: KeyPath):
    """Check a scalar strictly against int/float/bool/str: YAML's `yes` or `"3"` must not slip through."""
    value = node.value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and _is_number(value) and float(value).is_integer():
        return int(value)
    if kind is float and _is_number(value):
        return float(value)
    if kind is str and isinstance(value, str) and value.strip():
        return value.strip()
    raise _fail(node.where, path, f"expected {_KIND_WORDS[kind]}, got {_describe(value)}")


def _is_literal(kind) -> bool:
    return typing.get_origin(kind) is Literal


def _optional_inner(kind):
    """`X | None` -> X, or None when `kind` is not optional."""
    if typing.get_origin(kind) in (Union, types.UnionType) and type(None) in typing.get_args(kind):
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return None


def _choices_of(kind, f: dataclasses.Field) -> tuple | None:
    return typing.get_args(kind) if _is_literal(kind) else f.metadata.get("choices")


def _setting_value(kind, f: dataclasses.Field, node: _Node, path: KeyPath):
    """One section setting, checked against its annotation and its `setting(...)` limits."""
    inner = _optional_inner(kind)
    if inner is not None:
        if node.value is None:
            return None
        kind = inner
    choices = _choices_of(kind, f)
    if choices is not None:
        if not isinstance(node.value, str) or node.value not in choices:
            raise _fail(node.where, path, f"{node.value!r} is not valid; valid: {', '.join(choices)}")
        return node.value
    value = _typed(kind, node, path)
    minimum = f.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise _fail(node.where, path, f"{value!r} is too small; valid: {_KIND_WORDS[kind]} >= {minimum:g}")
    return value


def _section(cls: type, node: _Node, path: KeyPath):
    """Build a section dataclass (search, early_stop, ...) from its mapping, field by field."""
    entries = _mapping(node, path)
    fields = dataclasses.fields(cls)
    _check_keys(entries, [f.name for f in fields], path)
    hints = typing.get_type_hints(cls)
    values = {f.name: _setting_value(hints[f.name], f, entries[f.name], path + (f.name,))
              for f in fields if f.name in entries}
    return cls(**values)


# --- hyperparameters ---------------------------------------------------------------------------

def _params_fields(cls: type[Unlearner]) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    return {f.name: f for f in dataclasses.fields(cls.Params)}, typing.get_type_hints(cls.Params)


def _kinds_for(kind) -> tuple[str, ...]:
    """Distributions that produce values of the hyperparameter's type."""
    if kind is float:
        return ("uniform", "loguniform", *LIST_KINDS)
    if kind is int:
        return ("int", *LIST_KINDS)
    return LIST_KINDS


def _fixed_value(cls: type[Unlearner], key: str, kind, node: _Node, path: KeyPath) -> Fixed:
    """A fixed value: strict type first, then `make_params` checks range and choices as the CLI does."""
    if isinstance(node.value, (dict, list)) or node.value is None:
        raise _fail(node.where, path, f"expected a value or a one-key distribution such as {{uniform: [lo, hi]}}, "
                                      f"got {_describe(node.value)}")
    if not _is_literal(kind):
        _typed(kind, node, path)
    try:
        params = make_params(cls, {key: node.value})
    except UsageError as error:
        raise _fail(node.where, path, str(error)) from None
    return getattr(params, key)


def _range_args(cls, key, kind, dist_kind: str, node: _Node, path: KeyPath) -> tuple:
    items = node.value
    if not isinstance(items, list) or len(items) != 2:
        raise _fail(node.where, path, f"expected [low, high], got {_describe(items)}")
    value_kind = int if dist_kind == "int" else kind
    low, high = (_fixed_value(cls, key, value_kind, item, path + (i,)) for i, item in enumerate(items))
    if not low < high:
        raise _fail(node.where, path, f"low {low!r} must be below high {high!r}")
    if dist_kind == "loguniform" and low <= 0:
        raise _fail(node.where, path, f"loguniform needs low > 0, got {low!r}; valid: uniform for ranges from 0")
    return (low, high)


def _list_args(cls, key, kind, node: _Node, path: KeyPath) -> tuple:
    items = node.value
    if not isinstance(items, list):
        raise _fail(node.where, path, f"expected a list of values [a, b, ...], got {_describe(items)}")
    if not items:
        raise _fail(node.where, path, "empty list: the search space has no value to try; give at least one value")
    values: list = []
    for i, item in enumerate(items):
        value = _fixed_value(cls, key, kind, item, path + (i,))
        if value in values:
            raise _fail(item.where, path + (i,), f"{value!r} is listed twice")
        values.append(value)
    return tuple(values)


def _check_sampler_fits(dist_kind: str, sampler: str, where: Location, path: KeyPath) -> None:
    """Optuna cannot take grid_search, and sampler grid only enumerates grid values."""
    if dist_kind == "grid" and sampler in OPTUNA_SAMPLERS:
        raise _fail(where, path, f"grid cannot be used with search.sampler {sampler!r} (Optuna cannot sample "
                                 f"grid_search); valid: choice, or search.sampler: grid")
    if sampler == GRID_SAMPLER and dist_kind != "grid":
        raise _fail(where, path, f"{dist_kind} cannot be used with search.sampler 'grid', which enumerates grid "
                                 f"values only; valid: grid, or search.sampler: random")


def _distribution(cls, key, kind, node: _Node, path: KeyPath, sampler: str) -> Distribution:
    entries = node.value
    if len(entries) != 1:
        raise _fail(node.where, path, f"a distribution is a mapping with one key, got {', '.join(entries) or 'none'}; "
                                      f"valid: {', '.join(DISTRIBUTION_KINDS)}")
    (dist_kind, args_node), = entries.items()
    _check_keys(entries, DISTRIBUTION_KINDS, path, what="distribution")
    dist_path = path + (dist_kind,)
    allowed = _kinds_for(kind)
    if dist_kind not in allowed:
        raise _fail(args_node.where, dist_path, f"{dist_kind} does not fit {cls.name}.{key} "
                                                f"({_describe_kind(kind)}); valid: {', '.join(allowed)}")
    _check_sampler_fits(dist_kind, sampler, args_node.where, dist_path)
    if dist_kind in RANGE_KINDS:
        return Distribution(dist_kind, _range_args(cls, key, kind, dist_kind, args_node, dist_path))
    return Distribution(dist_kind, _list_args(cls, key, kind, args_node, dist_path))


def _describe_kind(kind) -> str:
    if _is_literal(kind):
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    return _KIND_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _algorithm_space(cls: type[Unlearner], node: _Node, path: KeyPath, sampler: str) -> AlgorithmSpace:
    entries = _mapping(node, path)
    if not entries:
        raise _fail(node.where, path, "empty search space; give at least one hyperparameter, "
                                      "or leave the key out to run the algorithm's defaults")
    fields, hints = _params_fields(cls)
    _check_keys(entries, list(fields), path, what="hyperparameter", note=f" for {cls.name}")
    params: dict[str, Fixed | Distribution] = {}
    for key, value_node in entries.items():
        if isinstance(value_node.value, dict):
            params[key] = _distribution(cls, key, hints[key], value_node, path + (key,), sampler)
        else:
            params[key] = _fixed_value(cls, key, hints[key], value_node, path + (key,))
    return AlgorithmSpace(cls.name, params)


# --- top level ---------------------------------------------------------------------------------

def _algorithm_names(node: _Node) -> tuple[list[str], bool]:
    """The `algorithm` key: one name, or a list of names (an algorithm sweep)."""
    path: KeyPath = ("algorithm",)
    is_list = isinstance(node.value, list)
    if not is_list and not isinstance(node.value, str):
        raise _fail(node.where, path, f"expected an algorithm name or a list of names, got {_describe(node.value)}; "
                                      f"valid: {', '.join(sorted(ALGORITHMS))}")
    items = node.value if is_list else [node]
    if not items:
        raise _fail(node.where, path, f"empty list; valid: {', '.join(sorted(ALGORITHMS))}")
    names: list[str] = []
    for i, item in enumerate(items):
        item_path = path + (i,) if is_list else path
        name = _typed(str, item, item_path)
        try:
            get_algorithm(name)
        except UsageError as error:
            raise _fail(item.where, item_path, str(error)) from None
        if name in names:
            raise _fail(item.where, item_path, f"{name!r} is listed twice")
        names.append(name)
    return names, is_list


def _algorithm_spaces(algorithm: _Node, params: _Node | None, sampler: str) -> dict[str, AlgorithmSpace]:
    """One AlgorithmSpace per algorithm; `params` is keyed by hyperparameter for one algorithm and by
    algorithm name for a list."""
    names, is_list = _algorithm_names(algorithm)
    if params is None:
        return {name: AlgorithmSpace(name) for name in names}
    if not is_list:
        return {names[0]: _algorithm_space(ALGORITHMS[names[0]], params, ("params",), sampler)}
    by_algorithm = _mapping(params, ("params",))
    if not by_algorithm:
        raise _fail(params.where, ("params",), "empty search space; give at least one algorithm's hyperparameters, "
                                               "or leave the key out to run every algorithm's defaults")
    _check_keys(by_algorithm, names, ("params",), what="params key",
                note=" (with a list of algorithms, params maps each listed algorithm to its hyperparameters)")
    return {name: (_algorithm_space(ALGORITHMS[name], by_algorithm[name], ("params", name), sampler)
                   if name in by_algorithm else AlgorithmSpace(name))
            for name in names}


def _objectives(node: _Node | None) -> dict[str, str]:
    if node is None:
        return dict(DEFAULT_OBJECTIVES)
    entries = _mapping(node, ("objectives",))
    if not entries:
        raise _fail(node.where, ("objectives",), f"no objective given; valid: {', '.join(OBJECTIVE_NAMES)}")
    _check_keys(entries, OBJECTIVE_NAMES, ("objectives",), what="objective")
    out = {}
    for name, direction in entries.items():
        if direction.value not in DIRECTIONS:
            raise _fail(direction.where, ("objectives", name),
                        f"{direction.value!r} is not valid; valid: {', '.join(DIRECTIONS)}")
        out[name] = direction.value
    return out


def _required(root: _Node, entries: dict[str, _Node], key: str) -> _Node:
    if key not in entries:
        raise _fail(root.where, (key,), f"missing; every sweep file needs {', '.join(REQUIRED_KEYS)}")
    return entries[key]


def _name(node: _Node) -> str:
    name = _typed(str, node, ("name",))
    if not re.match(NAME_PATTERN, name):
        raise _fail(node.where, ("name",), f"{name!r} is not a valid sweep name; valid: letters, digits, '_', '.', "
                                           f"'-' (it names the MLflow experiment and output folders)")
    return name


def _target(node: _Node, model: str) -> str:
    target = _typed(str, node, ("target",))
    if model != WORLD_MODEL:
        return target
    try:
        return get_concept(target).name
    except UsageError:
        names = [c.name for c in ALL_CONCEPTS]
        raise _fail(node.where, ("target",), f"{target!r} is not a world concept{_closest_hint(target, names)}; "
                                             f"valid: {', '.join(names)}") from None


def _anchor(node: _Node | None, model: str) -> str | None:
    if node is None or node.value is None:
        return None
    if model == WORLD_MODEL:
        raise _fail(node.where, ("anchor",), "the world model derives anchor prompts from its prompt sets; "
                                             "valid: leave anchor out, or set model to a Stable Diffusion model")
    return _typed(str, node, ("anchor",))


def _locations(node: _Node, path: KeyPath = ()) -> dict[str, Location]:
    out = {_dotted(path): node.where} if path else {}
    children = node.value.items() if isinstance(node.value, dict) else (
        enumerate(node.value) if isinstance(node.value, list) else ())
    for key, child in children:
        out.update(_locations(child, path + (key,)))
    return out


def _build_config(root: _Node, shown: str) -> SweepConfig:
    entries = _mapping(root, (), what="the sweep file")
    _check_keys(entries, TOP_LEVEL_KEYS, ())
    name = _name(_required(root, entries, "name"))
    model = _typed(str, entries["model"], ("model",)) if "model" in entries else WORLD_MODEL
    sections = {key: _section(cls, entries[key], (key,)) for key, cls in SECTIONS.items() if key in entries}
    search = sections.get("search", SearchConfig())
    tracking = sections.get("tracking", TrackingConfig())
    return SweepConfig(
        name=name,
        model=model,
        target=_target(_required(root, entries, "target"), model),
        anchor=_anchor(entries.get("anchor"), model),
        algorithms=_algorithm_spaces(_required(root, entries, "algorithm"), entries.get("params"), search.sampler),
        search=search,
        objectives=_objectives(entries.get("objectives")),
        early_stop=sections.get("early_stop", EarlyStopConfig()),
        resources=sections.get("resources", Resources()),
        eval=sections.get("eval", EvalConfig()),
        tracking=tracking if tracking.experiment else dataclasses.replace(tracking, experiment=name),
        path=shown,
        locations=_locations(root),
    )


def load_sweep(path: str | Path) -> SweepConfig:
    """Read, layer (`base:`) and fully validate a sweep file; any problem is a one-line UsageError."""
    shown = str(path)
    return _build_config(_read_layered(Path(path), shown), shown)


def check_resources(config: SweepConfig, available_gpus: float) -> None:
    """Fail before submitting: a trial asking for more GPU than exists would wait forever in Ray."""
    gpu = config.resources.gpu
    if gpu <= 0 or gpu <= available_gpus:
        return
    where = config.locations.get("resources.gpu", Location(config.path or "<sweep>", 1))
    if available_gpus <= 0:
        raise _fail(where, ("resources", "gpu"), f"{gpu:g} requested but this machine/cluster has no GPU; valid: 0")
    raise _fail(where, ("resources", "gpu"),
                f"{gpu:g} requested but this machine/cluster has {available_gpus:g} GPU; valid: 0 to {available_gpus:g}")


# --- JSON schema -------------------------------------------------------------------------------

def _value_schema(kind, f: dataclasses.Field | None = None) -> dict:
    """Schema of one fixed value of a hyperparameter or setting type, with its declared limits."""
    inner = _optional_inner(kind)
    if inner is not None:
        return {"anyOf": [_value_schema(inner, f), {"type": "null"}]}
    choices = _choices_of(kind, f) if f is not None else (typing.get_args(kind) if _is_literal(kind) else None)
    if choices is not None:
        return {"enum": list(choices)}
    schema: dict[str, Any] = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]}
    if kind is str:
        schema["minLength"] = 1
    meta = f.metadata if f is not None else {}
    low = meta.get("minimum") if "minimum" in meta else meta.get("low")  # setting() vs hyperparameter()
    for key, bound in (("minimum", low), ("maximum", meta.get("high"))):
        if bound is not None and kind in (int, float):
            schema[key] = bound
    return schema


def _distribution_schema(dist_kind: str, value: dict) -> dict:
    if dist_kind in RANGE_KINDS:
        bound = dict(value)
        if dist_kind == "loguniform":
            bound["exclusiveMinimum"] = 0
        args = {"type": "array", "prefixItems": [bound, bound], "minItems": 2, "maxItems": 2, "items": False,
                "description": "[low, high], both inclusive; low < high"}
    else:
        args = {"type": "array", "items": value, "minItems": 1, "uniqueItems": True}
    return {"type": "object", "properties": {dist_kind: args}, "required": [dist_kind], "additionalProperties": False}


def _params_schema(cls: type[Unlearner]) -> dict:
    fields, hints = _params_fields(cls)
    properties = {}
    for name, f in fields.items():
        value = _value_schema(hints[name], f)
        options = [value, *(_distribution_schema(k, value) for k in _kinds_for(hints[name]))]
        properties[name] = {"description": f.metadata.get("doc", ""), "default": f.default, "anyOf": options}
    return {"type": "object", "description": f"hyperparameters of {cls.name}", "properties": properties,
            "additionalProperties": False, "minProperties": 1}


def _section_schema(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    properties = {f.name: {**_value_schema(hints[f.name], f), "description": f.metadata["doc"], "default": f.default}
                  for f in dataclasses.fields(cls)}
    return {"type": "object", "description": (cls.__doc__ or "").strip(), "properties": properties,
            "additionalProperties": False}


def _algorithm_rules(names: list[str]) -> list[dict]:
    """`params` depends on `algorithm`: one name -> its hyperparameters; a list -> name -> hyperparameters."""
    rules = [{"if": {"properties": {"algorithm": {"const": name}}, "required": ["algorithm"]},
              "then": {"properties": {"params": {"$ref": f"#/$defs/params_{name}"}}}} for name in names]
    by_algorithm = {"type": "object", "minProperties": 1, "additionalProperties": False,
                    "properties": {name: {"$ref": f"#/$defs/params_{name}"} for name in names}}
    rules.append({"if": {"properties": {"algorithm": {"type": "array"}}, "required": ["algorithm"]},
                  "then": {"properties": {"params": by_algorithm}}})
    return rules


def sweep_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of one sweep file, generated from the dataclasses above and the live
    algorithm registry. It checks structure, names, types, ranges and choices; `load_sweep` also
    checks what a schema cannot say well (low < high, sampler compatibility, layered files)."""
    names = sorted(ALGORITHMS)
    concepts = [c.name for c in ALL_CONCEPTS]
    world_rule = {"if": {"properties": {"model": {"const": WORLD_MODEL}}},
                  "then": {"properties": {"target": {"enum": concepts}, "anchor": {"type": "null"}}}}
    objectives = {"type": "object", "minProperties": 1, "additionalProperties": False,
                  "description": "objective -> direction, handed to Optuna as one vector",
                  "properties": {name: {"enum": list(DIRECTIONS)} for name in OBJECTIVE_NAMES},
                  "default": DEFAULT_OBJECTIVES}
    properties = {
        "base": {"type": "string", "minLength": 1, "description": "a sweep file (relative to this one) merged under it"},
        "name": {"type": "string", "pattern": NAME_PATTERN, "description": "sweep name (MLflow experiment default)"},
        "model": {"type": "string", "minLength": 1, "default": WORLD_MODEL,
                  "description": "'world' or a Stable Diffusion path / hub id"},
        "target": {"type": "string", "minLength": 1, "description": "concept to unlearn (a world concept for world)"},
        "anchor": {"type": ["string", "null"], "default": None, "description": "anchor prompt (Stable Diffusion only)"},
        "algorithm": {"anyOf": [{"enum": names}, {"type": "array", "items": {"enum": names}, "minItems": 1,
                                                  "uniqueItems": True}]},
        "params": {"type": "object", "minProperties": 1},
        "objectives": objectives,
        **{key: {"$ref": f"#/$defs/{key}"} for key in SECTIONS},
    }
    defs = {**{key: _section_schema(cls) for key, cls in SECTIONS.items()},
            **{f"params_{name}": _params_schema(ALGORITHMS[name]) for name in names}}
    return {"$schema": SCHEMA_DIALECT, "title": "igmu sweep file",
            "description": "One `igmu sweep FILE`; see docs/sweep-file.md.",
            "type": "object", "required": list(REQUIRED_KEYS), "additionalProperties": False,
            "properties": properties, "allOf": [*_algorithm_rules(names), world_rule], "$defs": defs}


def write_schema(path: str | Path) -> None:
    """Write `sweep_json_schema()` as stable, diff-friendly JSON (regenerate after adding an algorithm)."""
    Path(path).write_text(json.dumps(sweep_json_schema(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":  # python -m igmu.sweep.file [docs/sweep-schema.json]
    write_schema(sys.argv[1] if len(sys.argv) > 1 else "docs/sweep-schema.json")
