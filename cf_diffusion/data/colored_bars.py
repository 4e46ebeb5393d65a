"""`colored-bars`: the seed paper's "backdoor" experiment (and its "frontdoor" variant) on real handwriting.

Factors: `digit` (0-9), `size` (small/large), `color` (red/green), `bar` (0/1: a bar drawn above the digit).

Backdoor SCM (graph `size <-> color; size -> bar; color -> bar; digit`):
    U_c ~ Bernoulli(0.5)                            hidden confounder
    size  = large  iff u_size  < 0.8 if U_c else 0.2
    color = red    iff u_color < 0.8 if U_c else 0.2  (so more red large digits, more green small ones)
    bar   = 1      iff u_bar   < 0.8 - 0.35 [large] - 0.35 [red]
    digit = floor(10 u_digit)
Frontdoor SCM (graph `color -> size; size -> bar; color <-> bar; digit`):
    color = red    iff u_color < 0.8 if U_c else 0.2
    size  = large  iff u_size  < 0.75 if red else 0.25
    bar   = 1      iff u_bar   < 0.8 - 0.5 [large] - 0.25 U_c
The image noise U_I is the handwriting sample (u_style picks one of scikit-learn's real digits of the class), a
small translation (u_dx, u_dy) and the stroke brightness (u_bright). The digit is drawn below the bar's band, so
an edit of `bar` changes no pixel of the digit and an edit of `color` or `size` none of the bar's band.
"""

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.images import unit_to_uint8

COLORS = {"red": (1.0, 0.18, 0.12), "green": (0.15, 0.95, 0.2)}
BAR_BOX = (-0.62, 0.62, -0.9, -0.7)  # x0, x1, y0, y1 in [-1, 1] image coordinates (y down)
DIGIT_HALF_SIZE = (0.42, 0.64)  # small, large: half the side of the 8x8 digit box
DIGIT_CENTER_Y = (0.32, 0.22)
BAR_VALUE = 0.92


@cache
def handwritten_digits() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits: (Tensor[N, 1, 12, 12] in [0, 1], zero-padded; labels[N]).

    The bundled file is read directly (what `sklearn.datasets.load_digits` reads), which spares every render
    worker the seconds of importing scikit-learn; `load_digits` is the fallback should the file move.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        data = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, labels = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, labels = digits.images, digits.target
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0)[:, None]
    return F.pad(images, (2, 2, 2, 2)), labels.astype(np.int64)


def _class_indices() -> list[np.ndarray]:
    labels = handwritten_digits()[1]
    return [np.flatnonzero(labels == d) for d in range(10)]


