"""Puts the finished stages of a run together into one CounterfactualDiffusionPipeline."""

import shutil
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.factors import FactorSchema
from cf_diffusion.pipelines import CounterfactualDiffusionPipeline
from cf_diffusion.predictor import FactorPredictor
from cf_diffusion.scm import NeuralCausalModel
from cf_diffusion.training.checkpoint import load_checkpoint
from cf_diffusion.training.diffusion import ConditionedUNet, build_factor_encoder, build_noise_scheduler, build_unet
from cf_diffusion.training.finetune import load_text_components


def load_stage_vae(config: dict) -> AutoencoderKL | None:
    """The run's autoencoder: None in pixel space, else the trained (or given pretrained) one, with the `decoder`
    stage's refined decoder once that stage has finished (the encoder is the same)."""
    if config["vae"] is None:
        return None
    stages = Path(config["output_dir"]) / "stages"
    refined = (stages / "decoder" / "DONE").is_file()
    return AutoencoderKL.from_pretrained(stages / ("decoder" if refined else "vae") / "vae", use_safetensors=True)


def diffusion_from_checkpoint(
    config: dict, checkpoint: str | Path, schema: FactorSchema, vae: AutoencoderKL | None, use_ema: bool = True
) -> ConditionedUNet:
    """The UNet + FactorEncoder of an (unfinished) `unet` stage checkpoint, with its EMA weights by default.

    Args:
        config: the run's recipe.
        checkpoint: a `unet` stage checkpoint folder.
        schema: the run's factor schema (the SCM's).
        vae: the run's autoencoder (its latent shape sizes the UNet), or None in pixel space.
        use_ema: load the EMA weights rather than the raw ones.
    """
    data = config["data"]
    if vae is None:
        channels, size = data["channels"], data["resolution"]
    else:
        channels = vae.config.latent_channels
        size = data["resolution"] // 2 ** (len(vae.config.block_out_channels) - 1)
    model = ConditionedUNet(build_unet(config, size, channels, len(schema)), build_factor_encoder(config, schema))
    _, state = load_checkpoint(checkpoint)
    model.load_state_dict(state["models"]["model"])
    if use_ema:
        for parameter, shadow in zip(model.parameters(), state["ema"]["shadow_params"], strict=True):
            parameter.data.copy_(shadow)
    return model


def assemble_pipeline(config: dict, checkpoint: str | Path | None = None) -> CounterfactualDiffusionPipeline:
    """Builds the pipeline of the run in `config["output_dir"]` from its finished stages.

    Args:
        config: the run's recipe.
        checkpoint: take UNet + FactorEncoder from this `unet` stage checkpoint instead of the finished stage
            (to look at a run while it trains).
    """
    stages = Path(config["output_dir"]) / "stages"
    scm = NeuralCausalModel.from_pretrained(stages / "scm" / "scm", use_safetensors=True)
    vae = load_stage_vae(config)
    if checkpoint is None:
        unet = UNet2DConditionModel.from_pretrained(stages / "unet" / "unet", use_safetensors=True)
        factor_encoder = FactorEncoder.from_pretrained(stages / "unet" / "factor_encoder", use_safetensors=True)
    else:
        model = diffusion_from_checkpoint(config, checkpoint, scm.schema, vae)
        unet, factor_encoder = model.unet, model.factor_encoder
    text_encoder, tokenizer = None, None
    if config["unet"]["pretrained"] is not None:
        text_encoder, tokenizer = load_text_components(config["unet"]["pretrained"])
    return CounterfactualDiffusionPipeline(
        unet=unet,
        scheduler=DDIMScheduler.from_config(build_noise_scheduler(config).config),
        factor_encoder=factor_encoder,
        scm=scm,
        vae=vae,
        factor_predictor=FactorPredictor.from_pretrained(
            stages / "predictor" / "factor_predictor", use_safetensors=True
        ),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        default_abduction=config["editing"]["abduction"],
        default_guidance_scale=config["editing"]["guidance_scale"],
        default_predictor_guidance=config["editing"]["predictor_guidance"],
        default_keep_guidance=config["editing"]["keep_guidance"],
        default_guidance_cutoff=config["editing"]["guidance_cutoff"],
        default_keep_residual=config["editing"]["keep_residual"],
        default_working_size=config["editing"]["working_size"],
    )


def save_pipeline(pipeline: CounterfactualDiffusionPipeline, path: str | Path) -> Path:
    """Writes the pipeline folder whole or not at all: into a hidden sibling first (`.NAME.tmp`), then swapped in for
    the earlier folder, so a run killed while it writes leaves the earlier folder or none, and the leftover siblings
    are removed by the next call."""
    path = Path(path)
    staging, previous = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for leftover in (staging, previous):
        if leftover.exists():
            shutil.rmtree(leftover)
    pipeline.save_pretrained(staging)
    if path.exists():
        path.rename(previous)
    staging.rename(path)
    if previous.exists():
        shutil.rmtree(previous)
    return path
