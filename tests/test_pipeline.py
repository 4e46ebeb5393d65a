"""CounterfactualDiffusionPipeline with tiny pixel-space and latent-space components."""

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_fixtures import tiny_images, tiny_pipeline, tiny_text_components
from pipeline_tester import PipelineTesterMixin

FACTORS = [
    {"size": "small", "color": "red", "bar": "1", "thickness": 3.0},
    {"size": "large", "color": "blue", "bar": "0", "thickness": 2.0},
    {"size": "large", "color": "green", "bar": "1", "thickness": 4.5},
]


def edit_inputs(pipe, batch_size: int = 1, seed: int = 0) -> dict:
    return {
        "image": tiny_images(batch_size, pipe.image_size, seed),
        "factors": FACTORS[:batch_size],
        "interventions": {"color": "green"},
        "num_inference_steps": 3,
        "guidance_scale": 2.0,
        "abduction": "ddpm",
        "num_counterfactuals": 2,
        "generator": [torch.Generator().manual_seed(seed + i) for i in range(batch_size)],
    }


class TestPixelPipeline(PipelineTesterMixin):
    def get_pipeline(self):
        return tiny_pipeline(latent=False)

    def get_inputs(self, batch_size=1, seed=0):
        return edit_inputs(self.get_pipeline(), batch_size, seed)


