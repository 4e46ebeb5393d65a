"""Reading image files: 16-bit greyscale is scaled to 8 bit, never saturated."""

import json

import numpy as np
from PIL import Image

from cf_diffusion.models import load_examples
from cf_diffusion.reading import read_image, to_8bit


def sixteen_bit_png(path, level: int = 82):
    """A 16-bit greyscale PNG whose pixels are the 8-bit `level` in 16 bits, with one white pixel."""
    values = np.full((8, 8), level * 257, np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(path)
    return path


def test_16_bit_greyscale_is_scaled_to_8_bit(tmp_path):
    path = sixteen_bit_png(tmp_path / "grey16.png")
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(read_image(path))
    assert rgb.shape == (8, 8, 3) and rgb[1, 1].tolist() == [82, 82, 82] and rgb[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(read_image(path, "L"))[1, 1] == 82
    assert read_image(path, None).mode == "L" and np.asarray(read_image(path, None))[1, 1] == 82
    as_int32 = Image.open(path).convert("I")
    assert np.asarray(to_8bit(as_int32))[1, 1] == 82
    colour = Image.new("RGB", (2, 2), (10, 20, 30))
    assert to_8bit(colour) is colour
    colour.save(tmp_path / "colour.png")
    assert read_image(tmp_path / "colour.png", None).mode == "RGB"


def test_a_model_folder_examples_are_read_as_8_bit(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "examples").mkdir()
    sixteen_bit_png(tmp_path / "examples" / "digit.png")
    (tmp_path / "examples" / "examples.jsonl").write_text(json.dumps({"file_name": "digit.png", "factors": {}}))
    (example,) = load_examples(tmp_path)
    assert example["image"].mode == "L" and np.asarray(example["image"])[1, 1] == 82  # greyscale stays one channel
