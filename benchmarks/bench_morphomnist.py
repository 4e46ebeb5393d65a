"""Edits of real Morpho-MNIST digits read by two independent readers, against the readers' own floors.

    python benchmarks/bench_morphomnist.py --model cf_diffusion/assets/morphomnist --split test --n 256

The held-out digits of `configs/morphomnist.yaml` (the folder's last 1,000 rows, never trained on) are split in two:
`val` (the first 500), where editing settings are chosen (`--abduction`, `--guidance`, `--guidance-reference`,
`--predictor-guidance`, `--keep-guidance`, `--keep-residual` and `--guidance-cutoff` take several values and every
combination is run; unset, the model's own), and `test` (the last 500), where the chosen settings are reported.

Each edit is read twice: by the model's factor predictor, and by Morpho-MNIST morphometry measured off the image
(`cf_diffusion.data.measure`: mean stroke thickness and median foreground intensity), which no learned model
influences. A reader's floor is its error on the unedited digits against their labels; each figure is printed with
its ratio to that floor. The edits, with targets from the model's causal model (one draw per row):
- do(thickness): another thickness of the data (`shifted_values`); intensity read against the model's counterfactual
  intensity, digit against the factual digit.
- do(intensity): another intensity; thickness and digit read against their factual values.
- do(digit): the next digit (d + 1 mod 10); thickness and intensity read against their factual values.
- null: the edit with no intervention, its error in grey levels, and SSIM after 10 null edits in a row.

`--diagnostics` prints, instead, how each reader's thickness reading moves when a digit's pixels are scaled (a reader
that mistakes brightness for thickness blames do(intensity) edits for a thickness change), how a digit scaled so
changes through the VAE and back (a decoder that learned the data's tie of thickness to intensity thickens bright
strokes whatever the diffusion model asks), and the share of the do(intensity) targets the training digits of about
the same thickness never reach (where the data cannot show the model a digit of that thickness and intensity).

`--pictures DIR` writes `DIR/EDIT.png` per edit: the first 16 inputs, and under them each method's edits of them.
"""

import argparse
import itertools
import time

import numpy as np
import torch

from cf_diffusion.data import LabeledImageDataset
from cf_diffusion.data.measure import mean_stroke_thickness, median_foreground_intensity
from cf_diffusion.editing_defaults import DEFAULT_GUIDANCE_REFERENCE, GUIDANCE_REFERENCES
from cf_diffusion.evaluation.cvae import load_cvae
from cf_diffusion.evaluation.editing import edit_rows
from cf_diffusion.evaluation.image_distance import mae_255
from cf_diffusion.evaluation.interventions import draw_targets, shifted_values
from cf_diffusion.evaluation.methods import EditOptions, Method
from cf_diffusion.evaluation.readers import read_factors
from cf_diffusion.evaluation.soundness import composition
from cf_diffusion.images import image_grid, save_image
from cf_diffusion.models import model_path
from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

