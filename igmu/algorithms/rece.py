"""RECE: Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models (Gong et al., ECCV 2024)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from igmu.algorithms.base import Unlearner, hyperparameter, register_algorithm
from igmu.algorithms.uce import UCE, UCEParams, uce_solve
from igmu.models.text_to_image import TEXT_TO_IMAGE


@dataclass
class RECEParams(UCEParams):
    """RECE starts from a UCE edit (the UCE hyperparameters below, shared with the RECE rounds) and
    then, each epoch, derives the embedding that makes the edited keys/values reproduce the concept
    (Eq. 8, ridge `regular_scale`) and erases it with the same closed form.

    World defaults: UCE's world values (erase 1, preserve 0.3, lamb 0.1, all token rows), 3 epochs,
    regular_scale 0.1, and the derived embeddings taken from every forget prompt (the world's
    prompts are composite scenes; the bare word alone is not a prompt it was trained on). On Stable
    Diffusion `RECE.official_defaults` apply instead (train.py): erase 1, preserve 0.1, lamb 0.1,
    regular_scale 0.1, `close_regzero`, the concept's bare name (the task's first forget prompt)
    guided to '' (the anchor of an SD task unless the user names one), 3 epochs (the paper's; the
    README uses 1 epoch and regular_scale 1e-3 for styles and hard objects). The official UCE start
    is a separately trained UCE checkpoint; here it is UCE with the same scales."""

    epochs: int = hyperparameter(3, 1, 100, "rounds of derive-then-erase after the UCE edit")
    regular_scale: float = hyperparameter(0.1, 1e-6, 100.0, "gamma: ridge pull of the derived embedding to 0",
                                          log=True)
    concept_prompts: int = hyperparameter(
        1000, 1, 100_000, "forget prompts whose derived embeddings are erased (the first is the bare concept on SD)")


def derive_embedding(edited: list[torch.Tensor], original: list[torch.Tensor], concept: torch.Tensor,
                     regular_scale: float) -> torch.Tensor:
    """Eq. (8), the `close_regzero` form: the embedding c' whose keys and values under the edited
    weights W'_l best reproduce the concept's original ones W_l c, with a ridge pull to zero:
        c'^T = (gamma I + sum_l W'_l^T W'_l)^-1 (sum_l W'_l^T W_l) c^T
    over every edited to_k and to_v. `concept` is [L, d] (one row per token); so is the result."""
    d = concept.shape[1]
    gram = regular_scale * torch.eye(d, dtype=torch.float64)
    cross = torch.zeros(d, d, dtype=torch.float64)
    for w_edited, w_original in zip(edited, original):
        gram += w_edited.double().T @ w_edited.double()
        cross += w_edited.double().T @ w_original.double()
    return torch.linalg.solve(gram, cross @ concept.double().T).T.to(concept.dtype)


@register_algorithm("rece")
class RECE(Unlearner):
    """UCE, then repeatedly erase the embedding that still regenerates the concept, in closed form."""

    generator_kinds = TEXT_TO_IMAGE
    paper = ("Gong et al., Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models, "
             "ECCV 2024 (arXiv 2407.12383)")
    repo = "https://github.com/CharlesGong12/RECE"
    Params = RECEParams
    # As UCE on the world: an object is guided to a neighbour object.
    category_defaults = {"object": {"guide": "pseudo"}}
    official_defaults = {"erase_scale": 1.0, "preserve_scale": 0.1, "lamb": 0.1, "regular_scale": 0.1, "epochs": 3,
                         "guide": "anchor", "token_rows": "last", "concept_prompts": 1}

    @property
    def total_steps(self) -> int:
        return int(self.params.epochs)

    def prepare(self) -> None:
        """The UCE edit RECE starts from; the original weights are kept for Eq. (8)."""
        uce_fields = {f.name for f in dataclasses.fields(UCEParams)}
        self.uce = UCE(self.generator, self.task, UCEParams(**{k: v for k, v in dataclasses.asdict(self.params).items()
                                                               if k in uce_fields}), self.seed)
        self.original = {name: layer.weight.detach().float().cpu().clone()
                         for name, layer in self.uce.edited_layers().items()}
        self.uce.prepare()
        self.uce.step()
        self.concepts, self.guides = self.concept_rows()

    def concept_rows(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every token row of each concept prompt and of its guide (all rows, as the official edit
        takes the whole [77, d] context)."""
        task, p = self.task, self.params
        guides = task.anchor_prompts if p.guide == "anchor" else task.pseudo_prompts
        n = min(p.concept_prompts, len(task.forget_prompts))
        rows = self.uce.embed_rows([*task.forget_prompts[:n], *guides[:n]])
        return [emb for emb, _, _ in rows[:n]], [emb for emb, _, _ in rows[n:]]

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        p = self.params
        layers = self.uce.edited_layers()
        # Copies: on a float32 CPU model .float().cpu() returns the weight itself, overwritten below.
        edited = [layer.weight.detach().float().cpu().clone() for layer in layers.values()]
        original = [self.original[name] for name in layers]
        # 1. derive the embeddings that regenerate each concept under the current weights (Eq. 8)
        derived = torch.cat([derive_embedding(edited, original, c, p.regular_scale) for c in self.concepts])
        guide = torch.cat(self.guides)
        # 2. erase them with UCE's closed form (Eq. 7 of UCE), mapping each to its guide's row
        residual = 0.0
        for layer, w in zip(layers.values(), edited):
            new = uce_solve(w, derived, guide, self.uce.preserve, p.erase_scale, p.preserve_scale, p.lamb)
            layer.weight.data.copy_(new.to(layer.weight))
            residual += float((derived @ new.T - guide @ w.T).pow(2).mean())
        return {"derived_norm": float(derived.norm(dim=1).mean()), "erase_error_after": residual}
