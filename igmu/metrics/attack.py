"""An UnlearnDiffAtk-style adversarial prompt attack (Zhang et al., ECCV 2024).

White-box and classifier-free: a few prefix token embeddings are optimised so that the attacked
model, conditioned on "<prefix> + prompt", denoises reference images that show the target, i.e.
the diffusion model itself is the classifier. Success is then judged by the target's detector on
images sampled with the adversarial prompt.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from igmu.models.text_to_image import Generator


@contextmanager
def _prefix_embeddings(generator: Generator, prefix: torch.Tensor):
    """Replace the token embeddings right after BOS with `prefix` [B, K, D] while active."""
    table = generator.text_encoder.get_input_embeddings()

    def swap(_module, _inputs, output):
        k = prefix.shape[1]
        return torch.cat([output[:, :1], prefix.to(output.dtype), output[:, 1 + k:]], dim=1)

    handle = table.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()


def _prefixed_ids(generator: Generator, prompts: list[str], n_prefix: int) -> torch.Tensor:
    """Token ids with `n_prefix` placeholder slots after BOS (their embeddings get replaced)."""
    ids = generator.tokenize(prompts)
    placeholder = torch.full((len(prompts), n_prefix), generator.tokenizer.unk_token_id or 0, device=ids.device)
    return torch.cat([ids[:, :1], placeholder, ids[:, 1:-n_prefix]], dim=1)


def attack_embeddings(generator: Generator, prompts: list[str], reference_images: torch.Tensor,
                      steps: int, n_prefix: int = 5, lr: float = 0.01, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Optimise prefix embeddings; returns conditioning [B, L, D] and the per-step attack loss."""
    torch_rng = torch.Generator("cpu").manual_seed(seed)
    table = generator.text_encoder.get_input_embeddings().weight.detach()
    start = torch.randint(0, len(table), (len(prompts), n_prefix), generator=torch_rng)
    prefix = table[start.to(table.device)].clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([prefix], lr=lr)
    ids = _prefixed_ids(generator, prompts, n_prefix)
    clean = generator.codec.encode(reference_images.to(generator.device, generator.dtype))
    n_train = generator.scheduler.config.num_train_timesteps
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            noise = torch.randn(clean.shape, generator=torch_rng).to(clean)
            t = torch.randint(0, n_train, (len(prompts),), generator=torch_rng).to(clean.device)
            noisy = generator.scheduler.add_noise(clean, noise, t)
            with _prefix_embeddings(generator, prefix):
                embeddings = generator.text_encoder(ids)[0]
            target = generator.training_target(clean, noise, t)
            loss = F.mse_loss(generator.unet(noisy, t, encoder_hidden_states=embeddings).sample, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    with torch.no_grad(), _prefix_embeddings(generator, prefix.detach()):
        return generator.text_encoder(ids)[0].detach(), losses
