"""Image helpers: grids (colour and greyscale tiles, captions) and the PIL -> [-1, 1] conversion."""

import numpy as np
import pytest
import torch
from PIL import Image

from cf_diffusion.images import image_grid, pil_to_signed


def test_greyscale_tiles_are_drawn_as_grey():
    grey = np.stack([np.full((4, 4, 1), 10 * i, dtype=np.uint8) for i in range(3)])
    grid = np.asarray(image_grid(grey, columns=3, scale=2))
    assert grid.shape == (8, 24, 3)
    for i in range(3):
        assert (grid[:, 8 * i : 8 * i + 8] == 10 * i).all()


def test_captions_add_room_under_each_row():
    colour = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    grid = image_grid(colour, columns=1, captions=["a", "b\nc"])
    assert grid.size == (4, 2 * (4 + 11 * 2 + 4))


def test_pil_to_signed_gives_diffusers_values_in_one_copy():
    from diffusers.image_processor import VaeImageProcessor

    rng = np.random.default_rng(0)
    processor = VaeImageProcessor(do_resize=False)
    colour = [Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)) for _ in range(2)]
    grey = [Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8))]
    for images in (colour, grey):
        pixels = pil_to_signed(images)
        assert pixels.dtype == torch.float32 and pixels.shape == (len(images), 3 if images is colour else 1, 37, 53)
        assert torch.equal(pixels, processor.preprocess(images))


def test_pil_to_signed_refuses_mixed_sizes():
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))]
    with pytest.raises(ValueError, match="share one size and mode"):
        pil_to_signed(images)
