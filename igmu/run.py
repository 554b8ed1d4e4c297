"""One unlearning run: build the task, run the algorithm, score it, save what it changed."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from igmu.algorithms.base import Unlearner, get_algorithm, make_params
from igmu.algorithms.hooks import attach_saved_adapters
from igmu.algorithms.loop import run_unlearning
from igmu.algorithms.task import (
    UnlearningTask,
    prompt_task,
    world_task,
)
from igmu.errors import UsageError
from igmu.models.guidance import rule_from_config
from igmu.models.loader import kind_of, load


def build_task(generator, target: str, category: str | None = None, anchor: str | None = None,
               prompts: str | None = None) -> UnlearningTask:
    """What to unlearn: a world concept's derived prompt sets, or for a real model the target's
    prompt sets (shipped, or the user's file) with the category's anchor or the user's."""
    if generator.kind.world_concepts:
        generator.kind.check_anchor(anchor)
        return world_task(target)
    return prompt_task(generator.kind.normalise_target(target), generator.kind.category_of(target, category),
                       anchor=anchor, prompts_file=prompts)


def model_kind_for(algorithm: str, model: str):
    """The kind of generator `model` is, among those `algorithm` edits, found without loading weights."""
    return kind_of(model, get_algorithm(algorithm).generator_kinds)


def load_model_for(algorithm: str, model: str, device: str | None = None, precision: str = "fp32"):
    """The generator `algorithm` edits: `model` loaded as one of the kinds the algorithm declares
    ('base' is the first of them that igmu ships)."""
    return load(model, kinds=get_algorithm(algorithm).generator_kinds, device=device, precision=precision)


def build_unlearner(algorithm: str, generator, target: str, overrides: dict, seed: int = 0,
                    category: str | None = None, anchor: str | None = None, prompts: str | None = None) -> Unlearner:
    cls = get_algorithm(algorithm)
    task = build_task(generator, target, category, anchor, prompts)
    return cls(generator, task, make_params(cls, overrides, task.category, generator.kind), seed=seed)


def resolved_params(algorithm: str, overrides: dict, category: str | None, kind=None) -> dict:
    """The hyperparameters a run actually uses: defaults, then the defaults for the generator's kind
    and the target's category (`algorithms.base.default_values`), then overrides."""
    return dataclasses.asdict(make_params(get_algorithm(algorithm), overrides, category, kind))


def module_states(generator, keys) -> dict[str, torch.Tensor]:
    """Copies of the tensors of `generator`'s modules named `keys` (as `Unlearner.trainable_modules`
    names them, which are the generator's attribute names), keyed `<module>.<tensor>`."""
    return {f"{key}.{n}": t.detach().cpu().clone() for key in keys
            for n, t in getattr(generator, key).state_dict().items()}


def changed_since(before: dict[str, torch.Tensor], unlearner: Unlearner) -> dict[str, torch.Tensor]:
    """The tensors of the unlearner's trainable modules that differ from `before` (see module_states)."""
    changed = {}
    for key, module in unlearner.trainable_modules().items():
        prefix = {n[len(key) + 1:]: t for n, t in before.items() if n.startswith(key + ".")}
        changed.update({f"{key}.{n}": t for n, t in changed_tensors(prefix, module).items()})
    return changed


def apply_trial(generator, changed: dict[str, torch.Tensor], manifest: dict) -> None:
    """A trial's whole effect on `generator`, as `write_weights` recorded it: its changed tensors and,
    for a method that edits sampling, its guidance rule."""
    apply_changed(generator, changed)
    generator.guidance_rule = rule_from_config(manifest.get("guidance"))


def apply_changed(generator, changed: dict[str, torch.Tensor]) -> None:
    """Load `<module>.<tensor>` tensors (as `unlearn` returns them) into `generator`'s modules; an
    adapter among them that the module lacks (Receler's erasers) is attached first."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in changed.items():
        key, _, tensor_name = name.partition(".")
        by_module.setdefault(key, {})[tensor_name] = tensor
    for key, tensors in by_module.items():
        module = getattr(generator, key, None)
        if not isinstance(module, torch.nn.Module):
            raise UsageError(f"changed tensor {key}.* names no module of a {generator.kind.name} generator; "
                             f"valid: {', '.join(generator_modules(generator))}")
        attach_saved_adapters(module, tensors)
        result = module.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise UsageError(f"changed tensor {key}.{result.unexpected_keys[0]} is not in the model's {key}; "
                             "the weights belong to another model")


def generator_modules(generator) -> list[str]:
    """The names of a generator's modules (a Generator holds them as fields, an I2IGenerator as children)."""
    if isinstance(generator, torch.nn.Module):
        return [name for name, _ in generator.named_children()]
    return [name for name, value in vars(generator).items() if isinstance(value, torch.nn.Module)]


def changed_tensors(before: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors that differ from `before`; one `before` lacks (an adapter the algorithm
    added, Receler's erasers) counts as changed."""
    return {name: t.detach().cpu().clone() for name, t in module.state_dict().items()
            if name not in before or not torch.equal(t.detach().cpu(), before[name])}


def changed_bytes(before: dict[str, torch.Tensor], changed: dict[str, torch.Tensor]) -> int:
    """Bytes of the individual parameter entries that differ from the base model (all of an added tensor's)."""
    return sum((int((t != before[name]).sum()) if name in before else t.numel()) * t.element_size()
               for name, t in changed.items())


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA; on the CPU, the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def unlearn(unlearner: Unlearner) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run the algorithm; returns efficiency figures and the changed UNet / text-encoder tensors."""
    gen = unlearner.generator
    before = module_states(gen, unlearner.trainable_modules())
    if gen.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(gen.device)
    started = time.time()
    history = run_unlearning(unlearner)
    seconds = time.time() - started
    gen.train_mode(False)
    changed = changed_since(before, unlearner)
    efficiency = {"seconds": round(seconds, 2), "peak_memory_mb": round(peak_memory_mb(gen.device), 1),
                  "changed_bytes": changed_bytes(before, changed),
                  "steps": len(history), "final_losses": history[-1] if history else {},
                  **sampling_cost(unlearner)}
    return efficiency, changed


# A sampler edit's overhead is timed on this many forget prompts, this many times with and without
# the rule, alternating: enough for a steady rate on a shared machine, cheap enough on SD.
OVERHEAD_PROMPTS, OVERHEAD_ROUNDS = 4, 3


def sampling_cost(unlearner: Unlearner) -> dict:
    """For a method that edits sampling, what its rule costs every later image: the best seconds of
    sampling a few forget prompts with the rule over the best without it (same prompts and seed;
    one untimed sampling first, so neither side pays the first call's set-up)."""
    if not type(unlearner).edits_sampler:
        return {}
    generator, prompts = unlearner.generator, list(unlearner.task.forget_prompts[:OVERHEAD_PROMPTS])
    rule, seconds = generator.guidance_rule, {"plain": [], "edited": []}
    generator.sample(prompts[:1])
    try:
        for _ in range(OVERHEAD_ROUNDS):
            for label, installed in (("plain", None), ("edited", rule)):
                generator.guidance_rule = installed
                started = time.perf_counter()
                generator.sample(prompts)
                seconds[label].append(time.perf_counter() - started)
    finally:
        generator.guidance_rule = rule
    return {"sampling_overhead": round(min(seconds["edited"]) / min(seconds["plain"]), 3),
            "sampling_seconds_per_image": round(min(seconds["edited"]) / len(prompts), 4)}


def save_run(out: Path, unlearner: Unlearner, card: dict, changed: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    unsaved = type(unlearner).unsaved_reason
    if not unsaved:
        unlearner.generator.save(out / "model", stock_weights=type(unlearner).stock_weights)
    save_file({k: v.contiguous() for k, v in changed.items()}, str(out / "changed.safetensors"))
    for stem, tensors in unlearner.saved_apart().items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{stem}.safetensors"))
    config = {"algorithm": unlearner.name, "target": unlearner.task.target, "seed": unlearner.seed,
              "params": dataclasses.asdict(unlearner.params)}
    if unsaved:
        config["model_not_saved"] = unsaved
    _write_json(out / "config.json", config)
    _write_json(out / "scorecard.json", card)


def _write_json(path: Path, data) -> None:
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(data, indent=2))
    os.replace(partial, path)
