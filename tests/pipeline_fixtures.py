"""Tiny pipelines for the pipeline tests: pixel space (8 px) and latent space (16 px images, 8x8x4 latents)."""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cf_diffusion import CounterfactualDiffusionPipeline
from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.data import get_dataset
from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.predictor import FactorPredictor
from cf_diffusion.scm import NeuralCausalModel

EMBED_DIM = 8
GRAPH = "size <-> color; color -> bar; size -> bar; bar -> thickness"


def tiny_schema() -> FactorSchema:
    return FactorSchema(
        [
            Factor.binary("size", ["small", "large"]),
            Factor.categorical("color", ["red", "green", "blue"]),
            Factor.binary("bar"),
            Factor.continuous("thickness", 1.0, 5.0),
        ]
    )


def tiny_table(n: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows from a known SCM over the tiny schema (bar = 1 iff color is red or the digit is large, mostly)."""
    g = torch.Generator().manual_seed(seed)
    confounder = torch.rand(n, generator=g)
    size = (confounder + 0.3 * torch.rand(n, generator=g) > 0.65).long()
    color = (confounder * 3).long().clamp(max=2)
    bar = ((color == 0) | (size == 1)).long() ^ (torch.rand(n, generator=g) < 0.1).long()
    thickness = (1.5 + 2.0 * bar + 0.5 * torch.rand(n, generator=g)).clamp(1.0, 5.0)
    return {"size": size, "color": color, "bar": bar, "thickness": thickness}


def tiny_unet(
    in_channels: int, sample_size: int, num_factors: int, prediction_type_seed: int = 0
) -> UNet2DConditionModel:
    torch.manual_seed(prediction_type_seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=4,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=num_factors * EMBED_DIM,
    )


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )


def tiny_pipeline(
    latent: bool = False,
    prediction_type: str = "epsilon",
    with_predictor: bool = True,
    fitted_scm: bool = False,
) -> CounterfactualDiffusionPipeline:
    """A deterministic tiny pipeline (randomly initialised, seeded)."""
    schema = tiny_schema()
    torch.manual_seed(2)
    scm = NeuralCausalModel(graph=CausalGraph.parse(GRAPH), schema=schema, hidden_dim=8, num_importance=4)
    if fitted_scm:
        scm.fit(
            tiny_table(), num_steps=30, batch_size=64, generator=torch.Generator().manual_seed(0), show_progress=False
        )
    torch.manual_seed(3)
    encoder = FactorEncoder(schema, embed_dim=EMBED_DIM, num_frequencies=2)
    vae = tiny_vae() if latent else None
    unet = tiny_unet(4 if latent else 3, 8, len(schema))
    torch.manual_seed(4)
    predictor = (
        FactorPredictor(
            schema, in_channels=3, sample_size=16 if latent else 8, block_out_channels=(8,), norm_num_groups=4
        )
        if with_predictor
        else None
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False, prediction_type=prediction_type
    )
    pipe = CounterfactualDiffusionPipeline(
        unet=unet, scheduler=scheduler, factor_encoder=encoder, scm=scm, vae=vae, factor_predictor=predictor
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved_with_default(
    pipe: CounterfactualDiffusionPipeline, folder: Path, **default
) -> CounterfactualDiffusionPipeline:
    """`pipe`'s components saved to `folder` with one model default (`default_...=value`), which must be in its
    `model_index.json`, and loaded back from there (progress bars off)."""
    ((name, value),) = default.items()
    CounterfactualDiffusionPipeline(**pipe.components, **default).save_pretrained(folder)
    assert json.loads((Path(folder) / "model_index.json").read_text())[name] == value
    loaded = CounterfactualDiffusionPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def tiny_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images Tensor[B, 3, size, size] in [0.1, 0.9] (the [0, 1] convention of diffusers inputs)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def procedural_pipeline(name: str) -> CounterfactualDiffusionPipeline:
    """A deterministic tiny latent pipeline over a procedural dataset's factors: 16 px images, 8x8x4 latents."""
    dataset = get_dataset(name)
    schema = dataset.schema
    torch.manual_seed(2)
    scm = NeuralCausalModel(graph=dataset.graph, schema=schema, hidden_dim=8, num_importance=4)
    torch.manual_seed(3)
    encoder = FactorEncoder(schema, embed_dim=EMBED_DIM, num_frequencies=2)
    unet = tiny_unet(4, 8, len(schema))
    torch.manual_seed(4)
    predictor = FactorPredictor(schema, in_channels=3, sample_size=16, block_out_channels=(8,), norm_num_groups=4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False)
    pipe = CounterfactualDiffusionPipeline(
        unet=unet, scheduler=scheduler, factor_encoder=encoder, scm=scm, vae=tiny_vae(), factor_predictor=predictor
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_components(
    folder: Path, hidden_size: int = 8, intermediate_size: int = 16, num_attention_heads: int = 2
) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A seeded one-layer CLIP text encoder and its tokenizer (vocabulary files written to `folder`)."""
    # No merges: every word is split into characters, so one-letter words are the whole vocabulary.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "r</w>": 3, "b</w>": 4, "d</w>": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=6)
    torch.manual_seed(5)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=6,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval(), tokenizer
