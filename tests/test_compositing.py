"""The streamed composite of high-resolution edits (`cf_diffusion.compositing`)."""

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

import cf_diffusion.compositing as compositing
from cf_diffusion.compositing import composite, resize, resize_matrix

POSTPROCESS = VaeImageProcessor(do_resize=False).postprocess


def whole_image_composite(decoded, reference, mask, output_type):
    """The composite on whole images, as written before streaming: resize, clamp, blend, postprocess."""
    resized = resize(decoded, reference.shape[-2:]).clamp(-1, 1)
    return POSTPROCESS(mask * resized + (1 - mask) * reference, output_type=output_type)


@pytest.mark.parametrize("source,target", [(16, 64), (24, 9), (7, 7), (16, 50)])
def test_resize_matrix_is_the_resize_along_one_side(source, target):
    images = torch.randn(2, 3, source, 11)
    expected = resize(images, (target, 11))
    assert torch.allclose(resize_matrix(source, target) @ images, expected, atol=1e-5)


def test_resize_matrices_make_the_two_dimensional_resize():
    images = torch.randn(2, 3, 16, 24)
    expected = resize(images, (64, 96))
    got = resize_matrix(16, 64) @ images @ resize_matrix(24, 96).T
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.fixture
def scene():
    generator = torch.Generator().manual_seed(0)
    decoded = torch.rand(2, 3, 8, 12, generator=generator) * 2.2 - 1.1  # decoders overshoot [-1, 1] a little
    reference = (torch.randint(0, 256, (2, 3, 40, 60), generator=generator).float() / 255) * 2 - 1
    mask = torch.zeros(2, 1, 40, 60)
    mask[0, :, 5:25, 10:50] = 1
    mask[1, :, 20:40, :30] = 0.5
    return decoded, reference, mask


@pytest.mark.parametrize("band_pixels", [60, 7 * 60, 1 << 20])
def test_streamed_composite_matches_the_whole_image_one(scene, monkeypatch, band_pixels):
    decoded, reference, mask = scene
    monkeypatch.setattr(compositing, "BAND_PIXELS", band_pixels)
    got = composite(decoded, reference, mask, None, "np", POSTPROCESS)
    expected = whole_image_composite(decoded, reference, mask, "np")
    assert got.shape == (2, 40, 60, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pixels_outside_the_mask_are_the_inputs_own(scene, monkeypatch):
    decoded, reference, mask = scene
    monkeypatch.setattr(compositing, "BAND_PIXELS", 7 * 60)
    images = composite(decoded, reference, mask, None, "pil", POSTPROCESS)
    uint8_input = ((reference + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for image, original, m in zip(images, uint8_input, mask[:, 0].numpy(), strict=True):
        edited = np.asarray(image)
        assert image.mode == "RGB" and edited.shape == (40, 60, 3)
        assert np.array_equal(edited[m == 0], original[m == 0])
        assert (edited[m > 0] != original[m > 0]).mean() > 0.9


def test_pil_output_rounds_as_diffusers_does(scene):
    decoded, reference, mask = scene
    images = composite(decoded, reference, mask, None, "pil", POSTPROCESS)
    expected = VaeImageProcessor.numpy_to_pil(whole_image_composite(decoded, reference, mask, "np"))
    pairs = zip(images, expected, strict=True)
    diff = [np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() for a, b in pairs]
    assert max(diff) <= 1  # the same up to a rounding flip where the two resizes differ in the last float bit


def test_pt_output_keeps_dtype_and_layout(scene):
    decoded, reference, mask = scene
    got = composite(decoded, reference, mask, None, "pt", POSTPROCESS)
    expected = whole_image_composite(decoded, reference, mask, "pt")
    assert got.shape == (2, 3, 40, 60) and got.dtype == decoded.dtype
    assert torch.allclose(got, expected, atol=1e-5)


def test_without_a_mask_the_output_is_the_resized_edit(scene):
    decoded, reference, _ = scene
    got = composite(decoded, reference, None, None, "np", POSTPROCESS)
    expected = POSTPROCESS(resize(decoded, (40, 60)).clamp(-1, 1), output_type="np")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_box_crops_the_padded_edit(scene):
    decoded, reference, mask = scene
    box = (4, 6, 36, 50)
    got = composite(decoded, reference, mask, box, "np", POSTPROCESS)
    expected = whole_image_composite(decoded, reference, mask, "np")[:, 4:36, 6:50]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_same_size_edit_is_not_resampled(monkeypatch):
    decoded = torch.rand(1, 1, 32, 32) * 2 - 1
    reference = torch.zeros(1, 1, 32, 32)
    monkeypatch.setattr(compositing, "BAND_PIXELS", 100)
    got = composite(decoded, reference, torch.ones(1, 1, 32, 32), (2, 2, 30, 30), "np", POSTPROCESS)
    expected = POSTPROCESS(decoded, output_type="np")[:, 2:30, 2:30]
    assert got.shape == (1, 28, 28, 1)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("band_pixels", [7 * 60, 1 << 20])
def test_with_the_factual_decoding_the_residual_is_kept_where_the_edit_leaves_a_pixel(scene, monkeypatch, band_pixels):
    decoded, reference, mask = scene
    generator = torch.Generator().manual_seed(1)
    step = torch.rand(decoded.shape, generator=generator) * 2 - 1
    step[:, :, :4] *= 0.2 * compositing.RESIDUAL_FADE  # the top rows change a little, the bottom ones a lot
    factual = decoded - step
    monkeypatch.setattr(compositing, "BAND_PIXELS", band_pixels)
    got = composite(decoded, reference, mask, None, "np", POSTPROCESS, factual=factual)
    change, resized_factual = resize(decoded - factual, (40, 60)), resize(factual, (40, 60))
    fade = (change.abs().amax(1, keepdim=True) / compositing.RESIDUAL_FADE).clamp(max=1)
    assert fade[..., :10, :].max() < 0.5 and (fade[..., 25:, :] == 1).float().mean() > 0.5  # both regimes occur
    edited = (reference + change - fade * (reference - resized_factual)).clamp(-1, 1)
    expected = POSTPROCESS(mask * edited + (1 - mask) * reference, output_type="np")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    whole = composite(decoded, reference, None, None, "np", POSTPROCESS, factual=factual)
    faded = (fade == 1).expand_as(reference).permute(0, 2, 3, 1).numpy()  # changed by RESIDUAL_FADE or more:
    plain = composite(decoded, reference, None, None, "np", POSTPROCESS)  # the decoded edit's own pixels
    np.testing.assert_allclose(whole[faded], plain[faded], atol=1e-5)
    unchanged = composite(decoded, reference, None, None, "np", POSTPROCESS, factual=decoded)
    np.testing.assert_array_equal(unchanged, POSTPROCESS(reference, output_type="np"))
