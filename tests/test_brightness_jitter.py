"""Brightness jitter of training images: the VAE stages' (`vae.brightness_jitter`), and the UNet and predictor
stages', which scale the factor that measures brightness with the image (`unet.brightness_jitter`,
`predictor.brightness_jitter`, `data.brightness_factor`)."""

import pytest
import torch
from test_training import tiny_recipe

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.predictor import FactorPredictor
from cf_diffusion.training.assemble import load_stage_vae
from cf_diffusion.training.config import load_config
from cf_diffusion.training.data import TrainingData, brightness_batch, load_training_data
from cf_diffusion.training.diffusion import training_batch, training_targets
from cf_diffusion.training.run import train

LEVELS = torch.tensor([60.0, 100.0, 140.0, 180.0, 220.0, 250.0])


def _data() -> TrainingData:
    """Six 8 px images, a stroke whose grey level is the row's `intensity`, and a binary factor `x`."""
    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 3:5] = LEVELS.to(torch.uint8)[:, None, None, None]
    schema = FactorSchema([Factor.binary("x"), Factor.continuous("intensity")])
    table = {"x": torch.tensor([0, 1, 0, 1, 0, 1]), "intensity": LEVELS.clone()}
    return TrainingData(images, table, schema.with_ranges(table), CausalGraph.parse("x; intensity"), None)


def test_jitter_scales_each_image_within_its_range_and_repeats_by_step():
    data, rows = _data(), torch.arange(6)
    pixels, factors = brightness_batch(data, rows, 0.0, 0, 3)
    torch.testing.assert_close(pixels, data.pixel_batch(rows))
    torch.testing.assert_close(factors, data.factor_batch(rows))
    jittered, factors = brightness_batch(data, rows, 0.4, 0, 3)
    assert (jittered[:, :, 0, 0] == -1).all()  # black stays black
    stroke = (jittered[:, 0, 3, 3] + 1) / (data.pixel_batch(rows)[:, 0, 3, 3] + 1)
    assert ((stroke >= 0.6 - 1e-6) & (stroke <= 1.4 + 1e-6)).all() and stroke.std() > 0.01
    torch.testing.assert_close(factors, data.factor_batch(rows))  # no factor named: the rows' own factors
    torch.testing.assert_close(brightness_batch(data, rows, 0.4, 0, 3)[0], jittered)  # a resumed run sees the same
    assert not torch.equal(brightness_batch(data, rows, 0.4, 0, 4)[0], jittered)


@pytest.mark.parametrize("step", range(5))
def test_the_brightness_factor_scales_with_its_image_and_stays_in_its_training_range(step):
    data, rows = _data(), torch.arange(6)
    pixels, factors = brightness_batch(data, rows, 0.4, 0, step, factor="intensity")
    values = data.schema.denormalize(factors)
    grey = (pixels[:, 0, 3, 3] + 1) * 127.5
    torch.testing.assert_close(values["intensity"], grey, atol=1e-3, rtol=1e-4)  # the label is the image's own
    assert ((values["intensity"] >= 60 - 1e-3) & (values["intensity"] <= 250 + 1e-3)).all()
    scale = values["intensity"] / LEVELS
    assert ((scale >= 0.6 - 1e-6) & (scale <= 1.4 + 1e-6)).all()
    assert scale[0] >= 1 - 1e-6 and scale[-1] <= 1 + 1e-6  # the range's ends move only inward
    torch.testing.assert_close(values["x"], data.table["x"].to(values["x"].dtype))


def test_recipe_checks_name_the_keys(tmp_path):
    recipe = {"output_dir": "out", "data": {"dataset": "morpho"}}
    assert load_config({**recipe, "vae": {"brightness_jitter": 0.4}})["vae"]["brightness_jitter"] == 0.4
    for section in ("vae", "unet", "predictor"):
        with pytest.raises(ValueError, match=rf"'{section}.brightness_jitter' must be a number in \[0, 1\)"):
            load_config({**recipe, section: {"brightness_jitter": 1.0}})
        with pytest.raises(ValueError, match=f"'{section}.brightness_jitter'"):
            load_config({**recipe, section: {"brightness_jitter": -0.1}})
    named = {"dataset": "morpho", "brightness_factor": "intensity"}
    with pytest.raises(ValueError, match="'data.brightness_factor'.*'brightness_jitter' above 0 in 'vae' or"):
        load_config({**recipe, "data": named})
    for section in ("vae", "unet", "predictor"):
        assert load_config({**recipe, "data": named, section: {"brightness_jitter": 0.4}})
    with pytest.raises(ValueError, match="'data.brightness_factor' must be one of the data's continuous factors"):
        train(tiny_recipe(tmp_path / "run", data={"brightness_factor": "color"}, unet={"brightness_jitter": 0.3}))
    assert not (tmp_path / "run" / "stages").exists()  # refused before any stage trained


def test_the_predictor_trains_on_rescaled_rows_and_only_the_stages_that_scale_the_factor_depend_on_it(tmp_path):
    config = tiny_recipe(tmp_path / "run", latent=False, data={"dataset": "morpho", "num_images": 64})
    train(config, stages=("scm", "predictor"))
    named = load_config(config, {"data": {"brightness_factor": "intensity"}, "unet": {"brightness_jitter": 0.4}})
    assert train(named, stages=("scm", "predictor")) is None  # neither trains with a jitter: both reused
    jittered = load_config(named, {"predictor": {"brightness_jitter": 0.4}})
    with pytest.raises(ValueError, match=r"recipe: predictor \(data.brightness_factor, predictor.brightness_jitter\)"):
        train(jittered, stages=("unet",))
    jittered = load_config(jittered, {"output_dir": str(tmp_path / "jittered")})
    train(jittered, stages=("predictor",))
    plain, scaled = (
        FactorPredictor.from_pretrained(run / "stages" / "predictor" / "factor_predictor")
        for run in (tmp_path / "run", tmp_path / "jittered")
    )
    assert not torch.equal(next(plain.parameters()), next(scaled.parameters()))


@pytest.mark.parametrize("latent", [True, False])
def test_the_unet_stage_trains_on_rescaled_rows_encoded_afresh(tmp_path, latent):
    named = {"dataset": "morpho", "num_images": 64, "brightness_factor": "intensity"}
    config = tiny_recipe(tmp_path / "run", latent, data=named, unet={"brightness_jitter": 0.4})
    data = load_training_data(config)
    stages = ("vae", "unet") if latent else ("unet",)
    train(config, stages=stages)
    assert (tmp_path / "run" / "stages" / "unet" / "DONE").is_file()
    vae = load_stage_vae(config)
    targets, rows = training_targets(data, vae), torch.arange(8)
    clean, factors = training_batch(config, data, targets, vae, rows, step=1)
    pixels, expected = brightness_batch(data, rows, 0.4, config["seed"], 1, "intensity")
    torch.testing.assert_close(factors, expected)
    if vae is None:
        torch.testing.assert_close(clean, pixels)
    else:
        torch.testing.assert_close(clean, vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor)
    assert not torch.allclose(clean, targets[rows], atol=1e-3)
    plain = load_config(config, {"data": {"brightness_factor": None}, "unet": {"brightness_jitter": 0.0}})
    unchanged, plain_factors = training_batch(plain, data, targets, vae, rows, step=1)
    assert torch.equal(unchanged, targets[rows]) and torch.equal(plain_factors, data.factor_batch(rows))
