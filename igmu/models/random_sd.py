"""Stable Diffusion folders with random weights, built from component configs: nothing is
downloaded. Benches measure real-shape models this way (SD 1.4's configs ship under
`igmu/assets/configs/sd-v1-4/`), and tests build tiny ones.

A folder built here is an ordinary diffusers-layout SD folder that `igmu.models.loader.load` loads.
Its tokenizer is character-level (every character one token, no merges): a random model has no
vocabulary to match, and the real CLIP vocabulary is not shipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# SD 1.4's public component configs (CompVis/stable-diffusion-v1-4): UNet, VAE, CLIP ViT-L/14 text
# encoder and scheduler, in the layout diffusers saves them in.
SD14_CONFIGS = Path(__file__).resolve().parents[1] / "assets" / "configs" / "sd-v1-4"
# Where each component keeps its configuration inside a diffusers folder.
CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                "scheduler": "scheduler_config.json"}


def _byte_level_alphabet() -> list[str]:
    # GPT-2/CLIP byte-to-unicode table: every byte maps to one printable character.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(folder: Path, max_length: int = 16) -> None:
    """A character-level CLIP BPE tokenizer (every character a token, no merges); its ids are
    below 514 (BOS 0, EOS 1), so any CLIP text encoder with at least that vocabulary takes them."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_level_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(folder)


def read_configs(folder: Path = SD14_CONFIGS) -> dict[str, dict]:
    """The component configs kept under `folder` (default: SD 1.4's), by component."""
    return {name: json.loads((Path(folder) / name / file).read_text()) for name, file in CONFIG_FILES.items()}


def build_models(configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    """Randomly initialised UNet, VAE and text encoder of the configs' shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return {"unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))}


def build_random_sd(folder: Path, configs: dict[str, dict], seed: int = 0, sampling: dict | None = None) -> Path:
    """Save a random-weight SD of the configs' shapes in diffusers layout (safetensors) at `folder`;
    `sampling` (steps, guidance) is written as the folder's sampling.json when given."""
    from diffusers import DDIMScheduler

    from igmu.models.kinds import SAMPLING_FILE

    folder = Path(folder)
    torch.manual_seed(seed)
    for name, model in build_models(configs).items():
        model.save_pretrained(folder / name, safe_serialization=True)
    DDIMScheduler.from_config(configs["scheduler"]).save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer", configs["text_encoder"]["max_position_embeddings"])
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    if sampling is not None:
        (folder / SAMPLING_FILE).write_text(json.dumps(sampling))
    return folder
