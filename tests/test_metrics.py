"""Metrics on cases whose value is known by construction."""

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from cf_diffusion.evaluation import (
    InceptionFeatures,
    cld,
    composition,
    counterfactual_probability,
    diagonal_gaussian_kl,
    effectiveness,
    features,
    fid,
    ground_truth_distance,
    kid,
    load_inception,
    macro_f1,
    mae_255,
    pairwise_diagonal_gaussian_kl,
    preservation_rate,
    probability_in_bounds,
    reversibility,
    ssim,
)


def _images(batch: int = 3, channels: int = 3, size: int = 16, high: float = 0.5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator) * high


# Image distances.


def test_identical_images_have_mae_zero_and_ssim_one():
    x = _images()
    assert torch.equal(mae_255(x, x), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_known_shift_gives_mae_ten_per_image():
    x = _images()
    shifted = x + 10 / 255
    assert torch.allclose(mae_255(x, shifted), torch.full((3,), 10.0, dtype=torch.float64), atol=1e-4)
    batch = torch.stack([x[0], x[1]])
    assert torch.allclose(
        mae_255(batch, torch.stack([x[0], shifted[1]])), torch.tensor([0.0, 10.0]).double(), atol=1e-4
    )


def test_ssim_of_constant_images_is_the_luminance_term():
    a = torch.full((2, 1, 12, 12), 0.2)
    b = torch.full((2, 1, 12, 12), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert torch.allclose(ssim(a, b), torch.full((2,), expected, dtype=torch.float64), atol=1e-6)


def test_ssim_of_a_negated_texture_is_near_minus_one():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    value = ssim(x, 1 - x)
    assert (value < -0.9).all()
    assert torch.allclose(value, ssim(1 - x, x))


def test_image_distance_errors_name_the_problem():
    x = _images()
    with pytest.raises(ValueError, match="same shape"):
        mae_255(x, x[:2])
    with pytest.raises(ValueError, match=r"b must have values in \[0, 1\]"):
        ssim(x, x + 2)
    with pytest.raises(ValueError, match="window_size"):
        ssim(x, x, window_size=17)
    with pytest.raises(ValueError, match="4 dimensions"):
        mae_255(x[0], x[0])


def test_ground_truth_distance_of_a_known_shift():
    x = _images()
    result = ground_truth_distance(x + 10 / 255, x)
    assert result["mae_255"] == pytest.approx(10.0, abs=1e-4)
    assert result["l1"] == pytest.approx(10 / 255, abs=1e-6)
    assert result["ssim"] < 1.0
    assert ground_truth_distance(x, x)["ssim"] == pytest.approx(1.0)


# Composition and reversibility.


def test_composition_of_identity_edit_is_zero():
    x = _images()
    result = composition(lambda images: images.clone(), x)
    assert sorted(result) == [1, 10]
    for k in (1, 10):
        assert result[k]["mae_255"] == 0.0
        assert result[k]["ssim"] == pytest.approx(1.0)


def test_composition_of_drifting_edit_grows_linearly():
    x = _images()
    calls = []

    def drift(images):
        calls.append(1)
        return images + 1 / 255

    result = composition(drift, x, cycles=(1, 3, 10))
    assert len(calls) == 10
    for k in (1, 3, 10):
        assert result[k]["mae_255"] == pytest.approx(k, abs=1e-3)
    assert result[10]["ssim"] < result[1]["ssim"] < 1.0


def test_composition_errors():
    x = _images()
    with pytest.raises(ValueError, match="cycles"):
        composition(lambda images: images, x, cycles=(0,))
    with pytest.raises(ValueError, match="edit_fn must return"):
        composition(lambda images: images[:1], x)


def test_reversibility_of_exact_and_lossy_round_trips():
    x = _images()
    exact = reversibility(lambda images: images + 5 / 255, lambda images: images - 5 / 255, x)
    assert exact["mae_255"] == pytest.approx(0.0, abs=1e-3)
    assert exact["ssim"] == pytest.approx(1.0, abs=1e-6)
    lossy = reversibility(lambda images: images + 5 / 255, lambda images: images - 3 / 255, x)
    assert lossy["mae_255"] == pytest.approx(2.0, abs=1e-3)
    with pytest.raises(ValueError, match="backward_fn"):
        reversibility(lambda images: images, lambda images: images * 3, x + 0.3)


# Effectiveness.


def test_effectiveness_with_planted_errors():
    target = torch.tensor([0] * 25 + [1] * 25)
    predicted = target.clone()
    predicted[[0, 1, 2, 3]] = 1  # four zeros read as one
    predicted[[25, 26, 27]] = 0  # three ones read as zero
    thickness_true = torch.linspace(1.0, 5.0, 50)
    thickness_pred = thickness_true + torch.tensor([0.5, -0.5] * 25)
    result = effectiveness(
        {"bar": predicted, "thickness": thickness_pred, "unused": target},
        {"bar": target, "thickness": thickness_true},
        {"bar": True, "thickness": False},
    )
    assert result["bar"]["accuracy"] == pytest.approx(43 / 50)
    # class 0: TP 21, FP 3, FN 4; class 1: TP 22, FP 4, FN 3.
    assert result["bar"]["f1_macro"] == pytest.approx((42 / 49 + 44 / 51) / 2)
    assert result["bar"]["n"] == 50
    assert result["thickness"]["mae"] == pytest.approx(0.5, abs=1e-6)
    assert set(result) == {"bar", "thickness"}


def test_macro_f1_counts_classes_predicted_but_absent():
    target = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    predicted = np.array([0, 2, 1, 1, 0, 0, 1, 2])
    # class 0: TP 2, FP 1, FN 2 -> 4/7; class 1: TP 3, FP 0, FN 1 -> 6/7; class 2: TP 0 -> 0.
    assert macro_f1(predicted, target) == pytest.approx((4 / 7 + 6 / 7 + 0) / 3)
    assert macro_f1(predicted, target) == pytest.approx(f1_score(target, predicted, average="macro"))


def test_effectiveness_reads_kinds_from_a_schema():
    schema = SimpleNamespace(
        factors=[SimpleNamespace(name="color", kind="categorical"), SimpleNamespace(name="size", kind="continuous")]
    )
    result = effectiveness(
        {"color": torch.tensor([0, 1, 2]), "size": torch.tensor([1.0, 2.0, 3.0])},
        {"color": torch.tensor([0, 1, 1]), "size": torch.tensor([1.0, 2.0, 5.0])},
        schema,
    )
    assert result["color"]["accuracy"] == pytest.approx(2 / 3)
    assert result["size"]["mae"] == pytest.approx(2 / 3)


def test_effectiveness_errors_name_the_factor():
    with pytest.raises(ValueError, match="'bar' has a target but no prediction"):
        effectiveness({}, {"bar": torch.zeros(3)}, {"bar": True})
    with pytest.raises(ValueError, match="'bar' is not described"):
        effectiveness({"bar": torch.zeros(3)}, {"bar": torch.zeros(3)}, {})
    with pytest.raises(ValueError, match="same length"):
        effectiveness({"bar": torch.zeros(2)}, {"bar": torch.zeros(3)}, {"bar": True})
    bad_schema = SimpleNamespace(factors=[SimpleNamespace(name="bar", kind="ordinal")])
    with pytest.raises(ValueError, match="'bar' has kind 'ordinal'"):
        effectiveness({"bar": torch.zeros(3)}, {"bar": torch.zeros(3)}, bad_schema)


# Minimality.


def test_diagonal_gaussian_kl_hand_value():
    # KL(N(0, 1) || N(1, 2)) = 1/2 (log 2 + (1 + 1) / 2 - 1) = log(2) / 2; a second, identical dimension adds 0.
    mu_p, logvar_p = torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, -1.0]])
    mu_q, logvar_q = torch.tensor([[1.0, 3.0]]), torch.tensor([[math.log(2.0), -1.0]])
    assert diagonal_gaussian_kl(mu_p, logvar_p, mu_q, logvar_q).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert diagonal_gaussian_kl(mu_p, logvar_p, mu_p, logvar_p).item() == 0.0


