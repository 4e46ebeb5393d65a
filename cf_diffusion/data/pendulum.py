"""`pendulum`: the CausalVAE pendulum (Yang et al., 2021), rendered smoothly at any resolution.

Scene (units as in the benchmark): x in [0, 20], y in [-1, 21], stretched onto a square image as the benchmark's
1 x 1 inch matplotlib figure does. The pivot is at (10, 10.5); the rod runs to the ball's centre 8 from the pivot
(ball radius 1.5); the light (radius 3) sits at height 20.5 on the line through the pivot at the light angle.
A point (x, y) casts its shadow on the ground y = -0.5 at x_s = x - (y + 0.5) cot(phi) (the benchmark's
(-0.5 - (y - x tan(phi))) / tan(phi), written so that it stays finite at phi = 90 degrees).

SCM (graph `pendulum_angle -> shadow_position; pendulum_angle -> shadow_length; light_angle -> shadow_position;
light_angle -> shadow_length`; angles in degrees):
    pendulum_angle = 0.9 i,   i = -40 + 84 u_pendulum              (theta = i pi / 200, i in [-40, 44))
    light_angle    = 0.9 j,   j =  60 + 88 u_light                 (phi = j pi / 200, j in [60, 148))
    shadow_position = (x_s(pivot) + x_s(tip)) / 2 + 0.2 n_position
    shadow_length   = max(3, |x_s(pivot) - x_s(tip)|) + 0.2 n_length
where the tip is 9.5 from the pivot and n_position, n_length ~ Normal(0, 1) truncated to [-3, 3]. The angles
are drawn continuously over the benchmark's ranges (its grid of whole i and j without j = 100 is a subset).
The image noise U_I is the background's brightness and tint, and the brightness of the ball and the light.
The shadow is drawn on the ground band y in [-0.9, -0.1], below everything else, so an edit of the shadow
changes no pixel above y = 0, and an edit of the pendulum no pixel of the light (above y = 11).
"""

import numpy as np
import torch

from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.images import unit_to_uint8

SCENE_X = (0.0, 20.0)
SCENE_Y = (-1.0, 21.0)
PIVOT = (10.0, 10.5)
BALL_DISTANCE = 8.0
BALL_RADIUS = 1.5
TIP_DISTANCE = 9.5
LIGHT_HEIGHT = 20.5
LIGHT_RADIUS = 3.0
GROUND = -0.5
SHADOW_BAND = (-0.9, -0.1)
ROD_WIDTH = 0.4
NOISE_SCALE = 0.2
PENDULUM_RANGE = (-36.0, 39.6)
LIGHT_RANGE = (54.0, 133.2)
POSITION_RANGE = (1.0, 21.0)
LENGTH_RANGE = (2.0, 14.0)
BALL_COLOR = (0.70, 0.13, 0.13)
LIGHT_COLOR = (1.0, 0.65, 0.0)
ROD_COLOR = (0.08, 0.08, 0.08)
SHADOW_COLOR = (0.12, 0.12, 0.12)


