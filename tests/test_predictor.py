"""FactorPredictor: learns a factor that is plainly visible, ignores unknown labels, saves and loads."""

import tempfile

import pytest
import torch

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.predictor import FactorPredictor

SCHEMA = FactorSchema([Factor.categorical("color", ["red", "green", "blue"]), Factor.continuous("brightness", 0, 1)])


def colored_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose colour channel and brightness are the factors: Tensor[n, 3, 8, 8] in [-1, 1], Tensor[n, 2]."""
    g = torch.Generator().manual_seed(seed)
    color = torch.randint(3, (n,), generator=g)
    brightness = torch.rand(n, generator=g)
    images = -torch.ones(n, 3, 8, 8)
    images[torch.arange(n), color] = (2 * brightness - 1)[:, None, None] * 0.5 + 0.5
    return images, SCHEMA.encode({"color": color, "brightness": brightness})


def test_predictor_learns_visible_factors():
    torch.manual_seed(0)
    model = FactorPredictor(SCHEMA, sample_size=8, block_out_channels=(8, 16), norm_num_groups=4)
    images, factors = colored_images(128)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(images, factors).item()
    for _ in range(60):
        loss = model.loss(images, factors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    model.eval()
    test_images, test_factors = colored_images(64, seed=1)
    predicted = model.predict(test_images)
    assert predicted.shape == (64, 2)
    assert (predicted[:, 0] == test_factors[:, 0]).float().mean() > 0.9
    assert (predicted[:, 1] - test_factors[:, 1]).abs().mean() < 0.25
    assert predicted[:, 1].abs().max() <= 1.0


def test_loss_ignores_unknown_entries():
    torch.manual_seed(0)
    model = FactorPredictor(SCHEMA, sample_size=8, block_out_channels=(8,), norm_num_groups=4)
    images, factors = colored_images(4)
    known = torch.tensor([[True, False]] * 4)
    garbage = factors.clone()
    garbage[:, 1] = 123.0
    assert torch.equal(model.loss(images, factors, known), model.loss(images, garbage, known))
    with pytest.raises(ValueError, match="no factor is known"):
        model.loss(images, factors, torch.zeros_like(known))


def test_bad_shapes_raise():
    model = FactorPredictor(SCHEMA, sample_size=8, block_out_channels=(8,), norm_num_groups=4)
    with pytest.raises(ValueError, match=r"images must be Tensor\[B, 3, 8, 8\]"):
        model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"factors must be Tensor\[2, 2\]"):
        model.loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="must all be divisible by norm_num_groups=3"):
        FactorPredictor(SCHEMA, block_out_channels=(8,), norm_num_groups=3)


def test_save_and_load():
    torch.manual_seed(0)
    model = FactorPredictor(SCHEMA, sample_size=8, block_out_channels=(8,), norm_num_groups=4).eval()
    images, _ = colored_images(3)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        loaded = FactorPredictor.from_pretrained(tmp).eval()
    assert loaded.schema == SCHEMA
    assert torch.allclose(loaded(images)["color"], model(images)["color"])
