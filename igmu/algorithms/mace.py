"""MACE: Mass Concept Erasure in Diffusion Models (Lu et al., CVPR 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from igmu.algorithms.base import CommonParams, Unlearner, hyperparameter, register_algorithm
from igmu.algorithms.common import make_optimizer, pick, prompt_images
from igmu.algorithms.hooks import (
    attach_lora,
    attention_at,
    capture_cross_attention,
    position_mask,
    token_positions,
)
from igmu.algorithms.uce import uce_solve
from igmu.errors import UsageError
from igmu.models.text_to_image import TEXT_TO_IMAGE, WorldTextToImage
from igmu.world.concept_images import masked_forget_renders

# The timestep at which the original model's cross-attention outlines the concept (attention masks).
MASK_TIMESTEP_FRACTION = 0.5


@dataclass
class MACEParams(CommonParams):
    """Three stages (training.py -> src/cfr_lora_training.py, src/fuse_lora_close_form.py):
    1. closed-form refinement of every attn2.to_k / to_v: the co-occurring words of each forget
       prompt (every token row outside the concept's words, padding included) are mapped to their
       counterparts in the guide prompt, with UCE's closed form (`lamb`, `train_preserve_scale`);
    2. a rank-`rank` LoRA on attn2.to_k / to_v trained to remove the attention the concept's tokens
       get inside the concept's segmentation mask (the FMN loss restricted to the mask);
    3. closed-form fusion of the LoRA(s): the weights whose outputs on the concept prompts match
       each LoRA-equipped layer's, pulled to the refined weights by `lamb` (`fuse_preserve_scale`).
    An igmu task has one target, so one LoRA is trained and fused.

    Masks: on the world the renderer's object masks stand in for Grounded-SAM (`masks: render`,
    segmented renders of the target with their canonical prompts); on Stable Diffusion the original
    model's cross-attention on the concept tokens, thresholded at half its maximum, stands in for it
    (`masks: attention`, on the original model's images of the forget prompts).

    World defaults: lr 1e-3, 50 steps, batch 4, lamb 1, train_preserve_scale 0.3, 16 images,
    uniform timesteps: the world's 64-d text space and 2.7M-parameter UNet need a softer ridge and a
    faster LoRA than SD's (ball, small budget: forgetting 1.000, preservation 0.804; lr 1e-2 kept
    0.917 forgetting but dropped preservation to 0.238). On Stable Diffusion `MACE.official_defaults` apply (configs/object/*.yaml): AdamW lr 1e-5
    (weight decay 1e-2), 50 steps, batch 1, rank 1, lamb 1e3, train and fuse preserve scales 0,
    `use_pooler`, gradient clipped to 1, importance sampling of timesteps, 8 images. The official
    augments the concept into 30 prompt templates; igmu uses the task's forget prompts."""

    lr: float = hyperparameter(1e-3, 1e-7, 1e-1, "AdamW learning rate of the LoRA", log=True)
    steps: int = hyperparameter(50, 1, 100_000, "LoRA training steps")
    batch_size: int = hyperparameter(4, 1, 256, "segmented concept images per step")
    rank: int = hyperparameter(1, 1, 64, "LoRA rank")
    lamb: float = hyperparameter(1.0, 1e-6, 1e5, "lambda: ridge pull to the current weights (stages 1 and 3)", log=True)
    train_preserve_scale: float = hyperparameter(0.3, 0.0, 100.0, "weight of the preserve prompts in stage 1")
    fuse_preserve_scale: float = hyperparameter(0.0, 0.0, 100.0, "weight of the preserve prompts in stage 3")
    preserve_prompts: int = hyperparameter(200, 0, 100_000, "retain prompts whose outputs are preserved")
    guide: Literal["anchor", "pseudo"] = hyperparameter(
        "anchor", doc="what co-occurring words map to: the prompt without the target, or a neighbour")
    include_eos: bool = hyperparameter(True, doc="use_pooler: the end-of-text token counts as a concept token")
    forget_images: int = hyperparameter(16, 1, 100_000, "segmented images of the concept")
    masks: Literal["render", "attention"] = hyperparameter(
        "render", doc="segmentation: the world renderer's masks, or the original model's concept attention")
    importance_sampling: bool = hyperparameter(False, doc="draw timesteps mostly from 200-400 (official)")
    weight_decay: float = hyperparameter(1e-2, 0.0, 1.0, "AdamW decoupled weight decay (official 1e-2)")
    max_grad_norm: float = hyperparameter(1.0, 0.0, 1e6, "clip the gradient to this global norm; 0 never clips")


def fuse_solve(base: torch.Tensor, lora_weights: list[torch.Tensor], contexts: list[torch.Tensor],
               preserve: torch.Tensor, preserve_scale: float, lamb: float) -> torch.Tensor:
    """Multi-LoRA fusion (Eq. 9): argmin_W lamb ||W - W0||^2 + sum_i ||W C_i^T - W_i C_i^T||^2
    + s_p ||W C_p^T - W0 C_p^T||^2, whose normal equations give
        W = (lamb W0 + sum_i W_i C_i^T C_i + s_p W0 C_p^T C_p)(lamb I + sum_i C_i^T C_i + s_p C_p^T C_p)^-1,
    with W_i = W0 + LoRA_i and C_i the token rows [N_i, d] of concept i's prompts."""
    w0 = base.double()
    eye = torch.eye(w0.shape[1], dtype=w0.dtype)
    c_p = preserve.double()
    right = lamb * eye + preserve_scale * c_p.T @ c_p
    left = lamb * w0 + preserve_scale * w0 @ c_p.T @ c_p
    for w_i, c_i in zip(lora_weights, contexts):
        c_i = c_i.double()
        right = right + c_i.T @ c_i
        left = left + w_i.double() @ c_i.T @ c_i
    return torch.linalg.solve(right, left, left=False).to(base.dtype)


def co_occurring_rows(old: list[int], new: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """find_matching_indices + its extension: the token positions the two prompts share (the common
    prefix and suffix, so everything but the concept's words) and the padding after them, paired
    position by position."""
    prefix = 0
    while prefix < min(len(old), len(new)) and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(old), len(new)) - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    old_rows = list(range(prefix)) + list(range(len(old) - suffix, len(old)))
    new_rows = list(range(prefix)) + list(range(len(new) - suffix, len(new)))
    padding = max_length - max(len(old), len(new))
    return old_rows + list(range(len(old), len(old) + padding)), new_rows + list(range(len(new), len(new) + padding))


def masked_attention_loss(maps: list[torch.Tensor], positions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The LoRA loss (AttnController with GSAM masks): per attn2 layer the norm of the attention the
    concept's tokens get from the query pixels inside the mask (resized to the layer's resolution,
    nearest), summed over layers. maps: [B, heads, Q, L]; positions [B, L]; masks [B, 1, H, W]."""
    total = 0.0
    for probs in maps:
        side = int(probs.shape[2] ** 0.5)
        inside = (F.interpolate(masks, size=(side, side), mode="nearest") > 0.5).flatten(1).to(probs)
        total = total + (attention_at(probs, positions) * inside[:, None, :, None]).norm()
    return total


def importance_weights(num_train_timesteps: int, temperature: float = 0.05) -> torch.Tensor:
    """importance_sampling_fn: f(t) = sigmoid(T (t - 200)) - sigmoid(T (t - 400)), mass on 200-400."""
    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    return torch.sigmoid(temperature * (t - 200)) - torch.sigmoid(temperature * (t - 400))


@register_algorithm("mace")
class MACE(Unlearner):
    """Closed-form refinement of co-occurring words, a masked-attention LoRA, closed-form fusion."""

    generator_kinds = TEXT_TO_IMAGE
    paper = "Lu et al., MACE: Mass Concept Erasure in Diffusion Models, CVPR 2024 (arXiv 2403.06135)"
    repo = "https://github.com/Shilin-LU/MACE"
    Params = MACEParams
    category_defaults = {"object": {"guide": "pseudo"}}
    official_defaults = {"lr": 1e-5, "steps": 50, "batch_size": 1, "rank": 1, "lamb": 1e3, "train_preserve_scale": 0.0,
                         "fuse_preserve_scale": 0.0, "guide": "anchor", "include_eos": True, "forget_images": 8,
                         "masks": "attention", "importance_sampling": True, "weight_decay": 1e-2,
                         "max_grad_norm": 1.0}

    def prepare(self) -> None:
        p = self.params
        if p.masks == "render" and self.generator.kind is not WorldTextToImage:
            raise UsageError("mace: masks=render needs the world's renderer; use masks=attention on this model")
        self.generator.unet.requires_grad_(False)
        self.generator.text_encoder.requires_grad_(False)
        self.layers = {name: module for name, module in self.generator.unet.named_modules()
                       if name.endswith("attn2.to_k") or name.endswith("attn2.to_v")}
        self.preserve = self.preserve_rows()
        self.images = self.segmented_images()
        # 1. closed-form refinement of the co-occurring words
        self.refine()
        # 2. the LoRA and its optimiser
        self.lora = attach_lora(self.layers, p.rank, self.rng)
        self.trained = {f"{name}.{part}": param for name, lora in self.lora.items()
                        for part, param in lora.named_parameters()}
        self.optimizer = make_optimizer(self.trained.values(), p.lr, p.weight_decay, "adamw")

    @property
    def max_grad_norm(self) -> float | None:
        return self.params.max_grad_norm or None

    # --- data ------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        return self.generator.text_encoder(self.generator.tokenize(prompts))[0].float().cpu()

    def token_ids(self, prompt: str) -> list[int]:
        """The prompt's ids up to and including EOS."""
        tokenizer = self.generator.tokenizer
        ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
        return list(ids)

    def preserve_rows(self) -> torch.Tensor:
        """Every row after BOS of evenly spread retain prompts (UCE's preserve set)."""
        retain, n = self.task.retain_prompts, self.params.preserve_prompts
        if n == 0:
            return torch.zeros(0, self.generator.text_encoder.config.hidden_size)
        chosen = retain[::max(1, len(retain) // n)][:n]
        return self.embed(list(chosen))[:, 1:].reshape(-1, self.generator.text_encoder.config.hidden_size)

    def concept_prompts(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The forget prompts that name the target, with their guides."""
        task = self.task
        guides = task.anchor_prompts if self.params.guide == "anchor" else task.pseudo_prompts
        pairs = [(q, g) for q, g in zip(task.forget_prompts, guides)
                 if token_positions(self.generator.tokenizer, q, task.target)]
        if not pairs:
            raise UsageError(f"mace: no forget prompt contains the target's words {task.target!r}")
        return tuple(q for q, _ in pairs), tuple(g for _, g in pairs)

    def segmented_images(self) -> dict:
        """Clean latents of the concept, its masks and prompts (the Grounded-SAM stage)."""
        p, gen = self.params, self.generator
        if p.masks == "render":
            images, masks, prompts = masked_forget_renders(self.task.target, p.forget_images, self.seed + 1)
            latents = gen.codec.encode(images.to(gen.device, gen.dtype))
            return {"latents": latents, "masks": masks.to(gen.device, gen.dtype), "prompts": prompts}
        forget, _ = self.concept_prompts()
        made = prompt_images(gen, forget, p.forget_images, self.seed + 1)
        prompts = [forget[i] for i in made.index]
        return {"latents": made.latents, "masks": self.attention_masks(made.latents, prompts), "prompts": prompts}

    @torch.no_grad()
    def attention_masks(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Where the original model's cross-attention puts the concept's tokens, at the latents'
        resolution: the layer-averaged attention on them, above half its per-image maximum."""
        gen = self.generator
        t = torch.full((len(latents),), int(MASK_TIMESTEP_FRACTION * gen.scheduler.config.num_train_timesteps))
        noise = torch.randn(latents.shape, generator=self.rng).to(latents)
        x_t = gen.scheduler.add_noise(latents, noise, t.to(latents.device))
        positions = position_mask(gen.tokenizer, prompts, self.task.target).to(gen.device)
        with capture_cross_attention(gen.unet) as maps:
            gen.unet(x_t, t.to(gen.device), encoder_hidden_states=gen.encode_prompt(prompts))
        heat = torch.zeros(len(latents), 1, *latents.shape[-2:], device=latents.device)
        for probs in maps.all():
            side = int(probs.shape[2] ** 0.5)
            on_concept = attention_at(probs, positions).sum(-1).mean(1).view(len(latents), 1, side, side)
            heat += F.interpolate(on_concept.float(), size=latents.shape[-2:], mode="bilinear")
        peak = heat.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        return (heat / peak > 0.5).to(latents.dtype)

    # --- stage 1 ---------------------------------------------------------------------------
    @torch.no_grad()
    def refine(self) -> None:
        """Closed-form refinement: UCE's solve with the co-occurring rows as erase/guide pairs."""
        p = self.params
        forget, guides = self.concept_prompts()
        old_emb, new_emb = self.embed(list(forget)), self.embed(list(guides))
        length = self.generator.tokenizer.model_max_length
        old_rows, new_rows = [], []
        for i, (q, g) in enumerate(zip(forget, guides)):
            old_idx, new_idx = co_occurring_rows(self.token_ids(q), self.token_ids(g), length)
            old_rows.append(old_emb[i, old_idx])
            new_rows.append(new_emb[i, new_idx])
        erase, guide = torch.cat(old_rows), torch.cat(new_rows)
        for layer in self.layers.values():
            w = layer.weight.detach().float().cpu()
            new = uce_solve(w, erase, guide, self.preserve, 1.0, p.train_preserve_scale, p.lamb)
            layer.weight.data.copy_(new.to(layer.weight))

    # --- stage 2 ---------------------------------------------------------------------------
    def draw(self) -> dict:
        gen, p = self.generator, self.params
        chosen = pick(self.images["prompts"], p.batch_size, self.rng)
        clean = self.images["latents"][chosen]
        total = gen.scheduler.config.num_train_timesteps
        if p.importance_sampling:
            t = torch.multinomial(importance_weights(total), len(chosen), replacement=True, generator=self.rng)
        else:
            t = torch.randint(0, total, (len(chosen),), generator=self.rng)
        noise = torch.randn(clean.shape, generator=self.rng).to(clean)
        t = t.to(clean.device)
        return {"x_t": gen.scheduler.add_noise(clean, noise, t), "t": t, "masks": self.images["masks"][chosen],
                "prompts": [self.images["prompts"][i] for i in chosen]}

    def loss(self, batch: dict) -> torch.Tensor:
        gen = self.generator
        positions = position_mask(gen.tokenizer, batch["prompts"], self.task.target, self.params.include_eos)
        with capture_cross_attention(gen.unet) as maps:
            gen.unet(batch["x_t"], batch["t"], encoder_hidden_states=gen.encode_prompt(batch["prompts"]))
        return masked_attention_loss(maps.all(), positions.to(gen.device), batch["masks"])

    def step(self) -> dict[str, float]:
        loss = self.loss(self.draw())
        self.update(loss)
        out = {"loss": float(loss.detach())}
        if self.step_index + 1 == self.total_steps:
            out["fused_change"] = self.fuse()
        return out

    # --- stage 3 ---------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> float:
        """Fold the LoRA into the weights by the closed form, then drop it; returns the mean
        absolute weight change."""
        p = self.params
        forget, _ = self.concept_prompts()
        contexts = self.embed(list(forget)).reshape(-1, self.generator.text_encoder.config.hidden_size)
        change = 0.0
        for name, layer in self.layers.items():
            w0 = layer.weight.detach().float().cpu().clone()  # a copy: the layer is overwritten below
            with_lora = w0 + self.lora[name].delta().detach().float().cpu()
            new = fuse_solve(w0, [with_lora], [contexts], self.preserve, p.fuse_preserve_scale, p.lamb)
            layer.weight.data.copy_(new.to(layer.weight))
            change += float((new - w0).abs().mean())
        self.remove_lora()
        return change / len(self.layers)

    def remove_lora(self) -> None:
        for lora in self.lora.values():
            lora.remove()
        self.lora = {}

    def extra_state(self) -> dict:
        return {"lora": {name: {"down": lora.down.detach().clone(), "up": lora.up.detach().clone()}
                         for name, lora in self.lora.items()}}

    def load_extra_state(self, state: dict) -> None:
        # In place, so the optimiser keeps holding the same parameters.
        for name, tensors in state["lora"].items():
            self.lora[name].down.data.copy_(tensors["down"])
            self.lora[name].up.data.copy_(tensors["up"])
