"""Edits per second of CounterfactualDiffusionPipeline, and its overhead over a bare loop of the same UNet calls.

One edit = DDIM inversion under the factual factors (S UNet calls at batch B) + guided regeneration under the
counterfactual factors (S UNet calls at batch 2B, factual reference and counterfactual branch together), plus the
VAE, factor encoder, causal model and scheduler work the pipeline does around them. The bare loop makes exactly the
UNet calls, with conditioning prepared beforehand; `ratio` = pipeline throughput / bare throughput (goal >= 0.95).
Medians over `--repeats` runs, after one warm-up run per configuration.

    python benchmarks/bench_pipeline.py                      # random UNet of the shipped size, 32 px, f=4 VAE
    python benchmarks/bench_pipeline.py --model path/to/pipeline --steps 10 25 --batches 1 16
"""

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from cf_diffusion import CounterfactualDiffusionPipeline
from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.inversion import inference_timesteps
from cf_diffusion.scm import NeuralCausalModel

EMBED_DIM = 64


def random_pipeline() -> CounterfactualDiffusionPipeline:
    """A randomly initialised pipeline of the shipped size: 32 px images, f=4 VAE, 8x8x4 latents, 4 factors."""
    torch.manual_seed(0)
    schema = FactorSchema(
        [
            Factor.binary("size", ["small", "large"]),
            Factor.categorical("color", ["red", "green"]),
            Factor.binary("bar"),
            Factor.categorical("digit", [str(d) for d in range(10)]),
        ]
    )
    graph = CausalGraph.parse("size <-> color; size -> bar; color -> bar; digit")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=8,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=len(schema) * EMBED_DIM,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    return CounterfactualDiffusionPipeline(
        unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False),
        factor_encoder=FactorEncoder(schema, embed_dim=EMBED_DIM),
        scm=NeuralCausalModel(graph=graph, schema=schema),
        vae=vae,
    )


def edit(pipe, images, factors, interventions, steps, guidance_scale) -> None:
    pipe(
        image=images,
        factors=factors,
        interventions=interventions,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )


def bare_loop(pipe, latents, factual, counterfactual, steps, guided) -> None:
    """The same UNet calls as one edit, with nothing else: S at batch B, then S at batch 2B (B when unguided)."""
    timesteps = inference_timesteps(pipe.scheduler, steps)
    factual_kwargs = pipe._unet_kwargs(factual, None, None)
    edit_kwargs = pipe._unet_kwargs(counterfactual, None, None)
    if guided:
        edit_kwargs = pipe._stack_branches(factual_kwargs, edit_kwargs)
    edit_latents = torch.cat([latents, latents]) if guided else latents
    for t in timesteps:
        pipe.unet(latents, t, **factual_kwargs)
    for t in timesteps:
        pipe.unet(edit_latents, t, **edit_kwargs)


def timed(repeats: int, fn, *args) -> float:
    """Median seconds of `fn(*args)` over `repeats` runs, after one warm-up run."""
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="a saved CounterfactualDiffusionPipeline folder (default: random, shipped size)"
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = CounterfactualDiffusionPipeline.from_pretrained(args.model) if args.model else random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    schema = pipe.schema
    target = schema.factors[0]
    value = target.levels[-1] if target.is_discrete else target.high
    interventions = {target.name: value}
    num_parameters = sum(p.numel() for p in pipe.unet.parameters())
    print(
        f"UNet {num_parameters / 1e6:.2f} M parameters, images {pipe.image_size} px, latents "
        f"{pipe.unet.config.in_channels}x{pipe.unet.config.sample_size}x{pipe.unet.config.sample_size}, "
        f"{len(schema)} factors, intervention {interventions}, guidance {args.guidance_scale}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'steps':>5} {'batch':>5} {'pipeline edits/s':>17} {'bare loop edits/s':>18} {'ratio':>6}")
    for steps in args.steps:
        for batch in args.batches:
            values = pipe.scm.sample(batch, generator=torch.Generator().manual_seed(batch))
            factors = schema.from_values(values)
            images = torch.rand(batch, pipe.image_channels, pipe.image_size, pipe.image_size)
            factual = schema.normalize(values)
            counterfactual = schema.normalize(
                {**values, **schema.to_values({target.name: [value] * batch}, partial=True)}
            )
            guided = args.guidance_scale != 1 and bool((counterfactual != factual).any())
            latents = pipe.encode_images(pipe.image_processor.preprocess(images), pipe.device)
            pipeline_time = timed(args.repeats, edit, pipe, images, factors, interventions, steps, args.guidance_scale)
            bare_time = timed(args.repeats, bare_loop, pipe, latents, factual, counterfactual, steps, guided)
            print(
                f"{steps:>5} {batch:>5} {batch / pipeline_time:>17.2f} {batch / bare_time:>18.2f} "
                f"{bare_time / pipeline_time:>6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
