"""Start, inspect and stop the judges applications on the Ray this process is connected to: the
world's judges (`JudgesServeConfig`) or the real-image judges (`RealJudgesServeConfig`); which one
follows from the config's class."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray import serve

from igmu.errors import UsageError
from igmu.serve import APP_NAME, DEPLOYMENTS, REAL_APP_NAME, real_app
from igmu.serve import app as world_app
from igmu.serve.config import JudgesServeConfig, RealJudgesServeConfig

RUNNING = "RUNNING"


def check_real_judges(config: RealJudgesServeConfig) -> None:
    """The models a real-judges replica loads, found here first: a replica failing to start would
    only show up as a deployment that never gets ready."""
    from igmu.models.real_judges import check_nudenet, locate_clip

    check_nudenet()
    locate_clip(config.judges.clip.model)


@dataclass(frozen=True)
class Application:
    name: str
    build: Callable
    preflight: Callable = lambda config: None


# The application a config deploys, by the config's class.
APPLICATIONS = {JudgesServeConfig: Application(APP_NAME, world_app.app_from_config),
                RealJudgesServeConfig: Application(REAL_APP_NAME, real_app.app_from_config, check_real_judges)}


def application_of(config) -> Application:
    return APPLICATIONS[type(config)]


def _state(value) -> str:
    """Serve's status enums as plain text ("RUNNING", not "ApplicationStatus.RUNNING")."""
    return str(getattr(value, "value", value))


def serve_details() -> dict:
    """The Serve controller's full view (applications, deployments, replicas with their actor names),
    or {} when Serve is not running. It is what `serve status` and the dashboard read; the public
    `serve.status()` has no per-replica actors."""
    from ray.serve.context import _get_global_client

    try:
        return _get_global_client().get_serve_details()
    except ray.serve.exceptions.RayServeException:  # Serve was never started on this cluster
        return {}


def check_gpus(config: JudgesServeConfig) -> None:
    """A replica asking for a GPU the cluster lacks would wait forever: fail first, on one line."""
    wanted = float(config.deployment.get("ray_actor_options", {}).get("num_gpus", 0) or 0)
    available = float(ray.cluster_resources().get("GPU", 0))
    if wanted > available:
        raise UsageError(f"{config.source}: deployment.ray_actor_options.num_gpus: {wanted:g} requested but this "
                         f"cluster has {available:g} GPU; valid: 0 to {available:g}")


def deploy_judges(config: JudgesServeConfig | RealJudgesServeConfig, http_host: str | None = None,
                  http_port: int | None = None) -> None:
    """Start Serve if needed (HTTP on host:port; no HTTP proxy at all when no port is given) and
    deploy or update the config's judges application; returns once it is running."""
    application = application_of(config)
    check_gpus(config)
    application.preflight(config)
    if not serve_details():
        if http_port is None:
            serve.start(proxy_location="Disabled")
        else:
            serve.start(http_options={"host": http_host or "127.0.0.1", "port": http_port})
    serve.run(application.build(config), name=application.name, route_prefix=config.route_prefix, blocking=False)


def judges_running(app: str = APP_NAME) -> bool:
    found = serve_details().get("applications", {}).get(app)
    return bool(found) and _state(found.get("status")) == RUNNING


def ensure_judges(config: JudgesServeConfig | RealJudgesServeConfig) -> bool:
    """Deploy the judges unless they already run here (say, from a RayService); True if deployed now."""
    if judges_running(application_of(config).name):
        return False
    deploy_judges(config)
    return True


@contextlib.contextmanager
def shared_judges(config: JudgesServeConfig | RealJudgesServeConfig):
    """The config's judges app while the block runs; removed afterwards only if this call deployed it."""
    deployed = ensure_judges(config)
    try:
        yield
    finally:
        if deployed:
            stop_judges(application_of(config).name)


def stop_judges(app: str = APP_NAME) -> bool:
    """Delete a judges application; False when it was not running."""
    if app not in serve_details().get("applications", {}):
        return False
    serve.delete(app)
    return True


def judges_status(app: str = APP_NAME) -> dict:
    """Application and deployment state, and per replica its state and queue length (requests
    assigned to it and not yet answered, as Serve's router sees them)."""
    details = serve_details()
    found = details.get("applications", {}).get(app)
    if not found:
        return {"application": app, "status": "NOT_RUNNING", "replicas": []}
    deployment = _deployment_details(details, app)
    replicas = []
    for replica in deployment.get("replicas", []):
        row = {"replica_id": replica["replica_id"], "state": _state(replica["state"]), "pid": replica.get("pid"),
               "node_ip": replica.get("node_ip"), "queue_length": None}
        if row["state"] == RUNNING:
            row["queue_length"] = _queue_length(replica["actor_name"])
        replicas.append(row)
    return {"application": app, "status": _state(found["status"]), "route_prefix": found.get("route_prefix"),
            "deployment": DEPLOYMENTS[app], "deployment_status": _state(deployment.get("status")),
            "http": _http_url(details, found.get("route_prefix")),
            "target_replicas": deployment.get("target_num_replicas"), "replicas": replicas}


def _http_url(details: dict, route_prefix: str | None) -> str | None:
    if _state(details.get("proxy_location")) == "Disabled" or not route_prefix:
        return None
    http = details.get("http_options") or {}
    return f"http://{http.get('host')}:{http.get('port')}{route_prefix}"


def _deployment_details(details: dict, app: str = APP_NAME) -> dict:
    return details.get("applications", {}).get(app, {}).get("deployments", {}).get(DEPLOYMENTS[app], {})


def _queue_length(actor_name: str) -> int | None:
    try:
        actor = ray.get_actor(actor_name, namespace="serve")
        return int(ray.get(actor.get_num_ongoing_requests.remote(), timeout=10))
    except (ValueError, ray.exceptions.RayError):  # the replica went away between the two calls
        return None


def format_status(status: dict) -> str:
    if status["status"] == "NOT_RUNNING":
        return f"{status['application']}: not running"
    queues = [r["queue_length"] for r in status["replicas"] if r["queue_length"] is not None]
    running = sum(r["state"] == RUNNING for r in status["replicas"])
    lines = [f"{status['application']}: {status['status']}  http {status['http'] or 'off (handle only)'}  "
             f"replicas {running}/{status['target_replicas']} running  queued {sum(queues)}"]
    lines += [f"  replica {r['replica_id']}  {r['state']}  pid {r['pid']}  queue {r['queue_length']}"
              for r in status["replicas"]]
    return "\n".join(lines)
