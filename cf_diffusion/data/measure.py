"""Morphometry of digit images: skeletons, mean stroke thickness and median foreground intensity.

These are the Morpho-MNIST measurements (Castro et al., 2019), used to generate `morpho` images and later to
*measure* edits of them: the foreground of an image is its pixels at or above `min + 0.5 (max - min)`; the
thickness is twice the mean distance from the skeleton of the foreground to the background, measured on a
bicubically upsampled image; the intensity is the median value of the foreground pixels.
"""

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


@cache
def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Zhang-Suen deletion tables for both sub-iterations, indexed by the 8-neighbour code (bit k = P(k+2))."""
    tables = []
    for step in (0, 1):
        table = np.zeros(256, dtype=bool)
        for code in range(256):
            p2, p3, p4, p5, p6, p7, p8, p9 = bits = [(code >> k) & 1 for k in range(8)]
            transitions = sum(bits[k] == 0 and bits[(k + 1) % 8] == 1 for k in range(8))
            if step == 0:
                side = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
            else:
                side = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
            table[code] = 2 <= sum(bits) <= 6 and transitions == 1 and side
        tables.append(table)
    return tables[0], tables[1]


def skeletonize(masks: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of binary images to one-pixel-wide, connectivity-preserving skeletons.

    Args:
        masks: bool array[N, H, W] (or [H, W]).

    Returns:
        bool array of the same shape, True on the skeleton.
    """
    masks = np.asarray(masks, dtype=bool)
    single = masks.ndim == 2
    image = np.pad(masks[None] if single else masks, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    tables = _thinning_tables()
    active = np.arange(len(image))
    while len(active):
        sub = image[active]
        changed = np.zeros(len(active), dtype=bool)
        for table in tables:
            p = sub
            code = (
                p[:, :-2, 1:-1]
                | p[:, :-2, 2:] << 1
                | p[:, 1:-1, 2:] << 2
                | p[:, 2:, 2:] << 3
                | p[:, 2:, 1:-1] << 4
                | p[:, 2:, :-2] << 5
                | p[:, 1:-1, :-2] << 6
                | p[:, :-2, :-2] << 7
            )
            delete = (p[:, 1:-1, 1:-1] == 1) & table[code]
            changed |= delete.any(axis=(1, 2))
            sub[:, 1:-1, 1:-1][delete] = 0
        image[active] = sub
        active = active[changed]
    out = image[:, 1:-1, 1:-1].astype(bool)
    return out[0] if single else out


def _grayscale(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float64 array[N, H, W] from uint8/float images [N, H, W], [N, H, W, C] (channels last, mean over C)."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    array = array.astype(np.float64)
    if array.ndim == 4:
        array = array.mean(axis=-1)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"images must have shape [N, H, W] or [N, H, W, C], got {array.shape}")
    return array


def foreground_masks(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Morpho-MNIST foreground: pixels >= min + 0.5 (max - min) of each image; bool array[N, H, W]."""
    gray = _grayscale(images)
    low = gray.min(axis=(1, 2), keepdims=True)
    high = gray.max(axis=(1, 2), keepdims=True)
    return (gray >= low + 0.5 * (high - low)) & (high > low)


def median_foreground_intensity(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Median value of the foreground pixels of each image (Morpho-MNIST's intensity).

    Args:
        images: uint8 or float array/Tensor [N, H, W] or [N, H, W, C] (channels are averaged).

    Returns:
        float64 array[N] in the images' units (0-255 for uint8); NaN for a blank image.
    """
    gray = _grayscale(images)
    masks = foreground_masks(gray)
    return np.array([np.median(g[m]) if m.any() else np.nan for g, m in zip(gray, masks, strict=True)])


def mean_stroke_thickness(
    images: np.ndarray | torch.Tensor, upscale: int = 4, pixel_size: float = 1.0, batch_size: int = 256
) -> np.ndarray:
    """Mean stroke thickness of each image, as Morpho-MNIST measures it.

    The image is upsampled `upscale` times (bicubic), its foreground (>= min + 0.5 (max - min)) is thinned to a
    skeleton, and the thickness is twice the mean Euclidean distance from the skeleton pixels to the nearest
    background pixel, divided by `upscale`.

    Args:
        images: uint8 or float array/Tensor [N, H, W] or [N, H, W, C].
        upscale: Upsampling factor before thinning (4 in Morpho-MNIST).
        pixel_size: Thickness units per input pixel (e.g. 32 / R for a `morpho` image rendered at R px).
        batch_size: Images thinned at once (bounds memory).

    Returns:
        float64 array[N] of thicknesses in `pixel_size` units; NaN for a blank image.
    """
    gray = _grayscale(images)
    out = np.full(len(gray), np.nan)
    for start in range(0, len(gray), batch_size):
        batch = torch.from_numpy(gray[start : start + batch_size])[:, None]
        size = (batch.shape[-2] * upscale, batch.shape[-1] * upscale)
        upsampled = F.interpolate(batch, size=size, mode="bicubic", align_corners=False)[:, 0].numpy()
        masks = foreground_masks(upsampled)
        skeletons = skeletonize(masks)
        for i, (mask, skeleton) in enumerate(zip(masks, skeletons, strict=True)):
            if skeleton.any():
                distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
                out[start + i] = 2.0 * distance[skeleton].mean() / upscale * pixel_size
    return out
