"""The sweep file: one YAML file that describes one `igmu sweep`, validated by pydantic models.

A sweep runs for hours, often queued on a cluster, so every mistake in its file must surface before
the first trial starts, as one line that points at the file, the key and its line, and lists what
would have been valid (`igmu.config_file` reads the YAML with its lines and words the errors).
Each hyperparameter is checked against the range its algorithm's `Params` dataclass declares.

A file may name a `base:` file (relative to itself) whose mappings are deep-merged under its own,
so shared knobs live once in `sweeps/base.yaml`. The format is documented in `docs/sweep-file.md`;
`sweep_json_schema()` describes the same format for editors and CI (`docs/sweep-schema.json`),
generated from the same models.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, create_model
from pydantic.dataclasses import dataclass as settings_dataclass
from pydantic_core import ErrorDetails

import igmu.algorithms  # noqa: F401  (importing the package fills the ALGORITHMS registry)
from igmu.algorithms.base import ALGORITHMS, kinds_edited_by
from igmu.config_file import (
    Flag,
    Integer,
    KeyPath,
    Location,
    Node,
    Number,
    Text,
    closest_hint,
    distinct_list,
    fail,
    integer,
    json_schema,
    read_layered,
    read_node,
    show_value,
    unknown_key,
    validate,
)
from igmu.errors import UsageError
from igmu.metrics.base import ASPECTS, BUDGETS
from igmu.models.kinds import SHIPPED_MODEL_NAMES
from igmu.models.loader import check_local, kind_of
from igmu.models.text_to_image import SCHEDULERS
from igmu.sweep.results import DEFAULT_OBJECTIVES, DIRECTIONS, HMEAN, KEEP_FRONT, KEEP_WEIGHTS, OBJECTIVE_NAMES
from igmu.world.concepts import ALL_CONCEPTS

WORLD_MODEL = SHIPPED_MODEL_NAMES[1]
SCHEDULER_METRICS = (HMEAN, *ASPECTS)
OPTUNA_SAMPLERS = ("tpe", "nsga2")
GRID_SAMPLER = "grid"
JUDGE_PLACES = ("local", "serve")
PRECISIONS = ("fp32", "fp16", "bf16")

RANGE_KINDS = ("uniform", "loguniform", "int")
LIST_KINDS = ("choice", "grid")
DISTRIBUTION_KINDS = (*RANGE_KINDS, *LIST_KINDS)
FIXED = "value"  # the union tag of a fixed hyperparameter value

# Sweep names become MLflow experiment names and output folder names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Sampler = Literal["tpe", "nsga2", "random", "grid"]
Scheduler = Literal["asha", "mo-asha", "hyperband", "none"]
Direction = Literal[DIRECTIONS]
DistributionKind = Literal[DISTRIBUTION_KINDS]
AlgorithmName = Literal[tuple(sorted(ALGORITHMS))]
Fixed = bool | int | float | str


# --- the sections ------------------------------------------------------------------------------

def _section(cls: type) -> type:
    """A frozen pydantic dataclass that rejects unknown keys (typos are the commonest mistake)."""
    return settings_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)


@_section
class SearchConfig:
    """How trials are proposed."""

    sampler: Sampler = Field("tpe", description="tpe / nsga2: Optuna (OptunaSearch); random / grid: Tune's own "
                                                "variant generator (grid enumerates `grid` values only)")
    num_samples: Integer = Field(8, ge=1, description="trials to run; with sampler grid, how many times the whole "
                                                      "grid runs")
    max_concurrent: Integer = Field(2, ge=1, description="trials running at the same time")
    seed: Integer = Field(0, ge=0, description="seed of the sampler")


@_section
class EarlyStopConfig:
    """How unpromising trials are stopped: a Tune scheduler on interim evaluations."""

    scheduler: Scheduler = Field("asha", description="asha (asynchronous successive halving on `metric`), "
                                                     "mo-asha (the same, promoting by non-dominated sorting on "
                                                     "`objectives`: every trial non-dominated at a rung goes "
                                                     "on), hyperband (synchronous, pauses trials) or none")
    metric: Literal[SCHEDULER_METRICS] = Field(HMEAN, description="the one scalar asha and hyperband compare, "
                                                                  "from the interim evaluation; unused by "
                                                                  "mo-asha, which ranks on `objectives`")
    grace_period: Integer = Field(1, ge=1, description="interim evaluations every trial gets before it can be "
                                                       "stopped")
    reduction_factor: Integer = Field(2, ge=2, description="keep the best 1/reduction_factor at each rung")
    eval_every: Integer = Field(25, ge=1, description="optimisation steps between interim evaluations")


@_section
class Resources:
    """What one trial reserves; fractions share a device (Ray does not isolate GPU memory)."""

    cpu: Number = Field(1.0, ge=0, description="CPUs per trial (fractions allowed)")
    gpu: Number = Field(0.0, ge=0, description="GPUs per trial (fractions allowed: 0.5 runs two trials per GPU)")


@_section
class EvalConfig:
    """Which evaluation budget scores a trial during training and at its end."""

    interim: Literal[BUDGETS] = Field("small", description="budget of the interim evaluations the scheduler sees")
    final: Literal[BUDGETS] = Field("full", description="budget of the final scorecard Optuna receives")
    judges: Literal[JUDGE_PLACES] = Field("local", description="local: every trial loads the detector judges "
                                                               "itself; serve: trials share the batched Ray Serve "
                                                               "judges app (started on the sweep's Ray if not "
                                                               "running); scores are identical either way")
    # Real models only (the world's evaluation is fixed by the world):
    scheduler: Literal[tuple(SCHEDULERS)] | None = Field(None, description="sampler of evaluation images "
                                                                            "(default ddim)")
    steps: Integer | None = Field(None, ge=1, description="sampling steps of every evaluation (default: 50 "
                                                          "final, 20 interim)")
    guidance: Number | None = Field(None, ge=1, description="guidance scale of evaluation images (default 7.5)")
    batch_size: Integer | None = Field(None, ge=1, description="images per UNet batch (a memory budget)")
    judge_config: Text | None = Field(None, description="judges YAML (NudeNet threshold and classes, CLIP model), "
                                                        "relative to this file")
    clip_model: Text | None = Field(None, description="CLIP judge: hub id in the local cache or a local folder")
    # What happens once the search is over (trials themselves only ever see the validation split):
    held_out: Literal[KEEP_WEIGHTS] = Field(KEEP_FRONT, description="trials re-scored once on the held-out test "
                                            "split when the search ends: front (the Pareto front on the "
                                            "objectives plus the 3 best on the first), fronts (the same "
                                            "within each algorithm: a comparison's choice), all finished "
                                            "trials, or none")
    defaults: Flag = Field(False, description="also run each algorithm once at its published defaults and score "
                                              "it on the test split, for igmu compare's defaults table")


@_section
class TrackingConfig:
    """Where MLflow records the sweep."""

    experiment: Text | None = Field(None, description="MLflow experiment name (default: the sweep name)")
    uri: Text | None = Field(None, description="MLflow tracking URI (default: the runner's)")
    keep_weights: Literal[KEEP_WEIGHTS] = Field(KEEP_FRONT, description="which finished trials keep their changed "
                                                 "weights (logged to their MLflow runs for `igmu export`): "
                                                 "front (the Pareto front on the objectives plus the 3 best "
                                                 "on the first), fronts (the same within each algorithm), all, "
                                                 "or none")


SECTIONS: dict[str, type] = {"search": SearchConfig, "early_stop": EarlyStopConfig, "resources": Resources,
                             "eval": EvalConfig, "tracking": TrackingConfig}


# --- the file as written -----------------------------------------------------------------------

def _torch_device(value: str) -> str:
    import torch

    try:
        torch.device(value)
    except RuntimeError:
        raise ValueError(f"{value!r} is not a torch device; valid: cpu, cuda, cuda:N, mps") from None
    return value


def _one_or_many(value: Any) -> str:
    return "list" if isinstance(value, list) else "name"


class SweepFile(BaseModel):
    """One `igmu sweep FILE`; see docs/sweep-file.md."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="igmu sweep file")

    # Read (and removed) by the layering before validation; here for the schema and the key list.
    base: Text = Field(None, description="a sweep file (relative to this one) merged under it")
    name: Annotated[Text, Field(pattern=NAME_PATTERN, description="sweep name (MLflow experiment default)")]
    model: Text = Field(WORLD_MODEL, description="'world' or a Stable Diffusion path / hub id")
    target: Text = Field(description="concept to unlearn (a world concept for world)")
    anchor: Text | None = Field(None, description="anchor prompt (Stable Diffusion only)")
    category: Text | None = Field(None, description="target category of a real model: nudity (sensitive), "
                                                     "object, style, celebrity or prompt (default: inferred)")
    prompts: Text | None = Field(None, description="prompt file replacing the shipped sets (CSV, I2P CSV, JSONL "
                                                   "or .txt), relative to this file")
    precision: Literal[PRECISIONS] = Field("fp32", description="fp32, or fp16 / bf16 on CUDA")
    device: Annotated[Text, AfterValidator(_torch_device)] | None = Field(
        None, description="torch device of each trial, e.g. cuda or cpu (default: cuda when the trial has a GPU)")
    algorithm: Annotated[Annotated[AlgorithmName, Tag("name")]
                         | Annotated[distinct_list(AlgorithmName), Tag("list")],
                         Discriminator(_one_or_many), Field(description="one algorithm, or a list to compare")]
    # Checked against the algorithms' Params once `algorithm` is known (see _algorithm_spaces).
    params: dict[str, Any] = Field(None, description="hyperparameters: name -> fixed value or distribution; "
                                                     "with a list of algorithms, algorithm -> that mapping")
    objectives: Annotated[dict[Literal[OBJECTIVE_NAMES], Direction], Field(min_length=1)] = Field(
        DEFAULT_OBJECTIVES, description="objective -> direction, handed to Optuna as one vector")
    search: SearchConfig = SearchConfig()
    early_stop: EarlyStopConfig = EarlyStopConfig()
    resources: Resources = Resources()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()


