"""Counterfactual consistency queries (the seed paper's test): which to ask, their true value under a procedural
dataset's own structural equations, and each method's answer from its edited images against the sharp bounds.

For each discrete intervened factor X and discrete descendant Y, and each factual pair (x, y), the query is
`P(Y_{X=x'} = y | X = x, Y = y)`. Its sharp bounds come from `counterfactual_bounds` (the model's graph, the
training-distribution table); an estimate from edited images is inside when its Wilson score interval at
z = `STANDARD_ERRORS` meets them.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cf_diffusion.data import ProceduralDataset
from cf_diffusion.evaluation.consistency import counterfactual_probability
from cf_diffusion.evaluation.data import EvaluationData
from cf_diffusion.evaluation.interventions import shifted_values
from cf_diffusion.evaluation.methods import Method
from cf_diffusion.factors import FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.scm.bounds import counterfactual_bounds

STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class CounterfactualQuery:
    """`P(target_{do(intervention)} | evidence)` over discrete factors, all values as level indices.

    Attributes:
        intervention: `{X: x'}`.
        evidence: `{X: x, Y: y}`, the factual event.
        target: `{Y: y}`, the event in the world under `do(X = x')`.
    """

    intervention: dict[str, int]
    evidence: dict[str, int]
    target: dict[str, int]

    def label(self, schema: FactorSchema) -> str:
        """E.g. `P(bar_{size=large} = 1 | size=small, bar=1)`."""

        def text(event: Mapping[str, int]) -> str:
            return ", ".join(f"{name}={schema[name].level(value)}" for name, value in event.items())

        ((name, value),) = self.target.items()
        return f"P({name}_{{{text(self.intervention)}}} = {schema[name].level(value)} | {text(self.evidence)})"


def consistency_queries(graph: CausalGraph, schema: FactorSchema, intervened: str) -> list[CounterfactualQuery]:
    """The queries `P(Y_{X=x'} = y | X = x, Y = y)` for a discrete intervened X and each discrete descendant Y.

    One query per level pair (x, y), with `x' = shifted_values(X, x)`: the probability that Y keeps its factual
    value when X is moved, e.g. `P(bar_{size=large} = 1 | size=small, bar=1)` on `colored-bars`.

    Args:
        graph: The causal graph (the model's).
        schema: The factor schema.
        intervened: X.

    Returns:
        The queries, by descendant in topological order, then x, then y.
    """
    factor = schema[intervened]
    if not factor.is_discrete:
        return []
    order = graph.topological_order()
    descendants = sorted(graph.descendants(intervened), key=order.index)
    queries = []
    for name in descendants:
        if not schema[name].is_discrete:
            continue
        for x in range(factor.num_levels):
            x_new = int(shifted_values(factor, np.array([x]))[0])
            for y in range(schema[name].num_levels):
                queries.append(CounterfactualQuery({intervened: x_new}, {intervened: x, name: y}, {name: y}))
    return queries


def true_probability(
    dataset: ProceduralDataset, exogenous: Mapping[str, np.ndarray], query: CounterfactualQuery
) -> dict[str, float | int]:
    """Monte Carlo value of a query under a procedural dataset's own structural equations.

    Over rows `i` drawn from the dataset's exogenous distribution, with factual factors `v_i` and counterfactual
    factors `v_i'` (same noise, `do(X = x')`): `p = sum_i [e(v_i)] [t(v_i')] / sum_i [e(v_i)]`.

    Args:
        dataset: The procedural dataset.
        exogenous: Noise name -> array[N], a sample of its exogenous distribution.
        query: The query.

    Returns:
        `{"probability": p, "stderr": sqrt(p (1 - p) / n), "n": rows with the evidence}`.
    """
    n = len(next(iter(exogenous.values())))
    factual = dataset.counterfactual(dict(exogenous), {}, resolution=0).factors
    world = dataset.counterfactual(dict(exogenous), dict(query.intervention), resolution=0).factors
    keep = np.ones(n, dtype=bool)
    for name, value in query.evidence.items():
        keep &= np.asarray(factual[name]) == value
    hit = np.ones(n, dtype=bool)
    for name, value in query.target.items():
        hit &= np.asarray(world[name]) == value
    count = int(keep.sum())
    if count == 0:
        raise ValueError(f"no row of the sample has the evidence {query.evidence}; draw more rows")
    p = float(hit[keep].mean())
    return {"probability": p, "stderr": math.sqrt(p * (1 - p) / count), "n": count}


def judge_estimate(
    factual: Mapping[str, np.ndarray],
    read: Mapping[str, np.ndarray],
    query: CounterfactualQuery,
    low: float,
    high: float,
    standard_errors: float = STANDARD_ERRORS,
) -> dict[str, float | int | bool]:
    """Estimate a query from edited images and say whether it lies inside the bounds.

    `p = (1/n) sum_{i: e(factual_i)} [t(read_i)]` over the n rows whose factual factors satisfy the evidence, with
    binomial standard error `se = sqrt(p (1 - p) / n)` (`counterfactual_probability`); inside when the Wilson
    score interval of p at z = `standard_errors`,
    `(p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)`, meets [low, high]. Unlike `p -+ z se`,
    it does not shrink to a point when p is 0 or 1 (few rows, all edits alike).

    Args:
        factual: Factor name -> factual values of the edited rows, array[N].
        read: Factor name -> values read off their edited images, array[N].
        query: The query; every row with the evidence must have been edited under `query.intervention`.
        low: Lower bound.
        high: Upper bound.
        standard_errors: k, the tolerance in standard errors.

    Returns:
        `{"probability", "stderr", "n", "inside"}`.
    """
    estimate = counterfactual_probability(factual, read, query.evidence, query.target)
    p, n, z = estimate["probability"], estimate["n"], standard_errors
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    inside = center - half <= high and center + half >= low
    return {**estimate, "inside": bool(inside)}


def answer_queries(
    pipe,
    loaded: EvaluationData,
    edited_factors: Sequence[str],
    methods: Sequence[Method],
    reads: Mapping[tuple[str, str], Mapping[str, np.ndarray]],
    notes: list[str],
) -> list[dict[str, Any]]:
    """Every consistency query of the edited factors: bounds, true value and each method's estimate.

    Args:
        pipe: The pipeline (its schema and causal graph).
        loaded: The edited rows, the training-distribution table and, with ground truth, the dataset.
        edited_factors: The intervened factors, each edited on every row.
        methods: The methods whose edits were read.
        reads: (method name, intervened factor) -> factors read off that method's edited images, array[N] each.
        notes: The results' notes; one is added when some query has no bounds.

    Returns:
        Per query: its label and events, `bounds` and `sharp` (or `bounds_error`), `warnings`, `truth` (with
        ground truth) and `estimates` (method name -> `judge_estimate`), or a `note` when no row has the evidence.
    """
    schema, graph = pipe.schema, pipe.scm.graph
    entries = []
    for name in edited_factors:
        for query in consistency_queries(graph, schema, name):
            entry: dict[str, Any] = {
                "query": query.label(schema),
                "intervention": query.intervention,
                "evidence": query.evidence,
                "target": query.target,
            }
            entries.append(entry)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    bounds = counterfactual_bounds(
                        graph, loaded.table, query.target, query.intervention, query.evidence, schema=schema
                    )
                except ValueError as error:
                    entry["bounds_error"] = str(error)
                    continue
            entry.update(bounds=[bounds.low, bounds.high], sharp=bounds.sharp)
            entry["warnings"] = [str(w.message) for w in caught]
            if loaded.dataset is not None and loaded.table_exogenous is not None:
                entry["truth"] = true_probability(loaded.dataset, loaded.table_exogenous, query)
            rows = np.ones(len(loaded.images), dtype=bool)
            for key, value in query.evidence.items():
                rows &= np.asarray(loaded.factors[key]) == value
            entry["estimates"] = {
                method.name: judge_estimate(loaded.factors, reads[(method.name, name)], query, *bounds)
                for method in methods
                if rows.any()
            }
            if not rows.any():
                entry["note"] = "no edited row has the evidence"
    if any("bounds_error" in e for e in entries):
        notes.append("some consistency queries have no bounds (see their bounds_error)")
    return entries
