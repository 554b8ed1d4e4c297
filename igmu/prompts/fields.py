"""One row of a user's prompt file (a JSONL object, a CSV row, a text line) checked and made a Prompt.
Missing seeds and splits are derived from the prompt text, so a file gives the same prompts on every run."""

from __future__ import annotations

import math
from typing import Any

from igmu.errors import UsageError
from igmu.prompts.categories import canonical_label_category
from igmu.prompts.prompt import DEFAULT_LANG, SET_NAMES, Prompt
from igmu.prompts.splits import SPLITS, hashed_seed, hashed_split

PROMPT_FIELD = "prompt"
OPTIONAL_FIELDS = ("set", "seed", "guidance", "label", "split", "category", "lang")


def prompt_from_row(row: dict[str, Any], where: str, default_set: str) -> Prompt:
    """where: the file and line, for error messages."""
    values = {key: value for key, value in row.items() if value is not None and value != ""}
    text = _text(values.get(PROMPT_FIELD), where, PROMPT_FIELD)
    split = _choice(values.get("split"), where, "split", SPLITS) or hashed_split(text)
    seed = _seed(values["seed"], where) if "seed" in values else hashed_seed(text, split)
    category = values.get("category")
    return Prompt(text=text, seed=seed, split=split,
                  set=_choice(values.get("set"), where, "set", SET_NAMES) or default_set,
                  label=_text(values["label"], where, "label") if "label" in values else None,
                  category=_category(category, where) if category is not None else None,
                  lang=_text(values["lang"], where, "lang") if "lang" in values else DEFAULT_LANG,
                  guidance=_guidance(values["guidance"], where) if "guidance" in values else None)


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: column {column}: expected non-empty text, got {value!r}")
    return value.strip()


def _choice(value: Any, where: str, column: str, valid: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    value = value.strip().lower() if isinstance(value, str) else value
    if value not in valid:
        raise UsageError(f"{where}: column {column}: {value!r} is not valid; valid: {', '.join(valid)}")
    return value


def _category(value: Any, where: str) -> str:
    try:
        return canonical_label_category(_text(value, where, "category"))
    except UsageError as error:
        raise UsageError(f"{where}: column category: {error}") from None


def _seed(value: Any, where: str) -> int:
    seed = _integer(value)
    if seed is None or seed < 0:
        raise UsageError(f"{where}: column seed: {value!r} is not a non-negative integer")
    return seed


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())  # exact, where a float would round a seed above 2**53
    number = _number(value)
    # a whole float ("42.0") is how spreadsheets and pandas often write an integer
    return int(number) if number is not None and number.is_integer() else None


def _guidance(value: Any, where: str) -> float:
    number = _number(value)
    if number is None or isinstance(value, bool):
        raise UsageError(f"{where}: column guidance: {value!r} is not a number")
    return number


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
