"""The final composite of a high-resolution edit, streamed in bands of rows.

An edit that runs at a working size smaller than its image comes back as a small decoded image; its output is that
image resized to the input's size, `m * resized + (1 - m) * input` under the pixel mask m (so that pixels where m is
0 are the input's own), and converted to the requested output type. Done on whole images, each of those steps holds
one or more full-size float copies of the image at once. Here the resize is written as two small linear maps (a
resize is linear in the pixels, and separable: `resize(x) = R_h x R_w^T` per channel), so the output is computed
`BAND_PIXELS` at a time, straight into the output array: beyond the input and the output themselves, memory stays
that of one band whatever the image size.
"""

from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

BAND_PIXELS = 1 << 20
"""Pixels (rows x width) of one band of the streamed composite."""
RESIDUAL_FADE = 0.1
"""Decoded change (largest over channels, in the [-1, 1] pixel scale) at which a kept residual is wholly replaced by
the edit (`composite`'s `factual`)."""


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images Tensor[B, C, H, W] resized to `size` (bicubic, antialiased when shrinking); the same tensor when it
    is already that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bicubic", antialias=True)


def resize_matrix(source: int, target: int) -> torch.Tensor:
    """`resize` along one side, from `source` to `target` samples, as a matrix Tensor[target, source] float32: the
    identity image resized along its height."""
    return resize(torch.eye(source)[None, None], (target, source))[0, 0]


def composite(
    decoded: torch.Tensor,
    reference: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    box: tuple[int, int, int, int] | None,
    output_type: str,
    postprocess: Any,
    factual: torch.Tensor | None = None,
) -> Any:
    """The decoded images resized to the reference's size, put into it under the mask, cropped and converted.

    Args:
        decoded: Tensor[N, C, h, w] in about [-1, 1], the edits as decoded at the working size.
        reference: Tensor[N, C, H, W] in [-1, 1], the input pixels, one per edit (an expanded view is fine).
        pixel_mask: Tensor[N, 1, H, W] in [0, 1] or None (the whole image is the edit's): the output is
            `m * resized + (1 - m) * reference`, so where m is 0 it is the reference's pixels exactly.
        box: (top, left, bottom, right) of the input inside its padding, or None: the output is cropped to it.
        output_type: `"pil"`, `"np"` or `"pt"`, as diffusers' `VaeImageProcessor.postprocess`.
        postprocess: That image processor's `postprocess`, applied band by band (`output_type` `"pt"` for `"pt"`,
            else `"np"`).
        factual: Tensor like `decoded` or None: the decoding of the factual sample. Given, what the decoder does
            not reproduce of the input, the residual `reference - factual`, is kept where the edit leaves a pixel as
            it was and fades out where it changes it: the output is `reference + change - (1 - g) (reference -
            factual)`, with `change = decoded - factual` resized and the gate `g = 1 - min(1, |change| /
            RESIDUAL_FADE)` (the largest over channels). A null edit (no change) returns the reference exactly; a
            moved stroke keeps no trace of the old one's residual. Without it, the output is the resized decoded
            image.

    Returns:
        A list of N PIL images, an array[N, H, W, C] float32 in [0, 1], or a Tensor[N, C, H, W] in [0, 1] (the
        decoded images' dtype and device).
    """
    top, left, bottom, right = box or (0, 0, *reference.shape[-2:])
    (height_in, width_in), (height_out, width_out) = decoded.shape[-2:], reference.shape[-2:]
    columns = None if width_in == width_out else resize_matrix(width_in, width_out)[left:right].to(decoded).T
    rows = None if height_in == height_out else resize_matrix(height_in, height_out)[top:bottom].to(decoded)

    def narrow(images: torch.Tensor) -> torch.Tensor:
        """Images resized to the output's width (the box's columns), at the decoded height."""
        return images[..., left:right] if columns is None else images @ columns

    def rows_of(narrowed: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output rows start:stop of narrowed images, resized to the output's height."""
        return narrowed[..., top + start : top + stop, :] if rows is None else rows[start:stop] @ narrowed

    narrowed = narrow(decoded if factual is None else decoded - factual)
    narrowed_factual = None if factual is None else narrow(factual)
    count, channels = decoded.shape[:2]
    height, width = bottom - top, right - left
    if output_type == "pt":
        output = decoded.new_empty((count, channels, height, width))
    else:
        output = np.empty((count, height, width, channels), dtype=np.uint8 if output_type == "pil" else np.float32)
    band = max(1, BAND_PIXELS // width)
    for start in range(0, height, band):
        stop = min(start + band, height)
        edit = rows_of(narrowed, start, stop)
        input_band = reference[..., top + start : top + stop, left:right].to(edit)
        if factual is not None:
            fade = (edit.abs().amax(1, keepdim=True) / RESIDUAL_FADE).clamp(max=1)
            edit = input_band + edit - fade * (input_band - rows_of(narrowed_factual, start, stop))
        edit = edit.clamp(-1, 1)
        if pixel_mask is not None:
            mask = pixel_mask[..., top + start : top + stop, left:right].to(edit)
            edit = mask * edit + (1 - mask) * input_band
        if output_type == "pt":
            output[..., start:stop, :] = postprocess(edit, output_type="pt")
        else:
            values = postprocess(edit, output_type="np")
            output[:, start:stop] = (values * 255).round() if output_type == "pil" else values
    if output_type != "pil":
        return output
    return [PIL.Image.fromarray(image[..., 0] if channels == 1 else image) for image in output]
