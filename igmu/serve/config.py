"""The judges application's settings: the packaged `judges.yaml`, a `--config FILE` that replaces it,
and the `args` of a Serve application builder that override single keys. A pydantic model checks
them; every mistake is one line naming the key (and its file and line, where it came from a file)
and what would have been valid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

from igmu.config_file import (
    Integer,
    KeyPath,
    Location,
    Node,
    Number,
    Text,
    key_error,
    mapping_entries,
    read_node,
    validate,
)
from igmu.models.real_judge_config import RealJudgesConfig

DEFAULT_CONFIG = Path(__file__).with_name("judges.yaml")
DEFAULT_REAL_CONFIG = Path(__file__).with_name("real_judges.yaml")
SERVE_DEFAULT_MAX_ONGOING_REQUESTS = 5  # what Serve uses when `deployment` leaves it out
_FORBID_EXTRA = ConfigDict(extra="forbid")


class ActorOptions(TypedDict, total=False):
    """Ray's options for each replica's actor."""

    __pydantic_config__ = _FORBID_EXTRA

    num_cpus: Annotated[Number, Field(ge=0)]
    num_gpus: Annotated[Number, Field(ge=0)]
    memory: Any
    resources: Any
    runtime_env: Any


class AutoscalingConfig(TypedDict, total=False):
    """Only the keys are checked here; Serve checks their values."""

    __pydantic_config__ = _FORBID_EXTRA

    min_replicas: Any
    initial_replicas: Any
    max_replicas: Any
    target_ongoing_requests: Any
    upscale_delay_s: Any
    downscale_delay_s: Any
    metrics_interval_s: Any
    look_back_period_s: Any
    upscaling_factor: Any
    downscaling_factor: Any


def _none_as_empty(value: Any) -> Any:
    # `ray_actor_options: null` reads as no options: pass {} on, not None, so readers can .get() it.
    return {} if value is None else value


def _replicas_or_autoscaling(deployment: dict) -> dict:
    if "num_replicas" in deployment and "autoscaling_config" in deployment:
        raise key_error(("num_replicas",), "set either num_replicas or autoscaling_config, not both",
                        deployment["num_replicas"])
    return deployment


class Deployment(TypedDict, total=False):
    """Handed to `@serve.deployment` / `.options()` as it is."""

    __pydantic_config__ = _FORBID_EXTRA

    max_ongoing_requests: Annotated[Integer, Field(ge=1)]
    num_replicas: Annotated[Integer, Field(ge=1)]
    autoscaling_config: AutoscalingConfig | None
    ray_actor_options: Annotated[ActorOptions, BeforeValidator(_none_as_empty)]


class JudgesServeSettings(BaseModel):
    """What a config file or builder `args` may set (docs/serve.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    judges_dir: Text | None = None
    route_prefix: Annotated[str, Field(strict=True, pattern=r"^/")] = "/judges"
    image_size: Annotated[Integer, Field(ge=1)] = 32
    max_images_per_request: Annotated[Integer, Field(ge=1)] = 256
    max_batch_size: Annotated[Integer, Field(ge=1)] = 256
    batch_wait_timeout_s: Annotated[Number, Field(ge=0)] = 0.005
    malloc_retain_mb: Annotated[Integer, Field(ge=0)] = 64
    deployment: Annotated[Deployment, BeforeValidator(_none_as_empty), AfterValidator(_replicas_or_autoscaling),
                          Field(default_factory=dict)]

    @model_validator(mode="after")
    def _batches_fit(self):
        return batches_fit(self)


def batches_fit(settings):
    """A request fits a batch, and a replica can hold a full batch's requests."""
    if settings.max_images_per_request > settings.max_batch_size:
        raise key_error(("max_images_per_request",), f"{settings.max_images_per_request} exceeds max_batch_size "
                        f"{settings.max_batch_size}; valid: at most max_batch_size", settings.max_images_per_request)
    ongoing = settings.deployment.get("max_ongoing_requests", SERVE_DEFAULT_MAX_ONGOING_REQUESTS)
    if ongoing < settings.max_batch_size:
        raise key_error(("deployment", "max_ongoing_requests"),
                        f"{ongoing} is below max_batch_size {settings.max_batch_size}; a replica never holds more "
                        "requests than this, so batches could never fill; valid: >= max_batch_size", ongoing)
    return settings


class JudgesServeConfig(JudgesServeSettings):
    """The settings and where they came from."""

    source: str = str(DEFAULT_CONFIG)

    def judges_path(self) -> Path:
        from igmu.models.judges import world_judges_dir

        return Path(self.judges_dir) if self.judges_dir else world_judges_dir()

    def deployment_options(self) -> dict:
        return dict(self.deployment)

    def to_args(self) -> dict:
        """The builder `args` that reproduce this config (what `build_app` receives)."""
        return {key: getattr(self, key) for key in SETTING_KEYS}


class RealJudgesServeSettings(BaseModel):
    """The real-image judges' application (`igmu serve judges --real`, `eval.judges: serve` on a
    Stable Diffusion sweep): which judges (`judges`, as in a judges file) and how Serve batches them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    judges: RealJudgesConfig = RealJudgesConfig()
    route_prefix: Annotated[str, Field(strict=True, pattern=r"^/")] = "/real-judges"
    max_images_per_request: Annotated[Integer, Field(ge=1)] = 64
    max_batch_size: Annotated[Integer, Field(ge=1)] = 64
    batch_wait_timeout_s: Annotated[Number, Field(ge=0)] = 0.01
    malloc_retain_mb: Annotated[Integer, Field(ge=0)] = 0
    deployment: Annotated[Deployment, BeforeValidator(_none_as_empty), AfterValidator(_replicas_or_autoscaling),
                          Field(default_factory=dict)]

    @model_validator(mode="after")
    def _batches_fit(self):
        return batches_fit(self)


class RealJudgesServeConfig(RealJudgesServeSettings):
    """The settings and where they came from."""

    source: str = str(DEFAULT_REAL_CONFIG)

    def deployment_options(self) -> dict:
        return dict(self.deployment)

    def to_args(self) -> dict:
        """The builder `args` that reproduce this config (plain data: a RayService's args are YAML)."""
        return {**{key: getattr(self, key) for key in RealJudgesServeSettings.model_fields},
                "judges": self.judges.model_dump(mode="json")}


SETTING_KEYS = tuple(JudgesServeSettings.model_fields)
# The fields' defaults, unchecked: without the packaged file's deployment they fail the batch check.
DEFAULTS = JudgesServeConfig.model_construct()


def load_serve_config(path: str | Path | None = None, overrides: dict | None = None) -> JudgesServeConfig:
    """The packaged config, or `path` instead of it, with `overrides` (builder args) on top."""
    return _load(JudgesServeConfig, DEFAULT_CONFIG, path, overrides)


def load_real_serve_config(path: str | Path | None = None, overrides: dict | None = None) -> RealJudgesServeConfig:
    """The real judges' packaged config (`real_judges.yaml`), or `path`, with `overrides` on top."""
    return _load(RealJudgesServeConfig, DEFAULT_REAL_CONFIG, path, overrides)


def parse_serve_config(data: dict, source: str = "<args>") -> JudgesServeConfig:
    return _validated(JudgesServeConfig, Node.wrap(data, Location(source)), source)


def _load(config_class: type, default: Path, path: str | Path | None, overrides: dict | None):
    source = Path(path) if path else default
    root = read_node(source, str(source), "serve config")
    entries = {} if root.value is None else mapping_entries(root, "serve config")
    shown = f"{source} with args {sorted(overrides)}" if overrides else str(source)
    given = {key: Node.wrap(value, Location(shown)) for key, value in (overrides or {}).items()}
    return _validated(config_class, Node({**entries, **given}, root.where), shown)


def _validated(config_class: type, root: Node, source: str):
    settings_class = config_class.__mro__[1]  # what a file may set: the config class less `source`
    settings = validate(settings_class, root, explain=_explain)
    return config_class(**dict(settings), source=source)


def _explain(error: ErrorDetails, path: KeyPath) -> str | None:
    if path == ("route_prefix",) and error["type"] == "string_pattern_mismatch":
        return f"{error['input']!r} is not a route; valid: text starting with '/', e.g. /judges or /real-judges"
    return None
