"""Progress of long work: the layers that do the work report it here, and the CLI chooses how it shows.

Reporting is display only: a reporter never touches an RNG, a tensor or the order of the work, so
every figure is the same whether progress shows or not. Until something installs a reporter
(`installed`), the default one shows nothing, so library calls, Ray trials and tests pay nothing and
need no display library. Sits beside `igmu.errors` at the bottom of the layers, so any layer may report.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping


class Task:
    """One line of progress. `advance` after each unit of work; `info` is the short text beside it
    (a loss, the aspect being judged)."""

    def advance(self, amount: float = 1, info: str | None = None) -> None:
        """Count `amount` more units done."""

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, info: str | None = None) -> None:
        """Set what changed; what is left as None stays as it was."""


class Reporter:
    """Shows nothing: the default, and the interface a display implements."""

    def start(self, description: str, total: float | None = None) -> Task:
        """A new line of progress; `total` None when the amount of work is not known up front."""
        return Task()

    def finish(self, task: Task) -> None:
        """The task's work ended (done or abandoned): its clock stops, its line stays."""

    def count(self, description: str, amount: float) -> None:
        """Add `amount` to the running count called `description`: one line however many callers add."""

    def close(self) -> None:
        """End the display, before the command prints its result."""


_SILENT = Reporter()
_CURRENT: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("igmu_progress", default=None)


def current() -> Reporter:
    """The installed reporter, else the silent default."""
    return _CURRENT.get() or _SILENT


@contextlib.contextmanager
def installed(reporter: Reporter) -> Iterator[Reporter]:
    """Report to `reporter` inside the block (this thread or task only; new threads see the default)."""
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def task(description: str, total: float | None = None) -> Iterator[Task]:
    """A line of progress for the block's work, finished however the block ends."""
    reporter = current()
    handle = reporter.start(description, total)
    try:
        yield handle
    finally:
        reporter.finish(handle)


def count(description: str, amount: float) -> None:
    current().count(description, amount)


def losses_text(losses: Mapping[str, float], shown: int = 3) -> str:
    """The first `shown` losses as `name=value` (more do not fit on one line)."""
    return " ".join(f"{name}={float(value):.4f}" for name, value in list(losses.items())[:shown])
