"""Identification and sharp bounds of an edit's factors: the stored counts, `identify_edits`, the pipeline's report."""

import logging
import shutil

import numpy as np
import pytest
import torch

from cf_diffusion import CausalGraph, Factor, FactorSchema, NeuralCausalModel, counterfactual_bounds
from cf_diffusion.data import get_dataset
from cf_diffusion.identification import format_identification, identify_edits
from cf_diffusion.models import load_examples, load_pipeline, model_path
from cf_diffusion.scm import bounds as bounds_module
from cf_diffusion.scm.counts import COUNTS_FILE, CountsUnavailable, ObservationalCounts

FACTUAL = {"size": ["small"], "color": ["red"], "bar": ["1"], "digit": ["3"]}


@pytest.fixture(scope="module")
def shipped_scm():
    return NeuralCausalModel.from_pretrained(model_path("default") / "scm")


def test_shipped_counts_are_the_recipes_observational_rows(shipped_scm):
    rows = get_dataset("colored-bars").sample(20000, seed=0, resolution=0).factors  # configs/colored_bars.yaml
    expected = ObservationalCounts.from_table(shipped_scm.schema, rows)
    stored = shipped_scm.observational_counts
    assert shipped_scm.counts_unavailable is None
    np.testing.assert_array_equal(stored.configs, expected.configs)
    np.testing.assert_array_equal(stored.counts, expected.counts)


def test_size_edit_leaves_bar_unidentified_with_the_lp_and_closed_form_bounds(shipped_scm):
    (entry,) = identify_edits(shipped_scm, FACTUAL, {"size": "large"})
    assert list(entry.factors) == ["size", "bar"] and set(entry.kept) == {"digit", "color"}
    assert entry.factors["size"].identified and entry.factors["size"].probabilities["large"] == 1.0
    bar = entry.factors["bar"]
    assert not bar.identified and bar.inside_bounds
    counts = shipped_scm.observational_counts
    rows = {name: np.repeat(column, counts.counts) for name, column in counts.columns().items()}
    rows = shipped_scm.schema.from_values({name: torch.as_tensor(column) for name, column in rows.items()})
    evidence = {"size": "small", "color": "red", "bar": "1"}
    size, color, outcome = (np.asarray(rows[name]) for name in ("size", "color", "bar"))
    red = color == "red"
    p_small = np.mean(outcome[red & (size == "small")] == "1")
    p_large = np.mean(outcome[red & (size == "large")] == "1")
    closed_form = {"1": (max(0.0, p_small + p_large - 1) / p_small, min(p_small, p_large) / p_small)}
    closed_form["0"] = (1 - closed_form["1"][1], 1 - closed_form["1"][0])
    for level in ("0", "1"):
        lp = counterfactual_bounds(
            shipped_scm.graph, rows, {"bar": level}, {"size": "large"}, evidence, schema=shipped_scm.schema
        )
        assert bar.bounds[level].low == pytest.approx(lp.low, abs=1e-6)
        assert bar.bounds[level].high == pytest.approx(lp.high, abs=1e-6)
        assert bar.bounds[level] == pytest.approx(closed_form[level], abs=1e-6)
        assert bar.bounds[level].high - bar.bounds[level].low > 0.1
    table = format_identification(entry, {"size": "large", "bar": "1"})
    assert "kept: color, digit" in table.replace("digit, color", "color, digit") and "bar" in table


def test_lp_solutions_are_cached_per_pattern(shipped_scm, monkeypatch):
    identify_edits(shipped_scm, FACTUAL, {"size": "large"})
    calls = []
    solve = bounds_module.counterfactual_bounds

    def counting(*args, **kwargs):
        calls.append(args)
        return solve(*args, **kwargs)

    monkeypatch.setattr("cf_diffusion.identification.counterfactual_bounds", counting)
    two = {name: column * 2 for name, column in FACTUAL.items()}
    entries = identify_edits(shipped_scm, two, {"size": "large"}, num_counterfactuals=3)
    assert len(entries) == 6 and not calls  # both images have the pattern solved above
    identify_edits(shipped_scm, {**FACTUAL, "bar": ["0"]}, {"size": "large"})
    assert len(calls) == 2  # a new pattern: one program per level of bar


