"""Composition and reversibility of an image editor (Monteiro et al., 2023, "axiomatic soundness").

An editor is any callable `images -> images` on `Tensor[B, C, H, W]` in [0, 1]; wrap a pipeline call in a
lambda to fix its interventions, steps and generator.
"""

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from cf_diffusion.evaluation.image_distance import check_images, mae_255, ssim

EditFn = Callable[[Tensor], Tensor]


def _apply(edit_fn: EditFn, images: Tensor, name: str) -> Tensor:
    with torch.no_grad():
        out = edit_fn(images)
    if not isinstance(out, Tensor) or out.shape != images.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a Tensor of the input's shape {tuple(images.shape)}, got {shape}")
    check_images(out, f"the output of {name}")
    return out


def composition(edit_fn: EditFn, images: Tensor, cycles: Iterable[int] = (1, 10)) -> dict[int, dict[str, float]]:
    """Distance between images and their null edit applied k times.

    A null edit (intervening on a factor with its own factual value) must leave the image unchanged; its
    k-fold repetition `x_k = f(x_{k-1})`, `x_0 = x`, shows how error accumulates. For each k in `cycles`:
    `mae_255 = mean_i MAE_255(x_k[i], x[i])` and `ssim = mean_i SSIM(x_k[i], x[i])`.

    Args:
        edit_fn: The null edit, `Tensor[B, C, H, W] -> Tensor[B, C, H, W]`, values in [0, 1].
        images: The original images, `Tensor[B, C, H, W]` in [0, 1].
        cycles: Positive numbers of repetitions to report; the edit is run `max(cycles)` times in all.

    Returns:
        `{k: {"mae_255": float, "ssim": float}}` for each k in `cycles`, in increasing order.
    """
    check_images(images, "images")
    wanted = sorted(set(cycles))
    if not wanted or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in wanted):
        raise ValueError(f"cycles must be a non-empty collection of positive integers, got {list(cycles)}")
    results: dict[int, dict[str, float]] = {}
    current = images
    for k in range(1, wanted[-1] + 1):
        current = _apply(edit_fn, current, "edit_fn")
        if k in wanted:
            results[k] = {
                "mae_255": mae_255(current, images).mean().item(),
                "ssim": ssim(current, images).mean().item(),
            }
    return results


def reversibility(forward_fn: EditFn, backward_fn: EditFn, images: Tensor) -> dict[str, float]:
    """Distance between images and the result of editing them and editing back.

    `x_back = backward_fn(forward_fn(x))`; for a counterfactual editor `forward_fn` applies `do(X = x')` and
    `backward_fn` applies `do(X = x)` with the factual value. Reports `mae_255 = mean_i MAE_255(x_back[i], x[i])`
    and `ssim = mean_i SSIM(x_back[i], x[i])`.

    Args:
        forward_fn: The edit, `Tensor[B, C, H, W] -> Tensor[B, C, H, W]`, values in [0, 1].
        backward_fn: The edit back, same signature.
        images: The original images, `Tensor[B, C, H, W]` in [0, 1].

    Returns:
        `{"mae_255": float, "ssim": float}`, batch means.
    """
    check_images(images, "images")
    back = _apply(backward_fn, _apply(forward_fn, images, "forward_fn"), "backward_fn")
    return {"mae_255": mae_255(back, images).mean().item(), "ssim": ssim(back, images).mean().item()}
