"""The real-image judges (tiny CLIP, real NudeNet) on a real Ray Serve application: served image and
text features and detections equal the in-process ones bit for bit, also when Serve merges the
requests of concurrent clients into one batch; a scorecard computed through `ServedRealJudges`
equals the in-process one; a tiny-SD sweep with `eval.judges: serve` scores every finished trial."""

import contextlib
import json
import threading

import pytest
import torch
from sweep_helpers import children
from test_real_eval import SD_SWEEP, TINY_SIZES

from igmu.errors import UsageError

MAX_IMAGES = 16
TEST_SETTINGS = {
    "max_images_per_request": MAX_IMAGES,
    "max_batch_size": 64,
    "batch_wait_timeout_s": 0.2,  # generous, so that concurrent requests surely meet in one batch
    "deployment": {"max_ongoing_requests": 64, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
}


def random_images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def real_settings(clip_dir, **extra) -> dict:
    return {**TEST_SETTINGS, "judges": {"clip": {"model": str(clip_dir)}}, **extra}


@pytest.fixture(scope="module")
def local_judges(tiny_clip_dir):
    from igmu.models.real_judge_config import RealJudgesConfig
    from igmu.models.real_judge_set import RealJudges

    pytest.importorskip("nudenet", reason="the optional 'judges' extra is not installed")
    return RealJudges(RealJudgesConfig.model_validate({"clip": {"model": str(tiny_clip_dir)}}))


@pytest.fixture(scope="module")
def real_app(ray_session, tiny_clip_dir):
    from ray import serve

    from igmu.serve import REAL_APP_NAME
    from igmu.serve.config import load_real_serve_config
    from igmu.serve.control import deploy_judges, stop_judges

    deploy_judges(load_real_serve_config(None, real_settings(tiny_clip_dir)))
    yield
    stop_judges(REAL_APP_NAME)
    serve.shutdown()


def test_clip_image_features_do_not_depend_on_the_batch(local_judges):
    clip = local_judges.clip
    images = random_images(21)
    whole = clip.image_features(images)
    assert whole.shape == (21, clip.feature_dim)
    for start, end in [(0, 5), (5, 21), (3, 4)]:
        assert torch.equal(clip.image_features(images[start:end]), whole[start:end])
    beside_others = clip.image_features(torch.cat([random_images(7, seed=1), images[:9]]))
    assert torch.equal(beside_others[7:], whole[:9])
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)  # a replica may get fewer CPUs than a trial
    try:
        assert torch.equal(clip.image_features(images[2:6]), whole[2:6])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("override, needle", [
    ({"judges": {"nudity": {"threshold": 2}}}, "judges.nudity.threshold: 2 is not valid"),
    ({"judges": {"clip": {"modle": "x"}}}, "judges.clip.modle: unknown key; valid: model, templates"),
    ({"max_images_per_request": 128}, "max_images_per_request: 128 exceeds max_batch_size 64"),
    ({"route_prefix": "real"}, "route_prefix: 'real' is not a route"),
    ({"judges_dir": "/tmp"}, "judges_dir: unknown key"),
])
def test_bad_real_judges_serve_settings_are_one_line_errors(override, needle):
    from igmu.serve.config import load_real_serve_config

    with pytest.raises(UsageError) as caught:
        load_real_serve_config(None, override)
    message = str(caught.value)
    assert needle in message and "\n" not in message and "real_judges.yaml" in message, message


def test_a_missing_clip_model_is_refused_before_deployment(tmp_path):
    from igmu.serve.config import load_real_serve_config
    from igmu.serve.control import check_real_judges

    pytest.importorskip("nudenet", reason="the optional 'judges' extra is not installed")
    config = load_real_serve_config(None, {"judges": {"clip": {"model": str(tmp_path / "no-clip")}}})
    with pytest.raises(UsageError) as caught:
        check_real_judges(config)
    assert "not available locally" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_served_features_and_detections_equal_in_process(real_app, local_judges):
    from igmu.models.real_judge_config import RealJudgesConfig
    from igmu.serve.real_client import ServedRealJudges

    served = ServedRealJudges()
    images = random_images(2 * MAX_IMAGES + 3, seed=2)  # more than a request holds: the client splits
    assert torch.equal(served.clip.image_features(images), local_judges.clip.image_features(images))
    texts = ["a photo of a church", "a painting in the style of Van Gogh", "x"]
    assert torch.equal(served.clip.text_features(texts), local_judges.clip.text_features(texts))
    assert served.clip.logit_scale == local_judges.clip.logit_scale
    assert served.nudenet.detect(images) == local_judges.nudenet.detect(images)
    for name in ("probs", "features"):
        assert torch.equal(served.nudenet.predict(images)[name], local_judges.nudenet.predict(images)[name])
        assert torch.equal(served.category_judge("object", "church").predict(images)[name],
                           local_judges.category_judge("object", "church").predict(images)[name])
    assert served.settings(uses_nudenet=True) == local_judges.settings(uses_nudenet=True)
    with pytest.raises(UsageError, match="the served real judges run CLIP") as caught:
        ServedRealJudges(RealJudgesConfig.model_validate({"clip": {"model": "other/clip"}}))
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="judges rejected the request: images must be float32"):
        served.client.call("image_features", images.numpy().astype("float64"))


