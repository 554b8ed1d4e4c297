"""The judges application's settings: the packaged `judges.yaml`, a `--config FILE` that replaces it,
and the `args` of a Serve application builder that override single keys. Every mistake is one line
naming the key and what would have been valid."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from igmu.errors import UsageError

DEFAULT_CONFIG = Path(__file__).with_name("judges.yaml")
# Keys of `deployment:` handed to `@serve.deployment` / `.options()` as they are.
DEPLOYMENT_KEYS = ("max_ongoing_requests", "num_replicas", "autoscaling_config", "ray_actor_options")
ACTOR_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "runtime_env")
AUTOSCALING_KEYS = ("min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests",
                    "upscale_delay_s", "downscale_delay_s", "metrics_interval_s", "look_back_period_s",
                    "upscaling_factor", "downscaling_factor")


@dataclass(frozen=True)
class JudgesServeConfig:
    judges_dir: str | None = None
    route_prefix: str = "/judges"
    image_size: int = 32
    max_images_per_request: int = 256
    max_batch_size: int = 256
    batch_wait_timeout_s: float = 0.005
    malloc_retain_mb: int = 64
    deployment: dict = field(default_factory=dict)
    source: str = str(DEFAULT_CONFIG)

    def judges_path(self) -> Path:
        from igmu.world.assets import assets_dir

        return Path(self.judges_dir) if self.judges_dir else assets_dir() / "judges"

    def deployment_options(self) -> dict:
        return dict(self.deployment)

    def to_args(self) -> dict:
        """The builder `args` that reproduce this config (what `build_app` receives)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}


SETTING_KEYS = tuple(f.name for f in fields(JudgesServeConfig) if f.name != "source")
DEFAULTS = JudgesServeConfig()


def load_serve_config(path: str | Path | None = None, overrides: dict | None = None) -> JudgesServeConfig:
    """The packaged config, or `path` instead of it, with `overrides` (builder args) on top."""
    source = Path(path) if path else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"serve config {str(source)!r} not found") from None
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"serve config {str(source)!r} cannot be read: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of settings; valid keys: {', '.join(SETTING_KEYS)}")
    shown = f"{source} with args {sorted(overrides)}" if overrides else str(source)
    return parse_serve_config({**data, **(overrides or {})}, shown)


def parse_serve_config(data: dict, source: str = "<args>") -> JudgesServeConfig:
    def fail(key: str, message: str) -> UsageError:
        return UsageError(f"{source}: {key}: {message}")

    for key in data:
        if key not in SETTING_KEYS:
            raise fail(key, f"unknown key; valid: {', '.join(SETTING_KEYS)}")
    def value(key: str):
        return data.get(key, getattr(DEFAULTS, key))

    config = JudgesServeConfig(
        judges_dir=_optional_text(value("judges_dir"), "judges_dir", fail),
        route_prefix=_route(value("route_prefix"), fail),
        image_size=_integer(value("image_size"), "image_size", 1, fail),
        max_images_per_request=_integer(value("max_images_per_request"), "max_images_per_request", 1, fail),
        max_batch_size=_integer(value("max_batch_size"), "max_batch_size", 1, fail),
        batch_wait_timeout_s=_number(value("batch_wait_timeout_s"), "batch_wait_timeout_s", fail),
        malloc_retain_mb=_integer(value("malloc_retain_mb"), "malloc_retain_mb", 0, fail),
        deployment=_deployment(data.get("deployment") or {}, fail),
        source=source)
    if config.max_images_per_request > config.max_batch_size:
        raise fail("max_images_per_request", f"{config.max_images_per_request} exceeds max_batch_size "
                                             f"{config.max_batch_size}; valid: at most max_batch_size")
    ongoing = config.deployment.get("max_ongoing_requests", 5)  # Serve's default
    if ongoing < config.max_batch_size:
        raise fail("deployment.max_ongoing_requests", f"{ongoing} is below max_batch_size {config.max_batch_size}; "
                                                      "a replica never holds more requests than this, so batches "
                                                      "could never fill; valid: >= max_batch_size")
    return config


def _optional_text(value, key, fail) -> str | None:
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    raise fail(key, f"expected a folder path or null, got {value!r}")


def _route(value, fail) -> str:
    if isinstance(value, str) and value.startswith("/"):
        return value
    raise fail("route_prefix", f"{value!r} is not a route; valid: text starting with '/', e.g. /judges")


def _integer(value, key, minimum, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(key, f"{value!r} is not valid; valid: an integer >= {minimum}")
    return value


def _number(value, key, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise fail(key, f"{value!r} is not valid; valid: a number >= 0")
    return float(value)


def _deployment(value, fail) -> dict:
    if not isinstance(value, dict):
        raise fail("deployment", f"expected a mapping; valid keys: {', '.join(DEPLOYMENT_KEYS)}")
    for key in value:
        if key not in DEPLOYMENT_KEYS:
            raise fail(f"deployment.{key}", f"unknown key; valid: {', '.join(DEPLOYMENT_KEYS)}")
    if "num_replicas" in value and "autoscaling_config" in value:
        raise fail("deployment.num_replicas", "set either num_replicas or autoscaling_config, not both")
    if "max_ongoing_requests" in value:
        _integer(value["max_ongoing_requests"], "deployment.max_ongoing_requests", 1, fail)
    if "num_replicas" in value:
        _integer(value["num_replicas"], "deployment.num_replicas", 1, fail)
    _submapping(value, "autoscaling_config", AUTOSCALING_KEYS, fail)
    actor = _submapping(value, "ray_actor_options", ACTOR_KEYS, fail)
    for key in ("num_cpus", "num_gpus"):
        if key in actor:
            _number(actor[key], f"deployment.ray_actor_options.{key}", fail)
    # `ray_actor_options: null` reads as no options: pass {} on, not None, so readers can .get() it.
    return {**value, "ray_actor_options": actor} if "ray_actor_options" in value else dict(value)


def _submapping(value: dict, key: str, allowed: tuple, fail) -> dict:
    entries = value.get(key) or {}
    if not isinstance(entries, dict):
        raise fail(f"deployment.{key}", f"expected a mapping; valid keys: {', '.join(allowed)}")
    for name in entries:
        if name not in allowed:
            raise fail(f"deployment.{key}.{name}", f"unknown key; valid: {', '.join(allowed)}")
    return entries
