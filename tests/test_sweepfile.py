"""The sweep-file layer: shipped files load, the Tune space has the right domains, the JSON schema
matches the loader, and every bad file fails as one line naming the file, the key and its line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform
from ray.tune.utils.util import merge_dicts

from igmu.algorithms.base import ALGORITHMS
from igmu.errors import UsageError
from igmu.models.image_to_image import WorldImageToImage
from igmu.models.text_to_image import WorldTextToImage
from igmu.sweep.file import (
    REQUIRED_KEYS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    Distribution,
    SweepConfig,
    check_resources,
    load_sweep,
    read_yaml,
    sweep_json_schema,
    write_schema,
)
from igmu.sweep.space import optuna_objectives, scheduler_metric, to_tune_space, trial_params

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"
SCHEMA_FILE = ROOT / "docs" / "sweep-schema.json"


def _layer_files() -> set[Path]:
    """Files other sweep files name as `base:`: layers, not complete sweeps."""
    return {(path.parent / data["base"]).resolve() for path in SWEEPS.glob("*.yaml")
            if isinstance(data := read_yaml(path), dict) and "base" in data}


LAYERS = sorted(_layer_files())
SWEEP_FILES = sorted(path for path in SWEEPS.glob("*.yaml") if path.resolve() not in LAYERS)

VALID = """\
name: test-sweep
target: ball
algorithm: salun
params:
  lr: {loguniform: [3e-5, 1e-3]}
  steps: 10
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, marker: str) -> int:
    """1-based line of the only line containing `marker` (so each case states its line by content)."""
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if marker in line]
    if len(lines) != 1:
        raise ValueError(f"marker {marker!r} must occur on exactly one line, found {len(lines)}")
    return lines[0]


def usage_error(path: Path, available_gpus: float | None = None) -> str:
    with pytest.raises(UsageError) as caught:
        config = load_sweep(path)
        if available_gpus is not None:
            check_resources(config, available_gpus)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- shipped files -----------------------------------------------------------------------------

def test_sweeps_folder_has_one_file_per_algorithm_and_a_base():
    names = {path.stem for path in SWEEP_FILES}
    assert set(ALGORITHMS) | {"compare"} <= names
    assert [path.name for path in LAYERS] == ["base.yaml"]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_loads(path, tmp_path, tiny_sd_dir, tiny_clip_dir, monkeypatch):
    if read_yaml(path).get("model", "world") not in ("world", "base"):
        text = path.read_text(encoding="utf-8").replace(f"model: {read_yaml(path)['model']}", f"model: {tiny_sd_dir}")
        clip = f"\n  clip_model: {tiny_clip_dir}"
        text = text.replace("\neval:", "\neval:" + clip, 1) if "\neval:" in text else text + f"eval:{clip}\n"
        path = write(tmp_path, text.replace("base: base.yaml", f"base: {SWEEPS / 'base.yaml'}"), path.name)
    config = load_sweep(path)
    assert isinstance(config, SweepConfig)
    assert config.algorithms and config.objectives
    assert any(space.distributions() for space in config.algorithms.values())
    assert config.tracking.experiment == config.name


def test_base_layer_holds_only_shared_knobs():
    data = read_yaml(SWEEPS / "base.yaml")
    assert set(data) <= {"search", "early_stop", "resources", "eval"}


def test_quickstart_is_what_the_readme_promises():
    config = load_sweep(SWEEPS / "salun.yaml")
    assert (config.model, config.target, list(config.algorithms)) == ("world", "ball", ["salun"])
    params = config.algorithms["salun"].params
    assert params["lr"] == Distribution("loguniform", (1e-5, 3e-4))
    assert params["alpha"] == Distribution("uniform", (0.1, 2.0))
    assert params["threshold"] == Distribution("uniform", (0.2, 0.8))
    assert params["steps"] == 100
    assert (config.search.sampler, config.search.num_samples, config.search.max_concurrent,
            config.search.seed) == ("tpe", 12, 2, 0)
    assert config.objectives == {"forgetting": "max", "preservation": "max"}
    assert (config.early_stop.scheduler, config.early_stop.eval_every, config.early_stop.grace_period) == \
        ("mo-asha", 25, 1)
    assert config.resources.cpu == 1 and config.resources.gpu == 0


