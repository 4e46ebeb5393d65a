"""Guidance along the edit over the first steps only (pipeline `guidance_cutoff`)."""

import pytest
import torch
from pipeline_fixtures import saved_with_default, tiny_images, tiny_pipeline
from test_pipeline import FACTORS

RUN = {"num_inference_steps": 4, "output_type": "pt", "abduction": "ddpm", "interventions": {"bar": "0"}}


def edit(pipe, guidance_cutoff, **options):
    inputs = {"image": tiny_images(1, pipe.image_size), "factors": FACTORS[:1], "guidance_cutoff": guidance_cutoff}
    return pipe(**inputs, **RUN, **options, generator=torch.Generator().manual_seed(0))


def test_the_edit_weight_guides_the_first_steps_and_w_1_the_rest():
    pipe = tiny_pipeline()
    weights = []

    def record(pipe, step, t, tensors):
        weights.append(float(pipe.guidance_scale.flatten()[0]))
        return tensors

    edit(pipe, 0.5, guidance_scale=3.0, callback_on_step_end=record)
    assert weights == [3.0, 3.0, 1.0, 1.0]


def test_cutoff_1_is_guidance_throughout_and_0_is_no_guidance():
    pipe = tiny_pipeline()
    guided = edit(pipe, 1.0, guidance_scale=3.0).images
    torch.testing.assert_close(edit(pipe, None, guidance_scale=3.0).images, guided)
    unguided = edit(pipe, 0.0, guidance_scale=3.0).images
    torch.testing.assert_close(unguided, edit(pipe, 1.0, guidance_scale=1.0).images)
    half = edit(pipe, 0.5, guidance_scale=3.0).images
    assert (half - guided).abs().max() > 1e-3 and (half - unguided).abs().max() > 1e-3


def test_null_edit_stays_exact_under_a_cutoff():
    pipe = tiny_pipeline()
    image = tiny_images(1, pipe.image_size)
    out = pipe(image=image, factors=FACTORS[:1], **{**RUN, "interventions": None}, guidance_cutoff=0.5)
    assert (out.images - image).abs().max() < 2e-3


def test_model_default_guidance_cutoff_is_saved_and_checked(tmp_path):
    pipe = tiny_pipeline()
    loaded = saved_with_default(pipe, tmp_path, default_guidance_cutoff=0.25)
    torch.testing.assert_close(
        edit(loaded, None, guidance_scale=3.0).images, edit(pipe, 0.25, guidance_scale=3.0).images
    )
    with pytest.raises(ValueError, match=r"guidance_cutoff must be a number in \[0, 1\], got 2"):
        edit(pipe, 2)
    with pytest.raises(ValueError, match=r"default_guidance_cutoff must be a number in \[0, 1\], got True"):
        type(pipe)(**pipe.components, default_guidance_cutoff=True)
