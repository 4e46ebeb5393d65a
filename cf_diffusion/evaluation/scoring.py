"""Scoring edited images: the figures of one edit (effectiveness summary, *kept*, ground truth, CLD) and realism.

*Kept* has one definition, here: a non-descendant of the intervention is kept when its reading equals its factual
value (discrete factors) or lies within `CONTINUOUS_TOLERANCE` standard deviations of the rows' factual values of it
(continuous factors, `keep_tolerances`); an edit is kept when every non-descendant is (`preservation`, the
`all` of `preservation_rate`). A reading *takes* a target by the same test (`take_rates`).
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cf_diffusion.evaluation.consistency import preservation_rate
from cf_diffusion.evaluation.data import EvaluationData
from cf_diffusion.evaluation.editing import to_tensor
from cf_diffusion.evaluation.effectiveness import effectiveness
from cf_diffusion.evaluation.image_distance import ground_truth_distance
from cf_diffusion.evaluation.minimality import cld
from cf_diffusion.evaluation.realism import features, fid, kid, load_inception
from cf_diffusion.factors import Factor, FactorSchema

CONTINUOUS_TOLERANCE = 0.5  # standard deviations of the edited rows' factual values within which a reading is kept


def keep_tolerances(schema: FactorSchema, factual: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per continuous factor: how far a reading may lie from its target and still take it, `CONTINUOUS_TOLERANCE`
    standard deviations of the rows' factual values (raw units, array[N] each)."""
    return {
        f.name: CONTINUOUS_TOLERANCE * float(np.std(np.asarray(factual[f.name], dtype=np.float64)))
        for f in schema
        if not f.is_discrete
    }


def preservation(
    schema: FactorSchema,
    factual: Mapping[str, np.ndarray],
    read: Mapping[str, np.ndarray],
    non_descendants: Sequence[str],
) -> dict[str, float | dict[str, float]]:
    """*Kept* (module docstring): how often the non-descendants read off the edited images keep their factual values.

    Args:
        schema: The factor schema.
        factual: Factor name -> factual values of the edited rows, array[N] (level indices, raw units).
        read: Factor name -> values read off their edited images, array[N].
        non_descendants: The factors the intervention must not change (at least one).

    Returns:
        `{"per_factor": {name: rate}, "all": rate of edits that keep every one}` (`preservation_rate`).
    """
    tolerance = {k: v for k, v in keep_tolerances(schema, factual).items() if k in non_descendants}
    return preservation_rate(factual, read, non_descendants, tolerance)


def take_rates(
    schema: FactorSchema,
    factual: Mapping[str, np.ndarray],
    read: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    names: Sequence[str],
) -> dict[str, float]:
    """Per factor of `names`: the fraction of rows whose reading takes its target, by the test that keeps a factor
    (equal level, or within `keep_tolerances(schema, factual)` of it); `{}` for no names."""
    if not names:
        return {}
    tolerance = {k: v for k, v in keep_tolerances(schema, factual).items() if k in names}
    return preservation_rate(target, read, names, tolerance)["per_factor"]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def effect_summary(schema: FactorSchema, scores: Mapping[str, Mapping[str, float]], intervened: str, descendants):
    """Headline figures of one edit: intervened factor, descendants (accuracy or MAE)."""
    summary: dict[str, Any] = {"per_factor": dict(scores)}
    key = "accuracy" if schema[intervened].is_discrete else "mae"
    summary[f"intervened_{key}"] = scores[intervened][key]
    discrete = [scores[d]["accuracy"] for d in descendants if schema[d].is_discrete]
    continuous = [scores[d]["mae"] for d in descendants if not schema[d].is_discrete]
    if discrete:
        summary["descendants_accuracy"] = _mean(discrete)
    if continuous:
        summary["descendants_mae"] = _mean(continuous)
    return summary


