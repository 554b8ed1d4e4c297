"""The real-image judges on Ray Serve: one replica class holds one `RealJudges` (a CLIP model and
NudeNet), and `@serve.batch` merges the image requests of all trials into one call per batch.

Entry points:
- `build_app(args)`: the application builder (`import_path: igmu.serve.real_app:build_app`), for
  `serve run`, a RayService and `igmu serve judges --real`. `args` may name a `config` file and
  override any of its keys; no args serve the judges of the packaged `real_judges.yaml`.
- Handle (inside Ray; `igmu.serve.real_client.ServedRealJudges` calls it): `describe()`,
  `image_features(float32 [N, 3, H, W] in [0, 1]) -> ndarray [N, D]`, `text_features(texts) ->
  ndarray [N, D]`, `detect(images) -> NudeNet's raw detections per image`, `stats()`.

Batching changes no result: CLIP embeds images in fixed, zero-padded chunks (`CLIP_CHUNK`) and NudeNet
looks at one image at a time, so an image's result never depends on the images beside it. Text is
not batched across requests: a tokenizer pads a call's texts to its longest one.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import numpy as np
from ray import serve

from igmu.serve import REAL_DEPLOYMENT_NAME
from igmu.serve.allocator import retain_freed_memory
from igmu.serve.app import CONFIG_ARG, batch_images
from igmu.serve.config import RealJudgesServeConfig, load_real_serve_config
from igmu.serve.images import JudgeInputError, check_count, forward_merged


def check_images(images, max_images: int) -> np.ndarray:
    """float32 [N, 3, H, W] in [0, 1], as the in-process judges take them (any H, W: CLIP resizes)."""
    if not isinstance(images, np.ndarray):
        raise JudgeInputError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[1] != 3:
        raise JudgeInputError(f"images must be float32 [N, 3, H, W], got {images.dtype.name} {list(images.shape)}")
    check_count(len(images), max_images)
    if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
        raise JudgeInputError("float32 images must be finite and within [0, 1]")
    return np.ascontiguousarray(images)


@serve.deployment(name=REAL_DEPLOYMENT_NAME)
class RealJudgeScorer:
    def __init__(self, settings: dict):
        import torch

        from igmu.models.real_judge_set import RealJudges

        self.config = RealJudgesServeConfig(**settings)
        self.malloc_tuned = retain_freed_memory(self.config.malloc_retain_mb)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.judges = RealJudges(self.config.judges, self.device)
        self.judges.check_available(needs_nudenet=True)  # load both now, not on a trial's first request
        self._batch.set_max_batch_size(self.config.max_batch_size)
        self._batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.counters = {"requests": 0, "images": 0, "batches": 0, "largest_batch": 0, "texts": 0}
        self.started = time.time()

    # --- the handle API ---------------------------------------------------------------------

    def describe(self) -> dict:
        clip = self.judges.clip
        return {"clip": clip.name, "logit_scale": clip.logit_scale, "feature_dim": clip.feature_dim,
                "nudenet": self.judges.nudenet.settings(), "judges": self.config.judges.model_dump(mode="json"),
                "max_images_per_request": self.config.max_images_per_request,
                "max_batch_size": self.config.max_batch_size, "device": self.device,
                "malloc_tuned": self.malloc_tuned}

    def stats(self) -> dict:
        """Counters of this replica (the one the call reached)."""
        context = serve.get_replica_context()
        return {**self.counters, "replica": context.replica_id.unique_id, "uptime_s": time.time() - self.started}

    async def image_features(self, images: np.ndarray) -> np.ndarray:
        return await self._batch(("image_features", check_images(images, self.config.max_images_per_request)))

    async def detect(self, images: np.ndarray) -> list[list[dict]]:
        return await self._batch(("detect", check_images(images, self.config.max_images_per_request)))

    async def text_features(self, texts: list[str]) -> np.ndarray:
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise JudgeInputError("texts must be a non-empty list of strings")
        self.counters["texts"] += len(texts)
        features = await asyncio.to_thread(self.judges.clip.text_features, list(texts))
        return features.numpy()

    # --- batching ---------------------------------------------------------------------------

    @serve.batch(batch_size_fn=batch_images)
    async def _batch(self, items: list[tuple[str, np.ndarray]]) -> list:
        images = batch_images(items)
        self.counters["batches"] += 1
        self.counters["requests"] += len(items)
        self.counters["images"] += images
        self.counters["largest_batch"] = max(self.counters["largest_batch"], images)
        # Off the event loop, so requests keep queueing for the next batch while this one computes.
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[tuple[str, np.ndarray]]) -> list:
        """One call per method and image size over the merged images, split back per request."""
        import torch

        groups = defaultdict(list)
        for index, (method, images) in enumerate(items):
            groups[(method, images.shape[1:])].append(index)
        results: list = [None] * len(items)
        for (method, _), indices in groups.items():
            outputs = forward_merged([items[i][1] for i in indices],
                                     lambda merged: self._call(method, torch.from_numpy(merged)))
            for i, output in zip(indices, outputs):
                results[i] = output
        return results

    def _call(self, method: str, images):
        if method == "image_features":
            return self.judges.clip.image_features(images).numpy()
        return self.judges.nudenet.detect(images)


def build_app(args: dict | None = None) -> serve.Application:
    """Application builder: `args` may hold `config` (a YAML file replacing the packaged one) and any
    of its keys (overriding the file's value)."""
    args = dict(args or {})
    config = load_real_serve_config(args.pop(CONFIG_ARG, None), args)
    return app_from_config(config)


def app_from_config(config: RealJudgesServeConfig) -> serve.Application:
    return RealJudgeScorer.options(**config.deployment_options()).bind({**config.to_args(), "source": config.source})
