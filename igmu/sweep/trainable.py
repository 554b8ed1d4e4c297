"""The Tune trainable: one top-level function, a pure function of its config, so Tune can run it anywhere.

A trial unlearns, runs the small evaluation every `eval_every` steps and reports it with a
checkpoint (so ASHA/HyperBand can stop it and a crashed trial resumes bit-for-bit), and replaces its
last interim evaluation by the full five-aspect scorecard. It never writes to MLflow: the driver is
the only writer (see `igmu.sweep.tracking`), so concurrent trials cannot lock the store.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
from ray import tune

from igmu.algorithms.loop import run_unlearning
from igmu.metrics.cache import ImageCache
from igmu.metrics.context import Budget, EvalSettings, context_for
from igmu.metrics.scorecard import build_context, scorecard
from igmu.provenance import environment_tags
from igmu.run import build_unlearner, changed_since, load_model_for, module_states, peak_memory_mb, sampling_cost
from igmu.sweep import profile
from igmu.sweep.profile import PhaseClock
from igmu.sweep.results import (
    CHANGED_FILE,
    DEGENERATE,
    HMEAN,
    NODE,
    UNRECOGNISABLE_SHARE,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    interval_keys,
)
from igmu.sweep.space import trial_params

SETTINGS_KEY = "igmu"
# Marks the report that carries the full scorecard. Not "done": Tune reserves that result key.
FINAL = "final"
STATE_FILE = "state.pt"
# Report keys: the last step's unlearning losses (`loss_<name>`), every step's losses since the previous
# report (the driver logs them as per-step curves), and the worker's code and machine record.
LOSS_PREFIX = "loss_"
LOSS_STEPS = "loss_steps"
ENVIRONMENT = "environment"


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def run_trial(config: dict) -> None:
    settings = config[SETTINGS_KEY]
    fail_once_marker = settings.get("fail_once_marker")
    algorithm, overrides = trial_params(config)
    clock = PhaseClock()
    with clock.phase(profile.SETUP):
        evaluation = EvalSettings(**settings.get("eval_settings", {}))
        precision = settings.get("precision", "fp32")
        device = settings.get("device")
        generator = load_model_for(algorithm, settings["model"], device=device, precision=precision)
        unlearner = build_unlearner(algorithm, generator, settings["target"], overrides, seed=settings["seed"],
                                    category=evaluation.category, anchor=settings.get("anchor"),
                                    prompts=evaluation.prompts)
        original = load_model_for(algorithm, settings["model"], device=device, precision=precision)
        judges = trial_judges(settings.get("judges", "local"), generator, evaluation)
        cache = ImageCache(settings.get("cache_dir"))
        generator.sample_cache = cache  # the training images every trial of the sweep draws alike
        unlearner.prepare()
        elapsed = _restore(unlearner, clock)
    trial_dir = Path(settings["out_dir"]) / tune.get_context().get_trial_id()
    eval_every = max(1, int(settings["eval_every"]))
    started = time.time() - elapsed
    # Losses of the steps since the last report: reports happen only at evaluations (ASHA counts
    # reports), so each one carries the curve between them.
    pending: list[dict] = []
    # Unlearning steps are timed as the span between one step callback and the next.
    last_callback = [time.perf_counter()]

    def evaluate(budget: str, final: bool) -> dict:
        generated_before, evaluation_started = cache.generation_seconds, time.perf_counter()
        ctx = build_context(generator, settings["target"], trial_budget(settings, budget), original=original,
                            judges=judges, cache=cache, seed=settings["seed"], settings=evaluation)
        card = scorecard(ctx)
        generation = cache.generation_seconds - generated_before
        clock.add(profile.FINAL_GENERATION if final else profile.INTERIM_GENERATION, generation)
        clock.add(profile.FINAL_JUDGING if final else profile.INTERIM_JUDGING,
                  time.perf_counter() - evaluation_started - generation)
        return card, ctx

    def on_step(step: int, losses: dict) -> None:
        clock.add(profile.STEPS, time.perf_counter() - last_callback[0])
        pending.append({"step": step, **{name: float(value) for name, value in losses.items()}})
        last = step >= unlearner.total_steps
        if step % eval_every and not last:
            last_callback[0] = time.perf_counter()
            return
        if fail_once_marker and not Path(fail_once_marker).exists():
            Path(fail_once_marker).write_text("failed once")
            raise RuntimeError("injected failure (test hook)")
        generator.train_mode(False)
        card, ctx = evaluate(settings["final_budget"] if last else settings["interim_budget"], final=last)
        generator.train_mode(True)
        metrics = {**_metrics(card, step, last), **loss_entries(pending),
                   ENVIRONMENT: {**environment_tags(), **node_record()}}
        pending.clear()
        for objective in settings["objectives"]:  # searchers need every objective in every report
            metrics.setdefault(objective, math.nan)
        if last:
            with clock.phase(profile.ARTIFACTS):
                metrics.update(_finish(card, ctx, unlearner, trial_dir, time.time() - started))
                write_weights(trial_dir / WEIGHTS_DIR, unlearner, original, settings)
        _report(metrics, unlearner, time.time() - started, clock)
        last_callback[0] = time.perf_counter()

    if unlearner.step_index >= unlearner.total_steps:
        # Restored from its final checkpoint: the driver died after the final report was checkpointed
        # but before Tune recorded the trial as done. No step is left to run, so report the final
        # scorecard again (deterministic), or the trial would end with no final result at all.
        on_step(unlearner.step_index, {})
        return
    run_unlearning(unlearner, on_step=on_step, prepared=True)


def node_record() -> dict[str, str]:
    """The Ray node running this report: its id (unique per `ray start`, so it tells apart nodes that
    share a machine), IP and host name. Sent with every report, since a retried trial may move."""
    import ray

    return {NODE: ray.get_runtime_context().get_node_id(), f"{NODE}.ip": ray.util.get_node_ip_address(),
            f"{NODE}.hostname": socket.gethostname()}


def trial_budget(settings: dict, budget: str) -> Budget | str:
    sizes = settings.get("budget_sizes", {}).get(budget)  # smaller budgets for tests and smoke runs
    return Budget(budget, **sizes) if sizes else budget


def evaluation_model(settings: dict, algorithm: str):
    """The sweep's model, loaded as a trial loads it, and a function giving any state of it the final
    scorecard a trial's evaluation settings give (used to score trials again after the search)."""
    evaluation = EvalSettings(**settings.get("eval_settings", {}))
    device, precision = settings.get("device"), settings.get("precision", "fp32")
    generator = load_model_for(algorithm, settings["model"], device=device, precision=precision)
    original = load_model_for(algorithm, settings["model"], device=device, precision=precision)
    judges = trial_judges(settings.get("judges", "local"), generator, evaluation)
    cache = ImageCache(settings.get("cache_dir"))

    def score(model) -> dict:
        model.train_mode(False)
        ctx = build_context(model, settings["target"], trial_budget(settings, settings["final_budget"]),
                            original=original, judges=judges, cache=cache, seed=settings["seed"],
                            settings=evaluation)
        return scorecard(ctx)

    return generator, score


