"""Threads are chosen from what the process was given and the model's kind (igmu/threads.py)."""

import os

import pytest
import torch

from igmu import threads
from igmu.errors import UsageError

# What the test process started with: every test here must leave it so.
STARTING_THREADS_SETTING = os.environ.get(threads.THREADS_VARIABLE)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_kind_caps_its_threads_and_no_cap_means_every_usable_cpu(monkeypatch):
    from igmu.models.text_to_image import StableDiffusion, WorldTextToImage

    monkeypatch.delenv(threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    usable = threads.usable_cpus()
    assert threads.chosen_threads(WorldTextToImage.compute_threads) == 1
    assert threads.chosen_threads(StableDiffusion.compute_threads) == usable
    assert threads.chosen_threads(None) == usable
    assert threads.chosen_threads(usable + 4) == usable  # a kind's cap never exceeds what the process may use


def test_usable_cpus_honour_affinity_and_the_given_omp_num_threads(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.usable_cpus() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(affinity + 5))
    assert threads.usable_cpus() <= affinity


def test_igmu_threads_overrides_the_choice(monkeypatch):
    monkeypatch.setenv(threads.THREADS_VARIABLE, "3")
    assert threads.chosen_threads(10) == 3 and threads.use_threads(10) == 3 and torch.get_num_threads() == 3


@pytest.mark.parametrize("bad", ["0", "two", "-1", "1.5"])
def test_a_bad_igmu_threads_is_refused_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv(threads.THREADS_VARIABLE, bad)
    with pytest.raises(UsageError, match=f"IGMU_THREADS={bad!r}.*valid: a whole number >= 1"):
        threads.chosen_threads(10)


@pytest.mark.parametrize("v2_text, expected", [("max 100000\n", None), ("150000 100000\n", 2),
                                                ("100000 100000\n", 1), ("garbage\n", None)])
def test_a_cgroup_v2_quota_is_read_in_whole_cpus(tmp_path, v2_text, expected):
    (tmp_path / "cpu.max").write_text(v2_text)
    assert threads.cgroup_cpu_quota(v2=tmp_path / "cpu.max", v1_quota=tmp_path / "none",
                                    v1_period=tmp_path / "none") == expected


def test_a_cgroup_v1_quota_is_read_in_whole_cpus(tmp_path):
    (tmp_path / "quota").write_text("250000\n")
    (tmp_path / "period").write_text("100000\n")
    assert threads.cgroup_cpu_quota(v2=tmp_path / "absent", v1_quota=tmp_path / "quota",
                                    v1_period=tmp_path / "period") == 3
    (tmp_path / "quota").write_text("-1\n")
    assert threads.cgroup_cpu_quota(v2=tmp_path / "absent", v1_quota=tmp_path / "quota",
                                    v1_period=tmp_path / "period") is None


def test_loading_the_world_model_sets_one_thread(monkeypatch):
    from igmu.models.loader import load

    monkeypatch.delenv(threads.THREADS_VARIABLE, raising=False)
    torch.set_num_threads(2)
    load("base")
    assert torch.get_num_threads() == 1


def test_the_threads_option_is_what_every_later_load_uses(monkeypatch, capsys):
    """`igmu --threads N` passes N on through IGMU_THREADS, so the Ray workers a local sweep starts
    inherit it too; the loader then sets it whatever the model's kind."""
    from igmu.cli.main import main
    from igmu.models.loader import load

    # Recorded first, so the value main() sets is undone after the test (deleting a variable that is
    # not set records nothing, and IGMU_THREADS=2 then leaked into every later test of the process).
    monkeypatch.setenv(threads.THREADS_VARIABLE, "1")
    monkeypatch.delenv(threads.THREADS_VARIABLE)
    assert main(["--threads", "2", "algorithms"]) == 0
    assert os.environ[threads.THREADS_VARIABLE] == "2"
    torch.set_num_threads(1)
    load("base")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("args, environment, needle", [
    (["--threads", "0", "algorithms"], {}, "'--threads': 0 is not in the range x>=1"),
    (["algorithms"], {threads.THREADS_VARIABLE: "many"}, "IGMU_THREADS='many'"),
])
def test_bad_thread_counts_are_one_line_and_exit_2(monkeypatch, capsys, args, environment, needle):
    from igmu.cli.main import main

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and err.startswith("igmu: error: "), err


def test_the_blas_pools_get_the_same_limit(monkeypatch):
    import numpy  # noqa: F401  (loads the BLAS pool)
    from threadpoolctl import threadpool_info, threadpool_limits

    before = threadpool_limits(limits=2)  # as if inherited from a two-core machine
    try:
        assert any(pool["num_threads"] == 2 for pool in threadpool_info())
        monkeypatch.setenv(threads.THREADS_VARIABLE, "1")
        threads.use_threads(None)
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        before.restore_original_limits()


def test_no_thread_setting_leaks_out_of_these_tests():
    """Runs after the others in this file: IGMU_THREADS set by a test must be gone (a leaked value made
    every later sweep in the same test process oversubscribe the cores)."""
    assert os.environ.get(threads.THREADS_VARIABLE) == STARTING_THREADS_SETTING
