"""One generator interface for the embedded world model and for Stable Diffusion checkpoints.

Both are diffusers-layout folders (`unet/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and for
SD `vae/`) loaded by the same code: `UNet2DConditionModel` with `attn2` cross-attention, a
transformers text encoder, a diffusers scheduler and classifier-free guidance. The only difference
is the image codec: SD diffuses in its VAE's latent space; the world model diffuses in pixel space,
with 2x2 pixel patches folded into channels (a lossless reshape, 32x32x3 -> 16x16x12) so the UNet
runs at 16x16 and CPU training stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from igmu.errors import UsageError
from igmu.models.kinds import SAMPLING_FILE, GeneratorKind, WorldKind, read_sampling

COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")


class PatchCodec(torch.nn.Module):
    """Pixel-space 'latents': images in [0, 1] -> [-1, 1] with `factor`x`factor` patches as channels."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images * 2.0 - 1.0, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((F.pixel_shuffle(latents, self.factor) + 1.0) / 2.0).clamp(0, 1)


class VaeCodec(torch.nn.Module):
    """Stable Diffusion's latent space through its AutoencoderKL."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.vae.dtype) * 2.0 - 1.0).latent_dist
        return posterior.mean * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.vae.dtype) / self.scale).sample
        return ((images.float() + 1.0) / 2.0).clamp(0, 1)


@dataclass
class Generator:
    """A text-to-image diffusion model: the components and the two operations every caller needs."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    codec: torch.nn.Module
    kind: type[GeneratorKind]
    # Steps and guidance `sample` uses unless told otherwise (the folder's sampling.json).
    sampling_defaults: dict
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    def to(self, device=None, dtype=None) -> Generator:
        moves = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for module in (self.unet, self.text_encoder, self.codec):
            module.to(**moves)
        return self

    def train_mode(self, on: bool) -> None:
        """Training or evaluation mode of the part unlearning edits."""
        self.unet.train(on)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return tokens.input_ids.to(self.device)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings [B, L, D] that condition the UNet's cross-attention."""
        return self.text_encoder(self.tokenize(prompts))[0].to(self.dtype)

    def initial_latents(self, n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((n, *self.latent_shape), generator=generator)
        return latents.to(self.device, self.dtype) * self.scheduler.init_noise_sigma

    def training_target(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to output at x_t = add_noise(clean, noise, t), as the scheduler's
        `prediction_type` says: the noise (epsilon-prediction: SD 1.x and the world model), the
        velocity sqrt(a_t) noise - sqrt(1 - a_t) clean (v-prediction: SD 2.x at 768 px) or the clean
        sample. Every loss that regresses the UNet on the forward process uses this target."""
        targets = {"epsilon": lambda: noise,
                   "v_prediction": lambda: self.scheduler.get_velocity(clean, noise, t),
                   "sample": lambda: clean}
        prediction = self.scheduler.config.prediction_type
        if prediction not in targets:
            raise UsageError(f"scheduler prediction_type {prediction!r} is not supported; "
                             f"valid: {', '.join(targets)}")
        return targets[prediction]()

    def predict_noise(self, latents, t, embeddings, uncond=None, guidance: float = 1.0) -> torch.Tensor:
        """The UNet's noise prediction, with classifier-free guidance when `uncond` is given."""
        if uncond is None or guidance == 1.0:
            return self.unet(latents, t, encoder_hidden_states=embeddings).sample
        both = self.unet(torch.cat([latents, latents]), t,
                         encoder_hidden_states=torch.cat([uncond, embeddings])).sample
        noise_uncond, noise_text = both.chunk(2)
        return noise_uncond + guidance * (noise_text - noise_uncond)

    def denoise(self, latents, embeddings, steps: int, guidance: float, start_step: int = 0,
                stop_step: int | None = None) -> torch.Tensor:
        """Run the sampler from `start_step` to `stop_step` (partial sampling, as ESD needs)."""
        self.scheduler.set_timesteps(steps, device=self.device)
        uncond = self.encode_prompt([""] * len(embeddings)) if guidance != 1.0 else None
        for t in self.scheduler.timesteps[start_step:stop_step]:
            model_input = self.scheduler.scale_model_input(latents, t)
            noise = self.predict_noise(model_input, t, embeddings, uncond, guidance)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int = 0, steps: int | None = None,
               guidance: float | None = None, batch_size: int = 64) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] on the CPU; the seed fixes the output."""
        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            out.append(self.sample_embeddings(self.encode_prompt(chunk), seed + start, steps, guidance))
        return torch.cat(out)

    @torch.no_grad()
    def sample_embeddings(self, embeddings: torch.Tensor, seed: int = 0, steps: int | None = None,
                          guidance: float | None = None) -> torch.Tensor:
        """Images from text embeddings (e.g. adversarially optimised ones)."""
        steps = steps or self.sampling_defaults["steps"]
        guidance = self.sampling_defaults["guidance"] if guidance is None else guidance
        latents = self.initial_latents(len(embeddings), seed)
        latents = self.denoise(latents, embeddings.to(self.device, self.dtype), steps, guidance)
        return self.codec.decode(latents).float().cpu()

    def save(self, path: str | os.PathLike) -> None:
        """Save as a diffusers-layout folder of safetensors (the unet and text encoder carry edits)."""
        path = Path(path)
        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        self.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        if isinstance(self.codec, VaeCodec):
            self.codec.vae.save_pretrained(path / "vae", safe_serialization=True)
        (path / SAMPLING_FILE).write_text(json.dumps(self.sampling_defaults, indent=2))
        (path / "model_index.json").write_text(json.dumps({"_class_name": "IgmuGenerator", "kind": self.kind.name}))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere by default; fp16/bf16 are opt-in and only on CUDA."""
    choices = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in choices:
        raise UsageError(f"unknown precision {precision!r}; valid: {', '.join(choices)}")
    if precision != "fp32" and device.type != "cuda":
        raise UsageError(f"precision {precision!r} needs a CUDA device; valid on CPU: fp32")
    return choices[precision]


