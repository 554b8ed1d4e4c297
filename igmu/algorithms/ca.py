"""CA: Ablating Concepts in Text-to-Image Diffusion Models (Kumari et al., ICCV 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from igmu.algorithms.base import (
    CommonParams,
    Unlearner,
    hyperparameter,
    register_algorithm,
)
from igmu.algorithms.common import OptimizerKind, ParameterSet, noised, pick, prompt_images
from igmu.models.text_to_image import TEXT_TO_IMAGE

# The official batch on one GPU. `--scale_lr` multiplies the base learning rate by batch x GPUs, so
# the official rates below are the base rates times this (one GPU).
OFFICIAL_BATCH = 4
OFFICIAL_BASE_LR = 2e-6


@dataclass
class CAParams(CommonParams):
    """The defaults below are rescaled for the world model: lr 4e-4, 150 steps, batch 8, 48 anchor
    images, prior preservation on. On Stable Diffusion `ConceptAblation.official_defaults` apply
    instead (diffusers/train.py and its README, SD 1.4): base lr 2e-6 scaled as `--scale_lr` does
    (x batch 4 x 1 GPU = 8e-6), batch 4, 200 steps (the README's count for one GPU; 100 on two),
    model-based loss, cross-attn k/v, 200 anchor images (`num_class_images`' default; the paper
    used 1000), prior preservation off (the README adds it for one instance only; weight 1).
    The optimiser is the official one on every kind: AdamW with weight decay 1e-2 and the gradient
    clipped to global norm 1.0 (`max_grad_norm`). At the world's rate (4e-4 x 150 steps) the decay
    shrinks weights by under 0.1%, so the world keeps it rather than carry a second optimiser."""

    lr: float = hyperparameter(4e-4, 1e-7, 1e-1, "learning rate", log=True)
    steps: int = hyperparameter(150, 1, 100_000, "optimisation steps")
    batch_size: int = hyperparameter(8, 1, 256, "anchor images per step")
    loss_type: Literal["model", "noise"] = hyperparameter("model", doc="model-based or noise-based target")
    train_method: ParameterSet = hyperparameter("xattn-kv", doc="xattn-kv is CA's 'cross-attn' default")
    prior_preservation: bool = hyperparameter(True, doc="add the anchor prompt's own diffusion loss")
    prior_loss_weight: float = hyperparameter(1.0, 0.0, 100.0, "weight of the prior-preservation loss")
    anchor_images: int = hyperparameter(48, 1, 100_000, "original-model images of anchor prompts")
    anchor: Literal["anchor", "pseudo"] = hyperparameter(
        "anchor", doc="anchor concept: the prompt without the target, or the target replaced by a neighbour")
    optimizer: OptimizerKind = hyperparameter("adamw", doc="adamw (official) or adam")
    weight_decay: float = hyperparameter(1e-2, 0.0, 1.0, "decoupled weight decay (official 1e-2)")
    max_grad_norm: float = hyperparameter(1.0, 0.0, 1e6, "clip the gradient to this global norm; 0 never clips")


@register_algorithm("ca")
class ConceptAblation(Unlearner):
    """Match the model's prediction for the target prompt to its prediction for the anchor prompt,
    on images of the anchor concept."""

    generator_kinds = TEXT_TO_IMAGE
    paper = "Kumari et al., Ablating Concepts in Text-to-Image Diffusion Models, ICCV 2023 (arXiv 2303.13516)"
    repo = "https://github.com/nupurkmr9/concept-ablation"
    Params = CAParams
    # The paper anchors an instance to its broader concept ("Grumpy Cat" -> "cat"). The world's objects
    # have no broader concept, so an object is anchored to a neighbour object (ball at the full budget:
    # forgetting 0.750 -> 0.979); the hazard badge needs a faster rate (forgetting 0.708 -> 0.833).
    # Measurements in docs/benchmarks.md.
    category_defaults = {"object": {"anchor": "pseudo"}, "sensitive": {"lr": 1e-3}}
    official_defaults = {"lr": OFFICIAL_BASE_LR * OFFICIAL_BATCH, "steps": 200, "batch_size": OFFICIAL_BATCH,
                         "loss_type": "model", "train_method": "xattn-kv", "prior_preservation": False,
                         "prior_loss_weight": 1.0, "anchor_images": 200, "anchor": "anchor",
                         "optimizer": "adamw", "weight_decay": 1e-2, "max_grad_norm": 1.0}
    # Nudity: base lr 4e-6 (scaled the same way), 400 steps, all attention projections.
    official_category_defaults = {"sensitive": {"lr": 4e-6 * OFFICIAL_BATCH, "steps": 400, "train_method": "attn"}}

    def prepare(self) -> None:
        task = self.task
        # Both prompt lists are aligned with forget_prompts, so one index serves target and anchor.
        self.anchor_prompts = task.pseudo_prompts if self.params.anchor == "pseudo" else task.anchor_prompts
        self.anchor = prompt_images(self.generator, self.anchor_prompts, self.params.anchor_images, self.seed + 1)
        p = self.params
        self.train_unet_parameters(p.train_method, p.weight_decay, p.optimizer)

    @property
    def max_grad_norm(self) -> float | None:
        return self.params.max_grad_norm or None

    def draw(self) -> dict:
        """A batch of noised anchor images with their target and anchor prompts. With prior
        preservation the batch has a second half of its own (own images, noise and timesteps), as
        the official loader stacks a class batch after the instance batch: the prior term never
        sees the ablation term's samples."""
        batch = self.draw_half()
        if self.params.prior_preservation:
            batch["prior"] = self.draw_half()
        return batch

    def draw_half(self) -> dict:
        chosen = pick(tuple(self.anchor.index), self.params.batch_size, self.rng)
        x_t, t, target = noised(self.generator, self.anchor.latents[chosen], self.rng)
        ids = [self.anchor.index[i] for i in chosen]
        return {"x_t": x_t, "t": t, "diffusion_target": target,
                "target": [self.task.forget_prompts[i] for i in ids],
                "anchor": [self.anchor_prompts[i] for i in ids]}

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """model-based: || eps_theta(x_t, c*) - sg[eps_theta(x_t, c)] ||^2; noise-based: target = eps.
        Prior preservation adds || eps_theta(x'_t, c) - eps' ||^2 on the batch's own prior half. (On
        a v-prediction model eps is the velocity: `diffusion_target` is `Generator.training_target`.)"""
        gen, x_t, t = self.generator, batch["x_t"], batch["t"]
        anchor_emb = gen.encode_prompt(batch["anchor"])
        if self.params.loss_type == "model":
            with torch.no_grad():
                target = gen.unet(x_t, t, encoder_hidden_states=anchor_emb).sample
        else:
            target = batch["diffusion_target"]
        predicted = gen.unet(x_t, t, encoder_hidden_states=gen.encode_prompt(batch["target"])).sample
        out = {"ablation_loss": F.mse_loss(predicted, target)}
        if self.params.prior_preservation:
            half = batch["prior"]
            prior = gen.unet(half["x_t"], half["t"], encoder_hidden_states=gen.encode_prompt(half["anchor"])).sample
            out["prior_loss"] = F.mse_loss(prior, half["diffusion_target"])
        return out

    def step(self) -> dict[str, float]:
        parts = self.losses(self.draw())
        loss = parts["ablation_loss"] + self.params.prior_loss_weight * parts.get("prior_loss", 0.0)
        self.update(loss)
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
