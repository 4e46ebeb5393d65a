"""Sharp bounds on counterfactual probabilities of discrete factors, by linear programming.

`counterfactual_bounds` answers "how large can `P(target under do(interventions) | evidence)` be, given the
observational distribution of the factors and the causal graph?" without assuming any particular mechanism.
It works in the canonical (response-function) model of Balke & Pearl (1994) and Zhang, Tian & Bareinboim
(2022): every SCM over discrete variables that respects a graph is equivalent, for all counterfactual
questions, to one in which each node `V` draws a *response function* `r_V: values(pa(V)) -> values(V)`,
response functions of nodes in different c-components are independent, and those within one c-component are
arbitrarily correlated.

The program, step by step:

1. **Relevant nodes.** Start from the target and evidence nodes and their ancestors; whenever a c-component
   meets this set in a node that has parents, add the whole component and its ancestors, until nothing
   changes. Everything else (e.g. an isolated `digit`) is marginalised out, which leaves the bounds
   unchanged: the dropped nodes' mechanisms can always be completed from the true model. Interventions on
   nodes outside this set cannot change the target and are ignored.
2. **Roots.** A c-component whose members have no parents draws its members' *values* directly, and their
   joint distribution is the observed `P(roots)`; these are conditioned on exactly, with fixed weights.
3. **Response functions.** The remaining ("non-root") nodes `S` get one LP variable per joint response
   function `r_S`, with `q(r_S) >= 0`, independent of the roots. For every observed root configuration
   `rho` and every configuration `s` of `S`: `sum_{r_S : r_S(rho) = s} q(r_S) = P(s | rho)`, where `r_S(rho)`
   solves the structural equations in topological order. This reproduces `P(v)` exactly.
4. **Objective.** `P(T_x = t | e) = sum_rho P(rho) sum_{r_S} q(r_S) [e holds in the factual world]
   [T = t in the world under do(x)] / P(e)`, linear in `q`; minimise and maximise with HiGHS. If sampling
   noise leaves no `q` that reproduces `P(v)` exactly, first find the smallest total-variation distance to a
   distribution the graph can produce, then bound over the `q` within that distance (with a warning).

When `S` is a single c-component (or empty) this program is exactly the set of SCMs compatible with the data,
so the bounds are sharp; this covers `x -> y` with exogenous `x` and the backdoor graph
`size <-> color; size -> bar; color -> bar`. When `S` spans two or more c-components the exact program is
multilinear (their response functions are independent); this module then optimises over their *joint*
distribution, which keeps every compatible SCM and so gives valid outer bounds, but not necessarily sharp
ones: `Bounds.sharp` is False and a warning says so (e.g. the front-door graph
`color -> size -> bar; color <-> bar`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from cf_diffusion.factors import FactorSchema, table_columns
from cf_diffusion.graph import CausalGraph

_IDENTIFIED_TOLERANCE = 1e-9


class Bounds(tuple):
    """Lower and upper bound on a probability; unpacks as `low, high = bounds`.

    Attributes:
        low: The smallest value compatible with the data and the graph.
        high: The largest value compatible with the data and the graph.
        sharp: True when every value in `[low, high]` is attained by some SCM compatible with the data and the
            graph; False when the interval is only guaranteed to contain all such values.
        identified: True when `high - low <= 1e-9` (the data and the graph determine the probability).
    """

    sharp: bool

    def __new__(cls, low: float, high: float, sharp: bool = True) -> Bounds:
        low, high = float(low), float(high)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"Bounds need 0 <= low <= high <= 1, got low={low} and high={high}")
        bounds = super().__new__(cls, (low, high))
        bounds.sharp = bool(sharp)
        return bounds

    def __getnewargs__(self) -> tuple[float, float, bool]:
        return self[0], self[1], self.sharp

    @property
    def low(self) -> float:
        """The lower bound."""
        return self[0]

    @property
    def high(self) -> float:
        """The upper bound."""
        return self[1]

    @property
    def identified(self) -> bool:
        """True when the bounds coincide (within 1e-9)."""
        return self[1] - self[0] <= _IDENTIFIED_TOLERANCE

    def __repr__(self) -> str:
        return f"Bounds(low={self[0]!r}, high={self[1]!r}, sharp={self.sharp})"


def counterfactual_bounds(
    graph: CausalGraph,
    table: Any,
    target: Mapping[str, Any],
    interventions: Mapping[str, Any],
    evidence: Mapping[str, Any] | None = None,
    schema: FactorSchema | None = None,
    max_lp_variables: int = 200_000,
    *,
    weights: Any | None = None,
) -> Bounds:
    """Bounds on `P(target under do(interventions) | evidence)` from observational data and a causal graph.

    The observational distribution `P(v)` is the empirical distribution of the table's rows (weighted by
    `weights` when given). To use a known joint distribution instead of samples, pass one row per
    configuration and its probability in `weights`. See the module docstring for the linear program.

    Args:
        graph: The causal graph; bidirected edges are hidden confounders.
        table: Observed factor values: a dict `name -> column`, a pandas DataFrame or a list of row dicts, with
            a column for every relevant node (extra columns are ignored). Values are level names or indices
            (with `schema`), or any hashable values (without `schema`: each node's levels are the distinct
            values in its column).
        target: `{node: value}`: the event whose probability is bounded, read in the world under
            `do(interventions)`; several nodes mean their joint event.
        interventions: `{node: value}` fixed interventions (may be empty, for a purely observational query).
        evidence: `{node: value}` observed in the factual world; None or empty for no evidence.
        schema: Factor types and levels. Without it, levels are the values present in the data, and query
            values must be among them.
        max_lp_variables: Refuse (with ValueError) a linear program with more variables than this; the count
            is made before anything is built.
        weights: Optional non-negative weight per row of `table`.

    Returns:
        `Bounds(low, high)`, with `.sharp` (False when two or more c-components with observed parents had to be
        optimised jointly; a warning is issued too) and `.identified` (`high - low <= 1e-9`).

    Raises:
        ValueError: For an unknown node, a value a node does not have, a callable intervention, a continuous
            factor among the relevant nodes, a missing column, bad weights, evidence of probability zero, or a
            linear program larger than `max_lp_variables`; the message names the culprit and what was expected.
        RuntimeError: If HiGHS fails on a feasible program.

    Warns:
        UserWarning: When the bounds are not sharp (see above), and when the observed distribution is not one
            the graph can produce (sampling noise breaking one of the graph's constraints, or a missing edge):
            the bounds are then taken over the compatible distributions nearest to it in total variation, and
            the warning gives that distance.

    Example:
        >>> g = CausalGraph.parse("x -> y")
        >>> data = {"x": [0, 0, 1, 1, 1, 1], "y": [0, 1, 0, 1, 1, 1]}
        >>> low, high = counterfactual_bounds(g, data, target={"y": 0}, interventions={"x": 0},
        ...                                   evidence={"x": 1, "y": 1})
        >>> round(low, 6), round(high, 6)
        (0.333333, 0.666667)
    """
    evidence = {} if evidence is None else evidence
    for what, query in (("target", target), ("interventions", interventions), ("evidence", evidence)):
        _check_query_nodes(graph, query, what)
    if not target:
        raise ValueError("target is empty; expected at least one {node: value} pair")
    for name, value in interventions.items():
        if callable(value):
            raise ValueError(f"intervention on {name!r} is a callable; bounds need a fixed value for each node")

    relevant = relevant_nodes(graph, set(target) | set(evidence))
    sub = graph.subgraph(relevant)
    order = sub.topological_order()
    interventions = {name: value for name, value in interventions.items() if name in relevant}

    codes, levels, row_weights = _encode_table(table, order, schema, weights)
    target_idx = _encode_query(target, "target", levels, schema)
    intervention_idx = _encode_query(interventions, "interventions", levels, schema)
    evidence_idx = _encode_query(evidence, "evidence", levels, schema)

    roots, components = _split_roots(sub)
    nonroot = [node for node in order if node not in set(roots)]
    _check_size(sub, nonroot, levels, max_lp_variables)
    sharp = len(components) <= 1
    if not sharp:
        warnings.warn(
            f"counterfactual_bounds: the relevant nodes form {len(components)} c-components with observed parents "
            f"({components}); their response functions are optimised jointly, which drops the independence "
            "between them, so the bounds are valid but may not be sharp (Bounds.sharp is False)",
            stacklevel=2,
        )

    program = _ResponseProgram(sub, roots, nonroot, levels)
    configs, probs = _joint_distribution(codes, order, row_weights)
    p_evidence = probs[_matches(configs, order, evidence_idx)].sum()
    if p_evidence <= 0.0:
        raise ValueError(f"evidence {dict(evidence)} has probability zero in the table; expected observed evidence")
    objective, a_eq, b_eq, row_mass = program.build(configs, probs, order, target_idx, intervention_idx, evidence_idx)
    objective /= p_evidence
    low, high = _optimise(objective, a_eq, b_eq, row_mass, relevant)
    low, high = min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)
    return Bounds(min(low, high), high, sharp=sharp)


def _check_query_nodes(graph: CausalGraph, query: Mapping[str, Any], what: str) -> None:
    if not isinstance(query, Mapping):
        raise ValueError(f"{what} must be a dict {{node: value}}, got {type(query).__name__}")
    for name in query:
        if name not in graph:
            raise ValueError(f"unknown node {name!r} in {what}; the graph's nodes are {graph.nodes}")


def relevant_nodes(graph: CausalGraph, query: set[str]) -> list[str]:
    """The nodes a query on `query` depends on (step 1 of the module docstring): the ancestral closure of `query` that
    also takes in every c-component it meets in a node with parents, in topological order."""
    components = {node: component for component in graph.c_components() for node in component}
    relevant = query | graph.ancestors(query)
    while True:
        grown = set(relevant)
        for node in relevant:
            if graph.parents(node):
                grown.update(components[node])
        grown |= graph.ancestors(grown)
        if grown == relevant:
            return [node for node in graph.topological_order() if node in relevant]
        relevant = grown


def _split_roots(sub: CausalGraph) -> tuple[list[str], list[list[str]]]:
    """Nodes of parentless c-components, and the c-components with at least one observed parent."""
    roots: list[str] = []
    components: list[list[str]] = []
    for component in sub.c_components():
        if any(sub.parents(node) for node in component):
            components.append(component)
        else:
            roots.extend(component)
    return roots, components


def _factorize(name: str, column: Any) -> tuple[list[Any], np.ndarray]:
    """Distinct values of a column (sorted where comparable) and each row's index into them."""
    array = np.asarray(column)
    if array.dtype.kind in "biufUS":
        uniques, inverse = np.unique(array, return_inverse=True)
        return uniques.tolist(), inverse.reshape(-1).astype(np.int64)
    index: dict[Any, int] = {}
    try:
        inverse = np.fromiter((index.setdefault(value, len(index)) for value in array.tolist()), np.int64, len(array))
    except TypeError as error:
        raise ValueError(f"column {name!r} holds unhashable values; expected level names or indices") from error
    return list(index), inverse


def _encode_table(
    table: Any, order: list[str], schema: FactorSchema | None, weights: Any | None
) -> tuple[dict[str, np.ndarray], dict[str, list[Any]], np.ndarray]:
    """Level indices per relevant node, the levels of each node, and normalised row weights."""
    columns = table_columns(table)
    missing = [name for name in order if name not in columns]
    if missing:
        raise ValueError(f"table has no column for node(s) {missing}; its columns are {list(columns)}")
    num_rows = len(columns[order[0]])
    if num_rows == 0:
        raise ValueError("table has no rows; expected observations of the relevant nodes")
    codes: dict[str, np.ndarray] = {}
    levels: dict[str, list[Any]] = {}
    if schema is None:
        for name in order:
            levels[name], codes[name] = _factorize(name, columns[name])
    else:
        for name in order:
            if name not in schema:
                raise ValueError(f"schema has no factor for node {name!r}; the schema's factors are {schema.names}")
            factor = schema[name]
            if not factor.is_discrete:
                raise ValueError(
                    f"factor {name!r} is continuous; counterfactual_bounds needs binary or categorical factors "
                    f"for the relevant nodes {order}"
                )
            levels[name] = list(factor.levels)
        values = schema.to_values({name: columns[name] for name in order}, partial=True)
        codes = {name: values[name].cpu().numpy().astype(np.int64) for name in order}
    if weights is None:
        row_weights = np.full(num_rows, 1.0 / num_rows)
    else:
        row_weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if row_weights.shape != (num_rows,):
            raise ValueError(f"weights has {row_weights.size} entries; expected one per table row ({num_rows})")
        if not np.all(np.isfinite(row_weights)) or np.any(row_weights < 0) or row_weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        row_weights = row_weights / row_weights.sum()
    return codes, levels, row_weights


def _encode_query(
    query: Mapping[str, Any], what: str, levels: dict[str, list[Any]], schema: FactorSchema | None
) -> dict[str, int]:
    """Level index of each query value; nodes outside `levels` (irrelevant ones) are skipped."""
    encoded: dict[str, int] = {}
    for name, value in query.items():
        if name not in levels:
            continue
        if schema is not None:
            try:
                encoded[name] = schema[name].to_index(value)
            except ValueError as error:
                raise ValueError(f"{what}: {error}") from error
            continue
        matches = [i for i, level in enumerate(levels[name]) if _same_value(level, value)]
        if not matches:
            raise ValueError(
                f"{what}: node {name!r} has no value {value!r} in the table; expected one of {levels[name]}"
            )
        encoded[name] = matches[0]
    return encoded


def _same_value(level: Any, value: Any) -> bool:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(level, str) != isinstance(value, str):
        return False
    return bool(level == value)


def _check_size(sub: CausalGraph, nonroot: list[str], levels: dict[str, list[Any]], max_lp_variables: int) -> None:
    """Raises before building when the joint response-function space of `nonroot` exceeds the limit."""
    shapes = {node: (len(levels[node]), math.prod(len(levels[p]) for p in sub.parents(node))) for node in nonroot}
    log_count = sum(configs * math.log(k) for k, configs in shapes.values())
    if log_count <= math.log(max_lp_variables) + 1e-9:
        return
    if log_count > 50 * math.log(10):
        count = f"about 10^{log_count / math.log(10):.0f}"
    else:
        count = str(math.prod(k**configs for k, configs in shapes.values()))
    terms = ", ".join(f"{node}: {k}^{configs}" for node, (k, configs) in shapes.items())
    raise ValueError(
        f"the linear program would need {count} response-function variables ({terms}; "
        f"levels^parent-configurations per node), more than max_lp_variables={max_lp_variables}; "
        "merge levels, drop parents, or raise max_lp_variables"
    )


def _joint_distribution(
    codes: dict[str, np.ndarray], order: list[str], row_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct observed configurations `Tensor[M, len(order)]` and their probabilities `[M]`."""
    stacked = np.stack([codes[name] for name in order], axis=1)
    configs, inverse = np.unique(stacked, axis=0, return_inverse=True)
    probs = np.bincount(inverse.reshape(-1), weights=row_weights, minlength=len(configs))
    keep = probs > 0
    return configs[keep], probs[keep]


def _matches(configs: np.ndarray, order: list[str], query: dict[str, int]) -> np.ndarray:
    mask = np.ones(len(configs), dtype=bool)
    for name, value in query.items():
        mask &= configs[:, order.index(name)] == value
    return mask


class _ResponseProgram:
    """The joint response functions of the non-root nodes, enumerated as one mixed-radix index per LP variable.

    Variable `j` gives node `V` the response function `r_V = (j // stride_V) % k_V^{n_V}`, where `n_V` is the
    number of parent configurations; `r_V` maps parent configuration `c` to the value `(r_V // k_V^c) % k_V`.
    """

    def __init__(self, sub: CausalGraph, roots: list[str], nonroot: list[str], levels: dict[str, list[Any]]):
        self.sub = sub
        self.roots = roots
        self.nonroot = nonroot
        self.k = {node: len(levels[node]) for node in roots + nonroot}
        radix = {node: self.k[node] ** math.prod(self.k[p] for p in sub.parents(node)) for node in nonroot}
        self.num_variables = math.prod(radix.values())
        variables = np.arange(self.num_variables, dtype=np.int64)
        self.response: dict[str, np.ndarray] = {}
        stride = 1
        for node in nonroot:
            self.response[node] = (variables // stride) % radix[node]
            stride *= radix[node]

    def solve_world(self, root_values: dict[str, int], fixed: dict[str, int]) -> dict[str, np.ndarray | int]:
        """Values of every node for every LP variable, given root values and interventions `fixed`."""
        values: dict[str, np.ndarray | int] = {**root_values, **{n: v for n, v in fixed.items() if n in root_values}}
        for node in self.nonroot:
            if node in fixed:
                values[node] = fixed[node]
                continue
            config: np.ndarray | int = 0
            for parent in self.sub.parents(node):
                config = config * self.k[parent] + values[parent]
            k = self.k[node]
            values[node] = (self.response[node] // np.power(k, config, dtype=np.int64)) % k
        return values

    def build(
        self,
        configs: np.ndarray,
        probs: np.ndarray,
        order: list[str],
        target: dict[str, int],
        interventions: dict[str, int],
        evidence: dict[str, int],
    ) -> tuple[np.ndarray, sparse.csr_array, np.ndarray, np.ndarray]:
        """The linear program for the observed distribution `(configs, probs)` over the nodes in `order`.

        Returns:
            The objective `P(T_x = t, e)` per variable, the constraint matrix and right-hand side of
            `A q = P(s | rho)` (one row per observed root configuration `rho` and configuration `s`), and each
            row's `P(rho)`.
        """
        root_cols = [order.index(node) for node in self.roots]
        nonroot_cols = [order.index(node) for node in self.nonroot]
        num_s = math.prod(self.k[node] for node in self.nonroot)
        s_strides = np.array([math.prod(self.k[n] for n in self.nonroot[i + 1 :]) for i in range(len(self.nonroot))])
        s_index = configs[:, nonroot_cols] @ s_strides if self.nonroot else np.zeros(len(configs), dtype=np.int64)
        if self.roots:
            root_configs, root_of_row = np.unique(configs[:, root_cols], axis=0, return_inverse=True)
            root_of_row = root_of_row.reshape(-1)
        else:
            root_configs, root_of_row = np.zeros((1, 0), dtype=np.int64), np.zeros(len(configs), dtype=np.int64)
        objective = np.zeros(self.num_variables)
        rows: list[np.ndarray] = []
        b_eq = np.zeros(len(root_configs) * num_s)
        root_mass = np.bincount(root_of_row, weights=probs, minlength=len(root_configs))
        for i, root_config in enumerate(root_configs):
            in_rho = root_of_row == i
            p_rho = root_mass[i]
            np.add.at(b_eq, i * num_s + s_index[in_rho], probs[in_rho] / p_rho)
            root_values = {node: int(value) for node, value in zip(self.roots, root_config, strict=True)}
            factual = self.solve_world(root_values, {})
            factual_s = np.zeros(self.num_variables, dtype=np.int64)
            for node, stride in zip(self.nonroot, s_strides, strict=True):
                factual_s += factual[node] * stride
            rows.append(i * num_s + factual_s)
            hit = _event(factual, evidence, self.num_variables)
            if hit.any():
                hit &= _event(self.solve_world(root_values, interventions), target, self.num_variables)
                objective += p_rho * hit
        row_index = np.concatenate(rows)
        col_index = np.tile(np.arange(self.num_variables), len(root_configs))
        a_eq = sparse.csr_array(
            (np.ones(len(row_index)), (row_index, col_index)), shape=(len(b_eq), self.num_variables)
        )
        return objective, a_eq, b_eq, np.repeat(root_mass, num_s)


def _event(values: dict[str, np.ndarray | int], event: dict[str, int], size: int) -> np.ndarray:
    hit = np.ones(size, dtype=bool)
    for name, value in event.items():
        hit &= np.asarray(values[name]) == value
    return hit


def _linprog(objective: np.ndarray, allow_infeasible: bool = False, **constraints: Any) -> Any:
    result = linprog(objective, bounds=(0, None), method="highs", **constraints)
    if result.status != 0 and not (allow_infeasible and result.status == 2):
        raise RuntimeError(f"HiGHS failed on the bounds linear program: {result.message}")
    return result


def _optimise(
    objective: np.ndarray, a_eq: sparse.csr_array, b_eq: np.ndarray, row_mass: np.ndarray, relevant: list[str]
) -> tuple[float, float]:
    """Minimum and maximum of `objective @ q` over `q >= 0, A q = b`.

    When no `q` fits the observed distribution exactly (sampling noise breaking an equality or inequality
    constraint of the graph, or a wrong graph), the bounds are taken over the distributions the graph can
    produce that are nearest to the observed one in total variation, with a warning giving that distance.
    """
    low = _linprog(objective, allow_infeasible=True, A_eq=a_eq, b_eq=b_eq)
    if low.status == 0:
        return float(low.fun), float(-_linprog(-objective, A_eq=a_eq, b_eq=b_eq).fun)
    num_rows, num_variables = a_eq.shape
    identity = sparse.identity(num_rows, format="csr")
    a_slack = sparse.hstack([a_eq, identity, -identity], format="csr")
    mass = np.concatenate([np.zeros(num_variables), row_mass, row_mass])
    distance = float(_linprog(mass, A_eq=a_slack, b_eq=b_eq).fun)
    warnings.warn(
        f"the observed distribution of {relevant} is not one the graph can produce (total variation distance "
        f"{distance / 2:.3g} to the nearest one: sampling noise, or a missing edge); bounding the query for the "
        "nearest distributions the graph can produce",
        stacklevel=3,
    )
    padded = np.concatenate([objective, np.zeros(2 * num_rows)])
    budget = {"A_ub": mass[None, :], "b_ub": [distance * (1 + 1e-6) + 1e-12], "A_eq": a_slack, "b_eq": b_eq}
    return float(_linprog(padded, **budget).fun), float(-_linprog(-padded, **budget).fun)
