"""LabeledImageDataset on small generated folders in every format, including every kind of bad data."""

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cf_diffusion.data import LabeledImageDataset
from cf_diffusion.factors import Factor, FactorSchema

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
ROWS = [
    {"file_name": "a.png", "color": "red", "size": 0, "weight": 1.5},
    {"file_name": "b.png", "color": "green", "size": 1, "weight": 2.5},
    {"file_name": "c.png", "color": "blue", "size": 1, "weight": 3.5},
    {"file_name": "d.png", "color": "red", "size": 0, "weight": 2.0},
]


def _write_images(folder: Path, rows: list[dict], size: tuple[int, int] = (20, 12)) -> None:
    for row in rows:
        Image.new("RGB", size, COLORS.get(row.get("color"), (128, 128, 128))).save(folder / row["file_name"])


def _imagefolder(folder: Path, rows: list[dict] = ROWS, kind: str = "jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_images(folder, rows)
    if kind == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with (folder / "metadata.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(rows[0]))
            writer.writerows([[r.get(k, "") for k in rows[0]] for r in rows])
    return folder


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_imagefolder(tmp_path, kind):
    dataset = LabeledImageDataset(_imagefolder(tmp_path, kind=kind), resolution=8)
    assert len(dataset) == 4
    assert dataset.schema["color"].levels == ("blue", "green", "red")
    assert dataset.schema["size"].kind == "binary"
    assert (dataset.schema["weight"].low, dataset.schema["weight"].high) == (1.5, 3.5)
    item = dataset[1]
    assert item["pixel_values"].shape == (3, 8, 8)
    torch.testing.assert_close(item["pixel_values"][:, 4, 4], torch.tensor([-1.0, 1.0, -1.0]))  # solid green
    torch.testing.assert_close(item["factors"], torch.tensor([1.0, 1.0, 0.0]))  # green, size 1, weight 2.5 -> 0
    assert item["row"]["file_name"] == "b.png"
    assert dataset.factor_table() == {
        "color": ["red", "green", "blue", "red"],
        "size": [0, 1, 1, 0],
        "weight": [1.5, 2.5, 3.5, 2.0],
    }
    assert dataset.report.kept == 4 and not dataset.report.skipped
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and batch["factors"].shape == (4, 3)


def test_transforms(tmp_path):
    folder = _imagefolder(tmp_path)
    assert LabeledImageDataset(folder)[0]["pixel_values"].shape == (3, 12, 20)
    assert LabeledImageDataset(folder, resolution=6, channels=1)[0]["pixel_values"].shape == (1, 6, 6)
    assert LabeledImageDataset(folder, resolution=6, crop="none")[0]["pixel_values"].shape == (3, 6, 6)
    gradient = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (10, 1, 3))
    Image.fromarray(gradient).save(folder / "a.png")
    center = LabeledImageDataset(folder, resolution=10)[0]["pixel_values"]
    assert center.shape == (3, 10, 10)
    assert center[0, 0, 0] == pytest.approx(15 * 6 / 127.5 - 1, abs=0.02)  # the middle 10 columns: 15..24
    torch.manual_seed(0)
    random = LabeledImageDataset(folder, resolution=10, crop="random")
    starts = {round(float((random[0]["pixel_values"][0, 0, 0] + 1) * 127.5 / 6)) for _ in range(20)}
    assert len(starts) > 3 and starts <= set(range(31))


def test_schema_override_and_explicit_schema(tmp_path):
    folder = _imagefolder(tmp_path)
    dataset = LabeledImageDataset(folder, overrides={"size": "categorical"})
    assert dataset.schema["size"].kind == "categorical"
    schema = FactorSchema([Factor.categorical("color", ["red", "green", "blue"]), Factor.continuous("weight", 0, 10)])
    dataset = LabeledImageDataset(folder, schema=schema)
    assert dataset.schema.names == ["color", "weight"]
    torch.testing.assert_close(dataset[2]["factors"], torch.tensor([2.0, -0.3]))
    dataset = LabeledImageDataset(folder, columns=["weight"])
    assert dataset.schema.names == ["weight"]
    with pytest.raises(ValueError, match="missing column"):
        LabeledImageDataset(folder, columns=["age"])


def test_schema_json_beside_the_metadata_is_used(tmp_path):
    folder = _imagefolder(tmp_path)
    schema = FactorSchema(
        [Factor.categorical("color", ["red", "green", "blue"]), Factor.binary("size"), Factor.continuous("weight")]
    )
    (folder / "schema.json").write_text(json.dumps(schema.to_dict()))
    assert LabeledImageDataset(folder).schema["color"].levels == ("red", "green", "blue")


def _bad_imagefolder(folder: Path, kind: str) -> tuple[Path, dict]:
    rows = [dict(r) for r in ROWS]
    schema = None
    if kind == "missing column":
        del rows[2]["weight"]
    elif kind == "extra column":
        rows[2]["note"] = "x"
    elif kind == "unlabelled row":
        rows[2]["color"] = None
    elif kind == "bad label":
        rows[2]["color"] = "purple"
        schema = FactorSchema(
            [Factor.categorical("color", list(COLORS)), Factor.binary("size"), Factor.continuous("weight")]
        )
    _imagefolder(folder, rows)
    if kind == "missing file":
        (folder / "c.png").unlink()
    elif kind == "corrupt image":
        (folder / "c.png").write_bytes(b"this is not an image")
    elif kind == "truncated image":
        data = (folder / "c.png").read_bytes()
        (folder / "c.png").write_bytes(data[: len(data) // 2])
    return folder, {"schema": schema}


@pytest.mark.parametrize(
    "kind",
    [
        "missing file",
        "missing column",
        "extra column",
        "unlabelled row",
        "bad label",
        "corrupt image",
        "truncated image",
    ],
)
def test_bad_imagefolder_rows(tmp_path, kind):
    folder, arguments = _bad_imagefolder(tmp_path, kind)
    with pytest.raises(ValueError, match=r"metadata\.jsonl row 2 \(c\.png\)"):
        LabeledImageDataset(folder, **arguments)
    with pytest.warns(UserWarning, match="skipped"):
        dataset = LabeledImageDataset(folder, skip_bad=True, **arguments)
    assert len(dataset) == 3
    assert [b.row for b in dataset.report.skipped] == [2]
    assert dataset.report.counts() == {kind.replace("truncated", "corrupt"): 1}
    assert "kept 3 of 4" in str(dataset.report)
    assert dataset.factor_table()["size"] == [0, 1, 0]


def test_truncated_image_found_when_read(tmp_path):
    folder = _imagefolder(tmp_path, [{"file_name": "a.png", "color": "red", "size": 0}] * 2)
    image = folder / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    image.write_bytes(image.read_bytes()[:-2000])
    dataset = LabeledImageDataset(folder, check_images="none")
    assert dataset.factor_table() == {"color": ["red", "red"], "size": [0, 0]}  # labels without decoding
    with pytest.raises(ValueError, match=r"row 0 \(a\.png\): corrupt or truncated"):
        dataset[0]
    with pytest.raises(ValueError, match="corrupt or truncated image .*and 1 more bad row"):
        LabeledImageDataset(folder, check_images="decode")


def test_source_level_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        LabeledImageDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"image": "a.png", "color": "red"}) + "\n")
    with pytest.raises(ValueError, match="no 'file_name' column"):
        LabeledImageDataset(tmp_path)
    with pytest.raises(ValueError, match="crop"):
        LabeledImageDataset(tmp_path, crop="middle")


