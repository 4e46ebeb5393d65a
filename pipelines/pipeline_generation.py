"""FactorGenerationPipeline: images generated from factors sampled from the causal model, or given.

The generation counterpart of `CounterfactualDiffusionPipeline`, as diffusers separates text-to-image from
image-to-image: the same model, without the factor predictor and the inverse scheduler that only editing uses, run
from pure noise by DDIM with classifier-free guidance over all factors. `FactorGenerationPipeline.from_pipe(pipe)`
builds one over an edit pipeline's components (shared, not copied), and `CounterfactualDiffusionPipeline.generate`
runs one.
"""

from collections.abc import Mapping
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.editing_defaults import DEFAULT_GENERATE_GUIDANCE, DEFAULT_NUM_INFERENCE_STEPS
from cf_diffusion.guidance import is_weight
from cf_diffusion.inversion import ddim_step, inference_timesteps
from cf_diffusion.scm import NeuralCausalModel

from .output import GenerationPipelineOutput
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


class FactorGenerationPipeline(FactorPipelineMixin, DiffusionPipeline):
    """Generation with a factor-conditioned diffusion model and a neural causal model: factors sampled from the
    causal model (observational or interventional), or given, then images from noise.

    Args:
        unet: The factor-conditioned denoiser, as in `CounterfactualDiffusionPipeline`.
        scheduler: The sampler's `DDIMScheduler` (epsilon, v-prediction or sample prediction).
        factor_encoder: Factor vector + known mask -> the UNet's conditioning.
        scm: The causal model over the factors (same factors as `factor_encoder.schema`).
        vae: Optional `AutoencoderKL`; None runs in pixel space.
        text_encoder: Optional transformers text encoder, as in `CounterfactualDiffusionPipeline`.
        tokenizer: The text encoder's tokenizer.
    """

    model_cpu_offload_seq = "text_encoder->factor_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]
    _exclude_from_cpu_offload = ["scm"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        factor_encoder: FactorEncoder,
        scm: NeuralCausalModel,
        vae: AutoencoderKL | None = None,
        text_encoder: Any | None = None,
        tokenizer: Any | None = None,
    ):
        super().__init__()
        _check_components(
            scheduler=scheduler, factor_encoder=factor_encoder, scm=scm, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.register_modules(
            unet=unet,
            scheduler=scheduler,
            factor_encoder=factor_encoder,
            scm=scm,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
        self._set_up_processing()

    @property
    def guidance_scale(self) -> float:
        """The guidance weight in use, one number for every image."""
        return self._guidance_scale

    def check_inputs(
        self,
        *,
        num_images: int,
        interventions: Mapping[str, Any] | None,
        factors: Any,
        guidance_scale: float,
        generator: Generator,
        output_type: str,
        prompt: str | list[str] | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        latents: torch.Tensor | None,
    ) -> None:
        """Validates the inputs of `__call__` (keyword arguments only); each problem raises a ValueError naming it.

        Args:
            num_images: N, the number of images (not used when `factors` are given: N is their number of rows).
            interventions: {name: value | callable | per-image column}, or None.
            factors: The factors to generate for (table forms of `FactorSchema.to_values`), or None.
            guidance_scale: One number >= 0.
            generator: A generator or a list of N generators.
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            prompt: A prompt, a list of N prompts, or None.
            callback_on_step_end_tensor_inputs: Names of tensors passed to the step callback.
            latents: The starting noise Tensor[N, c, h, w], or None.

        Raises:
            ValueError: On any bad input.
        """
        if not is_weight(guidance_scale):
            raise ValueError(
                f"guidance_scale of generate must be one number >= 0 (classifier-free guidance over all factors), "
                f"got {guidance_scale!r}"
            )
        if factors is not None:
            if interventions is not None:
                raise ValueError("pass either factors or interventions to generate, not both")
            num_images = self.schema.check_factors(factors)
        _check_count(num_images, name="num_images")
        self.schema.check_interventions(interventions, batch_size=num_images)
        _check_generator(generator, batch_size=num_images)
        _check_choice(output_type, name="output_type", choices=OUTPUT_TYPES)
        self._check_prompt(prompt, batch_size=num_images)
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        shape = self._latent_shape(num_images)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")

    def _latent_shape(self, num_images: int) -> tuple[int, int, int, int]:
        """The shape of the starting noise of `num_images` images: the UNet's samples."""
        config = self.unet.config
        return (num_images, config.in_channels, config.sample_size, config.sample_size)

    def _sample_factors(
        self,
        num_images: int,
        *,
        interventions: Mapping[str, Any] | None,
        factors: Any,
        generator: Generator,
        device: torch.device,
    ) -> torch.Tensor:
        """The factors to generate for, Tensor[N, F] in `FactorSchema.encode` format: `factors` encoded, or sampled
        from the causal model under `interventions`. With a list of generators, image n's factors are drawn with
        generator n (so a batch equals its images generated one by one)."""
        if factors is not None:
            return self.schema.encode(factors).to(device)
        if isinstance(generator, list):
            rows = [
                self.schema.normalize(self.scm.sample(1, _row_interventions(interventions or {}, b), generator=g))
                for b, g in enumerate(generator)
            ]
            return torch.cat(rows).to(device)
        return self.schema.normalize(self.scm.sample(num_images, interventions, generator=generator)).to(device)

    @torch.no_grad()
    @_dtypes_looked_up_once
    def __call__(
        self,
        interventions: Mapping[str, Any] | None = None,
        num_images: int = 1,
        factors: Any = None,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GENERATE_GUIDANCE,
        prompt: str | list[str] | None = None,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
        callback_on_step_end: CallbackOnStepEnd | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> GenerationPipelineOutput | tuple:
        """Samples factors from the causal model (observational or interventional), then images from noise.

        Args:
            interventions: `{name: value | callable}` for `scm.sample`; None samples the observational distribution.
            num_images: N.
            factors: Generate for these factors instead of sampling them (then `interventions` must be None and N
                is their number of rows).
            num_inference_steps: DDIM steps.
            guidance_scale: Classifier-free guidance over factors, w in `eps_null + w (eps - eps_null)` with every
                factor unknown in the null branch; 1 disables it.
            prompt: Prompt(s) for a pipeline with a text encoder.
            generator: A generator or a list of N (one per image).
            latents: Optional starting noise Tensor[N, c, h, w].
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict: Return a `GenerationPipelineOutput` (True) or the tuple `(images, factors)`.
            callback_on_step_end: Called as `callback(pipe, step, timestep, {"latents": latents})` after each
                step; a `"latents"` entry in the returned dict replaces the latents.
            callback_on_step_end_tensor_inputs: Tensors passed to the callback (default `["latents"]`).

        Returns:
            GenerationPipelineOutput (or a tuple of its fields).
        """
        callback_on_step_end_tensor_inputs = self._callback_inputs(
            callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self.check_inputs(
            num_images=num_images,
            interventions=interventions,
            factors=factors,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type=output_type,
            prompt=prompt,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            latents=latents,
        )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        encoded = self._sample_factors(
            num_images, interventions=interventions, factors=factors, generator=generator, device=device
        )
        num_images = encoded.shape[0]
        timesteps = inference_timesteps(self.scheduler, num_inference_steps, 1.0, device)
        self._num_timesteps = len(timesteps)
        if latents is None:
            latents = randn_tensor(
                self._latent_shape(num_images), generator=generator, device=device, dtype=self._dtype("unet")
            )
        latents = latents.to(device=device, dtype=self._dtype("unet")) * self.scheduler.init_noise_sigma
        prompt_embeds = self._encode_prompt(prompt, num_images, device)
        kwargs = self._unet_kwargs(encoded, None, prompt_embeds)
        guided = guidance_scale != 1
        if guided:
            unknown = torch.zeros_like(encoded, dtype=torch.bool)
            kwargs = self._stack_branches(self._unet_kwargs(encoded, unknown, prompt_embeds), kwargs)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_output = self._guided_model_output(self._model_fn, latents, t, kwargs, guided)
                latents = ddim_step(self.scheduler, model_output, t, latents)
                latents = self._callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, latents)
                progress_bar.update()

        images = latents
        if output_type != "latent":
            images = self.image_processor.postprocess(self._decode(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        factor_rows = _rows(self.schema.decode(encoded.cpu()))
        if not return_dict:
            return images, factor_rows
        return GenerationPipelineOutput(images=images, factors=factor_rows)
