"""The shipped judges and generator, and the one generator interface for world and SD models."""

import shutil

import pytest
import torch

from igmu.errors import UsageError
from igmu.models.check import GENERATOR_TARGETS, JUDGE_TARGET, generator_accuracy, judge_accuracy
from igmu.models.loader import load
from igmu.models.text_to_image import StableDiffusion, world_model_dir


def test_judges_are_accurate_on_fresh_renders(judges):
    accuracy = judge_accuracy(judges, n=400, seed=777)
    assert set(accuracy) == {"object", "style", "sensitive", "character"}
    for name, value in accuracy.items():
        assert value >= JUDGE_TARGET, (name, value)


def test_judges_expose_embeddings(judges):
    images = torch.rand(5, 3, 32, 32)
    out = judges["object"].predict(images)
    assert out["features"].shape == (5, 128)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(5))


@pytest.mark.slow
def test_generator_is_judged_correct_on_held_out_prompts(world_generator, judges):
    # 120 images: each bound is lowered by about two standard errors of a 120-image estimate.
    accuracy = generator_accuracy(world_generator, judges, n=120, seed=4242)
    for name, target in GENERATOR_TARGETS.items():
        assert accuracy[name] >= target - 0.07, (name, accuracy[name])


def test_synonyms_and_translations_mean_the_same_concept(world_generator):
    """The trained text encoder puts a paraphrase nearer its concept than any other concept."""
    gen = world_generator

    def embed(texts):
        with torch.no_grad():
            return torch.nn.functional.normalize(gen.encode_prompt(texts).flatten(1), dim=-1)

    objects = ["ball", "box", "pyramid", "kite", "cross", "ring", "moon", "star"]
    canonical = embed([f"a neon {o}" for o in objects])
    for paraphrase, expected in [("a neon sphere", "ball"), ("un caja neonico", "box"),
                                 ("ein leucht stern", "star"), ("a glowing crescent", "moon")]:
        similarity = embed([paraphrase]) @ canonical.T
        assert objects[int(similarity.argmax())] == expected, paraphrase


def test_sampling_is_seeded(world_generator):
    a = world_generator.sample(["a neon ball", "a forest box"], seed=11, steps=5)
    b = world_generator.sample(["a neon ball", "a forest box"], seed=11, steps=5)
    c = world_generator.sample(["a neon ball", "a forest box"], seed=12, steps=5)
    assert a.shape == (2, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiny_stable_diffusion_goes_through_the_same_interface(tiny_sd_dir):
    gen = load(str(tiny_sd_dir), device="cpu")
    assert gen.kind is StableDiffusion and gen.latent_shape == (4, 8, 8)
    assert [n for n, _ in gen.unet.named_modules() if n.endswith("attn2")]
    emb = gen.encode_prompt(["a photo of a cat", ""])
    assert emb.shape == (2, 16, 32)
    images = gen.sample(["a photo of a cat"], seed=1, steps=3)
    assert images.shape == (1, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, gen.sample(["a photo of a cat"], seed=1, steps=3))


def test_saved_generator_round_trips(world_generator, tmp_path):
    world_generator.save(tmp_path / "copy")
    again = load(str(tmp_path / "copy"), device="cpu")
    for (name, p), (_, q) in zip(world_generator.unet.state_dict().items(), again.unet.state_dict().items()):
        assert torch.equal(p, q), name


def test_loading_refuses_pickle_files(tmp_path):
    pickled = tmp_path / "model.ckpt"
    torch.save({"weights": torch.zeros(2)}, pickled)
    with pytest.raises(UsageError, match="refusing to load pickle"):
        load(str(pickled), device="cpu")


def test_loading_refuses_a_folder_with_only_pickled_weights(world_generator, tmp_path):
    folder = tmp_path / "pickled"
    world_generator.save(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(world_generator.unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UsageError, match="cannot load model folder"):
        load(str(folder), device="cpu")


def test_corrupt_weights_and_missing_paths_are_usage_errors(tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(world_model_dir(), folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="cannot load model folder"):
        load(str(folder), device="cpu")
    with pytest.raises(UsageError, match="does not exist"):
        load(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(UsageError, match="local hub cache"):
        load("nobody/no-such-model", device="cpu")


def test_half_precision_is_refused_on_cpu():
    with pytest.raises(UsageError, match="needs a CUDA device"):
        load("world", device="cpu", precision="fp16")