TOP_LEVEL_KEYS = tuple(SweepFile.model_fields)
REQUIRED_KEYS = tuple(name for name, f in SweepFile.model_fields.items() if f.is_required())


def _explain_file_error(error: ErrorDetails, path: KeyPath) -> str | None:
    if path == ("name",) and error["type"] == "string_pattern_mismatch":
        return (f"{error['input']!r} is not a valid sweep name; valid: letters, digits, '_', '.', '-' "
                f"(it names the MLflow experiment and output folders)")
    return None


# --- hyperparameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Distribution:
    """A searched hyperparameter: `kind` is a DISTRIBUTION_KINDS name; `args` is (low, high) for the
    range kinds (both inclusive) or the candidate values for choice and grid."""

    kind: DistributionKind
    args: tuple


def _kinds_for(kind) -> tuple[str, ...]:
    """Distributions that produce values of the hyperparameter's type."""
    return {float: ("uniform", "loguniform", *LIST_KINDS), int: ("int", *LIST_KINDS)}.get(kind, LIST_KINDS)


def _fixed_type(kind, f: dataclasses.Field):
    """A fixed value: one of the choices of a Literal, or the type within its declared range."""
    if typing.get_origin(kind) is Literal:
        return kind
    if kind is bool:
        return Flag
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if kind is int:
        return integer(ge=low, le=high)
    return Annotated[{float: Number, str: Text}[kind], Field(ge=low, le=high)]


