"""Effectiveness: factors read off edited images against the counterfactual targets.

For an edit `do(X_k = x')`, the target of factor j is `x'` for j = k, the SCM's counterfactual value for
descendants of k, and the factual value for non-descendants. The readings come from an anti-causal
predictor (or, on procedural data, the true measurement function); this module only scores them.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _as_vector(values: ArrayLike, what: str) -> Tensor:
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional [N], got shape {tuple(tensor.shape)}")
    return tensor


def _discreteness(discrete: Mapping[str, bool] | Any) -> dict[str, bool]:
    if isinstance(discrete, Mapping):
        return {name: bool(flag) for name, flag in discrete.items()}
    factors = getattr(discrete, "factors", None)
    if factors is None:
        raise ValueError(
            f"discrete must be a dict name -> bool or a FactorSchema with .factors, got {type(discrete).__name__}"
        )
    result = {}
    for factor in factors:
        if factor.kind not in ("binary", "categorical", "continuous"):
            raise ValueError(
                f"factor {factor.name!r} has kind {factor.kind!r}; expected 'binary', 'categorical' or 'continuous'"
            )
        result[factor.name] = factor.kind != "continuous"
    return result


def _as_pair(predicted: ArrayLike, target: ArrayLike, p_name: str, t_name: str) -> tuple[Tensor, Tensor]:
    predicted = _as_vector(predicted, p_name)
    target = _as_vector(target, t_name)
    if predicted.shape != target.shape:
        raise ValueError(f"{p_name} and {t_name} must have the same length, got {len(predicted)} and {len(target)}")
    if len(target) == 0:
        raise ValueError(f"{p_name} and {t_name} are empty; expected at least one value")
    return predicted, target


def accuracy(predicted: ArrayLike, target: ArrayLike) -> float:
    """Fraction of exact matches, `mean_i [predicted_i == target_i]`.

    Args:
        predicted: Class indices, `[N]`.
        target: Class indices, `[N]`.

    Returns:
        The accuracy in [0, 1].
    """
    predicted, target = _as_pair(predicted, target, "predicted", "target")
    return (predicted == target).double().mean().item()


def macro_f1(predicted: ArrayLike, target: ArrayLike) -> float:
    """Unweighted mean over classes of the per-class F1 score.

    For each class c in the union of the predicted and target labels,
    `F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)` (the harmonic mean of precision and recall, defined for every class
    that occurs); `macro_f1 = mean_c F1_c`.

    Args:
        predicted: Class indices, `[N]`.
        target: Class indices, `[N]`.

    Returns:
        The macro-averaged F1 score in [0, 1].
    """
    predicted, target = _as_pair(predicted, target, "predicted", "target")
    classes = torch.unique(torch.cat([predicted, target]))
    is_pred = predicted[None, :] == classes[:, None]
    is_true = target[None, :] == classes[:, None]
    tp = (is_pred & is_true).sum(dim=1).double()
    fp = (is_pred & ~is_true).sum(dim=1).double()
    fn = (~is_pred & is_true).sum(dim=1).double()
    return (2 * tp / (2 * tp + fp + fn)).mean().item()


def effectiveness(
    predicted: Mapping[str, ArrayLike],
    target: Mapping[str, ArrayLike],
    discrete: Mapping[str, bool] | Any,
) -> dict[str, dict[str, float | int]]:
    """Score factor readings of edited images against their counterfactual targets, factor by factor.

    Discrete factors (values are class indices): `accuracy = mean_i [pred_i == target_i]` and `f1_macro` (see
    `macro_f1`). Continuous factors: `mae = mean_i |pred_i - target_i|`, in the factor's own units (pass
    de-normalised values).

    Args:
        predicted: Factor name -> readings of the edited images, `[N]`. May hold more factors than `target`.
        target: Factor name -> counterfactual targets, `[N]`; every factor here is scored.
        discrete: Factor name -> whether the factor is discrete, or a `FactorSchema` (its `.factors`, each with
            `.name` and `.kind` in {"binary", "categorical", "continuous"}).

    Returns:
        Factor name -> `{"accuracy", "f1_macro", "n"}` for discrete factors, `{"mae", "n"}` for continuous ones.
    """
    kinds = _discreteness(discrete)
    results: dict[str, dict[str, float | int]] = {}
    for name, target_values in target.items():
        if name not in predicted:
            raise ValueError(f"factor {name!r} has a target but no prediction; predicted has {sorted(predicted)}")
        if name not in kinds:
            raise ValueError(f"factor {name!r} is not described by discrete; it knows {sorted(kinds)}")
        pred, true = _as_pair(predicted[name], target_values, f"predicted[{name!r}]", f"target[{name!r}]")
        if kinds[name]:
            results[name] = {"accuracy": accuracy(pred, true), "f1_macro": macro_f1(pred, true), "n": len(true)}
        else:
            results[name] = {"mae": (pred.double() - true.double()).abs().mean().item(), "n": len(true)}
    return results
