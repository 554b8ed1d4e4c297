"""Mechanics shared by the algorithms: parameter selection, frozen copies, optimisers, masks,
training images and the diffusion loss. One copy here instead of one per algorithm."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sized

import torch
import torch.nn.functional as F

from igmu.models.text_to_image import Generator

ParameterSet = Literal["full", "xattn", "noxattn", "xattn-kv", "attn"]
OptimizerKind = Literal["adam", "adamw"]
PARAMETER_SETS: tuple[str, ...] = ("full", "xattn", "noxattn", "xattn-kv", "attn")
# CA's `attn` parameter group: every attention projection, self- and cross-attention alike.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


# ESD-u's `noxattn` also leaves out the UNet's time embedding and its final output layers, which
# the CompVis UNet names `time_embed.*` and `out.*` (out.0 its norm, out.2 its conv). Their diffusers
# names are the prefixes below. The per-block time projections of the resnets (CompVis
# `emb_layers`, diffusers `time_emb_proj`) are not the time embedding and stay in.
NOXATTN_EXCLUDED_PREFIXES = ("time_embedding.", "conv_norm_out.", "conv_out.")


def is_selected(name: str, which: str) -> bool:
    """ESD's parameter sets, in diffusers names. `attn2` (cross-attention) is the same name in
    CompVis and diffusers, so `xattn` = every attn2 tensor (ESD-x) and `xattn-kv` = attn2's key and
    value projections. `noxattn` (ESD-u) = everything but attn2, the time embedding and the output
    layers: CompVis `time_embed.*` -> diffusers `time_embedding.*`, CompVis `out.0` / `out.2` ->
    `conv_norm_out` / `conv_out`. `attn` is CA's group of all attention projections (its nudity
    recipe)."""
    if which == "full":
        return True
    if which == "xattn":
        return "attn2" in name
    if which == "xattn-kv":
        return "attn2.to_k" in name or "attn2.to_v" in name
    if which == "noxattn":
        return "attn2" not in name and not name.startswith(NOXATTN_EXCLUDED_PREFIXES)
    if which == "attn":
        return any(projection in name for projection in ATTENTION_PROJECTIONS)
    raise ValueError(f"unknown parameter set {which!r}; valid: {', '.join(PARAMETER_SETS)}")


def select_parameters(unet: torch.nn.Module, which: str) -> dict[str, torch.nn.Parameter]:
    """Make exactly the chosen UNet parameters trainable; return them by name."""
    chosen = {}
    for name, param in unet.named_parameters():
        param.requires_grad_(is_selected(name, which))
        if param.requires_grad:
            chosen[name] = param
    return chosen


# AdvUnlearn's `text_encoder_full`: every transformer layer of the CLIP text encoder and its final
# layer norm; the token and position embeddings stay (the official param_choices, component "all").
TEXT_ENCODER_TRAINED_PARTS = ("encoder.layers.", "final_layer_norm.")


def select_text_encoder_parameters(text_encoder: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Make exactly the text encoder's transformer layers and final layer norm trainable (names with
    or without transformers' `text_model.` prefix); return them by name."""
    chosen = {}
    for name, param in text_encoder.named_parameters():
        part = name.removeprefix("text_model.")
        param.requires_grad_(part.startswith(TEXT_ENCODER_TRAINED_PARTS))
        if param.requires_grad:
            chosen[name] = param
    return chosen


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with no gradients: the reference model (epsilon*) of ESD, CA, EraseDiff."""
    return copy.deepcopy(module).eval().requires_grad_(False)


def make_optimizer(params, lr: float, weight_decay: float = 0.0, kind: OptimizerKind = "adam") -> torch.optim.Optimizer:
    """Adam, or AdamW (decoupled weight decay) for the methods whose official code uses it (CA)."""
    if kind == "adamw":
        return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(list(params), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {kind!r}; valid: adam, adamw")


def cosine_with_restarts(step: int, total_steps: int, warmup_steps: int, cycles: int) -> float:
    """The learning-rate factor of diffusers' `cosine_with_restarts` schedule at `step` (counted
    from 0, as its LambdaLR counts): a linear warm-up from 0 over `warmup_steps`, then `cycles`
    half-cosines from 1 to 0, each restarting at 1. A pure function of the step, so a resumed run
    sets the same rates without saving a scheduler."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def apply_masks(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradients outside the masks (SalUn's `p.grad *= mask`)."""
    for name, param in params.items():
        if param.grad is not None and name in masks:
            param.grad.mul_(masks[name])