def _low_below_high(bounds: tuple) -> tuple:
    low, high = bounds
    if not low < high:
        raise ValueError(f"low {low!r} must be below high {high!r}")
    return bounds


def _as_distribution(kind: str, written: dict) -> Distribution:
    return Distribution(kind, tuple(written[kind]))


def _distribution_type(kind: str, value_type) -> Any:
    """`{kind: args}` as written, validated into a Distribution."""
    if kind in RANGE_KINDS:
        bound = Annotated[value_type, Field(gt=0)] if kind == "loguniform" else value_type
        args = Annotated[tuple[bound, bound], AfterValidator(_low_below_high),
                         Field(description="[low, high], both inclusive; low < high")]
    else:
        args = distinct_list(value_type)
    return Annotated[dict[Literal[kind], args], Field(min_length=1),
                     AfterValidator(functools.partial(_as_distribution, kind)), Tag(kind)]


def _written_kind(value: Any) -> str | None:
    """A mapping is a distribution named by its one key; anything else is a fixed value."""
    if not isinstance(value, dict):
        return FIXED
    return next(iter(value)) if len(value) == 1 else None


def _hyperparameter_type(kind, f: dataclasses.Field) -> Any:
    fixed = _fixed_type(kind, f)
    branches = (Annotated[fixed, Tag(FIXED)], *(_distribution_type(k, fixed) for k in _kinds_for(kind)))
    return Annotated[Union[branches], Discriminator(_written_kind)]  # noqa: UP007 (a union of a tuple)


