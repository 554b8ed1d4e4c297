"""bench/sd_scale.py: the tiny shape end to end, and SD 1.4's shipped configs at their real size."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "sd_scale.py"
# Public parameter counts of SD 1.4's components (CompVis/stable-diffusion-v1-4).
SD14_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def load_bench():
    spec = importlib.util.spec_from_file_location("sd_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sd14_configs_build_models_of_sd14_size():
    """Built on the meta device (no memory, no init), so the 860M-parameter UNet costs nothing."""
    from accelerate import init_empty_weights

    from igmu.models.random_sd import build_models, read_configs

    configs = read_configs()
    with init_empty_weights():
        models = build_models(configs)
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == SD14_PARAMETERS
    assert configs["unet"]["sample_size"] * 2 ** (len(configs["vae"]["block_out_channels"]) - 1) == 512
    assert configs["vae"]["scaling_factor"] == 0.18215


def test_sd14_configs_ship_with_the_package():
    import tomllib

    pyproject = tomllib.loads((BENCH.parents[1] / "pyproject.toml").read_text())
    assert any(pattern.startswith("assets/configs") for pattern in pyproject["tool"]["setuptools"]["package-data"]["igmu"])


@pytest.mark.slow
def test_tiny_bench_reports_every_figure(tmp_path):
    out = tmp_path / "sd_scale.json"
    load_bench().main(["--shape", "tiny", "--batch-sizes", "1,2", "--steps", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert {"shape", "torch", "peak_tflops", "parameters", "resolution", "unet_flops", "device", "precisions"} <= set(report)
    assert report["unet_flops"]["batch_2_cfg"] >= 2 * report["unet_flops"]["batch_1"] * 0.99 > 0
    figures = report["precisions"]["fp32"]
    for name in ("esd", "salun"):
        assert figures[name]["seconds"] > 0 and figures[name]["peak_memory_mb"] > 0
        assert figures[name]["loss"] == pytest.approx(figures[name]["loss"])  # finite
    sampling = figures["sampling"]
    assert sampling["largest_batch"] == 2 and sampling["images_per_second"] > 0
    assert [run["batch_size"] for run in sampling["runs"]] == [1, 2]
    assert all(run["tflops"] > 0 and 0 < run["fraction_of_peak"] < 1 for run in sampling["runs"])
