"""A multi-node Ray cluster on one machine: a head and N worker nodes, each its own `ray start`.

    python scripts/local_cluster.py up --workers 2 --state cluster.json      # runs until Ctrl-C
    python scripts/local_cluster.py kill worker-1 --state cluster.json       # fault injection

`up` starts the head (0 CPUs, like KubeRay's head: trials never run there) and the workers (each
`--worker-cpus` CPUs and one `gpu_node` resource standing in for a GPU node), each as a
`ray start --block` in its own process group, waits until every node has joined, writes the state
file (the address to give `igmu sweep --address`, and per node its Ray node id and process group),
and stays in the foreground; Ctrl-C or SIGTERM stops every node it started, and nothing else (never
`ray stop`, which stops every Ray of this user on the machine).

`kill NODE` SIGKILLs one node's process group: its raylet, object store, agents and the workers
running trials die at once, the way a machine that loses power takes them down.

The nodes inherit this process's environment: export what trials need (IGMU_RESULTS, the S3
endpoint and credentials for `--storage s3://...`, PYTHONPATH) before `up`. Token auth is on (Ray's
default would otherwise depend on whether a ~/.ray/auth_token happens to exist): the token is
$RAY_AUTH_TOKEN when set, else a new one, recorded in the state file (mode 600) for drivers to use. The tests
(tests/cluster_stack.py) start their cluster with this same script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The resource every worker node offers once: sweeps and tests stand it in for a GPU node.
NODE_RESOURCE = "gpu_node"
JOIN_TIMEOUT_S = 180
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_binary() -> str:
    """The `ray` beside this Python, so the nodes run the same Ray (and igmu) as the driver."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


def node_command(name: str, gcs_port: int, temp_dir: Path, cpus: int, manager_port: int) -> list[str]:
    # Every port Ray would otherwise take at a fixed default (dashboard agent 52365, client server
    # 10001) is chosen free: other Rays on this machine, and the other nodes, may hold the defaults.
    ports = [f"--node-manager-port={manager_port}", f"--dashboard-agent-listen-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    if name == "head":
        # The dashboard process runs even when not "included" (it serves the state API), on 8265 by default.
        return [ray_binary(), "start", "--head", "--block", f"--port={gcs_port}", "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}", f"--num-cpus={cpus}",
                "--num-gpus=0", *ports]
    return [ray_binary(), "start", "--block", f"--address=127.0.0.1:{gcs_port}", f"--num-cpus={cpus}",
            "--num-gpus=0", f"--resources={json.dumps({NODE_RESOURCE: 1})}", *ports]


def up(args) -> None:
    state_path = Path(args.state).resolve()
    # Short: a node's socket paths live under it and must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray"))
    log_dir = Path(args.log_dir or state_path.parent).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    gcs_port = free_port()
    token = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)
    # Set here too: this process's own driver connection (joined_nodes) must present the token.
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"})
    os.environ.pop("RAY_ADDRESS", None)
    env = dict(os.environ)
    import ray  # only now: Ray reads its auth mode from the environment when imported
    specs = [("head", args.head_cpus)] + [(f"worker-{i}", args.worker_cpus) for i in range(1, args.workers + 1)]
    nodes: dict[str, dict] = {}
    processes: list[subprocess.Popen] = []

    def stop_all() -> None:
        for stop in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(stop, signal.SIG_IGN)
        for process in reversed(processes):  # workers first, the head (GCS) last
            if process.poll() is None:
                process.terminate()  # `ray start --block` stops the Ray processes it started
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stragglers of this node's group only
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
        state_path.unlink(missing_ok=True)

    stop_on_signals()
    try:
        address = f"127.0.0.1:{gcs_port}"
        for name, cpus in specs:
            # One node at a time, each joined before the next starts: `ray start` gives its raylet a
            # fixed 30 s to register, which nodes starting together on a busy machine can miss.
            for attempt in range(1, START_ATTEMPTS + 1):
                port = free_port()
                log_path = log_dir / f"ray-{name}.log"
                with log_path.open("a") as log:
                    process = subprocess.Popen(node_command(name, gcs_port, temp_dir, cpus, port), stdout=log,
                                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
                processes.append(process)
                nodes[name] = {"pgid": process.pid, "node_manager_port": port}
                if name == "head":
                    wait_for_port(gcs_port, process, log_path)
                    # One driver connection, for reading the GCS's node table while the nodes join.
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                joined = wait_for_node(port, process)
                if joined:
                    nodes[name]["node_id"] = joined["NodeID"]
                    break
                if attempt == START_ATTEMPTS or name == "head":
                    raise RuntimeError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(ProcessLookupError):  # what is left of the failed start
                    os.killpg(process.pid, signal.SIGKILL)
                processes.remove(process)
        ray.shutdown()
        stop_on_signals()  # again: the driver connection above replaced the SIGTERM handler with Ray's
        partial = state_path.with_suffix(".tmp")
        partial.touch(mode=0o600)  # it holds the token
        partial.write_text(json.dumps({"address": address, "auth_token": token, "temp_dir": str(temp_dir),
                                       "pid": os.getpid(), "nodes": nodes}, indent=2))
        os.replace(partial, state_path)  # readers see a whole file: its presence means ready
        print(f"cluster up: --address {address} ({args.workers} workers); state in {state_path}", flush=True)
        while True:
            time.sleep(3600)
    except Stop:
        pass
    finally:
        stop_all()


class Stop(Exception):
    """SIGTERM or SIGINT: stop the cluster."""


def stop_on_signals() -> None:
    def handler(*_):
        raise Stop

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def wait_for_node(manager_port: int, process: subprocess.Popen) -> dict | None:
    """The node's GCS record once it has joined (known by its node manager port); None when its
    `ray start` gave up."""
    import ray

    deadline = time.time() + JOIN_TIMEOUT_S
    while time.time() < deadline:
        by_port = {node["NodeManagerPort"]: node for node in ray.nodes() if node["Alive"]}
        if manager_port in by_port:
            return by_port[manager_port]
        if process.poll() is not None:
            return None
        time.sleep(1)
    return None


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + JOIN_TIMEOUT_S
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"head exited:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"head not listening on {port} after {JOIN_TIMEOUT_S} s")


def kill(args) -> None:
    state = json.loads(Path(args.state).read_text())
    if args.node not in state["nodes"]:
        sys.exit(f"unknown node {args.node!r}; valid: {', '.join(state['nodes'])}")
    os.killpg(state["nodes"][args.node]["pgid"], signal.SIGKILL)
    print(f"killed {args.node} (node {state['nodes'][args.node]['node_id']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the cluster and stay in the foreground")
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--worker-cpus", type=int, default=1)
    start.add_argument("--head-cpus", type=int, default=0)
    start.add_argument("--state", required=True, help="where to write the address and the nodes")
    start.add_argument("--log-dir", default=None, help="the nodes' logs (default: beside the state file)")
    stop = commands.add_parser("kill", help="SIGKILL one node (its raylet and workers)")
    stop.add_argument("node", help="head, worker-1, worker-2, ...")
    stop.add_argument("--state", required=True)
    args = parser.parse_args()
    up(args) if args.command == "up" else kill(args)


if __name__ == "__main__":
    main()
