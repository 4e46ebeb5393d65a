"""Tiled (MultiDiffusion-style) evaluation of a denoiser on latents larger than the size it was trained at.

A `TileLayout` covers an H x W latent with square tiles of the model's size that overlap by a fraction of a tile;
`tiled_model_fn` wraps a model function `model_fn(x, t, cond)` so that it runs the model on every tile and blends the
tile outputs with per-pixel weights that sum to 1 at every latent pixel (Bar-Tal et al., "MultiDiffusion", ICML 2023).

Because the wrapper *is* a model function, an edit's abduction (inversion) and prediction (regeneration) see the same
tiles and weights, that is the same noise prediction function: edit-friendly DDPM noise maps replay exactly, and DDIM
inversion is as close as it is untiled. A latent of exactly one tile runs the model as it is, bit for bit.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cf_diffusion.inversion import ModelFn

DEFAULT_TILE_OVERLAP = 0.25
"""Default fraction of a tile shared with its neighbour."""


@dataclass(frozen=True)
class TileLayout:
    """Square tiles covering an H x W latent, and their blending weights.

    Attributes:
        height: H, the latent's height.
        width: W, the latent's width.
        tile: Side of a tile (the model's sample size).
        positions: (top, left) of each of the T tiles, row-major; the last tile of each row and column is flush with
            the latent's edge.
        weights: Tensor[T, 1, tile, tile] float32, > 0: tile k's share of each of its pixels; at every latent pixel
            the shares of the tiles covering it sum to 1.
    """

    height: int
    width: int
    tile: int
    positions: tuple[tuple[int, int], ...]
    weights: torch.Tensor

    @property
    def num_tiles(self) -> int:
        """T, the number of tiles."""
        return len(self.positions)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets of tiles along one side: every `stride` from 0, and a last one flush with the end (`length - tile`)."""
    return [*range(0, length - tile, stride), length - tile]


def tile_window(tile: int, overlap: int) -> torch.Tensor:
    """Separable trapezoid window Tensor[tile, tile] float64: rises linearly over the `overlap` pixels next to each
    edge (from 1 / (overlap + 1), so it is > 0 everywhere) and is 1 inside; all ones for `overlap = 0`."""
    ramp = torch.arange(1, tile + 1, dtype=torch.float64)
    side = (torch.minimum(ramp, ramp.flip(0)) / (overlap + 1)).clamp(max=1.0)
    return side[:, None] * side[None, :]


def tile_layout(
    height: int, width: int, tile: int, overlap: float = DEFAULT_TILE_OVERLAP, align: int = 1
) -> TileLayout:
    """Tiles of side `tile` covering an H x W latent, overlapping by about `overlap * tile` pixels.

    Args:
        height: H, at least `tile`.
        width: W, at least `tile`.
        tile: Side of a tile (the model's sample size).
        overlap: Fraction in [0, 1) of a tile shared with its neighbour; the last tile of a row or column may share
            more (it is flush with the edge).
        align: Every tile offset is a multiple of it (the UNet's downsampling factor, so that overlapping tiles
            compute their features on the same grid); `tile`, `H - tile` and `W - tile` must be multiples of it.

    Returns:
        TileLayout; one tile (the untiled model) when H = W = tile.

    Raises:
        ValueError: On a latent smaller than a tile, an overlap outside [0, 1), or sizes not multiples of `align`.
    """
    if not isinstance(overlap, int | float) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be a fraction in [0, 1) of the tile, got {overlap!r}")
    if height < tile or width < tile:
        raise ValueError(f"a latent of {height}x{width} is smaller than a tile of {tile}x{tile}")
    if tile % align or (height - tile) % align or (width - tile) % align:
        raise ValueError(
            f"tile offsets must be multiples of {align}: tile {tile} and latent {height}x{width} minus the tile must "
            f"be multiples of {align}"
        )
    overlap_pixels = round(overlap * tile)
    stride = max(align, (tile - overlap_pixels) // align * align)
    positions = tuple(
        (top, left) for top in tile_starts(height, tile, stride) for left in tile_starts(width, tile, stride)
    )
    window = tile_window(tile, overlap_pixels)
    total = torch.zeros(height, width, dtype=torch.float64)
    for top, left in positions:
        total[top : top + tile, left : left + tile] += window
    weights = torch.stack([window / total[top : top + tile, left : left + tile] for top, left in positions])
    return TileLayout(height, width, tile, positions, weights[:, None].float())


def _repeat(cond: Any, n: int) -> Any:
    """Conditioning for n tiles of a batch: a tensor (or each tensor of a mapping) repeated n times along dim 0."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond] * n)
    if isinstance(cond, Mapping):
        return {name: _repeat(value, n) for name, value in cond.items()}
    raise TypeError(f"tiled conditioning must be a tensor, a mapping of tensors or None, got {type(cond).__name__}")


def tiled_model_fn(
    model_fn: ModelFn,
    layout: TileLayout,
    tile_batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> ModelFn:
    """A model function for latents of the layout's size, made of tile-sized calls of `model_fn`.

    Each call cuts the latent Tensor[B, c, H, W] into the layout's tiles, runs `model_fn` on `tile_batch_size` tiles
    at a time (the tiles stacked tile-major along the batch, Tensor[n * B, c, tile, tile], and the conditioning
    repeated once per tile), and blends the outputs with the layout's weights.

    Args:
        model_fn: `model_fn(x, t, cond)` for tile-sized x; cond is a tensor, a mapping of tensors or None, with one
            row per sample of x.
        layout: The tiles and weights (`tile_layout`).
        tile_batch_size: Tiles per call of `model_fn`.
        progress: Called with the number of tiles done after each call of `model_fn` (e.g. a tqdm bar's `update`).

    Returns:
        `fn(x, t, cond)` -> Tensor[B, c_out, H, W]; for a one-tile layout, `model_fn` called as it is (then
        `progress(1)`).

    Raises:
        ValueError: If `tile_batch_size < 1`; the returned function, if x is not of the layout's size.
    """
    if not isinstance(tile_batch_size, int) or tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be an integer >= 1, got {tile_batch_size!r}")
    report = progress or (lambda tiles: None)
    size = layout.tile

    if layout.num_tiles == 1:

        def untiled(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            output = model_fn(x, t, cond)
            report(1)
            return output

        return untiled

    def tiled(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (layout.height, layout.width):
            raise ValueError(f"x is {tuple(x.shape[-2:])} but the tile layout covers {(layout.height, layout.width)}")
        weights = layout.weights.to(device=x.device, dtype=x.dtype)
        blended = None
        for first in range(0, layout.num_tiles, tile_batch_size):
            positions = layout.positions[first : first + tile_batch_size]
            tiles = torch.cat([x[..., top : top + size, left : left + size] for top, left in positions])
            outputs = model_fn(tiles, t, _repeat(cond, len(positions))).chunk(len(positions))
            if blended is None:
                blended = outputs[0].new_zeros((x.shape[0], outputs[0].shape[1], layout.height, layout.width))
            for k, ((top, left), output) in enumerate(zip(positions, outputs, strict=True)):
                blended[..., top : top + size, left : left + size] += weights[first + k] * output
            report(len(positions))
        return blended

    return tiled
