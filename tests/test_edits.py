"""`evaluate_edits` (the README's edit-quality figures) on tiny pipelines over procedural datasets."""

import numpy as np
import pytest
from pipeline_fixtures import procedural_pipeline

from cf_diffusion.data import get_dataset
from cf_diffusion.evaluation.edits import EditSettings, evaluate_edits, format_report, read_edits
from cf_diffusion.evaluation.harness import shifted_values

SETTINGS = EditSettings(num_inference_steps=2, guidance_scale=1.0, abduction="ddpm")


@pytest.fixture(scope="module")
def morpho_report():
    pipe = procedural_pipeline("morpho")
    return evaluate_edits(pipe, get_dataset("morpho"), ["thickness", "digit"], num_rows=6, settings=SETTINGS)


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
    assert {"intervened", "descendants", "non_descendants", "digit_kept", "scm_vs_truth", "truth_l1"} <= set(thickness)
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
    read = read_edits(pipe, dataset, sample.images.astype(np.float32) / 255.0)
    np.testing.assert_allclose(read["thickness"], dataset.measure(sample.images)["thickness"])
    assert read["digit"].shape == (4,)  # the untrained predictor reads the digit


def test_unknown_factor_is_named():
    pipe = procedural_pipeline("colored-bars")
    with pytest.raises(ValueError, match="'shape'"):
        evaluate_edits(pipe, get_dataset("colored-bars"), ["shape"], num_rows=2, settings=SETTINGS)


def test_report_table_has_one_row_per_edit(morpho_report):
    table = format_report(morpho_report)
    assert table.splitlines()[0].startswith("| edit | intervened | descendants | non_descendants | digit_kept |")
    assert [line.split(" |")[0] for line in table.splitlines()[2:]] == [
        "| none",
        "| do(thickness)",
        "| do(thickness), true image",
        "| do(digit)",
        "| do(digit), true image",
        "| null",
    ]
