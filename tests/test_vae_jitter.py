"""Brightness jitter of the VAE stages' training images (`vae.brightness_jitter`)."""

import pytest
import torch

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.training.config import load_config
from cf_diffusion.training.data import TrainingData
from cf_diffusion.training.vae import training_pixels


def _data() -> TrainingData:
    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 3:5] = 150  # a grey stroke on black
    return TrainingData(
        images, {"x": torch.zeros(6)}, FactorSchema([Factor.binary("x")]), CausalGraph.parse("x"), None
    )


def test_jitter_scales_each_image_within_its_range_and_repeats_by_step():
    data, rows = _data(), torch.arange(6)
    torch.testing.assert_close(training_pixels(data, rows, 0.0, 0, 3), data.pixel_batch(rows))
    jittered = training_pixels(data, rows, 0.4, 0, 3)
    assert (jittered[:, :, 0, 0] == -1).all()  # black stays black
    stroke = (jittered[:, 0, 3, 3] + 1) / (data.pixel_batch(rows)[:, 0, 3, 3] + 1)
    assert ((stroke >= 0.6 - 1e-6) & (stroke <= 1.4 + 1e-6)).all() and stroke.std() > 0.01
    torch.testing.assert_close(training_pixels(data, rows, 0.4, 0, 3), jittered)  # a resumed run sees the same
    assert not torch.equal(training_pixels(data, rows, 0.4, 0, 4), jittered)


def test_a_jitter_of_one_or_more_is_refused_when_the_recipe_is_read():
    recipe = {"output_dir": "out", "data": {"dataset": "colored-bars"}}
    assert load_config({**recipe, "vae": {"brightness_jitter": 0.4}})["vae"]["brightness_jitter"] == 0.4
    with pytest.raises(ValueError, match=r"vae.brightness_jitter' must be a number in \[0, 1\)"):
        load_config({**recipe, "vae": {"brightness_jitter": 1.0}})
    with pytest.raises(ValueError, match="brightness_jitter"):
        load_config({**recipe, "vae": {"brightness_jitter": -0.1}})
