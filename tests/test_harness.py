"""The evaluation harness and the editing methods it compares, with a tiny latent pipeline on colored-bars (16 px)."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from pipeline_fixtures import procedural_pipeline

from cf_diffusion import CounterfactualDiffusionPipeline
from cf_diffusion.data import get_dataset, make_dataset
from cf_diffusion.evaluation.data import load_evaluation_data
from cf_diffusion.evaluation.harness import EvaluationConfig, evaluate
from cf_diffusion.evaluation.interventions import shifted_values
from cf_diffusion.evaluation.methods import EditOptions, Method, apply_method, sdedit
from cf_diffusion.evaluation.queries import CounterfactualQuery, consistency_queries, judge_estimate, true_probability
from cf_diffusion.inversion import inference_timesteps
from cf_diffusion.scm.bounds import counterfactual_bounds

METHOD_NAMES = {"ours-ddim@2", "ours-ddpm@2", "regenerate@2", "no-scm-ddim@2", "sdedit@2"}
EDITS = {"do(digit)", "do(size)", "do(color)", "do(bar)"}


@pytest.fixture(scope="module")
def pipe() -> CounterfactualDiffusionPipeline:
    return procedural_pipeline("colored-bars")


@pytest.fixture(scope="module")
def rows():
    sample = get_dataset("colored-bars").sample(3, seed=7, resolution=16)
    return sample.images.astype(np.float32) / 255.0, {k: np.asarray(v) for k, v in sample.factors.items()}


@pytest.fixture(scope="module")
def full_run(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate")
    config = EvaluationConfig(
        "colored-bars", out, n=4, steps=(2,), cycles=(1, 2), table_rows=4000, show_progress=False
    )
    results = evaluate(pipe, config)
    return out, results


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def test_realism_compares_the_edits_with_real_rows_that_were_not_edited(pipe, tmp_path, monkeypatch):
    import cf_diffusion.evaluation.scoring as scoring

    sizes, real_fid = [], scoring.fid
    monkeypatch.setattr(scoring, "fid", lambda a, b: sizes.append((len(a), len(b))) or real_fid(a, b))
    config = EvaluationConfig(
        "colored-bars",
        tmp_path,
        ["realism"],
        n=4,
        steps=(2,),
        methods=["ours-ddim"],
        table_rows=1000,
        show_progress=False,
    )
    results = evaluate(pipe, config)
    assert sizes == [(16, 256)]  # 4 rows x 4 interventions, against the 256 reference rows (not the 4 edited)
    assert "realism against 256 real rows that were not edited (the reference rows)" in results["notes"]


def test_end_to_end_writes_every_metric_for_every_method(full_run):
    out, results = full_run
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "results.png"}
    written = json.loads((out / "results.json").read_text())
    assert set(written) >= {"settings", "data", "notes", "interventions", "methods", "consistency"}
    assert set(written["methods"]) == METHOD_NAMES
    assert written["data"] == {"source": "colored-bars", "rows": 4, "ground_truth": True}
    assert "factor_predictor trunk" in written["realism_network"]
    for name, record in written["methods"].items():
        assert set(record["edits"]) == EDITS, name
        assert set(record["composition"]) == {"1", "2"}
        assert set(record["realism"]) == {"fid", "kid", "kid_std"}
        for edit, entry in record["edits"].items():
            assert {"effectiveness", "preservation", "ground_truth", "reversibility", "minimality"} <= set(entry)
            assert 0.0 <= entry["effectiveness"]["intervened_accuracy"] <= 1.0
            assert 0.0 <= entry["ground_truth"]["l1"] <= 1.0
            assert 0.0 <= entry["minimality"]["cld"] <= 1.0, (name, edit)
    assert written["interventions"]["do(size)"]["descendants"] == ["bar"]
    assert set(written["interventions"]["do(size)"]["scm_vs_truth"]) == {"bar"}
    assert set(written["reader_floor"]) == {"digit", "size", "color", "bar"}
    assert written["interventions"]["do(size)"]["non_descendants"] == ["digit", "color"]
    labels = [q["query"] for q in written["consistency"]]
    assert "P(bar_{size=large} = 1 | size=small, bar=1)" in labels
    assert len(labels) == 8  # size -> bar and color -> bar, two levels each of the cause and of bar
    for query in written["consistency"]:
        low, high = query["bounds"]
        assert 0.0 <= low <= high <= 1.0
        assert 0.0 <= query["truth"]["probability"] <= 1.0
    markdown = (out / "results.md").read_text()
    assert "| none | factual images |" in markdown
    for heading in ("## Edits", "## Composition", "## Realism", "## Counterfactual consistency", "## Notes"):
        assert heading in markdown
    assert "| P(bar_{size=large} = 1 \\| size=small, bar=1) |" in markdown  # the query's bar is escaped
    with Image.open(out / "results.png") as image:
        assert image.width > 400 and image.height > 400


def test_no_scm_baseline_keeps_descendants_factual(pipe, rows):
    images, factual = rows
    counterfactual = dict(factual)
    counterfactual["size"] = 1 - factual["size"]
    counterfactual["bar"] = 1 - factual["bar"]  # the causal model moved the descendant
    options = EditOptions(guidance_scale=2.0)
    no_scm = apply_method(pipe, Method("no-scm", 2), images, factual, counterfactual, ["size"], options, generators(3))
    kept = dict(counterfactual, bar=factual["bar"])
    ours_kept = apply_method(pipe, Method("ours", 2), images, factual, kept, ["size"], options, generators(3))
    ours_moved = apply_method(
        pipe, Method("ours", 2), images, factual, counterfactual, ["size"], options, generators(3)
    )
    np.testing.assert_allclose(no_scm, ours_kept, atol=1e-6)
    assert np.abs(no_scm - ours_moved).max() > 1e-4


def test_regenerate_baseline_ignores_the_input_image(pipe, rows):
    images, factual = rows
    other = images[::-1].copy()
    counterfactual = dict(factual, color=1 - factual["color"])
    options = EditOptions()
    first = apply_method(
        pipe, Method("regenerate", 2), images, factual, counterfactual, ["color"], options, generators(3)
    )
    second = apply_method(
        pipe, Method("regenerate", 2), other, factual, counterfactual, ["color"], options, generators(3)
    )
    np.testing.assert_array_equal(first, second)
    ours_first = apply_method(
        pipe, Method("ours", 2), images, factual, counterfactual, ["color"], options, generators(3)
    )
    ours_second = apply_method(
        pipe, Method("ours", 2), other, factual, counterfactual, ["color"], options, generators(3)
    )
    assert np.abs(ours_first - ours_second).max() > 1e-3


def test_sdedit_starts_from_fresh_forward_noise(pipe, rows):
    images, factual = rows
    factors = {k: v.tolist() for k, v in factual.items()}
    out = sdedit(pipe, images, factors, {}, strength=0.5, num_inference_steps=4, generator=generators(3))
    samples = pipe.encode_images(pipe.image_processor.preprocess(images), pipe.device)
    timesteps = inference_timesteps(pipe.scheduler, 4, 0.5)
    noise = randn_tensor(samples.shape, generator=generators(3))
    alpha_bar = pipe.scheduler.alphas_cumprod[timesteps[0]]
    expected = alpha_bar.sqrt() * samples + (1 - alpha_bar).sqrt() * noise
    assert out.inversion.trajectory.shape[0] == len(timesteps) + 1
    torch.testing.assert_close(out.inversion.trajectory[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.inversion.trajectory[-1], samples)
    other = sdedit(pipe, images, factors, {}, strength=0.5, num_inference_steps=4, generator=generators(3, seed=9))
    assert np.abs(np.asarray(out.images) - np.asarray(other.images)).max() > 1e-4  # fresh noise, not abducted


def test_shifted_values_always_change_the_factor():
    schema = get_dataset("colored-bars").schema
    np.testing.assert_array_equal(shifted_values(schema["size"], np.array([0, 1, 1])), [1, 0, 0])
    np.testing.assert_array_equal(shifted_values(schema["digit"], np.array([0, 9])), [1, 0])


def test_continuous_shift_draws_from_the_rows_half_the_distribution_away():
    thickness = get_dataset("morpho").schema["thickness"]
    values = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(shifted_values(thickness, values), [3.0, 4.0, 1.0, 2.0])
    shuffled = np.array([4.0, 1.0, 3.0, 2.0])
    np.testing.assert_allclose(shifted_values(thickness, shuffled), [2.0, 3.0, 1.0, 4.0])
    single = shifted_values(thickness, np.array([1.0]))
    np.testing.assert_allclose(single, [1.0 + (thickness.high - thickness.low) / 2])


def test_consistency_estimate_on_a_planted_case():
    query = CounterfactualQuery({"size": 1}, {"size": 0, "bar": 1}, {"bar": 1})
    factual = {"size": np.array([0] * 10 + [1] * 5 + [0] * 5), "bar": np.array([1] * 15 + [0] * 5)}
    read = {"size": np.ones(20, dtype=int), "bar": np.array([1] * 7 + [0] * 3 + [1] * 10)}
    judged = judge_estimate(factual, read, query, low=0.2, high=0.4)
    assert judged["n"] == 10
    assert judged["probability"] == pytest.approx(0.7)
    assert judged["stderr"] == pytest.approx(math.sqrt(0.7 * 0.3 / 10))
    # Wilson score interval at z = 2: (0.9 -+ 2 sqrt(0.031)) / 1.4 = [0.391, 0.894]
    assert judge_estimate(factual, read, query, low=0.2, high=0.38)["inside"] is False
    assert judge_estimate(factual, read, query, low=0.2, high=0.40)["inside"] is True
    assert judge_estimate(factual, read, query, low=0.9, high=1.0)["inside"] is False
    all_ones = {"size": np.zeros(14, dtype=int), "bar": np.ones(14, dtype=int)}
    # p = 1 from 14 rows: the Wilson interval is [0.778, 1], so bounds ending just below 1 still contain it
    assert judge_estimate(all_ones, {"bar": np.ones(14, dtype=int)}, query, low=0.467, high=0.9999)["inside"] is True


def exact_backdoor_joint() -> tuple[dict[str, list[int]], list[float]]:
    """P(size, color, bar) of colored-bars' backdoor SCM, one row per configuration (level 0 of color is red)."""
    table, weights = {"size": [], "color": [], "bar": []}, []
    for size in (0, 1):
        for color in (0, 1):
            p_sc = sum(
                0.5 * (p if size else 1 - p) * (p if color == 0 else 1 - p) for p in (0.8, 0.2)
            )  # U_c = 1 (p = 0.8) or 0 (p = 0.2); size=large and color=red both with probability p
            p_bar = 0.8 - 0.35 * size - 0.35 * (color == 0)
            for bar in (0, 1):
                table["size"].append(size)
                table["color"].append(color)
                table["bar"].append(bar)
                weights.append(p_sc * (p_bar if bar else 1 - p_bar))
    return table, weights