def test_diagonal_gaussian_kl_matches_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    mu_p, mu_q = torch.randn(3, generator=generator).double(), torch.randn(3, generator=generator).double()
    logvar_p = torch.tensor([0.3, -0.5, 0.1]).double()
    logvar_q = torch.tensor([-0.2, 0.4, 0.0]).double()
    p = torch.distributions.Normal(mu_p, torch.exp(0.5 * logvar_p))
    q = torch.distributions.Normal(mu_q, torch.exp(0.5 * logvar_q))
    torch.manual_seed(0)
    z = p.sample((400_000,))
    log_ratio = (p.log_prob(z) - q.log_prob(z)).sum(dim=-1)
    estimate, stderr = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(len(z))
    closed_form = diagonal_gaussian_kl(mu_p, logvar_p, mu_q, logvar_q).item()
    assert abs(closed_form - estimate) < 4 * stderr
    assert closed_form != pytest.approx(diagonal_gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).item(), abs=1e-3)


def test_pairwise_kl_matches_elementwise():
    generator = torch.Generator().manual_seed(2)
    mu_p, logvar_p = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    mu_q, logvar_q = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    matrix = pairwise_diagonal_gaussian_kl(mu_p, logvar_p, mu_q, logvar_q)
    assert matrix.shape == (4, 6)
    assert torch.allclose(matrix[2, 5], diagonal_gaussian_kl(mu_p[2], logvar_p[2], mu_q[5], logvar_q[5]))