def top_fraction_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Binary masks keeping the globally top `fraction` of entries by score."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, int(round(fraction * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    masks = {name: (s >= threshold).float() for name, s in scores.items()}
    # Ties at the threshold can keep a few extra entries; drop them so the fraction is exact.
    excess = int(sum(m.sum() for m in masks.values())) - keep
    for name in masks:
        if excess <= 0:
            break
        ties = ((scores[name] == threshold) & (masks[name] > 0)).flatten().nonzero().flatten()[:excess]
        masks[name].view(-1)[ties] = 0.0
        excess -= len(ties)
    return masks


def pick(items: Sized, n: int, rng: torch.Generator) -> list[int]:
    """n random indices into `items`, drawn with replacement."""
    return torch.randint(0, len(items), (n,), generator=rng).tolist()


def partial_sample(generator: Generator, prompts: list[str], steps: int, guidance: float, rng: torch.Generator):
    """Partial sampling (ESD, SDD): (x_t, t, cond) where x_t is `generator`'s sample of `prompts`
    (`steps` sampler steps at CFG `guidance`) stopped at a random step, t that step's timestep and
    cond the prompts' embeddings."""
    stop = int(torch.randint(0, steps, (1,), generator=rng))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
    with torch.no_grad():
        cond = generator.encode_prompt(prompts)
        x_t = generator.denoise(generator.initial_latents(len(prompts), seed), cond, steps, guidance, stop_step=stop)
    t = generator.scheduler.timesteps[stop].repeat(len(prompts))
    return x_t, t, cond


def reference_prompts(anchor_prompts: tuple[str, ...], chosen: list[int], reference: str) -> list[str]:
    """The prompts whose prediction stands in for the unconditional one: the empty prompt (the
    papers'), or with `anchor` each chosen forget prompt without its target (igmu's variant for
    composite prompts)."""
    if reference == "anchor":
        return [anchor_prompts[i] for i in chosen]
    if reference == "unconditional":
        return [""] * len(chosen)
    raise ValueError(f"unknown reference {reference!r}; valid: unconditional, anchor")


def forget_batch(generator: Generator, task, batch_size: int, steps: int, guidance: float, reference: str,
                 rng: torch.Generator, sampler: Generator | None = None) -> dict:
    """ESD's batch (ESD, SDD, Receler): `batch_size` forget prompts, x_t by partial sampling from
    `sampler` (default: the generator itself) at a random step, t, the prompts' embeddings `cond` and
    the reference prompts' embeddings `uncond` (see `reference_prompts`)."""
    chosen = pick(task.forget_prompts, batch_size, rng)
    prompts = [task.forget_prompts[i] for i in chosen]
    x_t, t, cond = partial_sample(sampler or generator, prompts, steps, guidance, rng)
    with torch.no_grad():
        uncond = generator.encode_prompt(reference_prompts(task.anchor_prompts, chosen, reference))
    return {"x_t": x_t, "t": t, "cond": cond, "uncond": uncond, "prompts": prompts}


@dataclass
class PromptImages:
    """Original-model images of a prompt list (cycled to the requested count), as clean latents;
    `index[i]` is the prompt that made `latents[i]`."""

    index: list[int]
    latents: torch.Tensor


def prompt_images(generator: Generator, prompts: tuple[str, ...], n: int, seed: int) -> PromptImages:
    index = [i % len(prompts) for i in range(n)]
    return PromptImages(index, training_images(generator, [prompts[i] for i in index], seed))