def loss_entries(steps: list[dict]) -> dict:
    """The report's loss keys: the latest step's losses as scalars and every step's as a list."""
    latest = {f"{LOSS_PREFIX}{name}": value for name, value in (steps[-1] if steps else {}).items() if name != "step"}
    return {**latest, LOSS_STEPS: [dict(entry) for entry in steps]}


def trial_judges(place: str, generator, evaluation: EvalSettings):
    """The judges a trial scores with, loaded once per trial: its own copy, or those of the Ray Serve
    app that serves its evaluation context (chosen by the context class, see igmu.serve.services)."""
    context = context_for(generator.kind, generator.source)
    if place == "serve":
        from igmu.serve.services import service_for

        return service_for(context).judges(evaluation)
    return context.default_judges(generator.device, evaluation)


def _metrics(card: dict, step: int, final: bool) -> dict:
    scores = {aspect: float(result["score"]) for aspect, result in card["aspects"].items()}
    metrics = {"step": step, FINAL: final, **scores,
               HMEAN: harmonic_mean(scores.get("forgetting", 0.0), scores.get("preservation", 0.0)),
               **degeneracy_metrics(card)}
    if "robustness" in card["aspects"]:
        metrics["pre_asr"] = card["aspects"]["robustness"]["pre_asr"]
        metrics["post_asr"] = card["aspects"]["robustness"]["post_asr"]
    return {**metrics, **interval_entries(card)}