def test_compare_sweeps_all_algorithms_on_hazard():
    """One comparison per generator kind: scores of different generators do not share a front."""
    config = load_sweep(SWEEPS / "compare.yaml")
    assert config.target == "hazard"
    assert set(config.algorithms) == {n for n, cls in ALGORITHMS.items() if WorldTextToImage in cls.generator_kinds}
    image_to_image = load_sweep(SWEEPS / "compare-i2i.yaml")
    assert set(image_to_image.algorithms) == {n for n, cls in ALGORITHMS.items() if WorldImageToImage in cls.generator_kinds}


# --- loader behaviour --------------------------------------------------------------------------

def test_yaml12_exponent_floats_are_numbers(tmp_path):
    config = load_sweep(write(tmp_path, VALID))
    assert config.algorithms["salun"].params["lr"].args == (3e-5, 1e-3)


def test_base_is_deep_merged_under_the_file(tmp_path):
    write(tmp_path, "search: {sampler: random, num_samples: 5}\nresources: {cpu: 2}\n", "shared.yaml")
    config = load_sweep(write(tmp_path, "base: shared.yaml\n" + VALID + "search:\n  num_samples: 3\n"))
    assert (config.search.sampler, config.search.num_samples) == ("random", 3)
    assert config.resources.cpu == 2.0


def test_error_in_base_points_at_the_base_file(tmp_path):
    base_text = "search:\n  sampler: tpee\n"
    base = write(tmp_path, base_text, "shared.yaml")
    message = usage_error(write(tmp_path, "base: shared.yaml\n" + VALID))
    assert message.startswith(f"{base}:{line_of(base_text, 'tpee')}: search.sampler: 'tpee' is not valid; "
                              f"valid: tpe, nsga2, random, grid")


def test_tracking_experiment_defaults_to_sweep_name_but_can_be_set(tmp_path):
    config = load_sweep(write(tmp_path, VALID + "tracking: {experiment: other}\n"))
    assert config.tracking.experiment == "other"


# --- the Tune space ----------------------------------------------------------------------------

def test_single_algorithm_space_has_the_right_domains():
    space = to_tune_space(load_sweep(SWEEPS / "salun.yaml"))
    assert space["algorithm"] == "salun"
    params = space["params"]
    lr, alpha = params["lr"], params["alpha"]
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform)
    assert (lr.lower, lr.upper) == (1e-5, 3e-4)
    assert isinstance(alpha, Float) and isinstance(alpha.get_sampler(), Uniform)
    assert (alpha.lower, alpha.upper) == (0.1, 2.0)
    assert params["steps"] == 100
    samples = lr.sample(size=200, random_state=np.random.default_rng(0))
    assert min(samples) >= 1e-5 and max(samples) <= 3e-4


def test_int_range_is_inclusive_of_both_ends(tmp_path):
    text = "name: ints\ntarget: moon\nalgorithm: erasediff\nparams:\n  k_steps: {int: [1, 4]}\n"
    k_steps = to_tune_space(load_sweep(write(tmp_path, text)))["params"]["k_steps"]
    assert isinstance(k_steps, Integer) and (k_steps.lower, k_steps.upper) == (1, 5)
    assert set(k_steps.sample(size=400, random_state=np.random.default_rng(0))) == {1, 2, 3, 4}


def test_choice_and_grid_domains(tmp_path):
    text = VALID + "  train_method: {choice: [full, xattn]}\n  alpha: {grid: [0.5, 1.0]}\nsearch: {sampler: random}\n"
    text = text.replace("  lr: {loguniform: [3e-5, 1e-3]}\n", "")
    params = to_tune_space(load_sweep(write(tmp_path, text)))["params"]
    assert isinstance(params["train_method"], Categorical)
    assert params["train_method"].categories == ["full", "xattn"]
    assert params["alpha"] == tune.grid_search([0.5, 1.0])


def test_multi_algorithm_space_nests_params_per_algorithm():
    config = load_sweep(SWEEPS / "compare.yaml")
    space = to_tune_space(config)
    assert isinstance(space["algorithm"], Categorical)
    assert space["algorithm"].categories == list(config.algorithms)
    assert set(space["params_by_algorithm"]) == set(config.algorithms)
    assert isinstance(space["params_by_algorithm"]["uce"]["lamb"].get_sampler(), LogUniform)
    assert "params" not in space