def _supersampling(resolution: int) -> int:
    return max(1, min(4, 128 // resolution))


def _pixel_centres(resolution: int, supersample: int) -> torch.Tensor:
    """Sub-pixel centre coordinates in [-1, 1] along one axis of a supersampled canvas: Tensor[R, S]."""
    side = resolution * supersample
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    return coords.reshape(resolution, supersample)


def _cubic_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (A = -0.75) interpolation weights of `grid_sample` (zero padding, align_corners=False) along one axis.

    Args:
        coords: Tensor[..., S] of normalised sample coordinates in the input's [-1, 1] frame.
        size: number of input pixels along the axis.

    Returns:
        Tensor[..., S, size]: row s holds the weight of every input pixel for sample s.
    """
    a = -0.75
    u = ((coords + 1) * size - 1) / 2
    base = torch.floor(u)
    t = u - base
    taps = [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
    ]
    taps.append(1 - taps[0] - taps[1] - taps[2])
    weights = torch.zeros(*coords.shape, size)
    for k, w in enumerate(taps):
        index = base.long() + (k - 1)
        inside = (index >= 0) & (index < size)
        weights.scatter_add_(-1, index.clamp(0, size - 1)[..., None], (w * inside)[..., None])
    return weights


class ColoredBars(ProceduralDataset):
    """The `colored-bars` dataset (see the module docstring for its SCMs).

    Args:
        variant: "backdoor" (the seed's experiment) or "frontdoor".
    """

    default_resolution = 32

    def __init__(self, variant: str = "backdoor"):
        if variant not in ("backdoor", "frontdoor"):
            raise ValueError(f"Unknown colored-bars variant {variant!r}; expected 'backdoor' or 'frontdoor'.")
        self.variant = variant
        self.name = "colored-bars" if variant == "backdoor" else "colored-bars-frontdoor"

    @property
    def graph(self) -> CausalGraph:
        if self.variant == "backdoor":
            return CausalGraph.parse("size <-> color; size -> bar; color -> bar; digit")
        return CausalGraph.parse("color -> size; size -> bar; color <-> bar; digit")

    @property
    def schema(self) -> FactorSchema:
        return FactorSchema(
            [
                Factor.categorical("digit", [str(d) for d in range(10)]),
                Factor.categorical("size", ["small", "large"]),
                Factor.categorical("color", ["red", "green"]),
                Factor.binary("bar"),
            ]
        )

    def prepare(self) -> None:
        """Loads scikit-learn's digits."""
        handwritten_digits()

    def sample_exogenous(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        names = ("u_size", "u_color", "u_bar", "u_digit", "u_style", "u_dx", "u_dy", "u_bright")
        noise = {name: rng.random(n) for name in names}
        noise["u_confounder"] = (rng.random(n) < 0.5).astype(np.int64)
        return noise

    def mechanisms(self, exogenous: dict[str, np.ndarray], interventions: dict[str, np.ndarray]) -> dict:
        u = exogenous
        conf = u["u_confounder"] == 1

        def assign(name: str, natural: np.ndarray) -> np.ndarray:
            return interventions[name].astype(np.int64) if name in interventions else natural.astype(np.int64)

        digit = assign("digit", np.minimum((u["u_digit"] * 10).astype(np.int64), 9))
        red = np.where(conf, 0.8, 0.2) > u["u_color"]
        color = assign("color", np.where(red, 0, 1))  # level 0 = red
        if self.variant == "backdoor":
            size = assign("size", np.where(conf, 0.8, 0.2) > u["u_size"])
            p_bar = 0.8 - 0.35 * (size == 1) - 0.35 * (color == 0)
        else:
            size = assign("size", np.where(color == 0, 0.75, 0.25) > u["u_size"])
            p_bar = 0.8 - 0.5 * (size == 1) - 0.25 * conf
        bar = assign("bar", u["u_bar"] < p_bar)
        return {"digit": digit, "size": size, "color": color, "bar": bar}

    def _render_chunk(self, factors: dict, exogenous: dict, resolution: int) -> np.ndarray:
        """Renders rows separably: uint8 array[B, R, R, 3].

        The glyph is only scaled and shifted along each axis, so its supersampled bicubic resampling averaged over
        each output pixel is `W_y G W_x^T`, with the interpolation weights averaged over each pixel's sub-samples.
        """
        images, _ = handwritten_digits()
        indices = _class_indices()
        digit, size, color, bar = (np.asarray(factors[k], dtype=np.int64) for k in ("digit", "size", "color", "bar"))
        style = np.asarray(exogenous["u_style"])
        pick = np.array(
            [indices[d][min(int(s * len(indices[d])), len(indices[d]) - 1)] for d, s in zip(digit, style, strict=True)]
        )
        glyphs = images[torch.from_numpy(pick.astype(np.int64)), 0]  # [B, 12, 12]
        half = torch.tensor(DIGIT_HALF_SIZE, dtype=torch.float32)[torch.from_numpy(size)]
        cy = torch.tensor(DIGIT_CENTER_Y, dtype=torch.float32)[torch.from_numpy(size)]
        cx = torch.from_numpy((np.asarray(exogenous["u_dx"]) - 0.5) * 0.2).float()
        cy = cy + torch.from_numpy((np.asarray(exogenous["u_dy"]) - 0.5) * 0.1).float()
        centres = _pixel_centres(resolution, _supersampling(resolution))  # [R, S]
        # The 8x8 glyph fills [-8/12, 8/12] of the padded 12x12 canvas that grid_sample sees as [-1, 1].
        scale = (8 / 12) / half[:, None, None]
        weights_x = _cubic_weights((centres - cx[:, None, None]) * scale, glyphs.shape[-1]).mean(2)  # [B, R, 12]
        weights_y = _cubic_weights((centres - cy[:, None, None]) * scale, glyphs.shape[-2]).mean(2)
        ink = (weights_y @ glyphs @ weights_x.transpose(1, 2)).clamp(0, 1)[:, None]  # [B, 1, R, R]
        brightness = torch.from_numpy(0.8 + 0.2 * np.asarray(exogenous["u_bright"])).float()
        rgb = torch.tensor([COLORS["red"], COLORS["green"]])[torch.from_numpy(color)]
        canvas = ink * brightness[:, None, None, None] * rgb[:, :, None, None]
        x0, x1, y0, y1 = BAR_BOX
        band_x = ((centres >= x0) & (centres <= x1)).float().mean(1)
        band_y = ((centres >= y0) & (centres <= y1)).float().mean(1)
        band = band_y[:, None] * band_x[None, :] * BAR_VALUE
        canvas = canvas + band * torch.from_numpy(bar).float()[:, None, None, None]
        return unit_to_uint8(canvas).permute(0, 2, 3, 1).numpy()