def test_deterministic_mechanism_without_confounding_is_identified():
    schema = FactorSchema([Factor.binary("x"), Factor.binary("y")])
    scm = NeuralCausalModel(graph=CausalGraph.parse("x -> y"), schema=schema, hidden_dim=16)
    x = torch.randint(0, 2, (512,), generator=torch.Generator().manual_seed(0))
    scm.fit({"x": x, "y": x}, num_steps=300, batch_size=256, lr=3e-2, show_progress=False)
    (entry,) = identify_edits(scm, {"x": ["0"], "y": ["0"]}, {"x": "1"})
    y = entry.factors["y"]
    assert y.identified and y.probabilities == {"0": 0.0, "1": 1.0} and y.inside_bounds
    assert (y.bounds["1"].low, y.bounds["1"].high) == pytest.approx((1.0, 1.0), abs=1e-9)


def test_continuous_descendant_reports_its_interval_against_the_resolution():
    scm = NeuralCausalModel.from_pretrained(model_path("morpho") / "scm")
    factual = {"digit": ["4"], "thickness": [2.0], "intensity": [150.0]}
    (entry,) = identify_edits(scm, factual, {"thickness": 4.0})
    intensity = entry.factors["intensity"]
    assert entry.kept == ("digit",) and intensity.probabilities is None
    assert intensity.interval[0] <= intensity.median <= intensity.interval[1]
    assert intensity.resolution == pytest.approx(0.01 * (255.0 - 64.0))
    assert intensity.identified == (intensity.interval[1] - intensity.interval[0] < intensity.resolution)


def test_counts_round_trip_through_save_and_load(tmp_path):
    schema = FactorSchema([Factor.binary("x"), Factor.continuous("z", 0.0, 1.0)])
    scm = NeuralCausalModel(graph=CausalGraph.parse("x -> z"), schema=schema, hidden_dim=8)
    scm.fit({"x": [0, 1, 1, 0], "z": [0.05, 0.9, 1.0, 0.5]}, num_steps=1, show_progress=False)
    scm.save_pretrained(tmp_path)
    loaded = NeuralCausalModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.observational_counts.configs, [[0, 0], [0, 4], [1, 7]])
    np.testing.assert_array_equal(loaded.observational_counts.counts, [1, 1, 2])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda path: path.unlink(), "has no observational_counts"),
        (lambda path: path.write_bytes(b"\x00garbage"), "unreadable"),
        (lambda path: path.write_bytes(path.read_bytes()[:-40]), "unreadable"),
    ],
)
def test_missing_or_corrupted_counts_are_reported(tmp_path, damage, reason):
    folder = tmp_path / "scm"
    shutil.copytree(model_path("default") / "scm", folder)
    damage(folder / COUNTS_FILE)
    scm = NeuralCausalModel.from_pretrained(folder)
    assert scm.observational_counts is None and reason in scm.counts_unavailable


def test_counts_for_other_factors_are_refused(tmp_path, shipped_scm):
    other = FactorSchema([Factor.binary("bar"), Factor.categorical("size", ["small", "large"])])
    ObservationalCounts.from_table(other, {"bar": [0, 1], "size": [1, 1]}).save(tmp_path / COUNTS_FILE)
    with pytest.raises(CountsUnavailable, match="other factors"):
        ObservationalCounts.load(tmp_path / COUNTS_FILE, shipped_scm.schema)


def test_pipeline_without_counts_edits_and_warns_once(tmp_path, caplog):
    folder = tmp_path / "model"
    shutil.copytree(model_path("default"), folder)
    (folder / "scm" / COUNTS_FILE).unlink()
    pipe = load_pipeline(str(folder))
    example = load_examples()[0]
    kwargs = {"image": example["image"], "factors": {**example["factors"], "size": "small"}, "num_inference_steps": 2}
    with caplog.at_level(logging.WARNING, logger="cf_diffusion.identification"):
        first = pipe(**kwargs, interventions={"size": "large"})
        pipe(**kwargs, interventions={"size": "large"})
    warned = [record.getMessage() for record in caplog.records if record.name == "cf_diffusion.identification"]
    assert len(warned) == 1 and "\n" not in warned[0] and "bounds are unavailable" in warned[0]
    assert COUNTS_FILE in warned[0]
    bar = first.identification[0].factors["bar"]
    assert len(first.images) == 1 and not bar.identified and bar.bounds is None and "unavailable" in bar.note


