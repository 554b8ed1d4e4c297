"""ScissorHands: SNIP scores, the re-initialisation of the top fraction, the phase-2 loss, the
layers it touches, and SalUn's mask loss after the guided loss moved to common.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from igmu.algorithms.common import pick, prompt_images
from igmu.algorithms.scissorhands import decoder_attention_prefixes, prune_selection, snip_scores
from igmu.errors import UsageError
from igmu.models.loader import load
from igmu.run import build_unlearner

TINY = {"steps": 2, "batch_size": 2, "forget_images": 4, "retain_images": 4, "prune_num": 2}


@pytest.fixture
def world():
    return load("world", device="cpu")


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def unprepared(world, **overrides):
    """A ScissorHands unlearner with its images made but phase 1 not yet run."""
    shs = build_unlearner("scissorhands", world, "ball", {**TINY, **overrides}, seed=0)
    shs.forget = prompt_images(world, shs.task.forget_prompts, shs.params.forget_images, shs.seed + 1)
    shs.retain = prompt_images(world, shs.task.retain_prompts, shs.params.retain_images, shs.seed + 2)
    world.text_encoder.requires_grad_(False)
    return shs


def direct_gradient_magnitudes(shs, world, params):
    """sum_b |grad L_w| over prune_num forget batches, L_w = ||eps - ((1 + w) eps(c) - w eps(''))||^2,
    written out here with the unlearner's generator draws."""
    w, total = shs.params.prune_guidance, [torch.zeros_like(p) for p in params.values()]
    signed = [torch.zeros_like(p) for p in params.values()]
    for _ in range(shs.params.prune_num):
        chosen = pick(tuple(shs.forget.index), shs.params.batch_size, shs.rng)
        clean = shs.forget.latents[chosen]
        prompts = [shs.task.forget_prompts[shs.forget.index[i]] for i in chosen]
        noise = torch.randn(clean.shape, generator=shs.rng)
        t = torch.randint(0, 1000, (len(clean),), generator=shs.rng)
        x_t = world.scheduler.add_noise(clean, noise, t)
        cond = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt(prompts)).sample
        uncond = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt([""] * len(clean))).sample
        loss = ((noise - ((1 + w) * cond - w * uncond)) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        total = [a + g.abs() for a, g in zip(total, grads)]
        signed = [a + g for a, g in zip(signed, grads)]
    return dict(zip(params, total)), dict(zip(params, signed))


def test_snip_scores_are_the_summed_gradient_magnitudes_times_the_weights(world):
    shs = unprepared(world, prune_scope="selected")
    params = shs.scored_parameters()
    state = shs.rng.get_state()
    magnitudes = shs.gradient_magnitudes(params)
    shs.rng.set_state(state)
    expected, signed = direct_gradient_magnitudes(shs, world, params)
    for name, param in params.items():
        assert torch.allclose(magnitudes[name], expected[name], rtol=1e-4, atol=1e-9), name
        scores = (expected[name] * param.detach()).abs()
        assert torch.allclose(snip_scores(magnitudes, params)[name], scores, rtol=1e-4, atol=1e-12), name
    # Magnitudes, not signed sums: over two batches some gradients partly cancel.
    assert any(not torch.allclose(expected[n], signed[n].abs()) for n in params)


def selected_scores(shs, params):
    return snip_scores(shs.gradient_magnitudes(params), params)


@pytest.mark.parametrize("scope", ["selected", "unet"])
def test_phase1_reinitialises_exactly_the_top_fraction_and_nothing_else(world, scope):
    sparsity = 0.99 if scope == "selected" else 0.9
    shs = unprepared(world, prune_scope=scope, sparsity=sparsity)
    before = snapshot(world.unet)
    params = shs.scored_parameters()
    state = shs.rng.get_state()
    scores = selected_scores(shs, params)
    shs.rng.set_state(state)
    count = shs.trim()
    # The quantile, computed here: the top round((1 - sparsity) N) scores of the scored weights.
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = round((1 - sparsity) * flat.numel())
    threshold = torch.topk(flat, keep).values[-1]
    selected = set(prune_selection(world.unet, "decoder-attn1"))
    expected_total = 0
    for name, now in world.unet.state_dict().items():
        changed = now != before[name]
        if name not in selected:
            assert not changed.any(), f"{name} is outside the selection and changed"
            continue
        top = scores[name] >= threshold
        expected_total += int(top.sum())
        assert torch.equal(changed, top), name
        if now.dim() == 1:
            assert torch.all(now[top] == 0), f"{name}: re-initialised biases must be zero"
        else:
            bound = 1 / math.sqrt(now.shape[1])  # Kaiming-uniform, a = sqrt(5)
            assert torch.all(now[top].abs() <= bound), name
    assert count == expected_total > 0
    if scope == "selected":
        assert count == round((1 - sparsity) * sum(world.unet.get_parameter(n).numel() for n in selected))


def test_phase2_loss_is_retain_minus_lambda_forget(world):
    shs = build_unlearner("scissorhands", world, "ball", {**TINY, "lam": 0.3}, seed=0)
    shs.prepare()
    state = shs.rng.get_state()
    losses = shs.losses()
    shs.rng.set_state(state)

    def denoising_loss(images, prompt_list):
        chosen = pick(tuple(images.index), shs.params.batch_size, shs.rng)
        clean = images.latents[chosen]
        noise = torch.randn(clean.shape, generator=shs.rng)
        t = torch.randint(0, 1000, (len(clean),), generator=shs.rng)
        x_t = world.scheduler.add_noise(clean, noise, t)
        prompts = [prompt_list[images.index[i]] for i in chosen]
        return F.mse_loss(world.unet(x_t, t, encoder_hidden_states=world.encode_prompt(prompts)).sample, noise)

    retain = denoising_loss(shs.retain, shs.task.retain_prompts)
    forget = denoising_loss(shs.forget, shs.task.forget_prompts)
    assert torch.allclose(losses["retain_loss"], retain, rtol=1e-5)
    assert torch.allclose(losses["forget_loss"], forget, rtol=1e-5)
    assert torch.allclose(losses["loss"], retain - 0.3 * forget, rtol=1e-5)
    assert not torch.allclose(losses["loss"], retain + 0.3 * forget, rtol=1e-5)


def test_only_the_declared_parameters_change(world):
    text_before = snapshot(world.text_encoder)
    before = snapshot(world.unet)
    shs = build_unlearner("scissorhands", world, "ball",
                          {**TINY, "train_method": "xattn", "prune_scope": "selected", "sparsity": 0.99}, seed=0)
    shs.prepare()
    for _ in range(2):
        shs.step()
    trimmed = set(prune_selection(world.unet, "decoder-attn1"))
    changed = {k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)}
    assert changed <= trimmed | {k for k in before if "attn2" in k}
    assert changed & trimmed and any("attn2" in k for k in changed)
    assert all(torch.equal(text_before[k], v) for k, v in world.text_encoder.state_dict().items())


