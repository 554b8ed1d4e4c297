"""What a scorecard needs to be repeated exactly: its `reproduce` block.

Scores depend on more than the model: the prompt set and split, the seeds, the sampler, the judges
and their thresholds, the precision, the device and even the thread count (float reductions sum in
another order on another number of threads). The block records all of it, so `igmu eval --from-run`
can rebuild the same evaluation, and a reader can tell why two scores of one model differ.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from igmu.provenance import LIBRARIES, git_commit, package_version

# Libraries whose version can change an image or a judge's verdict.
SCORING_LIBRARIES = tuple(name for name in LIBRARIES if name in ("torch", "diffusers", "transformers"))


def evaluation_record(ctx, settings) -> dict:
    """The `reproduce` block of `ctx`'s scorecard; `settings` are the EvalSettings it was built with."""
    model = ctx.model
    return {"target": ctx.target.name, "category": ctx.target.category, "split": ctx.split, "seed": ctx.seed,
            "budget": dataclasses.asdict(ctx.budget), "settings": dataclasses.asdict(settings),
            "prompts_digest": prompts_digest(getattr(ctx, "prompt_specs", {})),
            "sampler": ctx.sampler_record(), "judges": ctx.judges_record(),
            "precision": str(getattr(model, "dtype", torch.float32)).removeprefix("torch."),
            "device": str(getattr(model, "device", "cpu")), "threads": torch.get_num_threads(),
            "packages": {name: package_version(name) for name in ("igmu", *SCORING_LIBRARIES)},
            "git_commit": git_commit()}


def prompts_digest(prompt_specs: dict) -> str:
    """One digest of every evaluated prompt set's texts (and seeds, where prompts carry their own)."""
    digest = hashlib.sha256()
    for name in sorted(prompt_specs):
        for spec in prompt_specs[name]:
            digest.update(f"{name}\x1f{spec.text}\x1f{getattr(spec, 'seed', '')}\x1e".encode())
    return digest.hexdigest()[:16]


def files_digest(folder) -> str:
    """A digest of a folder's files (the shipped judges' weights and config)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
