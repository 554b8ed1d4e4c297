"""`igmu sweep FILE`: Ray Tune + Optuna + ASHA over one sweep file, every trial tracked in MLflow.

What a sweep writes, and where, is laid out in `igmu.sweep.results`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from igmu.errors import RunFailed, RunInterrupted, UsageError
from igmu.metrics.context import BUDGET_SIZES_ENV
from igmu.sweep import profile
from igmu.sweep.file import GRID_SAMPLER, Distribution, SweepConfig, check_resources, eval_settings
from igmu.sweep.results import (
    EARLY_STOPPED,
    ERROR,
    FINISHED,
    NODE,
    STATE_FILE,
    SWEEP_TAG,
    TABLE_FILE,
    TRIALS_DIR,
    is_uri,
    kept_trials,
    resolve_tracking_uri,
    results_root,
    trial_row,
    update_sweep_state,
    write_table,
)
from igmu.sweep.tracking import MlflowTracker, finish_parent, prompt_datasets, record_weights, start_parent_run


@dataclass
class SweepOutcome:
    name: str
    sweep_dir: Path
    table: Path
    tracking_uri: str
    parent_run_id: str
    rows: list[dict]
    experiment_id: str = ""


def tune_storage(storage: str | None, sweep_dir: Path) -> str:
    """Where Tune keeps the experiment: shared storage when given, so trials resume across nodes."""
    return f"{storage.rstrip('/')}/{sweep_dir.name}" if is_uri(storage) else str(sweep_dir)


def algorithm_steps(config: SweepConfig, name: str) -> int:
    """The most steps a trial of `name` can run in this sweep's space (its ASHA `max_t`)."""
    from igmu.run import resolved_params

    steps = config.algorithms[name].params.get("steps")
    if isinstance(steps, Distribution):
        steps = max(steps.args) if steps.kind in ("choice", "grid") else steps.args[1]
    if steps is None:
        steps = resolved_params(name, {}, sweep_category(config), sweep_kind(config)).get("steps", 1)
    return max(1, int(steps))


def sweep_kind(config: SweepConfig):
    """The kind of generator the sweep's model is, among the kinds its algorithms edit."""
    from igmu.algorithms.base import kinds_edited_by
    from igmu.models.loader import kind_of

    return kind_of(config.model, kinds_edited_by(config.algorithms))


def sweep_category(config: SweepConfig) -> str:
    """The target's category, as every trial's task and the sweep's MLflow tags record it."""
    return sweep_kind(config).category_of(config.target, config.category)


def make_search_alg(config: SweepConfig):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from igmu.sweep.space import optuna_objectives

    search = config.search
    if search.sampler in ("random", "grid"):
        return BasicVariantGenerator(random_state=search.seed, max_concurrent=search.max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    metrics, modes = optuna_objectives(config)
    sampler = (optuna.samplers.TPESampler(seed=search.seed) if search.sampler == "tpe"
               else optuna.samplers.NSGAIISampler(seed=search.seed))
    single = len(metrics) == 1
    searcher = OptunaSearch(metric=metrics[0] if single else metrics, mode=modes[0] if single else modes,
                            sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)


def make_scheduler(config: SweepConfig):
    """ASHA or MO-ASHA (one per algorithm when the sweep has several: see `schedulers`), HyperBand or
    FIFO. `max_t` is the number of reports a trial that runs to the end makes."""
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler

    from igmu.sweep.schedulers import PerAlgorithmASHA, asha, mo_asha
    from igmu.sweep.space import scheduler_metric
    from igmu.sweep.trainable import evaluations

    stop = config.early_stop
    metric, mode = scheduler_metric(config)
    max_t_by_algorithm = {name: evaluations(algorithm_steps(config, name), stop.eval_every)
                          for name in config.algorithms}
    max_t = max(max_t_by_algorithm.values())
    if stop.scheduler == "asha" and len(max_t_by_algorithm) > 1:
        return PerAlgorithmASHA(metric, mode, max_t_by_algorithm, stop.grace_period, stop.reduction_factor)
    if stop.scheduler == "asha":
        return asha(metric, mode, max_t, stop.grace_period, stop.reduction_factor)
    if stop.scheduler == "mo-asha":
        return mo_asha(config.objectives, max_t_by_algorithm, stop.grace_period, stop.reduction_factor)
    if stop.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                                  reduction_factor=stop.reduction_factor)
    return FIFOScheduler()


