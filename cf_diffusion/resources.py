"""What a command needs against what the machine has: free disk, available memory, and a refusal that says both."""

import shutil
from pathlib import Path

import psutil


def format_bytes(size: float) -> str:
    """`size` in bytes as a short text with a decimal unit, e.g. "1.2 GB"."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def existing_parent(path: str | Path) -> Path:
    """`path` itself when it exists, else its nearest existing parent (where a folder to be made will live)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or will hold it: see `existing_parent`)."""
    return int(shutil.disk_usage(existing_parent(path)).free)


def check_fits(what: str, needs: dict[str, int], has: dict[str, int], advice: str) -> None:
    """Refuses `what` when it needs more of a resource than there is.

    Args:
        what: the work, e.g. "data make colored-bars --n 1000000000".
        needs: resource name ("disk", "memory") -> estimated bytes needed.
        has: resource name -> bytes available.
        advice: what to do instead, ending the message.

    Raises:
        ValueError: One line naming each resource that falls short, with both amounts.
    """
    short = [name for name in needs if needs[name] > has[name]]
    if short:
        amounts = "; ".join(
            f"about {format_bytes(needs[name])} of {name}, {format_bytes(has[name])} available" for name in short
        )
        raise ValueError(f"{what} needs {amounts}: {advice}")


# ---------------------------------------------------------------------------------------------- an edit's memory

FLOAT_BYTES = 4
FULL_SIZE_BUFFERS = 6
"""float32 RGB buffers of the input's full size alive at once when the edit is blended back into the input (the
pipeline's `_decode_latents`: the input, the decoded edit resized to it, the two mask terms, their sum) plus the
post-processed output."""
LATENTS_PER_STEP = 5
"""Latent-sized buffers kept per sampling step: the abduction's targets, trajectory and noise maps (DDPM), each as a
list and then stacked."""


def _unet_tile_bytes(pipe, tile_batch_size: int) -> int:
    """Activations of one UNet call on `tile_batch_size` tiles, both guidance branches: every level's skip outputs,
    a few working buffers of the widest level, and the attention scores of the finest one."""
    config = pipe.unet.config
    areas = [(config.sample_size // 2**i) ** 2 for i in range(len(config.block_out_channels))]
    levels = [channels * area for channels, area in zip(config.block_out_channels, areas, strict=True)]
    per_tile = sum(levels) * (config.layers_per_block + 1) + 4 * max(levels) + areas[0] ** 2
    return 2 * tile_batch_size * per_tile * FLOAT_BYTES


def _vae_bytes(pipe, height: int, width: int) -> int:
    """The VAE's activations on a `height` x `width` image (tiled above its sample size) and its tiles' output."""
    if pipe.vae is None:
        return 0
    side = pipe.vae.config.sample_size
    widest = max(pipe.vae.config.block_out_channels)
    return (4 * widest * min(height, side) * min(width, side) + 2 * 3 * height * width) * FLOAT_BYTES


def estimate_edit_memory(
    pipe, height: int, width: int, working_size: int | None, tile_batch_size: int, steps: int, num_images: int = 1
) -> int:
    """Bytes of memory an edit of a `height` x `width` image needs beyond the loaded model (an estimate from the
    image and working sizes, the tiles per UNet call, the steps and the number of images; see the constants).

    Args:
        pipe: the CounterfactualDiffusionPipeline.
        height, width: the input image's size in pixels.
        working_size: the shorter side the diffusion runs at (None: the image's own).
        tile_batch_size: tiles per UNet call.
        steps: sampling steps.
        num_images: images edited at once (counterfactual draws).
    """
    height, width = max(height, pipe.image_size), max(width, pipe.image_size)  # smaller images are padded
    work_h, work_w = pipe._working_shape(height, width, working_size)
    factor = pipe.vae_scale_factor
    latent = pipe.unet.config.in_channels * (work_h // factor) * (work_w // factor) * FLOAT_BYTES
    per_image = FULL_SIZE_BUFFERS * 3 * height * width * FLOAT_BYTES + LATENTS_PER_STEP * (steps + 1) * latent
    per_image += 2 * 3 * work_h * work_w * FLOAT_BYTES  # the working-size input and decoded edit
    return num_images * per_image + _unet_tile_bytes(pipe, tile_batch_size) + _vae_bytes(pipe, work_h, work_w)


def largest_working_size(pipe, height: int, width: int, fits) -> int | None:
    """The largest `working_size` (a multiple of the pipeline's `size_multiple`, from its model size up to the
    shorter side) for which `fits(working_size)` holds, or None when none does."""
    step, shortest = pipe.size_multiple, pipe.image_size
    for size in range(min(height, width) // step * step, shortest - 1, -step):
        if fits(size):
            return size
    return None


def check_edit_fits(
    pipe, height: int, width: int, working_size: int | None, tile_batch_size: int, steps: int, num_images: int = 1
) -> None:
    """Refuses an edit whose memory estimate (`estimate_edit_memory`) exceeds the available memory.

    Raises:
        ValueError: One line with the estimate, the available memory and the largest `--working-size` that fits
            (or, when none does, advice to downscale the image).
    """
    available = available_memory()

    def needs(size: int | None) -> int:
        return estimate_edit_memory(pipe, height, width, size, tile_batch_size, steps, num_images)

    if needs(working_size) <= available:
        return
    suggestion = largest_working_size(pipe, height, width, lambda size: needs(size) <= available)
    advice = (
        f"pass --working-size {suggestion} (or less)"
        if suggestion is not None
        else "downscale the image first (even the smallest --working-size does not fit)"
    )
    if suggestion is not None and tile_batch_size > 1:
        advice += " or a smaller --tile-batch-size"
    size = "its own size" if working_size is None else f"--working-size {working_size}"
    check_fits(
        f"editing a {width}x{height} image at {size}", {"memory": needs(working_size)}, {"memory": available}, advice
    )
