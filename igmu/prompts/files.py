"""Reading a user's prompt file: JSONL, CSV (igmu's own columns or the I2P benchmark's), or plain text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from igmu.errors import UsageError
from igmu.prompts.fields import OPTIONAL_FIELDS, PROMPT_FIELD, prompt_from_row
from igmu.prompts.prompt import FORGET, Prompt

Rows = Iterator[tuple[int, dict[str, Any]]]  # (line number, the row's fields)
COMMENT = "#"
# Where each field may come from in a CSV, first column present wins: igmu's own name, then the I2P
# benchmark's evaluation columns, then the seed and guidance it was first generated with.
CSV_SOURCES = {"seed": ("seed", "evaluation_seed", "sd_seed"),
               "guidance": ("guidance", "evaluation_guidance", "sd_guidance")}
CSV_LAYOUTS = ("igmu: set,prompt[,seed,guidance,label,split,category]",
               "I2P: prompt,evaluation_seed,evaluation_guidance,...",
               "I2P: prompt,sd_seed,sd_guidance,...",
               "a lone prompt column")


def load_prompt_file(path: str | Path, default_set: str = FORGET) -> list[Prompt]:
    """The prompts in a .jsonl, .csv or .txt file; rows that name no set go to default_set."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UsageError(f"{path}: unknown prompt file type {path.suffix!r}; valid: {', '.join(READERS)}")
    text = _read(path)
    prompts = [prompt_from_row(row, f"{path}:{line}", default_set) for line, row in reader(text, path)]
    if not prompts:
        raise UsageError(f"{path}: the file holds no prompts")
    return prompts


def _read(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte order mark
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such prompt file") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read the prompt file ({error.strerror})") from None


def _jsonl_rows(text: str, path: Path) -> Rows:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}:{line}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{line}: expected a JSON object with a {PROMPT_FIELD!r} key, "
                             f"got {type(row).__name__}")
        yield line, row


def _csv_rows(text: str, path: Path) -> Rows:
    reader = csv.reader(io.StringIO(text, newline=""))  # keeps newlines inside quoted prompts
    header = [column.strip().lower() for column in next(reader, [])]
    if PROMPT_FIELD not in header:
        raise UsageError(f"{path}:1: no {PROMPT_FIELD!r} column (columns: {', '.join(header) or 'none'}); "
                         f"accepted layouts: {'; '.join(CSV_LAYOUTS)}")
    columns = _csv_columns(header)
    for cells in reader:
        if any(cell.strip() for cell in cells):
            yield reader.line_num, {field: cells[index] if index < len(cells) else None
                                    for field, index in columns.items()}


def _csv_columns(header: list[str]) -> dict[str, int]:
    """Which column index each field is read from."""
    columns = {PROMPT_FIELD: header.index(PROMPT_FIELD)}
    for field in OPTIONAL_FIELDS:
        present = [name for name in CSV_SOURCES.get(field, (field,)) if name in header]
        if present:
            columns[field] = header.index(present[0])
    return columns


def _text_rows(text: str, path: Path) -> Rows:
    for line, raw in enumerate(text.splitlines(), start=1):
        if raw.strip() and not raw.lstrip().startswith(COMMENT):
            yield line, {PROMPT_FIELD: raw.strip()}


READERS: dict[str, Callable[[str, Path], Rows]] = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".txt": _text_rows}