def _celeba(folder: Path, lines: list[str], count: int | None = None) -> Path:
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    for i in range(len(lines)):
        Image.new("RGB", (178, 218), (10 * i, 100, 200)).save(images / f"{i + 1:06d}.jpg")
    body = [str(len(lines) if count is None else count), "Smiling Male Young"] + lines
    (folder / "list_attr_celeba.txt").write_text("\n".join(body) + "\n")
    return folder


def test_celeba(tmp_path):
    lines = ["000001.jpg  1 -1  1", "000002.jpg -1 -1  1", "000003.jpg  1  1 -1"]
    dataset = LabeledImageDataset(_celeba(tmp_path, lines), resolution=16, columns=["Smiling", "Male"])
    assert dataset.schema.names == ["Smiling", "Male"] and dataset.schema["Male"].kind == "binary"
    assert dataset.factor_table() == {"Smiling": [1, 0, 1], "Male": [0, 0, 1]}
    item = dataset[2]
    assert item["pixel_values"].shape == (3, 16, 16)
    torch.testing.assert_close(item["factors"], torch.tensor([1.0, 1.0]))
    assert item["row"]["Young"] == 0


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("000002.jpg -1 1", "missing column"),
        ("000002.jpg -1 1 1 1", "extra column"),
        ("000002.jpg 0 1 1", "bad label"),
    ],
)
def test_bad_celeba_rows(tmp_path, line, kind):
    folder = _celeba(tmp_path, ["000001.jpg  1 -1  1", line, "000003.jpg  1  1 -1"])
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt row 1 \(000002\.jpg\)"):
        LabeledImageDataset(folder)
    with pytest.warns(UserWarning):
        dataset = LabeledImageDataset(folder, skip_bad=True)
    assert len(dataset) == 2 and dataset.report.counts() == {kind: 1}