class TestLatentPipeline(PipelineTesterMixin):
    def get_pipeline(self):
        return tiny_pipeline(latent=True, prediction_type="v_prediction")

    def get_inputs(self, batch_size=1, seed=0):
        return edit_inputs(self.get_pipeline(), batch_size, seed)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(
    ("strength", "guidance_scale", "guidance_reference"), [(1.0, 1.0, "factual"), (0.5, 5.0, "null")]
)
def test_null_edit_with_ddpm_reconstructs_pixels(prediction_type, strength, guidance_scale, guidance_reference):
    pipe = tiny_pipeline(prediction_type=prediction_type)
    images = tiny_images(2, 8)
    out = pipe(
        image=images,
        factors=FACTORS[:2],
        interventions={},
        num_inference_steps=4,
        strength=strength,
        guidance_scale=guidance_scale,
        guidance_reference=guidance_reference,
        abduction="ddpm",
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert (out.images - images).abs().max() < 1e-4
    assert out.counterfactual_factors == out.factual_factors
    assert len(out.inversion.timesteps) == round(4 * strength)


def test_null_edit_with_ddpm_reconstructs_latents():
    pipe = tiny_pipeline(latent=True)
    images = tiny_images(2, 16)
    pixels = pipe.image_processor.preprocess(images)
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    out = pipe(image=images, factors=FACTORS[:2], num_inference_steps=4, abduction="ddpm", output_type="latent")
    assert (out.images - latents).abs().max() < 1e-4


def test_dtypes_are_looked_up_per_call():
    pipe = tiny_pipeline(latent=True)
    images = tiny_images(1, 16)
    first = pipe(image=images, factors=FACTORS[:1], num_inference_steps=2, output_type="latent")
    assert first.images.dtype == torch.float32 and pipe._call_dtypes is None
    pipe.to(dtype=torch.float64)
    second = pipe(image=images, factors=FACTORS[:1], num_inference_steps=2, output_type="latent")
    assert second.images.dtype == torch.float64
    assert (second.images - first.images.double()).abs().max() < 1e-4


def test_zero_guidance_with_factual_reference_replays_the_factual_image():
    """w = 0 leaves only the reference branch, the factual conditioning: a DDPM edit then returns the input."""
    pipe = tiny_pipeline()
    images = tiny_images(2, 8)
    out = pipe(
        image=images,
        factors=FACTORS[:2],
        interventions={"color": "green", "size": "small"},
        num_inference_steps=4,
        guidance_scale=0.0,
        abduction="ddpm",
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert [row["color"] for row in out.counterfactual_factors] == ["green", "green"]
    assert (out.images - images).abs().max() < 1e-4


def test_guidance_references_agree_at_scale_one_and_differ_above():
    pipe = tiny_pipeline()
    inputs = {
        "image": tiny_images(1, 8),
        "factors": FACTORS[0],
        "interventions": {"color": "blue"},
        "num_inference_steps": 3,
        "output_type": "pt",
    }
    factual = pipe(**inputs, guidance_scale=1.0, guidance_reference="factual").images
    null = pipe(**inputs, guidance_scale=1.0, guidance_reference="null").images
    assert torch.allclose(factual, null, atol=1e-6)
    factual = pipe(**inputs, guidance_scale=4.0, guidance_reference="factual").images
    null = pipe(**inputs, guidance_scale=4.0, guidance_reference="null").images
    assert (factual - null).abs().max() > 1e-3


def test_default_guidance_is_chosen_per_image_by_the_kind_of_factor_it_changes():
    pipe = tiny_pipeline(fitted_scm=True)
    images = tiny_images(2, 8)
    factors = FACTORS[:2]
    # Image 0 changes its colour (discrete: w = 3), image 1 only its thickness (continuous: w = 1).
    interventions = {"color": ["blue", factors[1]["color"]], "thickness": [factors[0]["thickness"], 3.5]}

    def edit(rows, guidance_scale):
        return pipe(
            image=images[rows],
            factors=factors[rows],
            interventions={k: v[rows] for k, v in interventions.items()},
            num_inference_steps=3,
            abduction="ddpm",
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(i) for i in range(2)][rows],
            output_type="pt",
        )

    both = edit(slice(0, 2), None)
    assert [row["color"] for row in both.counterfactual_factors] == ["blue", factors[1]["color"]]
    torch.testing.assert_close(both.images[:1], edit(slice(0, 1), 3.0).images, atol=1e-4, rtol=0)
    torch.testing.assert_close(both.images[1:], edit(slice(1, 2), 1.0).images, atol=1e-4, rtol=0)
    assert (both.images[1:] - edit(slice(1, 2), 3.0).images).abs().max() > 1e-3
    # A dict overrides one factor's weight and keeps the defaults of the others.
    torch.testing.assert_close(edit(slice(1, 2), {"thickness": 3.0}).images, edit(slice(1, 2), 3.0).images)


def test_model_editing_defaults_are_saved_and_used(tmp_path):
    import json

    from diffusers import DiffusionPipeline

    pipe = tiny_pipeline(fitted_scm=True)
    tuned = type(pipe)(**pipe.components, default_abduction="ddpm", default_guidance_scale={"color": 1.5})
    tuned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "model_index.json").read_text())
    assert saved["default_abduction"] == "ddpm" and saved["default_guidance_scale"] == {"color": 1.5}
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_abduction == "ddpm" and loaded.config.default_guidance_scale == {"color": 1.5}
    inputs = {
        "image": tiny_images(1, 8),
        "factors": FACTORS[:1],
        "interventions": {"color": "blue"},
        "num_inference_steps": 3,
        "output_type": "pt",
    }

    def edit(model, **kwargs):
        return model(**inputs, generator=torch.Generator().manual_seed(0), **kwargs)

    by_default = edit(loaded)
    assert by_default.inversion.abduction == "ddpm"
    torch.testing.assert_close(by_default.images, edit(pipe, abduction="ddpm", guidance_scale=1.5).images)
    assert (by_default.images - edit(pipe, abduction="ddpm").images).abs().max() > 1e-3
    torch.testing.assert_close(edit(loaded, abduction="ddim", guidance_scale=3.0).images, edit(pipe).images)
    assert loaded.invert(inputs["image"], FACTORS[:1], num_inference_steps=3).abduction == "ddpm"
    with pytest.raises(ValueError, match="default_abduction must be one of"):
        type(pipe)(**pipe.components, default_abduction="euler")
    with pytest.raises(ValueError, match="default_guidance_scale names unknown factor"):
        type(pipe)(**pipe.components, default_guidance_scale={"hue": 2.0})


def test_edit_changes_the_image_and_zero_mask_keeps_it():
    pipe = tiny_pipeline()
    images = tiny_images(1, 8)
    inputs = {
        "image": images,
        "factors": FACTORS[0],
        "interventions": {"color": "blue"},
        "num_inference_steps": 4,
        "abduction": "ddpm",
        "output_type": "pt",
    }
    edited = pipe(**inputs, generator=torch.Generator().manual_seed(0)).images
    assert (edited - images).abs().max() > 1e-3
    kept = pipe(**inputs, mask=torch.zeros(1, 1, 8, 8), generator=torch.Generator().manual_seed(0)).images
    assert (kept - images).abs().max() < 1e-4
    full = pipe(**inputs, mask=torch.ones(1, 1, 8, 8), generator=torch.Generator().manual_seed(0)).images
    assert torch.allclose(full, edited, atol=1e-5)


