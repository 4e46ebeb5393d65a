"""Wall time and peak memory of one high-resolution counterfactual edit, per image size.

For each size this process renders one `pendulum` scene at that size and writes it to a PNG file, as a user's
photograph would arrive; a fresh subprocess (so that its peak memory is that edit's alone) loads the model and the
file, edits it with `do(light_angle=...)` (to a quarter of the light's range from the end opposite its factual angle)
`--runs` times with the pipeline's high-resolution defaults (`preserve="auto"`), and writes the edit and its mask.
The table gives the median wall time of the edit, the subprocess's peak resident memory (`ru_maxrss`: the model,
the file and the edit), the seconds per megapixel, whose flatness across sizes says that the cost grows linearly
in pixels, and the edit's quality against the true counterfactual render of the same scene (`Pendulum.measure`):
the shadow's position and length errors, how far the pendulum (a non-descendant) moved, and the largest change of a
pixel outside the mask.

    python benchmarks/bench_highres.py --sizes 512 1024 2048 4096 --steps 25 --runs 3 --seed 1   # the shipped model
    python benchmarks/bench_highres.py --model DIR --sizes 512 1024 --working-size 64
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def edit_file(
    model: str,
    folder: Path,
    steps: int,
    runs: int,
    working_size: int | None,
    tile_batch_size: int,
    seed: int,
    mask_threshold: float,
) -> dict:
    """Edits `folder/input.png` (its factors and target in `folder/scene.json`) `runs` times in this process and
    writes the last edit to `folder/edit.png` and its mask to `folder/mask.png` (255 where the edit may change).

    Returns:
        dict with `seconds` (median of the runs) and `peak_mb` (this process's peak resident memory).
    """
    import torch
    from PIL import Image

    from cf_diffusion.models import load_pipeline

    scene = json.loads((folder / "scene.json").read_text())
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    seconds = []
    for _ in range(runs):
        image = Image.open(folder / "input.png")
        start = time.perf_counter()
        out = pipe(
            image=image,
            factors=scene["factors"],
            interventions={"light_angle": scene["target"]},
            num_inference_steps=steps,
            working_size=working_size,
            tile_batch_size=tile_batch_size,
            mask_threshold=mask_threshold,
            generator=torch.Generator().manual_seed(seed),
        )
        seconds.append(time.perf_counter() - start)
    out.images[0].save(folder / "edit.png")
    if out.masks is not None:
        Image.fromarray((out.masks[0, 0] > 0).numpy().astype(np.uint8) * 255).save(folder / "mask.png")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": statistics.median(seconds), "peak_mb": peak_mb}


def light_target(light: float) -> float:
    """The benchmark's intervention: a quarter of the light's range from the end opposite `light` (degrees)."""
    from cf_diffusion.data.pendulum import LIGHT_RANGE

    low, high = LIGHT_RANGE
    return low + (high - low) / 4 if light > (low + high) / 2 else high - (high - low) / 4


def against_truth(sample, target: float, size: int, edited: np.ndarray, mask: np.ndarray | None) -> dict:
    """An edit of the one-row pendulum `sample` against the true counterfactual render under
    do(light_angle=target), read by `Pendulum.measure`: shadow position and length errors, how far the true shadow
    moved, how far the non-descendant pendulum moved, the largest change of a pixel outside the mask, the mean
    error against the true render inside it (grey levels; the regenerated region's fidelity), and the mean signed
    change inside it where the true render equals the input (grey levels; the background the edit should leave).

    Args:
        sample: The scene (`Pendulum.sample` at `size`, one row).
        target: The light angle intervened to (degrees).
        size: The image's side (px).
        edited: uint8 array[size, size, 3], the edit.
        mask: array[size, size], nonzero where the edit may change, or None.
    """
    from cf_diffusion.data import get_dataset

    dataset = get_dataset("pendulum")
    truth = dataset.counterfactual(sample.exogenous, {"light_angle": target}, resolution=size)
    read, true, before = dataset.measure(edited[None]), dataset.measure(truth.images), dataset.measure(sample.images)
    outside, inside, shift = None, None, None
    if mask is not None:
        keep = mask == 0
        signed = edited.astype(np.float64) - sample.images[0].astype(np.float64)
        outside = int(np.abs(signed).max(axis=-1)[keep].max()) if keep.any() else 0
        error = np.abs(edited.astype(np.float64) - truth.images[0].astype(np.float64)).mean(axis=-1)
        inside = float(error[~keep].mean()) if (~keep).any() else 0.0
        background = ~keep & (np.abs(truth.images[0].astype(np.int16) - sample.images[0]).max(axis=-1) <= 1)
        shift = float(signed.mean(axis=-1)[background].mean()) if background.any() else 0.0
    return {
        "position_error": float(abs(read["shadow_position"][0] - true["shadow_position"][0])),
        "length_error": float(abs(read["shadow_length"][0] - true["shadow_length"][0])),
        "shadow_moved": float(abs(true["shadow_position"][0] - before["shadow_position"][0])),
        "pendulum_moved": float(abs(read["pendulum_angle"][0] - before["pendulum_angle"][0])),
        "outside_max_diff": outside,
        "inside_error": inside,
        "background_shift": shift,
    }


def measure_size(args: argparse.Namespace, size: int) -> dict:
    """Renders the scene at `size` px, edits it in a fresh subprocess and reads the edit against the truth."""
    from PIL import Image

    from cf_diffusion.data import get_dataset

    sample = get_dataset("pendulum").sample(1, seed=args.seed, resolution=size)
    factors = {name: values[0].item() for name, values in sample.factors.items()}
    target = light_target(factors["light_angle"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Image.fromarray(sample.images[0]).save(folder / "input.png")
        (folder / "scene.json").write_text(json.dumps({"factors": factors, "target": target}))
        command = [sys.executable, __file__, *sys.argv[1:], "--child-folder", tmp]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"the {size} px edit failed:\n{child.stderr}")
        cost = json.loads(child.stdout.strip().splitlines()[-1])
        edited = np.asarray(Image.open(folder / "edit.png"))
        mask = np.asarray(Image.open(folder / "mask.png")) if (folder / "mask.png").exists() else None
    return {
        **cost,
        **against_truth(sample, target, size, edited, mask),
        "size": size,
        "megapixels": size * size / 1e6,
        "mask_fraction": None if mask is None else float((mask > 0).mean()),
        "light_angle": factors["light_angle"],
        "target": target,
    }


def format_table(rows: list[dict]) -> str:
    """A markdown table of `measure_size` results."""
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
            f"{row['seconds'] / row['megapixels']:.2f} | {mask} | {row['position_error']:.2f} "
            f"({row['shadow_moved']:.2f}) | {row['length_error']:.2f} | {row['pendulum_moved']:.2f} | {outside} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pendulum", help="the shipped pendulum model, or a pipeline folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--working-size", type=int, default=64, help="shorter side at which the diffusion runs")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=1, help="edits per size (the median is reported)")
    parser.add_argument("--tile-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mask-threshold", type=float, default=0.1, help="as the pipeline's mask_threshold")
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_folder is not None:
        import torch

        torch.set_num_threads(args.threads)
        cost = edit_file(
            args.model,
            Path(args.child_folder),
            args.steps,
            args.runs,
            args.working_size,
            args.tile_batch_size,
            args.seed,
            args.mask_threshold,
        )
        print(json.dumps(cost))
        return

    rows = []
    for size in args.sizes:
        rows.append(measure_size(args, size))
        print(f"{size} px: {rows[-1]['seconds']:.1f} s, {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    row = rows[0]
    print(
        f"pendulum, do(light_angle) from {row['light_angle']:.1f} to {row['target']:.1f} degrees, {args.steps} "
        f"steps, working size {args.working_size}, mask threshold {args.mask_threshold}, {args.threads} threads, "
        f"tile batch {args.tile_batch_size}, median of {args.runs} run(s), one process per size\n"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
