"""Before/after image grid: one row per prompt set, (original, evaluated) pairs across."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from igmu.metrics.context import EvalContext

GRID_ROWS = ("forget", "retain", "related", "paraphrase")


def save_grid(ctx: EvalContext, path: str | Path, per_row: int = 4, upscale: int = 2) -> Path:
    rows = _i2i_rows(ctx, per_row) if ctx.family == "i2i" else _t2i_rows(ctx, per_row)
    return _write(rows, path, upscale)


def _t2i_rows(ctx: EvalContext, per_row: int) -> list[torch.Tensor]:
    rows = []
    for name in GRID_ROWS:
        if not ctx.prompt_specs[name]:
            continue
        original = ctx.images(name, original=True)[:per_row]
        evaluated = ctx.images(name)[:per_row]
        pairs = torch.stack([original, evaluated], dim=1).flatten(0, 1)  # o0 e0 o1 e1 ...
        rows.append(torch.cat(list(pairs), dim=2))
    return rows


def _i2i_rows(ctx, per_row: int) -> list[torch.Tensor]:
    """Per set and mask type: (real image, original model's output, evaluated model's output) triples."""
    from igmu.metrics.image_to_image import SETS
    from igmu.models.image_to_image import MASK_TYPES

    rows = []
    for name in SETS:
        for mask in MASK_TYPES:
            triples = torch.stack([ctx.real[name][:per_row], ctx.outputs(name, mask, original=True)[:per_row],
                                   ctx.outputs(name, mask)[:per_row]], dim=1).flatten(0, 1)
            rows.append(torch.cat(list(triples), dim=2))
    return rows


def _write(rows: list[torch.Tensor], path: str | Path, upscale: int) -> Path:
    from PIL import Image

    width = max(r.shape[2] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[2])) for r in rows]
    grid = torch.cat(rows, dim=1)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array).resize((array.shape[1] * upscale, array.shape[0] * upscale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