@torch.no_grad()
def training_images(generator: Generator, prompts: list[str], seed: int) -> torch.Tensor:
    """Images the (still original) model makes for `prompts`, as clean latents for training; from
    the generator's `sample_cache` when it has one (the same images, sampled once per sweep)."""
    cache = getattr(generator, "sample_cache", None)
    images = cache.images(generator, prompts, seed) if cache is not None else generator.sample(prompts, seed=seed)
    return generator.codec.encode(images.to(generator.device, generator.dtype))


def noised(generator: Generator, clean: torch.Tensor, rng: torch.Generator):
    """(x_t, t, target) for random timesteps: the forward process q(x_t | x_0), and what the UNet
    regresses on at x_t (`Generator.training_target`: epsilon, or the velocity for v-prediction)."""
    noise = torch.randn(clean.shape, generator=rng).to(clean)
    t = torch.randint(0, generator.scheduler.config.num_train_timesteps, (len(clean),), generator=rng)
    t = t.to(clean.device)
    return generator.scheduler.add_noise(clean, noise, t), t, generator.training_target(clean, noise, t)


def guided_denoising_loss(generator: Generator, clean: torch.Tensor, prompts: list[str], guidance: float,
                          rng: torch.Generator) -> torch.Tensor:
    """|| epsilon - epsilon~_theta(x_t, c) ||^2 with the classifier-free guided prediction
    epsilon~ = (1 + w) epsilon_theta(x_t, c) - w epsilon_theta(x_t): the forget loss whose gradient
    SalUn's saliency mask and ScissorHands' SNIP scores are taken of (both official codes use w = 7.5)."""
    x_t, t, target = noised(generator, clean, rng)
    cond = generator.unet(x_t, t, encoder_hidden_states=generator.encode_prompt(prompts)).sample
    uncond = generator.unet(x_t, t, encoder_hidden_states=generator.encode_prompt([""] * len(clean))).sample
    return F.mse_loss(target, (1 + guidance) * cond - guidance * uncond)


def diffusion_loss(generator: Generator, clean: torch.Tensor, prompts: list[str], rng: torch.Generator,
                   unet: torch.nn.Module | None = None) -> torch.Tensor:
    """L_DM = E ||epsilon - epsilon_theta(x_t, c, t)||^2, the standard denoising loss (with the
    velocity in place of epsilon on v-prediction models)."""
    x_t, t, target = noised(generator, clean, rng)
    unet = unet or generator.unet
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=generator.encode_prompt(prompts)).sample, target)


# --- elastic weight consolidation (EWC; SA) -----------------------------------------------------

def diagonal_fisher(params: dict[str, torch.nn.Parameter],
                    per_sample_losses: Iterable[Iterable[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The empirical diagonal Fisher information F_i = (1/N) sum_n (d l_n / d theta_i)^2 of N
    per-sample losses l_n, in fp32. Each sample's loss comes in parts that sum to l_n (e.g. chunks of
    timesteps, so memory holds one part's graph): the parts' gradients are summed before squaring."""
    fisher = {name: torch.zeros_like(param, dtype=torch.float32) for name, param in params.items()}
    samples = 0
    for parts in per_sample_losses:
        gradient = {name: torch.zeros_like(f) for name, f in fisher.items()}
        for part in parts:
            grads = torch.autograd.grad(part, list(params.values()), allow_unused=True)
            for name, grad in zip(params, grads):
                if grad is not None:
                    gradient[name] += grad.detach().float()
        for name, g in gradient.items():
            fisher[name] += g.pow(2)
        samples += 1
    if samples == 0:
        raise ValueError("the Fisher information needs at least one sample")
    return {name: f / samples for name, f in fisher.items()}


def ewc_penalty(params: dict[str, torch.nn.Parameter], fisher: dict[str, torch.Tensor],
                anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over the named parameters (EWC's quadratic penalty, without
    its weight), computed in fp32."""
    if not params:
        raise ValueError("the EWC penalty needs at least one parameter")
    total = torch.zeros((), dtype=torch.float32, device=next(iter(params.values())).device)
    for name, param in params.items():
        total = total + (fisher[name] * (param.float() - anchor[name]).pow(2)).sum()
    return total
