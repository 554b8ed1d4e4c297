"""Receler: erasers after every attn2 trained with ESD's loss against adversarial prompts, regularised
to act only inside the concept's cross-attention mask; and a result no model folder can hold."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from igmu.algorithms.esd import esd_target
from igmu.algorithms.hooks import adapters_disabled, capture_cross_attention, record_adapter_outputs
from igmu.algorithms.receler import Receler, adversarial_start, concept_mask, localisation_loss, with_adversarial
from igmu.cli.main import main
from igmu.errors import UsageError
from igmu.models.loader import load
from igmu.run import apply_changed, build_unlearner, changed_since, module_states, save_run
from igmu.sweep.results import (
    CHANGED_FILE,
    STATE_FILE,
    TABLE_FILE,
    TRIALS_DIR,
    WEIGHTS_DIR,
    WEIGHTS_MANIFEST,
    trial_row,
    update_sweep_state,
    write_table,
)

SMALL = {"steps": 2, "batch_size": 2, "ddim_steps": 4, "advrs_iters": 2, "rank": 4}


@pytest.fixture
def world():
    return load("world", device="cpu")


def prepared(world, target="ball", **overrides) -> Receler:
    unlearner = build_unlearner("receler", world, target, {**SMALL, **overrides}, seed=0)
    unlearner.prepare()
    return unlearner


def randomise_erasers(unlearner: Receler, scale: float = 0.1) -> None:
    """Give the zero-initialised up-projections weights, so the erasers act."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for eraser in unlearner.erasers.values():
            eraser.up.weight.copy_(torch.randn(eraser.up.weight.shape, generator=generator) * scale)


