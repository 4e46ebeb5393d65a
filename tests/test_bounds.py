"""Tests of counterfactual_bounds against closed forms and explicit generating SCMs."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable

import numpy as np
import pytest

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.scm.bounds import Bounds, counterfactual_bounds

BACKDOOR = "size <-> color; size -> bar; color -> bar; digit"
FRONTDOOR = "color -> size -> bar; color <-> bar"


def bernoulli(p: float) -> dict[int, float]:
    return {0: 1.0 - p, 1: p}


class DiscreteScm:
    """An explicit SCM with finite exogenous noise: exact distributions by enumeration, and samples.

    Args:
        noise: `{name: {value: probability}}`, mutually independent exogenous variables.
        mechanisms: `{node: f(values, noise)}` in topological order.
    """

    def __init__(self, noise: dict[str, dict[int, float]], mechanisms: dict[str, Callable[[dict, dict], int]]):
        self.mechanisms = mechanisms
        names = list(noise)
        self.worlds = [
            (
                float(np.prod([p for _, p in combo])),
                {name: value for name, (value, _) in zip(names, combo, strict=True)},
            )
            for combo in itertools.product(*(list(noise[name].items()) for name in names))
        ]

    def solve(self, u: dict[str, int], interventions: dict[str, int] | None = None) -> dict[str, int]:
        values: dict[str, int] = {}
        for node, mechanism in self.mechanisms.items():
            values[node] = (interventions or {}).get(node, mechanism(values, u))
        return values

    def counterfactual(self, target: dict, interventions: dict, evidence: dict) -> float:
        """Exact `P(target under do(interventions) | evidence)`."""
        joint = evidence_mass = 0.0
        for p, u in self.worlds:
            factual = self.solve(u)
            if all(factual[k] == v for k, v in evidence.items()):
                evidence_mass += p
                world = self.solve(u, interventions)
                joint += p * all(world[k] == v for k, v in target.items())
        return joint / evidence_mass

    def distribution(self) -> tuple[list[dict[str, int]], list[float]]:
        """The exact observational distribution as rows and weights."""
        mass: dict[tuple, float] = {}
        for p, u in self.worlds:
            key = tuple(self.solve(u).items())
            mass[key] = mass.get(key, 0.0) + p
        return [dict(key) for key in mass], list(mass.values())

    def sample(self, n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(self.worlds), size=n, p=[p for p, _ in self.worlds])
        solved = [self.solve(u) for _, u in self.worlds]
        return {node: np.array([world[node] for world in solved])[picks] for node in self.mechanisms}


def binary_xy_distribution(p_x1: float, p_y1_given_x: tuple[float, float]) -> tuple[list[dict], list[float]]:
    rows, weights = [], []
    for x, y in itertools.product((0, 1), repeat=2):
        p_x = p_x1 if x else 1 - p_x1
        p_y = p_y1_given_x[x] if y else 1 - p_y1_given_x[x]
        rows.append({"x": x, "y": y})
        weights.append(p_x * p_y)
    return rows, weights


def backdoor_scm() -> DiscreteScm:
    noise = {
        "u": bernoulli(0.5),
        "es": bernoulli(0.2),
        "ec": bernoulli(0.3),
        "n1": bernoulli(0.6),
        "n2": bernoulli(0.5),
    }
    return DiscreteScm(
        noise,
        {
            "size": lambda v, u: u["u"] ^ u["es"],
            "color": lambda v, u: u["u"] ^ u["ec"],
            "bar": lambda v, u: u["n1"] if v["size"] == 0 else u["n2"] | (v["color"] & u["n1"]),
        },
    )


def frontdoor_scm() -> DiscreteScm:
    noise = {"u": bernoulli(0.5), "ec": bernoulli(0.2), "es": bernoulli(0.25), "eb": bernoulli(0.3)}
    return DiscreteScm(
        noise,
        {
            "color": lambda v, u: u["u"] ^ u["ec"],
            "size": lambda v, u: v["color"] ^ u["es"],
            "bar": lambda v, u: (v["size"] & u["u"]) ^ u["eb"],
        },
    )


@pytest.mark.parametrize("seed", range(5))
def test_probability_of_necessity_matches_closed_form(seed):
    rng = np.random.default_rng(seed)
    p_x1, p_y_x0, p_y_x1 = rng.uniform(0.1, 0.9, size=3)
    rows, weights = binary_xy_distribution(p_x1, (p_y_x0, p_y_x1))
    bounds = counterfactual_bounds(
        CausalGraph.parse("x -> y"), rows, {"y": 0}, {"x": 0}, {"x": 1, "y": 1}, weights=weights
    )
    low, high = bounds
    assert low == pytest.approx(max(0.0, (p_y_x1 - p_y_x0) / p_y_x1), abs=1e-6)
    assert high == pytest.approx(min(1.0, (1 - p_y_x0) / p_y_x1), abs=1e-6)
    assert bounds.sharp


def test_probability_of_necessity_from_samples_is_close_to_closed_form():
    rng = np.random.default_rng(7)
    x = rng.random(100_000) < 0.4
    y = rng.random(100_000) < np.where(x, 0.8, 0.3)
    low, high = counterfactual_bounds(
        CausalGraph.parse("x -> y"), {"x": x, "y": y}, {"y": 0}, {"x": 0}, {"x": 1, "y": 1}
    )
    p_y_x1, p_y_x0 = y[x].mean(), y[~x].mean()
    assert low == pytest.approx((p_y_x1 - p_y_x0) / p_y_x1, abs=1e-6)
    assert high == pytest.approx(min(1.0, (1 - p_y_x0) / p_y_x1), abs=1e-6)


def test_interventional_query_with_exogenous_cause_is_identified():
    rows, weights = binary_xy_distribution(0.3, (0.25, 0.7))
    bounds = counterfactual_bounds(CausalGraph.parse("x -> y"), rows, {"y": 1}, {"x": 1}, weights=weights)
    assert bounds.identified
    assert bounds.low == pytest.approx(0.7, abs=1e-9)
    assert bounds.high == pytest.approx(0.7, abs=1e-9)


def test_confounded_interventional_query_is_not_identified_and_has_natural_bounds():
    rows, weights = binary_xy_distribution(0.3, (0.25, 0.7))
    bounds = counterfactual_bounds(CausalGraph.parse("x -> y; x <-> y"), rows, {"y": 1}, {"x": 1}, weights=weights)
    p_x1_y1 = 0.3 * 0.7
    assert not bounds.identified
    assert bounds.low == pytest.approx(p_x1_y1, abs=1e-9)
    assert bounds.high == pytest.approx(p_x1_y1 + 0.7, abs=1e-9)


def test_backdoor_bounds_match_slice_wise_frechet_closed_form():
    rng = np.random.default_rng(3)
    p_joint = rng.dirichlet(np.ones(4)).reshape(2, 2)
    p_bar = rng.uniform(0.1, 0.9, size=(2, 2))
    rows, weights = [], []
    for size, color, bar in itertools.product((0, 1), repeat=3):
        rows.append({"size": size, "color": color, "bar": bar, "digit": 0})
        weights.append(p_joint[size, color] * (p_bar[size, color] if bar else 1 - p_bar[size, color]))
    bounds = counterfactual_bounds(
        CausalGraph.parse(BACKDOOR), rows, {"bar": 1}, {"size": 1}, {"size": 0, "bar": 1}, weights=weights
    )
    evidence = sum(p_joint[0, c] * p_bar[0, c] for c in (0, 1))
    low = sum(p_joint[0, c] * max(0.0, p_bar[0, c] + p_bar[1, c] - 1) for c in (0, 1)) / evidence
    high = sum(p_joint[0, c] * min(p_bar[0, c], p_bar[1, c]) for c in (0, 1)) / evidence
    assert bounds.low == pytest.approx(low, abs=1e-6)
    assert bounds.high == pytest.approx(high, abs=1e-6)
    assert bounds.sharp


def test_backdoor_bounds_contain_generating_scm_value():
    scm = backdoor_scm()
    truth = scm.counterfactual({"bar": 1}, {"size": 1}, {"size": 0, "bar": 1})
    rows, weights = scm.distribution()
    exact = counterfactual_bounds(
        CausalGraph.parse("size <-> color; size -> bar; color -> bar"),
        rows,
        {"bar": 1},
        {"size": 1},
        {"size": 0, "bar": 1},
        weights=weights,
    )
    table = scm.sample(200_000, seed=0)
    table["digit"] = np.random.default_rng(1).integers(0, 10, size=200_000)
    sampled = counterfactual_bounds(CausalGraph.parse(BACKDOOR), table, {"bar": 1}, {"size": 1}, {"size": 0, "bar": 1})
    assert exact.low <= truth <= exact.high
    assert sampled.low <= truth <= sampled.high
    assert sampled.high - sampled.low < 0.6
    assert sampled.sharp
    assert sampled == pytest.approx(exact, abs=0.02)


def test_frontdoor_bounds_contain_generating_scm_values_and_warn_not_sharp():
    scm = frontdoor_scm()
    rows, weights = scm.distribution()
    graph = CausalGraph.parse(FRONTDOOR)
    for interventions, evidence in (
        ({"size": 1}, {}),
        ({"size": 1}, {"size": 0, "bar": 1}),
        ({"size": 0}, {"bar": 1}),
    ):
        truth = scm.counterfactual({"bar": 1}, interventions, evidence)
        with pytest.warns(UserWarning, match="may not be sharp"):
            bounds = counterfactual_bounds(graph, rows, {"bar": 1}, interventions, evidence, weights=weights)
        assert bounds.low - 1e-9 <= truth <= bounds.high + 1e-9
        assert not bounds.sharp
    with pytest.warns(UserWarning, match="may not be sharp"):
        sampled = counterfactual_bounds(graph, scm.sample(50_000, seed=2), {"bar": 1}, {"size": 1})
    assert sampled.low <= scm.counterfactual({"bar": 1}, {"size": 1}, {}) <= sampled.high


def test_noisy_data_breaking_a_graph_constraint_gives_nearest_compatible_bounds():
    # z -> x <-> y <- w implies x independent of w given z; sampling noise breaks that equality.
    scm = DiscreteScm(
        {"z": bernoulli(0.4), "w": bernoulli(0.6), "u": bernoulli(0.5), "ex": bernoulli(0.2), "ey": bernoulli(0.3)},
        {
            "z": lambda v, u: u["z"],
            "w": lambda v, u: u["w"],
            "x": lambda v, u: v["z"] ^ u["u"] ^ u["ex"],
            "y": lambda v, u: (v["x"] & v["w"]) ^ u["u"] ^ u["ey"],
        },
    )
    graph = CausalGraph.parse("z -> x; x <-> y; w -> y; x -> y")
    rows, weights = scm.distribution()
    query = ({"y": 1}, {"x": 1}, {"x": 0, "y": 1})
    exact = counterfactual_bounds(graph, rows, *query, weights=weights)
    with pytest.warns(UserWarning, match="total variation distance"):
        noisy = counterfactual_bounds(graph, scm.sample(100_000, seed=4), *query)
    assert noisy == pytest.approx(exact, abs=0.02)


def test_incompatible_data_reports_total_variation_distance():
    # z -> x -> y with x <-> y forbids z from moving y at fixed x (instrumental inequality); half the mass must move.
    rows = [{"z": 0, "x": 0, "y": 0}, {"z": 1, "x": 0, "y": 1}]
    with pytest.warns(UserWarning, match=r"total variation distance 0\.5 "):
        bounds = counterfactual_bounds(CausalGraph.parse("z -> x -> y; x <-> y"), rows, {"y": 1}, {"x": 0})
    assert 0.0 <= bounds.low <= bounds.high <= 1.0


def test_irrelevant_nodes_are_marginalised():
    rng = np.random.default_rng(0)
    n = 2_000
    table = {"x": rng.integers(0, 2, n), "y": rng.integers(0, 2, n), "w": rng.integers(0, 10, n)}
    table["z"] = (table["x"] + table["y"] + table["w"]) % 10
    big = CausalGraph.parse("x -> y; x -> z; y -> z; w -> z; w <-> z")
    small = CausalGraph.parse("x -> y")
    query = ({"y": 0}, {"x": 0}, {"x": 1, "y": 1})
    expected = counterfactual_bounds(small, table, *query)
    assert counterfactual_bounds(big, table, *query) == pytest.approx(expected, abs=1e-9)
    assert counterfactual_bounds(big, table, query[0], {"x": 0, "z": 3}, query[2]) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match=r"z: 10\^40"):
        counterfactual_bounds(big, table, {"z": 1}, {"x": 0})


def test_intervened_target_is_fixed():
    rows, weights = binary_xy_distribution(0.5, (0.2, 0.6))
    graph = CausalGraph.parse("x -> y")
    assert counterfactual_bounds(graph, rows, {"x": 0}, {"x": 1}, weights=weights) == (0.0, 0.0)
    assert counterfactual_bounds(graph, rows, {"x": 1, "y": 1}, {"x": 1}, weights=weights) == pytest.approx((0.6, 0.6))


def test_schema_level_names_and_table_formats_agree():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    size = rng.integers(0, 2, 500)
    color = np.where(rng.random(500) < 0.7, size, 1 - size)
    bar = (size | color) ^ (rng.random(500) < 0.2)
    names = np.array(["red", "green"])[color]
    schema = FactorSchema([Factor.binary("size"), Factor.categorical("color", ["red", "green"]), Factor.binary("bar")])
    graph = CausalGraph.parse("size <-> color; size -> bar; color -> bar")
    indices = counterfactual_bounds(
        graph, {"size": size, "color": color, "bar": bar}, {"bar": 1}, {"color": 1}, {"color": 0, "bar": 1}
    )
    by_name = counterfactual_bounds(
        graph,
        {"size": size, "color": names, "bar": bar},
        {"bar": 1},
        {"color": "green"},
        {"color": "red", "bar": 1},
        schema=schema,
    )
    frame = pd.DataFrame({"size": size, "color": names, "bar": bar})
    from_frame = counterfactual_bounds(graph, frame, {"bar": 1}, {"color": "green"}, {"color": "red", "bar": 1})
    rows = frame.to_dict("records")
    from_rows = counterfactual_bounds(graph, rows, {"bar": 1}, {"color": 1}, {"color": "red", "bar": 1}, schema=schema)
    assert by_name == pytest.approx(indices, abs=1e-9)
    assert from_frame == pytest.approx(indices, abs=1e-9)
    assert from_rows == pytest.approx(indices, abs=1e-9)


def test_bounds_unpack_pickle_and_report():
    bounds = Bounds(0.25, 0.5, sharp=False)
    low, high = bounds
    assert (low, high) == (0.25, 0.5)
    restored = pickle.loads(pickle.dumps(bounds))
    assert restored == bounds and restored.sharp is False
    assert not bounds.identified and Bounds(0.3, 0.3 + 1e-10).identified
    assert repr(bounds) == "Bounds(low=0.25, high=0.5, sharp=False)"
    with pytest.raises(ValueError, match="low=0.6 and high=0.5"):
        Bounds(0.6, 0.5)


XY_ROWS = [{"x": 0, "y": 0}, {"x": 1, "y": 1}, {"x": 1, "y": 0}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": {"q": 1}}, r"unknown node 'q' in target; the graph's nodes are \['x', 'y'\]"),
        ({"interventions": {"q": 1}}, "unknown node 'q' in interventions"),
        ({"evidence": {"q": 1}}, "unknown node 'q' in evidence"),
        ({"target": {"y": 5}}, r"target: node 'y' has no value 5 in the table; expected one of \[0, 1\]"),
        ({"evidence": {"x": "big"}}, r"evidence: node 'x' has no value 'big'"),
        ({"evidence": {"x": 0, "y": 1}}, r"evidence \{'x': 0, 'y': 1\} has probability zero"),
        ({"interventions": {"x": lambda x: x + 1}}, "intervention on 'x' is a callable"),
        ({"target": {}}, "target is empty"),
        ({"weights": [1.0, 2.0]}, r"weights has 2 entries; expected one per table row \(3\)"),
        ({"weights": [1.0, -1.0, 1.0]}, "weights must be finite, non-negative"),
        ({"table": [{"x": 0}]}, r"table has no column for node\(s\) \['y'\]"),
        ({"max_lp_variables": 3}, r"4 response-function variables \(y: 2\^2; .*max_lp_variables=3"),
    ],
)
def test_errors_name_the_culprit(kwargs, message):
    arguments = {"table": XY_ROWS, "target": {"y": 1}, "interventions": {"x": 0}, **kwargs}
    with pytest.raises(ValueError, match=message):
        counterfactual_bounds(CausalGraph.parse("x -> y"), **arguments)


def test_schema_errors_name_the_culprit():
    graph = CausalGraph.parse("x -> y")
    table = {"x": [0.5, 1.5], "y": [0, 1]}
    continuous = FactorSchema([Factor.continuous("x"), Factor.binary("y")])
    with pytest.raises(ValueError, match="factor 'x' is continuous"):
        counterfactual_bounds(graph, table, {"y": 1}, {"x": 0}, schema=continuous)
    discrete = FactorSchema([Factor.binary("x"), Factor.binary("y")])
    with pytest.raises(ValueError, match=r"target: factor 'y': bad value 'blue'"):
        counterfactual_bounds(graph, {"x": [0, 1], "y": [0, 1]}, {"y": "blue"}, {"x": 0}, schema=discrete)
    with pytest.raises(ValueError, match="schema has no factor for node 'y'"):
        counterfactual_bounds(graph, table, {"y": 1}, {"x": 0}, schema=FactorSchema([Factor.binary("x")]))
