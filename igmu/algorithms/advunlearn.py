"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion
Models (Zhang et al., NeurIPS 2024)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from igmu.algorithms.base import (
    CommonParams,
    Unlearner,
    hyperparameter,
    register_algorithm,
)
from igmu.algorithms.common import (
    frozen_copy,
    make_optimizer,
    partial_sample,
    pick,
    reference_prompts,
    select_text_encoder_parameters,
)
from igmu.algorithms.esd import esd_target
from igmu.algorithms.hooks import prefix_embeddings, prefixed_ids, random_token_embeddings
from igmu.models.text_to_image import TEXT_TO_IMAGE

# `text_encoder_full` trains the CLIP text encoder (the paper's choice); the others are ESD's UNet
# parameter sets (igmu.algorithms.common.PARAMETER_SETS), with the text encoder frozen.
TrainMethod = Literal["text_encoder_full", "xattn", "noxattn", "full", "xattn-kv", "attn"]
TEXT_ENCODER = "text_encoder_full"


@dataclass
class AdvUnlearnParams(CommonParams):
    """The defaults below are rescaled for the world model (2.7M-parameter UNet, a 2-layer 64-wide
    CLIP text encoder, 10-step sampler at guidance 2) so that a full-budget run stays within about
    five minutes on two quiet CPU cores: lr 1e-3 on the text encoder, 150 steps of 4 forget prompts
    and 8 retain prompts, 50 warm-up steps, then an attack of 3 PGD steps before every step
    (official: 30), 10 DDIM steps, start guidance 2 (the world's sampling guidance; official 3). The
    attack's 1e-2 rate is ten times the official 1e-3, so that 3 steps move the prefix about as far
    as 30 would. `reference` is `anchor` on the world (igmu's variant, as ESD's for the hazard badge):
    with the paper's empty prompt the text encoder learnt to drop the whole scene, not the target.

    Tried on the world, small budget, seed 0 (forgetting / preservation; the original's preservation
    is ball 0.900, hazard 0.917), 150 steps, warm-up 50, 3 PGD steps, retain_loss_w 1:
    - ball, unconditional reference, lr 1e-3: 0.292 / 0.859. The ball was gone from 96% of the
      forget images, but the rest of the prompt (the style) was missing from 67%.
    - ball, unconditional, lr 1e-2: 0.000 / 0.302; lr 3e-2: 0.042 / 0.306 (the scene is lost: the
      rest of the prompt was missing from 96% and 92% of the forget images).
    - hazard, unconditional, lr 1e-3: 0.000 / 0.804 (the badge stayed on half the images, the rest
      of the prompt was missing from the other half).
    - ball, anchor, lr 1e-3, negative guidance 2: 0.625 / 0.839 (no small-budget run at eta 1).
    - hazard, anchor, lr 1e-3, retain_loss_w 3: 0.417 / 0.863.
    Full budget, seed 0, anchor reference (forgetting / preservation / quality / alignment /
    robustness): ball at the defaults (lr 1e-3) 0.729 / 0.780 / 0.731 / 0.945 / 0.406; hazard at lr
    1e-3 0.479 / 0.857 / 0.905 / 0.800 / 0.417, at lr 3e-3 0.354 / 0.848 / 0.768 / 0.700 / 0.427.
    Neither target reaches forgetting 0.80 (preservation clears 0.8 x the original's on both). On
    hazard the badge went from 90% of the forget images, but the rest of the prompt from 42% (48%
    at lr 3e-3): the text encoder moves the whole prompt's embedding. Each full-budget run took about
    265 CPU seconds (user + system, one thread) on the shared, loaded machine; not timed quiet.

    On Stable Diffusion `AdvUnlearn.official_defaults` apply instead, train-scripts/AdvUnlearn.py's
    argparse defaults for SD 1.4: `text_encoder_full`, lr 1e-5, 1000 iterations, one forget prompt
    (the concept's name), `retain_batch` 5, `retain_loss_w` 1.0 (the README's command uses 0.3),
    `warmup_iter` 200, `attack_step` 30, `attack_lr` 1e-3, `attack_init` latest, PGD, one prefix
    token (`adv_prompt_num` 1, `attack_type` prefix_k), the prompt re-attacked every iteration
    (`adv_prompt_update_step` 1), start guidance 3, negative guidance 1, 50 DDIM steps.

    Where igmu differs from the official code (documented choices, not oversights):
    - The retain term is the README's `--retain_train reg`: added to the ESD loss with weight
      `retain_loss_w` in one optimiser step. The argparse default `iter` takes a separate optimiser
      step on the retain MSE instead (and ignores `retain_loss_w`).
    - Forget prompts are drawn from the task's forget prompts (`batch_size` of them, one shared
      adversarial prefix); the official trains on the concept's bare name, one at a time. Retain
      prompts are the task's, drawn with replacement; the official cycles COCO-object prompts
      without replacement.
    - t is the DDIM step's own timestep, as ESD's partial sampling uses; the official jitters it
      within the step's interval of the 1000 training timesteps.
    - The attack zeroes the prefix's gradient before every PGD step; the official never calls
      `zero_grad` on the attack optimiser, so its gradients accumulate over the 30 steps.
    - The text encoder stays in the mode it is in: SD 1.4's CLIP (and the world's) has no dropout,
      so the official's `train()` / `eval()` switches change nothing.
    - `reference`: the paper's epsilon*(x_t) is the unconditional prediction (the empty prompt);
      `anchor` is igmu's variant for composite world prompts, as in ESD (the forget prompt without
      the target takes the empty prompt's place).
    Not verified: the paper's equation numbers (its text was not available; the objectives are as
    its abstract and train-scripts/AdvUnlearn.py, utils/attack_util.py and utils/get_loss.py at
    OPTML-Group/AdvUnlearn 1c3f2b7 state them)."""

    lr: float = hyperparameter(1e-3, 1e-7, 1e-1, "Adam learning rate of the trained parameters", log=True)
    steps: int = hyperparameter(150, 1, 100_000, "outer (unlearning) steps, warm-up included")
    batch_size: int = hyperparameter(4, 1, 256, "forget prompts per step, all sharing one adversarial prefix")
    train_method: TrainMethod = hyperparameter(
        TEXT_ENCODER, doc="text_encoder_full = the CLIP text encoder's layers (the paper's); or an ESD UNet set")
    retain_loss_w: float = hyperparameter(1.0, 0.0, 100.0, "gamma: weight of the utility-retaining MSE")
    retain_batch: int = hyperparameter(8, 1, 256, "retain prompts per step")
    warmup_steps: int = hyperparameter(50, 0, 100_000, "steps of plain ESD before the attacks start")
    attack_steps: int = hyperparameter(3, 1, 1000, "PGD steps of each attack (the inner maximisation)")
    attack_lr: float = hyperparameter(1e-2, 1e-6, 1.0, "Adam learning rate of the attack's prefix", log=True)
    attack_init: Literal["latest", "random"] = hyperparameter(
        "latest", doc="each attack starts from the last adversarial prefix (latest) or from random tokens")
    attack_method: Literal["pgd", "fast_at"] = hyperparameter(
        "pgd", doc="pgd: Adam on the gradient; fast_at: Adam on its sign (the official's fast AT variant)")
    prefix_tokens: int = hyperparameter(1, 1, 16, "k: adversarial token embeddings put before the prompt")
    attack_every: int = hyperparameter(1, 1, 100_000, "re-attack every this many steps after warm-up")
    start_guidance: float = hyperparameter(2.0, 1.0, 20.0, "CFG scale of the partial sampling of x_t")
    negative_guidance: float = hyperparameter(1.0, 0.0, 10.0, "eta: how far to push away from the concept")
    ddim_steps: int = hyperparameter(10, 2, 1000, "sampler steps; x_t is taken at a random one")
    reference: Literal["unconditional", "anchor"] = hyperparameter(
        "anchor",
        doc="epsilon*(x_t) of the ESD target: the empty prompt (the paper's), or the forget prompt without the "
            "target (anchor: igmu's variant for composite prompts)")


