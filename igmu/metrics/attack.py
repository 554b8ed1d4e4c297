"""An UnlearnDiffAtk-style adversarial prompt attack (Zhang et al., ECCV 2024).

White-box and classifier-free: a few prefix token embeddings are optimised so that the attacked
model, conditioned on "<prefix> + prompt", denoises reference images that show the target, i.e.
the diffusion model itself is the classifier. Success is then judged by the target's detector on
images sampled with the adversarial prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from igmu.algorithms.hooks import prefix_embeddings, prefixed_ids, random_token_embeddings
from igmu.models.text_to_image import Generator


def attack_embeddings(generator: Generator, prompts: list[str], reference_images: torch.Tensor,
                      steps: int, n_prefix: int = 5, lr: float = 0.01, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Optimise prefix embeddings; returns conditioning [B, L, D] and the per-step attack loss."""
    torch_rng = torch.Generator("cpu").manual_seed(seed)
    prefix = random_token_embeddings(generator.text_encoder, (len(prompts), n_prefix), torch_rng).requires_grad_(True)
    optimizer = torch.optim.Adam([prefix], lr=lr)
    ids = prefixed_ids(generator, prompts, n_prefix)
    clean = generator.codec.encode(reference_images.to(generator.device, generator.dtype))
    n_train = generator.scheduler.config.num_train_timesteps
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            noise = torch.randn(clean.shape, generator=torch_rng).to(clean)
            t = torch.randint(0, n_train, (len(prompts),), generator=torch_rng).to(clean.device)
            noisy = generator.scheduler.add_noise(clean, noise, t)
            with prefix_embeddings(generator.text_encoder, prefix):
                embeddings = generator.text_encoder(ids)[0]
            target = generator.training_target(clean, noise, t)
            loss = F.mse_loss(generator.unet(noisy, t, encoder_hidden_states=embeddings).sample, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    with torch.no_grad(), prefix_embeddings(generator.text_encoder, prefix.detach()):
        return generator.text_encoder(ids)[0].detach(), losses
