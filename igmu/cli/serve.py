"""`igmu serve judges|status|stop`: the detector judges as a Ray Serve application (`--real`: the
real-image judges, CLIP and NudeNet, as a second one).

Argument parsing and the status loop only; the application is `igmu.serve.app`, its control
`igmu.serve.control`. Registered on the `igmu` group in `igmu.cli.main`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from igmu.errors import UsageError

ADDRESS_HELP = "Ray cluster address ('auto', host:port, ray://host:port); default: $RAY_ADDRESS, else 'auto'."
REAL_HELP = "The real-image judges (CLIP, NudeNet; igmu/serve/real_judges.yaml) instead of the world's."


def app_name(real: bool) -> str:
    from igmu.serve import APP_NAME, REAL_APP_NAME

    return REAL_APP_NAME if real else APP_NAME


@click.group("serve")
def serve_group() -> None:
    """Host the detector judges on Ray Serve, batched and shared by every trial."""


@serve_group.command("judges")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Serve settings replacing the packaged igmu/serve/judges.yaml (real_judges.yaml with --real).")
@click.option("--real", is_flag=True, help=REAL_HELP)
@click.option("--address", default=None, help="Join this Ray cluster; default: $RAY_ADDRESS, else a new local Ray.")
@click.option("--host", default=None, help="HTTP host when this command starts Serve; default: Serve's (127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="HTTP port when this command starts Serve; default: Serve's (8000).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between status lines.")
def judges_command(config_path: Path | None, real: bool, address: str | None, host: str | None,
                   port: int | None, interval: float) -> None:
    """Start the judges application and block, printing a status line, until Ctrl-C (which stops it)
    or until `igmu serve stop` removes it."""
    from ray.serve.config import HTTPOptions

    from igmu.serve.config import load_real_serve_config, load_serve_config
    from igmu.serve.control import (
        RUNNING,
        deploy_judges,
        format_status,
        judges_status,
        stop_judges,
    )
    from igmu.sweep.engine import init_ray

    config = (load_real_serve_config if real else load_serve_config)(config_path)
    app = app_name(real)
    init_ray(address)
    defaults = HTTPOptions()
    deploy_judges(config, host or defaults.host, port or defaults.port)
    import ray

    status = judges_status(app)
    click.echo(f"igmu: judges ready at {status['http'] or 'a DeploymentHandle only'} (config {config.source}, "
               f"ray address {ray.get_runtime_context().gcs_address}); Ctrl-C stops them", err=True)
    try:
        while status["status"] == RUNNING:
            click.echo(format_status(status).splitlines()[0])
            time.sleep(interval)
            status = judges_status(app)
    except KeyboardInterrupt:
        stop_judges(app)
        click.echo("igmu: judges stopped", err=True)
        return
    click.echo("igmu: judges application removed; exiting", err=True)


@serve_group.command("status")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--real", is_flag=True, help=REAL_HELP)
def status_command(address: str | None, as_json: bool, real: bool) -> None:
    """Replicas of the judges application and the queue length of each."""
    from igmu.serve.control import format_status, judges_status

    _connect(address)
    status = judges_status(app_name(real))
    click.echo(json.dumps(status, indent=2) if as_json else format_status(status))


@serve_group.command("stop")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--real", is_flag=True, help=REAL_HELP)
def stop_command(address: str | None, real: bool) -> None:
    """Delete the judges application (Serve itself and other applications keep running)."""
    from igmu.serve.control import stop_judges

    _connect(address)
    click.echo("igmu: judges stopped" if stop_judges(app_name(real)) else "igmu: judges were not running")


def _connect(address: str | None) -> None:
    """Join a running cluster: status and stop never start a Ray of their own."""
    import ray

    if ray.is_initialized():
        return
    from igmu.sweep.engine import check_ray_address

    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    check_ray_address(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as err:
        raise UsageError(f"--address {address!r}: no Ray cluster there ({str(err).splitlines()[0]}); valid: the "
                         "address of a running cluster, e.g. the one `igmu serve judges` printed") from None
