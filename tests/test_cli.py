"""The `cf-diffusion` command on the shipped default model and on generated data."""

import json

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
    assert size <= 10 * 1024 * 1024