@functools.cache
def params_model(name: str) -> type[BaseModel]:
    """What `params:` may hold for one algorithm: each field of its Params dataclass, as a fixed
    value or a distribution over it."""
    params = ALGORITHMS[name].Params
    hints = typing.get_type_hints(params)
    fields = {f.name: (_hyperparameter_type(hints[f.name], f), Field(f.default, description=f.metadata.get("doc")))
              for f in dataclasses.fields(params)}
    config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"minProperties": 1})
    return create_model(f"params_{name}", __config__=config, __doc__=f"hyperparameters of {name}", **fields)


def _explain_hyperparameter_error(algorithm: str, error: ErrorDetails, path: KeyPath) -> str | None:
    """Distribution keys, and ranges worded with both declared limits."""
    params = ALGORITHMS[algorithm].Params
    f = next((f for f in dataclasses.fields(params) if path and f.name == path[0]), None)
    if f is None:
        return None
    hint = typing.get_type_hints(params)[f.name]
    kind, value, tag = error["type"], error["input"], error.get("ctx", {}).get("tag")
    if error["loc"][-1] == FIXED and isinstance(value, (list, type(None))):
        return f"{show_value(value)} is not valid; expected a value or a one-key distribution such as {{uniform: [lo, hi]}}"
    if kind == "union_tag_not_found":
        return (f"a distribution is a mapping with one key, got {', '.join(map(str, value)) or 'none'}; "
                f"valid: {', '.join(DISTRIBUTION_KINDS)}")
    if kind == "union_tag_invalid" and tag not in DISTRIBUTION_KINDS:
        return f"unknown distribution; valid: {', '.join(DISTRIBUTION_KINDS)}{closest_hint(tag, DISTRIBUTION_KINDS)}"
    if kind == "union_tag_invalid":
        return f"{tag} does not fit {algorithm}.{f.name}; valid: {', '.join(_kinds_for(hint))}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{value!r} is out of range; valid: {hint.__name__} in [{f.metadata['low']}, {f.metadata['high']}]"
    return None


# --- the validated sweep -----------------------------------------------------------------------

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


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A validated sweep file. `locations` maps dotted key paths to where they were written, so later
    checks (such as `check_resources`) can point at the right line too."""

    name: str
    model: str
    target: str
    anchor: str | None
    category: str | None
    prompts: str | None
    precision: str
    device: str | None
    algorithms: dict[str, AlgorithmSpace]
    search: SearchConfig
    objectives: dict[str, Direction]
    early_stop: EarlyStopConfig
    resources: Resources
    eval: EvalConfig
    tracking: TrackingConfig
    path: str
    locations: dict[str, Location] = field(compare=False, repr=False)


def algorithm_names(file: SweepFile) -> list[str]:
    return [file.algorithm] if isinstance(file.algorithm, str) else list(file.algorithm)


def check_target(file: SweepFile, where: Mapping[str, Location], root: Location) -> str:
    """The target as the model's kind of generator names it. Which targets and anchors a model
    takes is its kind's rule (world models: world concepts, anchors derived from the prompt sets)."""
    kinds = kinds_edited_by(algorithm_names(file))
    try:
        kind = kind_of(file.model, kinds)
        check_local(file.model)  # a hub id must be cached: trials load it offline, and would all fail
    except UsageError as err:
        raise fail(where.get("model", root), ("model",), str(err)) from None
    try:
        target = kind.normalise_target(file.target)
    except UsageError as err:
        raise fail(where["target"], ("target",), str(err)) from None
    try:
        kind.check_anchor(file.anchor)
    except UsageError as err:
        raise fail(where["anchor"], ("anchor",), str(err)) from None
    return target


