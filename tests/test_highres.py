"""High-resolution editing: tile layouts, the tiled model function, tiled abduction and prediction, preservation."""

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_fixtures import tiny_images, tiny_pipeline

from cf_diffusion.tiling import tile_layout, tiled_model_fn

FACTORS = {"size": "small", "color": "red", "bar": "1", "thickness": 3.0}


def to_pil(images: torch.Tensor) -> Image.Image:
    """The first image of Tensor[B, 3, H, W] in [0, 1] as an 8-bit PIL image (what users edit)."""
    return Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "align"),
    [(8, 8, 8, 0.25, 1), (16, 16, 8, 0.25, 2), (30, 18, 8, 0.25, 2), (25, 9, 8, 0.5, 1), (24, 40, 8, 0.0, 4)],
)
def test_tile_layout_covers_every_pixel_and_weights_sum_to_one(height, width, tile, overlap, align):
    layout = tile_layout(height, width, tile, overlap, align)
    coverage = torch.zeros(height, width)
    total = torch.zeros(height, width)
    for (top, left), weight in zip(layout.positions, layout.weights, strict=True):
        assert top % align == 0 and left % align == 0
        coverage[top : top + tile, left : left + tile] += 1
        total[top : top + tile, left : left + tile] += weight[0]
    assert (coverage >= 1).all() and (layout.weights > 0).all()
    torch.testing.assert_close(total, torch.ones(height, width), atol=1e-6, rtol=0)
    assert max(top for top, _ in layout.positions) == height - tile  # flush with the edges
    assert max(left for _, left in layout.positions) == width - tile
    assert (layout.num_tiles == 1) == (height == width == tile)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((16, 16, 8, 1.0), r"tile overlap must be a fraction in \[0, 1\)"),
        ((16, 6, 8, 0.25), "smaller than a tile"),
        ((15, 16, 8, 0.25, 2), "tile offsets must be multiples of 2"),
    ],
)
def test_tile_layout_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        tile_layout(*arguments)


def test_one_tile_runs_the_model_as_it_is():
    unet_like = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    done = []
    fn = tiled_model_fn(lambda x, t, cond: unet_like(x), tile_layout(8, 8, 8), progress=done.append)
    assert torch.equal(fn(x, torch.tensor(10), None), unet_like(x)) and done == [1]


def test_planted_constant_image_stays_constant_across_tile_seams():
    layout = tile_layout(40, 24, 8, 0.25, 2)
    constant = torch.full((1, 4, 40, 24), 0.7)
    out = tiled_model_fn(lambda x, t, cond: x * 0.5, layout)(constant, torch.tensor(500), None)
    assert (out - 0.35).abs().max() <= 1e-3
    # Any per-pixel model is translation-equivariant: tiled, it is the model on the whole latent.
    x = torch.randn(1, 4, 40, 24)
    pointwise = tiled_model_fn(lambda x, t, cond: torch.tanh(x) * 2, layout, tile_batch_size=5)(x, 0, None)
    torch.testing.assert_close(pointwise, torch.tanh(x) * 2, atol=1e-6, rtol=0)


