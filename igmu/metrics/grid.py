"""Before/after image grid: the rows an evaluation context shows, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_grid(ctx, path: str | Path, per_row: int = 4, upscale: int = 2) -> Path:
    """The rows the context's kind shows (`grid_rows`), stacked into one PNG."""
    return _write(ctx.grid_rows(per_row), path, upscale)


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
