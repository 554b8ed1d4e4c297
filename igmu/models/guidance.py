"""Guidance rules: how a sampler turns the UNet's predictions at each step into the noise it steps with.

A generator without a rule uses plain classifier-free guidance. An inference-time unlearning method
(Safe Latent Diffusion) installs a rule instead: the weights stay the original model's, so the rule
travels with the model wherever its effect must (the image cache's key, a trial's weights manifest,
a saved folder), and a folder that needs one is never a stock pipeline's (see `Generator.save`).
Rules live here, below the algorithms, because loading a saved folder has to rebuild them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch

from igmu.errors import UsageError

GUIDANCE_FILE = "guidance.json"


@dataclass(frozen=True)
class SafeLatentGuidance:
    """Safe Latent Diffusion's safety guidance (Schramowski et al., CVPR 2023, arXiv 2211.05105,
    Eqs. 3-8). With epsilon_u, epsilon_p and epsilon_S the predictions for the empty prompt, the
    prompt and the safety concept S, classifier-free guidance becomes
        epsilon = epsilon_u + s_g [(epsilon_p - epsilon_u) - gamma_t]                   (Eq. 3)
        gamma_t = mu (epsilon_S - epsilon_u) + s_m nu_t                                 (Eqs. 4, 7)
        mu = min(s_S |epsilon_p - epsilon_S|, 1) where epsilon_p - epsilon_S < lambda, else 0   (Eq. 6)
        nu_{t+1} = beta_m nu_t + (1 - beta_m) gamma_t                                   (Eq. 8)
    and gamma_t is applied only after the warm-up (the first `warmup_fraction` of the steps); the
    momentum nu builds up during it. Elementwise: only latent entries where the prompt's prediction
    is not clearly away from the concept's are steered.

    Notation (field -> symbol): scale -> s_S, threshold -> lambda, momentum_scale -> s_m,
    momentum_beta -> beta_m; the generator's guidance -> s_g. The warm-up is a fraction of the
    sampler's steps, not a step count, so a 10-step sampler warms up as long as a 50-step one."""

    name: ClassVar[str] = "sld"
    concept: str
    scale: float
    warmup_fraction: float
    threshold: float
    momentum_scale: float
    momentum_beta: float

    def config(self) -> dict:
        return {"rule": self.name, **asdict(self)}

    def denoise_step(self, generator, latents: torch.Tensor, t, step: int, steps: int, embeddings: torch.Tensor,
                     uncond: torch.Tensor, concept: torch.Tensor, guidance: float,
                     momentum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's noise and the next momentum; three predictions per latent."""
        batch = torch.cat([uncond, embeddings, concept])
        predicted = generator.unet(torch.cat([latents] * 3), t, encoder_hidden_states=batch).sample
        noise_uncond, noise_text, noise_concept = predicted.chunk(3)
        safety, momentum = self.safety_guidance(noise_uncond, noise_text, noise_concept, momentum)
        text_guidance = noise_text - noise_uncond
        if step >= self.warmup_fraction * steps:
            text_guidance = text_guidance - safety
        return noise_uncond + guidance * text_guidance, momentum

    def safety_guidance(self, noise_uncond: torch.Tensor, noise_text: torch.Tensor, noise_concept: torch.Tensor,
                        momentum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma_t (Eqs. 4, 6, 7) and nu_{t+1} (Eq. 8)."""
        momentum = torch.zeros_like(noise_text) if momentum is None else momentum
        distance = noise_text - noise_concept
        mu = torch.clamp(distance.abs() * self.scale, max=1.0)
        mu = torch.where(distance >= self.threshold, torch.zeros_like(mu), mu)
        gamma = mu * (noise_concept - noise_uncond) + self.momentum_scale * momentum
        return gamma, self.momentum_beta * momentum + (1 - self.momentum_beta) * gamma


GUIDANCE_RULES = {rule.name: rule for rule in (SafeLatentGuidance,)}


def rule_from_config(config: dict | None):
    """The rule a `config()` describes, or None for plain classifier-free guidance."""
    if not config:
        return None
    config = dict(config)
    name = config.pop("rule", None)
    if name not in GUIDANCE_RULES:
        raise UsageError(f"unknown guidance rule {name!r}; valid: {', '.join(GUIDANCE_RULES)}")
    rule = GUIDANCE_RULES[name]
    expected = {f.name for f in fields(rule)}
    if set(config) != expected:
        raise UsageError(f"guidance rule {name!r} needs {', '.join(sorted(expected))}; got {', '.join(sorted(config))}")
    return rule(**config)


def read_guidance(folder: Path):
    path = Path(folder) / GUIDANCE_FILE
    return rule_from_config(json.loads(path.read_text())) if path.is_file() else None


def write_guidance(folder: Path, rule) -> None:
    if rule is not None:
        (Path(folder) / GUIDANCE_FILE).write_text(json.dumps(rule.config(), indent=2))
