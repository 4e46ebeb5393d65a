"""The editing methods the evaluation harness compares: our pipeline and four baselines, behind one signature.

Every method answers the same request: images of B individuals, their factual factors, the counterfactual factors
wanted (drawn once by the harness from the pipeline's causal model) and the intervened factors; it returns B images.

- `ours`: abduction of the image noise U_I by inverting the sampler under the factual factors (DDIM inversion or
  edit-friendly DDPM noise maps), then regeneration under the counterfactual factors (`pipe(...)`).
- `regenerate` (baseline a): conditional generation without abduction: fresh noise, counterfactual factors
  (`pipe.generate(factors=...)`). The input image is not used at all.
- `no-scm` (baseline b): our editing without the causal model: only the intervened factors change; their
  descendants keep their factual values (the pipeline is told so by intervening on them with the factual values).
- `sdedit` (baseline c, Meng et al., 2022): the factual sample is re-noised with *fresh* noise to the level of
  `strength`, `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`, `eps ~ N(0, I)` (the forward process, as diffusers'
  img2img pipelines do), then denoised with DDIM under the counterfactual factors. No noise is abducted from the
  image: what survives of it is only the signal left at level t.
- `cvae-scm` (baseline d, a conditional-VAE deep structural causal model, Pawlowski et al., 2020): abduction is the
  posterior mean of a conditional VAE's encoder under the factual factors, prediction its decoder under the same
  counterfactual factors as `ours` (`cf_diffusion.evaluation.cvae`; the model is `EditOptions.cvae`). No diffusion
  model and no sampling steps.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.image_processor import PipelineImageInput

from cf_diffusion.editing_defaults import (
    ABDUCTIONS,
    DEFAULT_ABDUCTION,
    DEFAULT_GUIDANCE_REFERENCE,
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_SDEDIT_STRENGTH,
)
from cf_diffusion.evaluation.cvae import ConditionalVAE
from cf_diffusion.guidance import GuidanceScale
from cf_diffusion.pipelines import CounterfactualPipelineOutput

METHOD_KINDS = ("ours", "regenerate", "no-scm", "sdedit", "cvae-scm")

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Method:
    """One editing method with its settings.

    Attributes:
        kind: One of `METHOD_KINDS`.
        num_inference_steps: Steps of the full sampling schedule.
        abduction: `"ddim"` or `"ddpm"`: how `ours` and `no-scm` abduct the image noise (unused by the others;
            `cvae-scm` uses neither it nor the steps).
    """

    kind: str
    num_inference_steps: int
    abduction: str = DEFAULT_ABDUCTION

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"method kind must be one of {list(METHOD_KINDS)}, got {self.kind!r}")
        if self.abduction not in ABDUCTIONS:
            raise ValueError(f"abduction must be one of {list(ABDUCTIONS)}, got {self.abduction!r}")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {self.num_inference_steps!r}")

    @property
    def name(self) -> str:
        """The method's name in reports, e.g. `ours-ddpm@25`, `no-scm-ddim@25`, `sdedit@25`, `cvae-scm`."""
        if self.kind == "cvae-scm":
            return self.kind
        if self.kind in ("ours", "no-scm"):
            return f"{self.kind}-{self.abduction}@{self.num_inference_steps}"
        return f"{self.kind}@{self.num_inference_steps}"