def unet_inputs(world, prompts=("a ember ball", "a forest ball")):
    x = torch.randn(len(prompts), *world.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([400] * len(prompts))
    return x, t, world.encode_prompt(list(prompts))


def test_fresh_erasers_leave_the_outputs_bit_identical(world):
    x, t, cond = unet_inputs(world)
    with torch.no_grad():
        before = world.unet(x, t, encoder_hidden_states=cond).sample
        unlearner = prepared(world)
        after = world.unet(x, t, encoder_hidden_states=cond).sample
    assert len(unlearner.erasers) == 7  # every attn2 of the world's UNet
    assert torch.equal(before, after)
    randomise_erasers(unlearner)
    with torch.no_grad():
        acting = world.unet(x, t, encoder_hidden_states=cond).sample
        with adapters_disabled(unlearner.erasers):
            disabled = world.unet(x, t, encoder_hidden_states=cond).sample
    assert not torch.allclose(acting, before) and torch.equal(disabled, before)


def test_eraser_is_a_bottleneck_added_to_the_cross_attention_output(world):
    unlearner = prepared(world)
    randomise_erasers(unlearner)
    name, eraser = next(iter(unlearner.erasers.items()))
    attn2 = dict(world.unet.named_modules())[name]
    hidden = torch.randn(2, 64, attn2.to_q.in_features)
    context = torch.randn(2, 24, 64)
    with torch.no_grad():
        with adapters_disabled(unlearner.erasers):
            plain = attn2(hidden, encoder_hidden_states=context)
        erased = attn2(hidden, encoder_hidden_states=context)
    direct = plain + F.linear(F.gelu(F.linear(plain, eraser.down.weight, eraser.down.bias)),
                              eraser.up.weight, eraser.up.bias)
    assert torch.allclose(erased, direct, atol=1e-6)
    assert eraser.down.out_features == 4  # the rank


def direct_mask(maps, positions, threshold):
    """get_mask written out: per layer at the finest side <= 16, the mean over heads of the mean over
    the concept tokens; the mean over those layers; min-max per image; >= threshold."""
    side = max(s for s in {int(m.shape[2] ** 0.5) for m in maps} if s <= 16)
    per_layer = []
    for probs in maps:
        if int(probs.shape[2] ** 0.5) != side:
            continue
        per_layer.append(torch.stack([probs[b][:, :, positions[b]].mean(-1).mean(0) for b in range(len(probs))]))
    average = torch.stack(per_layer).mean(0)
    masks = []
    for row in average:
        normalised = (row - row.min()) / (row.max() - row.min())
        masks.append(torch.where(normalised >= threshold, 1.0, 0.0).view(side, side))
    return torch.stack(masks)[:, None]


def direct_regularisation(outputs, mask):
    """L_reg written out with loops: per eraser, sum over images and pixels of the channel mean of
    the squared output outside the mask, over the count of pixels outside; mean over erasers."""
    per_eraser = []
    for out in outputs:
        side = int(out.shape[1] ** 0.5)
        outside = 1 - F.interpolate(mask, size=(side, side), mode="nearest")
        total, count = 0.0, 0.0
        for b in range(out.shape[0]):
            for pixel in range(out.shape[1]):
                weight = float(outside[b, 0].flatten()[pixel])
                total += float((out[b, pixel] * weight).pow(2).mean())
                count += weight
        per_eraser.append(total / (count + 1e-9))
    return sum(per_eraser) / len(per_eraser)


def test_regularisation_is_the_formula_on_the_captured_maps_and_the_threshold(world):
    unlearner = prepared(world, mask_thres=0.3)
    randomise_erasers(unlearner)
    batch = unlearner.draw()
    frozen = unlearner.frozen_scores(batch)
    # The maps again, captured directly from the original model (erasers off) on the same inputs.
    positions = torch.zeros(2, 24, dtype=torch.bool)
    for b, prompt in enumerate(batch["prompts"]):
        ids = world.tokenizer(prompt, padding="max_length", max_length=24).input_ids
        positions[b, ids.index(world.tokenizer("ball", add_special_tokens=False).input_ids[0])] = True
    with torch.no_grad(), adapters_disabled(unlearner.erasers), capture_cross_attention(world.unet) as maps:
        world.unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["cond"])
    expected_mask = direct_mask(maps.all(), positions, 0.3)
    assert expected_mask.shape == (2, 1, 8, 8) and 0 < expected_mask.mean() < 1
    assert torch.equal(frozen["mask"], expected_mask)
    assert torch.equal(concept_mask(maps.all(), positions, 0.3), expected_mask)
    with torch.no_grad(), record_adapter_outputs(unlearner.erasers) as outputs:
        unlearner.erased_score(batch)
    recorded = [out for outs in outputs.values() for out in outs]
    assert len(recorded) == 7
    got = float(localisation_loss(recorded, frozen["mask"]))
    assert got > 0 and got == pytest.approx(direct_regularisation(recorded, frozen["mask"]), rel=1e-5)
    # Inside the mask the eraser may act freely: a mask of everything costs nothing.
    assert float(localisation_loss(recorded, torch.ones_like(frozen["mask"]))) == 0.0


def test_a_prompt_without_the_concept_gets_no_localisation():
    maps = [torch.rand(2, 4, 64, 6).softmax(-1)]
    positions = torch.tensor([[False, True, False, False, False, False], [False] * 6])
    mask = concept_mask(maps, positions, 0.5)
    assert mask[1].eq(1).all() and not mask[0].eq(1).all()


@pytest.mark.parametrize("erase_on", ["adversarial", "both"])
def test_the_loss_is_esd_on_the_adversarial_prompt_plus_the_weighted_regularisation(world, erase_on):
    original = load("world", device="cpu")
    unlearner = prepared(world, advrs_iters=1, reg_weight=0.7, erase_on=erase_on)
    randomise_erasers(unlearner)
    batch = unlearner.draw()
    frozen = unlearner.frozen_scores(batch)
    with torch.no_grad():
        # e_0 and e_p come from the original model: the erasers are off for them.
        e_0 = original.unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["uncond"]).sample
        e_p = original.unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["cond"]).sample
        assert torch.allclose(frozen["e_0"], e_0, atol=1e-6) and torch.allclose(frozen["e_p"], e_p, atol=1e-6)
        cond = batch["cond"].clone()
        for b, start in enumerate(batch["starts"]):
            cond[b, start:start + 4] = unlearner.adversarial
        with record_adapter_outputs(unlearner.erasers) as outputs:
            e_n = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=cond).sample
            # with `both`, the plain prompt's score is trained towards the same target
            e_c = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=batch["cond"]).sample
        recorded = [o for outs in outputs.values() for o in outs]
        # each eraser's outputs on the adversarial prompt, then (with both) on the plain one
        recorded = recorded if erase_on == "both" else recorded[::2]
        regularisation = localisation_loss(recorded, frozen["mask"])
    erase = F.mse_loss(e_n, e_0 - 1.0 * (e_p - e_0))
    if erase_on == "both":
        erase = erase + F.mse_loss(e_c, e_0 - 1.0 * (e_p - e_0))
    assert torch.equal(esd_target(e_0, e_p, 1.0), e_0 - (e_p - e_0))
    unlearner.draw = lambda: batch
    unlearner.frozen_scores = lambda _: frozen
    losses = unlearner.step()
    assert losses["erase"] == pytest.approx(float(erase), rel=1e-5)
    assert losses["regularisation"] == pytest.approx(float(regularisation), rel=1e-5)
    assert losses["loss"] == pytest.approx(float(erase + 0.7 * regularisation), rel=1e-5)


