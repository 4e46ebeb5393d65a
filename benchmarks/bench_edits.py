"""Edit quality of a model on held-out procedural data with ground truth (the numbers quoted in the README).

    python benchmarks/bench_edits.py --model default --dataset colored-bars --n 128

For held-out rows (a seed the model never trained on) and one intervention at a time, the pipeline edits the
factual image given its true factual factors to the harness's intervention values (`shifted_values`: the other
level of a discrete factor, a value half the held-out distribution away for a continuous one), its own causal model
drawing the counterfactual factors (`pipe(...)` as a user calls it). Every factor is read off the edited image:
continuous factors by the dataset's own measurement function where it has one (`read_measured`, e.g. `morpho`'s
thickness and intensity), everything else by the pipeline's factor predictor. The figures are scored as the
evaluation harness scores them (`cf_diffusion.evaluation.scoring`): a reading *takes* its target when it equals it
(discrete) or lies within half a held-out standard deviation of it (continuous, `keep_tolerances`), and a
non-descendant is kept by the same test. One markdown table per editing setting (abduction, steps, guidance scale,
inversion strength), one row per intervention:

- `intervened`: fraction of edits whose intervened factor takes the requested value;
- `descendants`: fraction of (edit, descendant) pairs that take the pipeline's SCM counterfactual value;
- `kept`: fraction of edits that keep every non-descendant (digit included) at its factual value (the harness's
  *kept*, `preservation`);
- `digit_kept`: fraction of edits whose digit keeps its factual class (the handwriting's identity);
- `<factor>_mae`: for each continuous factor, the mean absolute error of its reading against its target;
- `scm_vs_truth`: fraction of descendants whose SCM counterfactual takes the *true* counterfactual value (below
  one where the counterfactual is not identified: e.g. the bar's own noise is abducted, not known);
- `truth_l1`: mean absolute error (images in [0, 1]) between the edited image and the true counterfactual image;
- `null_edit_l1`: mean absolute error between an image and its null edit (`interventions={}`).

The row `none` reads the unedited images against their own labels (`kept`: every factor at once): the reader's
floor under every figure. The row `do(name), true image` reads the true counterfactual images the same way, against
the true counterfactual factors: what a perfect editor would score with these readers and tolerances.
"""

import argparse
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cf_diffusion.data import get_dataset
from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.evaluation.effectiveness import effectiveness
from cf_diffusion.evaluation.interventions import shifted_values
from cf_diffusion.evaluation.readers import read_measured
from cf_diffusion.evaluation.scoring import keep_tolerances, preservation, take_rates
from cf_diffusion.factors import FactorSchema
from cf_diffusion.guidance import GuidanceScale, factor_weights
from cf_diffusion.models import load_pipeline

ORDER = ("intervened", "descendants", "kept", "digit_kept", "scm_vs_truth", "truth_l1", "null_edit_l1")


@dataclass
class EditSettings:
    """How the pipeline edits: steps, guidance along the edit, inversion depth, DDIM/DDPM abduction; None for
    guidance or abduction: the model's defaults (`default_guidance_scale`, else by factor kind, see
    `cf_diffusion.guidance`; `default_abduction`)."""

    num_inference_steps: int = 25
    guidance_scale: GuidanceScale = None
    strength: float = 1.0
    abduction: str | None = None


def _batches(
    pipe,
    images: np.ndarray,
    factual: Mapping[str, np.ndarray],
    interventions: Mapping[str, np.ndarray],
    settings: EditSettings,
    seed_of: Callable[[int], int],
    batch_size: int,
    **guidance,
) -> Iterator[tuple[slice, object]]:
    """`pipe(...)` on each batch of rows, its generator seeded `seed_of(first row)`: (the rows, the output)."""
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        yield (
            rows,
            pipe(
                image=images[rows],
                factors={k: np.asarray(v)[rows].tolist() for k, v in factual.items()},
                interventions={k: np.asarray(v)[rows].tolist() for k, v in interventions.items()},
                generator=torch.Generator().manual_seed(seed_of(start)),
                num_inference_steps=settings.num_inference_steps,
                strength=settings.strength,
                abduction=settings.abduction,
                output_type="np",
                **guidance,
            ),
        )


def _rate(rates: Mapping[str, float]) -> float:
    """The mean of per-factor rates (NaN for none)."""
    return float(np.mean(list(rates.values()))) if rates else np.nan


def figures(
    schema: FactorSchema,
    factual: Mapping[str, np.ndarray],
    read: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    name: str | None,
    descendants: Sequence[str],
    others: Sequence[str],
) -> dict[str, float]:
    """One row of the table (module docstring): readings `read` against `targets`; `name=None` for no intervention."""
    row = {}
    if name is not None:
        row["intervened"] = _rate(take_rates(schema, factual, read, targets, [name]))
        row["descendants"] = _rate(take_rates(schema, factual, read, targets, descendants))
    if others:
        kept = preservation(schema, factual, read, others)
        row["kept"] = kept["all"]
        if "digit" in kept["per_factor"]:
            row["digit_kept"] = kept["per_factor"]["digit"]
    continuous = {k: targets[k] for k in keep_tolerances(schema, factual)}
    row.update({f"{k}_mae": v["mae"] for k, v in effectiveness(read, continuous, schema).items()})
    return row