HOLDOUT = 1000
SPLITS = {"val": slice(-HOLDOUT, -HOLDOUT // 2), "test": slice(-HOLDOUT // 2, None)}
EDITS = ("thickness", "intensity", "digit")
NULL_EDITS = 10
PICTURE_ROWS = 16


def load_rows(pipe, folder: str, split: str, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`n` seeded rows of the split: images float array[n, H, W, C] in [0, 1] (padded as the model was trained) and
    their labels (level indices, raw units)."""
    data = LabeledImageDataset(folder, schema=pipe.schema, resolution=pipe.image_size, channels=pipe.image_channels)
    rows = np.arange(len(data))[SPLITS[split]]
    rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))
    images = torch.stack([data[int(i)]["pixel_values"] for i in rows])
    table = data.factor_table()
    labels = pipe.schema.to_values({k: [table[k][int(i)] for i in rows] for k in pipe.schema.names})
    return ((images + 1) / 2).permute(0, 2, 3, 1).numpy(), {k: v.numpy() for k, v in labels.items()}


def read(pipe, images: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Both readers' readings: `{"predictor": {factor: array}, "morphometry": {thickness, intensity}}`."""
    grey = images.mean(axis=-1) * 255.0
    return {
        "predictor": read_factors(pipe, images),
        "morphometry": {"thickness": mean_stroke_thickness(grey), "intensity": median_foreground_intensity(grey)},
    }


def errors(readings: dict, targets: dict[str, np.ndarray]) -> dict[str, float]:
    """Per reader and factor: accuracy for the digit, mean absolute error for thickness and intensity."""
    out = {}
    for reader, values in readings.items():
        for name, read_values in values.items():
            target = targets[name]
            if name == "digit":
                out[f"{reader}:digit"] = float(np.mean(read_values == target))
            else:
                out[f"{reader}:{name}"] = float(np.nanmean(np.abs(read_values - target)))
    return out


def edit_targets(pipe, labels: dict[str, np.ndarray], name: str, seed: int) -> dict[str, np.ndarray]:
    """The counterfactual factors of do(name = another value) from the model's causal model."""
    factor = pipe.schema[name]
    values = (labels[name] + 1) % factor.num_levels if factor.is_discrete else shifted_values(factor, labels[name])
    return draw_targets(pipe, labels, name, values, seed)


def run_method(pipe, method: Method, options: EditOptions, images, labels, targets, intervened, seed, batch_size):
    """The method's edits of every row, with one seeded generator per row (`seed + row`): float array[N, H, W, C]."""
    seeds = seed + np.arange(len(images))
    return edit_rows(pipe, method, images, labels, targets, intervened, options, seeds, batch_size)


def save_pictures(rows: list[np.ndarray], path: str) -> None:
    """One PNG: the inputs in the first row, then each method's edits of them, one row per method (in run order)."""
    tiles = np.concatenate([np.rint(np.clip(row, 0, 1) * 255).astype(np.uint8) for row in rows])
    save_image(image_grid(tiles, columns=len(rows[0]), scale=3), path)
    print(f"wrote {path}")


def guidance_weights(text: str) -> float | dict[str, float]:
    """`--guidance` values: one weight for every factor (`1.5`) or weights per factor (`intensity=1.5,digit=3`)."""
    if "=" not in text:
        return float(text)
    return {name: float(w) for name, w in (item.split("=", 1) for item in text.split(","))}


def ratio_text(value: float, floor: float, digit: bool) -> str:
    return f"{value:.3f}" if digit else f"{value:.3f} ({value / floor:.1f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="morphomnist", help="a shipped model name or a pipeline folder")
    parser.add_argument("--data", default="../shared/data/morphomnist")
    parser.add_argument("--split", choices=list(SPLITS), default="test")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["ours", "regenerate", "no-scm"])
    parser.add_argument("--abduction", nargs="+", default=[None], help="ddim / ddpm (default: the model's)")
    parser.add_argument(
        "--guidance", nargs="+", type=guidance_weights, default=[None], help="w for every factor, or factor=w,factor=w"
    )
    parser.add_argument("--guidance-reference", nargs="+", choices=GUIDANCE_REFERENCES, default=[None])
    parser.add_argument("--predictor-guidance", nargs="+", type=float, default=[None])
    parser.add_argument("--keep-guidance", nargs="+", type=float, default=[None])
    parser.add_argument("--keep-residual", nargs="+", type=int, choices=[0, 1], default=[None])
    parser.add_argument("--guidance-cutoff", nargs="+", type=float, default=[None])
    parser.add_argument("--cvae", default=None, help="the cvae-scm baseline's folder (for --methods cvae-scm)")
    parser.add_argument("--edits", nargs="+", default=[*EDITS, "null"], choices=[*EDITS, "null"])
    parser.add_argument("--diagnostics", action="store_true", help="reader bias and data support (no edits)")
    parser.add_argument(
        "--pictures", default=None, help="a folder: per edit, a PNG of the first 16 inputs above every method's edits"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    path = args.model if "/" in args.model else model_path(args.model)
    pipe = CounterfactualDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    cvae = load_cvae(args.cvae, pipe.schema) if "cvae-scm" in args.methods else None
    images, labels = load_rows(pipe, args.data, args.split, args.n, args.seed)
    if args.diagnostics:
        reader_bias(pipe, images)
        vae_round_trip(pipe, images)
        support(args.data, pipe, labels, edit_targets(pipe, labels, "intensity", args.seed))
        return
    floors = errors(read(pipe, images), labels)
    columns = list(floors)
    print(f"model {path}; {len(images)} rows of the {args.split} split; {args.steps} steps")
    print("| edit | method | " + " | ".join(columns) + " | seconds |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    print("| none | factual digits (floor) | " + " | ".join(f"{floors[c]:.3f}" for c in columns) + " | |")
    settings = list(
        itertools.product(
            args.abduction,
            args.guidance,
            args.guidance_reference,
            args.predictor_guidance,
            args.keep_guidance,
            [None if value is None else bool(value) for value in args.keep_residual],
            args.guidance_cutoff,
        )
    )
    null_rows = []
    for edit in args.edits:
        intervened = [] if edit == "null" else [edit]
        targets = labels if edit == "null" else edit_targets(pipe, labels, edit, args.seed)
        rows = [images[:PICTURE_ROWS]]
        for name, (abduction, guidance, reference, predictor_guidance, keep, residual, cutoff) in itertools.product(
            args.methods, settings
        ):
            if name != "ours" and (guidance, reference, predictor_guidance, keep, residual, cutoff) != settings[0][1:]:
                continue
            method = Method(name, args.steps, abduction or pipe.config.default_abduction)
            options = EditOptions(cvae=cvae)  # the baselines edit with the model's own settings
            if name == "ours":
                options = EditOptions(
                    guidance_scale=guidance,
                    guidance_reference=reference or DEFAULT_GUIDANCE_REFERENCE,
                    predictor_guidance=predictor_guidance,
                    keep_guidance=keep,
                    keep_residual=residual,
                    guidance_cutoff=cutoff,
                )
            start = time.perf_counter()
            edited = run_method(pipe, method, options, images, labels, targets, intervened, args.seed, args.batch_size)
            seconds = time.perf_counter() - start
            rows.append(edited[:PICTURE_ROWS])
            label = method.name
            if name == "ours":
                label += f" w={guidance}{'' if reference is None else ' ref=' + reference}"
                label += f" s={predictor_guidance} k={keep} r={residual}{'' if cutoff is None else f' c={cutoff}'}"
            if edit == "null":
                null_rows.append(f"| {label} | {null_figures(pipe, method, options, images, edited, labels, args)} |")
                continue
            scores = errors(read(pipe, edited), targets)
            cells = [ratio_text(scores[c], floors[c], c.endswith("digit")) for c in columns]
            print(f"| do({edit}) | {label} | " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)
        if args.pictures:
            save_pictures(rows, f"{args.pictures}/{edit}.png")
    if null_rows:
        print(f"\n| method | null edit MAE255 | SSIM after {NULL_EDITS} null edits |\n|---|---|---|")
        print("\n".join(null_rows))


def reader_bias(pipe, images: np.ndarray) -> None:
    """Each reader's mean change of its thickness and intensity readings when the digits' pixels are scaled by s."""
    base = read(pipe, images)
    print("| pixels x s | " + " | ".join(f"{r}: {f} change" for r in base for f in ("thickness", "intensity")) + " |")
    print("|---|" + "---|" * 2 * len(base))
    for scale in (0.5, 0.75, 1.25, 1.5):
        scaled = read(pipe, np.clip(images * scale, 0.0, 1.0))
        cells = [f"{np.mean(scaled[r][f] - base[r][f]):+.3f}" for r in base for f in ("thickness", "intensity")]
        print(f"| {scale} | " + " | ".join(cells) + " |")


def vae_round_trip(pipe, images: np.ndarray) -> None:
    """Morphometry's mean change of thickness and intensity when digits scaled by s go through the VAE and back."""
    if pipe.vae is None:
        return
    print("\n| pixels x s | VAE round trip: thickness change | intensity change |\n|---|---|---|")
    for scale in (0.6, 1.0, 1.5):
        scaled = np.clip(images * scale, 0.0, 1.0)
        with torch.no_grad():
            pixels = torch.from_numpy(scaled).permute(0, 3, 1, 2) * 2 - 1
            decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
        before = read(pipe, scaled)["morphometry"]
        after = read(pipe, ((decoded + 1) / 2).permute(0, 2, 3, 1).numpy())["morphometry"]
        change = {name: np.mean(after[name] - before[name]) for name in before}
        print(f"| {scale} | {change['thickness']:+.3f} | {change['intensity']:+.2f} |")


def support(folder: str, pipe, labels: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> None:
    """The share of do(intensity) targets outside the 1-99% intensity range of training digits within 0.1 of the
    row's thickness."""
    data = LabeledImageDataset(folder, schema=pipe.schema, resolution=pipe.image_size, channels=pipe.image_channels)
    table = data.factor_table()
    thickness = np.asarray(table["thickness"][:-HOLDOUT], dtype=np.float64)
    intensity = np.asarray(table["intensity"][:-HOLDOUT], dtype=np.float64)
    outside = []
    for t, target in zip(labels["thickness"], targets["intensity"], strict=True):
        near = intensity[np.abs(thickness - t) <= 0.1]
        low, high = np.quantile(near, [0.01, 0.99])
        outside.append(not low <= target <= high)
    print(
        f"\ndo(intensity) targets outside the 1-99% intensity range of training digits of the same thickness "
        f"(+-0.1): {np.mean(outside):.1%} of {len(outside)}"
    )


def null_figures(pipe, method: Method, options: EditOptions, images, edited, labels, args) -> str:
    """The null edit's error in grey levels and, for ours, SSIM after `NULL_EDITS` null edits."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    error = mae_255(torch.from_numpy(edited).permute(0, 3, 1, 2), pixels).mean().item()
    if method.kind != "ours":
        return f"{error:.2f} | "

    def null_edit(x: torch.Tensor) -> torch.Tensor:
        out = run_method(pipe, method, options, x.permute(0, 2, 3, 1).numpy(), labels, labels, [], args.seed, 64)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    repeated = composition(null_edit, pixels, cycles=(NULL_EDITS,))[NULL_EDITS]
    return f"{error:.2f} | {repeated['ssim']:.3f}"


if __name__ == "__main__":
    main()
