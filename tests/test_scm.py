"""NeuralCausalModel against analytic truth: linear-Gaussian counterfactuals, a chain, a confounded pair."""

import json
import math

import pytest
import torch

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.scm import Exogenous, NeuralCausalModel
from cf_diffusion.scm.mechanisms import FlowMechanism, GumbelMechanism

EULER_GAMMA = 0.5772156649


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bernoulli(p: torch.Tensor | float, n: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).long()


# ---------------------------------------------------------------- mechanisms


def test_gumbel_posterior_reproduces_level_and_is_gumbel_marginally():
    torch.manual_seed(0)
    mechanism = GumbelMechanism(context_dim=0, num_levels=4, hidden_dim=8)
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0]).expand(200_000, 4)
    x = torch.multinomial(torch.softmax(logits[0], -1), 200_000, replacement=True, generator=_seed(1))
    noise = mechanism.abduct(x, logits, generator=_seed(2))
    assert torch.equal(mechanism.predict(noise, logits), x)
    # If x ~ softmax(l) and g ~ p(g | x), then g is marginally i.i.d. standard Gumbel.
    assert torch.allclose(noise.mean(0), torch.full((4,), EULER_GAMMA), atol=0.02)
    assert torch.allclose(noise.var(0), torch.full((4,), math.pi**2 / 6), atol=0.05)


def test_flow_noise_is_recovered_exactly_by_inversion():
    torch.manual_seed(0)
    mechanism = FlowMechanism(context_dim=3, hidden_dim=16, transforms=2, bins=6)
    for parameter in mechanism.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    context = torch.randn(500, 3)
    u = torch.randn(500)
    x = mechanism.predict(u, context)
    recovered, log_prob = mechanism.abduct_and_log_prob(x, context)
    assert torch.allclose(recovered, u, atol=1e-4)
    # Change of variables on a grid: the density integrates to one for a fixed context.
    grid = torch.linspace(-12, 12, 20001)
    _, density = mechanism.abduct_and_log_prob(grid, context[:1].expand(len(grid), 3))
    assert torch.trapezoid(density.exp(), grid).item() == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------- linear-Gaussian x -> y, y = 2x + u


@pytest.fixture(scope="module")
def linear():
    g = _seed(0)
    n = 20_000
    x = torch.randn(n, generator=g)
    y = 2 * x + torch.randn(n, generator=g)
    model = NeuralCausalModel("x -> y", FactorSchema([Factor.continuous("x"), Factor.continuous("y")]))
    model.fit({"x": x, "y": y}, num_steps=300, generator=_seed(1), show_progress=False)
    return model, x, y


def test_linear_gaussian_counterfactual_matches_closed_form(linear):
    model, x, y = linear
    factual = {"x": x[:1000], "y": y[:1000]}
    x_new = torch.rand(1000, generator=_seed(3)) * 4 - 2
    cf = model.counterfactual(factual, {"x": x_new}, num_samples=2, generator=_seed(4))
    assert cf["y"].shape == (1000, 2)
    truth = factual["y"] + 2 * (x_new - factual["x"])
    assert (cf["y"] - truth[:, None]).abs().mean().item() < 0.1  # noise std is 1
    assert torch.equal(cf["x"], x_new[:, None].expand(1000, 2))


def test_linear_gaussian_soft_intervention_shifts_descendants(linear):
    model, x, y = linear
    factual = {"x": x[:1000], "y": y[:1000]}
    cf = model.counterfactual(factual, {"x": lambda t: t + 1}, generator=_seed(5))
    assert torch.equal(cf["x"][:, 0], factual["x"] + 1)
    assert (cf["y"][:, 0] - (factual["y"] + 2)).abs().mean().item() < 0.1


