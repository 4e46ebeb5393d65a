"""Driving the edits of an evaluation: a method applied to every row in batches, with per-row seeds that give every
method the same noise for the same row, and the edit functions that `composition` and `reversibility` call."""

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from cf_diffusion.evaluation.methods import EditOptions, Method, apply_method


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Images float array[N, H, W, C] as `Tensor[N, C, H, W]` clamped into [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2).clamp(0, 1)


def to_array(images: torch.Tensor) -> np.ndarray:
    """`Tensor[N, C, H, W]` as float array[N, H, W, C]."""
    return images.permute(0, 2, 3, 1).numpy()


def edit_seeds(seed: int, stream: int, count: int) -> np.ndarray:
    """One seed per row for a stream of edits: every method sees the same noise for the same row and stream."""
    return np.random.SeedSequence([seed, stream]).generate_state(count, dtype=np.uint64)


def select_rows(columns: Mapping[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    """Factor name -> the `rows` of its values."""
    return {name: np.asarray(values)[rows] for name, values in columns.items()}


def edit_rows(
    pipe,
    method: Method,
    images: np.ndarray,
    factual: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    intervened: Sequence[str],
    options: EditOptions,
    seeds: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """`apply_method` in batches, with fresh per-row generators from `seeds`: float array[N, H, W, C]."""
    parts = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[rows]]
        parts.append(
            apply_method(
                pipe,
                method,
                images[rows],
                select_rows(factual, rows),
                select_rows(target, rows),
                intervened,
                options,
                generators,
            )
        )
    return np.concatenate(parts).astype(np.float32)


def editor(
    pipe,
    method: Method,
    factual: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    intervened: Sequence[str],
    options: EditOptions,
    seeds: np.ndarray,
    batch_size: int,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit function `Tensor[N, C, H, W] -> Tensor[N, C, H, W]` (for `composition` and `reversibility`) that runs
    `edit_rows` with fresh generators from the same `seeds` at every call."""

    def edit_fn(images: torch.Tensor) -> torch.Tensor:
        edited = edit_rows(pipe, method, to_array(images), factual, target, intervened, options, seeds, batch_size)
        return to_tensor(edited)

    return edit_fn


def precomputed(edited: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit function of an edit already made of the harness's images: it returns `edited` (saves a rerun)."""

    def edit_fn(images: torch.Tensor) -> torch.Tensor:
        if images.shape != edited.shape:
            raise ValueError(f"the precomputed edit has shape {tuple(edited.shape)}, got {tuple(images.shape)}")
        return edited

    return edit_fn
