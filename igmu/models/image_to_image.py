"""The world's image-to-image generator: a small UNet that inpaints and outpaints 32x32 renders.

Li et al. (ICLR 2024) unlearn encoder-decoder generators (MAE, VQ-GAN, Palette) by tuning only the
encoder, so the model keeps the two halves as separate submodules: `encoder` maps a masked image
T(x) (RGB with the hidden region greyed out, plus the mask as a fourth channel) to a list of
feature maps, one per resolution; `decoder` turns that list back into a full RGB image. The
decoder's skip connections read the encoder's feature maps, so the encoder's output *is* every
feature the decoder sees (Palette's "embedding" is likewise the list of UNet encoder features).

Mask transforms T: "center" hides the central CENTER_MASK x CENTER_MASK square (inpainting);
"half" hides the right half (outpainting). The decoder regenerates the whole image, not only the
hidden region, as MAE and MAGE do, so a forgotten input yields a changed image everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from igmu.errors import UsageError
from igmu.models.kinds import WorldKind
from igmu.models.text_to_image import default_device

MASK_TYPES = ("center", "half")
CONFIG_FILE = "i2i.json"
WEIGHTS_FILE = "model.safetensors"
# Grey, the mean of the world's backgrounds and fills: the masked region carries no colour cue.
MASK_FILL = 0.5
DEFAULT_CONFIG = {"image_size": 32, "widths": [16, 48, 96], "center_mask": 12}


def mask_for(kind: str, image_size: int, center_mask: int) -> torch.Tensor:
    """[1, 1, H, W], 1 where the pixel is hidden."""
    mask = torch.zeros(1, 1, image_size, image_size)
    if kind == "center":
        start = (image_size - center_mask) // 2
        mask[..., start:start + center_mask, start:start + center_mask] = 1.0
    elif kind == "half":
        mask[..., image_size // 2:] = 1.0
    else:
        raise UsageError(f"unknown mask type {kind!r}; valid: {', '.join(MASK_TYPES)}")
    return mask


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class Encoder(nn.Module):
    """T(x) [N, 4, H, W] -> feature maps at H, H/2, H/4, H/8 (the embedding E(T(x)))."""

    def __init__(self, widths: list[int]):
        super().__init__()
        first, *rest = widths
        self.stem = _block(4, first)
        self.downs = nn.ModuleList(_block(a, b, stride=2) for a, b in zip(widths, [*rest, widths[-1]]))

    def forward(self, masked: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(masked)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class Decoder(nn.Module):
    """Feature maps (coarsest last) -> RGB image in [0, 1], upsampling with skip connections."""

    def __init__(self, widths: list[int]):
        super().__init__()
        ins = [*widths[1:], widths[-1]]  # channels arriving from the coarser level
        self.ups = nn.ModuleList(_block(c_in + c_skip, c_skip) for c_in, c_skip in zip(ins, widths))
        self.head = nn.Conv2d(widths[0], 3, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(reversed(self.ups), reversed(features[:-1])):
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            x = up(torch.cat([x, skip], dim=1))
        return torch.sigmoid(self.head(x))


class WorldImageToImage(WorldKind):
    """The world's image-to-image generator: an encoder and a decoder that inpaint and outpaint renders."""

    name = "i2i"
    description = "the embedded world's image-to-image (inpainting/outpainting) generator"
    shipped_folder_name = "i2i"

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        return (folder / CONFIG_FILE).is_file()

    @classmethod
    def load_folder(cls, folder: Path, device: str | None, precision: str):
        if precision != "fp32":
            raise UsageError(f"precision {precision!r}: the image-to-image generator runs in fp32; valid: fp32")
        return load_i2i_folder(folder, device)


class I2IGenerator(nn.Module):
    """Encoder + decoder, and the mask transform T that feeds them."""

    kind = WorldImageToImage

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.encoder = Encoder(self.config["widths"])
        self.decoder = Decoder(self.config["widths"])
        self.source = ""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def mask(self, kind: str) -> torch.Tensor:
        return mask_for(kind, self.config["image_size"], self.config["center_mask"]).to(self.device)

    def transform(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        """T(x): the hidden region set to MASK_FILL, the mask appended as a channel."""
        mask = self.mask(kind)
        images = images.to(self.device)
        hidden = images * (1 - mask) + MASK_FILL * mask
        return torch.cat([hidden, mask.expand(len(images), -1, -1, -1)], dim=1)

    def forward(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        return self.decoder(self.encoder(self.transform(images, kind)))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, kind: str, batch_size: int = 256) -> torch.Tensor:
        """The generator's output for masked `images`, on the CPU."""
        return torch.cat([self(images[i:i + batch_size], kind).float().cpu()
                          for i in range(0, len(images), batch_size)])

    def train_mode(self, on: bool) -> None:
        """Training or evaluation mode of the part unlearning edits (the encoder)."""
        self.encoder.train(on)

    def save(self, path: str | os.PathLike, stock_weights: bool = True) -> None:
        """Config and safetensors weights. `stock_weights` is accepted for the one `save` interface of
        generators; no stock pipeline loads this igmu-only format, so there is nothing to keep it from."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(self.config, indent=2))


def load_i2i_folder(folder: Path, device: str | None = None) -> I2IGenerator:
    """An image-to-image generator saved by igmu (its config and safetensors weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (folder / CONFIG_FILE).is_file():
        raise UsageError(f"{str(folder)!r} is not an image-to-image model folder (no {CONFIG_FILE}); valid: "
                         "'base' or a folder saved by 'igmu run --algorithm i2i --out'; build the shipped one "
                         "with 'igmu world build --only i2i'")
    generator = I2IGenerator(json.loads((folder / CONFIG_FILE).read_text()))
    try:
        generator.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise UsageError(f"cannot load {str(folder / WEIGHTS_FILE)!r}: {str(err).splitlines()[0]}") from None
    return generator.to(torch.device(device) if device else default_device()).eval().requires_grad_(False)
