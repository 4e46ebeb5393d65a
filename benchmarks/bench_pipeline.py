"""Edits per second of CounterfactualDiffusionPipeline, and its overhead over a bare loop of the same UNet calls.

One edit = DDIM inversion under the factual factors (S UNet calls at batch B) + guided regeneration under the
counterfactual factors (S UNet calls at batch 2B, factual reference and counterfactual branch together), plus the
VAE, factor encoder, causal model and scheduler work the pipeline does around them. The bare loop makes exactly the
UNet calls, with conditioning prepared beforehand; `ratio` = pipeline throughput / bare throughput (goal >= 0.95).
A second bare loop adds what no edit can skip, the VAE's encoding of the input and decoding of the result; its ratio
is the cost of everything else the pipeline does (checks, causal model, scheduler steps, bookkeeping). The three
alternate (pipeline, bare, bare + VAE, pipeline, ...) so that a slow spell of the machine hits all; the table gives
the median throughputs and the medians of the per-round ratios over `--repeats` rounds, after one warm-up round.

    python benchmarks/bench_pipeline.py                      # the shipped colored-bars model (float32)
    python benchmarks/bench_pipeline.py --model path/to/pipeline --steps 10 25 --batches 1 16
"""

import argparse
import statistics
import time
from functools import partial

import torch

from cf_diffusion.inversion import inference_timesteps
from cf_diffusion.models import load_pipeline


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


def bare_loop_with_vae(pipe, pixels, factual, counterfactual, steps, guided) -> None:
    """`bare_loop` between the VAE's encoding of the input pixels and its decoding of the result."""
    vae = pipe.vae
    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    bare_loop(pipe, latents, factual, counterfactual, steps, guided)
    vae.decode(latents / vae.config.scaling_factor)


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def timed_rounds(repeats: int, *fns) -> list[list[float]]:
    """Seconds of each of `fns` (called without arguments), run in turn `repeats` times, after one warm-up round."""
    for fn in fns:
        fn()
    rounds = [[seconds(fn) for fn in fns] for _ in range(repeats)]
    return [list(times) for times in zip(*rounds, strict=True)]


def median_ratio(pipeline_times: list[float], bare_times: list[float]) -> float:
    """Median over rounds of bare seconds / pipeline seconds (= pipeline throughput / bare throughput)."""
    return statistics.median(b / p for p, b in zip(pipeline_times, bare_times, strict=True))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="a shipped model's name or a pipeline folder")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model)
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
        f"{torch.get_num_threads()} threads, medians of {args.repeats} rounds"
    )
    print(
        f"{'steps':>5} {'batch':>5} {'pipeline edits/s':>17} {'bare UNet loop edits/s':>23} {'ratio':>6} "
        f"{'bare UNet + VAE edits/s':>24} {'ratio':>6}"
    )
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
            pixels = pipe.image_processor.preprocess(images)
            latents = pipe.encode_images(pixels, pipe.device)
            pipeline_times, bare_times, vae_times = timed_rounds(
                args.repeats,
                partial(edit, pipe, images, factors, interventions, steps, args.guidance_scale),
                partial(bare_loop, pipe, latents, factual, counterfactual, steps, guided),
                partial(bare_loop_with_vae, pipe, pixels, factual, counterfactual, steps, guided),
            )
            rates = [batch / statistics.median(times) for times in (pipeline_times, bare_times, vae_times)]
            print(
                f"{steps:>5} {batch:>5} {rates[0]:>17.2f} {rates[1]:>23.2f} "
                f"{median_ratio(pipeline_times, bare_times):>6.3f} {rates[2]:>24.2f} "
                f"{median_ratio(pipeline_times, vae_times):>6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
