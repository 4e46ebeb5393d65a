"""`morpho`: the Morpho-MNIST "global thickness -> intensity" SCM on real handwriting (scikit-learn's digits).

SCM (graph `thickness -> intensity; digit`), as in Morpho-MNIST (Castro et al., 2019; Pawlowski et al., 2020):
    thickness = 0.5 + u_thickness,            u_thickness ~ Gamma(concentration 10, rate 5), truncated at 7
    intensity = 64 + 191 sigmoid(2 (thickness - 2.5) + 0.5 u_intensity),   u_intensity ~ Normal(0, 1)
    digit     = floor(10 u_digit)
The image noise U_I is the handwriting sample (u_style picks one of scikit-learn's real digits of the class) and
a small translation (u_dx, u_dy, up to half a pixel-unit either way).

Rendering: the 8x8 digit is upsampled (bicubic) onto a 20 x 20 unit box centred in a 32 x 32 unit frame (MNIST's
20 px digit box in its 28 px image, padded to 32 as benchmarks do; one unit = one pixel at 32 px), its
foreground is thinned to a skeleton, and the stroke is redrawn at the row's thickness as every point within
thickness / 2 of the (smoothed, densified) skeleton, anti-aliased by the exact distance at any resolution. The
grey levels are then scaled so that the median foreground intensity (pixels >= min + 0.5 (max - min)) equals
the row's intensity, on a black background; the image is grey, repeated over three channels.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cf_diffusion.data.colored_bars import handwritten_digits
from cf_diffusion.data.measure import foreground_masks, mean_stroke_thickness, median_foreground_intensity, skeletonize
from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph

FRAME_UNITS = 32.0  # side of the image in thickness units (pixels of a 32 px image)
BOX_HALF_UNITS = 10.0  # half the side of the digit box
SKELETON_PIXELS_PER_UNIT = 2  # resolution of the canvas the glyphs are thinned on
SKELETON_CANVAS_UNITS = 24.0  # the thinning canvas: the digit box plus 2 units each side
MAX_GAMMA = 7.0
THICKNESS_RANGE = (0.5, 0.5 + MAX_GAMMA)
INTENSITY_RANGE = (64.0, 255.0)
_FAR = 1.0e4  # coordinate of the padding points of short skeletons


class _Skeletons:
    """Per-process cache of the skeleton points of scikit-learn's digits, thinned on demand."""

    def __init__(self) -> None:
        self.points: dict[int, np.ndarray] = {}

    def get(self, indices: np.ndarray) -> list[np.ndarray]:
        """Skeleton points of glyphs: list of float32 arrays[K_i, 2] of (x, y) units from the frame centre."""
        missing = sorted(set(int(i) for i in indices) - set(self.points))
        if missing:
            self.points.update(zip(missing, _thin_glyphs(np.array(missing)), strict=True))
        return [self.points[int(i)] for i in indices]


def _thin_glyphs(indices: np.ndarray) -> list[np.ndarray]:
    """Skeleton points of glyphs `indices`: smoothed skeleton pixels plus midpoints of neighbouring pairs."""
    images, _ = handwritten_digits()
    side = int(SKELETON_CANVAS_UNITS * SKELETON_PIXELS_PER_UNIT)
    coords = ((torch.arange(side, dtype=torch.float32) + 0.5) / side - 0.5) * SKELETON_CANVAS_UNITS
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    # The 8x8 glyph fills [-8/12, 8/12] of the padded 12x12 canvas that grid_sample sees as [-1, 1].
    grid = (torch.stack([x, y], -1) / BOX_HALF_UNITS * (8 / 12))[None].expand(len(indices), -1, -1, -1)
    glyphs = images[torch.from_numpy(indices)]
    ink = F.grid_sample(glyphs, grid, mode="bicubic", padding_mode="zeros", align_corners=False)[:, 0]
    skeletons = skeletonize(foreground_masks(ink.numpy()))
    units = coords.numpy().astype(np.float64)
    out = []
    for skeleton in skeletons:
        neighbours = ndimage.convolve(skeleton.astype(np.float64), np.ones((3, 3)), mode="constant")
        sum_x = ndimage.convolve(skeleton * units[None, :], np.ones((3, 3)), mode="constant")
        sum_y = ndimage.convolve(skeleton * units[:, None], np.ones((3, 3)), mode="constant")
        rows, cols = np.nonzero(skeleton)
        smooth = np.stack([sum_x[rows, cols], sum_y[rows, cols]], 1) / neighbours[rows, cols, None]
        lookup = -np.ones(skeleton.shape, dtype=np.int64)
        lookup[rows, cols] = np.arange(len(rows))
        padded = np.pad(lookup, 1, constant_values=-1)
        pairs = []
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            other = padded[rows + 1 + dr, cols + 1 + dc]
            keep = other >= 0
            pairs.append(np.stack([np.flatnonzero(keep), other[keep]], 1))
        pairs = np.concatenate(pairs)
        midpoints = (smooth[pairs[:, 0]] + smooth[pairs[:, 1]]) / 2
        out.append(np.concatenate([smooth, midpoints]).astype(np.float32))
    return out


