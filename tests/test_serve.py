"""The judges on a real Ray Serve application on the session's local Ray: scores equal the in-process
judges' bit for bit over both paths (DeploymentHandle and HTTP), bad input is a 4xx and the replica
keeps serving, concurrent clients are batched together, and a killed replica is replaced while the
client retries."""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from serve_helpers import encode_png
from test_cluster_job import free_port

from igmu.errors import UsageError
from igmu.serve.images import encode_npy

# Every test talks to a real Ray Serve application.
pytestmark = pytest.mark.slow

MAX_IMAGES = 64
TEST_SETTINGS = {
    "max_images_per_request": MAX_IMAGES,
    "max_batch_size": 128,
    "batch_wait_timeout_s": 0.05,  # generous, so that concurrent requests surely meet in one batch
    "deployment": {"max_ongoing_requests": 128, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
}


def rendered_images(n: int, seed: int = 7) -> torch.Tensor:
    from igmu.world.render import random_scene, render_batch

    rng = np.random.default_rng(seed)
    return torch.from_numpy(render_batch([random_scene(rng) for _ in range(n)])).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def judges_app(ray_session):
    from ray import serve

    from igmu.serve.config import load_serve_config
    from igmu.serve.control import deploy_judges

    port = free_port()
    deploy_judges(load_serve_config(None, TEST_SETTINGS), "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/judges"
    serve.shutdown()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_same_scores(served: dict, local: dict, images: torch.Tensor) -> None:
    for name, judge in local.items():
        expected, got = judge.predict(images), served[name].predict(images)
        assert torch.equal(got["probs"], expected["probs"]), name
        assert torch.equal(got["features"], expected["features"]), name


def test_handle_scores_equal_in_process_scores(judges_app, judges):
    from igmu.serve.client import serve_judges

    served = serve_judges()
    assert {name: j.classes for name, j in served.items()} == {name: j.classes for name, j in judges.items()}
    # 70 > max_images_per_request: the client splits it, the replica batches the parts.
    assert_same_scores(served, judges, rendered_images(70))


def test_http_float32_scores_equal_in_process_scores(judges_app, judges):
    from igmu.serve.client import HttpJudgeClient, serve_judges

    assert_same_scores(serve_judges(HttpJudgeClient(judges_app)), judges, rendered_images(20, seed=8))


def test_http_accepts_png_and_uint8_arrays(judges_app, judges):
    images = rendered_images(5, seed=9)
    uint8_nhwc = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    quantised = torch.from_numpy(uint8_nhwc).permute(0, 3, 1, 2).float() / 255
    expected = {name: judge.predict(quantised) for name, judge in judges.items()}
    bodies = {"png": {"png": [encode_png(image) for image in uint8_nhwc]},
              "uint8 NHWC": {"npy": encode_npy(uint8_nhwc)},
              "uint8 NCHW": {"npy": encode_npy(uint8_nhwc.transpose(0, 3, 1, 2))}}
    for label, images_payload in bodies.items():
        status, body = post(judges_app, {"images": images_payload, "judges": ["object", "sensitive"]})
        assert status == 200 and body["count"] == 5 and set(body["judges"]) == {"object", "sensitive"}, label
        for name, result in body["judges"].items():
            assert np.array_equal(np.asarray(result["probs"], np.float32), expected[name]["probs"].numpy()), label
            assert np.array_equal(np.asarray(result["features"], np.float32), expected[name]["features"].numpy())
            assert result["labels"] == [judges[name].classes[i] for i in expected[name]["probs"].argmax(-1)]


def test_http_get_describes_the_judges(judges_app, judges):
    with urllib.request.urlopen(judges_app, timeout=60) as response:
        info = json.loads(response.read())
    assert info["judges"] == {name: list(j.classes) for name, j in judges.items()}
    assert info["max_images_per_request"] == MAX_IMAGES and info["image_size"] == 32
    # glibc (Linux): the replica keeps freed memory, so forwards do not page-fault (igmu/serve/allocator.py).
    assert info["malloc_tuned"] is sys.platform.startswith("linux")


def jpeg_b64() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def pickled_npy() -> str:
    import base64
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


def _bad_bodies() -> dict:
    good = rendered_images(2).numpy()
    return {
        "not JSON": (b"{images:", 400, "not JSON"),
        "no images key": ({"judges": ["object"]}, 400, "'images'"),
        "unknown key": ({"images": {"npy": encode_npy(good)}, "extra": 1}, 400, "extra"),
        "unknown judge": ({"images": {"npy": encode_npy(good)}, "judges": ["colour"]}, 404, "colour"),
        "judge name not text": ({"images": {"npy": encode_npy(good)}, "judges": [["object"]]}, 400, "list of names"),
        "jpeg, not png": ({"images": {"png": [jpeg_b64()]}}, 400, "is JPEG, not PNG"),
        "unknown format": ({"images": {"jpeg": []}}, 400, "valid: npy, png"),
        "wrong shape": ({"images": {"npy": encode_npy(good[:, :, :16])}}, 400, "shape"),
        "wrong size": ({"images": {"npy": encode_npy(np.zeros((2, 3, 64, 64), np.float32))}}, 400, "shape"),
        "wrong dtype": ({"images": {"npy": encode_npy(good.astype(np.float64))}}, 400, "float64"),
        "out of range": ({"images": {"npy": encode_npy(good * 3)}}, 400, "[0, 1]"),
        "not base64": ({"images": {"npy": "%%%"}}, 400, "base64"),
        "pickled object array": ({"images": {"npy": pickled_npy()}}, 400, "npy"),
        "undecodable png": ({"images": {"png": [encode_npy(good)]}}, 400, "png[0]"),
        "png of the wrong size": ({"images": {"png": [encode_png(np.zeros((31, 32, 3), np.uint8))]}}, 400, "32x31"),
        "too many images": ({"images": {"npy": encode_npy(np.zeros((MAX_IMAGES + 1, 3, 32, 32), np.uint8))}},
                            413, "maximum is 64"),
        "no images": ({"images": {"png": []}}, 400, "no images"),
    }


def test_bad_http_input_is_a_4xx_and_the_replica_keeps_serving(judges_app):
    for label, (body, status, fragment) in _bad_bodies().items():
        got_status, got = post(judges_app, body)
        assert got_status == status, (label, got)
        assert fragment in got["error"] and "\n" not in got["error"], (label, got)
    status, body = post(judges_app, {"images": {"npy": encode_npy(rendered_images(3).numpy())}})
    assert status == 200 and body["count"] == 3 and len(body["judges"]) == 4


def test_bad_handle_input_is_a_usage_error_and_the_next_call_succeeds(judges_app):
    from igmu.serve.client import HandleJudgeClient

    client = HandleJudgeClient()
    with pytest.raises(UsageError, match="shape"):
        client.predict("object", np.zeros((2, 3, 31, 31), np.float32))
    with pytest.raises(UsageError, match="unknown judge 'colour'"):
        client.predict("colour", np.zeros((2, 3, 32, 32), np.float32))
    assert client.predict("object", np.zeros((2, 3, 32, 32), np.float32))["probs"].shape == (2, 8)
    assert client.retries == 0


def test_concurrent_clients_share_batches_and_scores_stay_exact(judges_app, judges):
    from igmu.serve.client import HandleJudgeClient, serve_judges

    images = rendered_images(48, seed=11)
    served = serve_judges()
    names = list(judges)
    results, errors = {}, []

    def client(i: int) -> None:
        try:  # every client asks a different judge about a different slice: batches mix both
            name, part = names[i % len(names)], images[(i * 5) % 40:(i * 5) % 40 + 8]
            results[i] = (name, part, served[name].predict(part))
        except Exception as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    before = HandleJudgeClient().stats()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for name, part, got in results.values():
        expected = judges[name].predict(part)
        assert torch.equal(got["probs"], expected["probs"]) and torch.equal(got["features"], expected["features"])
    after = HandleJudgeClient().stats()
    assert after["requests"] - before["requests"] >= 12
    assert after["batches"] - before["batches"] < 12, "concurrent requests were never batched together"
    # Every request holds 8 images, so more than 8 per batch on average means requests were merged.
    assert (after["images"] - before["images"]) / (after["batches"] - before["batches"]) > 8


def test_a_killed_replica_is_replaced_and_the_client_retries(judges_app, judges):
    import ray
    from serve_helpers import replica_actor_names

    from igmu.serve.client import HandleJudgeClient, ServeJudge

    images = rendered_images(MAX_IMAGES, seed=12)
    expected = judges["style"].predict(images)
    client = HandleJudgeClient()
    judge = ServeJudge(client, "style", judges["style"].classes, MAX_IMAGES)
    outputs, stop = [], threading.Event()

    def loop() -> None:
        while not stop.is_set():
            outputs.append(judge.predict(images))

    (victim,) = replica_actor_names()
    # Several clients keep the replica busy, so the kill lands while requests are in flight.
    workers = [threading.Thread(target=loop) for _ in range(4)]
    for worker in workers:
        worker.start()
    while len(outputs) < 4:
        time.sleep(0.05)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    deadline = time.time() + 180
    while time.time() < deadline and (not replica_actor_names() or replica_actor_names() == [victim]):
        time.sleep(0.5)
    served_before = len(outputs)
    while time.time() < deadline and len(outputs) < served_before + 2:
        time.sleep(0.1)
    stop.set()
    for worker in workers:
        worker.join(timeout=300)
    assert not any(worker.is_alive() for worker in workers)
    assert replica_actor_names() and replica_actor_names() != [victim]
    assert len(outputs) >= served_before + 2
    for output in outputs:
        assert torch.equal(output["probs"], expected["probs"]) and torch.equal(output["features"], expected["features"])
    assert client.retries >= 1, "the kill landed between requests; nothing was retried"


def test_scorecard_through_serve_equals_the_local_scorecard(judges_app, judges, world_generator):
    from igmu.metrics.cache import ImageCache
    from igmu.metrics.context import Budget
    from igmu.metrics.scorecard import build_context, scorecard
    from igmu.serve.client import serve_judges

    budget = Budget("full", forget=4, retain=6, related=3, paraphrase=3, attack_prompts=1, attack_steps=1)
    cache = ImageCache()  # shared: both scorecards read the very same images
    local = scorecard(build_context(world_generator, "hazard", budget, original=world_generator, judges=judges,
                                    cache=cache))
    served = scorecard(build_context(world_generator, "hazard", budget, original=world_generator,
                                     judges=serve_judges(), cache=cache))
    assert served == local
