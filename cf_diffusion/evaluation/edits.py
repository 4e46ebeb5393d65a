"""Measuring edits on a procedural dataset, where the true counterfactual of every row is known.

For held-out rows (a seed the model never trained on) and one intervention at a time, the pipeline edits the
factual image given its true factual factors to the harness's intervention values (`shifted_values`: the other
level of a discrete factor, a value half the held-out distribution away for a continuous one). Every factor is
read off the edited image: continuous factors by the dataset's own measurement function where it has one
(`dataset.measure`, e.g. `morpho`'s thickness and intensity), everything else by the pipeline's factor predictor.
A discrete reading *takes* its target when it equals it; a continuous reading when it lies within half a held-out
standard deviation of it (`harness.keep_tolerances`, the harness's tolerance too). Per intervention it reports:

- `intervened`: fraction of edits whose intervened factor takes the requested value;
- `descendants`: fraction of (edit, descendant) pairs that take the pipeline's SCM counterfactual value;
- `non_descendants`: fraction of (edit, non-descendant) pairs that keep their factual value (digit included);
- `digit_kept`: fraction of edits whose digit keeps its factual class (the handwriting's identity);
- `<factor>_mae`: for each continuous factor, the mean absolute error of its reading against its target;
- `scm_vs_truth`: fraction of descendants whose SCM counterfactual takes the *true* counterfactual value (below
  one where the counterfactual is not identified: e.g. the bar's own noise is abducted, not known);
- `truth_l1`: mean absolute error (images in [0, 1]) between the edited image and the true counterfactual image;
- `null_edit_l1`: mean absolute error between an image and its null edit (`interventions={}`).

The row `none` reads the unedited images against their own labels: the reader's floor under every figure. The row
`do(name), true image` reads the true counterfactual images the same way, against the true counterfactual factors:
what a perfect editor would score with these readers and tolerances.
"""

from dataclasses import dataclass

import numpy as np
import torch

from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.evaluation.harness import keep_tolerances, read_factors, shifted_values
from cf_diffusion.guidance import GuidanceScale


@dataclass
class EditSettings:
    """How the pipeline edits: steps, guidance along the edit, inversion depth, DDIM/DDPM abduction; None for
    guidance or abduction: the model's defaults (`default_guidance_scale`, else by factor kind, see
    `cf_diffusion.guidance`; `default_abduction`)."""

    num_inference_steps: int = 25
    guidance_scale: GuidanceScale = None
    strength: float = 1.0
    abduction: str | None = None


