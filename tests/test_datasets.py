"""Procedural datasets: true SCMs (joint distributions computed by hand), true counterfactuals, rendering, writing."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cf_diffusion.data import (
    LabeledImageDataset,
    Morpho,
    available_datasets,
    get_dataset,
    load_ground_truth,
    make_dataset,
    mean_stroke_thickness,
    median_foreground_intensity,
)
from cf_diffusion.data.make import png_bytes

N = 20_000
TOL = 0.025  # about 3.5 standard errors of a proportion near 0.5 over 20,000 rows


def _morphomnist_folder() -> Path | None:
    candidates = [os.environ.get("CF_DIFFUSION_MORPHOMNIST")]
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data" / "morphomnist"]
    candidates += [Path(__file__).resolve().parents[1] / "../shared/data/morphomnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "morpho.csv").is_file():
            return Path(candidate)
    return None


def test_registry():
    assert available_datasets() == ["colored-bars", "colored-bars-frontdoor", "morpho", "pendulum"]
    for name in available_datasets():
        dataset = get_dataset(name)
        assert dataset.name == name
        assert set(dataset.graph.nodes) == set(dataset.schema.names)
    with pytest.raises(ValueError, match="colored-bars"):
        get_dataset("no-such-set")


def test_colored_bars_backdoor_joint():
    sample = get_dataset("colored-bars").sample(N, seed=1, resolution=0)
    assert sample.images is None
    large = sample.factors["size"] == 1
    red = sample.factors["color"] == 0
    bar = sample.factors["bar"] == 1
    # P(large) = P(red) = 0.5; P(large, red) = 0.5 * 0.8^2 + 0.5 * 0.2^2 = 0.34; correlation 0.09 / 0.25 = 0.36.
    assert large.mean() == pytest.approx(0.5, abs=TOL)
    assert red.mean() == pytest.approx(0.5, abs=TOL)
    assert (large & red).mean() == pytest.approx(0.34, abs=TOL)
    assert np.corrcoef(large, red)[0, 1] == pytest.approx(0.36, abs=0.04)
    # P(bar = 1 | size, color) = 0.8 - 0.35 [large] - 0.35 [red].
    for is_large, is_red, expected in [(0, 0, 0.8), (1, 0, 0.45), (0, 1, 0.45), (1, 1, 0.1)]:
        rows = (large == is_large) & (red == is_red)
        assert bar[rows].mean() == pytest.approx(expected, abs=0.04)
    counts = np.bincount(sample.factors["digit"], minlength=10) / N
    np.testing.assert_allclose(counts, 0.1, atol=0.015)


def test_colored_bars_frontdoor_joint():
    dataset = get_dataset("colored-bars-frontdoor")
    sample = dataset.sample(N, seed=2, resolution=0)
    large, red, bar = sample.factors["size"] == 1, sample.factors["color"] == 0, sample.factors["bar"] == 1
    assert red.mean() == pytest.approx(0.5, abs=TOL)
    assert large[red].mean() == pytest.approx(0.75, abs=0.03)
    assert large[~red].mean() == pytest.approx(0.25, abs=0.03)
    # P(U_c | red) = 0.8, so P(bar | size, color) = 0.8 - 0.5 [large] - 0.25 P(U_c | color).
    for is_large, is_red, expected in [(1, 1, 0.1), (0, 1, 0.6), (1, 0, 0.25), (0, 0, 0.75)]:
        rows = (large == is_large) & (red == is_red)
        assert bar[rows].mean() == pytest.approx(expected, abs=0.04)
    # Under do(size = large) the confounder is unaffected: P(bar) = 0.3 - 0.25 * 0.5.
    intervened = dataset.sample(N, seed=3, resolution=0, interventions={"size": "large"})
    assert (intervened.factors["size"] == 1).all()
    assert intervened.factors["bar"].mean() == pytest.approx(0.175, abs=TOL)


def test_morpho_joint():
    sample = get_dataset("morpho").sample(N, seed=4, resolution=0)
    thickness, intensity = sample.factors["thickness"], sample.factors["intensity"]
    # thickness = 0.5 + Gamma(10, rate 5): mean 2.5, variance 10 / 25.
    assert thickness.mean() == pytest.approx(2.5, abs=0.02)
    assert thickness.var() == pytest.approx(0.4, abs=0.03)
    # logit((i - 64) / 191) = 2 (t - 2.5) + Normal(0, 0.5).
    p = (intensity - 64) / 191
    residual = np.log(p / (1 - p)) - 2 * (thickness - 2.5)
    assert residual.mean() == pytest.approx(0.0, abs=0.02)
    assert residual.std() == pytest.approx(0.5, abs=0.02)
    assert intensity.min() > 64 and intensity.max() < 255


def test_pendulum_joint():
    sample = get_dataset("pendulum").sample(N, seed=5, resolution=0)
    theta_deg, phi_deg = sample.factors["pendulum_angle"], sample.factors["light_angle"]
    assert theta_deg.min() >= -36 and theta_deg.max() < 39.6 and theta_deg.mean() == pytest.approx(1.8, abs=0.5)
    assert phi_deg.min() >= 54 and phi_deg.max() < 133.2 and phi_deg.mean() == pytest.approx(93.6, abs=0.6)
    theta, phi = np.deg2rad(theta_deg), np.deg2rad(phi_deg)

    def shadow(x, y):  # the benchmark's formula, as written in the issue
        return (-0.5 - (y - x * np.tan(phi))) / np.tan(phi)

    pivot = shadow(10.0, 10.5)
    tip = shadow(10 + 9.5 * np.sin(theta), 10.5 - 9.5 * np.cos(theta))
    position_noise = (sample.factors["shadow_position"] - (pivot + tip) / 2) / 0.2
    length_noise = (sample.factors["shadow_length"] - np.maximum(3, np.abs(pivot - tip))) / 0.2
    for noise in (position_noise, length_noise):
        assert noise.mean() == pytest.approx(0.0, abs=0.03)
        assert noise.std() == pytest.approx(1.0, abs=0.03)
    assert np.corrcoef(position_noise, length_noise)[0, 1] == pytest.approx(0.0, abs=0.03)


def test_colored_bars_counterfactual_changes_only_the_bar_band():
    dataset = get_dataset("colored-bars")
    factual = dataset.sample(64, seed=6, resolution=32)
    flipped = 1 - factual.factors["bar"]
    counterfactual = dataset.counterfactual(factual.exogenous, {"bar": flipped}, resolution=32)
    for name in ("digit", "size", "color"):
        np.testing.assert_array_equal(counterfactual.factors[name], factual.factors[name])
    band = np.zeros((32, 32), dtype=bool)
    band[0:5, 5:27] = True  # rows/columns of y in [-0.9, -0.7], x in [-0.62, 0.62], anti-aliased edges included
    difference = np.abs(counterfactual.images.astype(int) - factual.images.astype(int)).sum(-1)
    assert (difference[:, ~band] == 0).all()
    assert (difference[:, band].sum(1) > 0).all()


def test_colored_bars_counterfactual_of_color_keeps_non_descendants():
    dataset = get_dataset("colored-bars")
    factual = dataset.sample(2000, seed=7, resolution=0)
    counterfactual = dataset.counterfactual(factual.exogenous, {"color": "green"}, resolution=0)
    for name in ("digit", "size"):  # non-descendants of color (size is confounded, not caused)
        np.testing.assert_array_equal(counterfactual.factors[name], factual.factors[name])
    was_red = factual.factors["color"] == 0
    # Same u_bar: a red digit turned green may only gain its bar (p_bar rises by 0.35), never lose it.
    assert (counterfactual.factors["bar"][was_red] >= factual.factors["bar"][was_red]).all()
    assert (counterfactual.factors["bar"] != factual.factors["bar"])[was_red].mean() == pytest.approx(0.35, abs=0.05)
    np.testing.assert_array_equal(counterfactual.factors["bar"][~was_red], factual.factors["bar"][~was_red])


def test_morpho_counterfactuals():
    dataset = get_dataset("morpho")
    factual = dataset.sample(32, seed=8, resolution=32)
    thick = dataset.counterfactual(factual.exogenous, {"thickness": 4.0}, resolution=32)
    np.testing.assert_array_equal(thick.factors["digit"], factual.factors["digit"])
    expected = 64 + 191 / (1 + np.exp(-(2 * (4.0 - 2.5) + 0.5 * factual.exogenous["u_intensity"])))
    np.testing.assert_allclose(thick.factors["intensity"], expected, rtol=1e-6)
    brighter = dataset.counterfactual(factual.exogenous, {"intensity": 180.0}, resolution=32)
    np.testing.assert_allclose(brighter.factors["thickness"], factual.factors["thickness"])
    # Same stroke and image noise: the background stays black (up to rounding of faint edge pixels) and the
    # measured thickness is unchanged.
    assert (brighter.images[factual.images == 0] <= 2).all() and (factual.images[brighter.images == 0] <= 2).all()
    assert (brighter.images == 0).mean() > 0.6
    np.testing.assert_allclose(
        Morpho.measure(brighter.images)["thickness"], Morpho.measure(factual.images)["thickness"], atol=0.05
    )
    np.testing.assert_allclose(median_foreground_intensity(brighter.images), 180.0, atol=3.0)  # uint8 rounding


def test_pendulum_counterfactuals_keep_unaffected_regions():
    dataset = get_dataset("pendulum")
    r = 64
    factual = dataset.sample(16, seed=9, resolution=r)
    swung = dataset.counterfactual(factual.exogenous, {"pendulum_angle": 20.0}, resolution=r)
    np.testing.assert_array_equal(swung.factors["light_angle"], factual.factors["light_angle"])
    top = int(10 / 22 * r) - 1  # rows with y > 11: the light and background, no pendulum, no shadow
    np.testing.assert_array_equal(swung.images[:, :top], factual.images[:, :top])
    assert (swung.images != factual.images).any(axis=(1, 2, 3)).sum() >= 15
    longer = dataset.counterfactual(factual.exogenous, {"shadow_length": 10.0}, resolution=r)
    for name in ("pendulum_angle", "light_angle", "shadow_position"):
        np.testing.assert_array_equal(longer.factors[name], factual.factors[name])
    ground = int(21 / 22 * r) - 2  # rows with y > 0 (minus an anti-aliasing row): above the shadow band
    np.testing.assert_array_equal(longer.images[:, :ground], factual.images[:, :ground])
    assert (longer.images[:, ground:] != factual.images[:, ground:]).any(axis=(1, 2, 3)).all()


@pytest.mark.parametrize("name", available_datasets())
def test_render_resolutions_agree(name):
    dataset = get_dataset(name)
    rows = dataset.sample(3, seed=10, resolution=0)
    small = dataset.render(rows.factors, rows.exogenous, 32).astype(np.float32)
    large = torch.from_numpy(dataset.render(rows.factors, rows.exogenous, 1024)).permute(0, 3, 1, 2).float()
    down = F.avg_pool2d(large, 32).permute(0, 2, 3, 1).numpy()
    assert small.shape == down.shape == (3, 32, 32, 3)
    assert np.abs(small - down).mean() < 1.5  # grey levels out of 255
    assert small.std() > 10  # the images are not blank


def test_morpho_measurements_recover_the_factors():
    dataset = Morpho()
    sample = dataset.sample(300, seed=11, resolution=32)
    measured = dataset.measure(sample.images)
    assert np.corrcoef(measured["thickness"], sample.factors["thickness"])[0, 1] >= 0.95
    assert np.corrcoef(measured["intensity"], sample.factors["intensity"])[0, 1] >= 0.95
    assert np.abs(measured["thickness"] - sample.factors["thickness"]).mean() < 0.35
    # A stroke of known width: a 6-pixel-wide bar measures 6.
    bar = np.zeros((1, 40, 40), dtype=np.uint8)
    bar[0, 5:35, 17:23] = 200
    assert mean_stroke_thickness(bar)[0] == pytest.approx(6.0, abs=0.5)
    assert median_foreground_intensity(bar)[0] == 200


def test_real_morphomnist_thickness_is_measured():
    folder = _morphomnist_folder()
    if folder is None:
        pytest.skip("no Morpho-MNIST files (set CF_DIFFUSION_MORPHOMNIST or put them in ../shared/data/morphomnist)")
    dataset = LabeledImageDataset(folder, channels=1, check_images="none")
    rows = range(1000)
    images = torch.stack([dataset[i]["pixel_values"][0] for i in rows])
    images = ((images + 1) * 127.5).round().numpy()
    labelled = np.asarray(dataset.factor_table()["thickness"])[: len(rows)]
    correlation = np.corrcoef(mean_stroke_thickness(images), labelled)[0, 1]
    print(f"real Morpho-MNIST: measured vs labelled thickness correlation {correlation:.3f} over {len(rows)} images")
    intensity = np.corrcoef(median_foreground_intensity(images), dataset.factor_table()["intensity"][:1000])[0, 1]
    print(f"real Morpho-MNIST: measured vs labelled intensity correlation {intensity:.3f}")
    assert correlation > 0.5
    assert intensity > 0.5


def test_make_dataset_layout_and_determinism(tmp_path):
    one = make_dataset("colored-bars", 40, 16, tmp_path / "one", seed=3, num_workers=1, show_progress=False)
    two = make_dataset("colored-bars", 40, 16, tmp_path / "two", seed=3, num_workers=2, show_progress=False)
    names = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert {"metadata.jsonl", "graph.yaml", "schema.json", "exogenous.safetensors", "dataset.json"} <= set(names)
    rows = [json.loads(line) for line in (one / "metadata.jsonl").read_text().splitlines()]
    expected = get_dataset("colored-bars").sample(40, seed=3, resolution=16)
    assert [row["file_name"] for row in rows] == [f"images/{i:08d}.png" for i in range(40)]
    assert [row["size"] for row in rows] == [["small", "large"][i] for i in expected.factors["size"]]
    assert [row["color"] for row in rows] == [["red", "green"][i] for i in expected.factors["color"]]
    for i in (0, 17, 39):
        np.testing.assert_array_equal(np.asarray(Image.open(one / rows[i]["file_name"])), expected.images[i])
    dataset, exogenous = load_ground_truth(one)
    counterfactual = dataset.counterfactual({k: v[:5] for k, v in exogenous.items()}, {"bar": 1}, resolution=16)
    assert (counterfactual.factors["bar"] == 1).all()
    np.testing.assert_array_equal(counterfactual.factors["digit"], expected.factors["digit"][:5])
    with pytest.raises(ValueError, match="not empty"):
        make_dataset("colored-bars", 4, 16, one, show_progress=False)
    with pytest.raises(ValueError, match="resolution"):
        make_dataset("colored-bars", 4, 3, tmp_path / "tiny", show_progress=False)


def test_make_dataset_continuous_factors_round_trip(tmp_path):
    out = make_dataset("pendulum", 6, 32, tmp_path / "p", seed=1, num_workers=1, show_progress=False)
    expected = get_dataset("pendulum").sample(6, seed=1, resolution=0)
    loaded = LabeledImageDataset(out)
    table = loaded.factor_table()
    for name in loaded.schema.names:
        np.testing.assert_array_equal(np.asarray(table[name]), expected.factors[name])  # JSON keeps every digit
    assert loaded[0]["pixel_values"].shape == (3, 32, 32)


def test_png_bytes_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(image)))), image)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(image.astype(np.float32))


def test_make_dataset_reads_as_hugging_face_imagefolder(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = make_dataset("colored-bars", 8, 16, tmp_path / "hf", seed=0, num_workers=1, show_progress=False)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(loaded) == 8
    assert {"image", "digit", "size", "color", "bar"} <= set(loaded.column_names)
    expected = get_dataset("colored-bars").sample(8, seed=0, resolution=16)
    by_name = {Path(row["image"].filename).name: row for row in loaded}
    np.testing.assert_array_equal(np.asarray(by_name["00000003.png"]["image"]), expected.images[3])


def test_pendulum_measurements_recover_the_factors():
    dataset = get_dataset("pendulum")
    sample = dataset.sample(64, seed=1, resolution=64)
    measured = dataset.measure(sample.images)
    error = {k: np.abs(measured[k] - np.asarray(sample.factors[k])) for k in measured}
    assert error["pendulum_angle"].max() < 0.5 and np.median(error["light_angle"]) < 0.5
    for name in ("shadow_position", "shadow_length"):  # a shadow cut by the frame edge reads a little short
        assert np.median(error[name]) < 0.02 and error[name].max() < 0.5, name
    # Moving the light moves the measured shadow as the structural equations do.
    moved = dataset.counterfactual(sample.exogenous, {"light_angle": 120.0}, resolution=64)
    np.testing.assert_allclose(
        dataset.measure(moved.images)["shadow_position"], moved.factors["shadow_position"], atol=0.05
    )
    with pytest.raises(ValueError, match=r"\[N, R, R, 3\]"):
        dataset.measure(sample.images[..., 0])
