"""Stages: an AutoencoderKL trained on the data set (the latent space of the diffusion model), and the refinement of
its decoder with the encoder frozen."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler

from cf_diffusion.images import image_grid, save_image, to_uint8
from cf_diffusion.training.data import TrainingData, batch_indices, shard_indices, stage_batch
from cf_diffusion.training.loop import Stage, run_stage


def build_vae(config: dict, resolution: int, channels: int) -> AutoencoderKL:
    """A small AutoencoderKL with len(block_out_channels) - 1 downsamplings (f = 4 for three blocks)."""
    vae_config = config["vae"]
    blocks = len(vae_config["block_out_channels"])
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(vae_config["block_out_channels"]),
        layers_per_block=vae_config["layers_per_block"],
        latent_channels=vae_config["latent_channels"],
        norm_num_groups=vae_config["norm_num_groups"],
        sample_size=resolution,
        mid_block_add_attention=False,
    )


@torch.no_grad()
def encode_means(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior means of pixels in [-1, 1] (on the VAE's device), unscaled: Tensor[B, C_latent, h, w]."""
    return vae.encode(pixels.to(vae.device)).latent_dist.mean


def encode_latents(vae: AutoencoderKL, data: TrainingData, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of every image, unscaled: Tensor[N, C_latent, h, w]."""
    vae.eval()
    parts = [
        encode_means(vae, data.pixel_batch(torch.arange(i, min(i + batch_size, len(data)))))
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(parts)


def load_or_train_vae(config: dict, data: TrainingData, accelerator: Accelerator, resume: str | None) -> AutoencoderKL:
    """The recipe's `vae.pretrained` folder when given (frozen, as in Stable Diffusion), else a newly trained one."""
    if config["vae"]["pretrained"] is not None:
        return AutoencoderKL.from_pretrained(config["vae"]["pretrained"], use_safetensors=True)
    return train_vae(config, data, accelerator, resume)


def _reconstruction_loss(reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)


def _reconstruction_validator(
    name: str, vae: torch.nn.Module, rows: torch.Tensor, data: TrainingData, accelerator: Accelerator, config: dict
) -> Callable[[int], None]:
    """The stage's `validate`: a grid of the images `rows` over their reconstructions from posterior means, written
    to `output_dir/validation/{name}-{step}.png`."""

    def validate(step: int) -> None:
        model = accelerator.unwrap_model(vae)
        pixels = data.pixel_batch(rows).to(accelerator.device)
        with torch.no_grad():
            reconstruction = model.decode(model.encode(pixels).latent_dist.mean).sample
        grid = image_grid(to_uint8(torch.cat([pixels, reconstruction])), columns=16, scale=2)
        save_image(grid, f"{config['output_dir']}/validation/{name}-{step:06d}.png")

    return validate


def train_vae(config: dict, data: TrainingData, accelerator: Accelerator, resume: str | None) -> AutoencoderKL:
    """Trains the autoencoder (L1 + MSE reconstruction + a small KL), then sets `scaling_factor` = 1 / std(latents)."""
    vae_config = config["vae"]
    torch.manual_seed(config["seed"])
    vae = build_vae(config, config["data"]["resolution"], data.images.shape[1])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=vae_config["lr"], weight_decay=0.0)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    shard = shard_indices(len(data), accelerator.process_index, accelerator.num_processes)

    def loss_fn(micro_step: int) -> torch.Tensor:
        rows = batch_indices(shard, vae_config["batch_size"], config["seed"], micro_step)
        pixels = stage_batch(config, "vae", data, rows, config["seed"], micro_step)[0]
        pixels = pixels.to(accelerator.device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        return _reconstruction_loss(reconstruction, pixels) + vae_config["kl_weight"] * posterior.kl().mean()

    stage = Stage("vae", {"vae": vae}, optimizer)
    validate = _reconstruction_validator("vae", vae, shard[:16], data, accelerator, config)
    run_stage(stage, accelerator, loss_fn, vae_config["num_steps"], config, resume, validate)
    vae = accelerator.unwrap_model(vae)
    latents = encode_latents(vae, data)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def train_decoder(
    config: dict, vae: AutoencoderKL, data: TrainingData, accelerator: Accelerator, resume: str | None
) -> AutoencoderKL:
    """Refines the decoder of `vae` on the posterior means with the encoder frozen (the recipe of Stable Diffusion's
    fine-tuned `ft-MSE` decoders), for `vae.decoder_num_steps` steps at `vae.decoder_lr`, cosine-decayed.

    The latents the diffusion model learns and samples are posterior means, but the joint stage trains the decoder on
    posterior samples and stops early; a decoder trained on the means alone draws them back sharper. The encoder and
    so the latents and `scaling_factor` do not change: a UNet trained on the joint stage's latents stays valid, and
    this stage can run after it. (On morpho the joint stage's decoder thickened thin strokes by more than an edit's
    tolerance; BENCHMARKS.md, "How the editing settings were chosen".)
    """
    vae_config = config["vae"]
    torch.manual_seed(config["seed"])
    vae.requires_grad_(False)
    trained = [vae.decoder, vae.post_quant_conv]
    for module in trained:
        module.requires_grad_(True)
    parameters = [p for module in trained for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=vae_config["decoder_lr"], weight_decay=0.0)
    lr_scheduler = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=0,
        num_training_steps=vae_config["decoder_num_steps"] * accelerator.num_processes,
    )
    vae, optimizer, lr_scheduler = accelerator.prepare(vae, optimizer, lr_scheduler)
    shard = shard_indices(len(data), accelerator.process_index, accelerator.num_processes)

    def loss_fn(micro_step: int) -> torch.Tensor:
        rows = batch_indices(shard, vae_config["batch_size"], config["seed"], micro_step)
        pixels = stage_batch(config, "vae", data, rows, config["seed"], micro_step)[0]
        pixels = pixels.to(accelerator.device)
        return _reconstruction_loss(vae(pixels, sample_posterior=False).sample, pixels)  # decodes the posterior mean

    stage = Stage("decoder", {"vae": vae}, optimizer, lr_scheduler)
    validate = _reconstruction_validator("decoder", vae, shard[:16], data, accelerator, config)
    run_stage(stage, accelerator, loss_fn, vae_config["decoder_num_steps"], config, resume, validate)
    vae = accelerator.unwrap_model(vae)
    vae.requires_grad_(True)
    return vae