def read_edits(pipe, dataset: ProceduralDataset, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every factor of images in [0, 1] (float array[N, H, W, C]): the dataset's measurement function where it has
    one, the pipeline's factor predictor for the rest (level indices, or raw units for continuous factors)."""
    read = read_factors(pipe, images)
    measure = getattr(dataset, "measure", None)
    if measure is not None:
        pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        read.update({k: np.asarray(v, dtype=np.float64) for k, v in measure(pixels).items() if k in read})
    return read


def _takes(schema, name: str, read: np.ndarray, target: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """Per row: whether a reading takes its target (equal level, or within the continuous tolerance)."""
    if schema[name].is_discrete:
        return np.asarray(read) == np.asarray(target)
    return np.abs(np.asarray(read, dtype=np.float64) - np.asarray(target, dtype=np.float64)) <= scale[name]


def _rates(schema, names, read, target, scale) -> float:
    return float(np.mean([_takes(schema, k, read[k], target[k], scale) for k in names])) if names else np.nan


@torch.no_grad()
def evaluate_edits(
    pipe,
    dataset: ProceduralDataset,
    factors: list[str],
    num_rows: int = 64,
    settings: EditSettings | None = None,
    seed: int = 12345,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Intervenes on each factor in `factors` for `num_rows` held-out rows and measures the edits (module docstring).

    Returns:
        {"none": {...}, "do(name)": {metric: value}, ..., "null": {"null_edit_l1": value}}.
    """
    settings = settings or EditSettings()
    schema, graph = pipe.schema, pipe.scm.graph
    unknown = [name for name in factors if name not in schema]
    if unknown:
        raise ValueError(f"factors {unknown} are not factors of the model; expected some of {schema.names}")
    resolution = pipe.image_size
    sample = dataset.sample(num_rows, seed=seed, resolution=resolution)
    factual = {k: np.asarray(v) for k, v in sample.factors.items()}
    images = sample.images.astype(np.float32) / 255.0
    if pipe.image_channels == 1:
        images = images[..., :1]
    scale = keep_tolerances(schema, factual)
    kwargs = dict(
        num_inference_steps=settings.num_inference_steps,
        strength=settings.strength,
        abduction=settings.abduction,
        output_type="np",
    )
    floor = read_edits(pipe, dataset, images)
    report = {"none": {"non_descendants": _rates(schema, schema.names, floor, factual, scale)}}
    report["none"].update({f"{k}_mae": float(np.abs(floor[k] - factual[k]).mean()) for k in scale})
    if "digit" in floor:
        report["none"]["digit_kept"] = float(np.mean(floor["digit"] == factual["digit"]))
    for name in factors:
        values = shifted_values(schema[name], factual[name])
        truth = dataset.counterfactual(sample.exogenous, {name: values}, resolution=resolution)
        edited, scm_cf = [], {k: [] for k in schema.names}
        for start in range(0, num_rows, batch_size):
            rows = slice(start, start + batch_size)
            out = pipe(
                image=images[rows],
                factors={k: factual[k][rows].tolist() for k in schema.names},
                interventions={name: values[rows].tolist()},
                guidance_scale=settings.guidance_scale,
                generator=torch.Generator().manual_seed(seed + start),
                **kwargs,
            )
            edited.append(np.asarray(out.images))
            cf_values = schema.to_values(out.counterfactual_factors)
            for k in schema.names:
                scm_cf[k].append(cf_values[k].numpy())
        edited = np.concatenate(edited)
        scm_cf = {k: np.concatenate(v) for k, v in scm_cf.items()}
        truth_images = truth.images.astype(np.float32)[..., : edited.shape[-1]] / 255.0
        descendants = sorted(graph.descendants(name))
        others = [k for k in schema.names if k != name and k not in descendants]
        targets = {**{k: factual[k] for k in others}, **{k: scm_cf[k] for k in descendants}, name: values}
        row = _effect_rates(schema, name, descendants, others, read_edits(pipe, dataset, edited), targets, scale)
        row["scm_vs_truth"] = _rates(schema, descendants, scm_cf, truth.factors, scale)
        row["truth_l1"] = float(np.abs(edited - truth_images).mean())
        report[f"do({name})"] = row
        true_targets = {**targets, **{k: truth.factors[k] for k in descendants}}
        read_truth = read_edits(pipe, dataset, truth_images)
        report[f"do({name}), true image"] = _effect_rates(
            schema, name, descendants, others, read_truth, true_targets, scale
        )
    null = []
    for start in range(0, num_rows, batch_size):
        rows = slice(start, start + batch_size)
        out = pipe(
            image=images[rows],
            factors={k: factual[k][rows].tolist() for k in schema.names},
            interventions={},
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )
        null.append(np.abs(np.asarray(out.images) - images[rows]).mean(axis=(1, 2, 3)))
    report["null"] = {"null_edit_l1": float(np.concatenate(null).mean())}
    return report


def _effect_rates(schema, name: str, descendants: list, others: list, read: dict, targets: dict, scale: dict) -> dict:
    """The per-intervention rates and errors of readings `read` against `targets` (module docstring)."""
    row = {
        "intervened": _rates(schema, [name], read, targets, scale),
        "descendants": _rates(schema, descendants, read, targets, scale),
        "non_descendants": _rates(schema, others, read, targets, scale),
    }
    row.update({f"{k}_mae": float(np.abs(read[k] - targets[k]).mean()) for k in scale})
    if "digit" in read and name != "digit":
        row["digit_kept"] = float(np.mean(read["digit"] == targets["digit"]))
    return row


def format_report(report: dict[str, dict[str, float]]) -> str:
    """A markdown table of `evaluate_edits` results."""
    metrics = sorted(
        {m for row in report.values() for m in row},
        key=lambda m: (_ORDER.index(m) if m in _ORDER else _ORDER.index("scm_vs_truth") - 0.5, m),
    )
    lines = ["| edit | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for edit, row in report.items():
        cells = [f"{row[m]:.3f}" if m in row and not np.isnan(row[m]) else "" for m in metrics]
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_ORDER = ("intervened", "descendants", "non_descendants", "digit_kept", "scm_vs_truth", "truth_l1", "null_edit_l1")
