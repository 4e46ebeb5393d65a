"""Abduction of the decoder's residual (pipeline `keep_residual`): the output is the input plus the decoded change,
with the residual faded out where the edit changes a pixel (`cf_diffusion.compositing.composite`)."""

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_fixtures import saved_with_default, tiny_images, tiny_pipeline

from cf_diffusion.compositing import RESIDUAL_FADE

FACTORS = {"size": "small", "color": "red", "bar": "1", "thickness": 3.0}
RUN = {"factors": FACTORS, "num_inference_steps": 3, "abduction": "ddpm"}


def pil(size: int) -> Image.Image:
    return Image.fromarray((tiny_images(1, size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.mark.parametrize("size", [16, 32])  # the model's size, and twice it (tiles, composite at full size)
def test_a_null_edit_returns_the_input_itself(size):
    pipe = tiny_pipeline(latent=True)
    image = pil(size)
    options = {"preserve": "none", "generator": torch.Generator().manual_seed(0), **RUN}
    out = pipe(image=image, interventions={}, keep_residual=True, **options)
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(image))
    plain = pipe(image=image, interventions={}, **options)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(image))  # the VAE alone does not


def test_an_edit_adds_the_decoded_change_to_the_input_and_fades_the_residual_where_it_changes():
    pipe = tiny_pipeline(latent=True)
    image = pil(16)
    edit = {"interventions": {"color": "green"}, "output_type": "pt", **RUN}
    plain = pipe(image=image, generator=torch.Generator().manual_seed(0), **edit)
    kept = pipe(image=image, keep_residual=True, generator=torch.Generator().manual_seed(0), **edit)
    with torch.no_grad():
        factual = pipe.vae.decode(plain.inversion.trajectory[-1] / pipe.vae.config.scaling_factor).sample
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None] / 255 * 2 - 1
    change = plain.images * 2 - 1 - factual
    fade = (change.abs().amax(1, keepdim=True) / RESIDUAL_FADE).clamp(max=1)
    assert (fade < 1).any() and (fade == 1).any()
    expected = ((x + change - fade * (x - factual)).clamp(-1, 1) + 1) / 2
    inside = (plain.images > 0) & (plain.images < 1)  # where the plain decoding was not clipped
    torch.testing.assert_close(kept.images[inside], expected[inside], atol=1e-5, rtol=0)


def test_keep_residual_needs_the_image():
    pipe = tiny_pipeline(latent=True)
    inversion = pipe.invert(pil(16), factors=FACTORS, num_inference_steps=3)
    with pytest.raises(ValueError, match="keep_residual adds the decoded change to the input"):
        pipe(inversion=inversion, interventions={}, keep_residual=True)


def test_the_model_default_is_saved_and_used_where_a_call_gives_none(tmp_path):
    from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

    pipe = saved_with_default(tiny_pipeline(latent=True), tmp_path, default_keep_residual=True)
    assert pipe.config.default_keep_residual is True
    image = pil(16)
    out = pipe(image=image, interventions={}, generator=torch.Generator().manual_seed(0), **RUN)
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(image))
    off = pipe(image=image, interventions={}, keep_residual=False, generator=torch.Generator().manual_seed(0), **RUN)
    assert not np.array_equal(np.asarray(off.images[0]), np.asarray(image))
    replay = pipe(inversion=out.inversion, interventions={}, output_type="np")  # an inversion: the default is off
    assert replay.images.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="default_keep_residual must be true or false"):
        CounterfactualDiffusionPipeline(**pipe.components, default_keep_residual="yes")
