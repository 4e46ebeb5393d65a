"""CounterfactualDiffusionPipeline: counterfactual image editing by abduction, action and prediction.

One call edits a batch of images:

1. factual factors: given by the user, or read off each image by the `factor_predictor`;
2. action and prediction over the factors: `scm.counterfactual(factual, interventions)` keeps every non-descendant
   of an intervened factor exactly and propagates the intervention to its descendants;
3. abduction of the image noise U_I: invert the diffusion sampler under the *factual* conditioning (guidance 1), by
   DDIM inversion or exact edit-friendly DDPM noise maps, over the last `strength` fraction of the schedule;
4. prediction of the image: regenerate from U_I under the *counterfactual* conditioning, with guidance whose
   reference branch is, by default, the factual conditioning: `eps = eps_ref + w (eps_cf - eps_ref)`. The null edit is
   then an exact replay of the abduction for any w (both branches coincide), and w > 1 pushes along the edit only,
   over the first `guidance_cutoff` fraction of the steps.
   An optional mask keeps the factual trajectory outside the region allowed to change.

Images larger than the model's size are edited in overlapping tiles of the model's size (`cf_diffusion.tiling`), with
the same tiles and weights in the abduction and the prediction, optionally at a smaller `working_size`. For them the
edit by default preserves the input (`preserve="auto"`): a DiffEdit-style mask of the region the intervention
affects, computed from the model's noise predictions under the factual and the counterfactual factors, keeps the
factual trajectory outside it at every step, and a final composite at the input's resolution puts the input's own
pixels back outside it.
"""

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMInverseScheduler,
    DDIMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import PipelineImageInput
from diffusers.utils.torch_utils import randn_tensor

from cf_diffusion.compositing import composite, resize
from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.editing_defaults import (
    ABDUCTIONS,
    DEFAULT_ABDUCTION,
    DEFAULT_GUIDANCE_CUTOFF,
    DEFAULT_GUIDANCE_REFERENCE,
    DEFAULT_KEEP_GUIDANCE,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_PREDICTOR_GUIDANCE,
    DEFAULT_STRENGTH,
    DEFAULT_TILE_BATCH_SIZE,
    GUIDANCE_REFERENCES,
    PRESERVE_MODES,
)
from cf_diffusion.guidance import GuidanceScale, change_sources, check_fraction, edit_guidance, factor_weights
from cf_diffusion.identification import identify_edits
from cf_diffusion.images import padding_box, pil_to_signed, uint8_to_unit
from cf_diffusion.inversion import (
    ddim_invert,
    ddim_step,
    ddpm_noise_maps,
    ddpm_step,
    inference_timesteps,
    inverse_scheduler_for,
)
from cf_diffusion.predictor import FactorPredictor
from cf_diffusion.reading import to_8bit
from cf_diffusion.scm import NeuralCausalModel
from cf_diffusion.tiling import DEFAULT_TILE_OVERLAP, TileLayout, tile_layout, tiled_model_fn

from .output import CounterfactualPipelineOutput, GenerationPipelineOutput, InversionOutput
from .pipeline_generation import FactorGenerationPipeline
from .shared import (
    OUTPUT_TYPES,
    CallbackOnStepEnd,
    FactorPipelineMixin,
    Generator,
    _check_choice,
    _check_components,
    _check_count,
    _check_generator,
    _dtypes_looked_up_once,
    _row_interventions,
    _rows,
)

MASK_NOISE_LEVELS = (0.3, 0.5, 0.7)
"""Noise levels (fractions of the training schedule) at which `preserve="auto"` compares noise predictions."""
MASK_NUM_NOISES = 4
"""Noise draws per level averaged by `preserve="auto"` (one draw gives a visibly noisier mask)."""
MASK_SEED = 0
"""Seed of the fixed noise `preserve="auto"` adds (the same for every image, so masks do not depend on the batch)."""