def test_tiled_model_fn_repeats_the_conditioning_per_tile_whatever_the_tile_batch():
    layout = tile_layout(20, 14, 8, 0.25, 2)
    x = torch.randn(3, 2, 20, 14)
    cond = {"scale": torch.tensor([1.0, -2.0, 3.0]), "shift": torch.tensor([[0.5], [0.0], [-1.0]])}

    def model_fn(x, t, cond):
        assert x.shape[-2:] == (8, 8) and len(cond["scale"]) == len(x)
        return x * cond["scale"][:, None, None, None] + cond["shift"][:, :, None, None]

    expected = x * cond["scale"][:, None, None, None] + cond["shift"][:, :, None, None]
    for tile_batch_size in (1, 4, 100):
        done = []
        out = tiled_model_fn(model_fn, layout, tile_batch_size, done.append)(x, torch.tensor(1), cond)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        assert sum(done) == layout.num_tiles and max(done) <= tile_batch_size
    with pytest.raises(ValueError, match="tile_batch_size must be an integer >= 1"):
        tiled_model_fn(model_fn, layout, 0)


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_tiled_null_edit_with_ddpm_reconstructs_pixels(size, prediction_type):
    """2x and 4x the model's 8 px: abduction and prediction share tiles, so the DDPM replay is exact."""
    pipe = tiny_pipeline(prediction_type=prediction_type)
    images = tiny_images(2, size)
    out = pipe(
        image=images,
        factors=[FACTORS, {**FACTORS, "color": "blue"}],
        interventions={},
        num_inference_steps=3,
        abduction="ddpm",
        preserve="none",
        tile_batch_size=3,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == images.shape and out.masks is None
    assert (out.images - images).abs().max() < 1e-4


def test_tiled_null_edit_with_ddpm_reconstructs_latents_and_reuses_the_inversion():
    pipe = tiny_pipeline(latent=True)
    images = tiny_images(1, 48)  # 3x the model's 16 px: 24x24 latents, tiles of 8
    latents = pipe.encode_images(pipe.image_processor.preprocess(images), pipe.device)
    assert latents.shape == (1, 4, 24, 24) and not pipe.vae.use_tiling  # the VAE's tiling is restored after
    inversion = pipe.invert(images, FACTORS, num_inference_steps=3, abduction="ddpm", tile_overlap=0.5)
    assert inversion.tile_overlap == 0.5
    out = pipe(inversion=inversion, interventions={}, guidance_scale=4.0, output_type="latent")
    assert (out.images - latents).abs().max() < 1e-4
    with pytest.raises(ValueError, match="tile_overlap=0.25 conflicts with the inversion"):
        pipe(inversion=inversion, interventions={}, tile_overlap=0.25)


def test_tiled_ddim_edit_runs_with_guidance():
    pipe = tiny_pipeline(latent=True, prediction_type="v_prediction")
    out = pipe(
        image=tiny_images(2, 32),
        factors=[FACTORS, FACTORS],
        interventions={"color": "blue"},
        num_inference_steps=2,
        preserve="none",
        output_type="np",
    )
    assert out.images.shape == (2, 32, 32, 3) and np.isfinite(out.images).all()


def test_preserve_auto_keeps_the_input_pixels_outside_the_mask():
    pipe = tiny_pipeline()
    image = to_pil(tiny_images(1, 24))  # 3x the model's size: "auto" by default
    out = pipe(
        image=image,
        factors=FACTORS,
        interventions={"color": "blue", "size": "large"},
        num_inference_steps=3,
        abduction="ddpm",
        mask_threshold=0.5,  # the random tiny model's effect is everywhere above the default's 0.1 of its peak
        generator=torch.Generator().manual_seed(0),
    )
    mask = out.masks[0, 0].numpy()
    assert out.masks.shape == (1, 1, 24, 24) and set(np.unique(mask)) <= {0.0, 1.0}
    assert 0 < mask.sum() < mask.size  # the mask is neither empty nor the whole image
    edited, original = np.asarray(out.images[0], dtype=np.int16), np.asarray(image, dtype=np.int16)
    assert np.abs(edited - original)[mask == 0].max() == 0  # bit for bit, after 8-bit conversion
    assert np.abs(edited - original)[mask == 1].max() > 0


def test_null_edit_has_an_empty_mask_and_returns_the_input():
    pipe = tiny_pipeline(latent=True)
    image = to_pil(tiny_images(1, 32))
    out = pipe(image=image, factors=FACTORS, interventions={}, num_inference_steps=2, preserve="auto")
    assert out.masks.shape == (1, 1, 32, 32) and out.masks.sum() == 0
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(image))


def test_preserve_with_a_user_mask_and_the_tuple_output():
    pipe = tiny_pipeline()
    images = tiny_images(1, 16)
    keep_left = torch.zeros(1, 1, 16, 16)
    keep_left[..., 8:] = 1
    inputs = {"image": images, "factors": FACTORS, "interventions": {"color": "blue"}, "num_inference_steps": 2}
    out = pipe(**inputs, preserve=keep_left, output_type="pt")
    assert torch.equal(out.masks, keep_left)
    assert (out.images - images)[..., :8].abs().max() <= 1e-6 and (out.images - images)[..., 8:].abs().max() > 0
    images_, factual, counterfactual, inversion, masks = pipe(**inputs, preserve=keep_left, return_dict=False)
    assert torch.equal(masks, keep_left)
    assert len(pipe(**inputs, preserve="none", return_dict=False)) == 4  # masks is None: left out, as before


