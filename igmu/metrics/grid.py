"""Before/after image grid: the sections an evaluation context shows, as one labelled PNG.

Each section (a prompt set) is a block of image rows, one per model ("original", "unlearned"), one
column per prompt, with the prompt written under its column: a grid someone can read without the
scorecard beside it. World images are 32 px, so tiles are enlarged (nearest neighbour, the pixels
stay honest) until the captions under them have room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# Tiles are enlarged to at least this many pixels across, so a caption fits a few words.
MIN_TILE = 128
GAP = 4
LABEL_WIDTH = 84
LINE_HEIGHT = 13
CAPTION_LINES = 2
BACKGROUND, INK, MUTED = (255, 255, 255), (20, 20, 20), (90, 90, 90)
ELLIPSIS = "..."


@dataclass
class GridSection:
    """One block of the grid: `rows` maps a row label to its images (N, 3, H, W) in [0, 1], and
    `captions` holds one text per column (empty when the images have no prompt)."""

    title: str
    rows: dict[str, torch.Tensor]
    captions: list[str] = field(default_factory=list)


def save_grid(ctx, path: str | Path, per_row: int = 4, upscale: int = 2) -> Path:
    """The sections the context's kind shows (`grid_sections`), labelled, as one PNG."""
    return write_grid(ctx.grid_sections(per_row), path, upscale)


def write_grid(sections: list[GridSection], path: str | Path, upscale: int = 2) -> Path:
    from PIL import Image

    tile = _tile_size(sections, upscale)
    blocks = [_render_section(section, tile) for section in sections]
    width = max(block.width for block in blocks)
    canvas = Image.new("RGB", (width, sum(block.height for block in blocks)), BACKGROUND)
    top = 0
    for block in blocks:
        canvas.paste(block, (0, top))
        top += block.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _tile_size(sections: list[GridSection], upscale: int) -> int:
    """Pixels per tile side: the largest image, enlarged by a whole factor to at least MIN_TILE."""
    side = max(images.shape[-1] for section in sections for images in section.rows.values())
    return side * max(upscale, math.ceil(MIN_TILE / side))


def _render_section(section: GridSection, tile: int):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    columns = max(len(images) for images in section.rows.values())
    caption_height = CAPTION_LINES * LINE_HEIGHT + GAP if any(section.captions) else 0
    width = LABEL_WIDTH + columns * (tile + GAP)
    height = LINE_HEIGHT + GAP + len(section.rows) * (tile + GAP) + caption_height + 2 * GAP
    block = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(block)
    draw.text((GAP, 0), section.title, fill=INK, font=font)
    top = LINE_HEIGHT + GAP
    for label, images in section.rows.items():
        draw.text((GAP, top + tile // 2 - LINE_HEIGHT // 2), label, fill=INK, font=font)
        for column, image in enumerate(images):
            block.paste(_tile(image, tile), (LABEL_WIDTH + column * (tile + GAP), top))
        top += tile + GAP
    for column, caption in enumerate(section.captions[:columns]):
        for line, text in enumerate(caption_lines(caption, tile, draw, font)):
            draw.text((LABEL_WIDTH + column * (tile + GAP), top + line * LINE_HEIGHT), text, fill=MUTED, font=font)
    return block


def _tile(image: torch.Tensor, tile: int):
    from PIL import Image

    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((tile, tile), Image.NEAREST)


def caption_lines(text: str, width: int, draw, font) -> list[str]:
    """`text` wrapped on words into at most CAPTION_LINES lines of `width` pixels, the last cut short."""
    lines, words = [], text.split()
    while words and len(lines) < CAPTION_LINES:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] = _cut(f"{lines[-1]} {' '.join(words)}", width, draw, font)
    return [_cut(line, width, draw, font) if draw.textlength(line, font=font) > width else line for line in lines]


def _cut(text: str, width: int, draw, font) -> str:
    """`text` shortened, with an ellipsis, to fit `width` pixels."""
    while text and draw.textlength(text + ELLIPSIS, font=font) > width:
        text = text[:-1]
    return text.rstrip() + ELLIPSIS