def test_adversarial_tokens_follow_the_prompt_and_fit_the_context(world):
    tokenizer = world.tokenizer
    ids = tokenizer("a ember ball", padding="max_length", max_length=24).input_ids
    start = adversarial_start(tokenizer, "a ember ball")
    assert ids[start] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[:start]
    cond = torch.zeros(2, 6, 3)
    adversarial = torch.arange(12.0).view(4, 3) + 1
    out = with_adversarial(cond, adversarial, [1, 4])
    assert torch.equal(out[0, 1:5], adversarial) and out[0, [0, 5]].eq(0).all()
    assert torch.equal(out[1, 4:6], adversarial[:2]) and out[1, :4].eq(0).all()  # only two fit


def test_only_the_erasers_change(world):
    text_before = {k: v.clone() for k, v in world.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    unlearner = prepared(world)
    for _ in range(2):
        unlearner.step()
    after = world.unet.state_dict()
    added = [k for k in after if k not in unet_before]
    assert added and all(".attn2.adapter." in k for k in added)
    assert sorted(unlearner.trained) == sorted(added)
    assert all(torch.equal(unet_before[k], after[k]) for k in unet_before)
    assert all(torch.equal(text_before[k], v) for k, v in world.text_encoder.state_dict().items())
    assert any(k.endswith("up.weight") and after[k].abs().sum() > 0 for k in added)
    # A run's changed tensors are the erasers', all of them new.
    assert set(changed_since(module_states(load("world", device="cpu"), ["unet", "text_encoder"]), unlearner)) \
        == {f"unet.{k}" for k in added}


def test_the_adversarial_inner_loop_lowers_its_attack_loss(world):
    unlearner = prepared(world, batch_size=2)
    randomise_erasers(unlearner, scale=0.3)
    batch = unlearner.draw()
    frozen = unlearner.frozen_scores(batch)
    losses = [unlearner.attack(unlearner.erased_score(batch), frozen["e_p"]) for _ in range(15)]
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_adversarial_embeddings_move_only_by_their_own_steps(world):
    unlearner = prepared(world, advrs_iters=1)
    randomise_erasers(unlearner)
    batch = unlearner.draw()
    frozen = unlearner.frozen_scores(batch)
    expected = unlearner.adversarial.detach().clone()
    # One attack step, by hand on a copy of the optimiser's state: the eraser loss must add nothing.
    copy = torch.nn.Parameter(expected.clone())
    optimizer = torch.optim.Adam([copy], lr=0.1, weight_decay=0.1)
    cond = with_adversarial(batch["cond"], copy, batch["starts"])
    e_n = world.unet(batch["x_t"], batch["t"], encoder_hidden_states=cond).sample
    copy.grad, = torch.autograd.grad(F.mse_loss(e_n, frozen["e_p"]), [copy])
    optimizer.step()
    unlearner.draw = lambda: batch
    unlearner.frozen_scores = lambda _: frozen
    unlearner.step()
    assert torch.allclose(unlearner.adversarial.detach(), copy.detach(), atol=1e-6)
    assert not torch.equal(unlearner.adversarial.detach(), expected) and unlearner.adversarial.grad is None


def test_sampling_in_memory_uses_the_erasers(world):
    unlearner = prepared(world)
    randomise_erasers(unlearner, scale=0.3)
    erased = world.sample(["a ember ball"], seed=0)
    with adapters_disabled(unlearner.erasers):
        plain = world.sample(["a ember ball"], seed=0)
    assert not torch.allclose(erased, plain, atol=1e-3)
    assert torch.equal(plain, load("world", device="cpu").sample(["a ember ball"], seed=0))


def test_state_dict_carries_the_erasers_their_optimiser_and_the_adversarial_prompt(world):
    unlearner = prepared(world)
    unlearner.step()
    unlearner.step_index += 1
    state = unlearner.state_dict()
    assert any(".attn2.adapter.up.weight" in k for k in state["modules"]["unet"])
    assert len(state["optimizer"]["state"]) == len(unlearner.trained)
    assert state["extra"]["adversarial_optimizer"]["state"]
    fresh = prepared(load("world", device="cpu"))
    fresh.load_state_dict(state)
    for name, param in unlearner.trained.items():
        assert torch.equal(param, fresh.trained[name]), name
    assert torch.equal(unlearner.adversarial, fresh.adversarial)
    assert fresh.adversarial_optimizer.param_groups[0]["params"][0] is fresh.adversarial


# --- saving and exporting: never a folder that samples un-erased ------------------------------------

def test_saving_a_model_with_erasers_is_refused(world, tmp_path):
    prepared(world)
    with pytest.raises(UsageError, match="adapter.*cannot hold") as refused:
        world.save(tmp_path / "model", stock_weights=Receler.stock_weights)
    assert len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "model").exists()