def test_working_size_returns_full_resolution_and_keeps_pixels_outside_the_mask():
    pipe = tiny_pipeline(latent=True)
    image = to_pil(tiny_images(1, 64))  # diffused at 32 px (16x16 latents, 9 tiles), composited at 64 px
    out = pipe(
        image=image,
        factors=FACTORS,
        interventions={"color": "green"},
        num_inference_steps=2,
        working_size=32,
        mask_threshold=0.7,
        output_type="np",
    )
    assert out.images.shape == (1, 64, 64, 3) and out.masks.shape == (1, 1, 64, 64)
    assert out.inversion.trajectory.shape[-2:] == (16, 16)
    outside = out.masks[0, 0].numpy() == 0
    assert outside.any() and not outside.all()
    assert np.abs(out.images[0] - np.asarray(image) / 255)[outside].max() <= 1 / 255


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_model_outputs_are_read_as_noise_predictions_for_the_mask(prediction_type):
    pipe = tiny_pipeline(prediction_type=prediction_type)
    x0, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    alpha_bar = pipe.scheduler.alphas_cumprod[600]
    noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    output = {"epsilon": eps, "v_prediction": v, "sample": x0}[prediction_type]
    torch.testing.assert_close(pipe._predicted_noise(output, noisy, torch.tensor(600)), eps, atol=1e-5, rtol=0)


def test_factor_predictor_reads_large_images_at_its_own_size():
    pipe = tiny_pipeline()
    out = pipe(image=tiny_images(1, 16), interventions={}, num_inference_steps=1, output_type="pt")
    small = pipe(image=tiny_images(1, 8), interventions={}, num_inference_steps=1, output_type="pt")
    assert set(out.factual_factors[0]) == set(small.factual_factors[0])


