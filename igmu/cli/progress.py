"""Progress bars for a person at a terminal: rich's display behind `igmu.progress`'s reporter.

Shown on stderr, and only when stderr is a terminal and `--quiet` is not given, so a pipe, a log
file or `--json` output never carries them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Iterator

import click

from igmu import progress

QUIET_HELP = "Show no progress bars (they appear only when stderr is a terminal)."


class RichTask(progress.Task):
    def __init__(self, bars, task_id):
        self.bars = bars
        self.task_id = task_id

    def advance(self, amount: float = 1, info: str | None = None) -> None:
        self.bars.update(self.task_id, advance=amount, **_info(info))

    def update(self, *, completed=None, total=None, description=None, info=None) -> None:
        changes = {k: v for k, v in (("completed", completed), ("total", total), ("description", description))
                   if v is not None}
        self.bars.update(self.task_id, **changes, **_info(info))


def _info(info: str | None) -> dict:
    return {} if info is None else {"info": info}


class RichReporter(progress.Reporter):
    """One rich `Progress` display on stderr; each task is a line that stays when it finishes."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # Redirecting stdout into the display would move a command's results to stderr, so stdout is
        # redirected (printed above the bars) only when it is the same kind of thing: a terminal.
        from rich.table import Column

        # The info column alone may wrap: rich then narrows it first, where it would crop every column
        # (times included) to fit a long line such as a sweep's trial counts.
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                             MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                             TextColumn("{task.fields[info]}", table_column=Column(no_wrap=False)),
                             console=console, redirect_stdout=sys.stdout.isatty(), redirect_stderr=True)
        self.counters: dict[str, RichTask] = {}
        self.counted: dict[str, float] = {}

    def start(self, description: str, total: float | None = None) -> RichTask:
        self.bars.start()  # idempotent; started on first use so commands that fail early print no empty display
        return RichTask(self.bars, self.bars.add_task(description, total=total, info=""))

    def finish(self, task: RichTask) -> None:
        self.bars.stop_task(task.task_id)

    def count(self, description: str, amount: float) -> None:
        if description not in self.counters:
            self.counters[description] = self.start(description)
        self.counters[description].advance(amount)
        self.counted[description] = self.counted.get(description, 0) + amount

    def close(self) -> None:
        """Counts end complete (their total is what was counted), then the display stops."""
        for description, counter in self.counters.items():
            counter.update(total=self.counted[description])
            self.finish(counter)
        self.bars.stop()


@contextlib.contextmanager
def showing_progress(quiet: bool) -> Iterator[progress.Reporter]:
    """Install the rich reporter for the block when a person watches stderr; else keep the silent default."""
    if quiet or not sys.stderr.isatty():
        yield progress.current()
        return
    from rich.console import Console

    reporter = RichReporter(Console(stderr=True))
    try:
        with progress.installed(reporter):
            yield reporter
    finally:
        reporter.close()


def quiet_option(command):
    """Add --quiet/-q to a long-running command and run it under `showing_progress`; the command
    gets `quiet` too when it declares it (to silence output of its own)."""
    passed = ("quiet",) if "quiet" in inspect.signature(command).parameters else ()

    @functools.wraps(command)
    def run(*args, quiet: bool, **kwargs):
        with showing_progress(quiet):
            return command(*args, **{name: quiet for name in passed}, **kwargs)

    return click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)(run)


def end_progress() -> None:
    """Take the bars down (their last state stays on screen) before a command prints its result."""
    progress.current().close()