def test_grid_sampler_enumerates_algorithms(tmp_path):
    text = "name: g\ntarget: ball\nalgorithm: [esd, uce]\nsearch: {sampler: grid}\n"
    space = to_tune_space(load_sweep(write(tmp_path, text)))
    assert space["algorithm"] == tune.grid_search(["esd", "uce"])


def test_trial_params_reads_both_shapes():
    assert trial_params({"algorithm": "salun", "params": {"lr": 1e-4}}) == ("salun", {"lr": 1e-4})
    nested = {"algorithm": "uce", "params_by_algorithm": {"uce": {"lamb": 0.5}, "esd": {"lr": 1e-3}}}
    assert trial_params(nested) == ("uce", {"lamb": 0.5})
    assert trial_params({"algorithm": "ca", "params_by_algorithm": {"uce": {"lamb": 0.5}}}) == ("ca", {})


@pytest.mark.parametrize("name", ["compare.yaml", "erasediff.yaml"])
def test_optuna_suggestion_reaches_the_trial_as_flat_params(name):
    """What a trial sees under OptunaSearch: Tune merges the suggestion into the space's constants."""
    config = load_sweep(SWEEPS / name)
    space = to_tune_space(config)
    metrics, modes = optuna_objectives(config)
    searcher = OptunaSearch(metric=metrics, mode=modes, seed=0)
    assert searcher.set_search_properties(None, None, space)
    algorithm, params = trial_params(merge_dicts(space, searcher.suggest("trial-1")))
    space_of_algorithm = config.algorithms[algorithm]
    assert set(params) == set(space_of_algorithm.params)
    for key, value in space_of_algorithm.distributions().items():
        if value.kind in ("uniform", "loguniform", "int"):
            assert value.args[0] <= params[key] <= value.args[1]
        else:
            assert params[key] in value.args


def test_scheduler_gets_one_scalar_and_optuna_the_objective_vector():
    config = load_sweep(SWEEPS / "compare.yaml")
    assert scheduler_metric(config) == ("forget_retain_hmean", "max")
    assert optuna_objectives(config) == (["forgetting", "preservation", "quality"], ["max", "max", "max"])


# --- the JSON schema ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator():
    schema = sweep_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_file_is_up_to_date(tmp_path):
    write_schema(tmp_path / "schema.json")
    assert json.loads(SCHEMA_FILE.read_text()) == json.loads((tmp_path / "schema.json").read_text()), \
        "docs/sweep-schema.json is stale: run python -m igmu.sweep.file"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_schema_accepts_every_sweep_file(validator, path):
    errors = [error.message for error in validator.iter_errors(read_yaml(path))]
    assert errors == []


def test_schema_accepts_base_layer_except_for_required_keys(validator):
    errors = list(validator.iter_errors(read_yaml(SWEEPS / "base.yaml")))
    assert errors and {error.validator for error in errors} == {"required"}
    assert {key for error in errors for key in REQUIRED_KEYS if repr(key) in error.message} == set(REQUIRED_KEYS)


@pytest.mark.parametrize("key, value", [
    ("search", {"samplr": "tpe"}),                      # unknown key in a section
    ("colour", "blue"),                                 # unknown top-level key
    ("params", {"alpah": 1.0}),                         # unknown hyperparameter
    ("params", {"steps": 0}),                           # out-of-range fixed value
    ("params", {"alpha": {"uniform": [0.1, 200.0]}}),   # out-of-range bound
    ("algorithm", "salon"),                             # unknown algorithm
    ("target", "bal"),                                  # not a world concept
    ("objectives", {"forgeting": "max"}),               # unknown aspect
])
def test_schema_rejects_bad_files(validator, key, value):
    data = read_yaml(SWEEPS / "salun.yaml")
    assert validator.is_valid(data)
    data[key] = value
    assert not validator.is_valid(data)


# --- bad files ---------------------------------------------------------------------------------

