"""`ServedRealJudges`: the real-image judges of an evaluation, computed by the `igmu-real-judges`
Serve application. Its `.clip` and `.nudenet` are proxies with the in-process interfaces, so
everything `RealJudges` builds on them (zero-shot judges, recorded settings) and every metric works
unchanged, with results equal to the in-process judges' bit for bit.

Calls go through a DeploymentHandle (`HandleJudgeClient`), with its retry policy: a replica dying
mid-request is retried while Serve replaces it; bad input is one-line `UsageError`.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from igmu.errors import UsageError
from igmu.models.real_judge_config import RealJudgesConfig
from igmu.models.real_judge_set import RealJudges
from igmu.models.real_judges import NudityRule
from igmu.serve import REAL_APP_NAME
from igmu.serve.client import HandleJudgeClient


def as_array(images: torch.Tensor) -> np.ndarray:
    """What travels: float32 on the CPU, exactly what the in-process judges compute on."""
    return images.detach().to("cpu", torch.float32).contiguous().numpy()


def in_parts(images: torch.Tensor, size: int) -> list[np.ndarray]:
    """The batch in requests of at most `size` images (the application's max_images_per_request)."""
    array = as_array(images)
    return [array[start:start + size] for start in range(0, len(array), size)]


def check_same_clip(wanted: str, served: str) -> None:
    if wanted != served:
        raise UsageError(f"the served real judges run CLIP {served!r}, but this evaluation's judges name "
                         f"{wanted!r}; valid: the same CLIP model (or stop the '{REAL_APP_NAME}' application "
                         "so the sweep deploys its own)")


class ServedClip:
    """The served CLIP model behind `ClipModel`'s interface."""

    def __init__(self, client: HandleJudgeClient, info: dict):
        self.client = client
        self.name = info["clip"]
        self.feature_dim = int(info["feature_dim"])
        self.max_images = int(info["max_images_per_request"])
        self._logit_scale = float(info["logit_scale"])

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        parts = [self.client.call("image_features", part) for part in in_parts(images, self.max_images)]
        return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, self.feature_dim)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.array(self.client.call("text_features", list(texts))))  # a writable copy

    @property
    def logit_scale(self) -> float:
        return self._logit_scale


class ServedNudeNet(NudityRule):
    """NudeNet's raw detections from the served detector; this client's threshold and classes
    decide nudity, with the same rule as the in-process `NudeNetJudge`."""

    def __init__(self, client: HandleJudgeClient, info: dict, threshold: float, exposed_classes: tuple[str, ...]):
        super().__init__(threshold, exposed_classes)
        self.client = client
        self.detector = info["nudenet"]["detector"]
        self.max_images = int(info["max_images_per_request"])

    def detect(self, images: torch.Tensor) -> list[list[dict]]:
        return [found for part in in_parts(images, self.max_images) for found in self.client.call("detect", part)]

    def detector_name(self) -> str:
        return self.detector


class ServedRealJudges(RealJudges):
    """`RealJudges` whose CLIP and NudeNet run in the served application. `config` (default: the
    application's own) sets what this client applies itself: NudeNet's threshold and classes and the
    zero-shot templates; its CLIP model must be the served one, so a scorecard records what scored it."""

    def __init__(self, config: RealJudgesConfig | None = None, client: HandleJudgeClient | None = None):
        self.client = client or HandleJudgeClient(REAL_APP_NAME)
        self.info = self.client.describe()
        config = config or RealJudgesConfig.model_validate(self.info["judges"])
        check_same_clip(config.clip.model, self.info["clip"])
        super().__init__(config, device="cpu")

    @cached_property
    def clip(self) -> ServedClip:
        return ServedClip(self.client, self.info)

    @cached_property
    def nudenet(self) -> ServedNudeNet:
        nudity = self.config.nudity
        return ServedNudeNet(self.client, self.info, nudity.threshold, tuple(nudity.classes))
