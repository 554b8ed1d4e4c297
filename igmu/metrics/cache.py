"""Generated images, made once per (model weights, prompts, seed, sampler settings) and reused.

The key hashes the model's weights rather than its name, so an unlearned model that keeps changing
during a run never reads stale images, while the original model's images are shared by every trial
(on disk, when a cache folder is configured).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from igmu import progress
from igmu.models.text_to_image import Generator

# The progress line that counts the images evaluation generates (reused and loaded ones are not).
GENERATED = "images generated"


def model_fingerprint(generator: Generator) -> str:
    """What decides the model's images: its weights, adapters attached by hooks, its guidance rule."""
    digest = hashlib.sha256()
    for module in (generator.unet, generator.text_encoder):
        _hash_state(digest, module.state_dict())
        for name, adapter in hooked_modules(module):
            digest.update(f"hook:{name}".encode())
            _hash_state(digest, adapter.state_dict())
    rule = getattr(generator, "guidance_rule", None)  # only text-to-image generators sample with one
    if rule is not None:
        digest.update(json.dumps(rule.config(), sort_keys=True).encode())
    return digest.hexdigest()[:20]


def _hash_state(digest, state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


def hooked_modules(module: torch.nn.Module):
    """(layer name, module) for every forward hook that is a method of another module: adapters
    trained beside frozen weights (LoRA) change a layer's output but not its state_dict, so a key of
    the weights alone would hand a half-trained adapter the images of an earlier one."""
    for layer_name, layer in module.named_modules():
        for hook in (*layer._forward_pre_hooks.values(), *layer._forward_hooks.values()):
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, torch.nn.Module):
                yield layer_name, owner


class ImageCache:
    """In-memory image cache, mirrored to `folder` (safetensors) when one is given."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder else None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        # Time spent sampling images, so a caller can split an evaluation into generation and judging.
        self.generation_seconds = 0.0

    def images(self, generator: Generator, prompts: list[str], seed: int, steps: int | None = None,
               guidance: float | None = None, seeds: list[int] | None = None,
               guidances: list[float | None] | None = None) -> torch.Tensor:
        """Images of `prompts`: all from one `seed` (consecutive batches), or one per entry of `seeds`
        (with optional per-prompt `guidances`)."""
        settings = {**generator.sampling_defaults, **{k: v for k, v in (("steps", steps), ("guidance", guidance))
                                                       if v is not None}}
        # Hashing every weight is the costly part of a lookup: once per call, for the key and the manifest.
        fingerprint = model_fingerprint(generator)
        key = self._key(fingerprint, generator, prompts, seed, settings, seeds, guidances)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        images = self._load(key)
        if images is None:
            self.misses += 1
            started = time.perf_counter()
            if seeds is None:
                images = generator.sample(prompts, seed=seed, steps=settings["steps"], guidance=settings["guidance"])
            else:
                images = generator.sample_seeded(prompts, seeds, steps=settings["steps"],
                                                 guidance=settings["guidance"], guidances=guidances)
            self.generation_seconds += time.perf_counter() - started
            progress.count(GENERATED, len(prompts))
            self._store(key, images, {"model": fingerprint, "prompts": prompts, "seed": seed,
                                      "seeds": seeds, "guidances": guidances, **settings,
                                      "scheduler": generator.scheduler_name})
        self._memory[key] = images
        return images

    def _key(self, fingerprint: str, generator: Generator, prompts: list[str], seed: int, settings: dict,
             seeds: list[int] | None, guidances: list[float | None] | None) -> str:
        digest = hashlib.sha256()
        digest.update(fingerprint.encode())
        digest.update("\x1f".join(prompts).encode())
        digest.update(f"{seed}|{settings['steps']}|{settings['guidance']}|{generator.scheduler_name}".encode())
        if seeds is not None:
            digest.update(f"seeds:{seeds}|guidances:{guidances}".encode())
        return digest.hexdigest()[:32]

    def _load(self, key: str) -> torch.Tensor | None:
        if self.folder is None or not (self.folder / f"{key}.safetensors").is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(self.folder / f"{key}.safetensors"))["images"]

    def _store(self, key: str, images: torch.Tensor, made_from: dict) -> None:
        """Write the images and, beside them, what they were sampled from (so a cache folder can be
        audited: which prompts and seeds an evaluation ever touched)."""
        if self.folder is None:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{key}.json").write_text(json.dumps(made_from))
        partial = self.folder / f"{key}.tmp-{os.getpid()}"
        save_file({"images": images.contiguous()}, str(partial))
        os.replace(partial, self.folder / f"{key}.safetensors")  # atomic: concurrent trials never read half a file
