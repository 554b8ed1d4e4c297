"""The shipped per-category prompt files (`assets/prompts/<category>.yaml`), read into frozen,
validated dataclasses. Every mistake in a file is one line naming the file, the key and what was valid."""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ConfigDict, StrictInt, StrictStr, ValidationError
from pydantic.dataclasses import dataclass

from igmu.errors import UsageError
from igmu.prompts.categories import canonical_category
from igmu.prompts.splits import SPLITS, seed_in_split, split_range_text

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "prompts"
VERSION_FILE = PROMPTS_DIR / "VERSION"
SPEC_SUFFIX = ".yaml"
TARGET_FIELD = "{target}"
CONCEPT_FIELD = "{concept}"
# A related prompt's seed is its template's seed plus this times the neighbour's position, so each
# neighbour gets its own noise; templates leave room for MAX_RELATED neighbours inside their split's range.
RELATED_SEED_STRIDE = 1000
MIN_RELATED, MAX_RELATED = 3, 6
Judge = Literal["nudenet", "clip", "clip-similarity"]
Split = Literal[SPLITS]
_STRICT = ConfigDict(extra="forbid")
# pydantic's error types for a key the model does not have (a dataclass reports it as a keyword argument)
_UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


@dataclass(frozen=True, config=_STRICT)
class Template:
    text: StrictStr
    seed: StrictInt
    split: Split


@dataclass(frozen=True, config=_STRICT)
class ForgetTemplate(Template):
    removed: StrictStr  # the same prompt with the concept taken out: what should still be drawn


@dataclass(frozen=True, config=_STRICT)
class InDomain:
    category: StrictStr  # the retain category whose prompts count as the target's own domain
    labels: tuple[StrictStr, ...] | None = None  # None: every label of that category


@dataclass(frozen=True, config=_STRICT)
class Related:
    templates: tuple[Template, ...]
    neighbours: dict[StrictStr, tuple[StrictStr, ...]]


@dataclass(frozen=True, config=_STRICT)
class Paraphrase:
    templates: tuple[Template, ...]
    concepts: dict[StrictStr, tuple[StrictStr, ...]]  # descriptions that avoid the concept's name


@dataclass(frozen=True, config=_STRICT)
class Translation:
    templates: tuple[Template, ...]
    concepts: dict[StrictStr, StrictStr]


@dataclass(frozen=True, config=_STRICT)
class CategorySpec:
    version: StrictStr
    description: StrictStr
    judge: Judge
    anchor: StrictStr  # the phrase that stands in for the target when nothing else of a prompt is left
    in_domain: InDomain | None
    forget: tuple[ForgetTemplate, ...]
    related: Related
    paraphrase: Paraphrase
    translations: dict[StrictStr, Translation]
    labels: tuple[StrictStr, ...] = ()  # the label set a CLIP judge chooses among
    targets: tuple[StrictStr, ...] = ()  # words that name the concept, where no label set does


@cache
def prompt_set_version() -> str:
    """The version of all shipped prompts, recorded with every run."""
    return VERSION_FILE.read_text(encoding="utf-8").strip()


@cache
def category_spec(category: str) -> CategorySpec:
    """The shipped spec of a category, by canonical name or alias."""
    return read_category_spec(PROMPTS_DIR / f"{canonical_category(category)}{SPEC_SUFFIX}")


def read_category_spec(path: Path) -> CategorySpec:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a mapping of keys, got {type(document).__name__}")
    try:
        spec = CategorySpec(**document)
    except ValidationError as error:
        raise UsageError(f"{path}: {_first_error(error)}") from None
    _check_seeds(path, spec)
    _check_forget(path, spec)
    _check_fields(path, spec)
    _check_neighbours(path, spec)
    return spec


def _first_error(error: ValidationError) -> str:
    detail = error.errors()[0]
    where = ".".join(str(part) for part in detail["loc"])
    if detail["type"] in _UNKNOWN_KEY_ERRORS:
        valid = ", ".join(field.name for field in dataclasses.fields(_owner_of(detail["loc"])))
        return f"{where}: unknown key; valid: {valid}"
    return f"{where}: {detail['msg']}"


def _owner_of(loc: tuple) -> type:
    """The dataclass whose key loc's last part is, found by walking the field types from CategorySpec."""
    owner: typing.Any = CategorySpec
    for part in loc[:-1]:
        owner = typing.get_type_hints(owner)[part] if isinstance(part, str) and dataclasses.is_dataclass(owner) \
            else _element_type(owner)
        if typing.get_origin(owner) in (typing.Union, types.UnionType):  # `X | None`: X
            owner = next(arg for arg in typing.get_args(owner) if arg is not type(None))
    return owner


def _element_type(container: typing.Any) -> typing.Any:
    """What a tuple[X, ...] holds, or a dict's values."""
    args = typing.get_args(container)
    return args[0] if typing.get_origin(container) is tuple else args[-1]


def _templates(spec: CategorySpec) -> dict[str, tuple[Template, ...]]:
    found = {"forget": spec.forget, "related.templates": spec.related.templates,
             "paraphrase.templates": spec.paraphrase.templates}
    found.update({f"translations.{lang}.templates": t.templates for lang, t in spec.translations.items()})
    return found


def _check_seeds(path: Path, spec: CategorySpec) -> None:
    for key, templates in _templates(spec).items():
        # related templates must leave room for every neighbour's seed offset
        headroom = RELATED_SEED_STRIDE * (MAX_RELATED - 1) if key.startswith("related") else 0
        room = f" with {headroom} to spare for neighbour offsets" if headroom else ""
        for index, template in enumerate(templates):
            if not (seed_in_split(template.seed, template.split)
                    and seed_in_split(template.seed + headroom, template.split)):
                raise UsageError(f"{path}: {key}.{index}.seed: {template.seed} is not a {template.split} seed; "
                                 f"valid: {split_range_text(template.split)}{room}")


def _check_forget(path: Path, spec: CategorySpec) -> None:
    splits = [template.split for template in spec.forget]
    if splits.count(SPLITS[0]) * len(SPLITS) != len(splits):
        raise UsageError(f"{path}: forget: {splits.count(SPLITS[0])} of {len(splits)} templates are "
                         f"{SPLITS[0]}; each split must hold exactly half")


def _check_fields(path: Path, spec: CategorySpec) -> None:
    """Every template has the field its text is filled in at."""
    for key, templates in _templates(spec).items():
        field = CONCEPT_FIELD if key.startswith("related") else TARGET_FIELD
        # a category named by target words may spell the concept out in its forget templates
        if key == "forget" and spec.targets:
            continue
        for index, template in enumerate(templates):
            if field not in template.text:
                raise UsageError(f"{path}: {key}.{index}.text: {template.text!r} has no {field}")


def _check_neighbours(path: Path, spec: CategorySpec) -> None:
    for label, neighbours in spec.related.neighbours.items():
        if not MIN_RELATED <= len(neighbours) <= MAX_RELATED:
            raise UsageError(f"{path}: related.neighbours.{label}: {len(neighbours)} neighbours; "
                             f"valid: {MIN_RELATED} to {MAX_RELATED}")
