"""Detector judges of the embedded world: small CNN classifiers for object, style, the sensitive
attribute and character. Each exposes its penultimate-layer embedding for Frechet distances.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from igmu.errors import UsageError
from igmu.world.assets import assets_dir
from igmu.world.concepts import (
    CHARACTER_NAMES,
    OBJECT_NAMES,
    STYLE_NAMES,
    get_character,
)
from igmu.world.prompts import PromptSpec

JUDGE_CLASSES: dict[str, tuple[str, ...]] = {
    "object": OBJECT_NAMES,
    "style": STYLE_NAMES,
    "sensitive": ("absent", "present"),
    "character": ("none", *CHARACTER_NAMES),
}
FEATURE_DIM = 128
# Images per forward pass, padded when fewer. CPU and GPU kernels pick their algorithm by batch size
# and thread count, which moves results in the 6th digit; a fixed chunk makes an image's scores
# independent of which other images shared its batch (in-process, or batched by Ray Serve).
# 8, because the scorecard's judge calls hold 8 to 96 images, all multiples of 8, so in-process no
# forward is padded, and a batch merged by Serve pads at most 7 images; on CPU, chunks of 8 to 64
# images score equally fast (docs/benchmarks.md, "Judges on Ray Serve").
FORWARD_CHUNK = 8


class Judge(nn.Module):
    """A CNN classifier over 32x32 RGB images in [0, 1]."""

    def __init__(self, name: str, classes: tuple[str, ...], width: int = 32):
        super().__init__()
        self.name = name
        self.classes = tuple(classes)
        self.width = width

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]

        self.backbone = nn.Sequential(
            *block(3, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, FEATURE_DIM), nn.SiLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, len(classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer embedding [N, FEATURE_DIM]."""
        return self.backbone(images * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class probabilities [N, C] and embeddings [N, FEATURE_DIM] for images [N, 3, H, W] in [0, 1].
        Each image's outputs are the same whatever batch it arrives in (see FORWARD_CHUNK)."""
        device = next(self.parameters()).device
        probs, feats = [], []
        for start in range(0, len(images), FORWARD_CHUNK):
            chunk = images[start:start + FORWARD_CHUNK].to(device, torch.float32)
            count = len(chunk)
            if count < FORWARD_CHUNK:
                chunk = torch.cat([chunk, chunk.new_zeros((FORWARD_CHUNK - count, *chunk.shape[1:]))])
            f = self.features(chunk)[:count]
            probs.append(torch.softmax(self.head(f), dim=-1).cpu())
            feats.append(f.cpu())
        if not probs:
            return {"probs": torch.zeros(0, len(self.classes)), "features": torch.zeros(0, FEATURE_DIM)}
        return {"probs": torch.cat(probs), "features": torch.cat(feats)}


def new_judges() -> dict[str, Judge]:
    return {name: Judge(name, classes) for name, classes in JUDGE_CLASSES.items()}


def save_judges(judges: dict[str, Judge], folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {}
    for name, judge in judges.items():
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(folder / f"{name}.safetensors"))
        config[name] = {"classes": list(judge.classes), "width": judge.width}
    (folder / "judges.json").write_text(json.dumps(config, indent=2))


def world_judges_dir() -> Path:
    """The shipped world judges (under IGMU_ASSETS when set)."""
    return assets_dir() / "judges"


def load_world_judges(device: str | torch.device = "cpu") -> dict[str, Judge]:
    return load_judges(world_judges_dir(), device=device)


def load_judges(folder: Path, device: str | torch.device = "cpu") -> dict[str, Judge]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path = folder / "judges.json"
    if not config_path.is_file():
        raise UsageError(f"judge folder {str(folder)!r} has no judges.json; run 'igmu world build'")
    judges = {}
    for name, spec in json.loads(config_path.read_text()).items():
        weights = folder / f"{name}.safetensors"
        judge = Judge(name, tuple(spec["classes"]), spec["width"])
        try:
            judge.load_state_dict(load_file(str(weights)))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise UsageError(f"cannot load judge weights {str(weights)!r}: {str(err).splitlines()[0]}") from None
        judges[name] = judge.to(device).eval().requires_grad_(False)
    return judges


def expected_labels(spec: PromptSpec) -> dict[str, int | None]:
    """What each judge should say about an image of `spec` (None: the prompt does not say)."""
    obj, style = spec.object, spec.style
    if spec.character:
        character = get_character(spec.character)
        obj, style = character.object, character.style
    return {
        "object": OBJECT_NAMES.index(obj) if obj else None,
        "style": STYLE_NAMES.index(style) if style else None,
        "sensitive": int(spec.hazard),
        "character": 1 + CHARACTER_NAMES.index(spec.character) if spec.character else None,
    }
