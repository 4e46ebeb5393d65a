"""How well a high-resolution do(light_angle) edit moves the pendulum's shadow, over many scenes and mask thresholds.

For each of `--scenes` pendulum renders (seeds `--first-scene`, then the next ones: choose settings on one range of
scenes and report them on another) at `--size` px, the edit of `bench_highres.py`
(`do(light_angle)` to a quarter of the light's range from the end opposite the factual angle) runs once per
`--mask-threshold`, and `bench_highres.against_truth` reads it against the true counterfactual render. The table
gives, per threshold, medians over the scenes: the mask's share of the pixels, the shadow position error next to
how far the true shadow moved (an edit that leaves the shadow in place scores its move), the length error and the
pendulum's move (a non-descendant: 0 is right), the share of scenes whose shadow error is under half the true move,
the mean error against the true render inside the mask (grey levels: how faithfully the region is regenerated), the
mean signed change inside the mask where the true render equals the input (the background the edit should leave:
a positive shift is the "lighter patch"), and the largest change of any pixel outside the mask over all scenes.
`--keep-residual 0 1` runs each threshold without and with the pipeline's `keep_residual`, `--abduction ddim ddpm`
with each abduction (unset: the model's own).

    python benchmarks/bench_shadow.py --model pendulum --size 1024 --scenes 8 --first-scene 100
"""

import argparse
import itertools
import statistics

import numpy as np
import torch
from bench_highres import against_truth, light_target
from PIL import Image

from cf_diffusion.data import get_dataset
from cf_diffusion.editing_defaults import ABDUCTIONS
from cf_diffusion.models import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pendulum", help="the shipped pendulum model, or a pipeline folder")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--first-scene", type=int, default=0, help="the seed of the first scene")
    parser.add_argument("--mask-threshold", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--working-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--keep-residual", type=int, nargs="+", choices=[0, 1], default=[0], help="the pipeline's keep_residual"
    )
    parser.add_argument("--abduction", nargs="+", choices=ABDUCTIONS, default=[None], help="default: the model's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    dataset = get_dataset("pendulum")
    settings = list(itertools.product(args.abduction, [bool(r) for r in args.keep_residual], args.mask_threshold))
    rows = {setting: [] for setting in settings}
    for seed in range(args.first_scene, args.first_scene + args.scenes):
        sample = dataset.sample(1, seed=seed, resolution=args.size)
        factors = {name: values[0].item() for name, values in sample.factors.items()}
        target = light_target(factors["light_angle"])
        for abduction, residual, threshold in settings:
            out = pipe(
                image=Image.fromarray(sample.images[0]),
                factors=factors,
                interventions={"light_angle": target},
                num_inference_steps=args.steps,
                working_size=args.working_size,
                mask_threshold=threshold,
                keep_residual=residual,
                abduction=abduction,
                generator=torch.Generator().manual_seed(seed),
            )
            mask = out.masks[0, 0].numpy()
            read = against_truth(sample, target, args.size, np.asarray(out.images[0]), mask)
            rows[abduction, residual, threshold].append({**read, "mask": float(mask.mean())})

    print(
        f"pendulum at {args.size} px, do(light_angle) on {args.scenes} scenes from seed {args.first_scene}, "
        f"{args.steps} steps, working size {args.working_size}, {args.threads} threads; medians over the scenes\n"
    )
    print(
        "| abduction | mask threshold | keep residual | mask (% of pixels) | shadow position error (true move) "
        "| shadow length error | pendulum moved (deg) | scenes with error < move / 2 "
        "| error inside mask vs truth (grey levels) | unchanged background shift inside mask (grey levels) "
        "| max change outside mask (grey levels) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (abduction, residual, threshold), scenes in rows.items():

        def median(key: str, scenes: list[dict] = scenes) -> float:
            return statistics.median(scene[key] for scene in scenes)

        took = np.mean([scene["position_error"] < scene["shadow_moved"] / 2 for scene in scenes])
        outside = max(scene["outside_max_diff"] for scene in scenes)
        kept = "yes" if residual else "no"
        abduction = abduction or pipe.config.default_abduction
        print(
            f"| {abduction} | {threshold} | {kept} | {100 * median('mask'):.1f} | {median('position_error'):.2f} "
            f"({median('shadow_moved'):.2f}) | {median('length_error'):.2f} | {median('pendulum_moved'):.2f} "
            f"| {took:.2f} | {median('inside_error'):.1f} | {median('background_shift'):+.1f} | {outside} |"
        )


if __name__ == "__main__":
    main()
