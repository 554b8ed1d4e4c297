"""SDD: Towards Safe Self-Distillation of Internet-Scale Text-to-Image Diffusion Models (Kim et al., 2023)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from igmu.algorithms.base import (
    CommonParams,
    Unlearner,
    hyperparameter,
    register_algorithm,
)
from igmu.algorithms.common import ParameterSet, forget_batch, frozen_copy
from igmu.models.text_to_image import TEXT_TO_IMAGE


@dataclass
class SDDParams(CommonParams):
    """The defaults below are rescaled for the world model (2.7M parameters, 10-step sampler at
    guidance 2), as ESD's are: lr 1e-3, 400 steps, batch 4, 10 DDIM steps, the official EMA decay
    0.999 and `reference` anchor. The paper distils towards the unconditional prediction of the
    concept's bare name ("nudity"); world prompts are composite ("a ember ball"), and distilling
    the whole prompt towards the unconditional erased the scene with the ball (ball, full budget,
    lr 3e-4, 200 steps, decay 0.99, unconditional: forgetting 0.167, preservation 0.624, most
    images missing the rest of the scene). As ESD's `anchor` does, the forget prompt without the
    target (the scene without the ball) takes the unconditional's place. Tried on ball with anchor
    (forgetting / preservation), small budget at 200 steps: lr 3e-4, decay 0.99 0.625 / 0.816;
    lr 1e-3, decay 0.99 0.708 / 0.800; lr 1e-3, decay 0.999 0.667 / 0.884 (the near-original
    teacher preserves more); lr 3e-3, decay 0.999 0.667 / 0.679. Full budget at lr 1e-3, decay
    0.999: 200 steps 0.729 / 0.878, 400 steps 0.792 / 0.871 (kept), 600 steps 0.708 / 0.824. No
    setting tried reached forgetting 0.80 on ball (docs/benchmarks.md); hazard keeps 200 steps
    (`SDD.category_defaults`). Over 400 steps a 0.999
    teacher moves 33% of the way to the student (1 - 0.999^400), so it stays near the original.

    On Stable Diffusion `SDD.official_defaults` apply instead, train_sdd.py's (nannullna/safe-diffusion,
    run_sdd_nudity.sh for SD 1.4): lr 1e-5 constant, 1500 iterations, batch 1, EMA decay 0.999,
    cross-attention (`--finetuning_method xattn`), 50 DDIM steps, guidance 1.0 for sampling x_t, the
    unconditional reference, and the official optimiser on every kind: AdamW (weight decay 1e-4)
    with the gradient clipped to global norm 1.0.

    Where igmu differs from the official code (documented choices, not oversights):
    - The target is the EMA teacher's prediction, as the paper writes it; the official train_step
      takes it from the student under `torch.no_grad()` (a stop-gradient student), and uses the
      teacher only to sample x_t.
    - x_t is sampled from the EMA teacher on the forget prompts; at the official guidance 1.0 the
      official samples the empty prompt.
    - t is the DDIM step's own timestep, as ESD's partial sampling uses; the official jitters it
      uniformly within the step's interval of the 1000 training timesteps.
    - The run's model is the student (the generator's UNet); the official saves the EMA teacher.
    Not verified: the paper's own prompt for sampling x_t and its equation numbers (the paper's
    text was not available; the code was read at nannullna/safe-diffusion 8c57951)."""

    lr: float = hyperparameter(1e-3, 1e-7, 1e-1, "AdamW learning rate", log=True)
    steps: int = hyperparameter(400, 1, 100_000, "optimisation steps")
    batch_size: int = hyperparameter(4, 1, 256, "forget prompts per step")
    train_method: ParameterSet = hyperparameter("xattn", doc="UNet parameters updated (official: xattn)")
    ema_decay: float = hyperparameter(0.999, 0.0, 1.0, "decay m of the EMA teacher, updated after every step")
    start_guidance: float = hyperparameter(2.0, 1.0, 20.0, "CFG scale of the partial sampling of x_t")
    ddim_steps: int = hyperparameter(10, 2, 1000, "sampler steps; x_t is taken at a random one")
    weight_decay: float = hyperparameter(1e-4, 0.0, 1.0, "AdamW decoupled weight decay (official 1e-4)")
    max_grad_norm: float = hyperparameter(1.0, 0.0, 1e6, "clip the gradient to this global norm; 0 never clips")
    reference: Literal["unconditional", "anchor"] = hyperparameter(
        "anchor",
        doc="the teacher's prediction the concept is distilled towards: the empty prompt's (the paper's), or the "
            "forget prompt without the target (anchor: igmu's variant for composite prompts)")


def ema_update(shadow: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
    """theta^- <- m theta^- + (1 - m) theta, in place, for every named tensor in `shadow`."""
    with torch.no_grad():
        for name, ema in shadow.items():
            ema.mul_(decay).add_(params[name].detach().float(), alpha=1.0 - decay)


@register_algorithm("sdd")
class SDD(Unlearner):
    """Self-distil the model's score for the concept towards its EMA teacher's unconditional score."""

    generator_kinds = TEXT_TO_IMAGE
    paper = ("Kim et al., Towards Safe Self-Distillation of Internet-Scale Text-to-Image Diffusion Models, "
             "ICML 2023 Workshop on Challenges in Deployable Generative AI (arXiv 2307.05977)")
    repo = "https://github.com/nannullna/safe-diffusion"
    Params = SDDParams
    # The small hazard badge lost forgetting with more steps (full budget, forgetting / preservation:
    # 200 steps 0.708 / 0.920, 400 steps 0.583 / 0.895), so it keeps 200; ball is better at 400.
    category_defaults = {"sensitive": {"steps": 200}}
    # train_sdd.py's argparse defaults with run_sdd_nudity.sh (SD 1.4); `--guidance_scale` 1.0.
    official_defaults = {"lr": 1e-5, "steps": 1500, "batch_size": 1, "train_method": "xattn", "ema_decay": 0.999,
                         "start_guidance": 1.0, "ddim_steps": 50, "weight_decay": 1e-4, "max_grad_norm": 1.0,
                         "reference": "unconditional"}

    def prepare(self) -> None:
        p = self.params
        self.train_unet_parameters(p.train_method, p.weight_decay, "adamw")
        # The EMA teacher theta^-: a frozen copy of the student, moved towards it after every step.
        # Only the trained tensors move (the others are the student's and stay equal); their EMA is
        # kept in fp32, as a bf16/fp16 copy could not hold a (1 - 0.999) step.
        self.teacher = frozen_copy(self.generator.unet)
        self.teacher_params = {n: t for n, t in self.teacher.named_parameters() if n in self.trained}
        self.ema = {n: t.detach().float().clone() for n, t in self.teacher_params.items()}
        self.teacher_generator = dataclasses.replace(self.generator, unet=self.teacher)

    @property
    def max_grad_norm(self) -> float | None:
        return self.params.max_grad_norm or None

    def draw(self) -> dict:
        """Partial sampling: x_t from the EMA teacher on forget prompts, stopped at a random DDIM step."""
        p = self.params
        return forget_batch(self.generator, self.task, p.batch_size, p.ddim_steps, p.start_guidance, p.reference,
                            self.rng, sampler=self.teacher_generator)

    def loss(self, batch: dict) -> torch.Tensor:
        """L = || epsilon_theta(z_t, c_s, t) - sg[epsilon_theta^-(z_t, t)] ||^2"""
        x_t, t = batch["x_t"], batch["t"]
        with torch.no_grad():
            teacher_uncond = self.teacher(x_t, t, encoder_hidden_states=batch["uncond"]).sample
        student_cond = self.generator.unet(x_t, t, encoder_hidden_states=batch["cond"]).sample
        return F.mse_loss(student_cond, teacher_uncond)

    def update_teacher(self) -> None:
        ema_update(self.ema, self.trained, self.params.ema_decay)
        self.sync_teacher()

    def sync_teacher(self) -> None:
        """Copy the fp32 EMA into the teacher's own tensors (in the model's dtype)."""
        with torch.no_grad():
            for name, ema in self.ema.items():
                self.teacher_params[name].copy_(ema)

    def step(self) -> dict[str, float]:
        """Safe self-distillation (Kim et al. 2023, arXiv 2307.05977, the SDD objective;
        train_sdd.py `train_step` and its EMA update): the student's prediction for the concept is
        distilled from the EMA teacher's unconditional prediction,
            L = E_{z_t, t} || epsilon_theta(z_t, c_s, t) - sg[epsilon_theta^-(z_t, t)] ||^2,
        and the teacher follows the student, theta^- <- m theta^- + (1 - m) theta, after every
        optimiser step. (The paper's section and equation numbers were not verified: its text was
        not available; the objective is as its abstract and train_sdd.py state it.)

        Notation (variable -> paper symbol):
        - generator.unet -> epsilon_theta, the student; teacher -> epsilon_theta^-, its EMA
        - batch["cond"] -> c_s (the forget prompt), batch["uncond"] -> the empty prompt (`reference`
          unconditional) or the forget prompt without the target (anchor, the world's default)
        - x_t -> z_t, sampled from the teacher; ema_decay -> m
        """
        # 1. z_t from the teacher's partial sampling of the concept
        batch = self.draw()
        # 2. distillation loss towards the teacher's unconditional prediction, one optimiser step
        loss = self.loss(batch)
        self.update(loss)
        # 3. EMA: theta^- <- m theta^- + (1 - m) theta
        self.update_teacher()
        return {"loss": float(loss.detach())}

    def extra_state(self) -> dict:
        return {"ema": self.ema}

    def load_extra_state(self, state: dict) -> None:
        # In place, and into the teacher as well, so a resumed run has the teacher it stopped with.
        for name, ema in state["ema"].items():
            self.ema[name].copy_(ema)
        self.sync_teacher()
