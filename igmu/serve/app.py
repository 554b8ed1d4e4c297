"""The judges on Ray Serve: one replica class holds every detector judge, and `@serve.batch` merges
the requests of all trials (per judge) into full batches.

Entry points:
- `build_app(args)`: the application builder (`import_path: igmu.serve.app:build_app`), for
  `serve run`, a RayService's `serveConfigV2` and `igmu serve judges`. `args` may name a `config`
  file and override any of its keys; no args serve the shipped world judges with `judges.yaml`.
- HTTP (route prefix `/judges`): `GET` describes the judges; `POST` scores a batch,
  `{"images": {"npy": b64} | {"png": [b64, ...]}, "judges": [names]}` ->
  `{"count": N, "judges": {name: {"classes", "labels", "probs", "features"}}}`; bad input -> 4xx
  with `{"error": one line}`.
- Handle (inside Ray): `predict(judge, float32 array) -> {"probs", "features"}` (numpy), `describe()`,
  `stats()`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

import numpy as np
from ray import serve

from igmu.serve import DEPLOYMENT_NAME
from igmu.serve.allocator import retain_freed_memory
from igmu.serve.config import JudgesServeConfig, load_serve_config
from igmu.serve.images import (
    JudgeInputError,
    check_count,
    decode_images,
    forward_merged,
    to_judge_array,
)

CONFIG_ARG = "config"


def batch_images(items: list) -> int:
    """Serve's batch size counts images, not requests: items are (judge, images) pairs."""
    return sum(len(images) for _, images in items)


@serve.deployment(name=DEPLOYMENT_NAME)
class JudgeScorer:
    def __init__(self, settings: dict):
        import torch

        from igmu.models.judges import load_judges

        self.config = JudgesServeConfig(**settings)
        self.malloc_tuned = retain_freed_memory(self.config.malloc_retain_mb)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.judges = load_judges(self.config.judges_path(), device=device)
        self.device = device
        self._score_batch.set_max_batch_size(self.config.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.counters = {"requests": 0, "images": 0, "batches": 0, "largest_batch": 0, "rejected": 0,
                         "forward_s": 0.0}
        self.started = time.time()

    # --- the handle API ---------------------------------------------------------------------

    def describe(self) -> dict:
        return {"judges": {name: list(judge.classes) for name, judge in self.judges.items()},
                "image_size": self.config.image_size, "max_images_per_request": self.config.max_images_per_request,
                "max_batch_size": self.config.max_batch_size, "device": self.device,
                "malloc_tuned": self.malloc_tuned}

    def stats(self) -> dict:
        """Counters of this replica (the one the call reached)."""
        context = serve.get_replica_context()
        return {**self.counters, "replica": context.replica_id.unique_id, "uptime_s": time.time() - self.started}

    async def predict(self, judge: str, images: np.ndarray) -> dict:
        """One judge on a batch: `images` as the HTTP endpoint takes them (float32 is exact)."""
        try:
            self._check_judge(judge)
            check_count(len(images) if isinstance(images, np.ndarray) and images.ndim else 0,
                        self.config.max_images_per_request)
            array = to_judge_array(images, self.config.image_size)
        except JudgeInputError:
            self.counters["rejected"] += 1
            raise
        return await self._score_batch((judge, array))

    # --- HTTP -------------------------------------------------------------------------------

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        if request.method == "GET":
            return JSONResponse(self.describe())
        if request.method != "POST":
            return JSONResponse({"error": f"method {request.method} not allowed; valid: GET, POST"}, status_code=405)
        try:
            judges, array = self._parse(await request.body())
        except JudgeInputError as err:
            self.counters["rejected"] += 1
            return JSONResponse({"error": str(err)}, status_code=err.status)
        results = await asyncio.gather(*(self._score_batch((name, array)) for name in judges))
        body = {"count": len(array), "judges": {
            name: {"classes": list(self.judges[name].classes),
                   "labels": [self.judges[name].classes[i] for i in result["probs"].argmax(-1)],
                   "probs": result["probs"].tolist(), "features": result["features"].tolist()}
            for name, result in zip(judges, results)}}
        return JSONResponse(body)

    def _parse(self, raw: bytes) -> tuple[list[str], np.ndarray]:
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise JudgeInputError(f"the request body is not JSON: {type(err).__name__}") from None
        if not isinstance(payload, dict) or "images" not in payload:
            raise JudgeInputError("the request body must be a JSON object with 'images' (and optionally 'judges')")
        unknown = sorted(set(payload) - {"images", "judges"})
        if unknown:
            raise JudgeInputError(f"unknown request key {unknown[0]!r}; valid: images, judges")
        judges = payload.get("judges", list(self.judges))
        if not isinstance(judges, list) or not judges or not all(isinstance(name, str) for name in judges):
            raise JudgeInputError(f"'judges' must be a non-empty list of names; valid names: {', '.join(self.judges)}")
        for name in judges:
            self._check_judge(name)
        array = decode_images(payload["images"], self.config.image_size, self.config.max_images_per_request)
        return list(dict.fromkeys(judges)), array

    def _check_judge(self, name) -> None:
        if name not in self.judges:
            raise JudgeInputError(f"unknown judge {name!r}; valid: {', '.join(self.judges)}", status=404)

    # --- batching ---------------------------------------------------------------------------

    @serve.batch(batch_size_fn=batch_images)
    async def _score_batch(self, items: list[tuple[str, np.ndarray]]) -> list[dict]:
        images = batch_images(items)
        self.counters["batches"] += 1
        self.counters["requests"] += len(items)
        self.counters["images"] += images
        self.counters["largest_batch"] = max(self.counters["largest_batch"], images)
        # The forward runs off the event loop, so requests keep arriving (and queueing for the next
        # batch) while this one computes.
        started = time.perf_counter()
        results = await asyncio.to_thread(self._forward, items)
        self.counters["forward_s"] += time.perf_counter() - started
        return results

    def _forward(self, items: list[tuple[str, np.ndarray]]) -> list[dict]:
        import torch

        by_judge = defaultdict(list)
        for index, (judge, images) in enumerate(items):
            by_judge[judge].append(index)
        results: list[dict | None] = [None] * len(items)
        for judge, indices in by_judge.items():
            def forward(merged, judge=judge):
                output = self.judges[judge].predict(torch.from_numpy(merged))
                return {"probs": output["probs"].numpy(), "features": output["features"].numpy()}

            for i, output in zip(indices, forward_merged([items[i][1] for i in indices], forward)):
                results[i] = output
        return results


def build_app(args: dict | None = None) -> serve.Application:
    """Application builder: `args` may hold `config` (a YAML file replacing the packaged one) and any
    of its keys (overriding the file's value)."""
    args = dict(args or {})
    config = load_serve_config(args.pop(CONFIG_ARG, None), args)
    return app_from_config(config)


def app_from_config(config: JudgesServeConfig) -> serve.Application:
    settings = config.to_args()
    return JudgeScorer.options(**config.deployment_options()).bind({**settings, "source": config.source})
