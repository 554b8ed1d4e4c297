"""The `Unlearner` interface, typed hyperparameters and the algorithm registry.

An algorithm is one file with one `Unlearner` subclass: a `Params` dataclass of typed hyperparameters
(defaults from the official code, rescaled for the world model where noted), `prepare()` for
one-off work and `step()` for one optimisation step written like the paper. The loop that drives
`step()` lives once, in `igmu.algorithms.loop`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from igmu.algorithms.common import make_optimizer, select_parameters
from igmu.algorithms.task import UnlearningTask
from igmu.errors import UsageError
from igmu.models.kinds import GeneratorKind, kind_names
from igmu.models.text_to_image import Generator


def hyperparameter(default, low=None, high=None, doc: str = "", log: bool = False):
    """A dataclass field carrying its valid range and documentation."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc, "log": log})


@dataclass
class CommonParams:
    """Hyperparameters every fine-tuning algorithm shares."""

    lr: float = hyperparameter(1e-4, 1e-7, 1e-1, "Adam learning rate", log=True)
    steps: int = hyperparameter(100, 1, 100_000, "optimisation steps")
    batch_size: int = hyperparameter(8, 1, 1024, "prompts (or images) per step")


class Unlearner:
    """Base class: subclasses set `name` (via @register_algorithm), `paper`, `repo`, `Params`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    repo: ClassVar[str] = ""
    # World targets are objects, styles, characters and the sensitive hazard badge; a real model's
    # targets are sensitive (nudity), object, style, celebrity, or a plain prompt.
    categories: ClassVar[tuple[str, ...]] = ("object", "style", "sensitive", "character", "celebrity", "prompt")
    # The kinds of generator (igmu.models.kinds) the algorithm can edit, declared in its own file.
    # Commands load the model an algorithm needs from this, and tests pick their fixtures by it.
    generator_kinds: ClassVar[tuple[type[GeneratorKind], ...]] = ()
    Params: ClassVar[type] = CommonParams
    # Defaults on world kinds that differ by target category, measured on the world model (e.g. a
    # faster rate for the small hazard badge), not the papers' per-category choices: ESD, say, runs
    # ESD-x on every world category, since that is what its world figures were measured with.
    # Applied under the user's overrides by `make_params`.
    category_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # How the result exports: True when the changed weights alone carry the unlearning, so a saved
    # Stable Diffusion model is a stock diffusers pipeline. False for methods that change the sampler
    # or keep adapters apart: their saved folders name igmu's pipeline and stock loaders refuse them,
    # since loading the weights alone would silently give back a model that was never erased.
    stock_weights: ClassVar[bool] = True
    # True for inference-time methods (SLD): they change how the model samples, not its weights, by
    # installing a guidance rule on the generator (`igmu.models.guidance`). Efficiency then reports
    # the sampling overhead, and the rule travels with the trial's weights and any saved folder.
    edits_sampler: ClassVar[bool] = False
    # Why no model folder can hold the result, or "" when one can: methods that add modules applied
    # by hooks (Receler's erasers). `igmu run --out` then saves everything but the model folder, and
    # `igmu export` refuses, instead of writing a folder that loads un-erased.
    unsaved_reason: ClassVar[str] = ""
    # On kinds that use official defaults (`GeneratorKind.uses_official_defaults`: Stable Diffusion),
    # the official code's values for SD 1.x replace the world-rescaled `Params` defaults ...
    official_defaults: ClassVar[dict[str, Any]] = {}
    # ... and the papers' own per-category choices (e.g. ESD-u for nudity and objects, ESD-x for
    # styles) replace `category_defaults`. These apply only there.
    official_category_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, generator: Generator, task: UnlearningTask, params=None, seed: int = 0):
        if generator.kind not in self.generator_kinds:
            raise UsageError(f"algorithm {self.name!r} cannot edit a {generator.kind.name!r} generator; "
                             f"valid kinds: {kind_names(self.generator_kinds)}")
        if task.category not in self.categories:
            raise UsageError(f"algorithm {self.name!r} cannot unlearn a {task.category!r} target; "
                             f"valid categories: {', '.join(self.categories)}")
        self.generator = generator
        self.task = task
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.step_index = 0
        self.rng = torch.Generator("cpu").manual_seed(seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.trained: dict[str, torch.nn.Parameter] = {}

    @property
    def total_steps(self) -> int:
        return int(self.params.steps)

    def prepare(self) -> None:
        """One-off work before the first step (masks, anchor images, closed-form solves)."""

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    # --- optimisation (shared wiring; algorithms call these from prepare/step) -------------
    def train_unet_parameters(self, which: str, weight_decay: float = 0.0, optimizer: str = "adam") -> None:
        """Freeze everything, then make the chosen UNet parameter set trainable under Adam (or the
        optimiser the algorithm's official code uses)."""
        self.generator.text_encoder.requires_grad_(False)
        self.trained = select_parameters(self.generator.unet, which)
        self.generator.unet.train()
        self.optimizer = make_optimizer(self.trained.values(), self.params.lr, weight_decay, optimizer)

    @property
    def max_grad_norm(self) -> float | None:
        """Clip the global gradient norm to this before each step; None (the default) never clips.
        Algorithms whose official code clips override it."""
        return None

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step on `loss`; `mask_gradients` runs between backward and step, and the
        clip (if any) after the mask, so it measures the gradient that is actually applied."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.mask_gradients()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self.trained.values()), self.max_grad_norm)
        self.optimizer.step()

    def mask_gradients(self) -> None:
        """Hook for gradient masks (SalUn); a no-op by default."""

    # --- checkpointing -------------------------------------------------------------------
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.generator.unet, "text_encoder": self.generator.text_encoder}

    def extra_state(self) -> dict[str, Any]:
        """Algorithm state beyond weights and optimiser (e.g. a saliency mask)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def saved_apart(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensor files a run saves beside its model, by file stem (SPM's membrane, the plug-in
        its official code ships); none by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_index": self.step_index,
            "rng": self.rng.get_state(),
            "modules": {k: {n: t.clone() for n, t in m.state_dict().items()}
                        for k, m in self.trainable_modules().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "extra": copy.deepcopy(self.extra_state()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_index = state["step_index"]
        self.rng.set_state(state["rng"])
        for key, module in self.trainable_modules().items():
            module.load_state_dict(state["modules"][key])
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])

    # --- describing ----------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        return {"name": cls.name, "paper": cls.paper, "repo": cls.repo, "categories": list(cls.categories),
                "generator_kinds": [kind.name for kind in cls.generator_kinds], "stock_weights": cls.stock_weights,
                "edits_sampler": cls.edits_sampler,
                "doc": (cls.__doc__ or "").strip().splitlines()[0],
                "hyperparameters": [describe_field(f, cls.Params) for f in dataclasses.fields(cls.Params)],
                "category_defaults": _copied(cls.category_defaults),
                "official_defaults": dict(cls.official_defaults),
                "official_category_defaults": _copied(cls.official_category_defaults)}


def _copied(by_category: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {category: dict(values) for category, values in by_category.items()}


def describe_field(f: dataclasses.Field, params_cls: type) -> dict:
    kind = typing.get_type_hints(params_cls)[f.name]
    out = {"name": f.name, "type": _type_name(kind), "default": f.default, "doc": f.metadata.get("doc", "")}
    if typing.get_origin(kind) is Literal:
        out["choices"] = list(typing.get_args(kind))
    else:
        out["range"] = [f.metadata.get("low"), f.metadata.get("high")]
        out["log"] = bool(f.metadata.get("log"))
    return out


def _type_name(kind) -> str:
    if typing.get_origin(kind) is Literal:
        return "choice"
    return getattr(kind, "__name__", str(kind))


ALGORITHMS: dict[str, type[Unlearner]] = {}


def register_algorithm(name: str):
    def decorate(cls: type[Unlearner]) -> type[Unlearner]:
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is registered twice")
        if not cls.generator_kinds:
            raise ValueError(f"algorithm {name!r} declares no generator_kinds it can edit")
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return decorate


def get_algorithm(name: str) -> type[Unlearner]:
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    closest = difflib.get_close_matches(name, list(ALGORITHMS), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(closest)}? " if closest else ""
    raise UsageError(f"unknown algorithm {name!r}; {hint}valid: {', '.join(sorted(ALGORITHMS))}")


def kinds_edited_by(names) -> tuple[type[GeneratorKind], ...]:
    """The generator kinds any of the algorithms `names` edits, each once, in declaration order."""
    return tuple(dict.fromkeys(kind for name in names for kind in get_algorithm(name).generator_kinds))


def make_params(cls: type[Unlearner], overrides: dict[str, Any], category: str | None = None,
                kind: type[GeneratorKind] | None = None):
    """Build `cls.Params` from overrides (strings from the CLI or typed values from a sweep), on top
    of the defaults for the generator's kind and the target's category (`default_values`)."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    hints = typing.get_type_hints(cls.Params)
    values = {}
    for key, raw in {**default_values(cls, category, kind), **overrides}.items():
        if key not in fields:
            closest = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {closest[0]}?)" if closest else ""
            raise UsageError(f"unknown hyperparameter {key!r} for {cls.name}{hint}; valid: {', '.join(fields)}")
        values[key] = coerce(cls.name, key, raw, hints[key], fields[key])
    return cls.Params(**values)


def default_values(cls: type[Unlearner], category: str | None = None,
                   kind: type[GeneratorKind] | None = None) -> dict[str, Any]:
    """What replaces `cls.Params`' own defaults before the user's overrides: on a kind that uses
    official defaults, the official values and the official ones for the category; on a world kind
    (or no kind), the world-measured ones for the category."""
    if kind is not None and kind.uses_official_defaults:
        return {**cls.official_defaults, **cls.official_category_defaults.get(category, {})}
    return dict(cls.category_defaults.get(category, {}))


def coerce(algorithm: str, key: str, raw: Any, kind, f: dataclasses.Field):
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if raw not in choices:
            raise UsageError(f"{algorithm}.{key}={raw!r} is not a valid choice; valid: {', '.join(map(str, choices))}")
        return raw
    try:
        value = _parse_bool(raw) if kind is bool else kind(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{algorithm}.{key}={raw!r} is not a valid {kind.__name__}") from None
    if kind is int and isinstance(raw, float) and raw != int(raw):
        raise UsageError(f"{algorithm}.{key}={raw!r} is not a valid int")
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise UsageError(f"{algorithm}.{key}={value!r} is out of range; valid: {kind.__name__} in [{low}, {high}]")
    return value


def _parse_bool(raw) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(text)
