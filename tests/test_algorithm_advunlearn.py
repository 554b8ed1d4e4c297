"""AdvUnlearn: the attack (inner problem), the regularised ESD loss (outer problem), the warm-up, the
parameters it trains, the shared prefix mechanics and resuming."""

import copy

import pytest
import torch
from resume import assert_resumes_bit_for_bit

from igmu.algorithms.advunlearn import AdvUnlearn
from igmu.algorithms.common import select_text_encoder_parameters
from igmu.algorithms.hooks import prefix_embeddings, prefixed_ids, random_token_embeddings
from igmu.models.loader import load
from igmu.run import build_unlearner

# Small and fast: two forget and two retain prompts, a 4-step sampler.
TINY = {"batch_size": 2, "retain_batch": 2, "ddim_steps": 4, "steps": 2, "warmup_steps": 1, "attack_steps": 2}


@pytest.fixture
def world():
    return load("world", device="cpu")


def snapshot(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def advunlearn(world, target="ball", **overrides) -> AdvUnlearn:
    unlearner = build_unlearner("advunlearn", world, target, {**TINY, **overrides}, seed=0)
    unlearner.prepare()
    return unlearner


# --- the shared prefix mechanics ---------------------------------------------------------------------

def test_prefixed_ids_put_k_slots_after_bos_and_shift_the_prompt(world):
    ids = world.tokenize(["a ember ball"])
    shifted = prefixed_ids(world, ["a ember ball"], 2)
    placeholder = world.tokenizer.unk_token_id or 0
    assert shifted.shape == ids.shape
    assert shifted[0, 0] == ids[0, 0] and shifted[0, 1:3].tolist() == [placeholder, placeholder]
    assert torch.equal(shifted[0, 3:], ids[0, 1:-2])


def test_prefix_embeddings_replace_the_token_embeddings_after_bos_only_while_active(world):
    ids = prefixed_ids(world, ["a ember ball", "a ocean box"], 1)
    table = world.text_encoder.get_input_embeddings()
    plain = table(ids)
    prefix = torch.randn(1, 1, plain.shape[-1])
    with prefix_embeddings(world.text_encoder, prefix):
        spliced = table(ids)
    expected = torch.cat([plain[:, :1], prefix.expand(2, -1, -1), plain[:, 2:]], dim=1)
    assert torch.equal(spliced, expected)
    # One [1, k, D] prefix is every row's: the same as giving each row its own copy.
    with prefix_embeddings(world.text_encoder, prefix.expand(2, -1, -1).clone()):
        assert torch.equal(table(ids), spliced)
    assert torch.equal(table(ids), plain)  # the hook is gone


def test_random_token_embeddings_are_rows_of_the_vocabulary(world):
    rows = random_token_embeddings(world.text_encoder, (2, 3), torch.Generator().manual_seed(0))
    table = world.text_encoder.get_input_embeddings().weight
    assert rows.shape == (2, 3, table.shape[1])
    assert all(any(torch.equal(row, vocab) for vocab in table) for row in rows.reshape(-1, table.shape[1]))


def test_the_embedding_of_an_adversarial_prompt_is_the_text_encoder_on_the_prefix_token(world):
    """Independent route: write the prefix into the embedding table as the placeholder's own row;
    the text encoder then sees the same inputs as through the splice."""
    adv = advunlearn(world)
    prompts = ["a ember ball", "a forest ball"]
    prefix = torch.randn(1, 1, world.text_encoder.config.hidden_size)
    encoder = copy.deepcopy(world.text_encoder)
    with torch.no_grad():
        encoder.get_input_embeddings().weight[world.tokenizer.unk_token_id or 0] = prefix[0, 0]
        expected = encoder(prefixed_ids(world, prompts, 1))[0]
        assert torch.allclose(adv.embed(prompts, prefix), expected, atol=1e-6)
        assert not torch.allclose(adv.embed(prompts, None), expected, atol=1e-3)


def test_text_encoder_full_is_the_transformer_layers_and_the_final_norm(world):
    chosen = set(select_text_encoder_parameters(world.text_encoder))
    every = {name for name, _ in world.text_encoder.named_parameters()}
    assert chosen and chosen == {n for n in every if ".layers." in n or "final_layer_norm" in n}
    assert not any("embeddings" in n for n in chosen)
    assert all(p.requires_grad == (n in chosen) for n, p in world.text_encoder.named_parameters())


# --- the inner problem: the attack ----------------------------------------------------------------

def test_the_attack_lowers_its_loss_over_the_pgd_steps_and_touches_only_the_prefix(world):
    adv = advunlearn(world, attack_steps=8, attack_lr=0.05)
    chosen = adv.choose_forget()
    batch = adv.draw(chosen, retain_batch=0)
    start = random_token_embeddings(world.text_encoder, (1, 1), torch.Generator().manual_seed(1))
    adv.prefix = start.clone()  # attack_init latest starts from it
    weights = {"unet": snapshot(world.unet), "text_encoder": snapshot(world.text_encoder)}
    losses = adv.attack(chosen, draw_batch=lambda: batch)
    with torch.no_grad():
        before, after = float(adv.attack_loss(start, batch)), float(adv.attack_loss(adv.prefix, batch))
    # The loss the attack minimises, l_atk = ||eps_theta(x_t, prefix + c) - eps*(x_t, c)||^2, here
    # computed directly for the final prefix.
    with torch.no_grad():
        frozen_cond = adv.frozen_unet(batch.x_t, batch.t, encoder_hidden_states=batch.cond).sample
        with prefix_embeddings(world.text_encoder, adv.prefix):
            embedded = world.text_encoder(prefixed_ids(world, batch.forget_prompts, 1))[0]
        attacked = world.unet(batch.x_t, batch.t, encoder_hidden_states=embedded).sample
    assert after == pytest.approx(float(((attacked - frozen_cond) ** 2).mean()), rel=1e-5)
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert after < before and losses[-1] < losses[0]
    assert not torch.equal(adv.prefix, start)
    assert not changed(weights["unet"], world.unet) and not changed(weights["text_encoder"], world.text_encoder)
    assert all(p.grad is None for p in adv.trained.values())


def test_random_init_restarts_from_vocabulary_tokens_and_latest_continues(world):
    adv = advunlearn(world, attack_init="random")
    adv.prefix = torch.full((1, 1, world.text_encoder.config.hidden_size), 7.0)
    assert not torch.equal(adv.initial_prefix(), adv.prefix)
    adv.params.attack_init = "latest"
    assert torch.equal(adv.initial_prefix(), adv.prefix)


def test_fast_at_steps_on_the_gradient_sign(world):
    """Adam's first step on a gradient g moves each entry by lr * |g| / (|g| + eps): on sign(g) (fast
    AT) exactly lr / (1 + eps), on the world's small raw gradients (PGD) measurably less."""
    adv = advunlearn(world, attack_steps=1, attack_lr=0.1, attack_method="fast_at")
    chosen = adv.choose_forget()
    batch = adv.draw(chosen, retain_batch=0)
    start = random_token_embeddings(world.text_encoder, (1, 1), torch.Generator().manual_seed(2))
    adv.prefix = start.clone()
    adv.attack(chosen, draw_batch=lambda: batch)
    step = (start - adv.prefix).abs()
    assert torch.allclose(step, torch.full_like(step, 0.1 / (1 + 1e-8)), rtol=0, atol=1e-7)
    adv.params.attack_method, adv.prefix = "pgd", start.clone()
    adv.attack(chosen, draw_batch=lambda: batch)
    assert not torch.allclose((start - adv.prefix).abs(), step, rtol=0, atol=1e-7)


# --- the outer problem ----------------------------------------------------------------------------

def test_outer_loss_is_the_esd_loss_on_the_adversarial_prompt_plus_weighted_retain_mse(world):
    adv = advunlearn(world, retain_loss_w=0.3, negative_guidance=1.5, reference="unconditional")
    chosen = adv.choose_forget()
    batch = adv.draw(chosen, retain_batch=2)
    prefix = random_token_embeddings(world.text_encoder, (1, 1), torch.Generator().manual_seed(3))
    forget_loss, retain_loss = adv.losses(batch, prefix)
    with torch.no_grad():
        frozen = adv.frozen_unet
        e_0 = frozen(batch.x_t, batch.t, encoder_hidden_states=batch.uncond).sample
        e_p = frozen(batch.x_t, batch.t, encoder_hidden_states=batch.cond).sample
        e_n = world.unet(batch.x_t, batch.t, encoder_hidden_states=adv.embed(batch.forget_prompts, prefix)).sample
        r_p = frozen(batch.retain_x_t, batch.retain_t, encoder_hidden_states=batch.retain_cond).sample
        r_n = world.unet(batch.retain_x_t, batch.retain_t,
                         encoder_hidden_states=world.encode_prompt(batch.retain_prompts)).sample
    esd = ((e_n - (e_0 - 1.5 * (e_p - e_0))) ** 2).mean()
    retain = ((r_n - r_p) ** 2).mean()
    assert torch.allclose(forget_loss, esd, rtol=1e-5) and torch.allclose(retain_loss, retain, rtol=1e-5)
    # The frozen model's embeddings: c and c_r as the original text encoder gives them, at one t.
    assert torch.equal(batch.cond, adv.frozen_text_encoder(world.tokenize(batch.forget_prompts))[0])
    assert torch.equal(batch.retain_cond, adv.frozen_text_encoder(world.tokenize(batch.retain_prompts))[0])
    assert torch.equal(batch.uncond, adv.frozen_text_encoder(world.tokenize([""] * 2))[0])
    assert len(set(batch.t.tolist() + batch.retain_t.tolist())) == 1
    assert all(p in adv.task.retain_prompts for p in batch.retain_prompts)
    # The world's default reference: the forget prompts without the target, through the frozen encoder.
    adv.params.reference = "anchor"
    anchored = adv.draw(chosen, retain_batch=0)
    anchors = [adv.task.anchor_prompts[i] for i in chosen]
    assert torch.equal(anchored.uncond, adv.frozen_text_encoder(world.tokenize(anchors))[0])
    adv.params.reference = "unconditional"
    # step() adds them with weight gamma: recompute its terms from the same random state and weights.
    state, weights = adv.rng.get_state(), snapshot(world.text_encoder)
    adv.params.warmup_steps = 5  # no attack: step 0 trains on the plain prompt
    reported = adv.step()
    adv.rng.set_state(state)
    world.text_encoder.load_state_dict(weights)
    with torch.no_grad():
        forget_again, retain_again = adv.losses(adv.draw(adv.choose_forget(), 2), None)
    assert reported["esd_loss"] == pytest.approx(float(forget_again), rel=1e-5)
    assert reported["retain_loss"] == pytest.approx(float(retain_again), rel=1e-5)
    assert reported["loss"] == pytest.approx(float(forget_again + 0.3 * retain_again), rel=1e-5)


def test_only_the_text_encoder_layers_change_by_default_and_the_unet_is_untouched(world):
    unet, text_encoder = snapshot(world.unet), snapshot(world.text_encoder)
    adv = advunlearn(world, steps=2, warmup_steps=1, lr=1e-2)
    for _ in range(2):
        adv.step()
        adv.step_index += 1
    assert adv.prefix is not None  # step 1 ran an attack, and trained on its prompt
    assert not changed(unet, world.unet)
    moved = changed(text_encoder, world.text_encoder)
    assert moved and all(".layers." in k or "final_layer_norm" in k for k in moved)


def test_a_unet_train_method_leaves_the_text_encoder_alone(world):
    unet, text_encoder = snapshot(world.unet), snapshot(world.text_encoder)
    adv = advunlearn(world, train_method="xattn", steps=2, warmup_steps=1)
    for _ in range(2):
        adv.step()
        adv.step_index += 1
    moved = changed(unet, world.unet)
    assert moved and all("attn2" in k for k in moved)
    assert not changed(text_encoder, world.text_encoder)


@pytest.mark.parametrize("warmup, every, attacked", [(2, 1, [2, 3, 4]), (2, 2, [2, 4]), (0, 1, [0, 1, 2, 3, 4])])
def test_warm_up_steps_run_no_attack_and_train_on_the_plain_prompt(world, warmup, every, attacked, monkeypatch):
    adv = advunlearn(world, steps=5, warmup_steps=warmup, attack_every=every, attack_steps=1, ddim_steps=2)
    calls, prefixes = [], []
    real_attack, real_losses = adv.attack, adv.losses
    monkeypatch.setattr(adv, "attack", lambda chosen: calls.append(adv.step_index) or real_attack(chosen))
    monkeypatch.setattr(adv, "losses", lambda batch, prefix: prefixes.append(prefix) or real_losses(batch, prefix))
    for _ in range(5):
        losses = adv.step()
        assert (losses["attack_loss_first"] != 0.0) == (adv.step_index in attacked)
        adv.step_index += 1
    assert calls == attacked
    assert [p is None for p in prefixes] == [i < warmup for i in range(5)]


# --- checkpoints and export -------------------------------------------------------------------------

@pytest.mark.slow
def test_resumes_bit_for_bit_with_the_text_encoder_and_the_latest_prefix():
    def fresh():
        return advunlearn(load("world", device="cpu"), target="hazard", steps=4, warmup_steps=1)

    def weights(u):
        return {**{f"text_encoder.{k}": v for k, v in u.generator.text_encoder.state_dict().items()},
                "prefix": u.prefix}

    assert_resumes_bit_for_bit(fresh, weights)


def test_the_unlearned_text_encoder_saves_with_the_stock_pipeline(world, tmp_path):
    adv = advunlearn(world, steps=1, warmup_steps=0, lr=1e-2)
    adv.step()
    assert AdvUnlearn.stock_weights
    world.save(tmp_path / "model", stock_weights=AdvUnlearn.stock_weights)
    reloaded = load(str(tmp_path / "model"), device="cpu")
    saved, trained = reloaded.text_encoder.state_dict(), world.text_encoder.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in trained.items())
    assert not all(torch.equal(saved[k], v) for k, v in load("world", device="cpu").text_encoder.state_dict().items())
    prompts = ["a ember ball"]
    assert torch.allclose(reloaded.encode_prompt(prompts), world.encode_prompt(prompts))


def test_official_defaults_are_the_official_scripts():
    official = AdvUnlearn.official_defaults
    assert official["train_method"] == "text_encoder_full" and official["lr"] == 1e-5
    assert (official["steps"], official["warmup_steps"], official["attack_steps"]) == (1000, 200, 30)
    assert official["attack_lr"] == 1e-3 and official["retain_batch"] == 5 and official["retain_loss_w"] == 1.0
