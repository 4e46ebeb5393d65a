"""The extra cost of the identification report (`cf_diffusion.identification`) against the edit it comes with.

Each round edits B held-out colored-bars images with `do(size = the other size)` (S DDIM steps, the model's own
guidance; the edit includes its report), then runs `identify_edits` alone on the same factors twice: cold (linear
programs cleared, so every (evidence, intervention) pattern is solved again) and warm (patterns cached, as in any
later edit of similar images). Ratio = identification time / (edit time - warm identification time), i.e. the
report's cost over an edit without it. Rounds alternate after one warm-up round; the table gives medians.

    python benchmarks/bench_identification.py                 # 8 images at 32 px, 25 steps, 5 rounds
    python benchmarks/bench_identification.py --batch 16 --steps 10 --repeats 3
"""

import argparse
import statistics
import time

import torch
from PIL import Image

from cf_diffusion.data import get_dataset
from cf_diffusion.identification import clear_bounds_cache, identify_edits
from cf_diffusion.models import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    sample = get_dataset("colored-bars").sample(args.batch, seed=args.seed, resolution=pipe.image_size)
    images = [Image.fromarray(image) for image in sample.images]
    factors = pipe.schema.from_values(pipe.schema.to_values(sample.factors))
    rows = [dict(zip(factors, values, strict=True)) for values in zip(*factors.values(), strict=True)]
    interventions = {"size": ["large" if size == "small" else "small" for size in factors["size"]]}

    def edit() -> float:
        start = time.perf_counter()
        pipe(image=images, factors=rows, interventions=interventions, num_inference_steps=args.steps,
             output_type="pt", generator=torch.Generator().manual_seed(0))  # fmt: skip
        return time.perf_counter() - start

    def identify(cold: bool) -> float:
        if cold:
            clear_bounds_cache()
        start = time.perf_counter()
        identify_edits(pipe.scm, factors, interventions)
        return time.perf_counter() - start

    edit(), identify(True), identify(False)  # warm-up
    times = {"edit": [], "cold": [], "warm": []}
    for _ in range(args.repeats):
        times["edit"].append(edit())
        times["cold"].append(identify(True))
        times["warm"].append(identify(False))
    median = {key: statistics.median(values) for key, values in times.items()}
    base = median["edit"] - median["warm"]
    patterns = clear_bounds_cache()
    print(
        f"{args.batch} images at {pipe.image_size} px, {args.steps} steps, {args.repeats} rounds, {patterns} patterns"
    )
    print("| what | seconds (median) | ratio to the edit without the report |")
    print("|---|---|---|")
    print(f"| edit (with its report) | {median['edit']:.3f} | |")
    print(f"| report, linear programs cached | {median['warm']:.4f} | {median['warm'] / base:.3f} |")
    print(f"| report, every program solved | {median['cold']:.4f} | {median['cold'] / base:.3f} |")


if __name__ == "__main__":
    main()
