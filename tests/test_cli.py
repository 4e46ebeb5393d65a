"""The `cf-diffusion` command on the shipped default model and on generated data."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cf_diffusion.cli import main
from cf_diffusion.models import SHIPPED_MODELS, load_examples, model_path


def test_demo_writes_grid_and_table(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), "--steps", "5"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and Image.open(out).size[0] > 400
    assert "do(color)" in printed and "do(size)" in printed and "factual" in printed


def test_edit_changes_the_intervened_factor_in_the_counterfactual_factors(tmp_path, capsys):
    example = tmp_path / "in.png"
    row = load_examples()[0]
    row["image"].save(example)
    target = "green" if row["factors"]["color"] == "red" else "red"
    factors = ",".join(f"{k}={v}" for k, v in row["factors"].items())
    out = tmp_path / "out.png"
    code = main(
        [
            "edit",
            "--image",
            str(example),
            "--do",
            f"color={target}",
            "--factors",
            factors,
            "--steps",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    counterfactual = next(line for line in printed.splitlines() if line.startswith("counterfactual"))
    assert f"color={target}" in counterfactual and f"digit={row['factors']['digit']}" in counterfactual
    assert Image.open(out).size == Image.open(example).size


def test_generate_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["generate", "--do", "size=large", "--n", "4", "--steps", "4", "--out", str(out)]) == 0
    assert out.is_file()


def test_data_make_writes_an_imagefolder(tmp_path):
    out = tmp_path / "data"
    assert (
        main(["data", "make", "colored-bars", "--n", "6", "--resolution", "16", "--out", str(out), "--workers", "1"])
        == 0
    )
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"file_name", "digit", "size", "color", "bar"} <= set(rows[0])
    assert np.asarray(Image.open(out / rows[0]["file_name"])).shape == (16, 16, 3)


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (
            ["edit", "--model", "no/such/folder", "--image", "x.png", "--do", "color=green", "--out", "y.png"],
            "no/such/folder",
        ),
        (["edit", "--image", "missing.png", "--do", "color=green", "--out", "y.png"], "missing.png"),
        (["edit", "--image", "cut.png", "--do", "color=green", "--out", "y.png"], "'cut.png': image file is trunc"),
        (["edit", "--image", "folder.png", "--do", "color=green", "--out", "y.png"], "'folder.png'"),
        (["generate", "--do", "colour=green", "--n", "1"], "colour"),
        (["generate", "--do", "color=blue", "--n", "1"], "blue"),
        (["data", "make", "no-such-data", "--n", "1", "--out", "z"], "no-such-data"),
        (["evaluate", "--data", "colored-bars", "--out", "e", "--holdout", "5", "--n", "2"], "holdout"),
    ],
)
def test_errors_are_one_clear_line_with_nonzero_status(argv, culprit, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:-200])
    (tmp_path / "folder.png").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and culprit in err and "error" in err


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_models_are_small_enough_to_ship(name):
    if not (SHIPPED_MODELS[name] / "model_index.json").is_file():
        pytest.skip(f"the {name} model is not shipped yet")
    size = sum(p.stat().st_size for p in model_path(name).rglob("*") if p.is_file())
    assert size <= 16 * 1024 * 1024


EDIT = ["edit", "--image", "x.png", "--do", "color=green"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*EDIT, "--out", "taken.png"], "--out 'taken.png' exists; pass --overwrite to replace it"),
        ([*EDIT, "--out", "taken.jpg", "--show-mask"], "--out 'taken_mask.png' exists; pass --overwrite"),
        ([*EDIT, "--out", "folder"], "--out 'folder' is a folder; expected the path of a file"),
        ([*EDIT, "--out", "missing/y.png"], "--out 'missing/y.png': its folder 'missing' does not exist"),
        ([*EDIT, "--out", "x.png/y.png"], "--out 'x.png/y.png': 'x.png' is not a folder"),
        ([*EDIT, "--out", "y.edit"], "--out 'y.edit' has an unknown extension; expected one of .*\\.png"),
        (["generate", "--out", "taken.png"], "--out 'taken.png' exists; pass --overwrite"),
        (["generate", "--out", "grid.jpg"], "--out 'grid.jpg' has an unknown extension; expected one of .png"),
        (["demo", "--out", "taken.png"], "--out 'taken.png' exists; pass --overwrite"),
        (["evaluate", "--data", "colored-bars", "--out", "results"], r"holds \['results.json'\] of an earlier"),
        (["evaluate", "--data", "colored-bars", "--out", "x.png"], "--out 'x.png' is a file; expected a folder"),
        (["edit", "--do", "color=red", "--input-dir", "folder", "--output-dir", "folder"], "is --input-dir or inside"),
        (["edit", "--do", "color=red", "--input-dir", "folder", "--output-dir", "folder/edits"], "inside it"),
        (["edit", "--do", "color=red", "--input-dir", "x.png", "--output-dir", "o"], "--input-dir 'x.png' is not a"),
        (["edit", "--do", "color=red", "--input-dir", "clash", "--output-dir", "o"], r"same output files \['a.png'\]"),
    ],
)
def test_output_paths_are_checked_before_any_diffusion(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def no_diffusion(*args, **kwargs):
        raise AssertionError("the diffusion ran before the output paths were checked")

    monkeypatch.setattr("cf_diffusion.models.load_pipeline", no_diffusion)
    monkeypatch.setattr("cf_diffusion.demo.run_demo", no_diffusion)
    for name in ("x.png", "taken.png", "taken_mask.png", "folder/a.png", "clash/a.png", "clash/a.PNG"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.json").write_text("{}")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_an_unwritable_output_folder_is_refused_before_any_diffusion(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cf_diffusion.outputs.os.access", lambda path, mode: Path(path) != tmp_path)
    monkeypatch.setattr("cf_diffusion.models.load_pipeline", None)
    assert main(["generate", "--out", str(tmp_path / "grid.png")]) == 2
    assert f"the folder {str(tmp_path)!r} is not writable" in capsys.readouterr().err


def test_edit_input_dir_keeps_distinct_outputs_and_skips_complete_ones(tmp_path, capsys):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i, name in enumerate(("a.png", "a.jpg")):
        load_examples()[i]["image"].save(source / name)
    argv = ["edit", "--do", "color=green", "--steps", "2", "--input-dir", str(source), "--output-dir", str(target)]
    assert main(argv) == 0
    assert sorted(p.name for p in target.iterdir()) == ["a.jpg.png", "a.png"]
    assert not np.array_equal(np.asarray(Image.open(target / "a.png")), np.asarray(Image.open(target / "a.jpg.png")))
    first = (target / "a.jpg.png").stat().st_mtime_ns
    (target / "a.png").write_bytes((target / "a.png").read_bytes()[:40])  # as a kill mid-write used to leave it
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "edited 1 images" in printed and "1 already complete, skipped" in printed
    assert (target / "a.jpg.png").stat().st_mtime_ns == first
    assert Image.open(target / "a.png").size == Image.open(source / "a.png").size
    assert main([*argv, "--overwrite"]) == 0
    assert (target / "a.jpg.png").stat().st_mtime_ns != first


def test_ctrl_c_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("cf_diffusion.training.run.train", interrupted)
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 130
    assert capsys.readouterr().err.strip() == "cf-diffusion train: interrupted"


def test_a_broken_recipe_is_one_error_line(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text("data:\n  dataset: colored-bars\ntraining:\n  checkpointing_steps: 0\n")
    (tmp_path / "broken.yaml").write_text("data: {dataset: colored-bars\n")
    for name, culprit in (
        ("recipe.yaml", "'training.checkpointing_steps' must be"),
        ("broken.yaml", "not valid YAML"),
    ):
        assert main(["train", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and culprit in err


def _break_unet_weights(model):
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")


def _break_unet_config(model):
    (model / "unet" / "config.json").write_text("{not json")


def _break_model_index(model):
    (model / "model_index.json").write_text("{not json")


def _remove_unet(model):
    shutil.rmtree(model / "unet")


@pytest.mark.parametrize(
    ("damage", "culprit"),
    [
        (_break_unet_weights, "diffusion_pytorch_model.safetensors"),
        (_break_unet_config, "unet/config.json' is not a valid JSON"),
        (_break_model_index, "model_index.json' is not valid JSON"),
        (_remove_unet, "lacks the folders ['unet']"),
    ],
)
def test_a_damaged_model_folder_is_one_error_line(damage, culprit, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_path("default"), model)
    damage(model)
    assert main(["generate", "--model", str(model), "--n", "1", "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and culprit in err, err


HEAVY = {"torch", "diffusers", "matplotlib", "scipy"}


def _modules_after(code: str) -> set[str]:
    """The heavy modules loaded by running `code` in a fresh interpreter."""
    import subprocess
    import sys

    probe = f"{code}\nimport sys\nprint(*(m for m in {sorted(HEAVY)!r} if m in sys.modules), file=sys.stderr)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(run.stderr.split())


def test_help_imports_no_torch_diffusers_matplotlib_or_scipy():
    code = "from cf_diffusion.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _modules_after(code) == set()


def test_evaluate_checks_metric_and_method_names_and_defaults_to_the_quick_set(monkeypatch, tmp_path, capsys):
    from cf_diffusion import models
    from cf_diffusion.evaluation import harness

    for flag in ("--metrics", "--methods"):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--data", "colored-bars", "--out", str(tmp_path), flag, "speed"])
        assert exit_info.value.code == 2 and "invalid choice: 'speed'" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(models, "load_pipeline", lambda name: SimpleNamespace(set_progress_bar_config=dict))
    monkeypatch.setattr(harness, "evaluate", lambda pipe, config: calls.append(config))
    assert main(["evaluate", "--data", "colored-bars", "--out", str(tmp_path)]) == 0
    assert calls[0].metrics == ["effectiveness", "ground_truth", "consistency"]
    assert calls[0].methods == ["ours-ddim", "regenerate"]
    assert main(["evaluate", "--data", "colored-bars", "--out", str(tmp_path), "--full"]) == 0
    assert calls[1].metrics == list(harness.METRICS) and calls[1].methods == list(harness.DEFAULT_METHODS)
    only = ["--methods", "cvae-scm", "--metrics", "realism"]
    assert main(["evaluate", "--data", "d", "--out", str(tmp_path), *only]) == 0
    assert calls[2].metrics == ["realism"] and calls[2].methods == ["cvae-scm"]


def test_a_folder_whose_columns_are_not_the_graphs_nodes_is_refused_before_any_training(tmp_path, capsys):
    import yaml

    from cf_diffusion.data import make_dataset

    folder = make_dataset("colored-bars", 6, 16, tmp_path / "bars", num_workers=1, show_progress=False)
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "data": {"path": str(folder), "resolution": 16, "factors": ["size", "bar"], "graph": "size -> colour"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not in the graph: ['bar']" in err and "not in the data: ['colour']" in err
    assert not (tmp_path / "run" / "stages").exists()