def intervention_rows(
    pipe,
    dataset: ProceduralDataset,
    sample,
    images: np.ndarray,
    factual: Mapping[str, np.ndarray],
    name: str,
    settings: EditSettings,
    seed: int,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """The rows `do(name)` and `do(name), true image` of the held-out `sample` (its `images` in [0, 1] at the
    model's channels, its `factual` factors), see the module docstring."""
    schema = pipe.schema
    values = shifted_values(schema[name], factual[name])
    truth = dataset.counterfactual(sample.exogenous, {name: values}, resolution=pipe.image_size)
    edited, scm_cf = [], {k: [] for k in schema.names}
    guidance = {"guidance_scale": settings.guidance_scale}
    for _, out in _batches(
        pipe, images, factual, {name: values}, settings, lambda s: seed + s, batch_size, **guidance
    ):
        edited.append(np.asarray(out.images))
        for k, v in schema.to_values(out.counterfactual_factors).items():
            scm_cf[k].append(v.numpy())
    edited = np.concatenate(edited)
    scm_cf = {k: np.concatenate(v) for k, v in scm_cf.items()}
    truth_images = truth.images.astype(np.float32)[..., : edited.shape[-1]] / 255.0
    descendants = sorted(pipe.scm.graph.descendants(name))
    others = [k for k in schema.names if k != name and k not in descendants]
    targets = {**{k: factual[k] for k in others}, **{k: scm_cf[k] for k in descendants}, name: values}
    row = figures(schema, factual, read_measured(pipe, dataset, edited), targets, name, descendants, others)
    row["scm_vs_truth"] = _rate(take_rates(schema, factual, scm_cf, truth.factors, descendants))
    row["truth_l1"] = float(np.abs(edited - truth_images).mean())
    true_targets = {**targets, **{k: truth.factors[k] for k in descendants}}
    read_truth = read_measured(pipe, dataset, truth_images)
    return {
        f"do({name})": row,
        f"do({name}), true image": figures(schema, factual, read_truth, true_targets, name, descendants, others),
    }


@torch.no_grad()
def edit_report(
    pipe,
    dataset: ProceduralDataset,
    factors: Sequence[str],
    num_rows: int = 64,
    settings: EditSettings | None = None,
    seed: int = 12345,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Intervenes on each factor in `factors` for `num_rows` held-out rows and measures the edits (module docstring).

    Returns:
        {"none": {...}, "do(name)": {figure: value}, "do(name), true image": {...}, ..., "null": {"null_edit_l1"}}.
    """
    settings = settings or EditSettings()
    schema = pipe.schema
    unknown = [name for name in factors if name not in schema]
    if unknown:
        raise ValueError(f"factors {unknown} are not factors of the model; expected some of {schema.names}")
    sample = dataset.sample(num_rows, seed=seed, resolution=pipe.image_size)
    factual = {k: np.asarray(v) for k, v in sample.factors.items()}
    images = sample.images.astype(np.float32) / 255.0
    if pipe.image_channels == 1:
        images = images[..., :1]
    floor = read_measured(pipe, dataset, images)
    report = {"none": figures(schema, factual, floor, factual, None, [], schema.names)}
    for name in factors:
        report.update(intervention_rows(pipe, dataset, sample, images, factual, name, settings, seed, batch_size))
    null = [
        np.abs(np.asarray(out.images) - images[rows]).mean(axis=(1, 2, 3))
        for rows, out in _batches(pipe, images, factual, {}, settings, lambda s: seed, batch_size)
    ]
    report["null"] = {"null_edit_l1": float(np.concatenate(null).mean())}
    return report


def format_report(report: dict[str, dict[str, float]]) -> str:
    """A markdown table of `edit_report` results."""
    metrics = sorted(
        {m for row in report.values() for m in row},
        key=lambda m: (ORDER.index(m) if m in ORDER else ORDER.index("scm_vs_truth") - 0.5, m),
    )
    lines = ["| edit | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for edit, row in report.items():
        cells = [f"{row[m]:.3f}" if m in row and not np.isnan(row[m]) else "" for m in metrics]
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dataset", default="colored-bars")
    parser.add_argument("--factors", nargs="+", help="factors to intervene on (default: all but the digit)")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[25])
    parser.add_argument(
        "--guidance",
        nargs="+",
        default=["auto"],
        help="guidance scales; 'auto': the model's own weights, else by factor kind (the default)",
    )
    parser.add_argument("--strength", type=float, nargs="+", default=[1.0])
    parser.add_argument("--abduction", nargs="+", default=["ddim", "ddpm"])
    parser.add_argument("--seed", type=int, default=12345, help="seed of the held-out rows and of the edits' noise")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    dataset = get_dataset(args.dataset)
    factors = args.factors or [name for name in pipe.schema.names if name != "digit"]
    guidances = [None if g == "auto" else float(g) for g in args.guidance]
    for abduction, steps, strength, guidance in itertools.product(
        args.abduction, args.steps, args.strength, guidances
    ):
        settings = EditSettings(steps, guidance, strength, abduction)
        weights = factor_weights(pipe.schema, guidance, pipe.config.default_guidance_scale)
        start = time.perf_counter()
        report = edit_report(pipe, dataset, factors, args.n, settings, args.seed)
        seconds = time.perf_counter() - start
        print(
            f"\n{abduction}, {steps} steps, guidance {guidance or weights}, strength {strength} "
            f"(n={args.n}, seed {args.seed}, {seconds:.0f} s)"
        )
        print(format_report(report))


if __name__ == "__main__":
    main()
