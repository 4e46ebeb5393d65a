"""Wall time and peak memory of one high-resolution counterfactual edit, per image size.

For each size a fresh subprocess (so that the peak memory is that size's alone) renders one `pendulum` image at that
size, edits it with `do(light_angle=...)` (to a quarter of the light's range from the end opposite its factual angle)
`--runs` times with the pipeline's high-resolution defaults (tiles, `preserve="auto"`), and reports the median wall
time, its peak resident memory (`ru_maxrss`, loading and rendering included) and the seconds per megapixel, whose
flatness across sizes says that the cost grows linearly in pixels; and the edit's quality against the true
counterfactual render of the same scene (`Pendulum.measure`): the shadow's position and length errors, how far
the pendulum (a non-descendant) moved, and the largest change of a pixel outside the mask.

    python benchmarks/bench_highres.py --model runs/pendulum/pipeline
    python benchmarks/bench_highres.py --model DIR --sizes 512 1024 2048 --working-size 128 --steps 25 --runs 3
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(
    model: str,
    size: int,
    steps: int,
    runs: int,
    working_size: int | None = None,
    tile_batch_size: int = 8,
    seed: int = 0,
    mask_threshold: float = 0.1,
) -> dict:
    """Edits one pendulum render of `size` px `runs` times in this process.

    Returns:
        dict with `size`, `megapixels`, `seconds` (median of the runs), `peak_mb` (this process's peak resident
        memory), `mask_fraction` (of the pixels allowed to change), `light_angle` and `target` (degrees), and the
        edit against the true counterfactual render (`Pendulum.measure` on both): `position_error` and
        `length_error` of the shadow (scene units), `pendulum_moved` (degrees the non-descendant pendulum moved),
        `outside_max_diff` (largest change, in grey levels, of a pixel outside the mask).
    """
    import torch
    from PIL import Image

    from cf_diffusion.data import get_dataset
    from cf_diffusion.models import load_pipeline

    pipe = load_pipeline(model)
    sample = get_dataset("pendulum").sample(1, seed=seed, resolution=size)
    factors = {name: values[0].item() for name, values in sample.factors.items()}
    target = light_target(factors["light_angle"])
    image = Image.fromarray(sample.images[0])
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        out = pipe(
            image=image,
            factors=factors,
            interventions={"light_angle": target},
            num_inference_steps=steps,
            working_size=working_size,
            tile_batch_size=tile_batch_size,
            mask_threshold=mask_threshold,
            generator=torch.Generator().manual_seed(seed),
        )
        seconds.append(time.perf_counter() - start)
    return {
        **against_truth(sample, target, size, out),
        "size": size,
        "megapixels": size * size / 1e6,
        "seconds": statistics.median(seconds),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mask_fraction": None if out.masks is None else float(out.masks.mean()),
        "light_angle": factors["light_angle"],
        "target": target,
    }


def light_target(light: float) -> float:
    """The benchmark's intervention: a quarter of the light's range from the end opposite `light` (degrees)."""
    from cf_diffusion.data.pendulum import LIGHT_RANGE

    low, high = LIGHT_RANGE
    return low + (high - low) / 4 if light > (low + high) / 2 else high - (high - low) / 4


def against_truth(sample, target: float, size: int, out) -> dict:
    """The edit `out` of the one-row pendulum `sample` against the true counterfactual render under
    do(light_angle=target), read by `Pendulum.measure`: shadow position and length errors, how far the true shadow
    moved, how far the non-descendant pendulum moved, the largest change of a pixel outside the mask, and the mean
    error against the true render inside it (grey levels; the regenerated region's fidelity)."""
    import numpy as np

    from cf_diffusion.data import get_dataset

    dataset = get_dataset("pendulum")
    truth = dataset.counterfactual(sample.exogenous, {"light_angle": target}, resolution=size)
    edited = np.asarray(out.images[0])[None]
    read, true, before = dataset.measure(edited), dataset.measure(truth.images), dataset.measure(sample.images)
    outside, inside = None, None
    if out.masks is not None:
        keep = out.masks[0, 0].cpu().numpy() == 0
        change = np.abs(edited[0].astype(np.int16) - sample.images[0].astype(np.int16)).max(axis=-1)
        outside = int(change[keep].max()) if keep.any() else 0
        error = np.abs(edited[0].astype(np.float64) - truth.images[0].astype(np.float64)).mean(axis=-1)
        inside = float(error[~keep].mean()) if (~keep).any() else 0.0
    return {
        "position_error": float(abs(read["shadow_position"][0] - true["shadow_position"][0])),
        "length_error": float(abs(read["shadow_length"][0] - true["shadow_length"][0])),
        "shadow_moved": float(abs(true["shadow_position"][0] - before["shadow_position"][0])),
        "pendulum_moved": float(abs(read["pendulum_angle"][0] - before["pendulum_angle"][0])),
        "outside_max_diff": outside,
        "inside_error": inside,
    }


def format_table(rows: list[dict]) -> str:
    """A markdown table of `measure` results."""
    lines = [
        "| size (px) | megapixels | seconds (median) | peak RSS (MB) | seconds / megapixel | mask (% of pixels) "
        "| shadow position error (true move) | shadow length error | pendulum moved (deg) | max change outside mask "
        "(grey levels) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mask = "-" if row["mask_fraction"] is None else f"{100 * row['mask_fraction']:.1f}"
        outside = "-" if row["outside_max_diff"] is None else str(row["outside_max_diff"])
        lines.append(
            f"| {row['size']} | {row['megapixels']:.2f} | {row['seconds']:.1f} | {row['peak_mb']:.0f} | "
            f"{row['seconds'] / row['megapixels']:.1f} | {mask} | {row['position_error']:.2f} "
            f"({row['shadow_moved']:.2f}) | {row['length_error']:.2f} | {row['pendulum_moved']:.2f} | {outside} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pendulum pipeline folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--working-size", type=int, help="shorter side at which the diffusion runs (default: full)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1, help="edits per size (the median is reported)")
    parser.add_argument("--tile-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-threshold", type=float, default=0.1, help="as the pipeline's mask_threshold")
    parser.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_size is not None:
        import torch

        torch.set_num_threads(args.threads)
        result = measure(
            args.model,
            args.child_size,
            args.steps,
            args.runs,
            args.working_size,
            args.tile_batch_size,
            args.seed,
            args.mask_threshold,
        )
        print(json.dumps(result))
        return

    rows = []
    for size in args.sizes:
        command = [sys.executable, __file__, *sys.argv[1:], "--child-size", str(size)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"the {size} px edit failed:\n{child.stderr}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"{size} px: {rows[-1]['seconds']:.1f} s, {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    row = rows[0]
    print(
        f"pendulum, do(light_angle) from {row['light_angle']:.1f} to {row['target']:.1f} degrees, {args.steps} "
        f"steps, working size {args.working_size or 'full'}, mask threshold {args.mask_threshold}, {args.threads} "
        f"threads, tile batch "
        f"{args.tile_batch_size}, median of {args.runs} run(s), one process per size\n"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
