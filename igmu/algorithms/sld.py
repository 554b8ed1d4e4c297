"""SLD: Safe Latent Diffusion: Mitigating Inappropriate Degeneration in Diffusion Models (Schramowski et al., 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from igmu.algorithms.base import Unlearner, hyperparameter, register_algorithm
from igmu.models.guidance import SafeLatentGuidance
from igmu.models.text_to_image import TEXT_TO_IMAGE

# The safety concept SLD ships for inappropriate content (the I2P categories), its default on SD.
I2P_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, "
               "bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, "
               "child abuse, brutality, cruelty")


@dataclass
class SLDParams:
    """SLD changes no weights: it steers sampling away from a safety concept (see
    `igmu.models.guidance.SafeLatentGuidance` for the equations). The paper's four presets, as
    (scale s_S, warm-up, threshold lambda, momentum s_m, momentum beta_m), with the warm-up in steps of
    its 50-step sampler and here as the fraction of the sampler's steps:
    - Weak: 20, 15 (0.30), 0.0, 0.0, 0.0
    - Medium: 1000, 10 (0.20), 0.01, 0.3, 0.4 (the reference pipeline's default, and igmu's)
    - Strong: 2000, 7 (0.14), 0.025, 0.5, 0.7
    - Max: 5000, 0 (0.0), 1.0, 0.5, 0.7
    The world keeps Medium; figures are in docs/benchmarks.md. The safety concept is the target's own
    name unless `concept` is given (on Stable Diffusion, sensitive targets get the paper's I2P
    concept, `SLD.official_category_defaults`).

    Where igmu differs from the reference pipeline (documented choices): the warm-up is a fraction of
    the sampler's steps (the world samples 10 steps, not 50), and the rule runs with any scheduler
    igmu samples with, not only those the pipeline lists."""

    scale: float = hyperparameter(1000.0, 0.0, 1e5, "s_S: safety guidance scale (the elementwise weight saturates at 1)")
    warmup_fraction: float = hyperparameter(0.2, 0.0, 1.0, "share of the sampler's first steps without safety guidance")
    threshold: float = hyperparameter(0.01, -1.0, 10.0, "lambda: steer entries where prompt minus concept is below it")
    momentum_scale: float = hyperparameter(0.3, 0.0, 10.0, "s_m: weight of the safety momentum")
    momentum_beta: float = hyperparameter(0.4, 0.0, 1.0, "beta_m: how much of the previous momentum is kept")
    concept: str = hyperparameter("", doc="the safety concept S; empty: the target's name")


@register_algorithm("sld")
class SLD(Unlearner):
    """Steer classifier-free guidance away from the concept at sampling time; the weights stay as they were."""

    generator_kinds = TEXT_TO_IMAGE
    paper = ("Schramowski et al., Safe Latent Diffusion: Mitigating Inappropriate Degeneration in Diffusion Models, "
             "CVPR 2023 (arXiv 2211.05105)")
    repo = "https://github.com/ml-research/safe-latent-diffusion"
    Params = SLDParams
    stock_weights = False
    edits_sampler = True
    official_defaults = {"scale": 1000.0, "warmup_fraction": 0.2, "threshold": 0.01, "momentum_scale": 0.3,
                         "momentum_beta": 0.4, "concept": ""}
    official_category_defaults = {"sensitive": {"concept": I2P_CONCEPT}}

    @property
    def total_steps(self) -> int:
        return 1

    def rule(self) -> SafeLatentGuidance:
        p = self.params
        return SafeLatentGuidance(concept=p.concept or self.task.target, scale=p.scale,
                                  warmup_fraction=p.warmup_fraction, threshold=p.threshold,
                                  momentum_scale=p.momentum_scale, momentum_beta=p.momentum_beta)

    def step(self) -> dict[str, float]:
        """Safe latent diffusion (Schramowski et al. 2023, Eqs. 3-8): install the safety guidance
        rule, so every later sampling of this generator is steered away from the concept S."""
        self.generator.guidance_rule = self.rule()
        return {"safety_scale": float(self.params.scale)}

    def extra_state(self) -> dict:
        return {"installed": self.generator.guidance_rule is not None}

    def load_extra_state(self, state: dict) -> None:
        self.generator.guidance_rule = self.rule() if state.get("installed") else None
