"""The interventions of an evaluation: which value each row's factor is moved to, and the counterfactual factors
that follow from it under the pipeline's causal model."""

from collections.abc import Mapping

import numpy as np
import torch

from cf_diffusion.factors import Factor


def shifted_values(factor: Factor, values: np.ndarray) -> np.ndarray:
    """The harness's intervention value for each row: another value of the factor, drawn from the rows' own values.

    Discrete factors: the next level, `(x + 1) mod L` (the other level of a binary factor). Continuous factors: the
    value half the empirical distribution further on, `Q((F(x) + 1/2) mod 1)` with `F` the rows' empirical CDF
    (mid-ranks) and `Q` its quantile function, so that every target is a value the data takes (the literature's
    protocol draws interventions from the marginal, not from the edges of a range no row reaches) and lies about
    half the population away from the factual value. A single row (no distribution to draw from) is shifted by half
    the factor's range, wrapped into it.

    Args:
        factor: The intervened factor (a single continuous row needs a range).
        values: Factual values of all rows, array[N] (level indices or raw units).

    Returns:
        array[N] of intervention values, each different from the factual one (for distinct continuous values).
    """
    values = np.asarray(values)
    if factor.is_discrete:
        return (values.astype(np.int64) + 1) % factor.num_levels
    values = values.astype(np.float64)
    if len(values) > 1:
        ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
        return np.quantile(values, np.mod((ranks + 0.5) / len(values) + 0.5, 1.0), method="inverted_cdf")
    if not factor.has_range:
        raise ValueError(f"continuous factor {factor.name!r} needs a range [low, high] to shift a single row")
    width = factor.high - factor.low
    return factor.low + np.mod(values - factor.low + width / 2, width)


def draw_targets(pipe, factual: Mapping[str, np.ndarray], name: str, values: np.ndarray, seed: int) -> dict:
    """The counterfactual factors under `do(name = values)` from the pipeline's SCM (one draw per row), with
    continuous values clipped into their factor's range (model samples may leave it; the pipeline refuses them)."""
    schema = pipe.schema
    drawn = pipe.scm.counterfactual(
        {k: np.asarray(v).tolist() for k, v in factual.items()},
        {name: np.asarray(values).tolist()},
        num_samples=1,
        generator=torch.Generator().manual_seed(seed),
    )
    targets = {}
    for factor in schema:
        column = drawn[factor.name][:, 0].cpu().numpy()
        targets[factor.name] = column if factor.is_discrete else np.clip(column, factor.low, factor.high)
    return targets
