"""One generator interface for the embedded world model and for Stable Diffusion checkpoints.

Both are diffusers-layout folders (`unet/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and for
SD `vae/`) loaded by the same code: `UNet2DConditionModel` with `attn2` cross-attention, a
transformers text encoder, a diffusers scheduler and classifier-free guidance. The only difference
is the image codec: SD diffuses in its VAE's latent space; the world model diffuses in pixel space,
with 2x2 pixel patches folded into channels (a lossless reshape, 32x32x3 -> 16x16x12) so the UNet
runs at 16x16 and CPU training stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from igmu.errors import UsageError
from igmu.models.guidance import read_guidance, write_guidance
from igmu.models.kinds import (
    MODEL_INDEX_FILE,
    SAMPLING_FILE,
    GeneratorKind,
    WorldKind,
    component_index,
    read_sampling,
    saved_with_stock_weights,
    unet_component,
)
from igmu.prompts import canonical_category, infer_category

# What a folder holds beside its UNet (whose folder name `unet_component` gives) and, for latent models, vae/.
COMPONENTS = ("text_encoder", "tokenizer", "scheduler")
# Images the VAE decodes at once (a memory budget; the `--batch-size` setting replaces it).
DEFAULT_DECODE_BATCH = 4
# Samplers an evaluation can choose, each built from the model folder's own scheduler configuration.
# A module flag: a UNet child that sets it (an adapter applied by forward hooks, Receler's erasers)
# is not part of what a model folder holds, so `Generator.save` refuses such a UNet rather than write
# a folder that igmu's loader and diffusers' would load without it.
HELD_OUTSIDE_WEIGHTS = "held_outside_weights"
SCHEDULERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
              "dpm": "DPMSolverMultistepScheduler", "ddpm": "DDPMScheduler"}


class PatchCodec(torch.nn.Module):
    """Pixel-space 'latents': images in [0, 1] -> [-1, 1] with `factor`x`factor` patches as channels."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images * 2.0 - 1.0, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((F.pixel_shuffle(latents, self.factor) + 1.0) / 2.0).clamp(0, 1)

    def components(self) -> dict:
        """Pipeline components the codec adds to a saved folder: none, a reshape has no weights."""
        return {}