def test_no_scm_baseline_falls_outside_the_exact_bounds():
    dataset = get_dataset("colored-bars")
    table, weights = exact_backdoor_joint()
    query = CounterfactualQuery({"size": 1}, {"size": 0, "bar": 1}, {"bar": 1})
    low, high = counterfactual_bounds(
        dataset.graph, table, query.target, query.intervention, query.evidence, schema=dataset.schema, weights=weights
    )
    # Exact truth: given small, bar=1: u_bar < 0.8 - 0.35 [red]; under do(large), bar=1 iff u_bar < 0.45 - 0.35 [red].
    p_small = {c: sum(0.5 * (1 - p) * (p if c == 0 else 1 - p) for p in (0.8, 0.2)) for c in (0, 1)}
    p_bar_small = {0: 0.45, 1: 0.8}
    keep = {0: 0.1 / 0.45, 1: 0.45 / 0.8}
    evidence = {c: p_small[c] * p_bar_small[c] for c in (0, 1)}
    truth = sum(evidence[c] * keep[c] for c in (0, 1)) / sum(evidence.values())
    assert low - 1e-6 <= truth <= high + 1e-6
    assert high < 0.99
    sampled = true_probability(dataset, dataset.sample(40_000, seed=3, resolution=0).exogenous, query)
    assert sampled["probability"] == pytest.approx(truth, abs=4 * sampled["stderr"] + 1e-3)
    # Baseline (b) keeps the descendant bar factual, so every edited image of a (small, bar=1) row still shows bar=1.
    factual = {"size": np.zeros(50, dtype=int), "bar": np.ones(50, dtype=int)}
    read_no_scm = {"size": np.ones(50, dtype=int), "bar": np.ones(50, dtype=int)}
    judged = judge_estimate(factual, read_no_scm, query, low, high)
    assert judged["probability"] == 1.0 and judged["stderr"] == 0.0
    assert judged["inside"] is False
    rng = np.random.default_rng(0)
    read_truthful = {"size": np.ones(400, dtype=int), "bar": (rng.random(400) < truth).astype(int)}
    factual_400 = {"size": np.zeros(400, dtype=int), "bar": np.ones(400, dtype=int)}
    assert judge_estimate(factual_400, read_truthful, query, low, high)["inside"] is True


