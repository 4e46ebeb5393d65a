"""What the data can and cannot tell about an edit: identification and sharp bounds of the factors it may change.

For each edited image, every factor the edit changes or may change (the intervened factors and their descendants)
gets a `FactorIdentification`; the other factors are kept exactly (`EditIdentification.kept`). The rules:

- An intervened factor is identified (a soft intervention on a factor with an intervened ancestor is treated as a
  descendant: its value depends on draws the data do not pin down).
- A discrete descendant `T`: the model's probability of each level is its frequency among `NUM_SAMPLES`
  counterfactual samples of the causal model (a fixed seed, so a report does not depend on the edit's generator).
  Its bounds are the sharp bounds `counterfactual_bounds` gives for `P(T_cf = level | e, do(x))` from the
  observational counts stored with the model, where the evidence `e` is the factual value of every node the query
  depends on (`relevant_nodes(graph, {T})`; other factual values tell nothing more about `T`) and `do(x)` the
  interventions on those nodes. `T` is identified when every level's bounds coincide. `inside_bounds` says whether
  each level's probability lies within its bounds widened by two Monte Carlo standard errors of a frequency,
  `2 sqrt(p (1 - p) / NUM_SAMPLES)`.
- A continuous factor among those relevant nodes is discretised: its values (factual and intervened) are replaced by
  their bin among `counts.NUM_BINS` equal-width bins of its range, the bins the stored counts use, and the bounds
  are those of that discretised model (`FactorIdentification.note` names the factors).
- A continuous descendant: the median and the 5-95% interval of its counterfactual samples; identified when that
  interval is narrower than its resolution, `RESOLUTION_FRACTION` of the factor's range.
- Support (`EditIdentification.observed`): the share of the image's counterfactual samples whose whole factor vector
  (levels, and bins of continuous factors) occurs among the observational rows. Identification concerns the factors;
  the image model is learned from the training images, so where no training image has the counterfactual factors
  (a thin stroke drawn bright, when thickness causes intensity) the edited image is an extrapolation, and the
  report says so.

Linear-program solutions are cached per (observational counts, target, evidence, intervention) pattern, so a batch
of edits of similar images solves each program once. Without stored counts (a model saved before they were, or a
corrupted file) edits still run: discrete descendants report no bounds and are not identified, and one warning line
per causal model says why.
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cf_diffusion.scm import NeuralCausalModel
from cf_diffusion.scm.bounds import Bounds, counterfactual_bounds, relevant_nodes
from cf_diffusion.scm.counts import ObservationalCounts

logger = logging.getLogger(__name__)

NUM_SAMPLES = 256
"""Counterfactual samples of the causal model per image for the model's probabilities and intervals."""
RESOLUTION_FRACTION = 0.01
"""A continuous factor's resolution, as a fraction of its range: narrower 5-95% intervals count as identified."""
SAMPLE_SEED = 0
"""Seed of the counterfactual samples."""

_LP_CACHE: weakref.WeakKeyDictionary[ObservationalCounts, dict] = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakSet[NeuralCausalModel] = weakref.WeakSet()


@dataclass(frozen=True)
class FactorIdentification:
    """What the data tell about one factor an edit changes or may change.

    Attributes:
        name: The factor.
        intervened: True for a factor set by the intervention.
        identified: True when the data and the graph determine the factor's counterfactual (module docstring).
        probabilities: Discrete factor: the model's probability of each level; else None.
        bounds: Discrete factor: sharp bounds on the probability of each level (`Bounds`); None when unavailable
            (`note` says why) or for a continuous factor.
        inside_bounds: Discrete factor with bounds: whether the model's probabilities lie within them; else None.
        median: Continuous factor: the median of its counterfactual samples; else None.
        interval: Continuous factor: the 5% and 95% quantiles of its counterfactual samples; else None.
        resolution: Continuous factor: the interval width below which it counts as identified; else None.
        note: Why bounds are missing, which factors were discretised, or a linear-program warning; else None.
    """

    name: str
    intervened: bool
    identified: bool
    probabilities: dict[str, float] | None = None
    bounds: dict[str, Bounds] | None = None
    inside_bounds: bool | None = None
    median: float | None = None
    interval: tuple[float, float] | None = None
    resolution: float | None = None
    note: str | None = None

    def caption(self, value: Any) -> str:
        """`name=value` for an image whose counterfactual value is `value`, with `?` when not identified and the
        model's probability and bounds (discrete) or 5-95% interval (continuous), e.g. `bar=0? p=0.58 [0.52, 0.76]`.
        """
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        if self.identified:
            return f"{self.name}={text}"
        if self.probabilities is None:
            return f"{self.name}={text}? [{self.interval[0]:.3g}, {self.interval[1]:.3g}]"
        bounds = self.bounds[str(value)] if self.bounds is not None else None
        span = "" if bounds is None else f" [{bounds.low:.2f}, {bounds.high:.2f}]"
        return f"{self.name}={text}? p={self.probabilities[str(value)]:.2f}{span}"


