"""What every command shares: JSON or table output after any progress bars, and quiet third-party libraries."""

from __future__ import annotations

import json
import os

import click

from igmu.cli.progress import end_progress


def quiet_libraries() -> None:
    """Nothing is ever downloaded at run time, and library progress bars drown the CLI's output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def emit(data, as_json: bool, table) -> None:
    """Print `data` as JSON, or hand it to `table` to print for a person (below any progress bars)."""
    end_progress()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        table(data)


def note(text: str) -> None:
    click.echo(f"igmu: note: {text}", err=True)