def truth_scores(
    schema: FactorSchema, edited: np.ndarray, truth: Any, read: Mapping[str, np.ndarray] | None
) -> dict[str, Any]:
    """An edit against the true counterfactual (`truth`: images float array[N, H, W, C], `factors`): L1, MAE_255 and
    SSIM to its images and, when the edit was read, the readings against its factors."""
    scores: dict[str, Any] = ground_truth_distance(to_tensor(edited), to_tensor(truth.images))
    if read is not None:
        factors = effectiveness(read, truth.factors, schema)
        scores["factors"] = factors
        scores["factor_accuracy"] = _mean([s["accuracy"] for s in factors.values() if "accuracy" in s])
    return scores


def posteriors(pipe, images: np.ndarray, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of the VAE posterior of each image, flattened: two `Tensor[N, D]`."""
    means, logvars = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = to_tensor(images[start : start + batch_size]) * 2 - 1
            posterior = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
            means.append(posterior.mean.flatten(1).double().cpu())
            logvars.append(posterior.logvar.flatten(1).double().cpu())
    return torch.cat(means), torch.cat(logvars)


def minimality_scores(
    pipe,
    edited: np.ndarray,
    factor: Factor,
    factual_labels: np.ndarray,
    counterfactual_labels: np.ndarray,
    factual_posterior: tuple[torch.Tensor, torch.Tensor],
    reference_posterior: tuple[torch.Tensor, torch.Tensor],
    reference_labels: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """Mean CLD (and its parts) of one method's edits, with the intervened factor as the class."""
    if not factor.is_discrete:
        return {"skipped": f"CLD needs classes; {factor.name!r} is continuous"}
    missing = sorted(set(np.concatenate([factual_labels, counterfactual_labels]).tolist()) - set(reference_labels))
    if missing:
        levels = [factor.level(int(m)) for m in missing]
        return {"skipped": f"no reference image has {factor.name} in {levels}; every class needs references"}
    scores = cld(
        factual_posterior,
        posteriors(pipe, edited, batch_size),
        reference_posterior,
        torch.as_tensor(reference_labels),
        torch.as_tensor(factual_labels),
        torch.as_tensor(counterfactual_labels),
    )
    return {key: value.mean().item() for key, value in scores.items()}


class PredictorTrunk(nn.Module):
    """The factor predictor's convolutional trunk (pooled features) on images in [0, 1]: realism features.

    Args:
        predictor: A `FactorPredictor`.
    """

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`Tensor[B, C, H, W]` in [0, 1] -> `Tensor[B, D]` pooled trunk features."""
        return self.predictor.features(images.to(self.predictor.dtype) * 2 - 1)


def realism_scores(
    pipe,
    results: dict[str, Any],
    loaded: EvaluationData,
    edited_by_method: Mapping[str, list[np.ndarray]],
    inception: str | os.PathLike | None,
    batch_size: int,
) -> str | None:
    """FID and KID of each method's edited images (all interventions pooled) against the reference rows: real
    images that were not edited (the factual images themselves, with a note, when there are none).

    Returns:
        The feature network's description, or None (with a note) when there is none.
    """
    if inception is not None:
        network: nn.Module = load_inception(inception, device=pipe.device)
        described = f"Inception (FID TorchScript network from {os.fspath(inception)!r})"
    elif pipe.factor_predictor is not None:
        network = PredictorTrunk(pipe.factor_predictor)
        described = (
            "the pipeline's factor_predictor trunk (pooled convolutional features), not Inception: FID/KID are "
            "comparable only between methods evaluated with this predictor"
        )
    else:
        results["notes"].append("realism skipped: no Inception path was given and the pipeline has no predictor")
        return None
    if loaded.reference_images is None:
        real = loaded.images
        results["notes"].append("realism against the edited rows' own factual images (no other rows): biased down")
    else:
        real = loaded.reference_images
        results["notes"].append(f"realism against {len(real)} real rows that were not edited (the reference rows)")
    reference = features(to_tensor(real), network, batch_size)
    for name, parts in edited_by_method.items():
        edited = features(to_tensor(np.concatenate(parts)), network, batch_size)
        results["methods"][name]["realism"] = {"fid": fid(edited, reference), **kid(edited, reference)}
    return described
