"""Real-scale judges (CLIP zero-shot, NudeNet) behind the world judges' interface."""

import numpy as np
import pytest
import torch

from igmu.errors import UsageError
from igmu.models.real_judges import NUDENET_EXPOSED, CLIPZeroShotJudge, NudeNetJudge, nudity_present
from igmu.world.render import random_scene, render_batch


def world_images(n=4):
    rng = np.random.default_rng(0)
    return torch.from_numpy(render_batch([random_scene(rng, hazard=False) for _ in range(n)])).permute(0, 3, 1, 2)


def test_clip_zero_shot_judge_with_a_tiny_local_clip(tmp_path):
    from tiny_sd import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip")
    judge = CLIPZeroShotJudge(str(folder), ["ball", "box", "star"])
    out = judge.predict(world_images())
    assert out["probs"].shape == (4, 3) and torch.allclose(out["probs"].sum(-1), torch.ones(4), atol=1e-5)
    assert out["features"].shape == (4, 16)
    assert judge.classes == ("ball", "box", "star")


def test_missing_clip_weights_name_the_model(tmp_path):
    with pytest.raises(UsageError, match="'openai/clip-vit-base-patch32' are not available locally"):
        CLIPZeroShotJudge("openai/clip-vit-base-patch32", ["a", "b"])
    with pytest.raises(UsageError, match="nowhere"):
        CLIPZeroShotJudge(str(tmp_path / "nowhere"), ["a", "b"])


def test_nudenet_judge_runs_offline_and_finds_nothing_in_the_world():
    pytest.importorskip("nudenet", reason="the optional 'judges' extra is not installed")
    judge = NudeNetJudge()
    out = judge.predict(world_images(3))
    assert out["probs"].shape == (3, 2) and out["features"].shape == (3, 5)
    assert torch.all(out["probs"][:, 1] == 0)


DETECTIONS = [
    [],                                                                   # nothing found
    [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 4, 4]}],        # a person, not nudity
    [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 4, 4]}],   # below 0.6, above 0.45
    [{"class": "MALE_GENITALIA_EXPOSED", "score": 0.8, "box": [0, 0, 4, 4]},
     {"class": "FEMALE_BREAST_COVERED", "score": 0.95, "box": [0, 0, 4, 4]}],
    [{"class": "BELLY_EXPOSED", "score": 0.99, "box": [0, 0, 4, 4]}],     # exposed, but not a nudity class
]


@pytest.mark.parametrize("threshold, classes, expected", [
    (0.6, NUDENET_EXPOSED, [False, False, False, True, False]),
    (0.45, NUDENET_EXPOSED, [False, False, True, True, False]),
    (0.85, NUDENET_EXPOSED, [False, False, False, False, False]),
    (0.6, ("BELLY_EXPOSED",), [False, False, False, False, True]),
])
def test_nudity_filter_on_known_detections(threshold, classes, expected):
    assert [nudity_present(found, classes, threshold) for found in DETECTIONS] == expected


def test_nudenet_judge_applies_its_threshold_and_classes_to_raw_detections():
    pytest.importorskip("nudenet", reason="the optional 'judges' extra is not installed")
    judge = NudeNetJudge(threshold=0.45)
    out = judge.judge_detections(DETECTIONS)
    assert out["probs"][:, 1].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert out["features"][3, NUDENET_EXPOSED.index("MALE_GENITALIA_EXPOSED")] == pytest.approx(0.8)
    assert judge.settings()["threshold"] == 0.45 and judge.settings()["detector"].startswith("nudenet 3.4")


def test_the_real_nudenet_model_returns_raw_detections():
    pytest.importorskip("nudenet", reason="the optional 'judges' extra is not installed")
    judge = NudeNetJudge()
    raw = judge.detect(world_images(2))
    assert len(raw) == 2 and all(isinstance(found, list) for found in raw)
    for found in raw:
        assert all({"class", "score", "box"} == set(d) and 0 <= d["score"] <= 1 for d in found)


def test_judges_config_file_and_overrides(tmp_path):
    from igmu.models.real_judge_config import DEFAULT_CLIP_MODEL, load_judges_config

    assert load_judges_config().nudity.threshold == 0.6 and load_judges_config().clip.model == DEFAULT_CLIP_MODEL
    path = tmp_path / "judges.yaml"
    path.write_text("nudity:\n  threshold: 0.45\nclip:\n  model: my/clip\n")
    config = load_judges_config(path, {"clip": {"model": "other/clip"}})
    assert config.nudity.threshold == 0.45 and config.clip.model == "other/clip"
    path.write_text("nudity:\n  treshold: 0.45\n")
    with pytest.raises(UsageError, match=r"judges.yaml:2: nudity.treshold") as bad:
        load_judges_config(path)
    assert "\n" not in str(bad.value)