def test_linear_gaussian_interventional_means(linear):
    model, _, _ = linear
    for value in (-1.5, 0.0, 1.0):
        y = model.sample(50_000, interventions={"x": value}, generator=_seed(6))["y"]
        assert abs(y.mean().item() - 2 * value) < 0.05  # std of y under do(x) is 1
        assert y.std().item() == pytest.approx(1.0, abs=0.05)


def test_non_descendants_are_copied_exactly(linear):
    model, x, y = linear
    factual = {"x": x[:100], "y": y[:100]}
    cf = model.counterfactual(factual, {"y": 0.5}, num_samples=3, generator=_seed(7))
    assert torch.equal(cf["x"], factual["x"][:, None].expand(100, 3))
    assert torch.all(cf["y"] == 0.5)


def test_counterfactual_values_stay_in_the_factor_range(linear):
    model, x, y = linear
    low, high = model.schema["y"].low, model.schema["y"].high
    outside = torch.nonzero(y + 2 * (x.max() - x) > high + 1)[:50, 0]  # the closed form leaves y's range
    assert len(outside) == 50
    factual = {"x": x[outside], "y": y[outside]}
    cf = model.counterfactual(factual, {"x": x.max().item()}, generator=_seed(8))["y"]
    assert cf.min() >= low and cf.max() <= high and (cf == high).any()
    model.schema.to_values({"x": factual["x"], "y": cf[:, 0]})  # counterfactual values are valid factual ones


# ---------------------------------------------------------------- chain a -> b -> c (binary, continuous, binary)