def trial_settings(config: SweepConfig, sweep_dir: Path, **extra) -> dict:
    """Fixed, JSON-safe settings every trial reads from `config['igmu']`."""
    return {"model": config.model, "target": config.target, "anchor": config.anchor, "seed": config.search.seed,
            "category": sweep_category(config), "kind": sweep_kind(config).name,
            "eval_every": config.early_stop.eval_every, "interim_budget": config.eval.interim,
            "final_budget": config.eval.final, "judges": config.eval.judges, "objectives": list(config.objectives),
            "out_dir": str(sweep_dir / TRIALS_DIR), "cache_dir": str(sweep_dir / "images"),
            # Not read by trials (Ray's OMP_NUM_THREADS caps their threads, igmu.threads), but part of
            # every trial's config: a sweep started with it resumes only with the same keys.
            "threads": max(1, int(config.resources.cpu)), "precision": config.precision, "device": config.device,
            "eval_settings": dataclasses.asdict(eval_settings(config.category, config.prompts, config.precision,
                                                              config.eval)),
            **_budget_sizes_from_env(), **extra}


def _budget_sizes_from_env() -> dict:
    text = os.environ.get(BUDGET_SIZES_ENV)
    return {"budget_sizes": json.loads(text)} if text else {}


def sweep_progress(config: SweepConfig):
    """The progress line beside Tune's table, on the sweep's first objective. With the grid sampler
    the number of trials is the grid's, which only Tune's variant generator knows."""
    from igmu.sweep.watch import SweepProgress

    objective, mode = next(iter(config.objectives.items()))
    total = None if config.search.sampler == GRID_SAMPLER else config.search.num_samples
    return SweepProgress(config.name, objective, mode, total)


# Seconds a given Ray address has to accept a TCP connection: ray.init keeps retrying an address
# where nothing listens for minutes, so a wrong address is refused up front instead.
ADDRESS_TIMEOUT_S = 5.0
# Addresses that name no host: Ray resolves them itself (and fails fast when none is running).
SYMBOLIC_ADDRESSES = ("auto", "local")


def check_ray_address(address: str) -> None:
    """Refuse, within ADDRESS_TIMEOUT_S, an address where no Ray head answers."""
    if address in SYMBOLIC_ADDRESSES:
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        raise UsageError(f"ray address {address!r} is not host:port; valid: auto, host:port, ray://host:port")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as err:
        raise UsageError(f"ray address {address!r}: nothing answers there ({err.strerror or type(err).__name__}); "
                         f"valid: the address of a running Ray cluster, or leave --address and $RAY_ADDRESS "
                         f"unset for a new local Ray") from None


def init_ray(address: str | None) -> None:
    """Join the Ray at `address` (or $RAY_ADDRESS), which must answer; start a new local Ray only when
    neither is given."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
        # WARNING while connecting: Ray's "Connecting to existing Ray cluster" lines would come before
        # any one-line refusal (a GPU request the cluster cannot meet); INFO again after, for Tune.
        ray.init(address=address, logging_level=logging.WARNING)
        logging.getLogger("ray").setLevel(logging.INFO)
    else:
        # "local" always starts a fresh Ray: a bare ray.init() would silently join any
        # `ray start` cluster left running on this machine.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)


def local_gpus() -> int:
    """GPUs a new local Ray would find here (both honour CUDA_VISIBLE_DEVICES)."""
    import torch

    return torch.cuda.device_count()


def last_line(error: BaseException, limit: int = 300) -> str:
    """A trial's error in one line: the last line of its (remote) traceback, the exception itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:limit]


def gpu_capacity() -> float:
    """GPUs the cluster has now, or can grow to: an autoscaling cluster (KubeRay's GPU worker group
    at minReplicas 0) starts with none, and its autoscaler records each group's max in the GCS."""
    import ray
    from ray._private.state import (
        state,  # the same record Ray Train checks before it schedules
    )

    now = float(ray.cluster_resources().get("GPU", 0))
    most = (state.get_max_resources_from_cluster_config() or {}).get("GPU", 0)
    return max(now, float(most))


def judges_service(place: str, config: SweepConfig):
    """With `eval.judges: serve`, the judges app the sweep's model is scored with (chosen by its
    evaluation context class, with the sweep's judges settings), on the sweep's Ray for the sweep's
    duration. One already running, say from a RayService, is used and left running."""
    if place != "serve":
        return contextlib.nullcontext()
    from igmu.metrics.context import context_for
    from igmu.serve.services import service_for

    service = service_for(context_for(sweep_kind(config), config.model))
    evaluation = eval_settings(config.category, config.prompts, config.precision, config.eval)
    return service.shared(service.config(evaluation))


