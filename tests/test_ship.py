"""Packing a trained pipeline as a shipped model: float16 weights and held-out example images."""

import json

import numpy as np
import pytest
from PIL import Image
from pipeline_fixtures import tiny_pipeline
from safetensors.torch import load_file

from cf_diffusion.scm.counts import COUNTS_FILE, ObservationalCounts
from cf_diffusion.training.ship import ship_model


def _folder(path, sizes):
    path.mkdir()
    rows = []
    for i, (width, height) in enumerate(sizes):
        Image.fromarray(np.full((height, width), 20 * i, dtype=np.uint8)).save(path / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "size": "large" if i % 2 else "small", "color": "red", "bar": "1"})
        rows[-1]["thickness"] = 1.0 + i * 0.25
    (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_folder_model_ships_half_weights_and_held_out_examples_at_their_own_size(tmp_path):
    pipeline = tmp_path / "pipeline"
    pipe = tiny_pipeline()
    pipe.save_pretrained(pipeline)
    counts = ObservationalCounts.from_table(
        pipe.schema, {"size": [0, 1], "color": [0, 0], "bar": [1, 1]} | {"thickness": [1.0, 2.0]}
    )
    counts.save(pipeline / "scm" / COUNTS_FILE)
    data = _folder(tmp_path / "data", [(6, 6)] * 10)
    out = ship_model(pipeline, None, tmp_path / "shipped", num_examples=3, data=data, holdout=4)
    weights = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(str(t.dtype) == "torch.float16" for t in weights.values() if t.is_floating_point())
    shipped = ObservationalCounts.load(out / "scm" / COUNTS_FILE, pipe.schema)  # its schema metadata survives
    assert shipped.columns().keys() == counts.columns().keys()
    lines = [json.loads(line) for line in (out / "examples" / "examples.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        image = Image.open(out / "examples" / line["file_name"])
        assert image.size == (6, 6)  # not resized: the pipeline pads it
        grey = np.asarray(image.convert("L"))[0, 0]
        assert grey // 20 >= 6  # one of the last 4 rows (values 120..180)
        assert line["factors"]["thickness"] == pytest.approx(1.0 + grey // 20 * 0.25)
    with pytest.raises(ValueError, match="exactly one of dataset_name"):
        ship_model(pipeline, "colored-bars", tmp_path / "other", data=data, holdout=4)
    with pytest.raises(ValueError, match="holdout must be in"):
        ship_model(pipeline, None, tmp_path / "other", data=data, holdout=0)


def test_procedural_examples_ship_at_the_model_size_or_the_size_asked(tmp_path):
    pipeline = tmp_path / "pipeline"
    tiny_pipeline().save_pretrained(pipeline)
    for size, expected in ((None, 8), (32, 32)):
        out = ship_model(pipeline, "colored-bars", tmp_path / f"shipped_{size}", num_examples=2, example_size=size)
        lines = [json.loads(line) for line in (out / "examples" / "examples.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and set(lines[0]["factors"]) == {"size", "color", "bar", "digit"}
        assert all(Image.open(out / "examples" / line["file_name"]).size == (expected, expected) for line in lines)
