"""Classifier-free guidance toward the factors an edit keeps (pipeline `keep_guidance`)."""

import pytest
import torch
from pipeline_fixtures import saved_with_default, tiny_images, tiny_pipeline
from test_pipeline import FACTORS

RUN = {"num_inference_steps": 4, "output_type": "pt", "abduction": "ddpm"}


def edit(pipe, interventions, keep_guidance, rows=2, **options):
    inputs = {"image": tiny_images(rows, pipe.image_size), "factors": FACTORS[:rows], "interventions": interventions}
    return pipe(**inputs, **RUN, **options, keep_guidance=keep_guidance, generator=torch.Generator().manual_seed(0))


def test_branches_combine_as_reference_guidance_plus_keep_guidance():
    pipe = tiny_pipeline()
    latents = torch.zeros(2, 1, 1, 1)
    # each branch's output is its own constant, so the combination can be read off
    branch = torch.tensor([1.0, 2.0, 5.0, 7.0, 3.0, 11.0])

    def model_fn(x, t, kwargs):
        return x + kwargs["branch"].view(-1, 1, 1, 1)

    pipe._guidance_scale = torch.tensor([2.0, 3.0]).view(-1, 1, 1, 1)
    pipe._keep_scale = torch.tensor([0.5, 0.0]).view(-1, 1, 1, 1)
    out = pipe._guided_model_output(model_fn, latents, torch.tensor(0), {"branch": branch}, guided=True, kept=True)
    reference, conditional, unkept = branch[:2], branch[2:4], branch[4:]
    expected = reference + torch.tensor([2.0, 3.0]) * (conditional - reference)
    expected = expected + torch.tensor([0.5, 0.0]) * (conditional - unkept)
    torch.testing.assert_close(out.flatten(), expected)
    keep_only = pipe._guided_model_output(model_fn, latents, torch.tensor(0), {"branch": branch[2:]}, False, True)
    torch.testing.assert_close(keep_only.flatten(), conditional + torch.tensor([0.5, 0.0]) * (conditional - unkept))


@pytest.mark.parametrize("latent", [False, True])
def test_keep_guidance_changes_an_edit_that_keeps_factors(latent):
    pipe = tiny_pipeline(latent=latent)
    plain = edit(pipe, {"thickness": 4.5}, 0.0).images
    kept = edit(pipe, {"thickness": 4.5}, 2.0).images
    assert kept.shape == plain.shape and (kept - plain).abs().max() > 1e-3
    guided = edit(pipe, {"thickness": 4.5}, 2.0, guidance_scale=3.0).images
    assert (guided - kept).abs().max() > 1e-3  # combines with the guidance along the edit


def test_keep_guidance_leaves_null_edits_and_edits_that_keep_nothing_alone():
    pipe = tiny_pipeline()
    torch.testing.assert_close(edit(pipe, None, 3.0).images, edit(pipe, None, 0.0).images)
    everything = {"size": "large", "color": "green", "bar": "0", "thickness": 4.5}  # every factor of FACTORS[0]
    torch.testing.assert_close(edit(pipe, everything, 3.0, rows=1).images, edit(pipe, everything, 0.0, rows=1).images)


def test_model_default_keep_guidance_is_saved_and_checked(tmp_path):
    pipe = tiny_pipeline()
    loaded = saved_with_default(pipe, tmp_path, default_keep_guidance=1.5)
    torch.testing.assert_close(
        edit(loaded, {"thickness": 4.5}, None).images, edit(pipe, {"thickness": 4.5}, 1.5).images
    )
    torch.testing.assert_close(edit(pipe, {"thickness": 4.5}, None).images, edit(pipe, {"thickness": 4.5}, 0.0).images)
    with pytest.raises(ValueError, match="keep_guidance must be a number >= 0"):
        edit(pipe, {"thickness": 4.5}, -1.0)
    with pytest.raises(ValueError, match="default_keep_guidance must be a number >= 0"):
        type(pipe)(**pipe.components, default_keep_guidance="strong")