@dataclass(frozen=True)
class EditIdentification:
    """What the data tell about one edited image.

    Attributes:
        factors: The intervened factors and their descendants, in causal order: name -> FactorIdentification.
        kept: The other factors: non-descendants of every intervened factor, kept exactly.
        observed: The share of the image's counterfactual factor vectors that occur among the observational rows
            (module docstring); None for the null edit or without stored counts.
    """

    factors: dict[str, FactorIdentification]
    kept: tuple[str, ...]
    observed: float | None = None


def identify_edits(
    scm: NeuralCausalModel,
    factual: Mapping[str, Any],
    interventions: Mapping[str, Any] | None,
    num_counterfactuals: int = 1,
    num_samples: int = NUM_SAMPLES,
) -> list[EditIdentification]:
    """Identification of the edits of B images, one entry per output image (B * K, image-major).

    Args:
        scm: The causal model of the edit; its `observational_counts` give the bounds.
        factual: The B images' factual factors, as `scm.counterfactual` takes them.
        interventions: The edit's interventions, as `scm.counterfactual` takes them (None or empty: the null edit).
        num_counterfactuals: K, outputs per image (they share their image's entry).
        num_samples: Counterfactual samples per image for the model's probabilities and intervals.

    Returns:
        B * K `EditIdentification`s.
    """
    graph, schema = scm.graph, scm.schema
    interventions = dict(interventions or {})
    changed = set(interventions) | graph.descendants(set(interventions)) if interventions else set()
    names = [name for name in graph.topological_order() if name in changed]
    kept = tuple(name for name in schema.names if name not in changed)
    values = schema.to_values(factual)
    num_images = len(next(iter(values.values())))
    if not names:
        return [EditIdentification({}, kept)] * (num_images * num_counterfactuals)
    generator = torch.Generator(device=scm.device).manual_seed(SAMPLE_SEED)
    samples = scm.counterfactual(values, interventions, num_samples, generator=generator)
    observed = _observed(scm, {name: samples[name] if name in changed else values[name] for name in values})
    entries = []
    for b in range(num_images):
        row = {name: value[b] for name, value in values.items()}
        fixed = {name: _row_value(spec, b) for name, spec in interventions.items()}
        factors = {
            name: _identify(scm, name, samples[name][b], row, fixed, graph.ancestors(name) & set(interventions))
            for name in names
        }
        share = None if observed is None else float(observed[b])
        entries += [EditIdentification(factors, kept, share)] * num_counterfactuals
    return entries


def _observed(scm: NeuralCausalModel, draws: dict[str, torch.Tensor]) -> np.ndarray | None:
    """Per image, the share of its counterfactual samples (changed factors: Tensor[B, S]; kept ones: their values,
    Tensor[B]) whose configuration occurs among the observational rows: array[B]; None without counts."""
    counts = scm.observational_counts
    if counts is None:
        return None
    shape = next(value.shape for value in draws.values() if value.ndim == 2)
    table = {
        name: (value if value.ndim == 2 else value[:, None]).expand(shape).reshape(-1) for name, value in draws.items()
    }
    return (counts.occurrences(table) > 0).reshape(shape).mean(axis=1)


def clear_bounds_cache() -> int:
    """Forgets every cached linear-program solution; returns how many (target, evidence, intervention) patterns
    were cached."""
    count = sum(len(cache) for cache in _LP_CACHE.values())
    _LP_CACHE.clear()
    return count


def _row_value(spec: Any, b: int) -> Any:
    """Image b's intervention value: one value for every image, one per image, or a callable."""
    if callable(spec):
        return spec
    if isinstance(spec, torch.Tensor | np.ndarray):
        spec = spec.reshape(-1).tolist() if spec.ndim else spec.item()
    if isinstance(spec, list | tuple):
        return spec[b] if len(spec) > 1 else spec[0]
    return spec


def _identify(
    scm: NeuralCausalModel,
    name: str,
    draws: torch.Tensor,
    factual: dict[str, torch.Tensor],
    fixed: dict[str, Any],
    intervened_ancestors: set[str],
) -> FactorIdentification:
    factor = scm.schema[name]
    intervened = name in fixed and not (callable(fixed[name]) and intervened_ancestors)
    if not factor.is_discrete:
        low, median, high = torch.quantile(draws.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.double))
        resolution = RESOLUTION_FRACTION * (factor.high - factor.low)
        return FactorIdentification(
            name,
            name in fixed,
            intervened or float(high - low) < resolution,
            median=float(median),
            interval=(float(low), float(high)),
            resolution=resolution,
        )
    frequencies = torch.bincount(draws.reshape(-1), minlength=factor.num_levels).double() / draws.numel()
    probabilities = dict(zip(factor.levels, frequencies.tolist(), strict=True))
    if intervened:
        bounds = {level: Bounds(p, p) for level, p in probabilities.items()}
        return FactorIdentification(name, True, True, probabilities, bounds, True)
    bounds, note = _bounds(scm, name, factual, fixed)
    if bounds is None:
        return FactorIdentification(name, name in fixed, False, probabilities, note=note)
    slack = {level: 2 * math.sqrt(p * (1 - p) / draws.numel()) for level, p in probabilities.items()}
    inside = all(bounds[lv].low - slack[lv] <= p <= bounds[lv].high + slack[lv] for lv, p in probabilities.items())
    identified = all(b.identified for b in bounds.values())
    return FactorIdentification(name, name in fixed, identified, probabilities, bounds, inside, note=note)