@dataclass(frozen=True)
class EditOptions:
    """Settings shared by every method, so that methods differ only in how they make the image.

    Attributes:
        guidance_scale: Guidance along the edit as in the pipeline's `__call__` (None: per factor kind, see
            `cf_diffusion.guidance`); for `regenerate`, w of its classifier-free guidance (None: the pipeline's
            `generate` default).
        guidance_reference: `"factual"` or `"null"`, the reference branch of the editing guidance.
        sdedit_strength: Fraction of the schedule that `sdedit` re-noises and denoises, in (0, 1].
        predictor_guidance: The pipeline's `predictor_guidance` for `ours` and `no-scm` (None: the model's own).
        keep_guidance: The pipeline's `keep_guidance` for `ours` and `no-scm` (None: the model's own).
        keep_residual: The pipeline's `keep_residual` for `ours` and `no-scm` (None: the model's own).
        guidance_cutoff: The pipeline's `guidance_cutoff` for `ours` and `no-scm` (None: the model's own).
        cvae: The conditional VAE that `cvae-scm` edits with (None: that method cannot run).
    """

    guidance_scale: GuidanceScale = None
    guidance_reference: str = DEFAULT_GUIDANCE_REFERENCE
    sdedit_strength: float = DEFAULT_SDEDIT_STRENGTH
    predictor_guidance: float | None = None
    keep_guidance: float | None = None
    keep_residual: bool | None = None
    guidance_cutoff: float | None = None
    cvae: ConditionalVAE | None = None


def sdedit(
    pipe,
    image: PipelineImageInput,
    factors: Any,
    interventions: Mapping[str, Any] | None,
    strength: float = DEFAULT_SDEDIT_STRENGTH,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: GuidanceScale = None,
    guidance_reference: str = DEFAULT_GUIDANCE_REFERENCE,
    generator: torch.Generator | list[torch.Generator] | None = None,
    output_type: str = "np",
) -> CounterfactualPipelineOutput:
    """SDEdit-style editing: partial re-noising of the factual sample with fresh noise, then conditional denoising.

    With `t_0 > t_1 > ... > t_{S-1}` the last `S = round(strength * num_inference_steps)` timesteps of the schedule
    and `eps ~ N(0, I)` drawn from `generator` (independent of the image), the start is the forward-process sample
    `x_{t_0} = sqrt(abar_{t_0}) x_0 + sqrt(1 - abar_{t_0}) eps`, which is then denoised by DDIM under the
    counterfactual factors (`scm.counterfactual(factors, interventions)`) with the pipeline's editing guidance.
    It goes through the pipeline's public `__call__(inversion=...)`: the "inversion" handed over (`pipe.renoise`)
    holds the noised samples `x_{t_i}` (same eps) as its trajectory and no noise maps, so nothing about the image's
    noise is abducted.

    Args:
        pipe: A `CounterfactualDiffusionPipeline`.
        image: B images (PIL, arrays or tensors in [0, 1]) of the model's size and channels.
        factors: The factual factors, in any table form `FactorSchema.encode` accepts (B rows).
        interventions: As in the pipeline's `__call__`; None or `{}` re-noises and denoises with the factual factors.
        strength: Fraction in (0, 1] of the schedule to re-noise; 1 starts from pure noise.
        num_inference_steps: Steps of the full schedule.
        guidance_scale: As in the pipeline's `__call__`.
        guidance_reference: As in the pipeline's `__call__`.
        generator: A generator or a list of B: the fresh noise, then the causal model's draws.
        output_type: As in the pipeline's `__call__`.

    Returns:
        The pipeline's `CounterfactualPipelineOutput` (its `inversion` is the re-noised trajectory).
    """
    pixels = pipe.image_processor.preprocess(image).to(torch.float32)
    expected = (pipe.image_channels, pipe.image_size, pipe.image_size)
    if tuple(pixels.shape[1:]) != expected:
        raise ValueError(f"image has shape (C, H, W) = {tuple(pixels.shape[1:])}; the model edits {expected}")
    samples = pipe.encode_images(pixels, pipe.device)
    inversion = pipe.renoise(samples, factors, num_inference_steps, strength, generator)
    return pipe(
        inversion=inversion,
        interventions=interventions,
        guidance_scale=guidance_scale,
        guidance_reference=guidance_reference,
        generator=generator,
        output_type=output_type,
    )


def _lists(columns: Columns, names: Sequence[str]) -> dict[str, list]:
    return {name: np.asarray(columns[name]).tolist() for name in names}