BAD_FILES = {
    "unknown key": (VALID + "search:\n  samplr: tpe\n", "search.samplr", "samplr", "did you mean sampler"),
    "unknown top-level key": (VALID + "objective:\n  forgetting: max\n", "objective", "objective:",
                              "did you mean objectives"),
    "wrong type": (VALID + "search:\n  num_samples: many\n", "search.num_samples", "many", "expected an integer"),
    "wrong section type": (VALID + "resources: 2\n", "resources", "resources", "mapping"),
    "bad sampler": (VALID + "search:\n  sampler: tpee\n", "search.sampler", "tpee",
                    "'tpee' is not valid; valid: tpe, nsga2, random, grid"),
    "unknown algorithm": (VALID.replace("algorithm: salun", "algorithm: salon"), "algorithm", "salon", "salun"),
    "unknown algorithm in list": ("name: x\ntarget: ball\nalgorithm:\n  - esd\n  - ucee\n", "algorithm[1]", "ucee",
                                  "uce"),
    "unknown hyperparameter": (VALID + "  alpah: 0.5\n", "params.alpah", "alpah", "did you mean alpha"),
    "out-of-range fixed value": (VALID.replace("steps: 10", "steps: 0"), "params.steps", "steps",
                                 "out of range; valid: int in [1, 100000]"),
    "out-of-range bound": (VALID + "  threshold: {uniform: [0.2, 1.5]}\n", "params.threshold.uniform[1]",
                           "threshold", "out of range"),
    "low not below high": (VALID + "  alpha: {uniform: [2.0, 0.5]}\n", "params.alpha.uniform", "alpha",
                           "must be below"),
    "wrong fixed type": (VALID.replace("steps: 10", "steps: ten"), "params.steps", "steps", "expected an integer"),
    "distribution unfit for type": (VALID.replace("steps: 10", "steps: {uniform: [1, 10]}"), "params.steps.uniform",
                                    "steps", "valid: int, choice, grid"),
    "unknown distribution": (VALID + "  alpha: {unifrom: [0.1, 1.0]}\n", "params.alpha.unifrom", "unifrom",
                             "did you mean uniform"),
    "bad choice value": (VALID + "  train_method: {choice: [full, cross]}\n", "params.train_method.choice[1]",
                         "cross", "valid: full, xattn, noxattn, xattn-kv"),
    "unknown aspect in objectives": (VALID + "objectives:\n  forgeting: max\n", "objectives.forgeting", "forgeting",
                                     "did you mean forgetting"),
    "bad objective direction": (VALID + "objectives:\n  quality: maximise\n", "objectives.quality", "maximise",
                                "valid: max, min"),
    "empty choice list": (VALID + "  train_method: {choice: []}\n", "params.train_method.choice", "train_method",
                          "empty list"),
    "empty params": (VALID.split("params:")[0] + "params: {}\n", "params", "params", "empty search space"),
    "num_samples 0": (VALID + "search:\n  num_samples: 0\n", "search.num_samples", "num_samples",
                      "valid: an integer >= 1"),
    "grid with tpe": (VALID + "  alpha: {grid: [0.5, 1.0]}\nsearch:\n  sampler: tpe\n", "params.alpha.grid", "alpha",
                      "valid: choice, or search.sampler: grid"),
    "continuous with grid sampler": (VALID + "search:\n  sampler: grid\n", "params.lr.loguniform", "lr:",
                                     "valid: grid"),
    "bad scheduler": (VALID + "early_stop:\n  scheduler: moasha\n", "early_stop.scheduler", "moasha",
                      "valid: asha, mo-asha, hyperband, none (did you mean mo-asha?)"),
    "bad scheduler metric": (VALID + "early_stop:\n  metric: loss\n", "early_stop.metric", "loss",
                             "valid: forget_retain_hmean, forgetting"),
    "bad budget": (VALID + "eval:\n  interim: tiny\n", "eval.interim", "tiny", "valid: small, full"),
    "bad judges place": (VALID + "eval:\n  judges: remote\n", "eval.judges", "remote", "valid: local, serve"),
    "negative gpu": (VALID + "resources:\n  gpu: -1\n", "resources.gpu", "gpu", ">= 0"),
    "unknown world concept": (VALID.replace("target: ball", "target: bal"), "target", "bal", "did you mean ball"),
    "anchor with world model": (VALID + "anchor: a cat\n", "anchor", "anchor", "valid: leave anchor out"),
    "params for an unlisted algorithm": ("name: x\ntarget: ball\nalgorithm: [esd, uce]\nparams:\n  salun:\n"
                                         "    alpha: 1.0\n", "params.salun", "salun", "valid: esd, uce"),
    "hyperparameters without algorithm keys": ("name: x\ntarget: ball\nalgorithm: [esd, uce]\nparams:\n"
                                               "  lr: 0.001\n", "params.lr", "lr", "maps each listed algorithm"),
    "missing required key": (VALID.replace("target: ball\n", ""), "target", "name:", "missing"),
    "duplicate key": (VALID + "name: again\n", "name", "again", "duplicate key"),
    "bad name": (VALID.replace("name: test-sweep", "name: my sweep"), "name", "my sweep", "not a valid sweep name"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_names_key_and_line(tmp_path, case):
    text, key, marker, detail = BAD_FILES[case]
    path = write(tmp_path, text)
    message = usage_error(path)
    assert message.startswith(f"{path}:{line_of(text, marker)}: {key}: "), message
    assert detail in message


def test_gpu_requested_with_none_available(tmp_path):
    text = VALID + "resources:\n  cpu: 1\n  gpu: 0.5\n"
    path = write(tmp_path, text)
    check_resources(load_sweep(path), available_gpus=1)  # fits: no error
    message = usage_error(path, available_gpus=0)
    assert message == (f"{path}:{line_of(text, 'gpu')}: resources.gpu: 0.5 requested but this machine/cluster "
                       f"has no GPU; valid: 0")


def test_gpu_beyond_what_exists(tmp_path):
    text = VALID + "resources:\n  gpu: 2\n"
    path = write(tmp_path, text)
    assert "valid: 0 to 1" in usage_error(path, available_gpus=1)


def test_yaml_syntax_error_reports_its_line(tmp_path):
    text = VALID + "search:\n  sampler: tpe: nsga2\n"
    message = usage_error(write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'sweep.yaml'}:{line_of(text, 'nsga2')}: YAML syntax error"), message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert usage_error(path) == f"{path}: sweep file not found"


def test_missing_base_file_points_at_base_key(tmp_path):
    text = VALID + "base: shared.yaml\n"
    path = write(tmp_path, text)
    message = usage_error(path)
    assert message.startswith(f"{path}:{line_of(text, 'base')}: base: "), message
    assert "not found" in message


def test_top_level_must_be_a_mapping(tmp_path):
    message = usage_error(write(tmp_path, "- name: x\n"))
    assert message.startswith(f"{tmp_path / 'sweep.yaml'}:1: the sweep file must be a mapping"), message


def test_empty_file(tmp_path):
    assert "empty" in usage_error(write(tmp_path, "# nothing\n"))


def test_docs_describe_every_key():
    text = (ROOT / "docs" / "sweep-file.md").read_text()
    keys = [*TOP_LEVEL_KEYS, *(f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls))]
    assert [key for key in keys if f"| `{key}` |" not in text] == []


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    text = "base: a.yaml\n" + VALID
    path = write(tmp_path, text, "b.yaml")
    message = usage_error(path)
    assert message.startswith(f"{tmp_path / 'a.yaml'}:1: base: "), message
    assert "cycle" in message


@pytest.mark.parametrize("model, target, steps, kind", [("base", "ball", 200, "world"),
                                                          (None, "a photo of a cat", 1000, "sd")])
def test_sweeps_resolve_defaults_for_their_model_kind(tmp_path, tiny_sd_dir, tiny_clip_dir, model, target, steps,
                                                     kind):
    """A sweep's default step budget (its ASHA max_t) follows the kind's defaults (official ones on
    Stable Diffusion), and every trial's settings name the kind so tracking resolves the same."""
    from igmu.models.loader import kind_named
    from igmu.run import resolved_params
    from igmu.sweep.engine import algorithm_steps, sweep_category, trial_settings

    text = f"name: kinds\nmodel: {model or tiny_sd_dir}\ntarget: {target}\nalgorithm: esd\nparams:\n  lr: 1e-4\n"
    if model is None:
        text += f"eval:\n  clip_model: {tiny_clip_dir}\n"
    config = load_sweep(write(tmp_path, text))
    assert algorithm_steps(config, "esd") == steps
    settings = trial_settings(config, tmp_path)
    assert settings["kind"] == kind
    assert resolved_params("esd", {}, settings["category"], kind_named(settings["kind"]))["steps"] == steps
    assert settings["category"] == sweep_category(config)