def shadow_x(x: np.ndarray, y: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Where the light at angle `phi` (radians) casts the shadow of point (x, y) on the ground y = -0.5."""
    return x - (y - GROUND) * np.cos(phi) / np.sin(phi)


def _ellipse_coverage(px: torch.Tensor, py: torch.Tensor, cx, cy, ax: float, ay: float) -> torch.Tensor:
    """Anti-aliased coverage of an axis-aligned ellipse, all in pixel units (first-order signed distance)."""
    dx, dy = (px - cx) / ax, (py - cy) / ay
    k = torch.sqrt(dx.square() + dy.square()).clamp(min=1e-6)
    gradient = torch.sqrt((dx / ax).square() + (dy / ay).square()).clamp(min=1e-6) / k
    return (0.5 - (k - 1) / gradient).clamp(0, 1)


def _segment_coverage(px: torch.Tensor, py: torch.Tensor, x0, y0, x1, y1, width: float) -> torch.Tensor:
    """Anti-aliased coverage of a thick line segment (round caps), all in pixel units."""
    vx, vy = x1 - x0, y1 - y0
    t = (((px - x0) * vx + (py - y0) * vy) / (vx.square() + vy.square()).clamp(min=1e-6)).clamp(0, 1)
    distance = torch.sqrt((px - x0 - t * vx).square() + (py - y0 - t * vy).square())
    return (0.5 - (distance - width / 2)).clamp(0, 1)


def _box_coverage(px: torch.Tensor, py: torch.Tensor, cx, cy, hx, hy) -> torch.Tensor:
    """Anti-aliased coverage of an axis-aligned box with centre (cx, cy) and half sides (hx, hy), in pixels."""
    qx, qy = (px - cx).abs() - hx, (py - cy).abs() - hy
    outside = torch.sqrt(qx.clamp(min=0).square() + qy.clamp(min=0).square())
    return (0.5 - (outside + torch.maximum(qx, qy).clamp(max=0))).clamp(0, 1)


class Pendulum(ProceduralDataset):
    """The `pendulum` dataset: light and pendulum angles cause the shadow (see the module docstring)."""

    name = "pendulum"
    default_resolution = 64

    @property
    def graph(self) -> CausalGraph:
        return CausalGraph.parse(
            "pendulum_angle -> shadow_position; pendulum_angle -> shadow_length; "
            "light_angle -> shadow_position; light_angle -> shadow_length"
        )

    @property
    def schema(self) -> FactorSchema:
        return FactorSchema(
            [
                Factor.continuous("pendulum_angle", *PENDULUM_RANGE),
                Factor.continuous("light_angle", *LIGHT_RANGE),
                Factor.continuous("shadow_position", *POSITION_RANGE),
                Factor.continuous("shadow_length", *LENGTH_RANGE),
            ]
        )

    def sample_exogenous(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        noise = {"u_pendulum": rng.random(n), "u_light": rng.random(n)}
        noise["n_position"] = np.clip(rng.standard_normal(n), -3, 3)
        noise["n_length"] = np.clip(rng.standard_normal(n), -3, 3)
        for name in ("u_background", "u_tint", "u_ball", "u_lamp"):
            noise[name] = rng.random(n)
        return noise

    def mechanisms(self, exogenous: dict[str, np.ndarray], interventions: dict[str, np.ndarray]) -> dict:
        u = exogenous

        def assign(name: str, natural: np.ndarray) -> np.ndarray:
            return np.asarray(interventions[name] if name in interventions else natural, dtype=np.float64)

        pendulum = assign("pendulum_angle", 0.9 * (-40.0 + 84.0 * u["u_pendulum"]))
        light = assign("light_angle", 0.9 * (60.0 + 88.0 * u["u_light"]))
        theta, phi = np.deg2rad(pendulum), np.deg2rad(light)
        pivot = shadow_x(np.full_like(phi, PIVOT[0]), np.full_like(phi, PIVOT[1]), phi)
        tip = shadow_x(PIVOT[0] + TIP_DISTANCE * np.sin(theta), PIVOT[1] - TIP_DISTANCE * np.cos(theta), phi)
        position = assign("shadow_position", (pivot + tip) / 2 + NOISE_SCALE * u["n_position"])
        length = assign("shadow_length", np.maximum(3.0, np.abs(pivot - tip)) + NOISE_SCALE * u["n_length"])
        return {"pendulum_angle": pendulum, "light_angle": light, "shadow_position": position, "shadow_length": length}

    def _render_chunk(self, factors: dict, exogenous: dict, resolution: int) -> np.ndarray:
        def column(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(values, dtype=np.float64)).float()[:, None, None]

        sx = resolution / (SCENE_X[1] - SCENE_X[0])  # pixels per scene unit
        sy = resolution / (SCENE_Y[1] - SCENE_Y[0])
        centres = torch.arange(resolution, dtype=torch.float32) + 0.5
        px, py = centres[None, None, :], centres[None, :, None]

        def to_px(x, y):
            return (x - SCENE_X[0]) * sx, (SCENE_Y[1] - y) * sy

        theta = np.deg2rad(np.asarray(factors["pendulum_angle"], dtype=np.float64))
        phi = np.deg2rad(np.asarray(factors["light_angle"], dtype=np.float64))
        ball_x, ball_y = to_px(
            column(PIVOT[0] + BALL_DISTANCE * np.sin(theta)), column(PIVOT[1] - BALL_DISTANCE * np.cos(theta))
        )
        pivot_x, pivot_y = to_px(torch.full_like(ball_x, PIVOT[0]), torch.full_like(ball_y, PIVOT[1]))
        lamp_x, lamp_y = to_px(column(PIVOT[0] + (LIGHT_HEIGHT - PIVOT[1]) * np.cos(phi) / np.sin(phi)), LIGHT_HEIGHT)
        shadow_cx, shadow_cy = to_px(column(factors["shadow_position"]), (SHADOW_BAND[0] + SHADOW_BAND[1]) / 2)
        shadow_hx = column(factors["shadow_length"]) / 2 * sx
        shadow_hy = (SHADOW_BAND[1] - SHADOW_BAND[0]) / 2 * sy

        brightness = column(0.9 + 0.08 * np.asarray(exogenous["u_background"]))
        tint = column(0.04 * (np.asarray(exogenous["u_tint"]) - 0.5))
        background = brightness[:, None] * torch.stack([1 + tint, torch.ones_like(tint), 1 - tint], dim=1)
        image = background.expand(-1, -1, resolution, resolution)  # [B, 3, R, R]
        layers = [
            (_ellipse_coverage(px, py, lamp_x, lamp_y, LIGHT_RADIUS * sx, LIGHT_RADIUS * sy), LIGHT_COLOR, "u_lamp"),
            (_segment_coverage(px, py, pivot_x, pivot_y, ball_x, ball_y, ROD_WIDTH * (sx + sy) / 2), ROD_COLOR, None),
            (_ellipse_coverage(px, py, ball_x, ball_y, BALL_RADIUS * sx, BALL_RADIUS * sy), BALL_COLOR, "u_ball"),
            (_box_coverage(px, py, shadow_cx, shadow_cy, shadow_hx, shadow_hy), SHADOW_COLOR, None),
        ]
        for coverage, color, noise in layers:
            rgb = torch.tensor(color)[None, :, None, None]
            if noise is not None:
                rgb = rgb * (0.85 + 0.15 * column(exogenous[noise]))[:, None]
            alpha = coverage[:, None]
            image = image * (1 - alpha) + rgb * alpha
        return unit_to_uint8(image).permute(0, 2, 3, 1).numpy()

    @staticmethod
    def measure(images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Reads the four factors off `pendulum` images at any resolution, from colour alone.

        The ball is the reddish pixels (weight `clip((R - G - 0.2) / 0.3, 0, 1)`, G < 0.4), the light the orange ones
        (`clip((R - B - 0.4) / 0.3, 0, 1)`, G > 0.4); each angle follows from the weighted centroid: the pendulum's
        `atan2(x - pivot_x, pivot_y - y)`, the light's `atan2(h - pivot_y, x - pivot_x)` at its known height h (the
        frame cuts off the lamp's top, so its centroid's height is biased). The shadow is read on the
        pixel rows inside the ground band: per column its coverage `clip((b - v) / (b - 0.12), 0, 1)` of the
        background grey b (the image's median) by the shadow grey, maximised over those rows; the length is the
        covered width and the position its centroid, in scene units. A shadow partly outside the frame is read as
        its visible part; a missing ball or light gives NaN.

        Args:
            images: uint8 array/Tensor [N, R, R, 3] as rendered.

        Returns:
            Factor name -> float array[N] in the factors' units (degrees, scene units).
        """
        pixels = torch.as_tensor(np.asarray(images)).double() / 255.0
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"pendulum images must be [N, R, R, 3] uint8, got shape {tuple(pixels.shape)}")
        size = pixels.shape[1]
        centres = torch.arange(size, dtype=torch.float64) + 0.5
        xs = SCENE_X[0] + centres / size * (SCENE_X[1] - SCENE_X[0])
        ys = SCENE_Y[1] - centres / size * (SCENE_Y[1] - SCENE_Y[0])
        r, g, b = pixels.unbind(-1)

        def centroid(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            total = weights.sum((1, 2))
            x = (weights * xs[None, None, :]).sum((1, 2)) / total
            y = (weights * ys[None, :, None]).sum((1, 2)) / total
            return x, y

        ball_x, ball_y = centroid(((r - g - 0.2) / 0.3).clamp(0, 1) * (g < 0.4))
        lamp_x, _ = centroid(((r - b - 0.4) / 0.3).clamp(0, 1) * (g > 0.4))
        grey = pixels.mean(-1)
        background = grey.flatten(1).median(dim=1).values[:, None, None]
        band = (ys > SHADOW_BAND[0]) & (ys < SHADOW_BAND[1])
        coverage = ((background - grey[:, band]) / (background - SHADOW_COLOR[0])).clamp(0, 1).amax(dim=1)
        unit = (SCENE_X[1] - SCENE_X[0]) / size
        length = coverage.sum(1) * unit
        position = (coverage * xs[None]).sum(1) / coverage.sum(1).clamp(min=1e-9)
        return {
            "pendulum_angle": torch.rad2deg(torch.atan2(ball_x - PIVOT[0], PIVOT[1] - ball_y)).numpy(),
            "light_angle": torch.rad2deg(
                torch.atan2(torch.full_like(lamp_x, LIGHT_HEIGHT - PIVOT[1]), lamp_x - PIVOT[0])
            ).numpy(),
            "shadow_position": position.numpy(),
            "shadow_length": length.numpy(),
        }
