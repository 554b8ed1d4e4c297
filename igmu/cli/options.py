"""Options that several commands share: where a model runs, and how a real model is evaluated."""

from __future__ import annotations

import functools

import click

PRECISIONS = ("fp32", "fp16", "bf16")


def model_options(command):
    """--precision and --device."""
    command = click.option("--device", default=None,
                           help="torch device, e.g. cuda, cuda:1 or cpu (default: cuda when available).")(command)
    return click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS),
                        help="Weights and activations precision; fp16/bf16 need CUDA.")(command)


EVAL_OPTIONS = (
    click.option("--category", default=None,
                 help="Target category for a real model: nudity (sensitive), object, style, celebrity or prompt "
                      "(default: inferred from the shipped label sets)."),
    click.option("--prompts", "prompts_file", default=None, help="Prompt file replacing shipped sets: CSV (igmu or "
                 "I2P columns), JSONL or a plain list (.txt)."),
    click.option("--split", default="validation", show_default=True, help="Prompt split: validation or test."),
    click.option("--scheduler", default=None, help="Sampler: ddim, pndm, euler, dpm or ddpm (default ddim)."),
    click.option("--steps", default=None, type=int, help="Sampling steps (default: 50 full, 20 small)."),
    click.option("--guidance", default=None, type=float, help="Guidance scale (default 7.5)."),
    click.option("--batch-size", default=None, type=int, help="Images per UNet batch (a memory budget)."),
    click.option("--judges", "judges_file", default=None, help="Judges YAML (NudeNet threshold/classes, CLIP model)."),
    click.option("--clip-model", default=None, help="CLIP judge: hub id in the local cache or a local folder."),
)


def eval_options(command):
    return functools.reduce(lambda c, option: option(c), reversed(EVAL_OPTIONS), command)


def eval_settings(category, prompts_file, split, scheduler, steps, guidance, batch_size, judges_file, clip_model,
                  precision):
    from igmu.metrics.context import EvalSettings

    return EvalSettings(category=category, prompts=prompts_file, split=split, scheduler=scheduler, steps=steps,
                        guidance=guidance, batch_size=batch_size, judges=judges_file, clip_model=clip_model,
                        precision=precision)


EVAL_KEYS = ("category", "prompts_file", "split", "scheduler", "steps", "guidance", "batch_size", "judges_file",
             "clip_model")


def pop_eval_settings(kwargs: dict, precision: str):
    """Remove the evaluation options from a command's keyword arguments and return them as settings."""
    return eval_settings(*(kwargs.pop(key) for key in EVAL_KEYS), precision=precision)
