"""`benchmarks/bench_edits.py` (the README's edit-quality figures) on tiny pipelines over procedural datasets, and the
scoring it shares with the evaluation harness: one definition of *kept*."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from pipeline_fixtures import procedural_pipeline

from cf_diffusion.data import get_dataset
from cf_diffusion.evaluation.interventions import shifted_values
from cf_diffusion.evaluation.readers import read_measured
from cf_diffusion.evaluation.scoring import keep_tolerances, preservation, take_rates

_spec = importlib.util.spec_from_file_location(
    "bench_edits", Path(__file__).parents[1] / "benchmarks" / "bench_edits.py"
)
bench_edits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_edits)

SETTINGS = bench_edits.EditSettings(num_inference_steps=2, guidance_scale=1.0, abduction="ddpm")


@pytest.fixture(scope="module")
def morpho_report():
    pipe = procedural_pipeline("morpho")
    return bench_edits.edit_report(pipe, get_dataset("morpho"), ["thickness", "digit"], num_rows=6, settings=SETTINGS)


def test_continuous_and_categorical_edits_are_scored(morpho_report):
    assert list(morpho_report) == [
        "none",
        "do(thickness)",
        "do(thickness), true image",
        "do(digit)",
        "do(digit), true image",
        "null",
    ]
    thickness = morpho_report["do(thickness)"]
    assert {"intervened", "descendants", "kept", "digit_kept", "scm_vs_truth", "truth_l1"} <= set(thickness)
    assert {"thickness_mae", "intensity_mae"} <= set(thickness)
    assert np.isnan(morpho_report["do(digit)"]["descendants"])  # the digit has no descendants
    for row in morpho_report.values():
        for key, value in row.items():
            if not np.isnan(value) and not key.endswith("_mae") and key != "truth_l1" and key != "null_edit_l1":
                assert 0.0 <= value <= 1.0, key
    # DDPM abduction replays the input exactly: the null edit is lossless up to the VAE round trip.
    assert morpho_report["null"]["null_edit_l1"] < 0.5


def test_floor_row_is_the_measurement_function_on_the_unedited_images(morpho_report):
    sample = get_dataset("morpho").sample(6, seed=12345, resolution=16)
    measured = get_dataset("morpho").measure(sample.images)
    for name in ("thickness", "intensity"):
        expected = np.abs(measured[name] - np.asarray(sample.factors[name])).mean()
        assert morpho_report["none"][f"{name}_mae"] == pytest.approx(expected)


def test_true_image_row_reads_the_true_counterfactual_against_the_true_factors(morpho_report):
    dataset = get_dataset("morpho")
    sample = dataset.sample(6, seed=12345, resolution=16)
    values = shifted_values(procedural_pipeline("morpho").schema["thickness"], np.asarray(sample.factors["thickness"]))
    truth = dataset.counterfactual(sample.exogenous, {"thickness": values}, resolution=16)
    measured = dataset.measure(truth.images)
    row = morpho_report["do(thickness), true image"]
    assert row["thickness_mae"] == pytest.approx(np.abs(measured["thickness"] - values).mean())
    assert row["intensity_mae"] == pytest.approx(np.abs(measured["intensity"] - truth.factors["intensity"]).mean())


def test_reader_prefers_the_measurement_function_for_continuous_factors():
    pipe = procedural_pipeline("morpho")
    dataset = get_dataset("morpho")
    sample = dataset.sample(4, seed=3, resolution=16)
    read = read_measured(pipe, dataset, sample.images.astype(np.float32) / 255.0)
    np.testing.assert_allclose(read["thickness"], dataset.measure(sample.images)["thickness"])
    assert read["digit"].shape == (4,)  # the untrained predictor reads the digit


def planted_readings() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Factual factors of four morpho rows and their readings: the digit of row 3 and the thickness of row 1 lost."""
    factual = {"digit": np.array([0, 1, 2, 3]), "thickness": np.array([1.0, 2.0, 3.0, 4.0])}
    read = {"digit": np.array([0, 1, 2, 0]), "thickness": np.array([1.5, 2.7, 3.0, 4.0])}
    factual["intensity"] = read["intensity"] = np.array([100.0, 150.0, 200.0, 250.0])
    return factual, read


def test_kept_counts_edits_that_keep_every_non_descendant():
    schema = get_dataset("morpho").schema
    factual, read = planted_readings()
    tolerance = keep_tolerances(schema, factual)["thickness"]
    assert tolerance == pytest.approx(0.5 * np.std([1.0, 2.0, 3.0, 4.0]))  # 0.559: 0.5 kept, 0.7 not
    kept = preservation(schema, factual, read, ["digit", "thickness"])
    assert kept["per_factor"] == pytest.approx({"digit": 0.75, "thickness": 0.75})
    assert kept["all"] == pytest.approx(0.5)  # rows 1 (thickness) and 3 (digit) each lose one
    targets = {"digit": np.array([0, 1, 2, 0]), "thickness": np.array([2.5, 2.0, 3.0, 4.0])}  # rows 0 and 1 off
    assert take_rates(schema, factual, read, targets, ["digit", "thickness"]) == pytest.approx(
        {"digit": 1.0, "thickness": 0.5}
    )
    assert take_rates(schema, factual, read, targets, []) == {}


def test_bench_rows_use_the_harness_definition_of_kept():
    schema = get_dataset("morpho").schema
    factual, read = planted_readings()
    row = bench_edits.figures(schema, factual, read, factual, None, [], schema.names)
    assert row["kept"] == preservation(schema, factual, read, schema.names)["all"] == pytest.approx(0.5)
    assert row["digit_kept"] == pytest.approx(0.75)


def test_unknown_factor_is_named():
    pipe = procedural_pipeline("colored-bars")
    with pytest.raises(ValueError, match="'shape'"):
        bench_edits.edit_report(pipe, get_dataset("colored-bars"), ["shape"], num_rows=2, settings=SETTINGS)


def test_report_table_has_one_row_per_edit(morpho_report):
    table = bench_edits.format_report(morpho_report)
    assert table.splitlines()[0].startswith("| edit | intervened | descendants | kept | digit_kept |")
    assert [line.split(" |")[0] for line in table.splitlines()[2:]] == [
        "| none",
        "| do(thickness)",
        "| do(thickness), true image",
        "| do(digit)",
        "| do(digit), true image",
        "| null",
    ]