def test_consistency_queries_follow_the_graph():
    dataset = get_dataset("colored-bars")
    queries = consistency_queries(dataset.graph, dataset.schema, "size")
    assert [(q.evidence, q.intervention) for q in queries] == [
        ({"size": 0, "bar": 0}, {"size": 1}),
        ({"size": 0, "bar": 1}, {"size": 1}),
        ({"size": 1, "bar": 0}, {"size": 0}),
        ({"size": 1, "bar": 1}, {"size": 0}),
    ]
    assert consistency_queries(dataset.graph, dataset.schema, "digit") == []
    assert consistency_queries(dataset.graph, dataset.schema, "bar") == []


def test_user_folder_without_ground_truth_skips_truth_with_a_note(pipe, tmp_path):
    folder = make_dataset("colored-bars", 12, 16, tmp_path / "data", num_workers=1, show_progress=False)
    (folder / "exogenous.safetensors").unlink()
    (folder / "dataset.json").unlink()
    config = EvaluationConfig(
        folder,
        tmp_path / "out",
        n=4,
        steps=(2,),
        methods=("ours-ddim", "no-scm"),
        factors=("size",),
        cycles=(1,),
        show_progress=False,
    )
    results = evaluate(pipe, config)
    assert results["data"]["ground_truth"] is False
    assert any("ground_truth skipped" in note for note in results["notes"])
    entry = results["methods"]["ours-ddim@2"]["edits"]["do(size)"]
    assert "ground_truth" not in entry
    assert {"effectiveness", "preservation", "reversibility", "minimality"} <= set(entry)
    assert all("truth" not in query and "bounds" in query for query in results["consistency"])
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "results.md", "results.png"}


