"""The sweep benches' own logic, without running a sweep: the early-stopping bench's sweep-file
variants are valid sweep files that differ from the original only where the bench says."""

from pathlib import Path

import pytest
from sweep_helpers import bench_module

from igmu.sweep.file import load_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("scheduler", ["asha", "mo-asha", "none"])
def test_a_variant_changes_only_the_scheduler_seed_and_name(tmp_path, scheduler):
    bench = bench_module("early_stopping")
    original = load_sweep(ROOT / "sweeps" / "salun.yaml")
    variant = load_sweep(bench.variant_file(ROOT / "sweeps" / "salun.yaml", tmp_path, scheduler, 2, False))
    assert variant.name == f"{original.name}-{scheduler}-seed2"
    assert variant.early_stop.scheduler == scheduler and variant.search.seed == 2
    assert variant.algorithms == original.algorithms and variant.objectives == original.objectives
    assert variant.search.num_samples == original.search.num_samples
    assert variant.eval == original.eval


def test_search_only_variants_skip_the_held_out_stage(tmp_path):
    bench = bench_module("early_stopping")
    variant = load_sweep(bench.variant_file(ROOT / "sweeps" / "compare.yaml", tmp_path, "mo-asha", 0, True))
    assert variant.eval.held_out == "none" and variant.eval.defaults is False
    assert variant.algorithms == load_sweep(ROOT / "sweeps" / "compare.yaml").algorithms
