"""Machine Unlearning for Image-to-Image Generative Models (Li et al., ICLR 2024), with the paper's
four baselines, each registered as its own algorithm so that `igmu run` and sweeps treat them alike.

Only the encoder is tuned, against a frozen copy E0 of itself; the decoder never changes:

    L = ||E(T(x_r)) - E0(T(x_r))||^2 + alpha ||E(T(x_f)) - E0(T(n))||^2

x_f are forget images (renders that show the target), x_r retain images (real renders without the
target, or proxy images), n noise with each forget image's mean and spread, T the mask transform
(centre or half mask, drawn per step). ||.||^2 over the encoder's list of feature maps is the mean
squared error per map, averaged over maps (Palette's list-of-features embedding; MAGE's F.mse_loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from igmu.algorithms.base import Unlearner, hyperparameter, register_algorithm
from igmu.algorithms.common import frozen_copy, pick
from igmu.models.image_to_image import MASK_TYPES, WorldImageToImage
from igmu.world.concept_images import concept_images

NoiseType = Literal["normal", "uniform", "constant"]
PAPER = "Li, Hsu, Chen, Marculescu, Machine Unlearning for Image-to-Image Generative Models, ICLR 2024"
REPO = "https://github.com/jpmorganchase/i2i-generator-unlearning"


@dataclass
class I2IParams:
    """Official (MAGE): AdamW (0.9, 0.95), weight decay 0.05, lr = blr 1e-4 x 128 / 256 = 5e-5,
    6 epochs, batch 128, forget_alpha 0.2 (README), retain_alpha 1, grad clip 3, normal noise.
    Rescaled for the world generator (docs/benchmarks.md): lr 1e-3, 600 steps of batch 32 (epochs
    become steps: 600 x 32 / 64 forget images = 300 epochs of this tiny set), 256 retain images,
    alpha 1.2. At the paper's alpha 0.2 the world encoder barely forgets (forget similarity 0.97 x
    the original's); alpha 1.2 is the largest tested value that keeps retain similarity >= 0.9 x."""

    lr: float = hyperparameter(1e-3, 1e-7, 1e-1, "AdamW learning rate", log=True)
    steps: int = hyperparameter(600, 1, 100_000, "optimisation steps (epochs x forget batches)")
    batch_size: int = hyperparameter(32, 1, 1024, "forget and retain images per step")
    alpha: float = hyperparameter(1.2, 0.0, 100.0, "weight of the forget term")
    noise_type: NoiseType = hyperparameter("normal", doc="noise n replacing forget images: normal, uniform "
                                                         "or constant, with each image's mean (and std)")
    proxy_ratio: float = hyperparameter(0.0, 0.0, 1.0, "share of retain images that are proxy mosaics "
                                                       "instead of real retain renders")
    forget_images: int = hyperparameter(64, 1, 100_000, "forget renders (the target)")
    retain_images: int = hyperparameter(256, 1, 100_000, "retain images (real renders and proxies)")
    weight_decay: float = hyperparameter(0.05, 0.0, 1.0, "AdamW weight decay")
    grad_clip: float = hyperparameter(3.0, 0.0, 1000.0, "gradient-norm clip (0: none)")


def embedding_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """||a - b||^2 between two encoder embeddings: MSE per feature map, averaged over maps."""
    return sum(F.mse_loss(x, y) for x, y in zip(a, b)) / len(a)


