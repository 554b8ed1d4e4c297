"""Options that several commands share: where a model runs, and how a real model is evaluated."""

from __future__ import annotations

import difflib
import functools

import click

# Copies of the lower layers' fixed sets (metrics.base.BUDGETS, prompts.SPLITS, models.text_to_image
# .SCHEDULERS): importing those would load torch for `igmu --help`. tests/test_cli.py keeps them equal.
PRECISIONS = ("fp32", "fp16", "bf16")
BUDGETS = ("small", "full")
SPLITS = ("validation", "test")
SCHEDULERS = ("ddim", "pndm", "euler", "dpm", "ddpm")


class Choice(click.Choice):
    """click's Choice whose error names the bad value, a close match and the valid set, as igmu's
    other one-line errors do: "Invalid value for '--budget': 'medium'; valid: small, full"."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            close = difflib.get_close_matches(str(value), list(self.choices), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.fail(f"{value!r}{hint}; valid: {', '.join(map(str, self.choices))}", param, ctx)


def budget_option(help_text: str):
    return click.option("--budget", default="full", show_default=True, type=Choice(BUDGETS), help=help_text)


def model_options(command):
    """--precision and --device."""
    command = click.option("--device", default=None,
                           help="torch device, e.g. cuda, cuda:1 or cpu (default: cuda when available).")(command)
    return click.option("--precision", default="fp32", show_default=True, type=Choice(PRECISIONS),
                        help="Weights and activations precision; fp16/bf16 need CUDA.")(command)


EVAL_OPTIONS = (
    click.option("--category", default=None,
                 help="Target category for a real model: nudity (sensitive), object, style, celebrity or prompt "
                      "(default: inferred from the shipped label sets)."),
    click.option("--prompts", "prompts_file", default=None, help="Prompt file replacing shipped sets: CSV (igmu or "
                 "I2P columns), JSONL or a plain list (.txt)."),
    click.option("--split", default="validation", show_default=True, type=Choice(SPLITS), help="Prompt split."),
    click.option("--scheduler", default=None, type=Choice(SCHEDULERS), help="Sampler (default ddim)."),
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
