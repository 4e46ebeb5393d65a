"""Inversion on an analytic model: Gaussian data N(mu, s^2), whose exact noise prediction is known in closed form."""

import pytest
import torch
from diffusers import DDIMScheduler

from cf_diffusion.inversion import (
    ddim_invert,
    ddim_sample,
    ddpm_noise_maps,
    ddpm_sample,
    inference_timesteps,
    inverse_scheduler_for,
)

MU, S = 0.3, 0.5


def gaussian_model(scheduler: DDIMScheduler, mu: float = MU, s: float = S):
    """Exact E[eps | x_t] (or v) for x_0 ~ N(mu, s^2): x_t ~ N(sqrt(a) mu, a s^2 + 1 - a)."""

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        a = scheduler.alphas_cumprod[t].double()
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)
        if scheduler.config.prediction_type == "epsilon":
            return eps
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return model_fn


def make_scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(clip_sample=False, prediction_type=prediction_type, beta_schedule="scaled_linear")


def data(n: int = 64) -> torch.Tensor:
    return MU + S * torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def exact_flow(x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE keeps (x_t - sqrt(a) mu) / std_t fixed, so it maps x_0 to this point at level a."""
    a = a.double()
    return a.sqrt() * MU + (a * S**2 + 1 - a).sqrt() * (x0 - MU) / S


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_inversion_error_falls_with_steps(prediction_type):
    x0 = data()
    endpoint_errors, roundtrip_errors = [], []
    for steps in (10, 40, 160):
        scheduler = make_scheduler(prediction_type)
        inverse = inverse_scheduler_for(scheduler)
        timesteps = inference_timesteps(scheduler, steps)
        inverse.set_timesteps(steps)
        model_fn = gaussian_model(scheduler)
        trajectory = ddim_invert(model_fn, x0, timesteps, None, inverse)
        assert trajectory.shape == (steps + 1, *x0.shape)
        assert torch.equal(trajectory[-1], x0)
        exact = exact_flow(x0, scheduler.alphas_cumprod[timesteps[0]])
        endpoint_errors.append((trajectory[0] - exact).abs().max().item())
        back = ddim_sample(model_fn, trajectory[0], timesteps, None, scheduler)
        roundtrip_errors.append((back - x0).abs().max().item())
    for errors in (endpoint_errors, roundtrip_errors):
        assert errors[0] > errors[1] > errors[2]
        assert errors[0] / errors[2] > 8  # roughly first order: x16 the steps, much more than x8 smaller error
    assert roundtrip_errors[2] < 0.05


def test_partial_ddim_inversion_stops_at_intermediate_level():
    x0 = data()
    scheduler = make_scheduler("epsilon")
    timesteps = inference_timesteps(scheduler, 100, strength=0.5)
    assert len(timesteps) == 50
    assert torch.equal(timesteps, scheduler.timesteps[50:])
    inverse = inverse_scheduler_for(scheduler)
    inverse.set_timesteps(100)
    trajectory = ddim_invert(gaussian_model(scheduler), x0, timesteps, None, inverse)
    exact = exact_flow(x0, scheduler.alphas_cumprod[timesteps[0]])
    assert (trajectory[0] - exact).abs().max() < 1e-2
    assert (trajectory[0] - x0).abs().max() > 0.1  # it did move up the noise levels


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_ddpm_noise_maps_reconstruct_exactly(prediction_type, strength):
    x0 = data(8)
    scheduler = make_scheduler(prediction_type)
    timesteps = inference_timesteps(scheduler, 10, strength=strength)
    wrong_model = gaussian_model(scheduler, mu=-1.0, s=2.0)  # exactness must not depend on the model being right
    trajectory, noise_maps = ddpm_noise_maps(
        wrong_model, x0, timesteps, None, scheduler, torch.Generator().manual_seed(1)
    )
    assert noise_maps.shape == (len(timesteps), *x0.shape)
    assert torch.allclose(trajectory[-1], x0, atol=1e-12)
    a = scheduler.alphas_cumprod[timesteps[0]].double()
    # The start point is an independent draw from q(x_t | x_0): its standardised noise is N(0, 1)-like, not zero.
    standardized = (trajectory[0] - a.sqrt() * x0) / (1 - a).sqrt()
    assert 0.3 < standardized.std().item() < 2.0
    replayed = ddpm_sample(wrong_model, trajectory[0], timesteps, None, scheduler, noise_maps)
    assert torch.allclose(replayed, x0, atol=1e-10)


def test_ddpm_noise_maps_generator_list_is_per_sample():
    x0 = data(3)
    scheduler = make_scheduler("epsilon")
    timesteps = inference_timesteps(scheduler, 4)
    model_fn = gaussian_model(scheduler)
    _, batched = ddpm_noise_maps(
        model_fn, x0, timesteps, None, scheduler, [torch.Generator().manual_seed(i) for i in range(3)]
    )
    for i in range(3):
        _, single = ddpm_noise_maps(
            model_fn, x0[i : i + 1], timesteps, None, scheduler, torch.Generator().manual_seed(i)
        )
        assert torch.allclose(batched[:, i : i + 1], single, atol=1e-12)
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3"):
        ddpm_noise_maps(model_fn, x0, timesteps, None, scheduler, [torch.Generator(), torch.Generator()])


def test_ddpm_sample_with_exact_model_and_fresh_noise_matches_data_distribution():
    scheduler = make_scheduler("epsilon")
    timesteps = inference_timesteps(scheduler, 200)  # ancestral sampling underestimates the variance at few steps
    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    maps = torch.randn(200, 20000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for i, t in enumerate(timesteps):
        a = scheduler.alphas_cumprod[t].double()
        a_prev = scheduler.alphas_cumprod[timesteps[i + 1]].double() if i + 1 < len(timesteps) else torch.tensor(1.0)
        maps[i] *= ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()  # the DDPM posterior standard deviation
    samples = ddpm_sample(gaussian_model(scheduler), x, timesteps, None, scheduler, maps)
    assert abs(samples.mean().item() - MU) < 0.03
    assert abs(samples.std().item() - S) < 0.03


@pytest.mark.parametrize(
    ("steps", "strength", "message"),
    [
        (0, 1.0, "num_inference_steps must be an integer >= 1"),
        (10, 0.0, "strength must be in"),
        (10, 1.5, "strength must be in"),
        (10, 0.01, "keeps no step"),
    ],
)
def test_inference_timesteps_rejects_bad_arguments(steps, strength, message):
    with pytest.raises(ValueError, match=message):
        inference_timesteps(make_scheduler("epsilon"), steps, strength)


def test_ddpm_sample_needs_one_map_per_step():
    scheduler = make_scheduler("epsilon")
    timesteps = inference_timesteps(scheduler, 4)
    with pytest.raises(ValueError, match="got 3 noise maps for 4 timesteps"):
        ddpm_sample(gaussian_model(scheduler), torch.zeros(1, 1), timesteps, None, scheduler, torch.zeros(3, 1, 1))
