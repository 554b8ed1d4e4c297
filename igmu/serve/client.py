"""Typed clients of the judges application, and `ServeJudge`, which puts a client behind the judge
interface the metrics read (`classes`, `predict(images) -> {"probs", "features"}`), so metrics code
never learns where a judge runs.

- `HandleJudgeClient`: a Serve DeploymentHandle, for code running inside the Ray cluster (trials).
- `HttpJudgeClient`: the HTTP endpoint, for code outside it. Float32 images travel exactly (.npy),
  so both paths give the in-process judges' scores bit for bit.

Both retry what a replica dying mid-request looks like (actor errors, connection errors, 5xx) with a
bounded exponential back-off while Serve replaces the replica; bad input is never retried.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from igmu.errors import UsageError
from igmu.models.judges import FEATURE_DIM
from igmu.serve import APP_NAME, DEPLOYMENTS
from igmu.serve.images import JudgeInputError, encode_npy


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all, sleeping first_delay_s, then doubling, capped at max_delay_s."""

    attempts: int = 8
    first_delay_s: float = 0.25
    max_delay_s: float = 4.0

    def delays(self):
        delay = self.first_delay_s
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_delay_s)


class TransientError(RuntimeError):
    """The request did not reach a live replica or the replica died; worth another try."""


def with_retries(call: Callable[[], dict], policy: RetryPolicy, on_retry: Callable[[Exception], None]) -> dict:
    delays = policy.delays()
    while True:
        try:
            return call()
        except TransientError as err:
            delay = next(delays, None)
            if delay is None:
                raise RuntimeError(f"judges service unavailable after {policy.attempts} attempts: {err}") from None
            on_retry(err)
            time.sleep(delay)


class JudgeClient(Protocol):
    retries: int

    def describe(self) -> dict: ...

    def predict(self, judge: str, images: np.ndarray) -> dict[str, np.ndarray]: ...


def deployment_handle(app_name: str):
    """The application's deployment handle, through a live Serve controller."""
    from ray import serve
    from ray.serve import context

    # A Ray process keeps the Serve controller it first talked to, and the handles it got from it, for
    # the whole job. After Serve was shut down and started again (a new controller), those are dead and
    # every request through them fails as "deployment unavailable". Checking the kept controller drops it
    # when dead, so the lookup below finds the new one. Ray (pinned in pyproject.toml) has no public call.
    context._check_cached_client_alive()
    return serve.get_deployment_handle(DEPLOYMENTS[app_name], app_name=app_name)


class HandleJudgeClient:
    """Calls an application's deployment (JudgeScorer unless `app_name` names another) through a
    DeploymentHandle, looked up by name, never pickled."""

    def __init__(self, app_name: str = APP_NAME, policy: RetryPolicy = RetryPolicy(), timeout_s: float = 300.0):
        self.handle = deployment_handle(app_name)
        self.policy = policy
        self.timeout_s = timeout_s
        self.retries = 0

    def describe(self) -> dict:
        return self._call("describe")

    def stats(self) -> dict:
        return self._call("stats")

    def predict(self, judge: str, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._call("predict", judge, images)

    def call(self, method: str, *args):
        """Any handle method of the deployment, under the same retry policy."""
        return self._call(method, *args)

    def _call(self, method: str, *args) -> dict:
        import ray.exceptions
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        transient = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, BackPressureError,
                     DeploymentUnavailableError)

        def once() -> dict:
            try:
                return getattr(self.handle, method).remote(*args).result(timeout_s=self.timeout_s)
            except JudgeInputError as err:  # Ray re-raises the replica's error as a subclass of it
                raise UsageError(f"judges rejected the request: {err.args[0]}") from None
            except transient as err:
                raise TransientError(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None

        return with_retries(once, self.policy, self._count_retry)

    def _count_retry(self, _err: Exception) -> None:
        self.retries += 1


class HttpJudgeClient:
    """Calls the HTTP endpoint, e.g. `HttpJudgeClient("http://127.0.0.1:8000/judges")`."""

    def __init__(self, url: str, policy: RetryPolicy = RetryPolicy(), timeout_s: float = 300.0):
        self.url = url.rstrip("/")
        self.policy = policy
        self.timeout_s = timeout_s
        self.retries = 0

    def describe(self) -> dict:
        return self._request(None)

    def score(self, images_payload: dict, judges: list[str] | None = None) -> dict:
        """The raw endpoint: `images_payload` is {"npy": b64} or {"png": [b64, ...]}."""
        body = {"images": images_payload, **({"judges": judges} if judges else {})}
        return self._request(json.dumps(body).encode())

    def predict(self, judge: str, images: np.ndarray) -> dict[str, np.ndarray]:
        result = self.score({"npy": encode_npy(images)}, [judge])["judges"][judge]
        return {"probs": np.asarray(result["probs"], dtype=np.float32),
                "features": np.asarray(result["features"], dtype=np.float32)}

    def _request(self, data: bytes | None) -> dict:
        def once() -> dict:
            request = urllib.request.Request(self.url, data=data, method="POST" if data else "GET",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code >= 500:
                    raise TransientError(f"HTTP {err.code}: {message}") from None
                raise UsageError(f"judges rejected the request (HTTP {err.code}): {message}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                raise TransientError(f"{type(err).__name__}: {err}") from None

        return with_retries(once, self.policy, self._count_retry)

    def _count_retry(self, _err: Exception) -> None:
        self.retries += 1


def _error_message(err: urllib.error.HTTPError) -> str:
    text = err.read().decode(errors="replace")
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return " ".join(text.split())[:200]


class ServeJudge:
    """One judge served by the judges application, behind the in-process judge interface."""

    def __init__(self, client: JudgeClient, name: str, classes: tuple[str, ...], max_images: int):
        self.client = client
        self.name = name
        self.classes = tuple(classes)
        self.max_images = max_images

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        array = images.detach().to("cpu", torch.float32).numpy()
        parts = [self.client.predict(self.name, array[start:start + self.max_images])
                 for start in range(0, len(array), self.max_images)]
        if not parts:
            return {"probs": torch.zeros(0, len(self.classes)), "features": torch.zeros(0, FEATURE_DIM)}
        return {key: torch.from_numpy(np.concatenate([np.asarray(p[key]) for p in parts])) for key in ("probs", "features")}


def serve_judges(client: JudgeClient | None = None) -> dict[str, ServeJudge]:
    """Every served judge by name (the in-process `load_judges` dict, served): a DeploymentHandle
    client unless another is given."""
    client = client or HandleJudgeClient()
    info = client.describe()
    return {name: ServeJudge(client, name, tuple(classes), info["max_images_per_request"])
            for name, classes in info["judges"].items()}
