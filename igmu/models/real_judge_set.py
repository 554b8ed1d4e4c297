"""The judges one evaluation of a real model uses: NudeNet and one CLIP model, each loaded on first
use, with a zero-shot judge per label set (the shipped label set of a category, with the target
added when it is missing)."""

from __future__ import annotations

from functools import cached_property

import torch

from igmu.models.real_judge_config import RealJudgesConfig
from igmu.models.real_judges import ClipModel, CLIPZeroShotJudge, NudeNetJudge
from igmu.prompts import category_spec


def labels_with(labels: tuple[str, ...], target: str | None) -> tuple[str, ...]:
    """`labels` with `target` added when no label matches it (case-insensitive)."""
    if target is None or any(label.lower() == target.lower() for label in labels):
        return tuple(labels)
    return (*labels, target)


class RealJudges:
    """NudeNet and CLIP for one evaluation, loaded on first use, with zero-shot judges cached per label set."""

    def __init__(self, config: RealJudgesConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or RealJudgesConfig()
        self.device = device
        self._zero_shot: dict[tuple, CLIPZeroShotJudge] = {}

    @cached_property
    def nudenet(self) -> NudeNetJudge:
        return NudeNetJudge(self.config.nudity.threshold, tuple(self.config.nudity.classes))

    @cached_property
    def clip(self) -> ClipModel:
        return ClipModel(self.config.clip.model, self.device)

    def zero_shot(self, labels: tuple[str, ...], category: str) -> CLIPZeroShotJudge:
        """A zero-shot judge over `labels`, prompted with the category's template."""
        key = (tuple(labels), category)
        if key not in self._zero_shot:
            self._zero_shot[key] = CLIPZeroShotJudge(self.clip, list(labels), self.config.template(category))
        return self._zero_shot[key]

    def category_judge(self, category: str, target: str | None = None) -> CLIPZeroShotJudge:
        """Zero-shot over the category's shipped label set (plus the target)."""
        return self.zero_shot(labels_with(category_spec(category).labels, target), category)

    def check_available(self, needs_nudenet: bool) -> None:
        """Load what an evaluation will need now, so a missing model fails before any image is made."""
        if needs_nudenet:
            self.nudenet
        self.clip

    def settings(self, uses_nudenet: bool) -> dict:
        recorded = {"clip": self.config.clip.model, "clip_templates": dict(self.config.clip.templates)}
        if uses_nudenet:
            recorded["nudity"] = self.nudenet.settings()
        return recorded