def like_noise(images: torch.Tensor, kind: str, rng: torch.Generator) -> torch.Tensor:
    """Noise images with each image's mean and std (MAGE: clamp(N(mean(x), std(x)), 0, 1))."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True)
    if kind == "normal":
        noise = mean + std * torch.randn(images.shape, generator=rng)
    elif kind == "uniform":  # same mean and std: U(mean - sqrt(3) std, mean + sqrt(3) std)
        noise = mean + std * 3 ** 0.5 * (2 * torch.rand(images.shape, generator=rng) - 1)
    else:
        noise = mean.expand_as(images)
    return noise.clamp(0, 1)


@register_algorithm("i2i")
class I2IUnlearning(Unlearner):
    """Encoder-only unlearning: forget embeddings -> embeddings of noise, retain embeddings kept."""

    paper = PAPER
    repo = REPO
    generator_kinds = (WorldImageToImage,)
    Params = I2IParams

    def prepare(self) -> None:
        p, target, gen = self.params, self.task.target, self.generator
        self.forget = concept_images(target, "forget", p.forget_images, self.seed + 1)
        proxies = round(p.proxy_ratio * p.retain_images)
        self.retain = torch.cat([concept_images(target, "retain", p.retain_images - proxies, self.seed + 2),
                                 concept_images(target, "proxy", proxies, self.seed + 3)])
        self.frozen_encoder = frozen_copy(gen.encoder)
        gen.requires_grad_(False)
        gen.decoder.eval()
        gen.encoder.requires_grad_(True).train()
        self.trained = dict(gen.encoder.named_parameters())
        self.optimizer = torch.optim.AdamW(self.trained.values(), lr=p.lr, betas=(0.9, 0.95),
                                           weight_decay=p.weight_decay)

    def draw(self) -> dict:
        """One batch: forget and retain images, the mask type, and noise shaped like the forget images."""
        n = self.params.batch_size
        forget = self.forget[pick(self.forget, n, self.rng)]
        retain = self.retain[pick(self.retain, n, self.rng)]
        kind = MASK_TYPES[pick(MASK_TYPES, 1, self.rng)[0]]
        return {"forget": forget, "retain": retain, "mask": kind,
                "noise": like_noise(forget, self.params.noise_type, self.rng)}

    def encode(self, images: torch.Tensor, kind: str, frozen: bool = False) -> list[torch.Tensor]:
        gen = self.generator
        if frozen:
            with torch.no_grad():
                return self.frozen_encoder(gen.transform(images, kind))
        return gen.encoder(gen.transform(images, kind))

    def retain_loss(self, batch: dict) -> torch.Tensor:
        """||E(T(x_r)) - E0(T(x_r))||^2"""
        kind = batch["mask"]
        return embedding_distance(self.encode(batch["retain"], kind), self.encode(batch["retain"], kind, frozen=True))

    def forget_loss(self, batch: dict) -> torch.Tensor:
        """||E(T(x_f)) - E0(T(n))||^2"""
        kind = batch["mask"]
        return embedding_distance(self.encode(batch["forget"], kind), self.encode(batch["noise"], kind, frozen=True))

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        retain, forget = self.retain_loss(batch), self.forget_loss(batch)
        return {"loss": retain + self.params.alpha * forget, "forget_loss": forget, "retain_loss": retain}

    def step(self) -> dict[str, float]:
        losses = self.losses(self.draw())
        self.update(losses["loss"])
        return {k: float(v.detach()) for k, v in losses.items()}

    def mask_gradients(self) -> None:
        """The paper's gradient clipping, between backward and the optimiser step."""
        if self.params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trained.values(), self.params.grad_clip)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.generator.encoder}


class OutputSpaceBaseline(I2IUnlearning):
    """The paper's output-space baselines: the generator's own reconstruction loss on retain images,
    plus a forget term on the decoded forget images. Encoder-only, like the method, so the
    comparison isolates the loss."""

    def reconstruction(self, images: torch.Tensor, kind: str, label: torch.Tensor) -> torch.Tensor:
        gen = self.generator
        return F.mse_loss(gen.decoder(self.encode(images, kind)), label.to(gen.device))

    def retain_loss(self, batch: dict) -> torch.Tensor:
        """||G(T(x_r)) - x_r||^2"""
        return self.reconstruction(batch["retain"], batch["mask"], batch["retain"])


@register_algorithm("i2i-max-loss")
class MaxLoss(OutputSpaceBaseline):
    """Baseline MAX LOSS: maximise the reconstruction loss on forget images."""


    def forget_loss(self, batch: dict) -> torch.Tensor:
        """-||G(T(x_f)) - x_f||^2"""
        return -self.reconstruction(batch["forget"], batch["mask"], batch["forget"])


@register_algorithm("i2i-noisy-label")
class NoisyLabel(OutputSpaceBaseline):
    """Baseline NOISY LABEL: forget images are trained to reconstruct noise."""


    def forget_loss(self, batch: dict) -> torch.Tensor:
        """||G(T(x_f)) - n||^2"""
        return self.reconstruction(batch["forget"], batch["mask"], batch["noise"])


@register_algorithm("i2i-retain-label")
class RetainLabel(OutputSpaceBaseline):
    """Baseline RETAIN LABEL: forget images are trained to reconstruct retain images."""


    def forget_loss(self, batch: dict) -> torch.Tensor:
        """||G(T(x_f)) - x_r||^2, each forget image paired with a drawn retain image"""
        return self.reconstruction(batch["forget"], batch["mask"], batch["retain"])


@register_algorithm("i2i-random-encoder")
class RandomEncoder(I2IUnlearning):
    """Baseline RANDOM ENCODER: forget embeddings -> Gaussian noise in embedding space (not the
    frozen encoder's embedding of a noise image); the retain term is the method's."""


    def forget_loss(self, batch: dict) -> torch.Tensor:
        """||E(T(x_f)) - z||^2, z ~ N(0, I) of the embedding's shape"""
        mine = self.encode(batch["forget"], batch["mask"])
        targets = [torch.randn(m.shape, generator=self.rng).to(m) for m in mine]
        return embedding_distance(mine, targets)
