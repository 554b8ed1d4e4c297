"""The production stack, real, on this machine: PostgreSQL (initdb into a temporary folder), an
S3-compatible server (moto), `mlflow server` with its backend store in that Postgres and its artifacts
in that S3, and a multi-node Ray cluster started by scripts/local_cluster.py, the way docs/deploy.md
says. Shared by tests/test_cluster.py and bench/cluster_load.py; every context manager stops what it
started, by process id or process group, and removes its folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER_SCRIPT = REPO / "scripts" / "local_cluster.py"
START_S = 180
BUCKET = "igmu-test"
# moto accepts any credentials; boto3, pyarrow and MLflow's S3 store only need some to be set.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
# PostgreSQL refuses to run as root: as root, the server runs as this account (Debian's package
# creates it), else as nobody.
POSTGRES_ACCOUNTS = ("postgres", "nobody")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start `command` in its own process group (so it, and all it starts, can be stopped together)."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop(process: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM the process we started, then SIGKILL what is left of its process group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_until(ready, process: subprocess.Popen | None, log: Path, what: str, timeout_s: float = START_S) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def postgres_binaries() -> Path:
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb is not on PATH (Debian: apt-get install postgresql, then put "
                           "/usr/lib/postgresql/<version>/bin on PATH; .ci/run does both)")
    return Path(initdb).resolve().parent


@contextlib.contextmanager
def postgres(database: str = "mlflow"):
    """A PostgreSQL server on a free port with one database; yields its SQLAlchemy URL."""
    bindir = postgres_binaries()
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="igmu-pg"))
    if os.geteuid() == 0:
        account = next(name for name in POSTGRES_ACCOUNTS if _account_exists(name))
        shutil.chown(folder, account)
        run_as = ["runuser", "-u", account, "--"]
    data, port, user = folder / "data", free_port(), "igmu"
    try:
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, text=True)
        # fsync off: a test database need not survive a power cut, and fsyncs are slow on shared disks.
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-o",
                        options, "-w", "-t", str(START_S), "start"], check=True, capture_output=True, text=True)
        subprocess.run([*run_as, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user,
                        database], check=True, capture_output=True, text=True)
        # The driver named, as k8s/base/mlflow.yaml does: SQLAlchemy 2.1 defaults to psycopg 3.
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def s3_server(log_dir: Path):
    """moto's S3 server on a free port with one bucket; yields its endpoint URL."""
    port = free_port()
    process = launch([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_dir / "moto.log")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(endpoint), process, log_dir / "moto.log", "moto_server")
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        stop(process)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])


def s3_env(endpoint: str) -> dict:
    """What a process needs to use the S3 server: MLflow's artifact store reads MLFLOW_S3_ENDPOINT_URL,
    boto3 and pyarrow (Ray Tune's `--storage s3://...`) read AWS_ENDPOINT_URL."""
    return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
            "MLFLOW_S3_ENDPOINT_URL": endpoint}


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    client = s3_client(endpoint)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


@contextlib.contextmanager
def tracking_stack(folder: Path, workers: int = 2, s3_endpoint: str | None = None):
    """Postgres, S3 (moto's, or the one at `s3_endpoint`) and an `mlflow server` on both, with its
    artifacts proxied to s3://BUCKET/mlflow."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as started:
        database = started.enter_context(postgres())
        endpoint = s3_endpoint or started.enter_context(s3_server(folder))
        port = free_port()
        env = {**os.environ, **s3_env(endpoint)}
        server = launch([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                         "--backend-store-uri", database, "--artifacts-destination", f"s3://{BUCKET}/mlflow",
                         "--allowed-hosts", f"127.0.0.1,127.0.0.1:{port}", "--workers", str(workers)],
                        folder / "mlflow.log", env=env)
        started.callback(stop, server)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/health"), server, folder / "mlflow.log", "mlflow server")
        yield {"mlflow": url, "s3": endpoint, "database": database, "s3_env": s3_env(endpoint)}


@contextlib.contextmanager
def stack_and_cluster(folder: Path, workers: int = 2, worker_cpus: int = 1, mlflow_workers: int = 2):
    """S3 first (the nodes need its endpoint), then the tracking stack and the cluster side by side:
    each start is mostly waiting, and together they take the longer of the two, not the sum."""
    from concurrent.futures import ThreadPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    with s3_server(folder) as endpoint, contextlib.ExitStack() as started:
        managers = (tracking_stack(folder / "stack", mlflow_workers, endpoint),
                    local_cluster(folder / "cluster", node_env(s3_env(endpoint)), workers, worker_cpus))
        with ThreadPoolExecutor(len(managers)) as pool:
            futures = [pool.submit(manager.__enter__) for manager in managers]
        # Exit whatever did start, even when the other failed (ExitStack unwinds in reverse).
        for manager, future in zip(managers, futures):
            if future.exception() is None:
                started.push(manager.__exit__)
        for future in futures:
            future.result()  # raises the first start-up failure, after the clean-up is arranged
        yield futures[0].result(), futures[1].result()


def node_env(extra: dict | None = None) -> dict:
    """The environment the cluster's nodes (and so the trials) run in: this checkout's igmu first on
    the path, one thread per trial, no network, plus `extra` (the S3 endpoint and credentials)."""
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           **(extra or {})}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def local_cluster(folder: Path, env: dict, workers: int = 2, worker_cpus: int = 1):
    """`python scripts/local_cluster.py up` (docs/deploy.md); yields its state file's contents plus
    `state` (the file) and `driver_env` (what `igmu sweep --address` needs: the cluster's token)."""
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / "cluster.json"
    process = launch([sys.executable, str(CLUSTER_SCRIPT), "up", "--workers", str(workers), "--worker-cpus",
                      str(worker_cpus), "--state", str(state_file)], folder / "cluster.log", env=env)
    state = None
    try:
        wait_until(state_file.is_file, process, folder / "cluster.log", "local cluster")
        state = json.loads(state_file.read_text())
        driver_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": state["auth_token"]}
        yield {**state, "state": state_file, "driver_env": driver_env}
    finally:
        stop(process, grace_s=120)
        for node in (state or {}).get("nodes", {}).values():  # the script stops them; make sure
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node["pgid"], signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    """Whether any process of this process group still runs (zombies do not count)."""
    import psutil

    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False
