"""Stage: the factor-conditioned diffusion model (UNet2DConditionModel + FactorEncoder), pixel or latent space.

The denoising loss is the usual epsilon (or v) regression. Each factor is independently replaced by its learned
null token with probability `factor_dropout`, so any subset of factors can condition the model and guidance has a
reference. Latent space: the images are encoded once with the trained VAE (posterior means times the scaling
factor, exactly what the pipeline's abduction uses).

With `unet.pretrained` (a Stable-Diffusion-style folder) the UNet is the pretrained one with zero-initialised factor
conditioning (training/finetune.py): it cross-attends to the frozen text encoder's tokens of the empty prompt, sees
the factors through its class embedding, and is trained on the pretrained noise schedule.
"""

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn

from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.factors import FactorSchema
from cf_diffusion.images import image_grid, save_image, to_uint8
from cf_diffusion.training.config import check_prediction_type
from cf_diffusion.training.data import TrainingData, batch_indices, shard_indices, stage_batch
from cf_diffusion.training.finetune import (
    encode_prompts,
    load_pretrained_unet,
    load_text_components,
    pretrained_noise_scheduler,
)
from cf_diffusion.training.loop import Stage, run_stage
from cf_diffusion.training.vae import encode_latents, encode_means


class ConditionedUNet(nn.Module):
    """The UNet and the FactorEncoder trained as one module: (noisy, t, factors, known[, prompt]) -> prediction."""

    def __init__(self, unet: UNet2DConditionModel, factor_encoder: FactorEncoder):
        super().__init__()
        self.unet = unet
        self.factor_encoder = factor_encoder

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        factors: torch.Tensor,
        known: torch.Tensor | None,
        prompt_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's prediction Tensor[B, C, H, W] for noisy samples under factor (and prompt) conditioning.

        Args:
            noisy: Tensor[B, C, H, W].
            timesteps: Tensor[B].
            factors: Tensor[B, F] in `FactorSchema.encode` format.
            known: bool Tensor[B, F] (False: the factor's null token), or None for all known.
            prompt_embeds: Prompt tokens Tensor[B, L, D] from the text encoder, or None; required when the factor
                encoder keeps its tokens out of cross-attention.
        """
        kwargs = self.factor_encoder.unet_kwargs(factors, known, prompt_embeds, self.unet.config.class_embed_type)
        return self.unet(noisy, timesteps, **kwargs).sample


def build_factor_encoder(config: dict, schema: FactorSchema) -> FactorEncoder:
    """The recipe's FactorEncoder; a fine-tuned model keeps the factor tokens out of cross-attention."""
    return FactorEncoder(
        schema, embed_dim=config["unet"]["embed_dim"], cross_attention_tokens=config["unet"]["pretrained"] is None
    )


def build_unet(config: dict, sample_size: int, channels: int, num_factors: int) -> UNet2DConditionModel:
    """A UNet2DConditionModel whose deeper blocks cross-attend to the factor tokens and whose every residual block
    sees the flattened factor tokens through a projection class embedding; with `unet.pretrained`, the pretrained
    UNet with that class embedding added at zero (training/finetune.py)."""
    unet_config = config["unet"]
    if unet_config["pretrained"] is not None:
        return load_pretrained_unet(
            unet_config["pretrained"], sample_size, channels, num_factors * unet_config["embed_dim"]
        )
    blocks = len(unet_config["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(unet_config["block_out_channels"]),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",),
        layers_per_block=unet_config["layers_per_block"],
        cross_attention_dim=unet_config["embed_dim"],
        attention_head_dim=unet_config["attention_head_dim"],
        norm_num_groups=unet_config["norm_num_groups"],
        class_embed_type="projection",
        projection_class_embeddings_input_dim=num_factors * unet_config["embed_dim"],
    )


def build_noise_scheduler(config: dict) -> DDPMScheduler:
    """The training noise schedule: cosine (so the last step carries almost no signal of the image), or the
    pretrained model's own with `unet.pretrained` (refused when its prediction type is none the loss knows)."""
    pretrained = config["unet"]["pretrained"]
    if pretrained is not None:
        scheduler = pretrained_noise_scheduler(pretrained)
        check_prediction_type(scheduler.config.prediction_type, f"The prediction_type of {pretrained}'s scheduler")
        return scheduler
    return DDPMScheduler(
        num_train_timesteps=config["unet"]["num_train_timesteps"],
        beta_schedule="squaredcos_cap_v2",
        prediction_type=config["unet"]["prediction_type"],
        clip_sample=False,
    )


def diffusion_target(
    scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to output for `scheduler.add_noise(clean, noise, timesteps)`, by the schedule's
    prediction type: the noise (epsilon), the velocity (v_prediction) or the clean sample (sample)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"No training target for prediction_type {prediction_type!r}.")


def training_targets(data: TrainingData, vae: AutoencoderKL | None) -> torch.Tensor:
    """What the UNet learns to generate: scaled VAE latents, or pixels in [-1, 1] when there is no VAE."""
    if vae is None:
        return data.pixel_batch(torch.arange(len(data)))
    return encode_latents(vae, data) * vae.config.scaling_factor


def training_batch(
    config: dict, data: TrainingData, targets: torch.Tensor, vae: AutoencoderKL | None, rows: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's (clean samples, factors) for rows `rows`: the precomputed targets, or with `unet.brightness_jitter`
    the rows' images rescaled in brightness (`data.brightness_batch`) and encoded afresh."""
    if not config["unet"]["brightness_jitter"]:
        return targets[rows], data.factor_batch(rows)
    pixels, factors = stage_batch(config, "unet", data, rows, config["seed"], step)
    if vae is None:
        return pixels, factors
    return encode_means(vae, pixels) * vae.config.scaling_factor, factors


def train_diffusion(
    config: dict, data: TrainingData, accelerator: Accelerator, resume: str | None, vae: AutoencoderKL | None = None
) -> dict:
    """Trains UNet + FactorEncoder; returns {"unet", "factor_encoder"} with the EMA weights."""
    unet_config = config["unet"]
    torch.manual_seed(config["seed"])
    targets = training_targets(data, vae)
    if vae is not None and unet_config["brightness_jitter"]:  # encodes every batch afresh
        vae.to(accelerator.device)
    factor_encoder = build_factor_encoder(config, data.schema)
    unet = build_unet(config, targets.shape[-1], targets.shape[1], len(data.schema))
    model = ConditionedUNet(unet, factor_encoder)
    noise_scheduler = build_noise_scheduler(config)
    prompt_embeds = None
    if unet_config["pretrained"] is not None:
        text_encoder, tokenizer = load_text_components(unet_config["pretrained"])
        prompt_embeds = encode_prompts(text_encoder, tokenizer, [""]).to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=unet_config["lr"], weight_decay=1e-2)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=unet_config["lr_warmup_steps"] * accelerator.num_processes
    )
    ema = EMAModel(model.parameters(), decay=unet_config["ema_decay"])
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    shard = shard_indices(len(data), accelerator.process_index, accelerator.num_processes)
    alphas = noise_scheduler.alphas_cumprod

    def loss_fn(micro_step: int) -> torch.Tensor:
        rows = batch_indices(shard, unet_config["batch_size"], config["seed"], micro_step)
        clean, factors = training_batch(config, data, targets, vae, rows, micro_step)
        clean, factors = clean.to(accelerator.device), factors.to(accelerator.device)
        known = torch.rand(factors.shape, device=accelerator.device) >= unet_config["factor_dropout"]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, len(alphas), (clean.shape[0],), device=accelerator.device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        target = diffusion_target(noise_scheduler, clean, noise, timesteps)
        prompt = None if prompt_embeds is None else prompt_embeds.expand(clean.shape[0], -1, -1)
        return F.mse_loss(model(noisy, timesteps, factors, known, prompt), target)

    fixed = shard[:16]
    sampler = DDIMScheduler.from_config(noise_scheduler.config)

    @torch.no_grad()
    def validate(step: int) -> None:
        """Top row: 16 training images; bottom row: samples for their factors (20 DDIM steps from fixed noise of a
        private generator, so training draws the same random numbers with or without validation)."""
        network = accelerator.unwrap_model(model)
        factors = data.factor_batch(fixed).to(accelerator.device)
        shape = (len(fixed), *targets.shape[1:])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(config["seed"])).to(accelerator.device)
        prompt = None if prompt_embeds is None else prompt_embeds.expand(len(fixed), -1, -1)
        sampler.set_timesteps(20)
        for t in sampler.timesteps:
            x = sampler.step(network(x, t.expand(len(fixed)).to(x.device), factors, None, prompt), t, x).prev_sample
        images = x if vae is None else vae.decode(x.to(vae.device) / vae.config.scaling_factor).sample
        grid = image_grid(to_uint8(torch.cat([data.pixel_batch(fixed), images.cpu()])), columns=16, scale=2)
        save_image(grid, f"{config['output_dir']}/validation/unet-{step:06d}.png")

    stage = Stage("unet", {"model": model}, optimizer, lr_scheduler, ema)
    run_stage(stage, accelerator, loss_fn, unet_config["num_steps"], config, resume, validate)
    trained = accelerator.unwrap_model(model)
    ema.copy_to(trained.parameters())
    return {"unet": trained.unet, "factor_encoder": trained.factor_encoder}
