"""Unlearning algorithms: the registry contract, faithfulness to each paper, and resumability."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from resume import assert_resumes_bit_for_bit

from igmu.algorithms.base import ALGORITHMS, Unlearner, get_algorithm, make_params
from igmu.algorithms.common import pick, top_fraction_masks
from igmu.algorithms.erasediff import EraseDiff
from igmu.algorithms.esd import esd_target
from igmu.algorithms.loop import run_unlearning
from igmu.algorithms.uce import uce_solve
from igmu.errors import UsageError
from igmu.models.loader import ALL_KINDS, load
from igmu.models.text_to_image import TEXT_TO_IMAGE, StableDiffusion, WorldTextToImage
from igmu.run import build_unlearner

# Contract tests pick algorithms by the generators they declare they can edit (`generator_kinds`);
# image-to-image algorithms have their own contract tests in test_i2i.py.
WORLD_ALGORITHMS = sorted(name for name, cls in ALGORITHMS.items() if WorldTextToImage in cls.generator_kinds)
SD_ALGORITHMS = sorted(name for name, cls in ALGORITHMS.items() if StableDiffusion in cls.generator_kinds)

# Small enough for CI: few training images, tiny batches.
TINY = {"steps": 2, "batch_size": 2, "forget_images": 4, "retain_images": 4, "anchor_images": 4,
        "preserve_prompts": 10, "ddim_steps": 4, "epochs": 2, "sampler_steps": 4, "prompts": 4}


def tiny_overrides(name: str, **extra) -> dict:
    fields = {f.name for f in dataclasses.fields(ALGORITHMS[name].Params)}
    return {k: v for k, v in {**TINY, **extra}.items() if k in fields}


@pytest.fixture
def world():
    return load("world", device="cpu")


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_every_algorithm_declares_a_generator_kind_it_is_tested_on():
    for name, cls in ALGORITHMS.items():
        assert cls.generator_kinds and set(cls.generator_kinds) <= set(ALL_KINDS), name


@pytest.mark.parametrize("name", WORLD_ALGORITHMS)
@pytest.mark.slow
def test_contract_world_model(name, world):
    before = {"unet": snapshot(world.unet), "text_encoder": snapshot(world.text_encoder)}
    images_before = world.sample(["a ember ball"], seed=0)
    unlearner = build_unlearner(name, world, "ball", tiny_overrides(name), seed=1)
    history = run_unlearning(unlearner)
    assert len(history) == min(2, unlearner.total_steps) == unlearner.step_index
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for h in history for v in h.values())
    # The weights changed: the UNet's, or the text encoder's for the algorithms that train it
    # (AdvUnlearn); a tensor the original lacks (an adapter the algorithm added, Receler's erasers)
    # is a change too.
    after = {"unet": world.unet.state_dict(), "text_encoder": world.text_encoder.state_dict()}
    weights_changed = any(k not in before[m] or not torch.equal(before[m][k], v) for m in after for k, v in after[m].items())
    if ALGORITHMS[name].edits_sampler:  # its whole effect is how the model samples
        assert not weights_changed and world.guidance_rule is not None
        assert not torch.equal(world.sample(["a ember ball"], seed=0), images_before)
    else:
        assert weights_changed
    described = ALGORITHMS[name].describe()
    assert described["paper"] and described["repo"].startswith("https://")
    for hp in described["hyperparameters"]:
        assert hp["doc"] and ("choices" in hp or hp["range"][0] is not None or hp["type"] in ("bool", "str"))


@pytest.mark.parametrize("name", SD_ALGORITHMS)
@pytest.mark.slow
def test_contract_tiny_stable_diffusion(name, tiny_sd_dir):
    gen = load(str(tiny_sd_dir), device="cpu")
    unlearner = build_unlearner(name, gen, "a photo of a cat", tiny_overrides(name), seed=0, anchor="a photo")
    history = run_unlearning(unlearner)
    assert len(history) == min(2, unlearner.total_steps)


@pytest.mark.parametrize("name", WORLD_ALGORITHMS)
@pytest.mark.slow
def test_state_dict_round_trip_resumes_bit_for_bit(name):
    def fresh():
        gen = load("world", device="cpu")
        u = build_unlearner(name, gen, "hazard", tiny_overrides(name, steps=4), seed=3)
        u.prepare()
        return u

    assert_resumes_bit_for_bit(fresh, trained_weights)


def trained_weights(unlearner) -> dict:
    """The UNet's and the text encoder's tensors: what any text-to-image algorithm may train."""
    return {**unlearner.generator.unet.state_dict(),
            **{f"text_encoder.{k}": v for k, v in unlearner.generator.text_encoder.state_dict().items()}}


def test_esd_target_is_negative_guidance():
    uncond, cond = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.allclose(esd_target(uncond, cond, 2.0), uncond - 2.0 * (cond - uncond))


def test_esd_loss_matches_the_formula_and_esd_x_touches_only_attn2(world):
    esd = build_unlearner("esd", world, "ember", tiny_overrides("esd", train_method="xattn"), seed=0)
    esd.prepare()
    batch = esd.draw()
    with torch.no_grad():
        e0 = esd.frozen_unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["uncond"]).sample
        ep = esd.frozen_unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["cond"]).sample
        mine = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["cond"]).sample
    expected = ((mine - (e0 - esd.params.negative_guidance * (ep - e0))) ** 2).mean()
    assert torch.allclose(esd.loss(batch), expected, rtol=1e-5)
    before = snapshot(world.unet)
    run_unlearning(esd, prepared=True)
    changed = [k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("attn2" in k for k in changed)


def test_esd_u_leaves_cross_attention_alone(world):
    esd = build_unlearner("esd", world, "hazard", tiny_overrides("esd", train_method="noxattn"), seed=0)
    before = snapshot(world.unet)
    run_unlearning(esd)
    changed = [k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and not any("attn2" in k or k.split(".")[0] in ("time_embedding", "conv_norm_out", "conv_out")
                               for k in changed)


def test_esd_u_selection_leaves_out_cross_attention_time_embedding_and_output_layers(world):
    from igmu.algorithms.common import select_parameters

    names = set(select_parameters(world.unet, "noxattn"))
    every = {n for n, _ in world.unet.named_parameters()}
    left_out = every - names
    # The legacy ESD-u exclusions, in diffusers names: attn2, time_embed -> time_embedding,
    # out.0 / out.2 -> conv_norm_out / conv_out.
    assert left_out == {n for n in every if "attn2" in n or n.split(".")[0] in
                        ("time_embedding", "conv_norm_out", "conv_out")}
    assert any(n.startswith("time_embedding.") for n in left_out)
    assert {"conv_out.weight", "conv_norm_out.weight"} <= left_out
    assert any(".resnets." in n for n in names) and any(".attn1." in n for n in names)
    # The resnets' own time projections are not the time embedding and stay trainable.
    assert any("time_emb_proj" in n for n in names)


@pytest.mark.parametrize("reference", ["unconditional", "anchor"])
def test_esd_reference_is_the_empty_prompt_or_the_prompt_without_the_target(world, reference):
    from igmu.algorithms.common import pick

    esd = build_unlearner("esd", world, "hazard", tiny_overrides("esd", reference=reference), seed=3)
    esd.prepare()
    state = esd.rng.get_state()
    batch = esd.draw()
    esd.rng.set_state(state)
    chosen = pick(esd.task.forget_prompts, esd.params.batch_size, esd.rng)
    expected = ([esd.task.anchor_prompts[i] for i in chosen] if reference == "anchor" else [""] * len(chosen))
    assert torch.equal(batch["uncond"], world.encode_prompt(expected))
    assert all("hazard" not in esd.task.anchor_prompts[i] for i in chosen)


def test_top_fraction_masks_keep_exactly_the_fraction():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 0.5]), "b": torch.tensor([[1.0, 2.0], [1.0, 0.0]])}
    masks = top_fraction_masks(scores, 0.5)
    assert sum(int(m.sum()) for m in masks.values()) == 4
    assert masks["a"][0] == 1 and masks["b"][0, 1] == 1 and masks["a"][3] == 0


def test_salun_mask_fraction_and_masked_gradients_are_zero(world):
    salun = build_unlearner("salun", world, "ball", tiny_overrides("salun", threshold=0.3), seed=0)
    salun.prepare()
    kept = sum(int(m.sum()) for m in salun.masks.values())
    total = sum(m.numel() for m in salun.masks.values())
    assert kept == round(0.3 * total)
    loss = salun.forget_loss(salun.forget.latents[:2], list(salun.task.forget_prompts[:2]),
                             list(salun.task.pseudo_prompts[:2]))
    salun.optimizer.zero_grad()
    loss.backward()
    salun.mask_gradients()
    for name, param in salun.trained.items():
        assert torch.all(param.grad[salun.masks[name] == 0] == 0), name


def test_salun_mask_ranks_the_summed_signed_gradient_not_the_summed_magnitudes(world):
    from igmu.algorithms.common import PromptImages

    salun = build_unlearner("salun", world, "ball", tiny_overrides("salun", batch_size=2, threshold=1 / 3), seed=0)
    w = torch.nn.Parameter(torch.zeros(3))
    salun.trained = {"w": w}
    salun.forget = PromptImages(index=[0, 0, 0, 0], latents=torch.zeros(4, 1))
    # Two batches whose gradients on w[0] and w[2] nearly cancel: |sum| = [0, 2.5, 0.1], while the
    # sum of magnitudes [2, 2.5, 5.9] would rank w[2] first.
    per_batch = iter([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, -2.9])])
    salun.mask_loss = lambda clean, prompts: (w * next(per_batch)).sum()
    masks = salun.saliency_masks()
    assert masks["w"].tolist() == [0.0, 1.0, 0.0]
    assert top_fraction_masks({"w": torch.tensor([2.0, 2.5, 5.9])}, 1 / 3)["w"].tolist() == [0.0, 0.0, 1.0]


def test_salun_mask_is_the_top_fraction_of_the_forget_set_gradient(world):
    from igmu.algorithms.common import noised

    salun = build_unlearner("salun", world, "ball", tiny_overrides("salun", threshold=0.3), seed=0)
    salun.prepare()
    state = salun.rng.get_state()
    masks = salun.saliency_masks()
    salun.rng.set_state(state)
    # The guided forget loss of each forget batch, its gradient computed here and summed with signs.
    w, params = salun.params.mask_guidance, list(salun.trained.values())
    total, magnitudes = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    for start in range(0, len(salun.forget.latents), salun.params.batch_size):
        clean = salun.forget.latents[start:start + salun.params.batch_size]
        prompts = [salun.task.forget_prompts[i] for i in salun.forget.index[start:start + len(clean)]]
        x_t, t, target = noised(world, clean, salun.rng)
        cond = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt(prompts)).sample
        uncond = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt([""] * len(clean))).sample
        grads = torch.autograd.grad(-F.mse_loss(target, (1 + w) * cond - w * uncond), params)
        total = [a + g for a, g in zip(total, grads)]
        magnitudes = [a + g.abs() for a, g in zip(magnitudes, grads)]
    names = list(salun.trained)
    expected = top_fraction_masks({n: g.abs() for n, g in zip(names, total)}, 0.3)
    assert all(torch.equal(masks[n], expected[n]) for n in names)
    summed_magnitudes = top_fraction_masks(dict(zip(names, magnitudes)), 0.3)
    assert not all(torch.equal(masks[n], summed_magnitudes[n]) for n in names)


def test_salun_forget_loss_is_random_labelling(world):
    salun = build_unlearner("salun", world, "ball", tiny_overrides("salun"), seed=0)
    salun.prepare()
    clean = salun.forget.latents[:2]
    prompts, pseudo = list(salun.task.forget_prompts[:2]), list(salun.task.pseudo_prompts[:2])
    state = salun.rng.get_state()
    loss = salun.forget_loss(clean, prompts, pseudo)
    salun.rng.set_state(state)
    noise = torch.randn(clean.shape, generator=salun.rng)
    t = torch.randint(0, 1000, (2,), generator=salun.rng)
    x_t = world.scheduler.add_noise(clean, noise, t)
    with torch.no_grad():
        target = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt(pseudo)).sample
        mine = world.unet(x_t, t, encoder_hidden_states=world.encode_prompt(prompts)).sample
    assert torch.allclose(loss, F.mse_loss(mine, target), rtol=1e-5)


def test_uce_solution_satisfies_its_normal_equations():
    torch.manual_seed(0)
    w, c_e, c_g, c_p = torch.randn(6, 5), torch.randn(3, 5), torch.randn(3, 5), torch.randn(7, 5)
    s_e, s_p, lamb = 0.7, 0.4, 0.2
    new = uce_solve(w, c_e, c_g, c_p, s_e, s_p, lamb).double()
    w, c_e, c_g, c_p = w.double(), c_e.double(), c_g.double(), c_p.double()
    lhs = new @ (lamb * torch.eye(5, dtype=torch.float64) + s_e * c_e.T @ c_e + s_p * c_p.T @ c_p)
    rhs = lamb * w + s_e * (w @ c_g.T) @ c_e + s_p * (w @ c_p.T) @ c_p
    assert torch.allclose(lhs, rhs, atol=1e-4)


def test_uce_edits_only_cross_attention_keys_and_values(world):
    before = snapshot(world.unet)
    uce = build_unlearner("uce", world, "ball", {}, seed=0)
    losses = run_unlearning(uce)
    changed = [k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all(("attn2.to_k" in k or "attn2.to_v" in k) for k in changed)
    assert losses[0]["erase_error_after"] < losses[0]["erase_error_before"]


def test_ca_model_based_loss_matches_the_formula(world):
    ca = build_unlearner("ca", world, "star", tiny_overrides("ca"), seed=0)
    ca.prepare()
    batch = ca.draw()
    with torch.no_grad():
        anchor = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=world.encode_prompt(batch["anchor"])).sample
        target = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=world.encode_prompt(batch["target"])).sample
    assert torch.allclose(ca.losses(batch)["ablation_loss"], F.mse_loss(target, anchor), rtol=1e-5)


@pytest.mark.parametrize("anchor, expected", [("anchor", "something in ember style"), ("pseudo", "a ember ball")])
def test_ca_anchors_to_the_scene_without_the_target_or_to_a_neighbour(world, anchor, expected):
    ca = build_unlearner("ca", world, "star", tiny_overrides("ca", anchor=anchor), seed=0)
    ca.prepare()
    batch = ca.draw()
    pairs = dict(zip(ca.task.forget_prompts, ca.anchor_prompts))
    assert batch["anchor"] == [pairs[prompt] for prompt in batch["target"]]
    assert pairs["a ember star"] == expected


def test_erasediff_restores_the_inner_loop_copy(world):
    ed = build_unlearner("erasediff", world, "ball", tiny_overrides("erasediff", inner_lr=0.05), seed=0)
    ed.prepare()
    before = {n: p.detach().clone() for n, p in ed.trained.items()}
    forget_star = ed.lower_level([0, 1])
    assert forget_star > 0
    assert all(torch.equal(before[n], p) for n, p in ed.trained.items())


def test_ca_uses_adamw_with_decay_and_clips_the_gradient_before_the_step(world):
    ca = build_unlearner("ca", world, "star", tiny_overrides("ca"), seed=0)
    ca.prepare()
    assert isinstance(ca.optimizer, torch.optim.AdamW)
    assert ca.optimizer.param_groups[0]["weight_decay"] == 0.01 and ca.max_grad_norm == 1.0
    seen = {}

    def record_norm_before_step(optimizer, args, kwargs):
        grads = [p.grad.flatten() for p in ca.trained.values() if p.grad is not None]
        seen["norm"] = float(torch.linalg.vector_norm(torch.cat(grads)))

    handle = ca.optimizer.register_step_pre_hook(record_norm_before_step)
    huge = 1e6 * sum(p.pow(2).sum() for p in ca.trained.values())
    ca.update(huge)
    handle.remove()
    assert seen["norm"] <= 1.0 + 1e-4


def test_ca_prior_term_uses_its_own_half_of_the_batch(world):
    ca = build_unlearner("ca", world, "star", tiny_overrides("ca", prior_preservation=True, loss_type="noise"), seed=0)
    ca.prepare()
    batch = ca.draw()
    prior = batch["prior"]
    assert not any(torch.equal(a, b) for a in batch["x_t"] for b in prior["x_t"])
    calls = []
    handle = world.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].clone()))
    parts = ca.losses(batch)
    handle.remove()
    # noise-based: one call for the ablation term, one for the prior term, each on its own half.
    assert len(calls) == 2 and torch.equal(calls[0], batch["x_t"]) and torch.equal(calls[1], prior["x_t"])
    with torch.no_grad():
        expected = world.unet(prior["x_t"], prior["t"], encoder_hidden_states=world.encode_prompt(prior["anchor"])).sample
    assert torch.allclose(parts["prior_loss"], F.mse_loss(expected, prior["diffusion_target"]), rtol=1e-5)


def count_forget_passes(ed) -> list:
    calls = []
    inner = ed.forget_loss

    def counted(chosen):
        calls.append(chosen)
        return inner(chosen)

    ed.forget_loss = counted
    return calls


def test_erasediff_fixed_lambda_skips_the_inner_passes_and_is_one_adam_step(world):
    ed = build_unlearner("erasediff", world, "ball", tiny_overrides("erasediff", lambda_bome=0.7, k_steps=3), seed=0)
    ed.prepare()
    params = list(ed.trained.values())
    start = [p.detach().clone() for p in params]
    rng_state = ed.rng.get_state()
    calls = count_forget_passes(ed)
    ed.step()
    assert len(calls) == 1
    after = [p.detach().clone() for p in params]
    # Replay the same draws from theta and take one Adam step on grad L_DM + lambda grad L_f.
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    ed.rng.set_state(rng_state)
    chosen = pick(tuple(ed.forget.index), ed.params.batch_size, ed.rng)
    forget = ed.forget_loss(chosen)
    retain = ed.retain_loss()
    g_f = torch.autograd.grad(forget, params, retain_graph=True, allow_unused=True)
    g_r = torch.autograd.grad(retain, params, allow_unused=True)
    copies = [s.clone().requires_grad_(True) for s in start]
    for c, gf, gr in zip(copies, g_f, g_r):
        c.grad = (torch.zeros_like(c) if gr is None else gr) + 0.7 * (torch.zeros_like(c) if gf is None else gf)
    torch.optim.Adam(copies, lr=ed.params.lr).step()
    # Adam's first step is about lr * sign(g): where g is as small as Adam's eps, summation order
    # alone moves a coordinate by a small fraction of lr, so the tolerance is a fraction of lr.
    assert all(torch.allclose(a, c.detach(), atol=0.02 * ed.params.lr) for a, c in zip(after, copies))


def test_erasediff_adaptive_lambda_runs_the_inner_steps_and_follows_the_bome_rule(world):
    g_dm, g_q = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])], [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    cosine = 1.0 / (1.0 * 2 ** 0.5 + 1e-8)
    assert EraseDiff.adaptive_lambda(g_dm, g_q, 0.9) == pytest.approx(0.9 - cosine)
    assert EraseDiff.adaptive_lambda(g_dm, g_q, 0.5) == 0.0  # aligned enough: no forget pressure
    assert EraseDiff.adaptive_lambda([torch.tensor([-1.0, 0.0])], [torch.tensor([1.0, 0.0])], 0.1) == pytest.approx(1.1)
    assert EraseDiff.adaptive_lambda(g_dm, [torch.zeros(2), torch.zeros(1)], 0.1) == 0.0
    ed = build_unlearner("erasediff", world, "ball", tiny_overrides("erasediff", lambda_mode="adaptive", k_steps=3),
                         seed=0)
    ed.prepare()
    calls = count_forget_passes(ed)
    seen = []
    rule = EraseDiff.adaptive_lambda
    ed.adaptive_lambda = lambda g_r, g_q, eta: seen.append(rule(g_r, g_q, eta)) or seen[-1]
    out = ed.step()
    assert len(calls) == 3 + 1 and "forget_loss_star" in out
    assert len(seen) == 1 and out["lambda"] == seen[0] >= 0.0


def test_uce_last_token_rows_are_what_the_solve_uses(world):
    uce = build_unlearner("uce", world, "ball", {"token_rows": "last", "preserve_prompts": 10}, seed=0)
    uce.prepare()
    task = uce.task
    guides = task.anchor_prompts if uce.params.guide == "anchor" else task.pseudo_prompts

    def last(prompt):
        emb, length, _ = uce.embed_rows([prompt])[0]
        return emb[max(length - 2, 0)]

    erase = torch.stack([last(q) for q in task.forget_prompts])
    guide = torch.stack([last(q) for q in guides])
    step = max(1, len(task.retain_prompts) // 10)
    preserve = torch.stack([last(q) for q in task.retain_prompts[::step][:10]])
    assert uce.erase.shape[0] == len(task.forget_prompts) and uce.preserve.shape[0] == 10
    assert torch.allclose(uce.erase, erase, atol=1e-6) and torch.allclose(uce.guide, guide, atol=1e-6)
    assert torch.allclose(uce.preserve, preserve, atol=1e-6)
    layers = uce.edited_layers()
    originals = {n: m.weight.detach().clone() for n, m in layers.items()}
    uce.step()
    p = uce.params
    for name, layer in layers.items():
        expected = uce_solve(originals[name].float().cpu(), erase, guide, preserve, p.erase_scale, p.preserve_scale,
                             p.lamb)
        assert torch.allclose(layer.weight.detach().cpu(), expected.to(layer.weight), atol=1e-5)


def test_unknown_algorithm_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean salun"):
        get_algorithm("salunn")


def test_bad_hyperparameters_name_key_type_and_range():
    cls = get_algorithm("esd")
    with pytest.raises(UsageError, match=r"unknown hyperparameter 'etaa'.*valid: lr"):
        make_params(cls, {"etaa": "1"})
    with pytest.raises(UsageError, match=r"esd.lr=5.0 is out of range; valid: float in \[1e-07, 0.1\]"):
        make_params(cls, {"lr": "5"})
    with pytest.raises(UsageError, match="esd.steps='many' is not a valid int"):
        make_params(cls, {"steps": "many"})
    with pytest.raises(UsageError, match="valid: full, xattn, noxattn, xattn-kv, attn"):
        make_params(cls, {"train_method": "attention"})


def test_a_category_an_algorithm_cannot_handle_is_refused(world):
    class ObjectsOnly(Unlearner):
        categories = ("object",)
        generator_kinds = TEXT_TO_IMAGE
        name = "objects-only"

    from igmu.algorithms.task import world_task
    with pytest.raises(UsageError, match="cannot unlearn a 'style' target; valid categories: object"):
        ObjectsOnly(world, world_task("ember"))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_category_defaults_are_valid_hyperparameters(name):
    cls = ALGORITHMS[name]
    for category, defaults in cls.category_defaults.items():
        assert category in cls.categories
        params = make_params(cls, {}, category)
        assert {k: getattr(params, k) for k in defaults} == defaults


def test_category_defaults_sit_under_user_overrides():
    class Tuned(Unlearner):
        """An algorithm tuned per category."""

        category_defaults = {"sensitive": {"lr": 5e-5, "steps": 7}}
        name = "tuned"

    assert make_params(Tuned, {}, "object") == Tuned.Params()
    assert (make_params(Tuned, {}, "sensitive").lr, make_params(Tuned, {}, "sensitive").steps) == (5e-5, 7)
    assert make_params(Tuned, {"lr": "1e-3"}, "sensitive").lr == 1e-3
    assert Tuned.describe()["category_defaults"] == {"sensitive": {"lr": 5e-5, "steps": 7}}


# --- which defaults apply: world-rescaled on the world, official on Stable Diffusion ----------------

# Today's world defaults, written out: the world's figures depend on exactly these.
WORLD_DEFAULTS = {
    ("esd", "object"): {"lr": 1e-4, "steps": 200, "batch_size": 4, "train_method": "xattn", "ddim_steps": 10,
                        "start_guidance": 2.0, "reference": "unconditional"},
    ("esd", "sensitive"): {"lr": 2e-4, "reference": "anchor", "train_method": "xattn"},
    ("ca", "object"): {"lr": 4e-4, "steps": 150, "anchor": "pseudo", "prior_preservation": True,
                       "optimizer": "adamw", "weight_decay": 1e-2, "max_grad_norm": 1.0},
    ("ca", "sensitive"): {"lr": 1e-3, "anchor": "anchor"},
    ("salun", "style"): {"lr": 3e-5, "steps": 150, "alpha": 1.0, "threshold": 0.5},
    ("erasediff", "object"): {"lr": 3e-5, "steps": 150, "lambda_mode": "fixed", "lambda_bome": 1.0},
    ("uce", "object"): {"guide": "pseudo", "preserve_scale": 0.3, "lamb": 0.1, "token_rows": "all"},
    ("rece", "object"): {"guide": "pseudo", "epochs": 3, "regular_scale": 0.1, "token_rows": "all",
                         "concept_prompts": 1000},
    ("concept-prune", "object"): {"skill_ratio": 0.01, "timesteps": 10, "sampler_steps": 10, "guidance": 2.0},
    ("fmn", "object"): {"lr": 1e-5, "steps": 50, "train_method": "full", "include_eos": True},
    ("mace", "object"): {"lr": 1e-3, "lamb": 1.0, "masks": "render", "guide": "pseudo", "importance_sampling": False},
    ("sdd", "object"): {"lr": 1e-3, "steps": 400, "batch_size": 4, "ema_decay": 0.999, "ddim_steps": 10,
                        "train_method": "xattn", "reference": "anchor"},
    ("sdd", "sensitive"): {"lr": 1e-3, "steps": 200, "reference": "anchor"},
}
OFFICIAL_SD = {
    ("esd", "object"): {"lr": 1e-5, "steps": 1000, "batch_size": 1, "negative_guidance": 1.0, "start_guidance": 3.0,
                        "ddim_steps": 50, "train_method": "noxattn", "reference": "unconditional"},
    ("esd", "style"): {"train_method": "xattn"},
    ("esd", "sensitive"): {"train_method": "noxattn", "lr": 1e-5},
    ("esd", "celebrity"): {"train_method": "xattn"},
    ("ca", "object"): {"lr": 8e-6, "steps": 200, "batch_size": 4, "train_method": "xattn-kv", "anchor": "anchor",
                       "prior_preservation": False, "anchor_images": 200, "optimizer": "adamw",
                       "weight_decay": 1e-2, "max_grad_norm": 1.0},
    ("ca", "sensitive"): {"lr": 1.6e-5, "steps": 400, "train_method": "attn"},
    ("salun", "object"): {"lr": 1e-5, "batch_size": 8, "threshold": 0.5, "alpha": 0.1, "mask_guidance": 7.5,
                          "steps": 500, "train_method": "full"},
    ("salun", "sensitive"): {"steps": 100},
    ("erasediff", "object"): {"lr": 1e-5, "k_steps": 2, "lambda_mode": "fixed", "lambda_bome": 0.1, "batch_size": 8,
                              "train_method": "full"},
    ("erasediff", "sensitive"): {"train_method": "noxattn"},
    ("uce", "style"): {"erase_scale": 1.0, "preserve_scale": 1.0, "lamb": 0.5, "guide": "anchor", "token_rows": "last"},
    ("rece", "style"): {"erase_scale": 1.0, "preserve_scale": 0.1, "lamb": 0.1, "regular_scale": 0.1, "epochs": 3,
                        "concept_prompts": 1, "token_rows": "last"},
    ("concept-prune", "object"): {"skill_ratio": 0.01, "sampler_steps": 50, "guidance": 7.5, "select_ratio": 0.0},
    ("fmn", "object"): {"lr": 2e-6, "steps": 35, "batch_size": 1, "train_method": "full", "include_eos": True},
    ("mace", "object"): {"lr": 1e-5, "steps": 50, "batch_size": 1, "rank": 1, "lamb": 1e3, "masks": "attention",
                         "importance_sampling": True, "guide": "anchor"},
    ("sdd", "sensitive"): {"lr": 1e-5, "steps": 1500, "batch_size": 1, "train_method": "xattn", "ema_decay": 0.999,
                           "start_guidance": 1.0, "ddim_steps": 50, "reference": "unconditional",
                           "weight_decay": 1e-4, "max_grad_norm": 1.0},
}


def chosen(params, expected: dict) -> dict:
    return {k: getattr(params, k) for k in expected}


@pytest.mark.parametrize("name, category", sorted(WORLD_DEFAULTS))
def test_world_kinds_keep_the_world_defaults(name, category):
    cls = ALGORITHMS[name]
    expected = WORLD_DEFAULTS[(name, category)]
    for kind in (None, WorldTextToImage):
        assert chosen(make_params(cls, {}, category, kind), expected) == expected
    assert make_params(cls, {}, category, WorldTextToImage) == make_params(cls, {}, category)


@pytest.mark.parametrize("name, category", sorted(OFFICIAL_SD))
def test_stable_diffusion_gets_the_official_defaults(name, category):
    expected = OFFICIAL_SD[(name, category)]
    assert chosen(make_params(ALGORITHMS[name], {}, category, StableDiffusion), expected) == pytest.approx(expected)


@pytest.mark.parametrize("kind", [None, WorldTextToImage, StableDiffusion])
def test_user_overrides_win_on_every_kind(kind):
    for category in ("object", "style", "sensitive"):
        params = make_params(ALGORITHMS["esd"], {"lr": "3e-3", "train_method": "full"}, category, kind)
        assert (params.lr, params.train_method) == (3e-3, "full")
        assert make_params(ALGORITHMS["ca"], {"steps": 7}, category, kind).steps == 7


@pytest.mark.parametrize("name", SD_ALGORITHMS)
def test_every_stable_diffusion_algorithm_has_valid_official_defaults(name):
    """The contract: official values name Params fields and sit within their declared ranges
    (`make_params` coerces and range-checks them), for every category the algorithm handles."""
    cls = ALGORITHMS[name]
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    assert cls.official_defaults, f"{name} declares no official defaults for Stable Diffusion"
    assert set(cls.official_defaults) <= fields
    assert set(cls.official_category_defaults) <= set(cls.categories)
    for category in cls.categories:
        layered = {**cls.official_defaults, **cls.official_category_defaults.get(category, {})}
        assert set(layered) <= fields
        assert chosen(make_params(cls, {}, category, StableDiffusion), layered) == layered


def test_describe_shows_official_defaults_beside_the_category_defaults():
    described = ALGORITHMS["esd"].describe()
    assert described["category_defaults"] == {"sensitive": {"reference": "anchor", "lr": 2e-4}}
    assert described["official_defaults"]["lr"] == 1e-5
    assert described["official_category_defaults"]["style"] == {"train_method": "xattn"}


def test_build_unlearner_and_resolved_params_follow_the_generator_kind(tiny_sd_dir, world):
    from igmu.run import resolved_params

    sd = load(str(tiny_sd_dir), device="cpu")
    assert build_unlearner("esd", sd, "a photo of a cat", {}, anchor="").params.lr == 1e-5
    assert build_unlearner("esd", world, "ball", {}).params.lr == 1e-4
    assert resolved_params("esd", {}, "object", StableDiffusion)["steps"] == 1000
    assert resolved_params("esd", {}, "object")["steps"] == 200


def test_kinds_are_looked_up_by_the_name_trial_settings_record():
    from igmu.models.loader import kind_named

    assert all(kind_named(kind.name) is kind for kind in ALL_KINDS)
    assert kind_named(None) is None
    with pytest.raises(UsageError, match="unknown generator kind"):
        kind_named("nope")


def test_attn_parameter_set_is_every_attention_projection(tiny_sd_dir):
    from igmu.algorithms.common import select_parameters

    sd = load(str(tiny_sd_dir), device="cpu")
    names = set(select_parameters(sd.unet, "attn"))
    assert names and all(any(p in n for p in ("to_q", "to_k", "to_v", "to_out")) for n in names)
    assert any("attn1" in n for n in names) and any("attn2" in n for n in names)


# --- categories: real-model categories use the task's own prompts ----------------------------------

@pytest.mark.parametrize("category", ["sensitive", "object", "style", "celebrity", "prompt"])
def test_stable_diffusion_tasks_use_the_category_prompt_sets(category):
    from igmu.algorithms.task import prompt_task
    from igmu.prompts import shipped_prompt_sets

    validation = shipped_prompt_sets("Brad Pitt", category).split("validation").sets
    task = prompt_task("Brad Pitt", category)
    assert task.forget_prompts == ("Brad Pitt", *(p.text for p in validation["forget"]))
    assert task.anchor_prompts[1:] == tuple(p.text for p in validation["forget_removed"])
    assert task.pseudo_prompts == task.anchor_prompts  # no world-style neighbour swap on real models
    assert task.retain_prompts == tuple(p.text for p in validation["retain"])
    given = prompt_task("Brad Pitt", category, anchor="a man")
    assert given.anchor_prompts[0] == "a man"
    assert all("brad pitt" not in a.lower() for a in given.anchor_prompts)
    assert all(category in ALGORITHMS[name].categories for name in SD_ALGORITHMS)


@pytest.mark.slow
def test_a_celebrity_target_runs_on_stable_diffusion(tiny_sd_dir):
    sd = load(str(tiny_sd_dir), device="cpu")
    esd = build_unlearner("esd", sd, "Brad Pitt", tiny_overrides("esd", steps=1), category="celebrity", anchor="a man")
    assert esd.task.category == "celebrity" and esd.params.train_method == "xattn"
    assert len(run_unlearning(esd)) == 1


# --- wave 2: RECE, ConceptPrune, FMN, MACE -----------------------------------------------------------

def test_rece_derived_embedding_satisfies_its_normal_equations_and_reproduces_the_outputs():
    from igmu.algorithms.rece import derive_embedding

    torch.manual_seed(0)
    edited = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]
    original = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]
    concept, gamma = torch.randn(4, 5, dtype=torch.float64), 0.3
    derived = derive_embedding(edited, original, concept, gamma)
    # (gamma I + sum W'^T W') c'^T = (sum W'^T W) c^T
    lhs = (gamma * torch.eye(5, dtype=torch.float64) + sum(w.T @ w for w in edited)) @ derived.T
    rhs = sum(w.T @ o for w, o in zip(edited, original)) @ concept.T
    assert torch.allclose(lhs, rhs, atol=1e-8)
    # Without the ridge and with one invertible edited layer, c' regenerates the original output exactly.
    square_edited, square_original = torch.randn(5, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    exact = derive_embedding([square_edited], [square_original], concept, 1e-12)
    assert torch.allclose(exact @ square_edited.T, concept @ square_original.T, atol=1e-6)


def test_rece_starts_from_uce_and_edits_only_cross_attention_keys_and_values(world):
    rece = build_unlearner("rece", world, "ball", tiny_overrides("rece", epochs=2), seed=0)
    before = snapshot(world.unet)
    rece.prepare()
    after_uce = snapshot(world.unet)
    uce = build_unlearner("uce", load("world", device="cpu"), "ball", tiny_overrides("uce"), seed=0)
    run_unlearning(uce)
    assert all(torch.equal(after_uce[k], v) for k, v in uce.generator.unet.state_dict().items())
    run_unlearning(rece, prepared=True)
    changed = [k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)]
    moved_by_rece = [k for k, v in world.unet.state_dict().items() if not torch.equal(after_uce[k], v)]
    assert moved_by_rece and set(moved_by_rece) <= set(changed)
    assert all(("attn2.to_k" in k or "attn2.to_v" in k) for k in changed)


def test_concept_prune_skilled_weights_are_the_row_top_of_the_target_score_that_beat_the_base():
    from igmu.algorithms.concept_prune import skilled_mask, union_over_time

    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 2.0]])
    target, base = torch.tensor([1.0, 1.0, 0.1, 4.0]), torch.tensor([2.0, 0.5, 0.1, 1.0])
    # |W| * ||X_target|| = [[1, 2, 0.3, 2], [4, 1, 0.1, 8]]; top half of each row: {1, 3} and {0, 3}
    # (row 0 ties 2 = 2 at columns 1 and 3); beating |W| * ||X_base|| = [[2, 1, 0.3, .5], [8, .5, .1, 2]]
    mask = skilled_mask(weight, target, base, 0.5)
    assert mask.tolist() == [[False, True, False, True], [False, False, False, True]]
    steps = [torch.tensor([True, False, False]), torch.tensor([True, True, False])]
    assert union_over_time(steps, 0.0).tolist() == [True, True, False]
    assert union_over_time(steps, 0.5).tolist() == [True, False, False]


def test_concept_prune_zeroes_exactly_the_selected_weights(world):
    from igmu.algorithms.concept_prune import skilled_mask, union_over_time

    cp = build_unlearner("concept-prune", world, "ball", tiny_overrides("concept-prune", timesteps=2), seed=0)
    before = snapshot(world.unet)
    run_unlearning(cp)
    after = world.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("ff.net.2.weight") for k in changed)
    for name, mask in cp.pruned.items():
        old, new = before[f"{name}.weight"], after[f"{name}.weight"]
        expected = union_over_time([skilled_mask(old, cp.target_norms.norms(t, name), cp.base_norms.norms(t, name),
                                                 cp.params.skill_ratio) for t in range(2)], 0.0)
        assert torch.equal(mask, expected) and mask.any()
        assert torch.all(new[mask] == 0) and torch.equal(new[~mask], old[~mask])


def test_fmn_loss_is_the_norm_of_the_attention_on_the_concept_tokens_computed_directly(world):
    fmn = build_unlearner("fmn", world, "hazard", tiny_overrides("fmn"), seed=0)
    fmn.prepare()
    batch = fmn.draw()
    layers = {n: m for n, m in world.unet.named_modules() if n.endswith("attn2")}
    seen, handles = {}, []

    def keep(name, part):
        def hook(module, args, output):
            seen.setdefault(name, {})[part] = output.detach()
        return hook

    for name, module in layers.items():
        handles += [module.to_q.register_forward_hook(keep(name, "q")), module.to_k.register_forward_hook(keep(name, "k"))]
    emb = world.encode_prompt(batch["prompts"])
    with torch.no_grad():
        plain = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=emb).sample
    for handle in handles:
        handle.remove()
    # The concept's columns: the word "hazard" and the first end-of-text token of each prompt.
    ids = world.tokenize(batch["prompts"]).tolist()
    hazard = world.tokenizer("hazard", add_special_tokens=False).input_ids[0]
    columns = [[i for i, tok in enumerate(row) if tok == hazard] + [row.index(world.tokenizer.eos_token_id)]
               for row in ids]
    assert all(len(c) == 2 for c in columns)
    total = torch.tensor(0.0)
    for name, module in layers.items():
        q, k = seen[name]["q"], seen[name]["k"]
        heads = module.heads
        q = q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
        k = k.view(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) * module.scale, dim=-1)
        for b, cols in enumerate(columns):
            total = total + probs[b][:, :, cols].pow(2).sum()
    assert torch.allclose(fmn.loss(batch).detach(), total.sqrt(), rtol=1e-4)
    # The capturing processor computes the same attention as diffusers' own.
    from igmu.algorithms.hooks import capture_cross_attention

    with torch.no_grad(), capture_cross_attention(world.unet) as maps:
        captured = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=emb).sample
    assert torch.allclose(captured, plain, atol=1e-5) and len(maps.all()) == len(layers)
    assert all(type(m.processor).__name__ != "CapturingAttnProcessor" for m in layers.values())


def test_mace_fused_weights_satisfy_their_normal_equations():
    from igmu.algorithms.mace import fuse_solve

    torch.manual_seed(0)
    w0, c_p = torch.randn(6, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    loras = [w0 + torch.randn(6, 1, dtype=torch.float64) @ torch.randn(1, 5, dtype=torch.float64) for _ in range(2)]
    contexts = [torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    lamb, s_p = 0.4, 0.2
    fused = fuse_solve(w0, loras, contexts, c_p, s_p, lamb)
    # The gradient of lamb ||W - W0||^2 + sum_i ||(W - W_i) C_i^T||^2 + s_p ||(W - W0) C_p^T||^2 vanishes:
    gradient = lamb * (fused - w0) + s_p * (fused - w0) @ c_p.T @ c_p
    gradient = gradient + sum((fused - w_i) @ c_i.T @ c_i for w_i, c_i in zip(loras, contexts))
    assert torch.allclose(gradient, torch.zeros_like(gradient), atol=1e-9)


def test_mace_co_occurring_rows_skip_the_concept_words_and_pair_the_rest():
    from igmu.algorithms.mace import co_occurring_rows

    # BOS a ember ball EOS  vs  BOS a ember box EOS -> everything but position 3, then padding to 8.
    old, new = co_occurring_rows([1, 4, 41, 9, 2], [1, 4, 41, 7, 2], 8)
    assert old == [0, 1, 2, 4, 5, 6, 7] and new == old
    # A deleted phrase: BOS a ember ball with hazard EOS vs BOS a ember ball EOS.
    old, new = co_occurring_rows([1, 4, 41, 9, 5, 53, 2], [1, 4, 41, 9, 2], 8)
    assert old == [0, 1, 2, 3, 6, 7] and new == [0, 1, 2, 3, 4, 5]


def test_mace_loss_is_the_masked_attention_on_the_concept_and_only_keys_and_values_change(world):
    from igmu.algorithms.hooks import capture_cross_attention

    mace = build_unlearner("mace", world, "ball", tiny_overrides("mace"), seed=0)
    before = snapshot(world.unet)
    mace.prepare()
    batch = mace.draw()
    assert 0 < float(batch["masks"].mean()) < 1
    with capture_cross_attention(world.unet) as maps:
        world.unet(batch["x_t"], batch["t"], encoder_hidden_states=world.encode_prompt(batch["prompts"]))
    ball = world.tokenizer("ball", add_special_tokens=False).input_ids[0]
    ids = world.tokenize(batch["prompts"]).tolist()
    expected = torch.tensor(0.0)
    for probs in maps.all():
        side = int(probs.shape[2] ** 0.5)
        inside = torch.nn.functional.interpolate(batch["masks"], size=(side, side), mode="nearest").flatten(1) > 0.5
        layer = torch.tensor(0.0)
        for b, row in enumerate(ids):
            cols = [i for i, tok in enumerate(row) if tok == ball] + [row.index(world.tokenizer.eos_token_id)]
            layer = layer + probs[b][:, inside[b]][:, :, cols].detach().pow(2).sum()
        expected = expected + layer.sqrt()
    assert torch.allclose(mace.loss(batch).detach(), expected, rtol=1e-4)
    run_unlearning(mace, prepared=True)
    changed = [k for k, v in world.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all(("attn2.to_k" in k or "attn2.to_v" in k) for k in changed)
    assert not mace.lora and all(not m._forward_hooks for n, m in world.unet.named_modules() if n.endswith("to_k"))


def test_ffn_input_norms_are_wanda_norms_per_sampler_step(world):
    from igmu.algorithms.hooks import ffn_output_layers, record_ffn_inputs

    name, layer = next(iter(ffn_output_layers(world.unet).items()))
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    emb = world.encode_prompt(["a ember ball", "a ocean box"])
    calls = [torch.randn(2, *world.latent_shape) for _ in range(3)]
    with torch.no_grad(), record_ffn_inputs(world.unet, steps=2) as norms:
        for x in calls:
            world.unet(x, torch.tensor([500, 500]), encoder_hidden_states=emb)
    handle.remove()
    # Calls 0 and 2 are sampler step 0, call 1 is step 1: ||X_j|| of the mean squared token row.
    step0 = torch.cat([seen[0], seen[2]]).reshape(-1, seen[0].shape[-1])
    assert torch.allclose(norms.norms(0, name), step0.pow(2).mean(0).sqrt(), rtol=1e-5)
    assert torch.allclose(norms.norms(1, name), seen[1].reshape(-1, seen[1].shape[-1]).pow(2).mean(0).sqrt(), rtol=1e-5)
    assert not layer._forward_pre_hooks


def test_sdd_distils_the_concept_towards_the_ema_teachers_unconditional_and_the_teacher_follows_by_ema(world):
    import dataclasses as dc

    decay = 0.9
    overrides = tiny_overrides("sdd", ema_decay=decay, steps=3, reference="unconditional")  # the paper's target
    sdd = build_unlearner("sdd", world, "ball", overrides, seed=0)
    before = snapshot(world.unet)
    sdd.prepare()
    sdd.step()
    sdd.step_index += 1
    # After a step the student and the teacher differ, so the target below tells them apart.
    state = sdd.rng.get_state()
    batch = sdd.draw()
    x_t, t = batch["x_t"], batch["t"]
    assert torch.equal(batch["uncond"], world.encode_prompt([""] * sdd.params.batch_size))
    with torch.no_grad():
        student = world.unet(x_t, t, encoder_hidden_states=batch["cond"]).sample
        teacher = sdd.teacher(x_t, t, encoder_hidden_states=batch["uncond"]).sample
        student_uncond = world.unet(x_t, t, encoder_hidden_states=batch["uncond"]).sample
    expected = F.mse_loss(student, teacher)
    assert not torch.equal(teacher, student_uncond)
    # x_t is the teacher's partial sample of the forget prompts, stopped at the drawn DDIM step.
    sdd.rng.set_state(state)
    chosen = pick(sdd.task.forget_prompts, sdd.params.batch_size, sdd.rng)
    stop = int(torch.randint(0, sdd.params.ddim_steps, (1,), generator=sdd.rng))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=sdd.rng))
    teacher_gen = dc.replace(world, unet=sdd.teacher)
    cond = world.encode_prompt([sdd.task.forget_prompts[i] for i in chosen])
    with torch.no_grad():
        sampled = teacher_gen.denoise(teacher_gen.initial_latents(len(chosen), seed), cond, sdd.params.ddim_steps,
                                      sdd.params.start_guidance, stop_step=stop)
    assert torch.equal(x_t, sampled) and torch.equal(t, world.scheduler.timesteps[stop].repeat(len(chosen)))
    # The loss step() minimises is that one, and the teacher then moves by EMA.
    sdd.rng.set_state(state)
    teacher_before = snapshot(sdd.teacher)
    losses = sdd.step()
    sdd.step_index += 1
    assert losses["loss"] == pytest.approx(float(expected), rel=1e-5)
    student_after, teacher_after = world.unet.state_dict(), sdd.teacher.state_dict()
    for name in sdd.trained:
        ema = decay * teacher_before[name] + (1 - decay) * student_after[name]
        assert torch.allclose(teacher_after[name], ema, rtol=1e-6, atol=1e-7), name
        assert not torch.equal(teacher_after[name], teacher_before[name])
    for name, value in teacher_after.items():
        if name not in sdd.trained:
            assert torch.equal(value, before[name]) and torch.equal(student_after[name], before[name])
    changed = [k for k, v in student_after.items() if not torch.equal(before[k], v)]
    assert changed and all("attn2" in k for k in changed)
    assert set(sdd.trained) == {n for n, _ in world.unet.named_parameters() if "attn2" in n}
    # The teacher is part of the state: a fresh unlearner restored from it has the same teacher.
    fresh = build_unlearner("sdd", load("world", device="cpu"), "ball", overrides, seed=0)
    fresh.prepare()
    fresh.load_state_dict(sdd.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.teacher.state_dict().values(), teacher_after.values()))


def test_sdd_anchor_reference_is_the_forget_prompt_without_the_target(world):
    sdd = build_unlearner("sdd", world, "hazard", tiny_overrides("sdd", reference="anchor"), seed=3)
    sdd.prepare()
    state = sdd.rng.get_state()
    batch = sdd.draw()
    sdd.rng.set_state(state)
    chosen = pick(sdd.task.forget_prompts, sdd.params.batch_size, sdd.rng)
    assert torch.equal(batch["uncond"], world.encode_prompt([sdd.task.anchor_prompts[i] for i in chosen]))
    assert all("hazard" not in sdd.task.anchor_prompts[i] for i in chosen)


def test_training_images_from_a_sample_cache_are_the_sampled_ones(tmp_path):
    """A sweep's trials draw their training images from the on-disk image cache: bit-identical to
    sampling them, and a later trial (a new cache on the same folder) samples nothing."""
    from igmu.algorithms.common import training_images
    from igmu.metrics.cache import ImageCache
    from igmu.models.loader import load

    generator = load("base")
    prompts = ["a photo of a ball", "a drawing of a cube"]
    sampled = training_images(generator, prompts, seed=3)
    generator.sample_cache = ImageCache(tmp_path)
    assert torch.equal(training_images(generator, prompts, seed=3), sampled)
    later = ImageCache(tmp_path)
    generator.sample_cache = later
    assert torch.equal(training_images(generator, prompts, seed=3), sampled)
    assert later.misses == 0 and later.generation_seconds == 0.0