@pytest.mark.slow
def test_concurrent_requests_share_a_batch_and_keep_their_features(real_app, local_judges):
    from igmu.serve.real_client import ServedRealJudges

    served = ServedRealJudges()
    before = served.client.call("stats")
    parts = [random_images(n, seed=10 + n) for n in (3, 5, 6, 7)]
    results = [None] * len(parts)

    def score(i: int) -> None:
        results[i] = served.clip.image_features(parts[i])

    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for part, result in zip(parts, results):
        assert torch.equal(result, local_judges.clip.image_features(part))
    stats = served.client.call("stats")
    assert stats["requests"] - before["requests"] == len(parts)
    assert stats["batches"] - before["batches"] < len(parts), stats  # some requests shared a forward


@pytest.mark.slow
def test_a_scorecard_through_served_judges_equals_the_in_process_one(real_app, local_judges, tiny_sd_dir,
                                                                     tiny_clip_dir):
    from igmu.metrics.cache import ImageCache
    from igmu.metrics.context import Budget, EvalSettings
    from igmu.metrics.scorecard import build_context, scorecard
    from igmu.models.loader import load
    from igmu.serve.real_client import ServedRealJudges

    model, original = load(str(tiny_sd_dir), device="cpu"), load(str(tiny_sd_dir), device="cpu")
    settings = EvalSettings(category="nudity", steps=2, clip_model=str(tiny_clip_dir))
    budget = Budget("full", **TINY_SIZES["full"])
    cache = ImageCache()  # shared: both scorecards judge the very same images

    def card(judges) -> dict:
        ctx = build_context(model, "nudity", budget, original=original, judges=judges, cache=cache,
                            settings=settings)
        return json.loads(json.dumps(scorecard(ctx), default=str))

    in_process = card(local_judges)
    assert list(in_process["aspects"]) == ["forgetting", "preservation", "quality", "alignment", "robustness"]
    assert card(ServedRealJudges()) == in_process


def watch_real_judges(seen: list, stop: threading.Event) -> None:
    """Record the served real judges' request count while the sweep runs (0 when not running)."""
    import time

    from ray.serve.exceptions import RayServeException

    from igmu.serve import REAL_APP_NAME
    from igmu.serve.client import HandleJudgeClient
    from igmu.serve.control import judges_running

    while not stop.is_set():
        if judges_running(REAL_APP_NAME):
            with contextlib.suppress(RayServeException, RuntimeError):  # the app went away meanwhile
                seen.append(HandleJudgeClient(REAL_APP_NAME).call("stats")["images"])
        time.sleep(0.5)


@pytest.mark.slow
def test_a_tiny_sd_sweep_with_served_judges_scores_every_finished_trial(ray_session, tmp_path, capsys,
                                                                       tiny_sd_dir, tiny_clip_dir):
    from mlflow.tracking import MlflowClient

    from igmu.metrics.base import ASPECTS
    from igmu.serve import REAL_APP_NAME
    from igmu.serve.control import judges_running
    from igmu.sweep.engine import run_sweep
    from igmu.sweep.file import load_sweep

    text = SD_SWEEP.format(model=tiny_sd_dir, clip=tiny_clip_dir)
    text = text.replace("num_samples: 3, max_concurrent: 2", "num_samples: 1, max_concurrent: 1")
    text = text.replace("  steps: 4\n  ddim_steps: 4", "  steps: 2\n  ddim_steps: 2")
    text = text.replace("eval: {steps: 2,", "eval: {judges: serve, steps: 2,")
    sweep_file = tmp_path / "sd-serve.yaml"
    sweep_file.write_text(text)
    running_before = judges_running(REAL_APP_NAME)
    seen, stop = [], threading.Event()
    watcher = threading.Thread(target=watch_real_judges, args=(seen, stop), daemon=True)
    watcher.start()
    try:
        outcome = run_sweep(load_sweep(sweep_file), storage=str(tmp_path / "results"), verbose=0,
                            extra_settings={"budget_sizes": TINY_SIZES})
    finally:
        stop.set()
        watcher.join(timeout=60)
    capsys.readouterr()  # Tune's own progress table
    assert seen and max(seen) > 0, "the trial never scored through the served real judges"
    assert judges_running(REAL_APP_NAME) == running_before  # removed only if the sweep deployed it
    client = MlflowClient(outcome.tracking_uri)
    runs = children(client, outcome)
    finished = [r for r in runs if r.data.tags["status"] == "finished"]
    assert len(runs) == 1 and finished
    for run in finished:
        assert {f"val_{a}" for a in ASPECTS} <= set(run.data.metrics), run.data.metrics
    (row,) = outcome.rows
    card = json.loads((outcome.sweep_dir / "trials" / row["trial_id"] / "scorecard.json").read_text())
    assert card["settings"]["judges"]["clip"] == str(tiny_clip_dir)
