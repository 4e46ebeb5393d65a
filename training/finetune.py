"""Fine-tuning a pretrained Stable-Diffusion-style model: its UNet gains factor conditioning that starts at zero.

The recipe's `unet.pretrained` names a local folder laid out as diffusers saves a text-to-image pipeline: `unet/`,
`vae/`, `scheduler/`, `text_encoder/` and `tokenizer/` (a CLIP text encoder, as in Stable Diffusion 1.x and 2.x).
Its UNet is rebuilt with a projection class embedding of the flattened factor tokens (DESIGN.md §5): the base
config plus `class_embed_type="projection"`, the base weights loaded, and the embedding's last layer set to zero, so
at step 0 the model computes exactly what the base model computes, for any factors. The factor tokens stay out of
cross-attention, which keeps the prompt tokens alone (`FactorEncoder(cross_attention_tokens=False)`); the VAE and
the text encoder stay frozen, and the noise schedule is the pretrained model's.
"""

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

PRETRAINED_SUBFOLDERS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


def pretrained_folder(pretrained: str | Path) -> Path:
    """Checks that `pretrained` is a local Stable-Diffusion-style folder and returns it.

    Raises:
        ValueError: If the folder or one of `PRETRAINED_SUBFOLDERS` is missing.
    """
    folder = Path(pretrained)
    if not folder.is_dir():
        raise ValueError(
            f"Config 'unet.pretrained' {str(pretrained)!r} is not a folder; expected a local Stable-Diffusion-style "
            f"folder with {', '.join(f'{name}/' for name in PRETRAINED_SUBFOLDERS)} (download a Hub model first, "
            f"e.g. with `huggingface-cli download`)."
        )
    missing = [name for name in PRETRAINED_SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise ValueError(
            f"Config 'unet.pretrained' {str(pretrained)!r} has no {', '.join(f'{name}/' for name in missing)}; "
            f"expected a Stable-Diffusion-style folder with {', '.join(f'{n}/' for n in PRETRAINED_SUBFOLDERS)}."
        )
    return folder


def add_factor_conditioning(
    base: UNet2DConditionModel, vector_dim: int, sample_size: int | None = None
) -> UNet2DConditionModel:
    """The base UNet plus a zero-initialised projection class embedding of a `vector_dim`-wide factor vector.

    Args:
        base: The pretrained UNet (left unchanged).
        vector_dim: Width of the factor vector fed as `class_labels` (`FactorEncoder.vector_dim`).
        sample_size: Latent height and width of the data set (the model's `sample_size`), or None to keep the base's.

    Returns:
        A float32 UNet2DConditionModel whose output equals the base model's for any `class_labels`, until trained.

    Raises:
        ValueError: If the base UNet already has a class or an added-condition embedding.
    """
    for key in ("class_embed_type", "addition_embed_type"):
        if base.config.get(key) is not None:
            raise ValueError(
                f"The pretrained UNet already has {key}={base.config[key]!r}; factor conditioning needs a UNet "
                f"without one (expected {key}=None, as in Stable Diffusion 1.x and 2.x)."
            )
    overrides = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": vector_dim}
    if sample_size is not None:
        overrides["sample_size"] = sample_size
    unet = UNet2DConditionModel.from_config({**base.config, **overrides})
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    new = [key for key in missing if not key.startswith("class_embedding.")]
    if new or unexpected:
        raise ValueError(
            f"The pretrained UNet's weights do not fit its own config: missing {new}, unexpected {unexpected}."
        )
    nn.init.zeros_(unet.class_embedding.linear_2.weight)
    nn.init.zeros_(unet.class_embedding.linear_2.bias)
    return unet


def load_pretrained_unet(
    pretrained: str | Path, sample_size: int, channels: int, vector_dim: int
) -> UNet2DConditionModel:
    """The pretrained folder's UNet with factor conditioning added (see `add_factor_conditioning`).

    Args:
        pretrained: A Stable-Diffusion-style folder (see `pretrained_folder`).
        sample_size: Latent height and width of the data set.
        channels: Latent channels of the VAE the model runs with.
        vector_dim: Width of the factor vector.

    Raises:
        ValueError: If the UNet does not take `channels`-channel latents.
    """
    base = UNet2DConditionModel.from_pretrained(pretrained_folder(pretrained), subfolder="unet", use_safetensors=True)
    if base.config.in_channels != channels:
        raise ValueError(
            f"The UNet of 'unet.pretrained' {str(pretrained)!r} takes {base.config.in_channels}-channel latents, but "
            f"the VAE gives {channels}; expected the pretrained folder's own VAE (or one with as many channels)."
        )
    return add_factor_conditioning(base, vector_dim, sample_size)


def pretrained_noise_scheduler(pretrained: str | Path) -> DDPMScheduler:
    """The pretrained model's training noise schedule as a DDPMScheduler (with `clip_sample=False`, for latents)."""
    return DDPMScheduler.from_pretrained(pretrained_folder(pretrained), subfolder="scheduler", clip_sample=False)


def load_text_components(pretrained: str | Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """The pretrained folder's frozen CLIP text encoder (in eval mode) and its tokenizer."""
    folder = pretrained_folder(pretrained)
    text_encoder = (
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True)
        .eval()
        .requires_grad_(False)
    )
    return text_encoder, CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")


@torch.no_grad()
def encode_prompts(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompt tokens Tensor[B, L, D] exactly as the pipeline computes them (padded to the tokenizer's max length)."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]
