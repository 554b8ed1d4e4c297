"""Exporting what igmu unlearned: stock diffusers folders for Stable Diffusion, igmu-only folders for
methods whose effect the weights alone cannot carry, the trials' kept weights, and `igmu export`."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sweep_helpers import children

from igmu.algorithms.base import Unlearner
from igmu.cli.main import main
from igmu.models.loader import load
from igmu.models.text_to_image import StableDiffusion
from igmu.sweep.results import (
    CHANGED_FILE,
    STATE_FILE,
    TABLE_FILE,
    TRIALS_DIR,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    kept_trials,
    trial_row,
    update_sweep_state,
    write_table,
)

TINY_VAE_PIXELS = 16


def sample_one_step(pipeline) -> torch.Tensor:
    return pipeline("a photo of a cat", num_inference_steps=1, height=TINY_VAE_PIXELS, width=TINY_VAE_PIXELS,
                    output_type="pt", generator=torch.Generator("cpu").manual_seed(0)).images


def v_prediction_copy(tiny_sd_dir: Path, folder: Path) -> Path:
    """The tiny SD with its scheduler switched to v-prediction (as SD 2.x ships)."""
    shutil.copytree(tiny_sd_dir, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    return folder


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_saved_stable_diffusion_loads_as_a_stock_pipeline(tiny_sd_dir, tmp_path, prediction):
    from diffusers import StableDiffusionPipeline

    source = tiny_sd_dir if prediction == "epsilon" else v_prediction_copy(tiny_sd_dir, tmp_path / "v")
    generator = load(str(source), device="cpu")
    generator.save(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["safety_checker"] == [None, None]

    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert pipeline.scheduler.config.prediction_type == prediction
    assert torch.equal(pipeline.unet.state_dict()["conv_in.weight"], generator.unet.state_dict()["conv_in.weight"])
    images = sample_one_step(pipeline)
    assert images.shape == (1, 3, TINY_VAE_PIXELS, TINY_VAE_PIXELS) and torch.isfinite(images).all()


class SamplerUnlearner(Unlearner):
    """A method whose effect lives in the sampler (defined here, never registered)."""

    generator_kinds = (StableDiffusion,)
    stock_weights = False


def test_a_method_the_weights_cannot_carry_never_loads_as_a_stock_pipeline(tiny_sd_dir, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    generator = load(str(tiny_sd_dir), device="cpu")
    generator.save(tmp_path / "held", stock_weights=SamplerUnlearner.stock_weights)
    index = json.loads((tmp_path / "held" / "model_index.json").read_text())
    assert index["_class_name"] == "IgmuSamplerPipeline" and "unet" not in index
    assert not (tmp_path / "held" / "unet").exists()

    with pytest.raises(ValueError, match="expected .* but only"):
        StableDiffusionPipeline.from_pretrained(tmp_path / "held")
    with pytest.raises(AttributeError, match="IgmuSamplerPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path / "held")

    reloaded = load(str(tmp_path / "held"), device="cpu")
    assert reloaded.kind is StableDiffusion and reloaded.stock_weights is False
    assert all(torch.equal(a, b) for a, b in zip(reloaded.unet.state_dict().values(),
                                                 generator.unet.state_dict().values()))
    reloaded.save(tmp_path / "again")  # a held folder stays held when saved again
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["_class_name"] == "IgmuSamplerPipeline"


def test_save_run_passes_the_unlearner_flag(tiny_sd_dir, tmp_path):
    from igmu.algorithms.task import prompt_task
    from igmu.run import save_run

    generator = load(str(tiny_sd_dir), device="cpu")
    unlearner = SamplerUnlearner(generator, prompt_task("a photo of a cat", "object", anchor="a photo"))
    save_run(tmp_path / "run", unlearner, {"aspects": {}}, {})
    index = json.loads((tmp_path / "run" / "model" / "model_index.json").read_text())
    assert index["_class_name"] == "IgmuSamplerPipeline"


# --- which trials keep their weights ----------------------------------------------------------------

def _row(trial_id, forgetting, preservation, status="finished", algorithm="esd"):
    return trial_row(trial_id, algorithm, {"lr": 1e-3}, status,
                     {"forgetting": forgetting, "preservation": preservation, "step": 4}, None)


def test_the_front_and_the_best_on_the_first_objective_keep_their_weights():
    rows = [_row("a", 0.9, 0.1), _row("b", 0.1, 0.9), _row("c", 0.5, 0.5), _row("d", 0.4, 0.4),
            _row("e", 0.3, 0.3), _row("f", 0.2, 0.2), _row("g", 0.95, 0.95, status="early_stopped")]
    objectives = {"forgetting": "max", "preservation": "max"}
    # front a, b, c; best three on forgetting a, c, d; g stopped early and wrote no weights
    assert kept_trials(rows, objectives, "front") == {"a", "b", "c", "d"}
    assert kept_trials(rows, objectives, "all") == {"a", "b", "c", "d", "e", "f"}
    assert kept_trials(rows, objectives, "none") == set()
    assert kept_trials(rows, {"preservation": "min"}, "front") == {"a", "f", "e"}


def test_fronts_keep_each_algorithms_own_front_and_best():
    """An algorithm the overall front leaves out still gets its best trials kept (and re-scored on
    the test split), so a comparison has a tuned row for it."""
    esd = [_row("a", 0.9, 0.9), _row("b", 0.8, 0.8), _row("c", 0.7, 0.7), _row("d", 0.6, 0.6), _row("e", 0.5, 0.5)]
    uce = [_row(name, f, p, algorithm="uce") for name, f, p in (("u", 0.3, 0.4), ("v", 0.4, 0.3), ("w", 0.1, 0.1),
                                                                 ("x", 0.2, 0.2), ("y", 0.05, 0.05))]
    objectives = {"forgetting": "max", "preservation": "max"}
    assert kept_trials(esd + uce, objectives, "front") == {"a", "b", "c"}
    assert kept_trials(esd + uce, objectives, "fronts") == {"a", "b", "c", "u", "v", "x"}


def test_keep_weights_is_a_tracking_key_with_four_choices(tmp_path):
    from igmu.errors import UsageError
    from igmu.sweep.file import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodel: world\ntarget: hazard\nalgorithm: esd\ntracking: {keep_weights: all}\n")
    assert load_sweep(path).tracking.keep_weights == "all"
    path.write_text("name: s\nmodel: world\ntarget: hazard\nalgorithm: esd\ntracking: {keep_weights: best}\n")
    with pytest.raises(UsageError, match="front.*fronts.*all.*none"):
        load_sweep(path)


# --- igmu export ---------------------------------------------------------------------------------------

def fake_sweep(root: Path, name: str = "fake", weights_of: dict | None = None) -> Path:
    """A finished sweep's table and sweep.json, no MLflow store; `weights_of` maps trial ids to the
    changed tensors left in their trial folders."""
    rows = [_row("t1", 0.9, 0.2), _row("t2", 0.6, 0.7), _row("t3", 0.2, 0.9), _row("t4", 0.5, 0.5, "early_stopped")]
    write_table(rows, root / name / TABLE_FILE)
    update_sweep_state(root / name / STATE_FILE, objectives={"forgetting": "max", "preservation": "max"})
    for trial_id, changed in (weights_of or {}).items():
        folder = root / name / TRIALS_DIR / trial_id / WEIGHTS_DIR
        folder.mkdir(parents=True)
        save_file(changed, str(folder / CHANGED_FILE))
        (folder / WEIGHTS_MANIFEST).write_text(json.dumps(
            {"algorithm": "esd", "model": "world", "target": "hazard", "seed": 0, "params": {"lr": 1e-3},
             "bytes": (folder / CHANGED_FILE).stat().st_size, "stock_weights": True}))
    return root


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("args, message", [
    (["--trial", "nope"], "unknown trial 'nope' in sweep 'fake'; valid: t1, t2, t3, t4"),
    (["--trial", "t1", "--knee"], "give exactly one of --trial ID and --knee"),
    ([], "give exactly one of --trial ID and --knee"),
    (["--trial", "t3"], "kept no weights"),
    (["--trial", "t4"], "tracking.keep_weights: all"),
], ids=["unknown-trial", "both", "neither", "not-kept", "early-stopped"])
def test_export_errors_are_one_line_with_exit_2(tmp_path, capsys, args, message):
    root = fake_sweep(tmp_path / "results")
    code, err = run_cli(["export", "fake", *args, "--out", str(tmp_path / "out"), "--storage", str(root)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_with_files(tmp_path, capsys):
    root = fake_sweep(tmp_path / "results")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = run_cli(["export", "fake", "--knee", "--out", str(tmp_path / "out"), "--storage", str(root)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "not an empty folder" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_export_of_the_knee_from_its_trial_folder(tmp_path, capsys, world_generator):
    # t2 is the knee of t1, t2, t3 on forgetting and preservation
    name = "conv_in.weight"
    changed = {f"unet.{name}": world_generator.unet.state_dict()[name].cpu() + 0.5}
    root = fake_sweep(tmp_path / "results", weights_of={"t2": changed})
    code, err = run_cli(["export", "fake", "--knee", "--out", str(tmp_path / "out"), "--storage", str(root)], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "igmu_export.json").read_text())
    assert record["trial_id"] == "t2" and record["algorithm"] == "esd" and record["scores"]["forgetting"] == 0.6
    exported = load(str(tmp_path / "out"), device="cpu")
    assert_differs_exactly(world_generator.unet, exported.unet, {name: changed[f"unet.{name}"]})


def assert_differs_exactly(base, exported, changed: dict) -> None:
    """`exported` equals `base` but in `changed`, where it holds those tensors."""
    before, after = base.state_dict(), exported.state_dict()
    assert set(before) == set(after)
    for key, tensor in after.items():
        expected = changed.get(key, before[key])
        assert torch.equal(tensor.cpu(), expected.cpu()), key


# --- end to end: a tiny world sweep keeps its weights, and its knee exports ----------------------

SMALL_BUDGETS = {"small": {"forget": 4, "retain": 4, "related": 2, "paraphrase": 0}}


def write_tiny_sweep(folder: Path) -> Path:
    """Four trials, one report each, scored on wall-clock time only: a single, tie-free objective, so
    `keep_weights: front` keeps exactly the fastest three (the front is the fastest one)."""
    path = folder / "export-tiny.yaml"
    path.write_text(textwrap.dedent("""
        name: export-tiny
        model: world
        target: hazard
        algorithm: esd
        params:
          lr: {loguniform: [1.0e-3, 1.0e-2]}
          steps: 2
          ddim_steps: 2
          batch_size: 1
        search: {sampler: random, num_samples: 4, max_concurrent: 2, seed: 0}
        objectives: {efficiency_seconds: min}
        early_stop: {scheduler: none, eval_every: 2}
        eval: {interim: small, final: small, held_out: none}
        resources: {cpu: 1}
        tracking: {keep_weights: front}
    """))
    return path


@pytest.mark.slow
def test_a_sweep_keeps_its_front_weights_and_exports_its_knee(ray_session, tmp_path, capsys, world_generator):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from igmu.sweep.engine import run_sweep
    from igmu.sweep.file import load_sweep
    from igmu.sweep.tracking import TRIAL_TAG, WEIGHTS_TAG

    storage = tmp_path / "results"
    outcome = run_sweep(load_sweep(write_tiny_sweep(tmp_path)), storage=str(storage), verbose=0,
                        extra_settings={"budget_sizes": SMALL_BUDGETS})
    client = MlflowClient(outcome.tracking_uri)
    runs = children(client, outcome)
    assert len(runs) == 4 and all(r.data.tags["status"] == "finished" for r in runs)
    # Ranked as the results table has them (what the retention policy and `igmu export` read); a
    # degenerate trial (most images unrecognisable, as a tiny sweep's boldest steps can make) is never
    # on the front, so it keeps no weights.
    rows = {row["trial_id"]: row for row in outcome.rows}
    fastest = sorted((r for r in runs if not rows[r.data.tags[TRIAL_TAG]]["val_degenerate"]),
                     key=lambda r: rows[r.data.tags[TRIAL_TAG]]["efficiency_seconds"])
    fastest += [r for r in runs if rows[r.data.tags[TRIAL_TAG]]["val_degenerate"]]
    kept = min(3, sum(not row["val_degenerate"] for row in rows.values()))
    for rank, run in enumerate(fastest):
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "weights" not in artifacts or rank < kept  # never uploaded with the trial's other artifacts
        if rank < kept:
            assert run.data.tags[WEIGHTS_TAG] == "logged" and run.data.metrics["weights_bytes"] > 0
            weights = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
            assert weights == {"weights/changed.safetensors", "weights/manifest.json"}
        else:
            assert run.data.tags[WEIGHTS_TAG] == "not-kept" and "weights" not in artifacts
    parent = client.get_run(outcome.parent_run_id).data
    assert parent.metrics["weights_kept"] == kept and parent.tags["igmu.keep_weights"] == "front"

    knee = fastest[0]
    out = tmp_path / "exported"
    code = main(["export", "export-tiny", "--knee", "--out", str(out), "--storage", str(storage),
                 "--tracking-uri", outcome.tracking_uri])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "igmu_export.json").read_text())
    assert record["trial_id"] == knee.data.tags[TRIAL_TAG] and record["mlflow_run_id"] == knee.info.run_id
    changed_file = client.download_artifacts(knee.info.run_id, "weights/changed.safetensors", str(tmp_path))
    changed = {k[len("unet."):]: v for k, v in load_file(changed_file).items() if k.startswith("unet.")}
    assert changed
    assert_differs_exactly(world_generator.unet, load(str(out), device="cpu").unet, changed)