BAD_INPUTS = [
    ({"image": torch.rand(1, 3, 18, 18)}, r"image has shape .* \(3, 18, 18\).* sides multiples of 4"),
    ({"image": torch.rand(1, 3, 12, 20)}, r"image has shape .* \(3, 12, 20\), but the model edits .* at 16x16"),
    ({"working_size": 8}, "working_size must be a multiple of 4 from the model's size 16 to the image's shorter"),
    ({"working_size": 64}, "working_size must be a multiple of 4 from the model's size 16 to the image's shorter"),
    ({"working_size": 30}, "working_size must be a multiple of 4"),
    ({"preserve": "everything"}, r"preserve must be one of \['auto', 'none'\] or a mask Tensor"),
    ({"preserve": torch.ones(1, 1, 5, 5)}, r"preserve must be Tensor\[1 or 1, 1, H, W\]"),
    ({"preserve": "auto", "mask": torch.ones(1, 1, 32, 32)}, "pass either mask .* or preserve"),
    ({"mask_threshold": 1.5}, r"mask_threshold must be a number in \[0, 1\]"),
    ({"tile_overlap": 1.0}, r"tile overlap must be a fraction in \[0, 1\)"),
    ({"tile_batch_size": 0}, "tile_batch_size must be an integer >= 1"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_highres_inputs_raise_value_error(change, message):
    pipe = tiny_pipeline(latent=True)
    inputs = {
        "image": tiny_images(1, 32),
        "factors": FACTORS,
        "interventions": {"color": "green"},
        "num_inference_steps": 1,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        pipe(**inputs)


def test_preserve_needs_the_image():
    pipe = tiny_pipeline()
    inversion = pipe.invert(tiny_images(1, 16), FACTORS, num_inference_steps=1)
    with pytest.raises(ValueError, match="preserve puts the input's own pixels back .* needs image"):
        pipe(inversion=inversion, interventions={"color": "blue"}, preserve="auto")
    assert pipe(inversion=inversion, interventions={"color": "blue"}, output_type="pt").masks is None


def test_working_size_needs_the_image():
    pipe = tiny_pipeline()
    inversion = pipe.invert(tiny_images(1, 16), FACTORS, num_inference_steps=1, working_size=8)
    assert inversion.trajectory.shape[-2:] == (8, 8)
    with pytest.raises(ValueError, match="working_size resizes the image"):
        pipe(inversion=inversion, interventions={}, working_size=8)


def test_cli_edit_show_mask_writes_an_input_edit_mask_panel(tmp_path, capsys):
    from cf_diffusion.cli import main
    from cf_diffusion.models import load_examples

    row = load_examples()[0]
    image = tmp_path / "in.png"
    row["image"].resize((64, 64), Image.NEAREST).save(image)  # twice the shipped model's 32 px
    target = "green" if row["factors"]["color"] == "red" else "red"
    factors = ",".join(f"{k}={v}" for k, v in row["factors"].items())
    out = tmp_path / "out.png"
    argv = ["edit", "--image", str(image), "--do", f"color={target}", "--factors", factors, "--steps", "2"]
    assert main([*argv, "--out", str(out), "--show-mask"]) == 0
    assert Image.open(out).size == (64, 64)
    panel = Image.open(tmp_path / "out_mask.png")
    assert panel.size[0] == 3 * 64 and f"wrote {tmp_path / 'out_mask.png'}" in capsys.readouterr().out
    assert main([*argv, "--out", str(out), "--show-mask", "--preserve", "none"]) == 2
    assert "--show-mask draws the preservation mask" in capsys.readouterr().err


def test_default_working_size_edits_larger_images_at_it(tmp_path):
    from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

    pipe = tiny_pipeline(latent=True)
    pipe.register_to_config(default_working_size=32)
    pipe.save_pretrained(tmp_path)
    pipe = CounterfactualDiffusionPipeline.from_pretrained(tmp_path)
    assert pipe.config.default_working_size == 32
    pipe.set_progress_bar_config(disable=True)
    image = to_pil(tiny_images(1, 64))
    arguments = {"image": image, "factors": FACTORS, "interventions": {"color": "green"}, "num_inference_steps": 2}
    by_default = pipe(**arguments, output_type="np", generator=torch.Generator().manual_seed(0))
    explicit = pipe(**arguments, output_type="np", working_size=32, generator=torch.Generator().manual_seed(0))
    assert by_default.inversion.trajectory.shape[-2:] == (16, 16)
    np.testing.assert_array_equal(by_default.images, explicit.images)
    at_its_size = pipe(**{**arguments, "image": to_pil(tiny_images(1, 32))}, output_type="np")
    assert at_its_size.images.shape == (1, 32, 32, 3)
    full = pipe(**arguments, working_size=64, output_type="np")  # a call's own working size wins
    assert full.inversion.trajectory.shape[-2:] == (32, 32)


@pytest.mark.parametrize("value", [18, 8, "32"])
def test_a_bad_default_working_size_is_refused(value):
    from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

    pipe = tiny_pipeline(latent=True)
    with pytest.raises(ValueError, match="default_working_size must be None or a multiple of"):
        CounterfactualDiffusionPipeline(**pipe.components, default_working_size=value)


def test_demo_of_a_high_resolution_model_draws_input_edit_mask_per_cause(tmp_path):
    import json

    from cf_diffusion.demo import run_demo

    pipe = tiny_pipeline(latent=True)
    pipe.register_to_config(default_working_size=16)
    pipe.save_pretrained(tmp_path / "model")
    examples = tmp_path / "model" / "examples"
    examples.mkdir()
    to_pil(tiny_images(1, 64)).save(examples / "scene.png")  # 4x the model's 16 px
    (examples / "examples.jsonl").write_text(json.dumps({"file_name": "scene.png", "factors": FACTORS}) + "\n")
    path, table = run_demo(str(tmp_path / "model"), tmp_path / "demo.png", num_inference_steps=2)
    assert [row["edit"] for row in table] == ["factual", "do(size)", "do(bar)"]  # the demo factors with children
    panel = Image.open(path)
    assert panel.size[0] == 3 * 64 and panel.size[1] > 2 * 64