def load_diffusers_folder(folder: Path, kind: type[GeneratorKind], device: str | None, precision: str,
                          sampling: dict, make_codec) -> Generator:
    """A diffusers-layout folder as a `Generator` of `kind`; `make_codec(unet, dtype)` builds the
    kind's image codec."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    torch_device = torch.device(device) if device else default_device()
    dtype = resolve_dtype(precision, torch_device)
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise UsageError(f"model folder {str(folder)!r} lacks {', '.join(missing)}; "
                         f"a generator folder holds {', '.join(COMPONENTS)} (and vae/ for latent models)")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, use_safetensors=True)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        codec = make_codec(unet, dtype)
    except UsageError:
        raise
    except (OSError, ValueError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load model folder {str(folder)!r}: {first_line}") from None
    for module in (unet, text_encoder, codec):
        module.eval().requires_grad_(False)
    return Generator(unet, text_encoder, tokenizer, scheduler, codec, kind, dict(sampling)).to(torch_device)


def patch_factor(unet) -> int:
    factor = round((unet.config.in_channels / 3) ** 0.5)
    if factor * factor * 3 != unet.config.in_channels:
        raise UsageError(f"a model without vae/ must take RGB patches (3*k*k channels); "
                         f"its unet takes {unet.config.in_channels}")
    return factor


class WorldTextToImage(WorldKind):
    """The world's text-to-image diffusion model: pixel space, 2x2 patches folded into channels."""

    name = "world"
    description = "the embedded world's text-to-image diffusion model"
    shipped_folder_name = "generator"

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        # Checked last: any other folder is read as a pixel-space diffusers folder, so that its
        # loader can name the components it lacks.
        return True

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        sampling = read_sampling(folder) or read_sampling(cls.shipped_folder())
        if sampling is None:
            raise UsageError(f"model folder {str(folder)!r} has no {SAMPLING_FILE} and neither has the shipped "
                             f"world generator; valid: a folder saved by igmu")
        return load_diffusers_folder(folder, cls, device, precision, sampling,
                                     lambda unet, dtype: PatchCodec(patch_factor(unet)))


class StableDiffusion(GeneratorKind):
    """A Stable Diffusion checkpoint in diffusers layout, diffusing in its VAE's latent space."""

    name = "sd"
    description = "Stable Diffusion (a diffusers folder or a cached hub id)"
    # The papers' hyperparameters were chosen for SD 1.x, so SD runs use them as published.
    uses_official_defaults = True
    # diffusers folders keep the scheduler's configuration but not how many steps to sample nor the
    # guidance scale; these are the values SD is commonly sampled with, and a `sampling.json` in
    # the folder (igmu writes one when it saves a model) replaces them.
    fallback_sampling: ClassVar[dict] = {"steps": 30, "guidance": 7.5}

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        return (folder / "vae").is_dir()

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        def vae_codec(unet, dtype):
            from diffusers import AutoencoderKL

            return VaeCodec(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, use_safetensors=True))

        sampling = read_sampling(folder) or dict(cls.fallback_sampling)
        return load_diffusers_folder(folder, cls, device, precision, sampling, vae_codec)


TEXT_TO_IMAGE: tuple[type[GeneratorKind], ...] = (WorldTextToImage, StableDiffusion)


def world_model_dir() -> Path:
    """The shipped world generator; IGMU_ASSETS overrides where assets are read from."""
    return WorldTextToImage.shipped_folder()
