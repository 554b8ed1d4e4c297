"""Real-scale judges (CLIP zero-shot, NudeNet) behind the world judges' interface."""

import numpy as np
import pytest
import torch

from igmu.errors import UsageError
from igmu.models.real_judges import CLIPZeroShotJudge, NudeNetJudge
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