def test_a_run_saves_everything_but_the_model_folder(world, tmp_path):
    unlearner = prepared(world)
    unlearner.step()
    changed = changed_since(module_states(load("world", device="cpu"), ["unet", "text_encoder"]), unlearner)
    save_run(tmp_path / "run", unlearner, {"aspects": {}}, changed)
    assert not (tmp_path / "run" / "model").exists()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_not_saved"] == Receler.unsaved_reason
    assert (tmp_path / "run" / "changed.safetensors").is_file() and (tmp_path / "run" / "scorecard.json").is_file()


def test_changed_tensors_applied_to_a_fresh_model_give_back_the_erased_model(world):
    """How a sweep re-scores a kept trial on the test split: the original model plus its changed tensors."""
    unlearner = prepared(world)
    for _ in range(2):
        unlearner.step()
    randomise_erasers(unlearner, scale=0.3)  # two steps move the erasers too little to see in images
    changed = changed_since(module_states(load("world", device="cpu"), ["unet", "text_encoder"]), unlearner)
    fresh = load("world", device="cpu")
    apply_changed(fresh, changed)
    erased = world.sample(["a ember ball"], seed=0)
    assert torch.equal(fresh.sample(["a ember ball"], seed=0), erased)
    assert not torch.allclose(load("world", device="cpu").sample(["a ember ball"], seed=0), erased, atol=1e-3)


def test_export_of_a_receler_trial_is_refused_in_one_line(world, tmp_path, capsys):
    root = tmp_path / "results"
    row = trial_row("t1", "receler", {"lr": 1e-3}, "finished", {"forgetting": 0.9, "preservation": 0.8, "step": 2},
                    None)
    write_table([row], root / "fake" / TABLE_FILE)
    update_sweep_state(root / "fake" / STATE_FILE, objectives={"forgetting": "max", "preservation": "max"})
    folder = root / "fake" / TRIALS_DIR / "t1" / WEIGHTS_DIR
    folder.mkdir(parents=True)
    from safetensors.torch import save_file

    eraser = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.adapter.up.weight": torch.ones(64, 4)}
    save_file(eraser, str(folder / CHANGED_FILE))
    (folder / WEIGHTS_MANIFEST).write_text(json.dumps(
        {"algorithm": "receler", "model": "world", "target": "ball", "seed": 0, "params": {},
         "stock_weights": False}))
    code = main(["export", "fake", "--trial", "t1", "--out", str(tmp_path / "out"), "--storage", str(root)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot export a receler trial" in err and "un-erased" in err
    assert not (tmp_path / "out").exists()
