"""Benchmark: judge throughput in images/s, (1) in-process batched forward (the ceiling), (2) Ray Serve
with batching under several concurrent clients, (3) Ray Serve with one image per request and no
batching. Goals: (2) >= 0.7 x (1) and (2) >= 4 x (3).

Serve runs on a fresh local Ray (no HTTP proxy: the DeploymentHandle path trials use), with one
replica of `--replica-cpus` CPUs; the in-process forward uses as many torch threads.

Each mode runs `--repeats` rounds and reports its best, because shared machines are noisy.

Both sides run with the same allocator setting (`--malloc-retain-mb`, the replica's
`malloc_retain_mb`), so the ceiling is not lowered by page faults the replica is spared, or the
other way round.

Clients send requests the size a sweep trial's judge calls have: interim scorecards (small budget)
call a judge on 16, 24 or 32 images, the final one (full budget) on 8, 48 or 96. A default trial
(100 to 200 steps, an interim scorecard every 25) makes 4 to 8 interim ones, so its median call is
32 to 48 images; the default, 32, is the smaller.

Usage: python bench/serve_judges.py [--images 1024] [--clients 4] [--request-images 32] [--json]
"""

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import torch


def rendered(n: int) -> np.ndarray:
    from igmu.world.render import random_scene, render_batch

    rng = np.random.default_rng(0)
    return np.ascontiguousarray(render_batch([random_scene(rng) for _ in range(n)]).transpose(0, 3, 1, 2))


def inprocess_ips(images: np.ndarray, judge_name: str, threads: int, batch: int, repeats: int) -> float:
    from igmu.models.judges import load_world_judges

    torch.set_num_threads(threads)
    judge = load_world_judges()[judge_name]
    tensor = torch.from_numpy(images)
    judge.predict(tensor[:batch])  # warm-up
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(tensor), batch):
            judge.predict(tensor[start:start + batch])
        best = max(best, len(tensor) / (time.perf_counter() - started))
    return best


def serve_ips(images: np.ndarray, judge_name: str, clients: int, request_images: int, settings: dict,
              repeats: int) -> dict:
    """Deploy with `settings`; `repeats` times, let `clients` threads send `request_images`-image
    requests until all images are scored. The best round's images/s and batch counters."""
    from ray import serve

    from igmu.serve import APP_NAME
    from igmu.serve.client import HandleJudgeClient
    from igmu.serve.config import load_serve_config
    from igmu.serve.control import deploy_judges

    deploy_judges(load_serve_config(None, settings))
    client = HandleJudgeClient()
    client.predict(judge_name, images[:request_images])  # warm-up
    best = {"ips": 0.0}
    for _ in range(repeats):
        before = client.stats()
        seconds = timed_round(client, judge_name, images, clients, request_images)
        after = client.stats()
        batches = after["batches"] - before["batches"]
        if len(images) / seconds > best["ips"]:
            best = {"ips": len(images) / seconds, "requests": after["requests"] - before["requests"],
                    "batches": batches, "mean_batch_images": (after["images"] - before["images"]) / max(1, batches),
                    "replica_busy": (after["forward_s"] - before["forward_s"]) / seconds}
    serve.delete(APP_NAME)
    return best


def timed_round(client, judge_name: str, images: np.ndarray, clients: int, request_images: int) -> float:
    chunks = [images[i:i + request_images] for i in range(0, len(images), request_images)]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not chunks:
                    return
                chunk = chunks.pop()
            client.predict(judge_name, chunk)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def deployment(cpus: float, max_ongoing: int) -> dict:
    return {"max_ongoing_requests": max_ongoing, "num_replicas": 1, "ray_actor_options": {"num_cpus": cpus}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--unbatched-images", type=int, default=256, help="images for the slow one-per-request mode")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--request-images", type=int, default=32,
                        help="images per request; 32: a default sweep trial's median judge call (see above)")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--replica-cpus", type=int, default=1)
    parser.add_argument("--judge", default="object")
    parser.add_argument("--malloc-retain-mb", type=int, default=64,
                        help="the replica's malloc_retain_mb, applied to the in-process side too; 0: glibc defaults")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per mode; the best counts (shared machines)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from igmu.serve.allocator import retain_freed_memory

    retain_freed_memory(args.malloc_retain_mb)
    images = rendered(args.images)
    inprocess = inprocess_ips(images, args.judge, args.replica_cpus, args.max_batch_size, args.repeats)
    # One image per forward in-process: what (3) costs without Serve (a forward pads to FORWARD_CHUNK).
    inprocess_single = inprocess_ips(images[:args.unbatched_images], args.judge, args.replica_cpus, 1, args.repeats)
    ray.init(address="local", num_cpus=max(2, args.replica_cpus + 1), include_dashboard=False, log_to_driver=False)
    try:
        batched = serve_ips(images, args.judge, args.clients, args.request_images, {
            "max_batch_size": args.max_batch_size, "max_images_per_request": args.request_images,
            "batch_wait_timeout_s": args.batch_wait_s, "malloc_retain_mb": args.malloc_retain_mb,
            "deployment": deployment(args.replica_cpus, args.max_batch_size)}, args.repeats)
        unbatched = serve_ips(images[:args.unbatched_images], args.judge, args.clients, 1, {
            "max_batch_size": 1, "max_images_per_request": 1, "batch_wait_timeout_s": 0.0,
            "malloc_retain_mb": args.malloc_retain_mb, "deployment": deployment(args.replica_cpus, args.clients)}, args.repeats)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    result = {"inprocess_ips": round(inprocess, 1), "serve_batched_ips": round(batched["ips"], 1),
              "serve_unbatched_ips": round(unbatched["ips"], 1)}
    if args.json:
        print(json.dumps(result))
        return
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    print(json.dumps({**result, "inprocess_one_image_per_forward_ips": round(inprocess_single, 1),
                      "batched_vs_inprocess": round(batched["ips"] / inprocess, 3),
                      "batched_vs_unbatched": round(batched["ips"] / unbatched["ips"], 2),
                      "batched_detail": batched, "unbatched_detail": unbatched, "settings": settings,
                      "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"}, indent=2))


if __name__ == "__main__":
    main()
