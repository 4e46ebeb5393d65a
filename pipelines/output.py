"""Output dataclasses of the counterfactual pipeline."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from cf_diffusion.identification import EditIdentification
from cf_diffusion.tiling import DEFAULT_TILE_OVERLAP


@dataclass
class InversionOutput(BaseOutput):
    """The abducted image noise U_I of a batch of images: what `CounterfactualDiffusionPipeline.invert` returns and
    `CounterfactualDiffusionPipeline.__call__(inversion=...)` accepts back.

    Attributes:
        trajectory: Tensor[S + 1, B, C, h, w] in sampling order: entry i is the (latent) sample at `timesteps[i]`,
            the last entry the clean input. DDIM: the inversion path; DDPM: the independently drawn noisy samples.
        noise_maps: Tensor[S, B, C, h, w], the edit-friendly DDPM noise terms (sigma_t z_t) added at each step, or
            None for DDIM.
        timesteps: Tensor[S], the descending timesteps the regeneration runs through.
        factors: Tensor[B, F], the factual factors (`FactorSchema.encode` format) the images were inverted with.
        num_inference_steps: Steps of the full schedule.
        strength: Fraction of the schedule inverted.
        abduction: `"ddim"` or `"ddpm"`.
        tile_overlap: Overlap of the tiles the UNet ran on, when the latents are larger than its size (regeneration
            must use the same tiles).
    """

    trajectory: torch.Tensor
    noise_maps: torch.Tensor | None
    timesteps: torch.Tensor
    factors: torch.Tensor
    num_inference_steps: int
    strength: float
    abduction: str
    tile_overlap: float = DEFAULT_TILE_OVERLAP


@dataclass
class CounterfactualPipelineOutput(BaseOutput):
    """Counterfactual images with the factor values of both worlds.

    Attributes:
        images: B * K images (B inputs, K = `num_counterfactuals`, image-major: output `b * K + k` is sample k of
            input b): a list of PIL images, `np.ndarray[N, H, W, C]` or `Tensor[N, C, H, W]` in [0, 1], or latents
            `Tensor[N, c, h, w]` for `output_type="latent"`.
        factual_factors: One dict name -> value (level name or float) per output image: the factual factors of its
            input.
        counterfactual_factors: One dict per output image: the counterfactual factors it was generated with.
        inversion: The abduction the images were regenerated from (reusable with `__call__(inversion=...)`).
        masks: With `preserve`, Tensor[N, 1, H, W] in [0, 1] at the input's resolution: where each image was allowed
            to change (1) and where it is the input's own pixels (0); else None.
        identification: One `EditIdentification` per output image: for each factor the edit changes or may change,
            whether the data identify it, the model's probabilities and the sharp bounds
            (`cf_diffusion.identification`). Not part of `to_tuple()`, which keeps the fields above.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    factual_factors: list[dict[str, Any]]
    counterfactual_factors: list[dict[str, Any]]
    inversion: InversionOutput
    masks: torch.Tensor | None = None
    identification: list[EditIdentification] | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are not None, without `identification`."""
        return tuple(self[key] for key in self.keys() if key != "identification")


@dataclass
class GenerationPipelineOutput(BaseOutput):
    """Images generated from factors sampled from the causal model.

    Attributes:
        images: N images, as in `CounterfactualPipelineOutput.images`.
        factors: One dict name -> value (level name or float) per image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    factors: list[dict[str, Any]]