def _unit(mus: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.tensor(mus, dtype=torch.float64)[:, None]
    return mu, torch.zeros_like(mu)


def test_cld_hand_computed():
    # Unit variances in one dimension: KL = (mu_a - mu_b)^2 / 2.
    factual, counterfactual = _unit([0.0, 0.0]), _unit([1.0, 0.1])
    reference = _unit([1.5, 2.0, 3.0, 4.0, 0.5, -2.0, 3.0])
    reference_labels = torch.tensor([1, 1, 1, 1, 0, 0, 0])
    result = cld(factual, counterfactual, reference, reference_labels, torch.tensor([0, 0]), torch.tensor([1, 1]))
    # Pair 0: d = 0.5; S_cf = {0.125, 0.5, 2, 4.5} -> P(S_cf <= d) = 1/2; S_f = {0.125, 2, 4.5} -> P(S_f >= d) = 2/3.
    # Pair 1: d = 0.005; S_cf = {0.98, 1.805, 4.205, 7.605} -> 0; S_f as above -> 1.
    assert torch.allclose(result["divergence"], torch.tensor([0.5, 0.005]).double())
    assert torch.allclose(result["p_cf"], torch.tensor([0.5, 0.0]).double())
    assert torch.allclose(result["p_f"], torch.tensor([2 / 3, 1.0]).double())
    expected = [math.log(0.8 * math.exp(0.5) + 0.2 * math.exp(2 / 3)), math.log(0.8 + 0.2 * math.e)]
    assert torch.allclose(result["cld"], torch.tensor(expected).double())


def test_cld_uses_the_published_argument_order():
    # Variances differ, so the direction of each KL matters: d, S_cf and S_f all put the judged image first.
    factual = (torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    counterfactual = (torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]]))
    reference = (torch.tensor([[1.0], [0.0]]), torch.tensor([[math.log(0.25)], [math.log(9.0)]]))
    labels = torch.tensor([1, 0])
    result = cld(factual, counterfactual, reference, labels, torch.tensor([0]), torch.tensor([1]))
    d = 0.5 * (0 - math.log(4) + 4 + 1 - 1)  # KL(N(1, 4) || N(0, 1)) ~ 1.307; reversed it would be ~0.443
    s_cf = 0.5 * (math.log(0.25) - math.log(4) + 16 - 1)  # KL(N(1, 4) || N(1, 1/4)) ~ 6.11 > d; reversed ~0.92
    s_f = 0.5 * (math.log(9) + 1 / 9 - 1)  # KL(N(0, 1) || N(0, 9)) ~ 0.654 < d; reversed ~2.90
    assert result["divergence"].item() == pytest.approx(d)
    assert s_cf > d > s_f
    assert result["p_cf"].item() == 0.0
    assert result["p_f"].item() == 0.0
    assert result["cld"].item() == pytest.approx(0.0, abs=1e-12)


def test_cld_requires_references_for_every_class():
    factual, counterfactual = _unit([0.0]), _unit([1.0])
    with pytest.raises(ValueError, match=r"counterfactual class \['2'\]"):
        cld(factual, counterfactual, _unit([0.5]), torch.tensor([0]), torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="weight"):
        cld(factual, counterfactual, _unit([0.5]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), 1.5)


# Realism.


def _whitened(n: int, dim: int, seed: int) -> np.ndarray:
    """A sample whose mean is exactly 0 and whose covariance (N - 1 denominator) is exactly I."""
    z = np.random.default_rng(seed).normal(size=(n, dim))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    return z @ np.linalg.inv(chol).T


def test_fid_of_two_gaussians_with_known_distance():
    x, y = _whitened(400, 4, 0), _whitened(300, 4, 1)
    m = np.array([1.0, -2.0, 0.5, 0.0])
    assert fid(x, y + m) == pytest.approx(float(m @ m), abs=1e-8)
    assert fid(0.5 * x, 2.0 * y) == pytest.approx(4 * (0.5 - 2.0) ** 2, abs=1e-8)
    assert fid(torch.from_numpy(x), torch.from_numpy(3 * y + m)) == pytest.approx(m @ m + 4 * 4, abs=1e-8)


def test_fid_of_identical_sets_is_zero():
    a = np.random.default_rng(3).normal(size=(200, 8)) @ np.random.default_rng(4).normal(size=(8, 8))
    assert abs(fid(a, a)) < 1e-6


def test_fid_errors():
    with pytest.raises(ValueError, match="same width"):
        fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid(np.zeros((1, 3)), np.zeros((5, 3)))