def interval_entries(card: dict) -> dict:
    """`<aspect>_ci_low` and `<aspect>_ci_high` for every aspect of the scorecard that has an interval."""
    entries = {}
    for aspect, result in card["aspects"].items():
        if result.get("interval") is not None:
            low, high = interval_keys(aspect)
            entries[low], entries[high] = (float(end) for end in result["interval"])
    return entries


def degeneracy_metrics(card: dict) -> dict:
    """The scorecard's degenerate flag as 0/1 and its unrecognisable share (NaN where not judged)."""
    share = card.get("unrecognisable_share")
    return {DEGENERATE: int(bool(card.get("degenerate"))),
            UNRECOGNISABLE_SHARE: math.nan if share is None else float(share)}


def _finish(card: dict, ctx, unlearner, trial_dir: Path, seconds: float) -> dict:
    """Write the trial's scorecard, config and image grid for the driver to log as artifacts (its
    weights are written beside them by `write_weights`, and logged, or not, at the end of the sweep)."""
    from igmu.metrics.grid import save_grid

    trial_dir.mkdir(parents=True, exist_ok=True)
    efficiency = {"efficiency_seconds": round(seconds, 2),
                  "efficiency_peak_memory_mb": round(peak_memory_mb(unlearner.generator.device), 1)}
    card = {**card, "algorithm": unlearner.name, "params": dict(vars(unlearner.params)),
            "efficiency": {**efficiency, **sampling_cost(unlearner)}}
    (trial_dir / "scorecard.json").write_text(json.dumps(card, indent=2, default=str))
    save_grid(ctx, trial_dir / "grid.png")
    return {**efficiency, "artifacts_dir": str(trial_dir)}


def write_weights(folder: Path, unlearner, original, settings: dict) -> dict:
    """The trial's changed tensors against the original model, and a manifest saying what they are.

    Written by every finished trial; the driver decides at the end of the sweep which ones MLflow keeps
    (`tracking.keep_weights`), since only then is the front known.
    """
    from safetensors.torch import save_file

    changed = changed_since(module_states(original, unlearner.trainable_modules()), unlearner)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in changed.items()}, str(folder / CHANGED_FILE))
    manifest = {"algorithm": unlearner.name, "model": settings["model"], "target": settings["target"],
                "seed": unlearner.seed, "params": dict(vars(unlearner.params)),
                "tensors": len(changed), "bytes": (folder / CHANGED_FILE).stat().st_size,
                "stock_weights": type(unlearner).stock_weights,
                "guidance": rule.config() if (rule := getattr(unlearner.generator, "guidance_rule", None)) else None}
    (folder / WEIGHTS_MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _report(metrics: dict, unlearner, elapsed: float, clock: PhaseClock) -> None:
    """Checkpoint and report. The checkpoint's writing is timed as such; handing the report to Tune is
    timed as `report` (Tune persists the checkpoint and waits for the driver to take the result)."""
    with tempfile.TemporaryDirectory() as folder:
        with clock.phase(profile.CHECKPOINT):
            torch.save({"unlearner": unlearner.state_dict(), "elapsed": elapsed, "profile": dict(clock.seconds)},
                       os.path.join(folder, STATE_FILE))
        measured = clock.report()
        with clock.phase(profile.REPORT):
            tune.report({**metrics, **measured}, checkpoint=tune.Checkpoint.from_directory(folder))


def _restore(unlearner, clock: PhaseClock) -> float:
    """Resume from the trial's latest checkpoint, if Tune handed one back; returns elapsed seconds and
    adds the checkpointed phase times to `clock`."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0.0
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), weights_only=True)
    unlearner.load_state_dict(state["unlearner"])
    for phase, seconds in state.get("profile", {}).items():
        clock.add(phase, float(seconds))
    return float(state["elapsed"])


def evaluations(total_steps: int, eval_every: int) -> int:
    """How many reports a trial that runs to the end makes (ASHA's max_t)."""
    return max(1, math.ceil(total_steps / max(1, eval_every)))
