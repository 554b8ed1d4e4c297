"""The CLI: JSON output shapes and the one-line, exit-code-2 contract for bad input."""

import json
import subprocess
import sys

import pytest

from igmu.models.image_to_image import WorldImageToImage


def igmu(*args):
    return subprocess.run([sys.executable, "-m", "igmu.cli", *args], capture_output=True, text=True)


def test_concepts_json_shape():
    result = igmu("world", "concepts", "--json")
    assert result.returncode == 0
    rows = json.loads(result.stdout)
    assert {"name", "category", "related", "synonyms", "translations"} == set(rows[0])
    assert {r["category"] for r in rows} == {"object", "style", "sensitive", "character"}


def test_every_group_has_help():
    for args in ([], ["world"]):
        result = igmu(*args, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["world", "prompts", "bal"], "did you mean ball"),
    (["world", "check", "--model", "no/such/dir"], "does not exist"),
    (["world", "check", "--judge-images", "-3"], "--judge-images"),
    (["world", "nope"], "nope"),
    (["eval", "--target", "bal"], "did you mean ball"),
    (["eval", "--target", "ball", "--budget", "medium"], "valid: small, full"),
    (["eval", "--target", "ball", "--model", "missing/dir/x"], "does not exist"),
    (["run", "--algorithm", "esdx", "--target", "ball"], "did you mean esd"),
    (["run", "--algorithm", "esd", "--target", "ball", "--set", "eta=2"], "unknown hyperparameter 'eta'"),
    (["run", "--algorithm", "esd", "--target", "ball", "--set", "lr=7"], "out of range"),
    (["run", "--algorithm", "esd", "--target", "ball", "--set", "lr"], "not key=value"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_code_2(args, needle):
    result = igmu(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_corrupt_model_weights_are_one_line_exit_2(tmp_path):
    import shutil

    from igmu.models.text_to_image import world_model_dir

    shutil.copytree(world_model_dir(), tmp_path / "m")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    result = igmu("eval", "--target", "ball", "--model", str(tmp_path / "m"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot load model folder" in result.stderr


def test_algorithms_lists_the_registry():
    from igmu.algorithms.base import ALGORITHMS

    rows = json.loads(igmu("algorithms", "--json").stdout)
    assert [r["name"] for r in rows] == sorted(ALGORITHMS)
    assert all(r["hyperparameters"] and r["paper"] for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["esd"]["official_defaults"]["lr"] == 1e-5 and "official_category_defaults" in by_name["esd"]


TINY_RUN = {"esd": ["steps=2", "ddim_steps=4"], "salun": ["steps=2", "forget_images=4", "retain_images=4"],
            "uce": [], "ca": ["steps=2", "anchor_images=4"],
            "erasediff": ["steps=2", "forget_images=4", "retain_images=4"],
            "rece": ["epochs=2", "preserve_prompts=10"],
            "concept-prune": ["sampler_steps=4", "prompts=4"],
            "fmn": ["steps=2", "forget_images=4"],
            "mace": ["steps=2", "forget_images=4", "preserve_prompts=10"],
            "sdd": ["steps=2", "ddim_steps=4"],
            "receler": ["steps=2", "ddim_steps=4", "advrs_iters=2"],
            "sld": [],
            "sa": ["steps=2", "batch_size=2", "anchor_images=4", "retain_images=4", "fisher_timesteps=2",
                   "fisher_pass_timesteps=2"],
            "scissorhands": ["steps=2", "batch_size=2", "forget_images=4", "retain_images=4", "prune_num=2"],
            "spm": ["steps=2", "batch_size=2", "max_denoising_steps=4", "warmup_steps=0"],
            "advunlearn": ["steps=2", "ddim_steps=4", "warmup_steps=0", "attack_steps=1"],
            **{name: ["steps=2", "batch_size=4", "forget_images=4", "retain_images=4"]
               for name in ("i2i", "i2i-max-loss", "i2i-noisy-label", "i2i-retain-label", "i2i-random-encoder")}}
# Where a saved run keeps the edited weights, by the kind of generator the algorithm edits.
SAVED_WEIGHTS = {"world": "model/unet/diffusion_pytorch_model.safetensors", "i2i": "model/model.safetensors",
                 "sampler": "model/guidance.json"}


# The small budget shrunk further: these runs check the path, not the scores.
TINY_SMALL_BUDGET = {"small": {"forget": 6, "retain": 8, "related": 4, "paraphrase": 0}}


@pytest.mark.parametrize("name", sorted(TINY_RUN))
@pytest.mark.slow
def test_run_end_to_end_saves_model_scorecard_and_grid(name, tmp_path, capsys, monkeypatch):
    """`igmu run` as a user types it, in this process (a subprocess per algorithm would spend most of
    its time importing the libraries again)."""
    from igmu.algorithms.base import ALGORITHMS
    from igmu.cli.main import main
    from igmu.metrics.context import BUDGET_SIZES_ENV

    assert set(TINY_RUN) == set(ALGORITHMS), "every registered algorithm needs an end-to-end run here"
    monkeypatch.setenv(BUDGET_SIZES_ENV, json.dumps(TINY_SMALL_BUDGET))
    sets = [arg for pair in TINY_RUN[name] for arg in ("--set", pair)]
    code = main(["run", "--algorithm", name, "--target", "hazard", "--budget", "small", "--json",
                 "--out", str(tmp_path / "out"), *sets])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    card = json.loads(captured.out)
    assert card["budget"] == "small"
    assert set(card["aspects"]) == {"forgetting", "preservation"}
    kind = "i2i" if WorldImageToImage in ALGORITHMS[name].generator_kinds else "world"
    if ALGORITHMS[name].edits_sampler:  # no weight changes; its cost is every later image's sampling
        assert card["efficiency"]["changed_bytes"] == 0 and card["efficiency"]["sampling_overhead"] > 0
        kind = "sampler"
    else:
        assert card["efficiency"]["changed_bytes"] > 0 and card["efficiency"]["seconds"] > 0
    # A result no model folder can hold (Receler's erasers) is saved without one.
    saved = () if ALGORITHMS[name].unsaved_reason else (SAVED_WEIGHTS[kind],)
    for path in (*saved, "changed.safetensors", "scorecard.json", "config.json", "grid.png"):
        assert (tmp_path / "out" / path).is_file(), path
    assert (tmp_path / "out" / "model").exists() == (not ALGORITHMS[name].unsaved_reason)
    assert json.loads((tmp_path / "out" / "scorecard.json").read_text())["aspects"] == card["aspects"]


def test_the_cli_choices_match_the_layers_below():
    """The CLI keeps its own copies (importing these loads torch); they must not drift."""
    from igmu.cli import options
    from igmu.metrics.base import BUDGETS
    from igmu.models.text_to_image import SCHEDULERS
    from igmu.prompts import SPLITS

    assert options.BUDGETS == tuple(BUDGETS)
    assert options.SPLITS == tuple(SPLITS)
    assert options.SCHEDULERS == tuple(SCHEDULERS)


@pytest.mark.parametrize("args, needle", [
    (["eval", "--target", "ball", "--budget", "medium"], "'medium'; valid: small, full"),
    (["run", "--algorithm", "uce", "--target", "ball", "--budget", "smal"], "(did you mean small?); valid: small, full"),
    (["eval", "--target", "ball", "--split", "tst"], "valid: validation, test"),
    (["eval", "--target", "ball", "--scheduler", "fastest"], "valid: ddim, pndm, euler, dpm, ddpm"),
    (["results", "some-sweep", "--format", "xml"], "valid: parquet, csv, json"),
    (["world", "build", "--only", "vae"], "valid: judges, generator, i2i"),
])
def test_fixed_sets_are_choices_refused_in_one_line(capsys, args, needle):
    from igmu.cli.main import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and err.startswith("igmu: error: "), err


def test_from_run_on_a_missing_store_is_one_line_and_creates_nothing(capsys, tmp_path, monkeypatch):
    from igmu.cli.main import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = tmp_path / "results"
    assert main(["eval", "--from-run", "0" * 32, "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow store at" in err and err.startswith("igmu: error: "), err
    assert not storage.exists()


def test_long_commands_take_quiet():
    from igmu.cli.main import cli

    long_commands = [cli.commands[name] for name in ("eval", "run", "sweep", "export")]
    long_commands.append(cli.commands["world"].commands["build"])
    for command in long_commands:
        assert "--quiet" in {opt for param in command.params for opt in param.opts}, command.name


@pytest.mark.parametrize("args", [["sweep", "sweeps/salun.yaml", "--address", "127.0.0.1:1"],
                                  ["serve", "status", "--address", "127.0.0.1:1"],
                                  ["serve", "stop", "--address", "ray://127.0.0.1:1"]])
def test_a_ray_address_that_does_not_answer_fails_fast_in_one_line(args):
    import time

    started = time.monotonic()
    result = igmu(*args)
    assert result.returncode == 2, result.stderr
    assert "nothing answers there" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert time.monotonic() - started < 30  # it used to retry for minutes
