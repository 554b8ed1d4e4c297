"""The `igmu` group: it parses arguments and calls the layers below; it holds no logic of its own."""

from __future__ import annotations

import os
import sys

import click

from igmu.cli.analysis import compare_command, pareto_command
from igmu.cli.export import export_command
from igmu.cli.runs import algorithms_command, eval_command, run_command
from igmu.cli.serve import serve_group
from igmu.cli.sweeps import results_command, sweep_command, ui_command
from igmu.cli.world import world
from igmu.errors import RunFailed, UsageError
from igmu.threads import THREADS_VARIABLE, requested_threads


@click.group()
@click.version_option(package_name="igmu")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"torch threads per process (default: 1 for a small model such as the world's, else every "
                   f"CPU the process may use; also {THREADS_VARIABLE}).")
def cli(threads: int | None) -> None:
    """igmu: sweep machine-unlearning algorithms for image generators and score every run on five
    aspects (forgetting, preservation, quality, alignment, robustness)."""
    if threads is not None:
        # Through the environment, so the Ray workers a local sweep starts choose the same.
        os.environ[THREADS_VARIABLE] = str(threads)
    requested_threads()  # a bad IGMU_THREADS is refused before any work starts



for command in (world, eval_command, algorithms_command, run_command, sweep_command, results_command, ui_command,
                pareto_command, compare_command, export_command, serve_group):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one line on stderr and exit code 2, a run that failed as a whole
    one line and exit code 1, never a traceback."""
    try:
        result = cli.main(args=argv, prog_name="igmu", standalone_mode=False)
    except (UsageError, RunFailed) as err:
        click.echo(f"igmu: error: {err}", err=True)
        return err.exit_code
    except click.exceptions.UsageError as err:
        click.echo(f"igmu: error: {err.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("igmu: aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
