"""What the UNet learns to output, for each prediction type the training recipe accepts."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from cf_diffusion.training import diffusion
from cf_diffusion.training.config import PREDICTION_TYPES, load_config
from cf_diffusion.training.diffusion import build_noise_scheduler, diffusion_target


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_a_model_that_outputs_the_target_is_denoised_to_the_clean_sample(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False)
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([600, 600])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(10)
    target = diffusion_target(scheduler, clean, noise, timesteps)
    torch.testing.assert_close(sampler.step(target, 600, noisy).pred_original_sample, clean, atol=1e-4, rtol=1e-4)


def test_a_prediction_type_without_a_training_target_is_refused(monkeypatch):
    flow = DDPMScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="'flow'"):
        diffusion_target(flow, torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    monkeypatch.setattr(diffusion, "pretrained_noise_scheduler", lambda folder: flow)
    with pytest.raises(ValueError, match="prediction_type of sd's scheduler must be one of .*got 'flow'"):
        build_noise_scheduler({"unet": {"pretrained": "sd"}})


def test_the_recipe_accepts_every_prediction_type_it_trains():
    for prediction_type in PREDICTION_TYPES:
        recipe = {"data": {"dataset": "morpho"}, "unet": {"prediction_type": prediction_type}}
        assert load_config(recipe)["unet"]["prediction_type"] == prediction_type