class VaeCodec(torch.nn.Module):
    """Stable Diffusion's latent space through its AutoencoderKL. Decoding runs `decode_batch`
    latents at a time: at 512 px one decode of a few dozen images exceeds most GPUs' memory."""

    def __init__(self, vae, decode_batch: int = DEFAULT_DECODE_BATCH):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.decode_batch = decode_batch

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.vae.dtype) * 2.0 - 1.0).latent_dist
        return posterior.mean * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        chunks = [self.vae.decode(chunk.to(self.vae.dtype) / self.scale).sample.float()
                  for chunk in latents.split(self.decode_batch)]
        return ((torch.cat(chunks) + 1.0) / 2.0).clamp(0, 1)

    def components(self) -> dict:
        return {"vae": self.vae}


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
    # What `loader.load` loaded it from ('base', a folder or a hub id): the original model of a run.
    origin: str = ""
    # Images generated per UNet batch (doubled by classifier-free guidance): a memory budget.
    batch_size: int = 64
    # False when the folder it was loaded from held a method's effect outside the weights (see
    # `save`); saving it again keeps that folder out of stock loaders.
    stock_weights: bool = True
    # Where an unlearner's training images of this model may be reused from: anything with
    # `images(generator, prompts, seed)` giving exactly `sample(prompts, seed=seed)` (a sweep sets its
    # on-disk image cache, so trials after the first load them instead of sampling them again).
    sample_cache: object | None = field(default=None, compare=False, repr=False)
    # How sampling combines the UNet's predictions when it is not plain classifier-free guidance
    # (`igmu.models.guidance`): an inference-time method's whole effect, so it is saved with the model.
    guidance_rule: object | None = None

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
        # A guidance rule reshapes classifier-free guidance, so without guidance there is none to reshape.
        rule = self.guidance_rule if uncond is not None else None
        concept = self.encode_prompt([rule.concept] * len(embeddings)) if rule is not None else None
        momentum = None
        timesteps = self.scheduler.timesteps
        for step, t in enumerate(timesteps[start_step:stop_step], start=start_step):
            model_input = self.scheduler.scale_model_input(latents, t)
            if rule is None:
                noise = self.predict_noise(model_input, t, embeddings, uncond, guidance)
            else:
                noise, momentum = rule.denoise_step(self, model_input, t, step, len(timesteps), embeddings, uncond,
                                                    concept, guidance, momentum)
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

    def sampler(self, name: str) -> Generator:
        """The same model sampled with another scheduler (a shallow copy: weights are shared)."""
        import diffusers

        if name not in SCHEDULERS:
            raise UsageError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
        scheduler_class = getattr(diffusers, SCHEDULERS[name])
        return dataclasses.replace(self, scheduler=scheduler_class.from_config(self.scheduler.config))

    @property
    def scheduler_name(self) -> str:
        return type(self.scheduler).__name__

    def seeded_noise(self, seeds: list[int]) -> torch.Tensor:
        """Initial latents, each from its own seed."""
        noise = [torch.randn(self.latent_shape, generator=torch.Generator("cpu").manual_seed(int(seed)))
                 for seed in seeds]
        return torch.stack(noise).to(self.device, self.dtype) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def sample_seeded(self, prompts: list[str], seeds: list[int], steps: int | None = None,
                      guidance: float | None = None, guidances: list[float | None] | None = None) -> torch.Tensor:
        """One image per (prompt, seed, optional per-prompt guidance), [N, 3, H, W] in [0, 1] on the CPU.
        Each image's noise comes from its own seed, so it does not depend on which images share its batch."""
        steps = steps or self.sampling_defaults["steps"]
        default_guidance = self.sampling_defaults["guidance"] if guidance is None else guidance
        scales = [default_guidance if g is None else g for g in (guidances or [None] * len(prompts))]
        out: list[torch.Tensor | None] = [None] * len(prompts)
        for scale in dict.fromkeys(scales):
            chosen = [i for i, s in enumerate(scales) if s == scale]
            for start in range(0, len(chosen), self.batch_size):
                batch = chosen[start:start + self.batch_size]
                latents = self.seeded_noise([seeds[i] for i in batch])
                latents = self.denoise(latents, self.encode_prompt([prompts[i] for i in batch]), steps, scale)
                for i, image in zip(batch, self.codec.decode(latents).float().cpu()):
                    out[i] = image
        return torch.stack(out) if out else torch.zeros(0)

    def components(self, stock_weights: bool = True) -> dict:
        """Folder name -> component, as a saved folder holds them (see `unet_component`)."""
        return {unet_component(stock_weights): self.unet, **self.codec.components(),
                "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "scheduler": self.scheduler}

    def save(self, path: str | os.PathLike, stock_weights: bool = True) -> None:
        """Save as a diffusers-layout folder of safetensors (the unet and text encoder carry edits),
        indexed as the kind says. `stock_weights=False` (an unlearner whose effect the weights alone
        do not carry) writes a folder that stock diffusers pipelines refuse to load."""
        held = [name for name, module in self.unet.named_modules() if getattr(module, HELD_OUTSIDE_WEIGHTS, False)]
        if held:
            raise UsageError(f"cannot save this model: its unet holds {len(held)} adapter(s) applied by hooks "
                             f"({held[0]}, ...), which a model folder cannot hold; loading it would sample un-erased")
        path = Path(path)
        stock_weights = stock_weights and self.stock_weights and self.guidance_rule is None
        for name, component in self.components(stock_weights).items():
            if isinstance(component, torch.nn.Module):
                component.save_pretrained(path / name, safe_serialization=True)
            else:
                component.save_pretrained(path / name)
        (path / SAMPLING_FILE).write_text(json.dumps(self.sampling_defaults, indent=2))
        write_guidance(path, self.guidance_rule)
        index = self.kind.model_index(self, stock_weights)
        (path / MODEL_INDEX_FILE).write_text(json.dumps(index, indent=2))


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
    stock_weights = saved_with_stock_weights(folder)
    unet_name = unet_component(stock_weights)
    expected = (unet_name, *COMPONENTS)
    missing = [c for c in expected if not (folder / c).is_dir()]
    if missing:
        raise UsageError(f"model folder {str(folder)!r} lacks {', '.join(missing)}; "
                         f"a generator folder holds {', '.join(expected)} (and vae/ for latent models)")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / unet_name, torch_dtype=dtype, use_safetensors=True)
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
    return Generator(unet, text_encoder, tokenizer, scheduler, codec, kind, dict(sampling),
                     stock_weights=stock_weights, guidance_rule=read_guidance(folder)).to(torch_device)


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
    # Images per UNet batch at 512 px (16 UNet inputs with guidance): fits a 24 GB GPU in fp16;
    # `--batch-size` replaces it.
    generation_batch: ClassVar[int] = 8

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        return (folder / "vae").is_dir()

    @classmethod
    def category_of(cls, target: str, category: str | None = None) -> str:
        """The category given (canonical name or alias), else the one the shipped label sets imply."""
        return canonical_category(category) if category else infer_category(target)

    @classmethod
    def model_index(cls, generator, stock_weights: bool = True) -> dict:
        """A stock `StableDiffusionPipeline` index, so diffusers loads what igmu saved; a folder whose
        effect the weights do not carry gets igmu's index instead, which diffusers refuses."""
        if not stock_weights:
            return super().model_index(generator, stock_weights)
        import diffusers

        return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                **component_index(generator.components()),
                # igmu's models ship no safety checker; diffusers requires saying so explicitly.
                "safety_checker": [None, None], "feature_extractor": [None, None],
                "requires_safety_checker": False}

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        def vae_codec(unet, dtype):
            from diffusers import AutoencoderKL

            return VaeCodec(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, use_safetensors=True))

        sampling = read_sampling(folder) or dict(cls.fallback_sampling)
        generator = load_diffusers_folder(folder, cls, device, precision, sampling, vae_codec)
        generator.batch_size = cls.generation_batch
        return generator


TEXT_TO_IMAGE: tuple[type[GeneratorKind], ...] = (WorldTextToImage, StableDiffusion)


def world_model_dir() -> Path:
    """The shipped world generator; IGMU_ASSETS overrides where assets are read from."""
    return WorldTextToImage.shipped_folder()
