"""Guidance by the factor predictor toward the whole counterfactual vector (pipeline `predictor_guidance`)."""

import pytest
import torch
import torch.nn.functional as F
from pipeline_fixtures import saved_with_default, tiny_images, tiny_pipeline
from test_pipeline import FACTORS


def test_energy_is_each_images_summed_factor_losses():
    predictor = tiny_pipeline().factor_predictor
    images = tiny_images(3, 8) * 2 - 1
    factors = predictor.schema.encode(FACTORS)
    energy = predictor.energy(images, factors)
    outputs = predictor(images)
    expected = (
        F.cross_entropy(outputs["size"], factors[:, 0].long(), reduction="none")
        + F.cross_entropy(outputs["color"], factors[:, 1].long(), reduction="none")
        + F.cross_entropy(outputs["bar"], factors[:, 2].long(), reduction="none")
        + (outputs["thickness"] - factors[:, 3]) ** 2
    )
    torch.testing.assert_close(energy, expected)
    for i in range(3):  # one image's energy does not depend on the others in the batch
        torch.testing.assert_close(predictor.energy(images[i : i + 1], factors[i : i + 1]), energy[i : i + 1])


def test_predictor_guidance_moves_the_edit_toward_the_target_reading():
    pipe = tiny_pipeline()
    size = pipe.image_size
    inputs = {"image": tiny_images(2, size), "factors": FACTORS[:2], "interventions": {"thickness": 4.5}}

    def edit(scale):
        return pipe(
            **inputs,
            num_inference_steps=4,
            output_type="pt",
            predictor_guidance=scale,
            abduction="ddpm",
            generator=torch.Generator().manual_seed(0),
        )

    plain, guided = edit(0.0), edit(30.0)
    targets = pipe.schema.encode(plain.counterfactual_factors)
    predictor = pipe.factor_predictor
    read = predictor.config.sample_size

    def energy(images):
        pixels = F.interpolate(images * 2 - 1, size=(read, read), mode="bilinear")
        return predictor.energy(pixels, targets)

    assert (energy(guided.images) < energy(plain.images)).all()
    torch.testing.assert_close(edit(None).images, plain.images)  # the model's default is 0: no guidance


def test_predictor_guidance_reads_decoded_latents():
    pipe = tiny_pipeline(latent=True)
    inputs = {"image": tiny_images(2, 16), "factors": FACTORS[:2], "interventions": {"thickness": 4.5}}
    run = {"num_inference_steps": 3, "output_type": "pt", "abduction": "ddpm"}
    plain = pipe(**inputs, **run, generator=torch.Generator().manual_seed(0)).images
    guided = pipe(**inputs, **run, predictor_guidance=30.0, generator=torch.Generator().manual_seed(0)).images
    assert guided.shape == plain.shape and (guided - plain).abs().max() > 1e-3


def test_model_default_predictor_guidance_is_saved_and_checked(tmp_path):
    pipe = tiny_pipeline()
    loaded = saved_with_default(pipe, tmp_path, default_predictor_guidance=5.0)
    inputs = {"image": tiny_images(1, 8), "factors": FACTORS[:1], "interventions": {"thickness": 4.5}}
    run = {"num_inference_steps": 3, "output_type": "pt", "abduction": "ddpm"}
    by_default = loaded(**inputs, **run, generator=torch.Generator().manual_seed(0)).images
    explicit = pipe(**inputs, **run, predictor_guidance=5.0, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(by_default, explicit)
    with pytest.raises(ValueError, match="predictor_guidance must be a number >= 0"):
        pipe(**inputs, **run, predictor_guidance=-1.0)
    with pytest.raises(ValueError, match="default_predictor_guidance must be a number >= 0"):
        type(pipe)(**pipe.components, default_predictor_guidance="strong")
    without = tiny_pipeline(with_predictor=False)
    with pytest.raises(ValueError, match="needs a factor_predictor"):
        without(**inputs, **run, predictor_guidance=1.0)


@pytest.mark.parametrize("latent", [False, True])
def test_a_smaller_image_is_padded_edited_and_cropped_back(latent):
    pipe = tiny_pipeline(latent=latent)
    size = pipe.image_size
    small = tiny_images(2, size)[..., 1 : size - 1, 2 : size - 1]  # (size - 2) x (size - 3)
    out = pipe(
        image=small,
        factors=FACTORS[:2],
        interventions={},
        num_inference_steps=4,
        abduction="ddpm",
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == small.shape
    if not latent:  # the DDPM null edit replays the padded image exactly in pixel space
        assert (out.images - small).abs().max() < 1e-4
    padded = torch.full((2, 3, size, size), 0.0)
    padded[..., 1 : size - 1, 1 : size - 2] = small
    whole = pipe(
        image=padded,
        factors=FACTORS[:2],
        interventions={"thickness": 4.5},
        num_inference_steps=4,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    edited = pipe(
        image=small,
        factors=FACTORS[:2],
        interventions={"thickness": 4.5},
        num_inference_steps=4,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(edited.images, whole.images[..., 1 : size - 1, 1 : size - 2])
