"""Measuring edits on a procedural dataset, where the true counterfactual of every row is known.

For held-out rows (a seed the model never trained on) and one intervention at a time, the pipeline edits the
factual image given its true factual factors, and the factor predictor reads every factor off the edited image.
Per intervention it reports:

- `intervened`: fraction of edits whose intervened factor reads as the requested value;
- `descendants`: fraction of (edit, descendant) pairs that read as the pipeline's SCM counterfactual value;
- `non_descendants`: fraction of (edit, non-descendant) pairs that read as the factual value (digit included);
- `scm_vs_truth`: fraction of descendants whose SCM counterfactual equals the *true* counterfactual (it is below
  one where the counterfactual is not identified: the bar's own noise is abducted, not known);
- `truth_l1`: mean absolute error (images in [0, 1]) between the edited image and the true counterfactual image;
- `null_edit_l1`: mean absolute error between an image and its null edit (`interventions={}`).
"""

from dataclasses import dataclass

import numpy as np
import torch

from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.evaluation.harness import read_factors


def flipped_levels(factor, indices: np.ndarray) -> np.ndarray:
    """Per-row intervention values of a binary factor: the other level."""
    if not factor.is_discrete or factor.num_levels != 2:
        raise ValueError(f"Factor {factor.name!r} is not binary; flipping needs exactly two levels.")
    return 1 - indices


@dataclass
class EditSettings:
    """How the pipeline edits: DDIM/DDPM abduction, steps, guidance along the edit, inversion depth."""

    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    strength: float = 1.0
    abduction: str = "ddim"


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
    """Flips each binary factor in `factors` for `num_rows` held-out rows and measures the edits (module docstring).

    Returns:
        {"do(name)": {metric: value}, ..., "null": {"null_edit_l1": value}}.
    """
    settings = settings or EditSettings()
    schema, graph = pipe.schema, pipe.scm.graph
    resolution = pipe.image_size
    sample = dataset.sample(num_rows, seed=seed, resolution=resolution)
    factual = {k: np.asarray(v) for k, v in sample.factors.items()}
    images = sample.images.astype(np.float32) / 255.0
    kwargs = dict(
        num_inference_steps=settings.num_inference_steps,
        strength=settings.strength,
        abduction=settings.abduction,
        output_type="np",
    )
    report = {}
    for name in factors:
        values = flipped_levels(schema[name], factual[name])
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
        read = read_factors(pipe, edited)
        descendants = sorted(graph.descendants(name))
        others = [k for k in schema.names if k != name and k not in descendants]
        report[f"do({name})"] = {
            "intervened": float(np.mean(read[name] == values)),
            "descendants": float(np.mean([read[k] == scm_cf[k] for k in descendants])) if descendants else np.nan,
            "non_descendants": float(np.mean([read[k] == factual[k] for k in others])),
            "digit_kept": float(np.mean(read["digit"] == factual["digit"])) if "digit" in read else np.nan,
            "scm_vs_truth": float(np.mean([scm_cf[k] == truth.factors[k] for k in descendants]))
            if descendants
            else np.nan,
            "truth_l1": float(np.abs(edited - truth.images.astype(np.float32) / 255.0).mean()),
        }
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


def format_report(report: dict[str, dict[str, float]]) -> str:
    """A markdown table of `evaluate_edits` results."""
    metrics = sorted({m for row in report.values() for m in row}, key=lambda m: list(_ORDER).index(m))
    lines = ["| edit | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for edit, row in report.items():
        cells = [f"{row[m]:.3f}" if m in row and not np.isnan(row[m]) else "" for m in metrics]
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_ORDER = ("intervened", "descendants", "non_descendants", "digit_kept", "scm_vs_truth", "truth_l1", "null_edit_l1")
