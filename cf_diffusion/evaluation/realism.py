"""Realism: Fréchet distance (FID) and kernel distance (KID) between two sets of image features.

The features come from any network through `features`. The usual choice, the FID Inception network, cannot be
downloaded here: `load_inception` takes a local copy of NVIDIA's TorchScript `inception-2015-12-05.pt` (as used
by StyleGAN2-ADA / StyleGAN3) when the user has one; otherwise pass the project's factor predictor (or its
feature trunk), and report which network was used, since the numbers are comparable only within one network.
"""

import os
import warnings

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from cf_diffusion.evaluation.image_distance import check_images
from cf_diffusion.images import unit_to_uint8

_IMAGINARY_TOLERANCE = 1e-3


def _feature_matrix(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a feature matrix [N, F], got shape {array.shape}")
    if len(array) < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate statistics, got {len(array)}")
    return array.astype(np.float64)


def _check_same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same width, got {a.shape[1]} and {b.shape[1]}")


def fid(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017).

    `FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`, with sample means and covariances
    (denominator N - 1). The matrix square root is `scipy.linalg.sqrtm`; its imaginary part, numerical noise for
    a product of covariances, is dropped when below 1e-3 on the diagonal and is an error otherwise. When the
    product is singular enough to give a non-finite root, 1e-6 is added to both diagonals (with a warning).

    Args:
        features_a: Features of the first image set, `[N_a, F]`.
        features_b: Features of the second image set, `[N_b, F]`.

    Returns:
        The distance (0 for identical statistics).
    """
    a = _feature_matrix(features_a, "features_a")
    b = _feature_matrix(features_b, "features_b")
    _check_same_width(a, b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        warnings.warn("FID: singular covariance product; adding 1e-6 to the covariance diagonals", stacklevel=2)
        offset = 1e-6 * np.eye(len(cov_a))
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        largest = np.abs(np.diagonal(root).imag).max()
        if largest > _IMAGINARY_TOLERANCE:
            raise ValueError(f"FID: sqrtm(S_a S_b) has imaginary diagonal parts up to {largest:.3g}; expected ~0")
        root = root.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    width = x.shape[1]
    k_xx = (x @ x.T / width + 1) ** 3
    k_yy = (y @ y.T / width + 1) ** 3
    k_xy = (x @ y.T / width + 1) ** 3
    m, n = len(x), len(y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kid(
    features_a: Tensor | np.ndarray,
    features_b: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Kernel Inception distance: the unbiased MMD^2 with a cubic polynomial kernel (Bińkowski et al., 2018).

    With `k(x, y) = (x . y / F + 1)^3` and subsets X (size m) of set a and Y (size n) of set b,
    `MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)`, averaged over `subsets` draws without replacement of
    `min(subset_size, N)` rows from each set. Unbiased, so it can be slightly negative for equal distributions.

    Args:
        features_a: Features of the first image set, `[N_a, F]`.
        features_b: Features of the second image set, `[N_b, F]`.
        subsets: Number of random subsets to average over.
        subset_size: Rows drawn from each set per subset; capped at the size of the smaller set.
        seed: Seed of the subset draws.

    Returns:
        `{"kid": mean over subsets, "kid_std": standard deviation over subsets}`.
    """
    a = _feature_matrix(features_a, "features_a")
    b = _feature_matrix(features_b, "features_b")
    _check_same_width(a, b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets must be >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _polynomial_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
            for _ in range(subsets)
        ]
    )
    return {"kid": float(values.mean()), "kid_std": float(values.std())}


@torch.no_grad()
def features(
    images: Tensor, model: nn.Module, batch_size: int = 64, device: torch.device | str | None = None
) -> Tensor:
    """Run a feature network over a batch of images, in evaluation mode and in chunks.

    Args:
        images: `Tensor[B, C, H, W]` in [0, 1].
        model: Any module mapping `Tensor[b, C, H, W]` in [0, 1] to a tensor `[b, ...]` (an `InceptionFeatures`,
            a factor predictor's trunk, ...). Its training mode is restored afterwards.
        batch_size: Images per forward pass.
        device: Where to run the model and images; default the model's device (CPU for a parameterless model).

    Returns:
        `Tensor[B, F]` (float32, on CPU): the model's outputs flattened per image.
    """
    check_images(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            out = model(images[start : start + batch_size].to(device))
            if not isinstance(out, Tensor):
                raise ValueError(f"model must return a Tensor of features, got {type(out).__name__}")
            outputs.append(out.flatten(1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


class InceptionFeatures(nn.Module):
    """The 2048-d pool features of the FID Inception network, from a TorchScript file.

    Expects NVIDIA's `inception-2015-12-05.pt`, called as `net(uint8 images [B, 3, H, W], return_features=True)`
    (it resizes to 299 px and normalises internally). This wrapper takes `Tensor[B, C, H, W]` in [0, 1] with
    C = 1 or 3, quantises to 8 bits and repeats a single channel to three.

    Args:
        net: The loaded TorchScript network.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        """Map `Tensor[B, C, H, W]` in [0, 1] to `Tensor[B, 2048]` features."""
        if images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects 1 or 3 channels, got {images.shape[1]}")
        pixels = unit_to_uint8(images)
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        return self.net(pixels, return_features=True)


def load_inception(path: str | os.PathLike, device: torch.device | str = "cpu") -> InceptionFeatures:
    """Load the FID Inception network from a local TorchScript file (never downloads).

    Args:
        path: Path to `inception-2015-12-05.pt`.
        device: Where to load it.

    Returns:
        An `InceptionFeatures` module for `features`.
    """
    if not os.path.isfile(path):
        raise ValueError(f"Inception weights not found at {os.fspath(path)!r}; expected a TorchScript .pt file")
    return InceptionFeatures(torch.jit.load(os.fspath(path), map_location=device))