def test_non_descendants_kept_and_descendants_follow_the_scm():
    pipe = tiny_pipeline(fitted_scm=True)
    k = 3
    out = pipe(
        image=tiny_images(3, 8),
        factors=FACTORS,
        interventions={"color": "red"},
        num_inference_steps=2,
        num_counterfactuals=k,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    )
    assert pipe.scm.graph.descendants("color") >= {"bar", "thickness"} and "size" not in pipe.scm.graph.descendants(
        "color"
    )
    expected = pipe.scm.counterfactual(
        pipe.schema.to_values(FACTORS), {"color": "red"}, num_samples=k, generator=torch.Generator().manual_seed(7)
    )
    expected_rows = pipe.schema.from_values({name: column.reshape(-1) for name, column in expected.items()})
    assert len(out.counterfactual_factors) == len(out.factual_factors) == 3 * k
    for i, (factual, counterfactual) in enumerate(zip(out.factual_factors, out.counterfactual_factors, strict=True)):
        assert factual == FACTORS[i // k]
        assert counterfactual["size"] == factual["size"]  # a non-descendant: exactly factual
        assert counterfactual["color"] == "red"
        assert counterfactual["bar"] == expected_rows["bar"][i]
        assert counterfactual["thickness"] == pytest.approx(expected_rows["thickness"][i], abs=1e-5)


def test_callable_intervention_shifts_a_leaf():
    pipe = tiny_pipeline(fitted_scm=True)
    out = pipe(
        image=tiny_images(2, 8),
        factors=FACTORS[:2],
        interventions={"thickness": lambda t: t + 1.0},
        num_inference_steps=2,
        output_type="pt",
    )
    for factual, counterfactual in zip(out.factual_factors, out.counterfactual_factors, strict=True):
        assert counterfactual["thickness"] == pytest.approx(factual["thickness"] + 1.0, abs=1e-3)
        assert {k: v for k, v in counterfactual.items() if k != "thickness"} == {
            k: v for k, v in factual.items() if k != "thickness"
        }


def test_factors_read_by_the_predictor_when_not_given():
    pipe = tiny_pipeline()
    images = tiny_images(2, 8)
    out = pipe(image=images, interventions={}, num_inference_steps=2, output_type="pt")
    predicted = pipe.factor_predictor.predict(pipe.image_processor.preprocess(images))
    rows = pipe.schema.decode(predicted)
    assert out.factual_factors == [{name: rows[name][i] for name in rows} for i in range(2)]


def test_factor_formats_agree():
    pipe = tiny_pipeline()
    images = tiny_images(2, 8)
    columns = {name: [row[name] for row in FACTORS[:2]] for name in FACTORS[0]}
    common = {"image": images, "interventions": {"size": "large"}, "num_inference_steps": 2, "output_type": "pt"}
    a = pipe(factors=FACTORS[:2], **common)
    b = pipe(factors=columns, **common)
    assert a.factual_factors == b.factual_factors and torch.allclose(a.images, b.images, atol=1e-6)
    single = pipe(image=images[:1], factors=FACTORS[0], interventions={"size": "large"}, num_inference_steps=2)
    assert single.factual_factors == [FACTORS[0]]


def test_inversion_reused_for_several_edits():
    pipe = tiny_pipeline()
    images = tiny_images(2, 8)
    inversion = pipe.invert(images, FACTORS[:2], num_inference_steps=3, strength=0.67, abduction="ddim")
    assert inversion.trajectory.shape == (3, 2, 3, 8, 8) and inversion.noise_maps is None
    for interventions in ({"color": "blue"}, {"size": "small"}):
        direct = pipe(
            image=images,
            factors=FACTORS[:2],
            interventions=interventions,
            num_inference_steps=3,
            strength=0.67,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )
        reused = pipe(
            interventions=interventions,
            inversion=inversion,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )
        assert torch.allclose(direct.images, reused.images, atol=1e-5)
        assert direct.counterfactual_factors == reused.counterfactual_factors
    with pytest.raises(ValueError, match="num_inference_steps=5 conflicts with the inversion"):
        pipe(interventions={}, inversion=inversion, num_inference_steps=5)
    with pytest.raises(ValueError, match="pass either inversion or image"):
        pipe(image=images, interventions={}, inversion=inversion)


def test_ddpm_inversion_reused_reconstructs():
    pipe = tiny_pipeline(prediction_type="v_prediction")
    images = tiny_images(2, 8)
    inversion = pipe.invert(images, FACTORS[:2], num_inference_steps=4, abduction="ddpm")
    assert inversion.noise_maps.shape == (4, 2, 3, 8, 8)
    out = pipe(interventions={}, inversion=inversion, output_type="pt")
    assert (out.images - images).abs().max() < 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("latent", [False, True])
def test_ddim_edit_runs(prediction_type, latent):
    pipe = tiny_pipeline(latent=latent, prediction_type=prediction_type)
    out = pipe(
        image=tiny_images(2, pipe.image_size),
        factors=FACTORS[:2],
        interventions={"bar": "0"},
        num_inference_steps=3,
        output_type="np",
    )
    assert out.images.shape == (2, pipe.image_size, pipe.image_size, 3)
    assert (out.images >= 0).all() and (out.images <= 1).all()


def test_generate_samples_factors_from_the_scm():
    pipe = tiny_pipeline(latent=True)
    out = pipe.generate(
        num_images=4, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(3)
    )
    sampled = pipe.scm.sample(4, generator=torch.Generator().manual_seed(3))
    rows = pipe.schema.from_values(sampled)
    assert out.images.shape == (4, 3, 16, 16)
    assert [row["color"] for row in out.factors] == rows["color"]
    forced = pipe.generate(interventions={"color": "blue"}, num_images=3, num_inference_steps=2, output_type="pt")
    assert [row["color"] for row in forced.factors] == ["blue"] * 3
    given = pipe.generate(factors=FACTORS, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    assert given.factors == FACTORS and given.images.shape == (3, 4, 8, 8)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    batch = pipe.generate(num_images=2, num_inference_steps=2, generator=generators, output_type="pt")
    single = pipe.generate(
        num_images=1, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="pt"
    )
    assert torch.allclose(batch.images[1:], single.images, atol=1e-4) and batch.factors[1:] == single.factors


BAD_INPUTS = [
    ({"interventions": {"colour": "red"}}, "unknown factor 'colour' in interventions"),
    ({"interventions": {"color": "purple"}}, "factor 'color'.*bad value 'purple'; expected levels"),
    ({"factors": {**FACTORS[0], "color": "purple"}}, "factor 'color'.*bad value 'purple'"),
    ({"factors": {**FACTORS[0], "shape": "round"}}, "unknown factor 'shape'"),
    ({"interventions": {"thickness": 9.0}}, r"factor 'thickness'.*bad value 9.0; expected numbers in \[1.0, 5.0\]"),
    ({"factors": {**FACTORS[0], "thickness": 0.5}}, "factor 'thickness'.*bad value 0.5"),
    (
        {"image": torch.rand(1, 3, 9, 9)},
        r"image has shape .* \(3, 9, 9\), but the model edits images of 3 channel\(s\) at 8x8",
    ),
    (
        {"image": torch.rand(1, 1, 8, 8)},
        r"image has shape .* \(1, 8, 8\), but the model edits images of 3 channel\(s\)",
    ),
    ({"factors": FACTORS[:2]}, r"factors describe 2 image\(s\) but 1 image\(s\) were given"),
    (
        {"generator": [torch.Generator(), torch.Generator()]},
        "generator is a list of 2 generators but there are 1 image",
    ),
    ({"interventions": {"color": ["red", "blue"]}}, "intervention on 'color' has 2 values; expected one value or 1"),
    ({"abduction": "ddjm"}, "abduction must be one of"),
    ({"output_type": "jpeg"}, "output_type must be one of"),
    ({"num_counterfactuals": 0}, "num_counterfactuals must be an integer >= 1"),
    ({"guidance_reference": "empty"}, "guidance_reference must be one of"),
    ({"guidance_scale": -1.0}, "guidance_scale must be a number >= 0"),
    ({"strength": 0.0}, r"strength must be in \(0, 1\]"),
    ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1"),
    ({"mask": torch.ones(1, 1, 5, 5)}, "mask must be Tensor"),
    ({"mask": torch.full((1, 1, 8, 8), 2.0)}, r"mask values must lie in \[0, 1\]"),
    ({"prompt": "a red digit"}, "a prompt was given but the pipeline has no text_encoder"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, r"callback_on_step_end_tensor_inputs \['noise'\] are not"),
    ({"image": None}, "image is required"),
    ({"interventions": [("color", "red")]}, "interventions must be a dict"),
    (
        {"image": tiny_images(1, 8) * 255},
        r"image is float with values in \[30.05, 215.6\]; float images must be in \[0, 1\]",
    ),
    ({"image": tiny_images(1, 8) - 0.5}, r"image is float with values in \[-0.3821, 0.3456\]"),
    ({"image": torch.full((1, 3, 8, 8), float("nan"))}, "image holds NaN or infinite pixel values"),
    ({"image": [tiny_images(1, 8)[0], torch.full((3, 8, 8), float("inf"))]}, "image holds NaN or infinite"),
    ({"image": []}, "image is an empty list"),
    ({"image": np.zeros((1, 8, 8, 3), np.int64)}, r"image must be uint8 \(0..255\) or float \(0..1\), got"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_inputs_raise_value_error(change, message):
    pipe = tiny_pipeline()
    inputs = {
        "image": tiny_images(1, 8),
        "factors": FACTORS[0],
        "interventions": {"color": "green"},
        "num_inference_steps": 2,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        pipe(**inputs)


def test_uint8_images_mean_0_to_255_and_16_bit_greyscale_is_scaled_to_8_bit():
    pipe = tiny_pipeline()
    pixels = (tiny_images(1, 8) * 255).round()

    def edit(image) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        common = {"factors": FACTORS[0], "interventions": {"color": "green"}, "num_inference_steps": 2}
        return pipe(image=image, generator=generator, output_type="pt", **common).images

    expected = edit(pixels / 255)
    assert torch.allclose(edit(pixels.to(torch.uint8)), expected, atol=1e-6)
    assert torch.allclose(edit(pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()), expected, atol=1e-6)
    grey = Image.fromarray(np.full((8, 8), 82 * 257, np.uint16))
    assert grey.mode == "I;16"
    assert torch.allclose(pipe._preprocess_image(grey), torch.full((1, 1, 8, 8), 82 / 255 * 2 - 1))


def test_missing_factors_without_predictor_raise():
    pipe = tiny_pipeline(with_predictor=False)
    with pytest.raises(ValueError, match="factors were not given and the pipeline has no factor_predictor"):
        pipe(image=tiny_images(1, 8), interventions={"color": "green"}, num_inference_steps=2)
    with pytest.raises(ValueError, match="factors were not given"):
        pipe.invert(tiny_images(1, 8), num_inference_steps=2)


def test_generate_bad_inputs():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="generator is a list of 1 generators but there are 2 image"):
        pipe.generate(num_images=2, generator=[torch.Generator()], num_inference_steps=2)
    with pytest.raises(ValueError, match="pass either factors or interventions"):
        pipe.generate(factors=FACTORS, interventions={"color": "red"})
    with pytest.raises(ValueError, match="unknown factor 'hue'"):
        pipe.generate(interventions={"hue": "red"}, num_inference_steps=2)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe.generate(num_images=2, latents=torch.zeros(1, 3, 8, 8), num_inference_steps=2)


def test_constructor_checks_components():
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_pipeline()
    components = dict(pipe.components)
    components["scheduler"] = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="scheduler must be a DDIMScheduler"):
        type(pipe)(**components)


def test_prompt_tokens_condition_alongside_factors(tmp_path):
    pipe = tiny_pipeline()
    text_encoder, tokenizer = tiny_text_components(tmp_path)
    pipe = type(pipe)(**{**pipe.components, "text_encoder": text_encoder, "tokenizer": tokenizer})
    pipe.set_progress_bar_config(disable=True)
    images = tiny_images(2, 8)
    inputs = {"image": images, "factors": FACTORS[:2], "num_inference_steps": 3, "output_type": "pt"}
    red = pipe(**inputs, interventions={"color": "blue"}, prompt="a r d").images
    blue = pipe(**inputs, interventions={"color": "blue"}, prompt=["a b d", "a b d"]).images
    assert (red - blue).abs().max() > 1e-4  # the prompt reaches the UNet
    null = pipe(**inputs, interventions={}, prompt="a r d", abduction="ddpm").images
    assert (null - images).abs().max() < 1e-4
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = type(pipe).from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert torch.allclose(loaded(**inputs, interventions={"color": "blue"}, prompt="a r d").images, red, atol=1e-4)