def test_pipeline_reports_identification_per_output_image():
    pipe = load_pipeline("default")
    example = load_examples()[0]
    factors = {**example["factors"], "size": "small", "color": "red", "bar": "1"}
    out = pipe(
        image=example["image"],
        factors=factors,
        interventions={"size": "large"},
        num_inference_steps=2,
        num_counterfactuals=2,
        output_type="np",
    )
    assert len(out.identification) == 2 and len(out.to_tuple()) == 4
    (expected,) = identify_edits(pipe.scm, {name: [value] for name, value in factors.items()}, {"size": "large"})
    assert out.identification[0] == expected and not expected.factors["bar"].identified


def test_cli_edit_prints_the_table_and_writes_the_counterfactual_grid(tmp_path, capsys):
    from PIL import Image

    from cf_diffusion.cli import main

    example = tmp_path / "in.png"
    load_examples()[0]["image"].save(example)
    out = tmp_path / "out.png"
    argv = ["edit", "--image", str(example), "--factors", "size=small,color=red,bar=1,digit=1", "--do", "size=large"]
    assert main([*argv, "--steps", "2", "--out", str(out), "--num-counterfactuals", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    bar = next(line.split() for line in printed if line.startswith("bar "))
    assert bar[:3] == ["bar", "descendant", "no"] and "kept: digit, color" in printed
    grid = Image.open(tmp_path / "out_counterfactuals.png")
    assert grid.width >= 3 * Image.open(out).width


def test_demo_captions_mark_an_unidentified_factor(shipped_scm):
    from cf_diffusion.demo import _caption

    (entry,) = identify_edits(shipped_scm, FACTUAL, {"size": "large"})
    row = {"digit": "3", "size": "large", "color": "red", "bar": "0"}
    caption = _caption(row, {**row, "size": "small", "bar": "1"}, entry)
    low, high = entry.factors["bar"].bounds["0"]
    p = entry.factors["bar"].probabilities["0"]
    assert caption.splitlines() == ["digit=3 size=large*", "color=red", f"bar=0? p={p:.2f} [{low:.2f}, {high:.2f}]"]


def test_occurrences_count_the_observed_rows_of_each_configuration():
    schema = FactorSchema([Factor.binary("x"), Factor.continuous("z", 0.0, 1.0)])
    counts = ObservationalCounts.from_table(schema, {"x": [0, 1, 1, 0, 1], "z": [0.05, 0.9, 0.95, 0.5, 0.1]})
    occurrences = counts.occurrences({"x": [1, 1, 0], "z": [0.99, 0.5, 0.01]})
    np.testing.assert_array_equal(occurrences, [2, 0, 1])  # z bins of 1/8: 0.9 and 0.95 share the last one


def test_edits_outside_the_training_rows_are_reported_as_extrapolation():
    scm = NeuralCausalModel.from_pretrained(model_path("morphomnist") / "scm")
    factual = {"digit": ["3", "3"], "thickness": [1.8, 3.5], "intensity": [100.0, 230.0]}
    thin_bright, thick_bright = identify_edits(scm, factual, {"intensity": 220.0})
    assert thin_bright.observed == 0.0 and thick_bright.observed == 1.0  # no thin digit is that bright in the data
    note = format_identification(thin_bright, {"digit": "3", "thickness": 1.8, "intensity": 220.0})
    assert "0% of the causal model's counterfactual factor vectors" in note and "extrapolates" in note
    assert "extrapolates" not in format_identification(
        thick_bright, {"digit": "3", "thickness": 3.5, "intensity": 220.0}
    )
    (null,) = identify_edits(scm, {name: values[:1] for name, values in factual.items()}, None)
    assert null.observed is None
