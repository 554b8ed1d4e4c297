import os
import sys
from pathlib import Path

# Before any library import: never reach for the network, keep Ray quiet and small.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Under pytest-xdist (`make test`), one compute thread per worker and per subprocess it starts: two
# workers of two threads each on two cores spin-wait on one another's cores and run many times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for threads_variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(threads_variable, "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def judges():
    from igmu.models.judges import load_judges
    from igmu.world.assets import assets_dir

    return load_judges(assets_dir() / "judges")


@pytest.fixture(scope="session")
def world_generator():
    from igmu.models.loader import load

    return load("world", device="cpu")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP: the real-image judges' model in tests (nothing is downloaded)."""
    from tiny_sd import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test run (starting one costs seconds)."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    yield ray
    ray.shutdown()
