"""Image helpers: the conversions between 8-bit pixels and the float ranges models use ([0, 1] and [-1, 1]), grids
with captions written atomically (training validation, the demo, the command line), and the padding rule for images
smaller than a model."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def unit_to_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Float images in [0, 1] (an array or a tensor, any shape) -> uint8 of the same kind and shape: clipped to
    [0, 1], times 255, rounded."""
    if isinstance(images, torch.Tensor):
        return (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def signed_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float Tensor in [-1, 1] (any shape) -> uint8 Tensor of the same shape: clamped, `(x + 1) * 127.5`, rounded."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def uint8_to_unit(pixels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Pixel values 0..255 (an array, or a tensor, of any dtype and shape) -> float32 of the same kind in [0, 1]."""
    if isinstance(pixels, torch.Tensor):
        return pixels.float() / 255
    return np.asarray(pixels, dtype=np.float32) / np.float32(255)


def uint8_to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 (a Tensor of any dtype and shape) -> float32 Tensor in [-1, 1]: `x / 127.5 - 1`."""
    return pixels.float() / 127.5 - 1.0


def pil_to_signed(images: list[Image.Image]) -> torch.Tensor:
    """8-bit PIL images of one size -> float32 Tensor[B, C, H, W] in [-1, 1], the values diffusers'
    `VaeImageProcessor.preprocess` gives (`x / 255`, then `2 x - 1`), computed in place in the output, so a large image
    costs one float copy rather than several.

    Raises:
        ValueError: If the images are not all of one size and number of channels.
    """
    arrays = [np.array(image) for image in images]
    arrays = [array[..., None] if array.ndim == 2 else array for array in arrays]
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images of one call must share one size and mode, got (height, width, channels) {shapes}")
    height, width, channels = arrays[0].shape
    pixels = torch.empty((len(arrays), channels, height, width), dtype=torch.float32)
    for row, array in zip(pixels, arrays, strict=True):
        row.copy_(torch.from_numpy(array).permute(2, 0, 1))
    return pixels.div_(255).mul_(2).sub_(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float Tensor[B, C, H, W] in [-1, 1] -> uint8 array[B, H, W, 3]."""
    array = signed_to_uint8(images.detach().float().cpu()).permute(0, 2, 3, 1).numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def image_grid(
    images: np.ndarray, columns: int, captions: list[str] | None = None, scale: int = 1, min_width: int = 0
) -> Image.Image:
    """Tiles uint8 images [B, H, W, 3] (or greyscale [B, H, W, 1]) into a grid, optionally with a (multi-line)
    caption under each image.

    Args:
        images: uint8 array[B, H, W, 3] or [B, H, W, 1].
        columns: images per row.
        captions: one text per image (may hold newlines).
        scale: nearest-neighbour upscaling of each image.
        min_width: minimum cell width in pixels (room for captions).
    """
    if images.ndim == 4 and images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    count, height, width = images.shape[:3]
    height, width = height * scale, width * scale
    cell = max(width, min_width)
    rows = -(-count // columns)
    caption_height = 11 * max((c.count("\n") + 1 for c in captions), default=1) + 4 if captions else 0
    grid = Image.new("RGB", (columns * cell, rows * (height + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(count):
        x, y = (i % columns) * cell, (i // columns) * (height + caption_height)
        grid.paste(Image.fromarray(images[i]).resize((width, height), Image.NEAREST), (x + (cell - width) // 2, y))
        if captions:
            draw.multiline_text((x + 2, y + height + 1), captions[i], fill="black", spacing=1)
    return grid


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Writes a PNG atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def pad_image(image: Image.Image, size: int) -> Image.Image:
    """The geometry rule for images smaller than a model's size: `image` centred on a black `size` x `size` canvas
    (left and top get the smaller half of an odd margin). A 28 px digit becomes 32 px with its strokes unchanged,
    as the Morpho-MNIST benchmarks pad it; `padding_box` locates it on the canvas."""
    width, height = image.size
    if width > size or height > size:
        raise ValueError(f"cannot pad a {width}x{height} image to {size}x{size}: it is larger")
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(image, ((size - width) // 2, (size - height) // 2))
    return canvas


def padding_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a `height` x `width` image inside its `pad_image` canvas of side `size`."""
    top, left = (size - height) // 2, (size - width) // 2
    return top, left, top + height, left + width
