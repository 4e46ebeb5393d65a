"""Reading image files as 8-bit pixels: 16-bit greyscale (PIL modes 'I;16' and 'I') is scaled to 8 bit, never
saturated as PIL's own `convert` does."""

from pathlib import Path

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(image: Image.Image) -> Image.Image:
    """`image` with 16-bit greyscale scaled to 8-bit greyscale ('L', 65535 -> 255); other modes as they are."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64) / 257
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def read_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """The image file at `path`, fully read, in PIL `mode` (16-bit greyscale scaled as in `to_8bit`)."""
    with Image.open(path) as image:
        return to_8bit(image).convert(mode)
