"""Images in and scores out of the judges application, without Ray: checks and decoding shared by the
HTTP endpoint, the handle path and the clients.

A batch travels as float32 [N, 3, S, S] in [0, 1] (exact: what the judges read in-process), uint8
(divided by 255) in NCHW or NHWC layout, or PNG files. Anything else is a `JudgeInputError`, whose
one-line message the endpoint returns with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

ARRAY_DTYPES = ("float32", "uint8")
IMAGE_FORMATS = ("npy", "png")


class JudgeInputError(ValueError):
    """A request the judges cannot score; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(" ".join(message.split()))
        self.status = status


def check_count(count: int, max_images: int) -> None:
    if count == 0:
        raise JudgeInputError("no images in the request; send at least one")
    if count > max_images:
        raise JudgeInputError(f"{count} images in one request; the maximum is {max_images} "
                              "(max_images_per_request); split the batch", status=413)


def to_judge_array(array: np.ndarray, image_size: int) -> np.ndarray:
    """float32 [N, 3, S, S] in [0, 1] from a float32 or uint8 batch (NCHW, or NHWC for either)."""
    if not isinstance(array, np.ndarray):
        raise JudgeInputError(f"images must be a numpy array, got {type(array).__name__}")
    if array.dtype.name not in ARRAY_DTYPES:
        raise JudgeInputError(f"dtype {array.dtype.name} is not accepted; valid: {', '.join(ARRAY_DTYPES)}")
    expected = f"[N, 3, {image_size}, {image_size}] or [N, {image_size}, {image_size}, 3]"
    if array.ndim != 4:
        raise JudgeInputError(f"shape {list(array.shape)} is not a batch of images; valid: {expected}")
    if array.shape[1:] == (image_size, image_size, 3) and array.shape[1] != 3:
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1:] != (3, image_size, image_size):
        raise JudgeInputError(f"shape {list(array.shape)} does not match the judges' input; valid: {expected}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array, dtype=np.float32) / np.float32(255.0)
    if not np.isfinite(array).all() or array.min(initial=0.0) < 0.0 or array.max(initial=0.0) > 1.0:
        raise JudgeInputError("float32 images must be finite and within [0, 1]")
    return np.ascontiguousarray(array)


def decode_npy(text: str) -> np.ndarray:
    """A base64 `.npy` file (numpy.save format, never pickled objects)."""
    try:
        return np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False)
    except (binascii.Error, ValueError, TypeError, OSError, EOFError) as err:
        raise JudgeInputError(f"images.npy is not a base64 .npy array: {type(err).__name__}") from None


def decode_png(text: str, index: int) -> np.ndarray:
    """One base64 PNG as uint8 [H, W, 3]; RGBA and greyscale are converted to RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
            image_format, pixels = image.format, np.asarray(image.convert("RGB"))
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError, TypeError, SyntaxError) as err:
        raise JudgeInputError(f"images.png[{index}] cannot be decoded as PNG: {type(err).__name__}") from None
    if image_format != "PNG":
        raise JudgeInputError(f"images.png[{index}] is {image_format}, not PNG")
    return pixels


def decode_images(payload: object, image_size: int, max_images: int) -> np.ndarray:
    """The `images` member of an HTTP request: {"npy": base64} or {"png": [base64, ...]}."""
    if not isinstance(payload, dict) or len(payload) != 1 or next(iter(payload)) not in IMAGE_FORMATS:
        raise JudgeInputError(f"'images' must be an object with one key; valid: {', '.join(IMAGE_FORMATS)}")
    (kind, value), = payload.items()
    if kind == "npy":
        if not isinstance(value, str):
            raise JudgeInputError("images.npy must be a base64 string of a .npy file")
        array = decode_npy(value)
        check_count(len(array) if array.ndim else 0, max_images)
        return to_judge_array(array, image_size)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise JudgeInputError("images.png must be a list of base64 PNG strings")
    check_count(len(value), max_images)
    frames = [decode_png(item, i) for i, item in enumerate(value)]
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (image_size, image_size):
            raise JudgeInputError(f"images.png[{i}] is {frame.shape[1]}x{frame.shape[0]}; "
                                  f"valid: {image_size}x{image_size}")
    return to_judge_array(np.stack(frames), image_size)


def encode_npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")



def forward_merged(arrays: list[np.ndarray], forward) -> list:
    """`forward` once over the requests' images concatenated, its output (rows of an array or a list,
    or a dict of such) split back into one result per request, in order."""
    output = forward(np.concatenate(arrays))
    results, start = [], 0
    for array in arrays:
        end = start + len(array)
        results.append({k: v[start:end] for k, v in output.items()} if isinstance(output, dict)
                        else output[start:end])
        start = end
    return results
