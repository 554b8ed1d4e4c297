"""`igmu serve judges|status|stop` against the session's real local Ray, and the serve config's checks."""

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from test_cluster_job import free_port

from igmu.errors import UsageError
from igmu.serve.config import DEFAULT_CONFIG, load_serve_config

SMALL_CONFIG = """
    max_images_per_request: 16
    max_batch_size: 32
    batch_wait_timeout_s: 0.01
    deployment:
      max_ongoing_requests: 32
      num_replicas: 1
      ray_actor_options: {num_cpus: 0.25}
"""


def igmu(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "igmu.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_the_packaged_config_is_valid_and_batches_fit():
    config = load_serve_config()
    assert config.source == str(DEFAULT_CONFIG) and config.route_prefix == "/judges"
    assert config.deployment["max_ongoing_requests"] >= config.max_batch_size >= config.max_images_per_request
    assert config.judges_path().joinpath("judges.json").is_file()


@pytest.mark.parametrize("overrides, fragment", [
    ({"max_batch_sise": 8}, "max_batch_sise: unknown key; valid: judges_dir"),
    ({"max_batch_size": 512}, "deployment.max_ongoing_requests: 256 is below max_batch_size 512"),
    ({"max_images_per_request": 300}, "max_images_per_request: 300 exceeds max_batch_size 256"),
    ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s: -1 is not valid"),
    ({"malloc_retain_mb": -8}, "malloc_retain_mb: -8 is not valid; valid: an integer >= 0"),
    ({"route_prefix": "judges"}, "route_prefix: 'judges' is not a route"),
    ({"deployment": {"max_ongoing_requests": 256, "num_replicas": 1, "autoscaling_config": {"min_replicas": 1}}},
     "either num_replicas or autoscaling_config"),
    ({"deployment": {"max_ongoing_requests": 256, "ray_actor_options": {"num_gpu": 1}}},
     "ray_actor_options.num_gpu: unknown key; valid: num_cpus, num_gpus"),
])
def test_bad_serve_settings_are_one_line_errors(overrides, fragment):
    with pytest.raises(UsageError) as err:
        load_serve_config(None, overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_null_actor_options_read_as_none(ray_session):
    from igmu.serve.control import check_gpus

    config = load_serve_config(None, {"deployment": {"max_ongoing_requests": 256, "ray_actor_options": None}})
    assert config.deployment["ray_actor_options"] == {}
    check_gpus(config)  # asks for no GPU: passes instead of failing on None


def test_build_app_applies_args_over_the_config():
    from igmu.serve.app import build_app

    app = build_app({"max_batch_size": 64, "max_images_per_request": 64, "deployment": {"max_ongoing_requests": 64, "num_replicas": 3,
                                                          "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.25}}})
    deployment = app._bound_deployment
    assert deployment.name == "JudgeScorer" and deployment.num_replicas == 3
    assert deployment.max_ongoing_requests == 64
    assert deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.25}
    assert app._bound_deployment.init_args[0]["max_batch_size"] == 64


@pytest.mark.slow
def test_a_bad_config_file_exits_2_before_starting_anything(tmp_path):
    bad = tmp_path / "judges.yaml"
    bad.write_text("max_batch_size: [1]\n")
    result = igmu("serve", "judges", "--config", str(bad))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "max_batch_size: [1] is not valid" in result.stderr


@pytest.mark.slow
def test_serve_judges_status_and_stop(ray_session, tmp_path):
    from ray import serve

    config = tmp_path / "judges.yaml"
    config.write_text(textwrap.dedent(SMALL_CONFIG))
    address = ray_session.get_runtime_context().gcs_address
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "igmu.cli", "serve", "judges", "--config", str(config),
                               "--address", address, "--port", str(port), "--interval", "0.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = server.stdout.readline()  # the first status line: the application is up
        assert line.startswith("judges: RUNNING") and f"http://127.0.0.1:{port}/judges" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/judges", timeout=60) as response:
            assert json.loads(response.read())["max_images_per_request"] == 16
        status = igmu("serve", "status", "--address", address, "--json")
        assert status.returncode == 0, status.stderr[-2000:]
        report = json.loads(status.stdout)
        assert report["status"] == "RUNNING" and report["target_replicas"] == 1
        assert [r["state"] for r in report["replicas"]] == ["RUNNING"] and report["replicas"][0]["queue_length"] == 0
        table = igmu("serve", "status", "--address", address)
        assert "replicas 1/1 running" in table.stdout and "queue 0" in table.stdout
        stopped = igmu("serve", "stop", "--address", address)
        assert stopped.returncode == 0 and "judges stopped" in stopped.stdout
        assert server.wait(timeout=120) == 0  # the blocking command ends once its app is gone
        again = igmu("serve", "status", "--address", address)
        assert again.returncode == 0 and again.stdout.strip() == "judges: not running"
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        serve.shutdown()
