"""What the edit and the generation pipelines share: their components' checks, the UNet's factor (and prompt)
conditioning, classifier-free guidance, decoding, the step callback, and the checks of the arguments both take."""

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import is_xformers_available

from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.factors import FactorSchema
from cf_diffusion.inversion import ModelFn
from cf_diffusion.scm import NeuralCausalModel

Generator = torch.Generator | list[torch.Generator] | None
CallbackOnStepEnd = Callable[[DiffusionPipeline, int, int, dict], dict] | PipelineCallback | MultiPipelineCallbacks

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _is_column(value: Any) -> bool:
    """True for per-image intervention values (a list, tuple, array or tensor with one entry per image)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.ndim >= 1
    return isinstance(value, list | tuple)


def _row_interventions(interventions: dict[str, Any], row: int) -> dict[str, Any]:
    """The interventions on image `row` alone: its entry of each per-image column, other values as they are."""
    return {
        name: value[row : row + 1] if _is_column(value) and len(value) > 1 else value
        for name, value in interventions.items()
    }


def _rows(values: dict[str, list]) -> list[dict[str, Any]]:
    """`{name: [v0, v1, ...]}` -> `[{name: v0}, {name: v1}, ...]`."""
    names = list(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*(values[name] for name in names), strict=True)]


def _dtypes_looked_up_once(method: Callable) -> Callable:
    """Runs a pipeline method with the UNet's and the VAE's dtypes looked up once, at its start (`ModelMixin.dtype`
    searches every submodule for casting hooks, about a millisecond each time, and one edit asks a dozen times)."""

    @functools.wraps(method)
    def wrapper(self: "FactorPipelineMixin", *args: Any, **kwargs: Any) -> Any:
        if self._call_dtypes is not None:
            return method(self, *args, **kwargs)
        self._call_dtypes = {"unet": self.unet.dtype, "vae": None if self.vae is None else self.vae.dtype}
        try:
            return method(self, *args, **kwargs)
        finally:
            self._call_dtypes = None

    return wrapper


def _check_components(
    *,
    scheduler: Any,
    factor_encoder: FactorEncoder,
    scm: NeuralCausalModel,
    text_encoder: Any | None,
    tokenizer: Any | None,
) -> None:
    """The components both pipelines need agree: a `DDIMScheduler`, the same factors in the causal model and the
    factor encoder, a text encoder and a tokenizer together (and present when the factor tokens do not go to the
    UNet's cross-attention).

    Raises:
        ValueError: Naming the component that does not fit.
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(
            f"scheduler must be a DDIMScheduler (inversion and DDPM noise maps replay its step), "
            f"got {type(scheduler).__name__}; convert with DDIMScheduler.from_config(scheduler.config)"
        )
    if scm.schema.names != factor_encoder.schema.names:
        raise ValueError(
            f"scm factors {scm.schema.names} must be the factor_encoder's factors {factor_encoder.schema.names}"
        )
    if (text_encoder is None) != (tokenizer is None):
        raise ValueError("text_encoder and tokenizer go together: pass both or neither")
    if not factor_encoder.config.cross_attention_tokens and text_encoder is None:
        raise ValueError(
            "factor_encoder has cross_attention_tokens=False (the UNet cross-attends to prompt tokens only), so "
            "the pipeline needs a text_encoder and a tokenizer"
        )


def _check_count(value: Any, *, name: str) -> None:
    """A count of images or samples must be an integer >= 1."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_choice(value: Any, *, name: str, choices: Sequence[str]) -> None:
    """An argument that names one of `choices` must be one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_generator(generator: Generator, *, batch_size: int) -> None:
    """A list of generators must hold one per image."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"generator is a list of {len(generator)} generators but there are {batch_size} image(s); pass one "
            "generator per image, or a single generator"
        )


class FactorPipelineMixin:
    """The parts of `CounterfactualDiffusionPipeline` and `FactorGenerationPipeline` that do not depend on what they
    make: a pipeline with the components `unet`, `scheduler`, `factor_encoder`, `scm`, `vae`, `text_encoder` and
    `tokenizer` (registered with `register_modules`, then `_set_up_processing` called)."""

    _callback_tensor_inputs = ["latents"]

    def _set_up_processing(self) -> None:
        """The VAE's scale factor, the image processor, and no dtypes looked up yet (`_dtypes_looked_up_once`)."""
        vae = self.vae
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)
        self._call_dtypes: dict[str, torch.dtype | None] | None = None

    @property
    def schema(self) -> FactorSchema:
        """The factors the model is conditioned on."""
        return self.factor_encoder.schema

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _dtype(self, component: str) -> torch.dtype:
        """The dtype of the `"unet"` or the `"vae"`: the one looked up at the start of this call, if in one."""
        if self._call_dtypes is not None:
            return self._call_dtypes[component]
        return getattr(self, component).dtype

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """Uses xformers' memory-efficient attention in every attention layer.

        Raises:
            ImportError: If xformers is not installed (PyTorch's scaled-dot-product attention, the default, needs
                nothing).
        """
        if not is_xformers_available():
            raise ImportError(
                "xformers is not installed, so its memory-efficient attention cannot be enabled. Install it with "
                "`pip install cf-diffusion[xformers]` (it needs a CUDA GPU), or keep the default attention: PyTorch's "
                "scaled_dot_product_attention is already memory-efficient."
            )
        super().enable_xformers_memory_efficient_attention(attention_op)

    # ------------------------------------------------------------------ checks of the arguments both pipelines take

    def _check_prompt(self, prompt: str | list[str] | None, *, batch_size: int) -> None:
        """A prompt needs a text encoder, and is a string or a list of one per image."""
        if prompt is None:
            return
        if self.text_encoder is None:
            raise ValueError("a prompt was given but the pipeline has no text_encoder")
        if isinstance(prompt, list) and len(prompt) != batch_size:
            raise ValueError(f"prompt is a list of {len(prompt)} prompts but there are {batch_size} image(s)")
        if not isinstance(prompt, str | list):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")

    @staticmethod
    def _callback_inputs(callback: CallbackOnStepEnd, names: list[str] | None) -> list[str]:
        """The tensors a step callback receives: a diffusers `PipelineCallback`'s own `tensor_inputs`, else `names`,
        else `["latents"]`."""
        if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
            return callback.tensor_inputs
        return names or ["latents"]

    def _check_callback_inputs(self, names: list[str] | None) -> None:
        """The step callback can be passed only the tensors in `_callback_tensor_inputs`."""
        unknown = [name for name in names or [] if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from "
                f"{self._callback_tensor_inputs}"
            )

    # ------------------------------------------------------------------ conditioning and denoising

    def _encode_prompt(
        self, prompt: str | list[str] | None, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        """Prompt tokens Tensor[B, L, D] (an empty prompt when a text encoder exists and none is given), or None."""
        if self.text_encoder is None:
            return None
        prompts = [prompt or ""] * batch_size if not isinstance(prompt, list) else prompt
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def _unet_kwargs(
        self, factors: torch.Tensor, known: torch.Tensor | None, prompt_embeds: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """UNet conditioning for factors Tensor[N, F] (and prompt tokens Tensor[N, L, D]): keyword arguments
        (`FactorEncoder.unet_kwargs`, in the UNet's dtype)."""
        return self.factor_encoder.unet_kwargs(
            factors.to(self.factor_encoder.device),
            known,
            prompt_embeds,
            self.unet.config.class_embed_type,
            self._dtype("unet"),
        )

    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The UNet as the inversion functions call it: model output Tensor[B, c, h, w]."""
        return self.unet(x, t, **kwargs, return_dict=False)[0]

    def _guided_model_output(
        self,
        model_fn: ModelFn,
        latents: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, torch.Tensor],
        guided: bool,
        kept: bool = False,
    ) -> torch.Tensor:
        """The output of `model_fn` (the UNet, or its tiled version) at `latents`. `kwargs` stack along the batch (as
        `_stack_branches` makes them) the reference branch when guided, the conditional branch, and the conditional
        branch with the kept factors unknown when `kept`; all run in one call. Returns `out_ref + w (out - out_ref)`
        (`out` unguided), plus `gamma (out - out_unkept)` when `kept` (`__call__`'s `keep_guidance`)."""
        count = 1 + guided + kept
        outputs = model_fn(torch.cat([latents] * count), t, kwargs).chunk(count)
        conditional = outputs[int(guided)]
        output = outputs[0] + self.guidance_scale * (conditional - outputs[0]) if guided else conditional
        if kept:
            output = output + self._keep_scale * (conditional - outputs[-1])
        return output

    @staticmethod
    def _stack_branches(*branches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The conditionings of several branches stacked along the batch, in order: Tensor[K N, ...]."""
        return {name: torch.cat([branch[name] for branch in branches]) for name in branches[0]}

    def _callback(
        self,
        callback_on_step_end: CallbackOnStepEnd | None,
        tensor_inputs: list[str],
        step: int,
        t: torch.Tensor,
        latents: torch.Tensor,
    ) -> torch.Tensor:
        """Runs the step callback, which may read and replace the latents."""
        if callback_on_step_end is None:
            return latents
        outputs = callback_on_step_end(self, step, t, {"latents": latents} if "latents" in tensor_inputs else {})
        return outputs.pop("latents", latents)

    # ------------------------------------------------------------------ decoding

    @contextmanager
    def _vae_tiling(self, height: int, width: int) -> Iterator[None]:
        """Tiled VAE encoding and decoding (`vae.enable_tiling()`) for images of `height` x `width` pixels larger
        than the VAE's sample size; the VAE's own setting is restored afterwards."""
        vae = self.vae
        if vae is None or vae.use_tiling or max(height, width) <= vae.config.sample_size:
            yield
            return
        vae.enable_tiling()
        try:
            yield
        finally:
            vae.disable_tiling()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Samples Tensor[N, c, h, w] -> pixels Tensor[N, C, H, W] float32 in about [-1, 1]: decoded by the VAE
        (tiled above its sample size), or the samples themselves without one."""
        images = latents
        if self.vae is not None:
            size = [side * self.vae_scale_factor for side in latents.shape[-2:]]
            with self._vae_tiling(*size):
                images = self.vae.decode(
                    latents.to(self._dtype("vae")) / self.vae.config.scaling_factor, return_dict=False
                )[0]
        return images.float()
