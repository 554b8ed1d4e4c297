"""What a sweep leaves in MLflow worth opening: the training view, readable run names, labelled grids,
loss curves, the parent's summary and plot, version and machine tags, system metrics and datasets.

One small sweep, run through `igmu sweep` itself (the parent's summary is written by the command),
read back with a real MlflowClient on a SQLite store; the rest are fast checks of the pieces.
"""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from igmu.metrics.grid import GridSection, write_grid
from igmu.provenance import GIT_COMMIT_TAG, LIBRARIES, VERSION_TAG, environment_tags
from igmu.sweep.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND, short_value, trial_run_name
from igmu.sweep.ui import experiment_url, ui_server

TINY_BUDGETS = {"small": {"forget": 4, "retain": 4, "related": 2, "paraphrase": 0}}
MACHINE_TAGS = ("version.python", "host.platform", "host.machine", "host.cpu_count")


# --- fast: the pieces -------------------------------------------------------------------------------

def test_ui_url_opens_the_training_view_of_the_resolved_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from igmu.cli.sweeps import ui_target
    from igmu.sweep.results import default_tracking_uri

    env_store = f"sqlite:///{tmp_path / 'env.db'}"
    experiment = MlflowClient(env_store).create_experiment("from-env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_store)
    assert ui_target(None, None, "from-env", port=5001) == (
        env_store, f"http://127.0.0.1:5001/#/experiments/{experiment}?workflowType=machine_learning")
    flag_store = f"sqlite:///{tmp_path / 'flag.db'}"
    assert ui_target(flag_store, None, None)[0] == flag_store  # the flag outranks the environment
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri, _ = ui_target(None, str(tmp_path / "results"), None)
    assert uri == default_tracking_uri(tmp_path / "results")
    assert ui_server("https://mlflow.example.org/", 5000) == "https://mlflow.example.org"
    assert experiment_url("https://mlflow.example.org", "7") == (
        "https://mlflow.example.org/#/experiments/7?workflowType=machine_learning")


def test_an_unknown_experiment_is_a_usage_error(tmp_path):
    from igmu.cli.sweeps import ui_target
    from igmu.errors import UsageError

    with pytest.raises(UsageError, match="unknown experiment 'nope'.*valid: Default"):
        ui_target(f"sqlite:///{tmp_path / 'm.db'}", None, "nope")


def test_trial_run_names_lead_with_the_searched_settings():
    overrides = {"steps": 6, "lr": 3.2e-4, "negative_guidance": 1.7, "train_method": "xattn"}
    assert trial_run_name("esd", overrides, ["negative_guidance", "lr"]) == (
        "esd negative_guidance=1.7 lr=3.2e-04 steps=6 train_method=xattn")
    assert trial_run_name("esd", overrides, ["lr"], limit=20) == "esd lr=3.2e-04"
    assert [short_value(v) for v in (0.123456, 2.0, 12345.6, True, "full")] == ["0.123", "2", "1.2e+04", "True", "full"]


def test_labelled_grid_has_captions_and_row_labels_under_enlarged_tiles(tmp_path):
    images = torch.full((4, 3, 32, 32), 0.5)
    section = GridSection("forget", {"original": images, "unlearned": images},
                          ["a very long prompt about a watercolour ball with a hazard mark"] * 4)
    plain = GridSection("forget", {"original": images, "unlearned": images})
    labelled = Image.open(write_grid([section], tmp_path / "labelled.png")).convert("L")
    bare = Image.open(write_grid([plain], tmp_path / "bare.png")).convert("L")
    assert labelled.width > 8 * 32 * 2 and labelled.height > bare.height  # tiles enlarged, caption lines added
    caption_band = labelled.crop((84, bare.height - 8, labelled.width, labelled.height))
    label_column = labelled.crop((0, 20, 80, labelled.height))
    assert np.asarray(caption_band).min() < 128 and np.asarray(label_column).min() < 128  # dark text drawn


def test_summary_metrics_count_statuses_and_score_the_front():
    from igmu.analysis.frontier import compute_frontier, summary_metrics

    table = pd.DataFrame([
        {"trial_id": "a", "status": "finished", "forgetting": 0.9, "preservation": 0.2},
        {"trial_id": "b", "status": "finished", "forgetting": 0.3, "preservation": 0.8},
        {"trial_id": "c", "status": "finished", "forgetting": 0.2, "preservation": 0.1},
        {"trial_id": "d", "status": "early_stopped", "forgetting": float("nan"), "preservation": float("nan")},
        {"trial_id": "e", "status": "error", "forgetting": float("nan"), "preservation": float("nan")}])
    frontier = compute_frontier(table, {"forgetting": "max", "preservation": "max"})
    metrics = summary_metrics(table, frontier)
    assert metrics["trials_total"] == 5 and metrics["trials_finished"] == 3
    assert metrics["trials_early_stopped"] == 1 and metrics["trials_error"] == 1
    assert metrics["front_size"] == 2 and metrics["hypervolume"] == frontier.hypervolume
    assert metrics["best_forgetting"] == 0.9 and metrics["best_preservation"] == 0.8
    assert "front_size" not in summary_metrics(table, None)


def test_environment_tags_name_the_code_and_the_machine():
    tags = environment_tags()
    assert len(tags[GIT_COMMIT_TAG]) == 40 or tags[GIT_COMMIT_TAG] == "unknown"
    assert tags[VERSION_TAG] != "" and all(tags[f"version.{name}"] != "unknown" for name in LIBRARIES)
    assert all(tags[name] for name in MACHINE_TAGS) and int(tags["host.cpu_count"]) > 0
    assert ("host.gpu" in tags) == torch.cuda.is_available()


# --- slow: one small sweep through `igmu sweep` --------------------------------------------------------

def write_sweep(folder: Path) -> Path:
    """Three ESD trials of 4 steps, evaluated at steps 2 and 4 (so each run has a loss curve and an
    interim point), all run to the end (no early stopping), on two searched settings."""
    path = folder / "record-tiny.yaml"
    path.write_text(textwrap.dedent("""
        name: record-tiny
        model: world
        target: hazard
        algorithm: esd
        params:
          lr: {loguniform: [1.0e-4, 1.0e-2]}
          negative_guidance: {uniform: [0.5, 2.0]}
          steps: 4
          ddim_steps: 2
          batch_size: 1
        search: {sampler: random, num_samples: 3, max_concurrent: 2, seed: 0}
        objectives: {forgetting: max, preservation: max}
        early_stop: {scheduler: none, eval_every: 2}
        eval: {interim: small, final: small, held_out: none}
        resources: {cpu: 1}
    """))
    return path


@pytest.fixture(scope="module")
def recorded_sweep(ray_session, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from igmu.cli.main import main
    from igmu.sweep.results import default_tracking_uri, read_sweep_state

    folder = tmp_path_factory.mktemp("record")
    storage = folder / "results"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IGMU_BUDGET_SIZES", json.dumps(TINY_BUDGETS))
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with contextlib.redirect_stdout(io.StringIO()) as shown:
            assert main(["sweep", str(write_sweep(folder)), "--storage", str(storage), "--quiet"]) == 0
    # --quiet leaves the summary and the front, without Ray Tune's trial tables.
    assert "Trial status" not in shown.getvalue() and "Pareto front" in shown.getvalue(), shown.getvalue()[:2000]
    client = MlflowClient(default_tracking_uri(storage))
    parent = client.get_run(read_sweep_state(storage / "record-tiny" / "sweep.json")["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, parent, children, folder


@pytest.mark.slow
def test_the_experiment_opens_as_training_runs(recorded_sweep):
    client, parent, children, _ = recorded_sweep
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND == "custom_model_development"
    assert len(children) == 3


@pytest.mark.slow
def test_trial_runs_are_named_by_algorithm_and_searched_settings(recorded_sweep):
    _, _, children, _ = recorded_sweep
    for run in children:
        name = run.info.run_name
        assert name.startswith("esd lr=") and " negative_guidance=" in name and "run_trial" not in name, name
        assert len(name) <= 80 and run.data.tags["igmu.trial_id"]
        assert float(name.split("lr=")[1].split()[0]) == pytest.approx(float(run.data.params["lr"]), rel=0.05)


@pytest.mark.slow
def test_the_grid_artifact_is_labelled(recorded_sweep):
    client, _, children, folder = recorded_sweep
    grid = Image.open(client.download_artifacts(children[0].info.run_id, "grid.png", str(folder)))
    # the unlabelled grid was 8 images of 32 px at 2x across, 64 px per prompt-set row
    assert grid.width > 8 * 32 * 2 and grid.height > 3 * 2 * 128


@pytest.mark.slow
def test_each_run_has_loss_and_interim_curves(recorded_sweep):
    client, _, children, _ = recorded_sweep
    for run in children:
        losses = client.get_metric_history(run.info.run_id, "loss_loss")
        assert sorted(m.step for m in losses) == [1, 2, 3, 4]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "interim_forget_retain_hmean")] == [2]


@pytest.mark.slow
def test_the_parent_run_carries_the_summary_and_the_pareto_plot(recorded_sweep):
    client, parent, _, _ = recorded_sweep
    metrics = parent.data.metrics
    assert metrics["trials_total"] == 3 and metrics["trials_finished"] == 3 and metrics["trials_error"] == 0
    assert 1 <= metrics["front_size"] <= 3 and metrics["hypervolume"] >= 0
    assert 0 <= metrics["best_forgetting"] <= 1 and 0 <= metrics["best_preservation"] <= 1
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert "pareto/pareto_forgetting-preservation.png" in plots


@pytest.mark.slow
def test_parent_and_children_carry_version_and_machine_tags(recorded_sweep):
    _, parent, children, _ = recorded_sweep
    for run in [parent, *children]:
        tags = run.data.tags
        assert tags[GIT_COMMIT_TAG] and tags[VERSION_TAG] and tags["version.torch"] == torch.__version__
        assert all(tags[f"version.{name}"] for name in LIBRARIES) and all(tags[name] for name in MACHINE_TAGS)


@pytest.mark.slow
def test_the_parent_run_has_the_drivers_system_metrics(recorded_sweep):
    client, parent, _, _ = recorded_sweep
    system = [name for name in parent.data.metrics if name.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    assert len(client.get_metric_history(parent.info.run_id, "system/cpu_utilization_percentage")) >= 2


@pytest.mark.slow
def test_the_prompt_sets_are_evaluation_datasets_of_every_run(recorded_sweep):
    _, parent, children, _ = recorded_sweep
    for run in [parent, children[0]]:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert {"hazard/forget", "hazard/retain", "hazard/related", "hazard/paraphrase"} <= set(inputs)
        assert all(tag.key == "mlflow.data.context" and tag.value == "evaluation"
                   for d in inputs.values() for tag in d.tags)
    forget = json.loads(inputs["hazard/forget"].dataset.profile)
    assert forget["num_rows"] > 0