@dataclass
class Draw:
    """One partial sample: forget and retain latents at the same timestep, with the frozen text
    encoder's embeddings of their prompts (and of the forget prompts' reference)."""

    forget_prompts: list[str]
    retain_prompts: list[str]
    x_t: torch.Tensor
    t: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor
    retain_x_t: torch.Tensor
    retain_t: torch.Tensor
    retain_cond: torch.Tensor


def regeneration_loss(prediction: torch.Tensor, frozen_cond: torch.Tensor) -> torch.Tensor:
    """The attack loss l_atk = || epsilon_theta(x_t, c', t) - epsilon*(x_t, c, t) ||^2: how far the model
    under attack is from regenerating the concept as the original model does. The attack minimises it."""
    return F.mse_loss(prediction, frozen_cond)


@register_algorithm("advunlearn")
class AdvUnlearn(Unlearner):
    """ESD on adversarial prompts found by an inner attack, with a utility-retaining regulariser."""

    generator_kinds = TEXT_TO_IMAGE
    paper = ("Zhang et al., Defensive Unlearning with Adversarial Training for Robust Concept Erasure in "
             "Diffusion Models, NeurIPS 2024 (arXiv 2405.15234)")
    repo = "https://github.com/OPTML-Group/AdvUnlearn"
    Params = AdvUnlearnParams
    # No category default: lr 3e-3 forgot less of the hazard badge than the default 1e-3 (see Params).
    category_defaults = {}
    # train-scripts/AdvUnlearn.py argparse defaults (commit 1c3f2b7), SD 1.4.
    official_defaults = {"lr": 1e-5, "steps": 1000, "batch_size": 1, "train_method": TEXT_ENCODER,
                         "retain_loss_w": 1.0, "retain_batch": 5, "warmup_steps": 200, "attack_steps": 30,
                         "attack_lr": 1e-3, "attack_init": "latest", "attack_method": "pgd", "prefix_tokens": 1,
                         "attack_every": 1, "start_guidance": 3.0, "negative_guidance": 1.0, "ddim_steps": 50,
                         "reference": "unconditional"}

    def prepare(self) -> None:
        gen, p = self.generator, self.params
        # epsilon* and the frozen text encoder that embeds c for it: the original model.
        self.frozen_unet = frozen_copy(gen.unet)
        self.frozen_text_encoder = frozen_copy(gen.text_encoder)
        # x_t comes from the model being unlearned, conditioned on the original text encoder's
        # embedding (the official samples with the CompVis model's own, untrained CLIP).
        self.sampler = dataclasses.replace(gen, text_encoder=self.frozen_text_encoder)
        if p.train_method == TEXT_ENCODER:
            gen.unet.requires_grad_(False)
            self.trained = select_text_encoder_parameters(gen.text_encoder)
            self.optimizer = make_optimizer(self.trained.values(), p.lr)
        else:
            self.train_unet_parameters(p.train_method)
        # The latest adversarial prefix [1, k, D] (None before the first attack).
        self.prefix: torch.Tensor | None = None

    # --- drawing ---------------------------------------------------------------------------------
    def draw(self, chosen: list[int], retain_batch: int) -> Draw:
        """Partial sampling of forget (and `retain_batch` retain) prompts in one batch, stopped at the
        same random DDIM step, as the official samples both at one t."""
        p = self.params
        forget = [self.task.forget_prompts[i] for i in chosen]
        retain = [self.task.retain_prompts[i] for i in pick(self.task.retain_prompts, retain_batch, self.rng)]
        x_t, t, cond = partial_sample(self.sampler, forget + retain, p.ddim_steps, p.start_guidance, self.rng)
        with torch.no_grad():
            uncond = self.sampler.encode_prompt(reference_prompts(self.task.anchor_prompts, chosen, p.reference))
        n = len(forget)
        return Draw(forget, retain, x_t[:n], t[:n], cond[:n], uncond, x_t[n:], t[n:], cond[n:])

    def choose_forget(self) -> list[int]:
        return pick(self.task.forget_prompts, self.params.batch_size, self.rng)

    # --- the model's embeddings --------------------------------------------------------------------
    def embed(self, prompts: list[str], prefix: torch.Tensor | None) -> torch.Tensor:
        """E_theta(prefix + c): the text encoder being unlearned, with the adversarial prefix tokens
        after BOS when one is given (c itself when not)."""
        gen = self.generator
        if prefix is None:
            return gen.encode_prompt(prompts)
        with prefix_embeddings(gen.text_encoder, prefix):
            return gen.text_encoder(prefixed_ids(gen, prompts, prefix.shape[1]))[0].to(gen.dtype)

    # --- inner problem: the attack -----------------------------------------------------------------
    def attack_loss(self, prefix: torch.Tensor, batch: Draw) -> torch.Tensor:
        """l_atk(theta, c') for c' = prefix + c on one partial sample."""
        with torch.no_grad():
            frozen_cond = self.frozen_unet(batch.x_t, batch.t, encoder_hidden_states=batch.cond).sample
        prediction = self.generator.unet(batch.x_t, batch.t, encoder_hidden_states=self.embed(batch.forget_prompts,
                                                                                                prefix)).sample
        return regeneration_loss(prediction, frozen_cond)

    def initial_prefix(self) -> torch.Tensor:
        if self.params.attack_init == "latest" and self.prefix is not None:
            return self.prefix.clone()
        return random_token_embeddings(self.generator.text_encoder, (1, self.params.prefix_tokens), self.rng)

    def attack(self, chosen: list[int], draw_batch: Callable[[], Draw] | None = None) -> list[float]:
        """The inner minimisation c* = argmin_{c'} l_atk(theta, c') over the k prefix token embeddings,
        `attack_steps` steps of Adam (PGD) or of Adam on the gradient's sign (fast AT), each on a fresh
        partial sample of the chosen forget prompts (`draw_batch`, by default), as the official draws
        one per step. Gradients reach the prefix only; the model's parameters are not touched. Stores
        the prefix; returns the loss before each step."""
        p = self.params
        if draw_batch is None:
            def draw_batch() -> Draw:
                return self.draw(chosen, retain_batch=0)
        prefix = self.initial_prefix().requires_grad_(True)
        optimizer = torch.optim.Adam([prefix], lr=p.attack_lr)
        losses = []
        with torch.enable_grad():
            for _ in range(p.attack_steps):
                loss = self.attack_loss(prefix, draw_batch())
                (gradient,) = torch.autograd.grad(loss, [prefix])
                prefix.grad = gradient.sign() if p.attack_method == "fast_at" else gradient
                optimizer.step()
                losses.append(float(loss.detach()))
        self.prefix = prefix.detach()
        return losses

    def attacks_at(self, step: int) -> bool:
        """Attacks start after the warm-up and repeat every `attack_every` steps."""
        p = self.params
        return step >= p.warmup_steps and (step - p.warmup_steps) % p.attack_every == 0

    # --- outer problem: unlearning -----------------------------------------------------------------
    def losses(self, batch: Draw, prefix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(l_u, l_r): the ESD loss on the (adversarial) forget prompts and the retain MSE."""
        unet = self.generator.unet
        with torch.no_grad():
            frozen_uncond = self.frozen_unet(batch.x_t, batch.t, encoder_hidden_states=batch.uncond).sample
            frozen_cond = self.frozen_unet(batch.x_t, batch.t, encoder_hidden_states=batch.cond).sample
            frozen_retain = self.frozen_unet(batch.retain_x_t, batch.retain_t,
                                             encoder_hidden_states=batch.retain_cond).sample
        target = esd_target(frozen_uncond, frozen_cond, self.params.negative_guidance)
        forget_prediction = unet(batch.x_t, batch.t, encoder_hidden_states=self.embed(batch.forget_prompts, prefix))
        retain_prediction = unet(batch.retain_x_t, batch.retain_t,
                                 encoder_hidden_states=self.embed(batch.retain_prompts, None))
        return F.mse_loss(forget_prediction.sample, target), F.mse_loss(retain_prediction.sample, frozen_retain)

    def step(self) -> dict[str, float]:
        """AdvUnlearn (Zhang et al. 2024, arXiv 2405.15234; train-scripts/AdvUnlearn.py), the bi-level
        problem with the utility-retaining regulariser:
            min_theta  l_u(theta, c*) + gamma l_r(theta)
            s.t.       c* = argmin_{c'} l_atk(theta, c'),   c' = [prefix_1..k] + c,
        with the ESD loss l_u(theta, c) = || epsilon_theta(x_t, c, t) - (epsilon*(x_t, t) - eta
        [epsilon*(x_t, c, t) - epsilon*(x_t, t)]) ||^2, the attack loss l_atk(theta, c') =
        || epsilon_theta(x_t, c', t) - epsilon*(x_t, c, t) ||^2 and the retain loss l_r(theta) =
        E_{c_r} || epsilon_theta(x_t, c_r, t) - epsilon*(x_t, c_r, t) ||^2. During the warm-up
        c* = c (no attack).

        Notation (variable -> paper symbol):
        - generator.unet / generator.text_encoder -> epsilon_theta with its text encoder (theta: the
          text encoder's layers by default); frozen_unet / frozen_text_encoder -> epsilon* (theta_o)
        - prefix -> the k adversarial token embeddings of c' (attack type prefix_k)
        - batch.cond -> c, batch.uncond -> the empty prompt (or the anchor), batch.retain_* -> c_r
        - negative_guidance -> eta, retain_loss_w -> gamma
        """
        p = self.params
        chosen = self.choose_forget()
        # 1. inner problem: after the warm-up, find the adversarial prefix for these prompts
        attack_losses = self.attack(chosen) if self.attacks_at(self.step_index) else []
        prefix = self.prefix if self.step_index >= p.warmup_steps else None
        # 2. x_t of the forget and retain prompts from the model being unlearned, at one t
        batch = self.draw(chosen, p.retain_batch)
        # 3. outer problem: ESD loss on the adversarial prompt plus gamma x the retain MSE, one step
        forget_loss, retain_loss = self.losses(batch, prefix)
        loss = forget_loss + p.retain_loss_w * retain_loss
        self.update(loss)
        # The attack loss before the first and after the last PGD step (0.0 without an attack, as the
        # official logs it).
        return {"loss": float(loss.detach()), "esd_loss": float(forget_loss.detach()),
                "retain_loss": float(retain_loss.detach()),
                "attack_loss_first": attack_losses[0] if attack_losses else 0.0,
                "attack_loss_last": attack_losses[-1] if attack_losses else 0.0}

    def extra_state(self) -> dict:
        return {"prefix": self.prefix}

    def load_extra_state(self, state: dict) -> None:
        self.prefix = state["prefix"]