def resolve_relative(value: str | None, sweep_path: Path) -> str | None:
    """A path written in a sweep file, relative to that file."""
    if value is None or Path(value).is_absolute():
        return value
    return str((sweep_path.parent / value))


def check_evaluation_inputs(file: SweepFile, config_settings, where: Mapping[str, Location], root: Location) -> None:
    """Category, prompt file, sampler and judges: every trial evaluates with them, so a mistake there
    fails here, before the first trial, instead of in every trial's first evaluation."""
    from igmu.metrics.context import can_score
    from igmu.metrics.scorecard import check_evaluation

    kind = kind_of(file.model, kinds_edited_by(algorithm_names(file)))
    if not can_score(kind):
        return
    key = next((k for k in ("category", "prompts", "eval") if k in where), "target")
    try:
        check_evaluation(kind, file.target, config_settings, file.model)
    except UsageError as err:
        raise fail(where.get(key, root), (key,), str(err)) from None


def _sampler_problem(kind: str, sampler: str) -> str | None:
    """Optuna cannot take grid_search, and sampler grid only enumerates grid values."""
    if kind == "grid" and sampler in OPTUNA_SAMPLERS:
        return (f"grid cannot be used with search.sampler {sampler!r} (Optuna cannot sample grid_search); "
                f"valid: choice, or search.sampler: grid")
    if sampler == GRID_SAMPLER and kind != "grid":
        return (f"{kind} cannot be used with search.sampler 'grid', which enumerates grid values only; "
                f"valid: grid, or search.sampler: random")
    return None


def _require_entries(node: Node, path: KeyPath) -> None:
    if node.value == {}:
        raise fail(node.where, path, "empty search space; give at least one hyperparameter, "
                                     "or leave the key out to run the defaults")


def _algorithm_space(name: str, node: Node, path: KeyPath, sampler: str) -> AlgorithmSpace:
    _require_entries(node, path)
    validated = validate(params_model(name), node, path, functools.partial(_explain_hyperparameter_error, name))
    params = {key: getattr(validated, key) for key in node.value}
    for key, value in params.items():
        problem = _sampler_problem(value.kind, sampler) if isinstance(value, Distribution) else None
        if problem:
            raise fail(node.value[key].where, path + (key, value.kind), problem)
    return AlgorithmSpace(name, params)


def _algorithm_spaces(file: SweepFile, root: Node) -> dict[str, AlgorithmSpace]:
    """One AlgorithmSpace per algorithm; `params` is keyed by hyperparameter for one algorithm and by
    algorithm name for a list."""
    names = algorithm_names(file)
    if file.params is None:
        return {name: AlgorithmSpace(name) for name in names}
    params, path, sampler = root.value["params"], ("params",), file.search.sampler
    if isinstance(file.algorithm, str):
        return {file.algorithm: _algorithm_space(file.algorithm, params, path, sampler)}
    _require_entries(params, path)
    for key, node in params.value.items():
        if key not in names:  # depends on the file's own `algorithm` list, so no model can hold it
            raise fail(node.where, path + (key,), f"{unknown_key(key, names)}; with a list of algorithms, params "
                                                  f"maps each listed algorithm to its hyperparameters")
    return {name: (_algorithm_space(name, params.value[name], path + (name,), sampler)
                   if name in params.value else AlgorithmSpace(name))
            for name in names}


def _build_config(root: Node, shown: str) -> SweepConfig:
    file = validate(SweepFile, root, explain=_explain_file_error)
    locations = root.locations()
    sections = {key: getattr(file, key) for key in SECTIONS}
    if not file.tracking.experiment:
        sections["tracking"] = dataclasses.replace(file.tracking, experiment=file.name)
    prompts = resolve_relative(file.prompts, Path(shown))
    if file.eval.judge_config:
        sections["eval"] = dataclasses.replace(sections["eval"], judge_config=resolve_relative(
            file.eval.judge_config, Path(shown)))
    target = check_target(file, locations, root.where)
    check_evaluation_inputs(file, eval_settings(file.category, prompts, file.precision, sections["eval"]),
                            locations, root.where)
    return SweepConfig(name=file.name, model=file.model, anchor=file.anchor, category=file.category,
                       prompts=prompts, precision=file.precision, device=file.device, target=target,
                       algorithms=_algorithm_spaces(file, root), objectives=dict(file.objectives),
                       path=shown, locations=locations, **sections)