def _bounds(
    scm: NeuralCausalModel, name: str, factual: dict[str, torch.Tensor], fixed: dict[str, Any]
) -> tuple[dict[str, Bounds] | None, str | None]:
    """Bounds on each level of `name` under the interventions `fixed` given one image's factual values (cached), or
    None and why not."""
    counts = scm.observational_counts
    if counts is None:
        if scm not in _WARNED:
            _WARNED.add(scm)
            logger.warning("cf-diffusion: counterfactual bounds are unavailable: %s", scm.counts_unavailable)
        return None, f"bounds unavailable: {scm.counts_unavailable}"
    relevant = relevant_nodes(scm.graph, {name})
    soft = [node for node in relevant if callable(fixed.get(node))]
    if soft:
        return None, f"no bounds: soft intervention on {soft} (bounds need fixed values)"
    evidence = tuple((node, counts.cell(node, _scalar(factual[node]))) for node in relevant)
    action = tuple((node, counts.cell(node, _scalar(fixed[node]))) for node in relevant if node in fixed)
    cache = _LP_CACHE.setdefault(counts, {})
    key = (name, evidence, action)
    if key not in cache:
        cache[key] = _solve(scm, counts, name, dict(evidence), dict(action), relevant)
    return cache[key]


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def _solve(
    scm: NeuralCausalModel,
    counts: ObservationalCounts,
    name: str,
    evidence: dict[str, int],
    action: dict[str, int],
    relevant: list[str],
) -> tuple[dict[str, Bounds] | None, str | None]:
    schema, columns = counts.bin_schema(), counts.columns()
    notes = []
    discretised = [node for node in relevant if not scm.schema[node].is_discrete]
    if discretised:
        notes.append(f"bounds of the model with {discretised} discretised into bins")
    bounds = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index, level in enumerate(scm.schema[name].levels):
            try:
                bounds[level] = counterfactual_bounds(
                    scm.graph, columns, {name: index}, action, evidence, schema=schema, weights=counts.counts
                )
            except ValueError as error:
                return None, f"no bounds: {error}"
    notes += sorted({str(warning.message) for warning in caught})
    return bounds, "; ".join(notes) or None


IDENTIFICATION_COLUMNS = ("factor", "role", "identified", "value", "model", "bounds / 5-95%")
"""The columns of `identification_rows`."""


def identification_rows(entry: EditIdentification, counterfactual: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One image's identification as rows of text cells (`IDENTIFICATION_COLUMNS`), one per factor the edit changes
    or may change; `counterfactual` holds the image's counterfactual factor values."""
    rows = []
    for name, item in entry.factors.items():
        value = counterfactual[name]
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        if item.probabilities is not None:
            model = f"p={item.probabilities[str(value)]:.2f}"
            bounds = item.bounds[str(value)] if item.bounds is not None else None
            span = "unavailable" if bounds is None else f"[{bounds.low:.2f}, {bounds.high:.2f}]"
        else:
            model = f"median {item.median:.3g}"
            span = f"[{item.interval[0]:.3g}, {item.interval[1]:.3g}]"
        role = "intervened" if item.intervened else "descendant"
        rows.append((name, role, "yes" if item.identified else "no", text, model, span))
    return rows


def format_identification(entry: EditIdentification, counterfactual: Mapping[str, Any]) -> str:
    """A small text table of one image's identification; `counterfactual` holds its counterfactual factor values."""
    header = IDENTIFICATION_COLUMNS
    rows = [header, *identification_rows(entry, counterfactual)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if entry.kept:
        lines.append(f"kept: {', '.join(entry.kept)}")
    notes = sorted({item.note for item in entry.factors.values() if item.note})
    support = support_note(entry)
    return "\n".join(lines + [f"note: {note}" for note in notes + ([support] if support else [])])


def support_note(entry: EditIdentification) -> str | None:
    """The line that says an edit's counterfactual factors reach past the observational rows, or None when they
    do not (or the share is unknown)."""
    if entry.observed is None or entry.observed >= 1:
        return None
    return (
        f"only {entry.observed:.0%} of the causal model's counterfactual factor vectors for this edit occur among "
        "the observational rows: beyond them the image model extrapolates, or relies on rows its recipe made "
        "(brightness rows)"
    )
