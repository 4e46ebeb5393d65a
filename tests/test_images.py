"""Image grids: colour and greyscale tiles, captions."""

import numpy as np

from cf_diffusion.images import image_grid


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