def test_celeba_missing_image_and_truncated_list(tmp_path):
    folder = _celeba(tmp_path, ["000001.jpg  1 -1  1", "000002.jpg -1 -1  1"])
    (folder / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"row 1 \(000002\.jpg\): image file .* does not exist"):
        LabeledImageDataset(folder)
    other = _celeba(tmp_path / "short", ["000001.jpg  1 -1  1"], count=5)
    with pytest.raises(ValueError, match="announces 5 images but lists 1"):
        LabeledImageDataset(other)


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _morphomnist(folder: Path, thickness: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = np.zeros((len(thickness), 28, 28), dtype=np.uint8)
    for i in range(len(thickness)):
        images[i, 5:20, 10 : 12 + i] = 100 + 20 * i
    _idx(folder / "t10k-images-idx3-ubyte.gz", images)
    _idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(len(thickness)) % 10)
    rows = [f"{i},{t},{100 + 20 * i}" for i, t in enumerate(thickness)]
    (folder / "t10k-morpho.csv").write_text("index,thickness,intensity\n" + "\n".join(rows) + "\n")
    return folder


def test_morphomnist(tmp_path):
    dataset = LabeledImageDataset(_morphomnist(tmp_path, ["2.0", "3.0", "4.0"]), channels=1)
    assert dataset.schema.names == ["digit", "thickness", "intensity"]
    assert dataset.schema["digit"].levels == tuple(str(d) for d in range(10))
    assert dataset.factor_table() == {"digit": [0, 1, 2], "thickness": [2.0, 3.0, 4.0], "intensity": [100, 120, 140]}
    item = dataset[1]
    assert item["pixel_values"].shape == (1, 28, 28)
    assert item["pixel_values"][0, 10, 10] == pytest.approx(120 / 127.5 - 1)
    assert item["pixel_values"][0, 0, 0] == -1.0
    torch.testing.assert_close(item["factors"], torch.tensor([1.0, 0.0, 0.0]))


def test_bad_morphomnist(tmp_path):
    folder = _morphomnist(tmp_path / "a", ["2.0", "", "4.0"])
    with pytest.raises(ValueError, match=r"t10k-morpho\.csv row 1 \(t10k-images-idx3-ubyte\.gz\[1\]\): no value"):
        LabeledImageDataset(folder)
    with pytest.warns(UserWarning):
        assert len(LabeledImageDataset(folder, skip_bad=True)) == 2
    folder = _morphomnist(tmp_path / "b", ["2.0", "3.0"])
    data = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        LabeledImageDataset(folder)
    folder = _morphomnist(tmp_path / "c", ["2.0", "3.0"])
    with (folder / "t10k-morpho.csv").open("a") as handle:
        handle.write("2,5.0,130\n")
    with pytest.raises(ValueError, match="2 images, .* 2 labels and t10k-morpho.csv 3 rows"):
        LabeledImageDataset(folder)


def test_hugging_face_dataset():
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (10, 10), COLORS[c]) for c in ("red", "green", "blue")]
    hf = datasets.Dataset.from_dict(
        {"image": images, "color": ["red", "green", "blue"], "age": [20.0, 30.0, 40.0]}
    ).cast_column("image", datasets.Image())
    dataset = LabeledImageDataset(hf, resolution=4)
    assert dataset.schema.names == ["color", "age"]
    assert dataset.factor_table() == {"color": ["red", "green", "blue"], "age": [20.0, 30.0, 40.0]}
    item = dataset[2]
    torch.testing.assert_close(item["pixel_values"][:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    torch.testing.assert_close(item["factors"], torch.tensor([0.0, 1.0]))  # blue is level 0; age 40 -> 1
    unlabelled = datasets.Dataset.from_dict(
        {"image": images, "color": ["red", None, "blue"], "age": [20.0, 30.0, 40.0]}
    ).cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match=r"row 1 .*no value for \['color'\]"):
        LabeledImageDataset(unlabelled)
    with pytest.warns(UserWarning):
        assert LabeledImageDataset(unlabelled, skip_bad=True).report.counts() == {"unlabelled row": 1}
    with pytest.raises(ValueError, match="no image column 'picture'"):
        LabeledImageDataset(hf, image_column="picture")


def test_images_no_larger_than_the_resolution_are_padded_not_resized(tmp_path):
    folder = _imagefolder(tmp_path)
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[10:18, 13:15] = 200  # a 2-pixel-wide stroke
    Image.fromarray(digit).save(folder / "a.png")
    padded = LabeledImageDataset(folder, resolution=32, channels=1)[0]["pixel_values"][0]
    assert padded.shape == (32, 32)
    torch.testing.assert_close(padded[2:30, 2:30], torch.from_numpy(digit).float() / 127.5 - 1)
    assert (padded[:2] == -1).all() and (padded[:, 30:] == -1).all()  # a black border, the stroke unchanged
    wide = LabeledImageDataset(folder, resolution=32)[1]["pixel_values"]  # 20 x 12: centred, odd margins rounded down
    assert wide.shape == (3, 32, 32) and (wide[1, 10:22, 6:26] == 1).all() and (wide[:, :10] == -1).all()