def _chain_data(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    a = _bernoulli(0.3, n, generator)
    b = 1.5 * a + torch.randn(n, generator=generator)
    c = _bernoulli(torch.sigmoid(2 * b - 1), n, generator)
    return {"a": a, "b": b, "c": c}


def test_chain_interventional_distributions_match_generating_scm():
    data = _chain_data(20_000, _seed(0))
    schema = FactorSchema([Factor.binary("a"), Factor.continuous("b"), Factor.binary("c")])
    model = NeuralCausalModel(CausalGraph.parse("a -> b; b -> c"), schema, hidden_dim=32)
    model.fit(data, num_steps=800, generator=_seed(1), show_progress=False)

    u = torch.randn(1_000_000, generator=_seed(2))
    truth_do_a1 = torch.sigmoid(2 * (1.5 + u) - 1).mean().item()  # P(c = 1 | do(a = 1))
    truth_do_b = 1 / (1 + math.exp(-2))  # P(c = 1 | do(b = 1.5)) = sigmoid(2 * 1.5 - 1)
    observed = data["c"].float().mean().item()
    assert abs(truth_do_a1 - observed) > 0.2 and abs(truth_do_b - observed) > 0.1

    do_a1 = model.sample(100_000, {"a": 1}, generator=_seed(3))
    assert abs(do_a1["c"].float().mean().item() - truth_do_a1) < 0.03
    assert abs(do_a1["b"].mean().item() - 1.5) < 0.03
    do_b = model.sample(100_000, {"b": 1.5}, generator=_seed(4))
    assert abs(do_b["c"].float().mean().item() - truth_do_b) < 0.03
    assert abs(do_b["a"].float().mean().item() - 0.3) < 0.03


# ---------------------------------------------------------------- confounded pair z <-> x, x -> y <- z


def _confounded_data(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    hidden = _bernoulli(0.5, n, generator).float()
    z = _bernoulli(0.1 + 0.8 * hidden, n, generator)
    x = _bernoulli(0.1 + 0.8 * hidden, n, generator)
    y = _bernoulli(0.1 + 0.3 * x + 0.5 * z, n, generator)
    return {"z": z, "x": x, "y": y}


@pytest.fixture(scope="module")
def confounded():
    data = _confounded_data(20_000, _seed(0))
    schema = FactorSchema([Factor.binary("z"), Factor.binary("x"), Factor.binary("y")])
    model = NeuralCausalModel("z <-> x; x -> y; z -> y", schema, hidden_dim=32, num_importance=16)
    model.fit(data, num_steps=300, generator=_seed(1), show_progress=False)
    return model, data


def test_confounded_pair_interventional_distributions_match_generating_scm(confounded):
    model, data = confounded
    # Truth: P(y=1 | do(x=1)) = 0.4 + 0.5 P(z=1) = 0.65, whereas P(y=1 | x=1) = 0.4 + 0.5 * 0.82 = 0.81;
    # P(x=1 | do(z=1)) = P(x=1) = 0.5, whereas P(x=1 | z=1) = 0.82.
    x, y, z = data["x"] == 1, data["y"].float(), data["z"] == 1
    assert abs(y[x].mean().item() - 0.65) > 0.1 and abs(x[z].float().mean().item() - 0.5) > 0.1
    do_x = model.sample(100_000, {"x": 1}, generator=_seed(2))
    assert abs(do_x["y"].float().mean().item() - 0.65) < 0.03
    do_z = model.sample(100_000, {"z": "1"}, generator=_seed(3))
    assert abs(do_z["x"].float().mean().item() - 0.5) < 0.03
    assert abs(do_z["y"].float().mean().item() - (0.6 + 0.3 * 0.5)) < 0.03
    observational = model.sample(100_000, generator=_seed(4))
    both = (observational["x"] * observational["z"]).float().mean().item()
    assert abs(both - 0.5 * 0.81) < 0.03  # P(x=1, z=1) = 0.5 * 0.9^2 + 0.5 * 0.1^2


def test_confounded_counterfactual_shapes_and_exact_copies(confounded):
    model, data = confounded
    factual = {name: value[:500] for name, value in data.items()}
    exogenous = model.abduct(factual, num_samples=4, generator=_seed(5))
    assert isinstance(exogenous, Exogenous)
    assert exogenous.num_rows == 500 and exogenous.num_samples == 4
    assert exogenous.latents[("z", "x")].shape == (500, 4, 2)
    assert exogenous.noise["y"].shape == (500, 4, 2)
    # Abduction reproduces the factual world: argmax(logits + g) gives back the observed level.
    cf_null = model.counterfactual(factual, {}, num_samples=4, generator=_seed(5))
    for name in ("z", "x", "y"):
        assert torch.equal(cf_null[name], factual[name][:, None].expand(500, 4))
    cf = model.counterfactual(factual, {"x": [1] * 500}, num_samples=4, generator=_seed(6))
    assert torch.equal(cf["z"], factual["z"][:, None].expand(500, 4))
    assert torch.all(cf["x"] == 1)
    # Under do(x=1), y can only stay or go up where x was 0 and never changes where x was already 1.
    assert torch.equal(cf["y"][factual["x"] == 1], factual["y"][factual["x"] == 1][:, None].expand(-1, 4))


def test_save_load_round_trip_gives_identical_samples(confounded, tmp_path):
    model, data = confounded
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["graph"]["bidirected"] == [["z", "x"]] or config["graph"]["bidirected"] == [["x", "z"]]
    assert [f["name"] for f in config["schema"]["factors"]] == ["z", "x", "y"]
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = NeuralCausalModel.from_pretrained(tmp_path)
    assert loaded.graph == model.graph and loaded.schema == model.schema
    first = model.sample(1000, {"x": 0}, generator=_seed(8))
    second = loaded.sample(1000, {"x": 0}, generator=_seed(8))
    factual = {name: value[:200] for name, value in data.items()}
    cf_first = model.counterfactual(factual, {"z": 1}, num_samples=3, generator=_seed(9))
    cf_second = loaded.counterfactual(factual, {"z": 1}, num_samples=3, generator=_seed(9))
    for name in ("z", "x", "y"):
        assert torch.equal(first[name], second[name])
        assert torch.equal(cf_first[name], cf_second[name])


def test_fit_completes_ranges_and_stores_them_in_config():
    g = _seed(0)
    data = {"a": torch.rand(500, generator=g) * 3 + 1, "b": _bernoulli(0.5, 500, g)}
    model = NeuralCausalModel("a -> b", FactorSchema([Factor.continuous("a"), Factor.binary("b")]))
    with pytest.raises(ValueError, match="'a'.*no range"):
        model.sample(10)
    losses = model.fit(data, num_steps=5, batch_size=64, generator=_seed(1), show_progress=False)
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    low, high = model.config.schema["factors"][0]["low"], model.config.schema["factors"][0]["high"]
    assert low == pytest.approx(data["a"].min().item()) and high == pytest.approx(data["a"].max().item())
    assert model.schema["a"].low == pytest.approx(low)


def test_save_load_with_unconfounded_root_and_scalar_interventions(tmp_path):
    g = _seed(0)
    data = {"a": torch.randn(500, generator=g), "b": _bernoulli(0.5, 500, g)}
    model = NeuralCausalModel("a -> b", FactorSchema([Factor.continuous("a"), Factor.binary("b")]), hidden_dim=8)
    model.fit(data, num_steps=20, batch_size=64, generator=_seed(1), show_progress=False)
    model.save_pretrained(tmp_path)
    loaded = NeuralCausalModel.from_pretrained(tmp_path)
    for interventions in (None, {"a": torch.tensor(0.5)}, {"b": True}):
        first = model.sample(300, interventions, generator=_seed(2))
        second = loaded.sample(300, interventions, generator=_seed(2))
        assert torch.equal(first["a"], second["a"]) and torch.equal(first["b"], second["b"])
    assert torch.all(model.sample(10, {"a": torch.tensor(0.5)})["a"] == 0.5)


# ---------------------------------------------------------------- errors name the culprit


@pytest.fixture(scope="module")
def small():
    schema = FactorSchema([Factor.categorical("color", ["red", "green", "blue"]), Factor.continuous("size", 0.0, 2.0)])
    return NeuralCausalModel("color -> size", schema, hidden_dim=8)


def test_error_unknown_intervention_factor(small):
    with pytest.raises(ValueError, match="'shape'.*color.*size"):
        small.sample(4, {"shape": 1})


def test_error_unknown_level(small):
    with pytest.raises(ValueError, match="'color'.*'purple'.*red"):
        small.sample(4, {"color": "purple"})


def test_error_out_of_range_value(small):
    with pytest.raises(ValueError, match="'size'.*out of range|'size'.*bad value"):
        small.sample(4, {"size": 5.0})


def test_error_per_row_length(small):
    factual = {"color": ["red", "blue"], "size": [0.5, 1.5]}
    with pytest.raises(ValueError, match="'color'.*3 values.*2"):
        small.counterfactual(factual, {"color": ["red", "green", "blue"]})


def test_error_soft_intervention_on_discrete_leaves_levels(small):
    factual = {"color": ["red", "blue"], "size": [0.5, 1.5]}
    with pytest.raises(ValueError, match="'color'.*red"):
        small.counterfactual(factual, {"color": lambda t: t + 3})


def test_error_unknown_factual_column(small):
    with pytest.raises(ValueError, match="'weight'"):
        small.counterfactual({"color": ["red"], "size": [1.0], "weight": [3.0]}, {"color": "green"})


def test_error_graph_and_schema_disagree():
    schema = FactorSchema([Factor.binary("a"), Factor.binary("b")])
    with pytest.raises(ValueError, match="'c'"):
        NeuralCausalModel("a -> c", schema)


def test_error_bad_model_size():
    with pytest.raises(ValueError, match="confounder_dim must be >= 1; got 0"):
        NeuralCausalModel("a <-> b", FactorSchema([Factor.binary("a"), Factor.binary("b")]), confounder_dim=0)


def test_error_bad_num_samples(small):
    with pytest.raises(ValueError, match="num_samples"):
        small.counterfactual({"color": ["red"], "size": [1.0]}, {"color": "green"}, num_samples=0)