def _check_scale(value: Any, name: str) -> None:
    """A guidance scale that 0 disables must be a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0 (0 disables it), got {value!r}")


def _check_predictor_guidance(value: Any, predictor: FactorPredictor | None, name: str) -> None:
    """A predictor guidance scale must be a number >= 0, and a positive one needs a factor predictor."""
    _check_scale(value, name)
    if value > 0 and predictor is None:
        raise ValueError(f"{name}={value!r} needs a factor_predictor, and the pipeline has none")


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images Tensor[B, C, H, W] in [-1, 1] resized to `size` (bicubic, antialiased when shrinking), in [-1, 1]."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return resize(images, size).clamp(-1, 1)


def _unit_range(image: Any) -> Any:
    """One image of `image=` in the form diffusers' VaeImageProcessor reads: a uint8 array or tensor (0..255)
    scaled to floats in [0, 1], a 16-bit greyscale PIL image to 8 bit (`to_8bit`); a float array or tensor must
    already be in [0, 1].

    Raises:
        ValueError: On another dtype, NaN or infinite values, or floats outside [0, 1].
    """
    if isinstance(image, PIL.Image.Image):
        return to_8bit(image)
    if not isinstance(image, np.ndarray | torch.Tensor):
        return image
    values = torch.as_tensor(image)
    if values.dtype == torch.uint8:
        return uint8_to_unit(image)
    if not values.is_floating_point():
        raise ValueError(f"image must be uint8 (0..255) or float (0..1), got {values.dtype}")
    if not torch.isfinite(values).all():
        raise ValueError("image holds NaN or infinite pixel values")
    if values.numel() and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"image is float with values in [{values.min().item():.4g}, {values.max().item():.4g}]; float images "
            "must be in [0, 1] (uint8 ones in 0..255)"
        )
    return image


class CounterfactualDiffusionPipeline(FactorPipelineMixin, DiffusionPipeline):
    """Counterfactual image editing with a factor-conditioned diffusion model and a neural causal model.

    Args:
        unet: The factor-conditioned denoiser. Factor tokens go to `encoder_hidden_states` (unless the
            factor_encoder has `cross_attention_tokens=False`); with `class_embed_type="projection"` the flattened
            tokens also go to `class_labels`.
        scheduler: The sampler's `DDIMScheduler` (epsilon, v-prediction or sample prediction).
        factor_encoder: Factor vector + known mask -> the UNet's conditioning.
        scm: The causal model over the factors (same factors as `factor_encoder.schema`).
        vae: Optional `AutoencoderKL`; None runs in pixel space. Latents are
            `vae.encode(x).latent_dist.mean * vae.config.scaling_factor`.
        factor_predictor: Optional; reads the factual factors off the images when the user gives none.
        inverse_scheduler: Optional `DDIMInverseScheduler` for DDIM inversion; by default built from the
            scheduler's config.
        text_encoder: Optional transformers text encoder (for models fine-tuned from a text-to-image model); the
            prompt's tokens go before the factor tokens in `encoder_hidden_states`, or are all of it when the
            factor_encoder has `cross_attention_tokens=False` (then a text encoder is required).
        tokenizer: The text encoder's tokenizer.
        default_abduction: The abduction a call uses when it names none (`"ddim"` or `"ddpm"`), measured for the model
            and saved with it in `model_index.json`.
        default_guidance_scale: The model's own guidance weights (a number, or `{factor: w}`), used where a call
            gives none; None guides by factor kind (`cf_diffusion.guidance`). Saved in `model_index.json`.
        default_predictor_guidance: The model's own `predictor_guidance` (see `__call__`), used where a call gives
            none; 0 disables it. Saved in `model_index.json`.
        default_keep_guidance: The model's own `keep_guidance` (see `__call__`), used where a call gives none; 0
            disables it. Saved in `model_index.json`.
        default_guidance_cutoff: The model's own `guidance_cutoff` (see `__call__`), used where a call gives none; 1
            guides every step. Saved in `model_index.json`.
        default_keep_residual: The model's own `keep_residual` (see `__call__`), used where a call gives none. Saved
            in `model_index.json`.
        default_working_size: The shorter side, in pixels, at which the model edits an image larger than that when a
            call gives no `working_size` (a model trained on whole scenes edits them at its own size, in one tile);
            None edits every image at its own size, in tiles. A multiple of `size_multiple`, at least the model's
            size. Saved in `model_index.json`.
    """

    model_cpu_offload_seq = "factor_predictor->text_encoder->factor_encoder->unet->vae"
    _optional_components = ["vae", "factor_predictor", "inverse_scheduler", "text_encoder", "tokenizer"]
    _exclude_from_cpu_offload = ["scm"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        factor_encoder: FactorEncoder,
        scm: NeuralCausalModel,
        vae: AutoencoderKL | None = None,
        factor_predictor: FactorPredictor | None = None,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        text_encoder: Any | None = None,
        tokenizer: Any | None = None,
        default_abduction: str = DEFAULT_ABDUCTION,
        default_guidance_scale: GuidanceScale = None,
        default_predictor_guidance: float = DEFAULT_PREDICTOR_GUIDANCE,
        default_keep_guidance: float = DEFAULT_KEEP_GUIDANCE,
        default_guidance_cutoff: float = DEFAULT_GUIDANCE_CUTOFF,
        default_keep_residual: bool = False,
        default_working_size: int | None = None,
    ):
        super().__init__()
        _check_predictor_guidance(default_predictor_guidance, factor_predictor, "default_predictor_guidance")
        _check_scale(default_keep_guidance, "default_keep_guidance")
        check_fraction(default_guidance_cutoff, "default_guidance_cutoff")
        if not isinstance(default_keep_residual, bool):
            raise ValueError(f"default_keep_residual must be true or false, got {default_keep_residual!r}")
        _check_choice(default_abduction, name="default_abduction", choices=ABDUCTIONS)
        factor_weights(factor_encoder.schema, None, default_guidance_scale)
        _check_components(
            scheduler=scheduler, factor_encoder=factor_encoder, scm=scm, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.register_modules(
            unet=unet,
            scheduler=scheduler,
            factor_encoder=factor_encoder,
            scm=scm,
            vae=vae,
            factor_predictor=factor_predictor,
            inverse_scheduler=inverse_scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
        self.register_to_config(
            default_abduction=default_abduction,
            default_guidance_scale=default_guidance_scale,
            default_predictor_guidance=default_predictor_guidance,
            default_keep_guidance=default_keep_guidance,
            default_guidance_cutoff=default_guidance_cutoff,
            default_keep_residual=default_keep_residual,
            default_working_size=default_working_size,
        )
        self._set_up_processing()
        self._check_default_working_size(default_working_size)
        self._keep_scale: torch.Tensor | None = None

    # ------------------------------------------------------------------ properties

    @property
    def image_channels(self) -> int:
        """Channels of the images the pipeline edits."""
        return self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels

    @property
    def image_size(self) -> int:
        """Height and width of the images the model was made for; larger images are edited in tiles of this size."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides (at the working size) must be multiples of this: the VAE's factor times the UNet's
        downsampling factor, so that every tile offset lies on the grid of the UNet's deepest features."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def guidance_scale(self) -> float | torch.Tensor:
        """The guidance weight in use: one weight per output image Tensor[N, 1, 1, 1]
        (`cf_diffusion.guidance.edit_guidance`), or ones at the steps after `guidance_cutoff`."""
        return self._guidance_scale

    # ------------------------------------------------------------------ input checks and preparation

    def check_inputs(
        self,
        *,
        image: torch.Tensor | None,
        batch_size: int,
        interventions: Mapping[str, Any] | None = None,
        factors: Any = None,
        num_counterfactuals: int = 1,
        guidance_scale: GuidanceScale = None,
        guidance_reference: str = DEFAULT_GUIDANCE_REFERENCE,
        abduction: str | None = None,
        generator: Generator = None,
        output_type: str = "pil",
        prompt: str | list[str] | None = None,
        mask: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        working_size: int | None = None,
        preserve: str | torch.Tensor | None = None,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        inversion: InversionOutput | None = None,
    ) -> None:
        """Validates the inputs of `__call__` and `invert` (keyword arguments only; what a call does not take keeps
        its default); each problem raises a ValueError naming it. The factors and the interventions are checked by
        the schema (`FactorSchema.check_factors`, `FactorSchema.check_interventions`), the rest by small helpers.

        Args:
            image: Tensor[B, C, H, W] after preprocessing, or None (with an inversion).
            batch_size: B, the number of images.
            interventions: {name: value | callable | per-image column}, or None.
            factors: The factual factors as the user gave them (table forms of `FactorSchema.to_values`), or None.
            num_counterfactuals: K, counterfactual samples per image.
            guidance_scale: As in `__call__` (None, a number or `{factor: w}`).
            guidance_reference: `"factual"` or `"null"`.
            abduction: `"ddim"`, `"ddpm"` or None (the model's `default_abduction`).
            generator: A generator or a list of B generators.
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            prompt: A prompt, a list of B prompts, or None.
            mask: Tensor[B or 1, 1, H, W] (image or latent resolution) in [0, 1], or None.
            callback_on_step_end_tensor_inputs: Names of tensors passed to the step callback.
            working_size: Side (the shorter one) in pixels at which the diffusion runs, or None for the image's own.
            preserve: `"auto"`, `"none"`, a mask like `mask`, or None.
            mask_threshold: Threshold of the `preserve="auto"` mask, in [0, 1].
            inversion: A reused inversion (when `image` is None).

        Raises:
            ValueError: On any bad input.
        """
        self._check_images(image=image, batch_size=batch_size, factors=factors, working_size=working_size)
        self.schema.check_interventions(interventions, batch_size=batch_size)
        _check_count(num_counterfactuals, name="num_counterfactuals")
        factor_weights(self.schema, guidance_scale)
        _check_choice(guidance_reference, name="guidance_reference", choices=GUIDANCE_REFERENCES)
        if abduction is not None:
            _check_choice(abduction, name="abduction", choices=ABDUCTIONS)
        _check_generator(generator, batch_size=batch_size)
        _check_choice(output_type, name="output_type", choices=OUTPUT_TYPES)
        self._check_prompt(prompt, batch_size=batch_size)
        if mask is not None:
            self._check_mask(
                mask, name="mask", batch_size=batch_size, image=image, working_size=working_size, inversion=inversion
            )
        if preserve is not None:
            self._check_preserve(
                preserve,
                mask=mask,
                batch_size=batch_size,
                image=image,
                working_size=working_size,
                inversion=inversion,
            )
        if working_size is not None and image is None:
            raise ValueError("working_size resizes the image; an inversion is already at the size it was made at")
        check_fraction(mask_threshold, "mask_threshold")
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)

    def _check_images(
        self, *, image: torch.Tensor | None, batch_size: int, factors: Any, working_size: int | None
    ) -> None:
        """The images (if any) fit the model at the working size (`_check_image_size`), and their factual factors
        are given, one row per image, or the factor predictor reads them off.

        Raises:
            ValueError: On images the model cannot edit, bad factors, or neither factors nor a factor predictor.
        """
        if image is not None:
            self._check_image_size(image, working_size=working_size)
            if factors is None and self.factor_predictor is None:
                raise ValueError(
                    f"factors were not given and the pipeline has no factor_predictor to read them off the image; "
                    f"pass factors={{...}} with every factor of {self.schema.names}"
                )
        if factors is not None:
            self.schema.check_factors(factors, batch_size=batch_size)

    def _check_image_size(self, image: torch.Tensor, *, working_size: int | None) -> None:
        """Channels must be the model's; the sides at the working size must be multiples of `size_multiple` and at
        least the model's size.

        Raises:
            ValueError: On other channels or sizes, or a working size outside [model size, image's shorter side].
        """
        channels, height, width = image.shape[1:]
        size, multiple = self.image_size, self.size_multiple
        if working_size is not None:
            if (
                not isinstance(working_size, int)
                or working_size % multiple
                or not size <= working_size <= min(height, width)
            ):
                raise ValueError(
                    f"working_size must be a multiple of {multiple} from the model's size {size} to the image's "
                    f"shorter side {min(height, width)}, got {working_size!r}"
                )
            height, width = self._working_shape(height, width, working_size)
        if channels != self.image_channels or min(height, width) < size or height % multiple or width % multiple:
            raise ValueError(
                f"image has shape (channels, height, width) = {tuple(image.shape[1:])}, but the model edits images "
                f"of {self.image_channels} channel(s) at {size}x{size} pixels (smaller ones are padded to it), or "
                f"larger with sides multiples of {multiple} (pass working_size to edit other sizes at a size it can)"
            )

    def _check_default_working_size(self, value: Any) -> None:
        """`default_working_size` is None or a multiple of `size_multiple` from the model's size up."""
        if value is not None and (not isinstance(value, int) or value % self.size_multiple or value < self.image_size):
            raise ValueError(
                f"default_working_size must be None or a multiple of {self.size_multiple} of at least the model's "
                f"size {self.image_size}, got {value!r}"
            )

    def _resolve_working_size(self, working_size: int | None, pixels: torch.Tensor | None) -> int | None:
        """`working_size` as given, or the model's `default_working_size` for an image whose shorter side is larger
        than it (None for others: they are edited at their own size)."""
        default = self.config.default_working_size
        if working_size is not None or default is None or pixels is None or min(pixels.shape[-2:]) <= default:
            return working_size
        return default

    def _working_shape(self, height: int, width: int, working_size: int | None) -> tuple[int, int]:
        """(height, width) at which an image of `height` x `width` is diffused: its own, or scaled so that its
        shorter side is `working_size` (the longer one rounded to a multiple of `size_multiple`)."""
        if working_size is None:
            return height, width
        multiple, shorter = self.size_multiple, min(height, width)
        return tuple(round(side * working_size / shorter / multiple) * multiple for side in (height, width))

    def _mask_shapes(
        self, *, image: torch.Tensor | None, working_size: int | None, inversion: InversionOutput | None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (height, width) of the image and of the latent, the two sizes a mask may have: those of `image` (and
        its latent at the working size), else of the inversion's latent, else the model's size."""
        factor = self.vae_scale_factor
        if image is not None:
            pixel_shape = tuple(image.shape[-2:])
            return pixel_shape, tuple(side // factor for side in self._working_shape(*pixel_shape, working_size))
        if inversion is not None:
            latent_shape = tuple(inversion.trajectory.shape[-2:])
            return tuple(side * factor for side in latent_shape), latent_shape
        size = (self.image_size, self.image_size)
        return size, size

    def _check_mask(
        self,
        mask: Any,
        *,
        name: str,
        batch_size: int,
        image: torch.Tensor | None,
        working_size: int | None,
        inversion: InversionOutput | None,
    ) -> None:
        """A mask must be Tensor[B or 1, 1, H, W] in [0, 1] at the image's or the latent's resolution
        (`_mask_shapes`).

        Raises:
            ValueError: Naming `name` (the argument) on any other mask.
        """
        pixel_shape, latent_shape = self._mask_shapes(image=image, working_size=working_size, inversion=inversion)
        if (
            not isinstance(mask, torch.Tensor)
            or mask.ndim != 4
            or mask.shape[0] not in (1, batch_size)
            or mask.shape[1] != 1
            or tuple(mask.shape[2:]) not in (pixel_shape, latent_shape)
        ):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"{name} must be Tensor[{batch_size} or 1, 1, H, W] with (H, W) the image's size {pixel_shape} or "
                f"the latent's {latent_shape}, got {shape}"
            )
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"{name} values must lie in [0, 1] (1 = may change, 0 = keep the input)")

    def _check_preserve(
        self,
        preserve: Any,
        *,
        mask: torch.Tensor | None,
        batch_size: int,
        image: torch.Tensor | None,
        working_size: int | None,
        inversion: InversionOutput | None,
    ) -> None:
        """`preserve` must be one of `PRESERVE_MODES` or a mask (`_check_mask`); one that keeps part of the input
        puts the input's pixels back, so it needs `image`, and replaces `mask`.

        Raises:
            ValueError: On another value, a `preserve` beside `mask`, or one without `image`.
        """
        if isinstance(preserve, torch.Tensor):
            self._check_mask(
                preserve,
                name="preserve",
                batch_size=batch_size,
                image=image,
                working_size=working_size,
                inversion=inversion,
            )
        elif not isinstance(preserve, str) or preserve not in PRESERVE_MODES:
            raise ValueError(
                f"preserve must be one of {list(PRESERVE_MODES)} or a mask Tensor[B or 1, 1, H, W], got {preserve!r}"
            )
        if isinstance(preserve, str) and preserve == "none":
            return
        if mask is not None:
            raise ValueError(
                "pass either mask (latent space only) or preserve (latent space and the input's pixels), not both"
            )
        if image is None:
            raise ValueError(
                "preserve puts the input's own pixels back outside the mask, so it needs image (not an inversion); "
                "with an inversion use mask= (latent space only) or preserve='none'"
            )

    def _resolve_schedule(
        self,
        inversion: InversionOutput | None,
        num_inference_steps: int | None,
        strength: float | None,
        abduction: str | None,
        tile_overlap: float | None,
    ) -> tuple[int, float, str, float]:
        """Fills unset schedule and tiling arguments from the inversion (or the defaults); conflicting values raise."""
        if inversion is None:
            return (
                DEFAULT_NUM_INFERENCE_STEPS if num_inference_steps is None else num_inference_steps,
                DEFAULT_STRENGTH if strength is None else strength,
                self.config.default_abduction if abduction is None else abduction,
                DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap,
            )
        if not isinstance(inversion, InversionOutput):
            raise ValueError(
                f"inversion must be an InversionOutput from pipe.invert(...), got {type(inversion).__name__}"
            )
        given = {
            "num_inference_steps": num_inference_steps,
            "strength": strength,
            "abduction": abduction,
            "tile_overlap": tile_overlap,
        }
        for name, value in given.items():
            if value is not None and value != getattr(inversion, name):
                raise ValueError(
                    f"{name}={value!r} conflicts with the inversion, computed with "
                    f"{name}={getattr(inversion, name)!r}; leave {name} unset or invert again"
                )
        return inversion.num_inference_steps, inversion.strength, inversion.abduction, inversion.tile_overlap

    def _resolve_preserve(
        self, preserve: str | torch.Tensor | None, mask: torch.Tensor | None, pixels: torch.Tensor | None
    ) -> str | torch.Tensor:
        """`preserve` as given, or its default: `"auto"` for an image larger than the model's size (unless a `mask`
        is given), else `"none"`."""
        if preserve is not None:
            return preserve
        larger = pixels is not None and max(pixels.shape[-2:]) > self.image_size
        return "auto" if larger and mask is None else "none"

    def _preprocess_image(self, image: PipelineImageInput) -> torch.Tensor:
        """PIL images, uint8 arrays or tensors (0..255), or float ones in [0, 1] (`_unit_range`) -> Tensor[B, C, H, W]
        float32 in [-1, 1] (not resized).

        Raises:
            ValueError: On an empty list, or an image `_unit_range` refuses.
        """
        if isinstance(image, list) and not image:
            raise ValueError("image is an empty list; pass one image or a non-empty list of images")
        image = [_unit_range(i) for i in image] if isinstance(image, list) else _unit_range(image)
        images = image if isinstance(image, list) else [image]
        if all(isinstance(i, PIL.Image.Image) for i in images):
            return pil_to_signed(images)
        return self.image_processor.preprocess(image).to(torch.float32)

    def _pad_smaller(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int] | None]:
        """Pixels Tensor[B, C, H, W] smaller than the model's size, padded to it as the training data was
        (`cf_diffusion.images.pad_image`: centred on black, never upscaled), and the input's (top, left, bottom,
        right) inside the padding, by which the edit is cropped back; other pixels as they are, and None."""
        height, width = pixels.shape[-2:]
        size = self.image_size
        if max(height, width) > size or (height, width) == (size, size):
            return pixels, None
        top, left, bottom, right = padding_box(height, width, size)
        padded = F.pad(pixels, (left, size - right, top, size - bottom), value=-1.0)
        return padded, (top, left, bottom, right)

    def _factual_factors(self, factors: Any, pixels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The factual factors as Tensor[B, F] in `FactorSchema.encode` format (read off the images, resized to the
        predictor's size, if not given)."""
        if factors is not None:
            return self.schema.encode(factors).to(device)
        predictor = self.factor_predictor
        size = predictor.config.sample_size
        return predictor.predict(_resize(pixels, (size, size)).to(device=device, dtype=predictor.dtype)).to(device)

    def _working_pixels(self, pixels: torch.Tensor, working_size: int | None) -> torch.Tensor:
        """Pixels Tensor[B, C, H, W] resized to the working size (`_working_shape`)."""
        return _resize(pixels, self._working_shape(*pixels.shape[-2:], working_size))

    def _tile_layout(self, latent_shape: tuple[int, int], tile_overlap: float) -> TileLayout:
        """The UNet's tiles over a latent of `latent_shape`, at offsets on the grid of its deepest features."""
        return tile_layout(
            *latent_shape,
            tile=self.unet.config.sample_size,
            overlap=tile_overlap,
            align=self.size_multiple // self.vae_scale_factor,
        )

    def _progress_bar(self, total: int, description: str) -> Any:
        """`self.progress_bar(total=total)` (which follows `set_progress_bar_config`), labelled `description`."""
        progress_bar = self.progress_bar(total=total)
        progress_bar.set_description(description, refresh=False)
        return progress_bar

    def _counterfactual_factors(
        self,
        factual: torch.Tensor,
        interventions: Mapping[str, Any] | None,
        num_counterfactuals: int,
        generator: Generator,
    ) -> torch.Tensor:
        """scm.counterfactual for every image: Tensor[B * K, F] in encode format, image-major.

        With no intervention the counterfactual world is the factual one. With a list of generators, image b's
        counterfactuals are drawn with generator b (so a batch equals its images edited one by one).
        """
        schema = self.schema
        if not interventions:
            return factual.repeat_interleave(num_counterfactuals, dim=0)
        values = schema.denormalize(factual)
        if isinstance(generator, list):
            parts = []
            for b, g in enumerate(generator):
                row = {name: column[b : b + 1] for name, column in values.items()}
                row_interventions = _row_interventions(interventions, b)
                parts.append(self.scm.counterfactual(row, row_interventions, num_counterfactuals, generator=g))
            counterfactual = {name: torch.cat([part[name] for part in parts]) for name in schema.names}
        else:
            counterfactual = self.scm.counterfactual(
                values, dict(interventions), num_counterfactuals, generator=generator
            )
        flat = {name: column.reshape(-1) for name, column in counterfactual.items()}
        return schema.normalize(flat).to(factual.device)

    def _predicted_noise(self, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output at `(sample, t)` as a noise prediction eps, whatever the scheduler's prediction type."""
        alpha_bar = self.scheduler.alphas_cumprod[int(t)].to(sample)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "v_prediction":
            return alpha_bar.sqrt() * model_output + (1 - alpha_bar).sqrt() * sample
        return (sample - alpha_bar.sqrt() * model_output) / (1 - alpha_bar).sqrt()

    def _predictor_guided(
        self, model_output: torch.Tensor, latents: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """`model_output` moved by predictor guidance toward `targets` Tensor[N, F] (see `__call__`'s
        `predictor_guidance`), in the scheduler's prediction type."""
        alpha_bar = self.scheduler.alphas_cumprod[int(t)].to(latents)
        eps = self._predicted_noise(model_output, latents, t)
        predictor = self.factor_predictor
        size = predictor.config.sample_size
        with torch.enable_grad():
            x0 = ((latents - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).detach().requires_grad_(True)
            pixels = (
                x0
                if self.vae is None
                else self.vae.decode(x0.to(self._dtype("vae")) / self.vae.config.scaling_factor).sample
            )
            energy = predictor.energy(_resize(pixels.clamp(-1, 1), (size, size)).to(predictor.dtype), targets)
            (gradient,) = torch.autograd.grad(energy.sum(), x0)
        shift = scale * (1 - alpha_bar).sqrt() * gradient.to(eps.dtype)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return model_output + shift
        if prediction_type == "v_prediction":
            return model_output + shift / alpha_bar.sqrt()
        return model_output - shift * (1 - alpha_bar).sqrt() / alpha_bar.sqrt()

    def encode_images(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Pixels Tensor[B, C, H, W] in [-1, 1] -> the diffusion model's clean samples: latents
        `vae.encode(x).latent_dist.mean * scaling_factor` with a VAE (tiled above its sample size), else the pixels
        themselves (UNet dtype)."""
        if self.vae is None:
            return pixels.to(device=device, dtype=self._dtype("unet"))
        with self._vae_tiling(*pixels.shape[-2:]):
            latents = self.vae.encode(pixels.to(device=device, dtype=self._dtype("vae"))).latent_dist.mean
        return (latents * self.vae.config.scaling_factor).to(self._dtype("unet"))

    def _decode_latents(
        self,
        latents: torch.Tensor,
        output_type: str,
        reference: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        box: tuple[int, int, int, int] | None = None,
        factual: torch.Tensor | None = None,
    ) -> Any:
        """Samples -> images of `output_type` (latents are returned as they are for `"latent"`).

        Args:
            latents: Tensor[N, c, h, w].
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            reference: The input pixels Tensor[N, C, H, W] in [-1, 1], or None: the decoded images are resized to
                their size and composited into them band by band (`cf_diffusion.compositing.composite`).
            pixel_mask: Tensor[N, 1, H, W] in [0, 1], or None: the images are `m * decoded + (1 - m) * reference`,
                so where m is 0 they are the reference's pixels exactly.
            box: (top, left, bottom, right) of the input inside its padding (`_pad_smaller`), or None: the images
                are cropped to it.
            factual: The factual samples like `latents`, or None: given (with `reference`), the images are the
                reference plus the decoded change (`keep_residual`).
        """
        if output_type == "latent":
            return latents
        images = self._decode(latents)
        if reference is None:
            return self.image_processor.postprocess(images, output_type=output_type)
        decoded_factual = None if factual is None else self._decode(factual)
        return composite(
            images, reference, pixel_mask, box, output_type, self.image_processor.postprocess, decoded_factual
        )

    def _prepare_mask(
        self, mask: torch.Tensor | None, batch_size: int, latent_shape: tuple[int, int], device: torch.device
    ) -> torch.Tensor | None:
        """A mask at latent resolution, Tensor[B * K, 1, h, w] (area-averaged from the image's), or None."""
        if mask is None:
            return None
        if tuple(mask.shape[-2:]) != tuple(latent_shape):
            mask = F.interpolate(mask.float(), size=tuple(latent_shape), mode="area")
        return mask.to(device=device, dtype=self._dtype("unet")).expand(batch_size, -1, -1, -1)

    def _pixel_mask(
        self, mask: torch.Tensor, batch_size: int, pixel_shape: tuple[int, int], device: torch.device
    ) -> torch.Tensor:
        """A mask at the input's resolution, Tensor[B * K, 1, H, W] float32; a latent mask is upsampled by nearest
        neighbour, so it is 0 exactly on every pixel of a latent pixel where it is 0."""
        if tuple(mask.shape[-2:]) != tuple(pixel_shape):
            mask = F.interpolate(mask.float(), size=tuple(pixel_shape), mode="nearest-exact")
        return mask.to(device=device, dtype=torch.float32).expand(batch_size, -1, -1, -1)

    def _edit_mask(
        self,
        layout: TileLayout,
        tile_batch_size: int,
        x0: torch.Tensor,
        factual: torch.Tensor,
        counterfactual: torch.Tensor,
        prompt_embeds: torch.Tensor | None,
        threshold: float,
    ) -> torch.Tensor:
        """DiffEdit-style mask of the region an edit affects (Couairon et al., "DiffEdit", ICLR 2023), computed from
        this model's noise predictions.

        At each of `MASK_NOISE_LEVELS` the clean samples are noised with `MASK_NUM_NOISES` fixed noises (seeded by
        `MASK_SEED`, the same for every image) and |eps(factual factors) - eps(counterfactual factors)| is taken,
        averaged over channels, noises and levels; it is divided by its maximum per image, thresholded, and dilated
        by one latent pixel. Images whose factors do not change get an empty mask.

        Args:
            layout: The tiles (the same as the edit's).
            tile_batch_size: Tiles per UNet call.
            x0: Tensor[N, c, h, w], the clean factual samples.
            factual: Tensor[N, F], the factual factors.
            counterfactual: Tensor[N, F], the counterfactual factors.
            prompt_embeds: Tensor[N, L, D] or None.
            threshold: Fraction of the maximum difference from which a latent pixel is in the mask.

        Returns:
            Tensor[N, 1, h, w] in {0, 1} (UNet dtype): 1 where the image may change.
        """
        changed = (counterfactual != factual).any(dim=1)
        if not changed.any():
            return x0.new_zeros((x0.shape[0], 1, *x0.shape[2:]))
        kwargs = self._stack_branches(
            self._unet_kwargs(factual, None, prompt_embeds), self._unet_kwargs(counterfactual, None, prompt_embeds)
        )
        generator = torch.Generator().manual_seed(MASK_SEED)
        noises = torch.randn((MASK_NUM_NOISES, *x0.shape[1:]), generator=generator).to(x0)
        num_calls = len(MASK_NOISE_LEVELS) * MASK_NUM_NOISES
        difference = 0
        with self._progress_bar(num_calls * layout.num_tiles, "edit mask") as progress_bar:
            model_fn = tiled_model_fn(self._model_fn, layout, tile_batch_size, progress_bar.update)
            for level in MASK_NOISE_LEVELS:
                t = torch.tensor(round(level * (self.scheduler.config.num_train_timesteps - 1)), device=x0.device)
                for noise in noises:
                    noisy = torch.cat([self.scheduler.add_noise(x0, noise.expand_as(x0), t.reshape(1))] * 2)
                    eps = self._predicted_noise(model_fn(noisy, t, kwargs), noisy, t)
                    eps_factual, eps_counterfactual = eps.chunk(2)
                    difference = difference + (eps_counterfactual - eps_factual).abs().mean(dim=1, keepdim=True)
        difference = difference / num_calls
        peak = difference.amax(dim=(2, 3), keepdim=True).clamp(min=torch.finfo(difference.dtype).tiny)
        mask = (difference / peak >= threshold) & changed[:, None, None, None]
        return F.max_pool2d(mask.to(x0.dtype), kernel_size=3, stride=1, padding=1)

    # ------------------------------------------------------------------ abduction

    @torch.no_grad()
    @_dtypes_looked_up_once
    def invert(
        self,
        image: PipelineImageInput,
        factors: Any = None,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        strength: float = DEFAULT_STRENGTH,
        abduction: Literal["ddim", "ddpm"] | None = None,
        generator: Generator = None,
        prompt: str | list[str] | None = None,
        working_size: int | None = None,
        tile_overlap: float = DEFAULT_TILE_OVERLAP,
        tile_batch_size: int = DEFAULT_TILE_BATCH_SIZE,
    ) -> InversionOutput:
        """Abducts the image noise U_I: inverts the sampler under the factual conditioning, with guidance 1.

        Args:
            image: B images (PIL, or arrays / tensors in [0, 1]) with the model's channels, of the model's size or
                larger (sides multiples of `size_multiple`, unless `working_size` is given); a smaller image is padded
                to the model's size (centred on black) and its edit cropped back.
            factors: The factual factors: a dict of values (one image), a list of dicts (one per image) or a dict of
                columns; None reads them off the images with the `factor_predictor`.
            num_inference_steps: Steps of the full schedule.
            strength: Fraction in (0, 1] of the schedule to invert (1 = up to pure noise).
            abduction: `"ddim"` (deterministic inversion), `"ddpm"` (exact edit-friendly noise maps) or None (the
                model's `default_abduction`).
            generator: Noise of the DDPM abduction: a generator or a list of B.
            prompt: Prompt(s) for a pipeline with a text encoder.
            working_size: Shorter side, in pixels, at which to invert (the image is resized to it); None: the
                model's `default_working_size` for images larger than it, else the image's own size.
            tile_overlap: Fraction in [0, 1) of a tile shared with its neighbour, for latents larger than the UNet's.
            tile_batch_size: Tiles per UNet call.

        Returns:
            InversionOutput, to pass to `__call__(inversion=...)` (any number of times; its images come out at the
            working size).
        """
        pixels, _ = self._pad_smaller(self._preprocess_image(image))
        batch_size = pixels.shape[0]
        working_size = self._resolve_working_size(working_size, pixels)
        self.check_inputs(
            image=pixels,
            batch_size=batch_size,
            factors=factors,
            abduction=abduction,
            generator=generator,
            prompt=prompt,
            working_size=working_size,
        )
        device = self._execution_device
        abduction = self.config.default_abduction if abduction is None else abduction
        factual = self._factual_factors(factors, pixels, device)
        x0 = self.encode_images(self._working_pixels(pixels, working_size), device)
        return self._invert_samples(
            x0, factual, num_inference_steps, strength, abduction, generator, prompt, tile_overlap, tile_batch_size
        )

    def _invert_samples(
        self,
        x0: torch.Tensor,
        factual: torch.Tensor,
        num_inference_steps: int,
        strength: float,
        abduction: str,
        generator: Generator,
        prompt: str | list[str] | None,
        tile_overlap: float,
        tile_batch_size: int,
    ) -> InversionOutput:
        """Abduction of clean samples Tensor[B, c, h, w] (see `invert`), tiled when larger than the UNet's size."""
        device = x0.device
        layout = self._tile_layout(x0.shape[-2:], tile_overlap)
        timesteps = inference_timesteps(self.scheduler, num_inference_steps, strength, device)
        kwargs = self._unet_kwargs(factual, None, self._encode_prompt(prompt, x0.shape[0], device))
        with self._progress_bar(len(timesteps) * layout.num_tiles, "abduction") as progress_bar:
            model_fn = tiled_model_fn(self._model_fn, layout, tile_batch_size, progress_bar.update)
            if abduction == "ddim":
                inverse_scheduler = self.inverse_scheduler or inverse_scheduler_for(self.scheduler)
                inverse_scheduler.set_timesteps(num_inference_steps, device=device)
                trajectory, noise_maps = ddim_invert(model_fn, x0, timesteps, kwargs, inverse_scheduler), None
            else:
                trajectory, noise_maps = ddpm_noise_maps(model_fn, x0, timesteps, kwargs, self.scheduler, generator)
        self.maybe_free_model_hooks()
        return InversionOutput(
            trajectory=trajectory,
            noise_maps=noise_maps,
            timesteps=timesteps,
            factors=factual,
            num_inference_steps=num_inference_steps,
            strength=strength,
            abduction=abduction,
            tile_overlap=tile_overlap,
        )

    def renoise(
        self, samples: torch.Tensor, factors: Any, num_inference_steps: int, strength: float, generator: Generator
    ) -> InversionOutput:
        """No abduction: the forward process in place of `invert`, as SDEdit and diffusers' img2img pipelines do.
        Clean samples are noised with one *fresh* draw to every timestep of the last `strength` fraction of the
        schedule, `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`, `eps ~ N(0, I)`.

        Args:
            samples: Clean samples Tensor[B, c, h, w] of the model's size (`encode_images`).
            factors: The factual factors, in any form `FactorSchema.encode` takes.
            num_inference_steps: Steps of the full schedule.
            strength: Fraction in (0, 1] of the schedule to re-noise.
            generator: Noise of the draw: a generator or a list of B.

        Returns:
            InversionOutput with the noised trajectory (`abduction="ddim"`: the prediction samples with DDIM).
        """
        timesteps = inference_timesteps(self.scheduler, num_inference_steps, strength, samples.device)
        noise = randn_tensor(samples.shape, generator=generator, device=samples.device, dtype=samples.dtype)
        noised = [self.scheduler.add_noise(samples, noise, t.repeat(len(samples))) for t in timesteps]
        return InversionOutput(
            trajectory=torch.stack([*noised, samples]),
            noise_maps=None,
            timesteps=timesteps,
            factors=self.schema.encode(factors).to(samples.device),
            num_inference_steps=num_inference_steps,
            strength=strength,
            abduction="ddim",
        )

    # ------------------------------------------------------------------ editing

    @torch.no_grad()
    @_dtypes_looked_up_once
    def __call__(
        self,
        image: PipelineImageInput | None = None,
        interventions: Mapping[str, Any] | None = None,
        factors: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: GuidanceScale = None,
        guidance_reference: Literal["factual", "null"] = DEFAULT_GUIDANCE_REFERENCE,
        strength: float | None = None,
        abduction: Literal["ddim", "ddpm"] | None = None,
        num_counterfactuals: int = 1,
        mask: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        generator: Generator = None,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
        callback_on_step_end: CallbackOnStepEnd | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        inversion: InversionOutput | None = None,
        preserve: Literal["auto", "none"] | torch.Tensor | None = None,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        working_size: int | None = None,
        tile_overlap: float | None = None,
        tile_batch_size: int = DEFAULT_TILE_BATCH_SIZE,
        predictor_guidance: float | None = None,
        keep_guidance: float | None = None,
        keep_residual: bool | None = None,
        guidance_cutoff: float | None = None,
    ) -> CounterfactualPipelineOutput | tuple:
        """Edits images counterfactually: what would each image have been had the intervened factors been different?

        Images larger than the model's size are edited in overlapping tiles of its size, the same tiles in the
        abduction and the prediction (so a DDPM null edit still reproduces the input exactly).

        Args:
            image: B images (PIL, or arrays / tensors in [0, 1]) with the model's channels, of the model's size or
                larger (sides multiples of `size_multiple`, unless `working_size` is given); a smaller image is padded
                to the model's size (centred on black) and its edit cropped back; not needed with
                `inversion`.
            interventions: `{name: value}` (level name, index or number; or one value per image) or
                `{name: callable}` (a shift of the factual value, e.g. `lambda t: t + 1`). None or `{}` is the null
                edit, which reproduces the input (exactly with `abduction="ddpm"`).
            factors: The factual factors: a dict of values (one image), a list of dicts (one per image) or a dict of
                columns. None reads them off the images with the `factor_predictor`. Not used with `inversion`.
            num_inference_steps: Steps of the full schedule (default 50, or the inversion's).
            guidance_scale: w in `eps = eps_ref + w (eps_cf - eps_ref)`; 1 disables guidance, larger values push
                harder along the edit. One number for every factor, `{factor: w}` (the others keep the model's), or
                None: the model's `default_guidance_scale`, else w = 3 for discrete factors and 1 for continuous ones
                (`cf_diffusion.guidance`: guidance sharpens a change of level but overshoots a continuous value);
                each image is guided by the largest w among the factors its edit changes.
            guidance_reference: The reference branch: `"factual"` (the factual factors; the null edit stays an
                exact replay for any w) or `"null"` (the counterfactual factors with the changed ones unknown).
            strength: Fraction in (0, 1] of the schedule to invert and regenerate (default 1, or the inversion's):
                smaller keeps more of the image, larger lets the edit change more.
            abduction: `"ddim"` or `"ddpm"` (default: the inversion's, or the model's `default_abduction`).
            num_counterfactuals: K counterfactual factor samples per image (they differ where the causal model
                is not deterministic); the output has B * K images, image-major.
            mask: Optional Tensor[B or 1, 1, H, W] in [0, 1] at image or latent size: 1 where the image may change,
                0 where the factual trajectory is kept at every step (latent space only; `preserve` also puts the
                input's pixels back).
            prompt: Prompt(s) for a pipeline with a text encoder.
            generator: A generator or a list of B (one per input image) for the causal model's and DDPM's noise.
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict: Return a `CounterfactualPipelineOutput` (True) or a tuple of its fields.
            callback_on_step_end: Called as `callback(pipe, step, timestep, {"latents": latents})` after each
                step; a `"latents"` entry in the returned dict replaces the latents.
            callback_on_step_end_tensor_inputs: Tensors passed to the callback (default `["latents"]`).
            inversion: A reused `invert(...)` result; then `image` and `factors` must be None.
            preserve: What of the input to keep. `"auto"`: a mask of the region the intervention affects (from the
                difference of the model's noise predictions under the factual and the counterfactual factors) keeps
                the factual trajectory outside it at every step, and the output is composited at the input's
                resolution, `m * edit + (1 - m) * input`, so pixels outside it are the input's own; empty for the
                null edit. A Tensor like `mask`: the same with the user's mask. `"none"`: neither. Default: `"auto"`
                for images larger than the model's size (unless `mask` is given), else `"none"`. Needs `image`.
            mask_threshold: `preserve="auto"`: fraction in [0, 1] of an image's largest prediction difference from
                which a latent pixel may change (before a one-pixel dilation); lower catches weaker effects (a shadow
                beside the lamp that casts it) and changes more of the image.
            working_size: Shorter side, in pixels, at which the diffusion runs (a multiple of `size_multiple`,
                from the model's size to the image's): the image is resized to it (antialiased bicubic), edited, and
                the edit resized back to the image's size. None: the model's `default_working_size` for images larger
                than it, else the image's own size.
            tile_overlap: Fraction in [0, 1) of a tile shared with its neighbour (default 0.25, or the inversion's).
            tile_batch_size: Tiles per UNet call (memory against speed; the result does not depend on it).
            predictor_guidance: Scale s >= 0 of guidance by the `factor_predictor` toward the whole counterfactual
                vector (changed factors at their counterfactual values, the others at their factual ones), as in
                Diff-SCM's anti-causal guidance: at each prediction step the predictor reads the denoised estimate
                x0 (decoded, at its size), and `eps += s * sqrt(1 - alpha_bar) * grad_x0 energy`
                (`FactorPredictor.energy`). None: the model's `default_predictor_guidance`; 0: none.
            keep_guidance: Scale gamma >= 0 of classifier-free guidance toward the factors an edit keeps (the
                factual values of its non-descendants): `eps += gamma (eps(c') - eps(c' with the kept factors
                unknown))`, so a kept factor the training data correlate with a changed one (thickness under
                do(intensity) in Morpho-MNIST) holds. Rows whose edit changes nothing are not guided. None: the
                model's `default_keep_guidance`; 0: none.
            keep_residual: Abduct the decoder's residual too: the output is the input plus the decoded change,
                `x + dec(z') - dec(z)` (resized to the input's size), rather than `dec(z')`, so what the decoder
                does not reproduce of the input (its exogenous part, fine detail) is kept, and a null edit returns
                the input itself; the residual fades out where the edit changes a pixel (`composite`). Needs
                `image`. None: the model's `default_keep_residual` (off for an inversion).
            guidance_cutoff: Fraction in [0, 1] of the prediction steps, the first ones, that `guidance_scale` guides;
                the later, low-noise steps run at w = 1 (as diffusers' `SDCFGCutoffCallback` ends classifier-free
                guidance early). A discrete change (a new digit) is decided at high noise, while guidance at low noise
                also sharpens what should stay, such as a stroke's thickness and brightness. None: the model's
                `default_guidance_cutoff`; 1: every step.

        Returns:
            CounterfactualPipelineOutput (or the tuple of its fields that are not None: `(images, factual_factors,
            counterfactual_factors, inversion[, masks])`).
        """
        callback_on_step_end_tensor_inputs = self._callback_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        num_inference_steps, strength, abduction, tile_overlap = self._resolve_schedule(
            inversion, num_inference_steps, strength, abduction, tile_overlap
        )
        if inversion is not None:
            if image is not None or factors is not None:
                raise ValueError("pass either inversion or image (and factors), not both")
            pixels, box, batch_size = None, None, inversion.factors.shape[0]
        else:
            if image is None:
                raise ValueError("image is required (or an inversion from pipe.invert(...))")
            pixels, box = self._pad_smaller(self._preprocess_image(image))
            batch_size = pixels.shape[0]
        working_size = self._resolve_working_size(working_size, pixels)
        self.check_inputs(
            image=pixels,
            batch_size=batch_size,
            interventions=interventions,
            factors=factors,
            num_counterfactuals=num_counterfactuals,
            guidance_scale=guidance_scale,
            guidance_reference=guidance_reference,
            abduction=abduction,
            generator=generator,
            output_type=output_type,
            prompt=prompt,
            mask=mask,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            working_size=working_size,
            preserve=preserve,
            mask_threshold=mask_threshold,
            inversion=inversion,
        )
        preserve = self._resolve_preserve(preserve, mask, pixels)
        if keep_residual is None:
            keep_residual = self.config.default_keep_residual and pixels is not None
        elif keep_residual and pixels is None:
            raise ValueError("keep_residual adds the decoded change to the input, so it needs image, not an inversion")
        if predictor_guidance is None:
            predictor_guidance = self.config.default_predictor_guidance
        _check_predictor_guidance(predictor_guidance, self.factor_predictor, "predictor_guidance")
        if keep_guidance is None:
            keep_guidance = self.config.default_keep_guidance
        _check_scale(keep_guidance, "keep_guidance")
        if guidance_cutoff is None:
            guidance_cutoff = self.config.default_guidance_cutoff
        check_fraction(guidance_cutoff, "guidance_cutoff")
        self._interrupt = False
        device = self._execution_device

        # 1. Factual factors, then action and prediction over the factors with the causal model.
        if inversion is not None:
            factual = inversion.factors.to(device)
        else:
            factual = self._factual_factors(factors, pixels, device)
        counterfactual = self._counterfactual_factors(factual, interventions, num_counterfactuals, generator)

        # 2. Abduction of the image noise under the factual conditioning.
        if inversion is None:
            x0 = self.encode_images(self._working_pixels(pixels, working_size), device)
            inversion = self._invert_samples(
                x0, factual, num_inference_steps, strength, abduction, generator, prompt, tile_overlap, tile_batch_size
            )
        factual = factual.repeat_interleave(num_counterfactuals, dim=0)
        trajectory = inversion.trajectory.to(device).repeat_interleave(num_counterfactuals, dim=1)
        noise_maps = None
        if inversion.noise_maps is not None:
            noise_maps = inversion.noise_maps.to(device).repeat_interleave(num_counterfactuals, dim=1)
        timesteps = inference_timesteps(self.scheduler, num_inference_steps, strength, device)
        self._num_timesteps = len(timesteps)
        layout = self._tile_layout(trajectory.shape[-2:], tile_overlap)

        # 3. Conditioning: counterfactual factors, and the guidance reference when it differs from them.
        num_outputs = batch_size * num_counterfactuals
        prompt_embeds = self._encode_prompt(prompt, batch_size, device)
        if prompt_embeds is not None:
            prompt_embeds = prompt_embeds.repeat_interleave(num_counterfactuals, dim=0)
        kwargs = self._unet_kwargs(counterfactual, None, prompt_embeds)
        changed = counterfactual != factual
        sources = change_sources(self.scm.graph, self.schema.names, changed)
        weights = edit_guidance(self.schema, guidance_scale, sources, self.config.default_guidance_scale)
        self._guidance_scale = weights.to(device=trajectory.device, dtype=trajectory.dtype).view(-1, 1, 1, 1)
        edit_weights, guided_steps = self._guidance_scale, round(guidance_cutoff * len(timesteps))
        guided = guided_steps > 0 and bool((changed.any(dim=1) & (weights != 1)).any())
        keep_scale = torch.where(changed.any(dim=1), float(keep_guidance), 0.0)
        self._keep_scale = keep_scale.to(device=trajectory.device, dtype=trajectory.dtype).view(-1, 1, 1, 1)
        kept = bool((keep_scale > 0).any())
        branches = [kwargs]
        if guided:
            known = None if guidance_reference == "factual" else ~changed
            reference = factual if guidance_reference == "factual" else counterfactual
            branches.insert(0, self._unet_kwargs(reference, known, prompt_embeds))
        if kept:
            branches.append(self._unet_kwargs(counterfactual, changed, prompt_embeds))
        kwargs = self._stack_branches(*branches)

        # 4. The region the edit may change: the computed mask, the user's, or none.
        if isinstance(preserve, str) and preserve == "auto":
            preserve = self._edit_mask(
                layout, tile_batch_size, trajectory[-1], factual, counterfactual, prompt_embeds, mask_threshold
            )
        user_mask = preserve if isinstance(preserve, torch.Tensor) else mask
        latent_mask = self._prepare_mask(user_mask, num_outputs, trajectory.shape[-2:], device)
        pixel_mask = None
        if isinstance(preserve, torch.Tensor):
            pixel_mask = self._pixel_mask(preserve, num_outputs, pixels.shape[-2:], device)

        # 5. Prediction of the image: regenerate from the abducted noise.
        latents = trajectory[0]
        with self._progress_bar(len(timesteps) * layout.num_tiles, "prediction") as progress_bar:
            model_fn = tiled_model_fn(self._model_fn, layout, tile_batch_size, progress_bar.update)
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._guidance_scale = edit_weights if i < guided_steps else torch.ones_like(edit_weights)
                model_output = self._guided_model_output(model_fn, latents, t, kwargs, guided, kept)
                if predictor_guidance:
                    model_output = self._predictor_guided(model_output, latents, t, counterfactual, predictor_guidance)
                if noise_maps is None:
                    latents = ddim_step(self.scheduler, model_output, t, latents)
                else:
                    latents = ddpm_step(self.scheduler, model_output, t, latents, noise_maps[i])
                if latent_mask is not None:
                    latents = latent_mask * latents + (1 - latent_mask) * trajectory[i + 1]
                latents = self._callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, latents)

        reference = None
        if pixels is not None:
            reference = pixels if num_counterfactuals == 1 else pixels.repeat_interleave(num_counterfactuals, dim=0)
        factual_samples = trajectory[-1] if keep_residual else None
        images = self._decode_latents(latents, output_type, reference, pixel_mask, box, factual_samples)
        self.maybe_free_model_hooks()
        output = CounterfactualPipelineOutput(
            images=images,
            factual_factors=_rows(self.schema.decode(factual.cpu())),
            counterfactual_factors=_rows(self.schema.decode(counterfactual.cpu())),
            inversion=inversion,
            masks=pixel_mask,
            identification=identify_edits(
                self.scm, self.schema.denormalize(factual[::num_counterfactuals]), interventions, num_counterfactuals
            ),
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------ generation

    def generate(self, *args: Any, **kwargs: Any) -> GenerationPipelineOutput | tuple:
        """Samples factors from the causal model (observational or interventional), then images from noise: runs a
        `FactorGenerationPipeline` over this pipeline's components (shared, not copied) with these arguments (see
        its `__call__`), reporting progress through this pipeline's progress bar. Its step callback receives that
        generation pipeline.

        Returns:
            GenerationPipelineOutput (or a tuple of its fields).
        """
        generation = FactorGenerationPipeline(
            unet=self.unet,
            scheduler=self.scheduler,
            factor_encoder=self.factor_encoder,
            scm=self.scm,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
        )
        generation.progress_bar = self.progress_bar
        output = generation(*args, **kwargs)
        self.maybe_free_model_hooks()
        return output