def run_sweep(config: SweepConfig, *, address: str | None = None, storage: str | None = None,
              tracking_uri: str | None = None, resume: bool = False, verbose: int = 1,
              extra_settings: dict | None = None) -> SweepOutcome:
    from mlflow.tracking import MlflowClient
    from ray import tune

    from igmu.sweep.space import to_tune_space
    from igmu.sweep.trainable import SETTINGS_KEY, run_trial

    root = results_root(storage)
    sweep_dir = root / config.name
    uri = resolve_tracking_uri(tracking_uri, config.tracking.uri, root)
    if not (address or os.environ.get("RAY_ADDRESS")):
        # A new local Ray gets this machine's GPUs: refuse a request they cannot meet before starting it.
        check_resources(config, available_gpus=local_gpus())
    init_ray(address)
    check_resources(config, available_gpus=gpu_capacity())
    client = MlflowClient(uri)
    experiment_id, parent = start_parent_run(client, config.tracking.experiment or config.name, config.name,
                                             sweep_dir / STATE_FILE, Path(config.path).read_text())
    update_sweep_state(sweep_dir / STATE_FILE, objectives=dict(config.objectives))
    datasets = prompt_datasets(evaluation_prompts(config), config.target)
    if datasets:
        client.log_inputs(parent, datasets=datasets)
    tracker = MlflowTracker(uri, experiment_id, parent, tags={SWEEP_TAG: config.name, "target": config.target,
                                                              "category": sweep_category(config)},
                            searched=searched_params(config), datasets=datasets)
    space = {**to_tune_space(config), SETTINGS_KEY: trial_settings(config, sweep_dir, **(extra_settings or {}))}
    trainable = tune.with_resources(run_trial, {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    tune_dir = f"{tune_storage(storage, sweep_dir)}/tune"
    if resume and tune.Tuner.can_restore(tune_dir):
        tuner = restored_tuner(tune_dir, trainable, space, config.name)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(search_alg=make_search_alg(config), scheduler=make_scheduler(config),
                                        num_samples=config.search.num_samples,
                                        max_concurrent_trials=config.search.max_concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=tune_storage(storage, sweep_dir),
                                      callbacks=[tracker, sweep_progress(config)],
                                      verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    with judges_service(config.eval.judges, config), driver_system_metrics(uri, parent, resume):
        search_started = time.monotonic()
        with ctrl_c_watch() as interrupted:
            grid = tuner.fit()
        client.log_metric(parent, profile.key(profile.SEARCH), time.monotonic() - search_started)
        if interrupted():
            finish_parent(client, parent, "KILLED")
            raise RunInterrupted(f"sweep {config.name}: stopped with Ctrl-C; finished trials are kept, and "
                                 f"`igmu sweep FILE --resume` continues it")
        rows = result_rows(grid, MlflowClient(uri), experiment_id, parent)
        errors = [result.error for result in grid if result.error]
        held_out_started = time.monotonic()
        held_out_stage(config, rows, space[SETTINGS_KEY], client, experiment_id, parent, tracker.tags)
        client.log_metric(parent, profile.key(profile.HELD_OUT), time.monotonic() - held_out_started)
    table = write_table(rows, sweep_dir / TABLE_FILE)
    # Only now is the front known, so only now can the retention policy pick whose weights to keep.
    record_weights(client, parent, rows, kept_trials(rows, config.objectives, config.tracking.keep_weights),
                   sweep_dir / TRIALS_DIR, config.tracking.keep_weights)
    if rows and all(row["status"] == ERROR for row in rows):
        finish_parent(client, parent, "FAILED")
        raise RunFailed(f"sweep {config.name}: all {len(rows)} trials failed; first error: "
                        f"{last_line(errors[0]) if errors else 'unknown'}; results: {table}")
    finish_parent(client, parent)
    return SweepOutcome(config.name, sweep_dir, table, uri, parent, rows, experiment_id)


def restored_tuner(tune_dir: str, trainable, space: dict, name: str):
    """Tune's restore of the sweep, refusing in one line a sweep whose trials were configured
    differently (started by another igmu version, or its file changed since)."""
    from ray import tune

    try:
        return tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=space)
    except ValueError as err:
        if "param_space" not in str(err):
            raise
        raise UsageError(f"sweep {name}: --resume needs the trial settings it started with, and this igmu or "
                         f"sweep file gives other ones; valid: resume with the igmu version and file it started "
                         f"with, or run it again without --resume") from None


@contextlib.contextmanager
def ctrl_c_watch():
    """Yields a function that says, once Tune returned, whether Ctrl-C stopped it. Tune ends a stopped
    search normally (its unfinished trials look stopped early), so the only sign is its own SIGINT
    handler: installed on the main thread for the search, it puts back the one it found when Ctrl-C
    arrives and stays when the search ends by itself (Ray is pinned in pyproject.toml). Either way,
    the handler in place before the search is in place again after it."""
    before = signal.getsignal(signal.SIGINT)
    watched = threading.current_thread() is threading.main_thread() and \
        not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    state = {}
    try:
        yield lambda: state.get("interrupted", False)
    finally:
        state["interrupted"] = watched and signal.getsignal(signal.SIGINT) is before
        if watched:
            signal.signal(signal.SIGINT, before)


def held_out_stage(config: SweepConfig, rows: list[dict], settings: dict, client, experiment_id: str,
                   parent: str, tags: dict) -> None:
    """Re-score the selected trials on the test split and run each algorithm at its defaults (see
    `igmu.sweep.held_out`), recording both in MLflow and beside the results table."""
    from igmu.sweep.held_out import DEFAULTS_DIR, TEST_SCORECARD, run_held_out, write_defaults
    from igmu.sweep.tracking import record_defaults, record_test_scores

    selected = kept_trials(rows, config.objectives, config.eval.held_out)
    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    cards = run_held_out(rows, selected, settings, list(config.algorithms), resources, config.eval.defaults)
    sweep_dir = Path(settings["out_dir"]).parent
    record_test_scores(client, rows, sweep_dir / TRIALS_DIR, TEST_SCORECARD)
    run_ids = record_defaults(client, experiment_id, parent, cards, sweep_dir / DEFAULTS_DIR, tags)
    write_defaults(cards, sweep_dir, run_ids)


def searched_params(config: SweepConfig) -> dict[str, list[str]]:
    """Per algorithm, the hyperparameters the sweep searches (a distribution, not a fixed value)."""
    return {name: [key for key, value in space.params.items() if isinstance(value, Distribution)]
            for name, space in config.algorithms.items()}


def evaluation_prompts(config: SweepConfig):
    """The prompt sets every trial is evaluated on, as the evaluation context of the sweep's model lists them."""
    from igmu.metrics.context import context_for

    kind = sweep_kind(config)
    settings = eval_settings(config.category, config.prompts, config.precision, config.eval)
    return context_for(kind).evaluation_prompts(kind, config.target, settings)


@contextlib.contextmanager
def driver_system_metrics(tracking_uri: str, parent_run_id: str, resume: bool):
    """MLflow's system metrics (CPU, memory, disk, network, GPU) of the driver's machine, logged to the
    parent run while the sweep runs. MLflow's monitor writes to any run id it is given, so no fluent
    `mlflow.start_run` is needed; it samples every $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds
    (10 by default) and, on a resumed sweep, continues the parent's steps instead of restarting at 0."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(parent_run_id, resume_logging=resume, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()


def result_rows(grid, client, experiment_id: str, parent_run_id: str) -> list[dict]:
    """One row per trial, joined with its MLflow run (found by tag, so resumed sweeps join too)."""
    from igmu.models.loader import kind_named
    from igmu.run import resolved_params
    from igmu.sweep.space import trial_params
    from igmu.sweep.tracking import PARENT_TAG, TRIAL_TAG
    from igmu.sweep.trainable import ENVIRONMENT, FINAL, SETTINGS_KEY

    runs = {r.data.tags.get(TRIAL_TAG): r for r in client.search_runs(
        [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10_000)}
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        algorithm, overrides = trial_params(result.config)
        settings = result.config[SETTINGS_KEY]
        params = resolved_params(algorithm, overrides, settings.get("category"), kind_named(settings.get("kind")))
        run = runs.get(metrics.get("trial_id"))
        status = ERROR if result.error else (FINISHED if metrics.get(FINAL) else EARLY_STOPPED)
        rows.append(trial_row(metrics.get("trial_id"), algorithm, params, status, metrics,
                              run.info.run_id if run else None, (metrics.get(ENVIRONMENT) or {}).get(NODE)))
    return rows