def test_decoder_attn1_is_compvis_output_blocks_4_and_7():
    from diffusers import UNet2DConditionModel

    # SD 1.x's block layout (CompVis output block i = diffusers up_blocks[i // 3], item i % 3) at toy width.
    sd_layout = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 8, 8, 8),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    compvis = [f"up_blocks.{i // 3}.attentions.{i % 3}." for i in (4, 7)]
    assert compvis == ["up_blocks.1.attentions.1.", "up_blocks.2.attentions.1."]
    assert decoder_attention_prefixes(sd_layout) == compvis
    names = prune_selection(sd_layout, "decoder-attn1")
    assert names and all(".attn1." in n and n.startswith(tuple(compvis)) for n in names)
    assert len(prune_selection(sd_layout, "attn1")) > len(names)


def test_world_decoder_attn1_is_its_two_cross_attention_decoder_blocks(world):
    assert decoder_attention_prefixes(world.unet) == ["up_blocks.0.attentions.1.", "up_blocks.1.attentions.1."]
    assert sum(world.unet.get_parameter(n).numel() for n in prune_selection(world.unet, "decoder-attn1")) == 53408


def test_a_unet_without_decoder_self_attention_is_refused():
    linear = torch.nn.Module()
    linear.up_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(UsageError):
        prune_selection(linear, "decoder-attn1")


def test_salun_mask_loss_is_still_the_negative_guided_loss(world):
    from igmu.algorithms.common import noised

    salun = build_unlearner("salun", world, "ball", {"forget_images": 2, "retain_images": 2}, seed=0)
    clean = torch.randn(2, world.unet.config.in_channels, 16, 16)
    prompts = list(salun.task.forget_prompts[:2])
    state = salun.rng.get_state()
    loss = salun.mask_loss(clean, prompts)
    salun.rng.set_state(state)
    w = salun.params.mask_guidance
    x_t, t, target = noised(world, clean, salun.rng)
    cond = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt(prompts)).sample
    uncond = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt([""] * 2)).sample
    assert torch.equal(loss, -F.mse_loss(target, (1 + w) * cond - w * uncond))