def _cvae_edit(cvae: ConditionalVAE | None, images: np.ndarray, factual: Columns, target: Columns) -> np.ndarray:
    """`cvae-scm`: images float array[B, H, W, C] in [0, 1] edited from the `factual` to the `target` factors."""
    if cvae is None:
        raise ValueError("method 'cvae-scm' needs a conditional VAE: EditOptions(cvae=...)")
    schema = cvae.schema
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
    factual_encoded, target_encoded = (
        schema.normalize({name: torch.as_tensor(np.asarray(columns[name])) for name in schema.names}).to(cvae.device)
        for columns in (factual, target)
    )
    edited = cvae.counterfactual(pixels.to(cvae.device), factual_encoded, target_encoded)
    return ((edited.float().cpu() + 1) / 2).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def apply_method(
    pipe,
    method: Method,
    images: np.ndarray,
    factual: Columns,
    counterfactual: Columns,
    intervened: Sequence[str],
    options: EditOptions,
    generator: list[torch.Generator],
) -> np.ndarray:
    """Edits B images with one method (see the module docstring).

    The pipeline is told the counterfactual values of the intervened factors and of their descendants in its graph
    (for `no-scm`, the descendants' factual values instead); every other factor is a non-descendant and the causal
    model keeps it factual. With no intervened factor the request is the null edit: `ours`, `no-scm` and `sdedit`
    get `interventions={}`, and `regenerate` generates for the factual factors. `cvae-scm` decodes under the factual
    factors with the values the pipeline is told in place (the null edit: its reconstruction).

    Args:
        pipe: A `CounterfactualDiffusionPipeline`.
        method: The method and its steps and abduction.
        images: Float array[B, H, W, C] in [0, 1].
        factual: Factor name -> factual values, array[B] (level indices or raw units), every factor.
        counterfactual: Factor name -> the counterfactual values wanted, array[B], every factor.
        intervened: The intervened factors (empty for the null edit).
        options: Guidance and SDEdit settings.
        generator: One generator per image (the same seeds give every method the same noise).

    Returns:
        Float array[B, H, W, C] in [0, 1].
    """
    names = pipe.schema.names
    unknown = [name for name in intervened if name not in names]
    if unknown:
        raise ValueError(f"intervened factor(s) {unknown} are not factors of the model; it has {names}")
    if len(generator) != len(images):
        raise ValueError(f"generator must hold one generator per image ({len(images)}), got {len(generator)}")
    descendants = sorted(pipe.scm.graph.descendants(intervened)) if intervened else []
    target = dict(counterfactual)
    if method.kind == "no-scm":
        target.update({name: factual[name] for name in descendants})
    interventions = _lists(target, [*intervened, *descendants])
    factors = _lists(factual, names)
    common = {
        "num_inference_steps": method.num_inference_steps,
        "guidance_scale": options.guidance_scale,
        "generator": generator,
        "output_type": "np",
    }
    if method.kind == "cvae-scm":
        return _cvae_edit(options.cvae, images, factual, {**factors, **interventions})
    if method.kind == "regenerate":
        wanted = _lists(target if intervened else factual, names)
        if options.guidance_scale is None:
            del common["guidance_scale"]
        return np.asarray(pipe.generate(factors=wanted, **common).images)
    if method.kind == "sdedit":
        out = sdedit(
            pipe,
            images,
            factors,
            interventions,
            strength=options.sdedit_strength,
            guidance_reference=options.guidance_reference,
            **common,
        )
        return np.asarray(out.images)
    out = pipe(
        image=images,
        factors=factors,
        interventions=interventions,
        abduction=method.abduction,
        guidance_reference=options.guidance_reference,
        predictor_guidance=options.predictor_guidance,
        keep_guidance=options.keep_guidance,
        keep_residual=options.keep_residual,
        guidance_cutoff=options.guidance_cutoff,
        **common,
    )
    return np.asarray(out.images)