def eval_settings(category: str | None, prompts: str | None, precision: str, evaluation: EvalConfig,
                  split: str = "validation"):
    """The evaluation settings a sweep's trials score with (they see the validation split)."""
    from igmu.metrics.context import EvalSettings

    return EvalSettings(category=category, prompts=prompts, split=split, scheduler=evaluation.scheduler,
                        steps=evaluation.steps, guidance=evaluation.guidance, batch_size=evaluation.batch_size,
                        judges=evaluation.judge_config, clip_model=evaluation.clip_model, precision=precision)


def read_yaml(path: str | Path) -> Any:
    """One file's data as plain Python, read exactly as `load_sweep` reads it, without layering
    (for the JSON schema, which describes single files)."""
    return read_node(Path(path), str(path), "sweep file").plain()


def load_sweep(path: str | Path) -> SweepConfig:
    """Read, layer (`base:`) and fully validate a sweep file; any problem is a one-line UsageError."""
    shown = str(path)
    return _build_config(read_layered(Path(path), shown, "sweep file"), shown)


def check_resources(config: SweepConfig, available_gpus: float) -> None:
    """Fail before submitting: a trial asking for more GPU than exists would wait forever in Ray."""
    gpu = config.resources.gpu
    if gpu <= 0 or gpu <= available_gpus:
        return
    where = config.locations.get("resources.gpu", Location(config.path or "<sweep>", 1))
    if available_gpus <= 0:
        raise fail(where, ("resources", "gpu"), f"{gpu:g} requested but this machine/cluster has no GPU; valid: 0")
    raise fail(where, ("resources", "gpu"),
               f"{gpu:g} requested but this machine/cluster has {available_gpus:g} GPU; valid: 0 to {available_gpus:g}")


# --- JSON schema -------------------------------------------------------------------------------

def _params_rules(names: list[str]) -> list[dict]:
    """`params` depends on `algorithm`: one name -> its hyperparameters; a list -> name -> hyperparameters."""
    rules = [{"if": {"properties": {"algorithm": {"const": name}}, "required": ["algorithm"]},
              "then": {"properties": {"params": {"$ref": f"#/$defs/params_{name}"}}}} for name in names]
    by_algorithm = {"type": "object", "minProperties": 1, "additionalProperties": False,
                    "properties": {name: {"$ref": f"#/$defs/params_{name}"} for name in names}}
    rules.append({"if": {"properties": {"algorithm": {"type": "array"}}, "required": ["algorithm"]},
                  "then": {"properties": {"params": by_algorithm}}})
    return rules


def _world_rule() -> dict:
    """What `check_target` enforces for the world model (the default model)."""
    return {"if": {"properties": {"model": {"enum": list(SHIPPED_MODEL_NAMES)}}},
            "then": {"properties": {"target": {"enum": [c.name for c in ALL_CONCEPTS]}, "anchor": {"type": "null"}}}}


def sweep_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of one sweep file: the models' own schema, plus each algorithm's
    `params` and the rules that depend on other keys, which pydantic cannot state. `load_sweep` also
    checks what a schema cannot say well (low < high, sampler compatibility, layered files)."""
    names = sorted(ALGORITHMS)
    schema = json_schema(SweepFile)
    schema["$defs"].update({f"params_{name}": json_schema(params_model(name)) for name in names})
    schema["allOf"] = [*_params_rules(names), _world_rule()]
    return {"$schema": SCHEMA_DIALECT, **schema}


def write_schema(path: str | Path) -> None:
    """Write `sweep_json_schema()` as stable, diff-friendly JSON (regenerate after adding an algorithm)."""
    Path(path).write_text(json.dumps(sweep_json_schema(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":  # python -m igmu.sweep.file [docs/sweep-schema.json]
    write_schema(sys.argv[1] if len(sys.argv) > 1 else "docs/sweep-schema.json")
