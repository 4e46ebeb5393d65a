"""Distances between batches of images: mean absolute error on [0, 255] and SSIM.

Images are float `Tensor[B, C, H, W]` with values in [0, 1]. Both functions return one value per image
(`Tensor[B]`); take `.mean()` for the batch figure.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

_RANGE_TOLERANCE = 1e-4


def check_images(images: Tensor, name: str) -> None:
    """Raise `ValueError` unless `images` is a float `Tensor[B, C, H, W]` with values in [0, 1].

    Args:
        images: The tensor to check.
        name: The argument name used in the error message.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor[B, C, H, W], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions [B, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}")
    if images.numel() and (images.min() < -_RANGE_TOLERANCE or images.max() > 1 + _RANGE_TOLERANCE):
        raise ValueError(
            f"{name} must have values in [0, 1], got range [{images.min().item():.4g}, {images.max().item():.4g}]"
        )


def _check_pair(a: Tensor, b: Tensor) -> None:
    check_images(a, "a")
    check_images(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def mae_255(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute error per image, in 8-bit intensity units.

    `mae_255(a, b)[i] = 255 / (C H W) * sum_{c, h, w} |a[i, c, h, w] - b[i, c, h, w]|`

    Args:
        a: Images, `Tensor[B, C, H, W]` in [0, 1].
        b: Images of the same shape.

    Returns:
        `Tensor[B]` (float64): the error of each image pair on the [0, 255] scale.
    """
    _check_pair(a, b)
    return 255.0 * (a.double() - b.double()).abs().flatten(1).mean(dim=1)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    a: Tensor,
    b: Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity per image (Wang et al., 2004), with a Gaussian window.

    With local statistics taken under a normalised Gaussian window w (size `window_size`, std `sigma`),
    `mu_a = w * a`, `sigma_a^2 = w * a^2 - mu_a^2`, `sigma_ab = w * (a b) - mu_a mu_b`, and `L = 1` (the
    data range), `C1 = (k1 L)^2`, `C2 = (k2 L)^2`:

    `SSIM = mean over channels and valid window positions of
    (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2))`.

    Windows are placed only where they fit inside the image (no padding), as in the reference implementation.

    Args:
        a: Images, `Tensor[B, C, H, W]` in [0, 1].
        b: Images of the same shape.
        window_size: Side of the square Gaussian window; at most `min(H, W)`.
        sigma: Standard deviation of the Gaussian window, in pixels.
        k1: Luminance stabiliser constant.
        k2: Contrast stabiliser constant.

    Returns:
        `Tensor[B]` (float64): SSIM of each image pair, 1 for identical images, in [-1, 1].
    """
    _check_pair(a, b)
    _, channels, height, width = a.shape
    if window_size < 1 or window_size > min(height, width):
        raise ValueError(f"window_size must be between 1 and min(H, W) = {min(height, width)}, got {window_size}")
    a = a.double()
    b = b.double()
    window = _gaussian_window(window_size, sigma, a.dtype, a.device).expand(channels, 1, window_size, window_size)

    def local_mean(x: Tensor) -> Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov_ab = local_mean(a * b) - mu_a * mu_b
    c1, c2 = k1**2, k2**2
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * cov_ab + c2) / (var_a + var_b + c2)
    return (luminance * contrast_structure).flatten(1).mean(dim=1)


def ground_truth_distance(edited: Tensor, true_counterfactual: Tensor) -> dict[str, float]:
    """Distance between edited images and the true counterfactual images (procedural data only).

    `l1 = mean |edited - true_counterfactual|` over all pixels on the [0, 1] scale, `mae_255 = 255 * l1`,
    `ssim` = mean SSIM (see `ssim`).

    Args:
        edited: Edited images, `Tensor[B, C, H, W]` in [0, 1].
        true_counterfactual: The images the generating process gives for the same individuals under the
            same intervention, same shape.

    Returns:
        `{"l1": float, "mae_255": float, "ssim": float}`, batch means.
    """
    error = mae_255(edited, true_counterfactual).mean().item()
    return {"l1": error / 255.0, "mae_255": error, "ssim": ssim(edited, true_counterfactual).mean().item()}