def test_holdout_edits_only_the_folders_last_rows(pipe, tmp_path):
    folder = make_dataset("colored-bars", 12, 16, tmp_path / "data", num_workers=1, show_progress=False)
    loaded = load_evaluation_data(pipe, folder, n=3, holdout=4)
    every = get_dataset("colored-bars").sample(12, seed=0, resolution=16).images.astype(np.float32) / 255.0
    last = every[8:]
    for image in loaded.images:  # each chosen row is one of the last four
        assert min(np.abs(image - other).max() for other in last) < 1e-6
    assert any("last 4 rows" in note for note in loaded.notes)
    with pytest.raises(ValueError, match="holdout must be in"):
        load_evaluation_data(pipe, folder, n=3, holdout=13)
    with pytest.raises(ValueError, match="holdout applies to a folder"):
        evaluate(pipe, EvaluationConfig("colored-bars", tmp_path / "out", n=2, holdout=4))


def test_bad_arguments_name_the_culprit(pipe, tmp_path):
    with pytest.raises(ValueError, match="metrics"):
        evaluate(pipe, EvaluationConfig("colored-bars", tmp_path, metrics=("speed",)))
    with pytest.raises(ValueError, match="methods"):
        evaluate(pipe, EvaluationConfig("colored-bars", tmp_path, methods=("magic",)))
    with pytest.raises(ValueError, match="neither a procedural dataset"):
        evaluate(pipe, EvaluationConfig(tmp_path / "missing", tmp_path, n=4))
    with pytest.raises(ValueError, match="method kind"):
        Method("other", 2)