def test_kid_of_point_masses_is_hand_computed():
    # k(x, y) = (x y + 1)^3 in one dimension: MMD^2 = k(0, 0) + k(1, 1) - 2 k(0, 1) = 1 + 8 - 2 = 7.
    result = kid(np.zeros((10, 1)), np.ones((12, 1)), subsets=3, subset_size=5)
    assert result["kid"] == pytest.approx(7.0)
    assert result["kid_std"] == pytest.approx(0.0)


def test_kid_matches_a_direct_double_sum():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(7, 3))

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    within_y = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    across = sum(k(x[i], y[j]) for i in range(7) for j in range(7)) / 49
    assert kid(x, y, subsets=2, subset_size=7)["kid"] == pytest.approx(within_x + within_y - 2 * across)


def test_kid_separates_equal_from_shifted_distributions():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
    same = kid(a, b, subsets=20, subset_size=200)["kid"]
    shifted = kid(a, b + 1.0, subsets=20, subset_size=200)["kid"]
    assert abs(same) < 0.05
    assert shifted > 1.0


class _ChannelMeans(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        assert not self.training
        return self.scale * images.mean(dim=(2, 3))


def test_features_runs_in_eval_mode_in_chunks():
    model = _ChannelMeans()
    images = torch.stack([torch.full((2, 4, 4), v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)])
    out = features(images, model, batch_size=2)
    assert out.shape == (5, 2)
    assert torch.allclose(out[:, 0], torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert model.training


class _FakeInception(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features or x.dtype != torch.uint8:
            return torch.zeros(x.shape[0], 1)
        return x.float().mean(dim=(2, 3))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_load_inception_wraps_a_torchscript_file(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    model = load_inception(path)
    assert isinstance(model, InceptionFeatures)
    out = features(torch.full((2, 1, 8, 8), 0.5), model)
    assert torch.equal(out, torch.full((2, 3), 128.0))
    with pytest.raises(ValueError, match="not found"):
        load_inception(tmp_path / "missing.pt")


@pytest.mark.skipif("CF_DIFFUSION_INCEPTION" not in os.environ, reason="set CF_DIFFUSION_INCEPTION to a local .pt")
def test_real_inception_gives_2048_features():
    model = load_inception(os.environ["CF_DIFFUSION_INCEPTION"])
    out = features(_images(batch=2, size=32), model)
    assert out.shape == (2, 2048)
    assert torch.isfinite(out).all()


# Counterfactual consistency.


def test_preservation_rate():
    factual = {"color": [0, 1, 1, 0], "digit": [3, 4, 5, 6], "thickness": [1.0, 2.0, 3.0, 4.0]}
    edited = {"color": [0, 1, 0, 0], "digit": [3, 4, 5, 6], "thickness": [1.05, 2.5, 3.0, 3.95]}
    result = preservation_rate(factual, edited, ["color", "digit", "thickness"], atol={"thickness": 0.1})
    assert result["per_factor"] == {"color": 0.75, "digit": 1.0, "thickness": 0.75}
    assert result["all"] == 0.5  # rows 1 (thickness) and 2 (color) fail
    with pytest.raises(ValueError, match="counterfactual has no factor 'size'"):
        preservation_rate({"size": [0]}, {}, ["size"])


def test_counterfactual_probability_with_binomial_error():
    # P(bar_{size=1} = 1 | size=0, bar=1): rows 0, 1 and 2 match the evidence; two of their edits show a bar.
    factual = {"size": torch.tensor([0, 0, 0, 0, 1, 1]), "bar": torch.tensor([1, 1, 1, 0, 1, 1])}
    edited = {"size": torch.ones(6, dtype=torch.long), "bar": torch.tensor([1, 0, 1, 1, 0, 0])}
    result = counterfactual_probability(factual, edited, evidence={"size": 0, "bar": 1}, target={"bar": 1})
    assert result["n"] == 3
    assert result["probability"] == pytest.approx(2 / 3)
    assert result["stderr"] == pytest.approx(math.sqrt(2 / 9 / 3))
    with pytest.raises(ValueError, match="no row of factual matches the evidence"):
        counterfactual_probability(factual, edited, evidence={"size": 2}, target={"bar": 1})


def test_probability_in_bounds():
    assert probability_in_bounds(0.4, 0.3, 0.5)
    assert not probability_in_bounds(0.55, 0.3, 0.5)
    assert probability_in_bounds(0.55, 0.3, 0.5, tol=0.06)
    assert probability_in_bounds(0.3, 0.3, 0.3)
    with pytest.raises(ValueError, match="low must be <= high"):
        probability_in_bounds(0.4, 0.6, 0.5)
    with pytest.raises(ValueError, match="estimate must be a probability"):
        probability_in_bounds(1.2, 0.3, 0.5)
