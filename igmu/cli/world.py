"""`igmu world ...`: the embedded concept world's concepts, prompt sets, build and check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from igmu.cli.options import Choice
from igmu.cli.output import emit, quiet_libraries
from igmu.cli.progress import end_progress, quiet_option


@click.group()
def world() -> None:
    """The embedded concept world: concepts, prompt sets, the shipped generator and judges."""


@world.command("concepts")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def world_concepts(as_json: bool) -> None:
    """List the world's concepts with category, related concepts, synonyms and translations."""
    from igmu.world.concepts import ALL_CONCEPTS

    def table(rows):
        for row in rows:
            translations = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["translations"].items())
            click.echo(f"{row['name']:<10} {row['category']:<10} related={','.join(row['related']):<22} "
                       f"synonyms={','.join(row['synonyms']):<22} {translations}")

    emit([c.to_json() for c in ALL_CONCEPTS], as_json, table)


@world.command("prompts")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def world_prompts(target: str, as_json: bool) -> None:
    """Show the deterministic forget / retain / related / paraphrase prompt sets of TARGET."""
    from igmu.world.prompts import prompt_sets

    def table(sets):
        for name, prompts in sets.items():
            click.echo(f"{name} ({len(prompts)}): {'; '.join(prompts[:4])}{' ...' if len(prompts) > 4 else ''}")

    emit(prompt_sets(target).to_json(), as_json, table)


@world.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--model", default="world", show_default=True, help="Generator to check: 'world' or a folder.")
@click.option("--judge-images", default=2000, show_default=True, type=click.IntRange(10), help="Fresh renders per judge.")
@click.option("--generator-images", default=400, show_default=True, type=click.IntRange(10),
              help="Images sampled from held-out prompts.")
@click.option("--i2i-images", default=1000, show_default=True, type=click.IntRange(10),
              help="Fresh renders the image-to-image generator completes, per mask type.")
def world_check(as_json: bool, model: str, judge_images: int, generator_images: int, i2i_images: int) -> None:
    """Score the judges on fresh renders, the generator on held-out prompts and the image-to-image
    generator on fresh masked renders (exit 1 if below target)."""
    quiet_libraries()
    from igmu.models.check import unmet_targets
    from igmu.models.check import world_check as run_check

    report = run_check(judge_images, generator_images, model, i2i_images)

    def table(rep):
        for group in ("judges", "generator", "i2i"):
            click.echo(f"{group}: " + "  ".join(f"{k}={v:.3f}" for k, v in rep[group].items()))
        click.echo(f"seconds: {rep['seconds']}")

    emit(report, as_json, table)
    unmet = unmet_targets(report)
    if unmet:
        click.echo("below target: " + "; ".join(unmet), err=True)
        sys.exit(1)


@world.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write (default: the shipped assets, IGMU_ASSETS if set).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--judge-steps", default=None, type=click.IntRange(1), help="Judge training steps.")
@click.option("--generator-steps", default=None, type=click.IntRange(1), help="Generator training steps.")
@click.option("--generator-lr", default=None, type=click.FloatRange(1e-6, 1e-1), help="Generator peak learning rate.")
@click.option("--init-from", default=None, type=click.Path(file_okay=False, exists=True),
              help="Continue training this generator folder instead of starting from scratch.")
@click.option("--i2i-steps", default=None, type=click.IntRange(1), help="Image-to-image generator training steps.")
@click.option("--only", type=Choice(["judges", "generator", "i2i"]), default=None, help="Build one part only.")
@quiet_option
def world_build(out: Path | None, seed: int, judge_steps: int | None, generator_steps: int | None,
                generator_lr: float | None, init_from: str | None, i2i_steps: int | None, only: str | None,
                quiet: bool) -> None:
    """Train the judges, the base generator and the image-to-image generator from scratch, seeded,
    and save them as safetensors."""
    quiet_libraries()
    from igmu.models.build import BuildConfig, build_world
    from igmu.threads import use_threads
    from igmu.world.assets import assets_dir

    # Building is done alone and once (its recorded times were measured so): every usable CPU.
    use_threads()

    config = BuildConfig(seed=seed)
    if judge_steps:
        config.judge_steps = judge_steps
    if generator_steps:
        config.generator_steps = generator_steps
    if generator_lr:
        config.generator_lr = generator_lr
    if i2i_steps:
        config.i2i_steps = i2i_steps
    config.init_from = init_from
    parts = (only,) if only else ("judges", "generator", "i2i")
    timings = build_world(out or assets_dir(), config, log=_build_log(quiet), parts=parts)
    end_progress()
    click.echo(json.dumps(timings))


def _build_log(quiet: bool):
    """Every `log_every` steps a line on stderr: a loss history that stays in a log file, where no bar shows."""
    return (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))


