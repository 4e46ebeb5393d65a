"""Counterfactual consistency: the seed paper's test of an editor against the causal model.

Two checks: non-descendants of the intervened factors must keep their factual values in the edited images,
and counterfactual probabilities of discrete factors estimated from edited images must lie inside the sharp
bounds that `counterfactual_bounds` derives from the graph and the data.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _column(table: Mapping[str, ArrayLike], name: str, table_name: str, length: int | None) -> Tensor:
    if name not in table:
        raise ValueError(f"{table_name} has no factor {name!r}; it has {sorted(table)}")
    column = torch.as_tensor(table[name])
    if column.ndim != 1:
        raise ValueError(f"{table_name}[{name!r}] must be one-dimensional [N], got shape {tuple(column.shape)}")
    if length is not None and len(column) != length:
        raise ValueError(f"{table_name}[{name!r}] has {len(column)} rows, expected {length}")
    return column


def preservation_rate(
    factual: Mapping[str, ArrayLike],
    counterfactual: Mapping[str, ArrayLike],
    non_descendants: Sequence[str],
    atol: float | Mapping[str, float] = 0.0,
) -> dict[str, float | dict[str, float]]:
    """Fraction of edits that keep the non-descendants of the intervention at their factual values.

    `rate_j = mean_i [|counterfactual_j,i - factual_j,i| <= atol_j]` per factor j, and
    `all = mean_i prod_j [|counterfactual_j,i - factual_j,i| <= atol_j]` (every non-descendant kept at once).

    Args:
        factual: Factor name -> factual values, `[N]` (class indices for discrete factors).
        counterfactual: Factor name -> values read off the edited images, `[N]`.
        non_descendants: The factors that the intervention must not change.
        atol: Tolerance for counting a value as kept, one for all factors or per factor name (default 0: exact,
            right for discrete factors; give continuous factors the reading's precision).

    Returns:
        `{"per_factor": {name: rate}, "all": rate}`.
    """
    if not non_descendants:
        raise ValueError("non_descendants is empty; expected at least one factor name")
    length = len(_column(factual, non_descendants[0], "factual", None))
    kept = {}
    for name in non_descendants:
        tolerance = atol.get(name, 0.0) if isinstance(atol, Mapping) else atol
        if tolerance < 0:
            raise ValueError(f"atol for factor {name!r} must be >= 0, got {tolerance}")
        before = _column(factual, name, "factual", length).double()
        after = _column(counterfactual, name, "counterfactual", length).double()
        kept[name] = (after - before).abs() <= tolerance
    every = torch.stack(list(kept.values())).all(dim=0)
    return {
        "per_factor": {name: mask.double().mean().item() for name, mask in kept.items()},
        "all": every.double().mean().item(),
    }


def counterfactual_probability(
    factual: Mapping[str, ArrayLike],
    edited: Mapping[str, ArrayLike],
    evidence: Mapping[str, float],
    target: Mapping[str, float],
) -> dict[str, float | int]:
    """Estimate a counterfactual probability of discrete factors from edited images.

    For `P(Y_{x'} = y | E = e)` (e.g. `P(bar_{size=large} = 1 | size=small, bar=1)`): the rows are individuals
    whose images were all edited under the same intervention `do(X = x')`; `factual` holds their factual factors
    and `edited` the factors read off their edited images. Among the n rows whose factual values equal the
    evidence, `p = (1/n) sum_i [edited_Y,i = y]`, with binomial standard error `sqrt(p (1 - p) / n)`.

    Args:
        factual: Factor name -> factual values, `[N]` (class indices).
        edited: Factor name -> values read off the edited images, `[N]`.
        evidence: Factor name -> factual value the row must have (the conditioning event E = e).
        target: Factor name -> value the edited image must show (the event Y_{x'} = y); several factors mean
            their conjunction.

    Returns:
        `{"probability": p, "stderr": float, "n": n}`.
    """
    if not target:
        raise ValueError("target is empty; expected at least one factor name -> value")
    length = len(_column(edited, next(iter(target)), "edited", None))
    selected = torch.ones(length, dtype=torch.bool)
    for name, value in evidence.items():
        selected &= _column(factual, name, "factual", length) == value
    hit = torch.ones(length, dtype=torch.bool)
    for name, value in target.items():
        hit &= _column(edited, name, "edited", length) == value
    n = int(selected.sum())
    if n == 0:
        raise ValueError(f"no row of factual matches the evidence {dict(evidence)}; expected at least one")
    p = hit[selected].double().mean().item()
    return {"probability": p, "stderr": math.sqrt(p * (1 - p) / n), "n": n}


def probability_in_bounds(estimate: float, low: float, high: float, tol: float = 0.0) -> bool:
    """Whether an estimated probability lies inside the bounds `[low, high]`, widened by `tol` on each side.

    `low - tol <= estimate <= high + tol`; pass e.g. `tol = 2 * stderr` to allow for sampling error.

    Args:
        estimate: The estimated probability, in [0, 1].
        low: Lower sharp bound, in [0, 1].
        high: Upper sharp bound, in [low, 1].
        tol: Non-negative slack.

    Returns:
        True when the estimate is inside the widened interval.
    """
    for name, value in (("estimate", estimate), ("low", low), ("high", high)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    if low > high:
        raise ValueError(f"low must be <= high, got low={low} and high={high}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    return low - tol <= estimate <= high + tol
