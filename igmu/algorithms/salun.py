"""SalUn: Gradient-based Weight Saliency for Machine Unlearning (Fan et al., ICLR 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from igmu.algorithms.base import (
    CommonParams,
    Unlearner,
    hyperparameter,
    register_algorithm,
)
from igmu.algorithms.common import (
    ParameterSet,
    apply_masks,
    diffusion_loss,
    guided_denoising_loss,
    noised,
    pick,
    prompt_images,
    top_fraction_masks,
)
from igmu.models.text_to_image import TEXT_TO_IMAGE

# The NSFW recipe's image sets (800 generated forget and 800 retain images) at batch 8: one epoch is
# 100 steps, and the class-forgetting scripts train 5 epochs.
OFFICIAL_IMAGES = 800
OFFICIAL_STEPS_PER_EPOCH = OFFICIAL_IMAGES // 8
OFFICIAL_EPOCHS = 5


@dataclass
class SalUnParams(CommonParams):
    """The defaults below are rescaled for the world model: lr 3e-5, 150 steps, alpha 1.0; forget/
    retain images are the original model's samples (as SalUn's NSFW recipe does). On Stable
    Diffusion `SalUn.official_defaults` apply instead (SD/train-scripts, SD 1.4): Adam lr 1e-5,
    batch 8, full UNet, alpha 0.1 (the README command uses 0.5), mask threshold 0.5, mask CFG 7.5,
    the NSFW recipe's 800 forget and 800 retain images, and 5 epochs of 800 / 8 = 100 steps (500
    steps; 1 epoch, 100 steps, for nudity)."""

    lr: float = hyperparameter(3e-5, 1e-7, 1e-1, "Adam learning rate", log=True)
    steps: int = hyperparameter(150, 1, 100_000, "optimisation steps")
    batch_size: int = hyperparameter(8, 1, 256, "forget and retain images per step")
    train_method: ParameterSet = hyperparameter("full", doc="UNet parameters the mask ranks")
    alpha: float = hyperparameter(1.0, 0.0, 100.0, "weight of the retain diffusion loss")
    threshold: float = hyperparameter(0.5, 0.001, 1.0, "fraction of weights the saliency mask keeps")
    mask_guidance: float = hyperparameter(7.5, 1.0, 20.0, "CFG scale w in the saliency loss")
    forget_images: int = hyperparameter(48, 1, 100_000, "original-model images of forget prompts")
    retain_images: int = hyperparameter(64, 1, 100_000, "original-model images of retain prompts")


@register_algorithm("salun")
class SalUn(Unlearner):
    """Random-label forgetting plus retain diffusion loss, updating only salient weights."""

    generator_kinds = TEXT_TO_IMAGE
    paper = "Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency, ICLR 2024"
    repo = "https://github.com/OPTML-Group/Unlearn-Saliency"
    Params = SalUnParams
    official_defaults = {"lr": 1e-5, "steps": OFFICIAL_EPOCHS * OFFICIAL_STEPS_PER_EPOCH, "batch_size": 8,
                         "train_method": "full", "alpha": 0.1, "threshold": 0.5, "mask_guidance": 7.5,
                         "forget_images": OFFICIAL_IMAGES, "retain_images": OFFICIAL_IMAGES}
    # nsfw_removal.py trains one epoch.
    official_category_defaults = {"sensitive": {"steps": OFFICIAL_STEPS_PER_EPOCH}}

    def prepare(self) -> None:
        p, task = self.params, self.task
        self.forget = prompt_images(self.generator, task.forget_prompts, p.forget_images, self.seed + 1)
        self.retain = prompt_images(self.generator, task.retain_prompts, p.retain_images, self.seed + 2)
        self.train_unet_parameters(p.train_method)
        self.masks = self.saliency_masks()

    def saliency_masks(self) -> dict[str, torch.Tensor]:
        """m_S = 1(|grad_theta L_f(theta; D_f)| >= gamma): the gradient of the guided forget loss over
        the whole forget set, keeping the top `threshold` of weights by its magnitude."""
        gradient = {name: torch.zeros_like(param) for name, param in self.trained.items()}
        for start in range(0, len(self.forget.latents), self.params.batch_size):
            clean = self.forget.latents[start:start + self.params.batch_size]
            prompts = [self.task.forget_prompts[i] for i in self.forget.index[start:start + len(clean)]]
            for param in self.trained.values():
                param.grad = None
            self.mask_loss(clean, prompts).backward()
            # Summed with their signs: a weight whose per-batch gradients cancel over the forget set
            # is not salient for forgetting it, however large each batch's gradient was.
            for name, param in self.trained.items():
                gradient[name] += param.grad
        self.generator.unet.zero_grad(set_to_none=True)
        return top_fraction_masks({name: g.abs() for name, g in gradient.items()}, self.params.threshold)

    def mask_loss(self, clean: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The forget loss the saliency is taken of: -|| epsilon - epsilon~_theta(x_t, c_f) ||^2 with
        the classifier-free guided prediction epsilon~ = (1 + w) epsilon_theta(x_t, c_f) - w epsilon_theta(x_t)."""
        return -guided_denoising_loss(self.generator, clean, prompts, self.params.mask_guidance, self.rng)

    def mask_gradients(self) -> None:
        apply_masks(self.trained, self.masks)

    def forget_loss(self, clean: torch.Tensor, prompts: list[str], pseudo: list[str]) -> torch.Tensor:
        """Random labelling: || epsilon_theta(x_t^f, c_f) - sg[epsilon_theta(x_t^f, c_pseudo)] ||^2"""
        gen = self.generator
        x_t, t, _ = noised(gen, clean, self.rng)
        with torch.no_grad():
            relabelled = gen.unet(x_t, t, encoder_hidden_states=gen.encode_prompt(pseudo)).sample
        return F.mse_loss(gen.unet(x_t, t, encoder_hidden_states=gen.encode_prompt(prompts)).sample, relabelled)

    def step(self) -> dict[str, float]:
        p, task = self.params, self.task
        # 1. forget loss on a batch of forget images, relabelled with the pseudo prompt
        f = pick(tuple(self.forget.index), p.batch_size, self.rng)
        prompt_ids = [self.forget.index[i] for i in f]
        forget = self.forget_loss(self.forget.latents[f], [task.forget_prompts[i] for i in prompt_ids],
                                  [task.pseudo_prompts[i] for i in prompt_ids])
        # 2. retain loss: the ordinary diffusion loss on retain images
        r = pick(tuple(self.retain.index), p.batch_size, self.rng)
        retain = diffusion_loss(self.generator, self.retain.latents[r],
                                [task.retain_prompts[self.retain.index[i]] for i in r], self.rng)
        # 3. L = L_f + alpha L_r, with gradients masked to the salient weights
        loss = forget + p.alpha * retain
        self.update(loss)
        return {"loss": float(loss.detach()), "forget_loss": float(forget.detach()), "retain_loss": float(retain.detach())}

    def extra_state(self) -> dict:
        return {"masks": self.masks}

    def load_extra_state(self, state: dict) -> None:
        self.masks = state["masks"]
