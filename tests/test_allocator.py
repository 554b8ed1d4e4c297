"""`retain_freed_memory`: after it, repeated judge forwards stop page-faulting their activations in
again (counted as minor page faults, not timed). Each case runs in a fresh interpreter, because the
setting is per process and glibc's own thresholds move with what a process has freed before."""

import json
import subprocess
import sys

import pytest

from igmu.serve.allocator import retain_freed_memory

FORWARDS = """
import json, resource, sys, torch
from igmu.serve.allocator import retain_freed_memory
tuned = retain_freed_memory(int(sys.argv[1]))
from igmu.models.judges import load_judges
from igmu.world.assets import assets_dir
torch.set_num_threads(1)
judge = load_judges(assets_dir() / "judges")["object"]
images = torch.rand(64, 3, 32, 32)
judge.predict(images)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    judge.predict(images)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def forward_faults(retain_mb: int) -> dict:
    done = subprocess.run([sys.executable, "-c", FORWARDS, str(retain_mb)], capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_zero_leaves_the_allocator_alone():
    assert retain_freed_memory(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
@pytest.mark.slow
def test_retained_memory_stops_forwards_from_page_faulting():
    default, tuned = forward_faults(0), forward_faults(64)
    assert default["tuned"] is False and tuned["tuned"] is True
    assert tuned["faults"] * 10 < default["faults"], (default, tuned)