_SKELETONS = _Skeletons()


class Morpho(ProceduralDataset):
    """The `morpho` dataset: Morpho-MNIST's thickness -> intensity SCM (see the module docstring)."""

    name = "morpho"
    default_resolution = 32

    @property
    def graph(self) -> CausalGraph:
        return CausalGraph.parse("thickness -> intensity; digit")

    @property
    def schema(self) -> FactorSchema:
        return FactorSchema(
            [
                Factor.categorical("digit", [str(d) for d in range(10)]),
                Factor.continuous("thickness", *THICKNESS_RANGE),
                Factor.continuous("intensity", *INTENSITY_RANGE),
            ]
        )

    def prepare(self) -> None:
        """Thins every glyph of scikit-learn's digits once, so that renders only look them up."""
        _SKELETONS.get(np.arange(len(handwritten_digits()[1])))

    def sample_exogenous(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "u_digit": rng.random(n),
            "u_thickness": np.minimum(rng.gamma(10.0, 1.0 / 5.0, n), MAX_GAMMA),
            "u_intensity": rng.standard_normal(n),
            "u_style": rng.random(n),
            "u_dx": rng.random(n),
            "u_dy": rng.random(n),
        }

    def mechanisms(self, exogenous: dict[str, np.ndarray], interventions: dict[str, np.ndarray]) -> dict:
        u = exogenous

        def assign(name: str, natural: np.ndarray, dtype: type) -> np.ndarray:
            return np.asarray(interventions[name] if name in interventions else natural, dtype=dtype)

        digit = assign("digit", np.minimum((u["u_digit"] * 10).astype(np.int64), 9), np.int64)
        thickness = assign("thickness", 0.5 + u["u_thickness"], np.float64)
        logit = 2.0 * (thickness - 2.5) + 0.5 * u["u_intensity"]
        intensity = assign("intensity", 64.0 + 191.0 / (1.0 + np.exp(-logit)), np.float64)
        return {"digit": digit, "thickness": thickness, "intensity": intensity}

    chunk_pixels = 1 << 16

    def _render_chunk(self, factors: dict, exogenous: dict, resolution: int) -> np.ndarray:
        _, labels = handwritten_digits()
        digit = np.asarray(factors["digit"], dtype=np.int64)
        style = np.asarray(exogenous["u_style"])
        classes = [np.flatnonzero(labels == d) for d in range(10)]
        pick = np.array(
            [classes[d][min(int(s * len(classes[d])), len(classes[d]) - 1)] for d, s in zip(digit, style, strict=True)]
        )
        skeletons = _SKELETONS.get(pick)
        longest = max(len(p) for p in skeletons)
        points = torch.full((len(pick), longest, 2), _FAR)
        for i, p in enumerate(skeletons):
            points[i, : len(p)] = torch.from_numpy(p)
        shift = np.stack([np.asarray(exogenous["u_dx"]), np.asarray(exogenous["u_dy"])], 1) - 0.5
        points = points + torch.from_numpy(shift).float()[:, None]
        coords = ((torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution - 0.5) * FRAME_UNITS
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        pixels = torch.stack([x, y], -1).reshape(-1, 2)
        # Squared distances as |p|^2 + |q|^2 - 2 p.q (one batched matmul), minimised before the square root.
        block = max(1, (1 << 22) // (len(pick) * longest))
        point_norms = points.square().sum(-1)[:, None, :]
        nearest = []
        for i in range(0, len(pixels), block):
            part = pixels[i : i + block]
            squared = torch.baddbmm(
                point_norms, part[None].expand(len(pick), -1, -1), points.transpose(1, 2), alpha=-2
            )
            nearest.append((squared.amin(-1) + part.square().sum(-1)).clamp(min=0).sqrt())
        distance = torch.cat(nearest, dim=1)
        pixels_per_unit = resolution / FRAME_UNITS
        half = torch.from_numpy(np.asarray(factors["thickness"], dtype=np.float32) / 2)[:, None]
        coverage = ((half - distance) * pixels_per_unit + 0.5).clamp(0, 1).numpy().astype(np.float64)
        peak = coverage.max(axis=1, keepdims=True)
        foreground = np.where(coverage >= 0.5 * peak, coverage, np.nan)
        median = np.nanmedian(foreground, axis=1, keepdims=True)
        intensity = np.asarray(factors["intensity"], dtype=np.float64)[:, None]
        gray = np.clip(np.round(coverage * intensity / median), 0, 255).astype(np.uint8)
        return np.repeat(gray.reshape(len(pick), resolution, resolution, 1), 3, axis=-1)

    @staticmethod
    def measure(images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Measures thickness and intensity of `morpho` images at any resolution.

        Args:
            images: uint8 array/Tensor [N, R, R, 3] or [N, R, R] as rendered.

        Returns:
            {"thickness": array[N] in frame units, "intensity": array[N] in 0-255 grey levels}.
        """
        side = np.asarray(images.shape)[1]
        return {
            "thickness": mean_stroke_thickness(images, pixel_size=FRAME_UNITS / side),
            "intensity": median_foreground_intensity(images),
        }
