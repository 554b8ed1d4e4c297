"""`igmu sweep` refuses what cannot work in one line, before it starts anything, and a sweep whose
every trial failed ends with a non-zero exit and a one-line summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from test_sweep import TINY_BUDGETS

# Each runs `igmu sweep` in a subprocess that loads torch.
pytestmark = pytest.mark.slow

# Refusals come before Ray or any model loads: well inside this.
REFUSAL_S = 30


def igmu_sweep(sweep_file, env: dict, *args) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "igmu.cli", "sweep", str(sweep_file), *args], env=env,
                            capture_output=True, text=True, timeout=600)
    return result, time.monotonic() - started


def sweep_text(model: str, target: str = "nudity", eval_extra: str = "") -> str:
    return textwrap.dedent(f"""
        name: fail-fast
        model: {model}
        target: {target}
        algorithm: esd
        params: {{lr: {{loguniform: [1.0e-4, 1.0e-2]}}, steps: 2, ddim_steps: 4, batch_size: 2}}
        search: {{sampler: random, num_samples: 1, max_concurrent: 1, seed: 0}}
        early_stop: {{scheduler: none, eval_every: 2}}
        resources: {{cpu: 1}}
        eval: {{defaults: false, held_out: none{eval_extra}}}
    """)


@pytest.mark.parametrize("model", ["/nonexistent/model", "someorg/not-in-the-cache"])
def test_a_model_that_cannot_be_loaded_is_refused_before_ray_starts(model, tmp_path, tiny_clip_dir):
    sweep = tmp_path / "sweep.yaml"
    # A CLIP judge that loads, so that the model is the only thing wrong with the file.
    sweep.write_text(sweep_text(model, eval_extra=f", clip_model: {tiny_clip_dir}"))
    results = tmp_path / "results"
    env = {**os.environ, "IGMU_RESULTS": str(results), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}  # nothing is cached there
    result, seconds = igmu_sweep(sweep, env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "model" in result.stderr and model in result.stderr, result.stderr
    assert "Ray" not in result.stderr and not results.exists()  # nothing started, nothing written
    assert seconds < REFUSAL_S


def test_a_gpu_request_this_machine_cannot_meet_is_one_line(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(sweep_text("world", "hazard").replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 1}"))
    results = tmp_path / "results"
    env = {**os.environ, "IGMU_RESULTS": str(results), "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU machine
    env.pop("RAY_ADDRESS", None)
    result, seconds = igmu_sweep(sweep, env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "resources.gpu" in result.stderr, result.stderr
    assert not results.exists() and seconds < REFUSAL_S


def test_a_sweep_whose_every_trial_fails_exits_1_with_a_one_line_summary(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(sweep_text("world", "hazard"))
    # Budgets no evaluation accepts: every trial raises at its first evaluation, on every retry.
    broken = {name: {**sizes, "no_such_field": 1} for name, sizes in TINY_BUDGETS.items()}
    env = {**os.environ, "IGMU_RESULTS": str(tmp_path / "results"), "IGMU_BUDGET_SIZES": json.dumps(broken),
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    env.pop("RAY_ADDRESS", None)
    result, _ = igmu_sweep(sweep, env, "--quiet")
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("igmu: error: sweep fail-fast: all 1 trials failed; first error: "), last
    assert "no_such_field" in last and "results.parquet" in last
