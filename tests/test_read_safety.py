"""Safety of what is read: file names in data files stay inside their folder, and pickle weights are never loaded."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cf_diffusion.cli import main
from cf_diffusion.data import LabeledImageDataset
from cf_diffusion.models import load_examples, load_pipeline, model_path
from cf_diffusion.reading import contained_path

OUTSIDE = ["../../x.png", "/etc/passwd", "sub/../../x.png", "..\\x.png", "C:\\x.png"]


@pytest.mark.parametrize("name", OUTSIDE)
def test_a_name_outside_its_folder_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="list.txt row 4: file name .* climbs out of its folder"):
        contained_path(tmp_path, name, "list.txt row 4")


@pytest.mark.parametrize("name", ["a.png", "sub/a.png", "sub/../a.png", "./a.png"])
def test_a_name_inside_its_folder_is_kept(tmp_path, name):
    assert contained_path(tmp_path, name, "list.txt row 0") == tmp_path / name


def _metadata(folder, kind: str, names: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(folder / name)
    if kind == "jsonl":
        rows = "".join(json.dumps({"file_name": n, "color": c}) + "\n" for n, c in zip(names, "xyx", strict=False))
        (folder / "metadata.jsonl").write_text(rows)
    else:
        (folder / "metadata.csv").write_text("file_name,color\n" + "".join(f"{n},x\n" for n in names))
    return folder


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_imagefolder_refuses_a_file_name_outside_it(tmp_path, kind):
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    folder = _metadata(tmp_path / "data" / "set", kind, ["a.png", "b.png", "../../secret.png"])
    with pytest.raises(ValueError, match=rf"metadata\.{kind} row 2: file name '\.\./\.\./secret\.png' is absolute"):
        LabeledImageDataset(folder, skip_bad=True)
    inside = _metadata(tmp_path / "ok", kind, ["a.png", "b.png"])
    assert len(LabeledImageDataset(inside)) == 2


def test_celeba_refuses_a_file_name_outside_its_image_folder(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img_align_celeba" / "000001.jpg")
    lines = ["2", "Smiling Male", "000001.jpg 1 -1", "/tmp/x.jpg -1 1"]
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt row 1: file name '/tmp/x\.jpg' is absolute"):
        LabeledImageDataset(tmp_path)


def test_model_examples_refuse_a_file_name_outside_the_examples_folder(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "examples").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    row = {"file_name": "../outside.png", "factors": {}}
    (tmp_path / "examples" / "examples.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"examples\.jsonl row 0: file name '\.\./outside\.png'"):
        load_examples(tmp_path)


def _pickle_only_unet(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(model_path("default"), model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), model / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return model


def test_a_model_folder_with_only_pickle_weights_is_refused(tmp_path, monkeypatch):
    model = _pickle_only_unet(tmp_path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle file was loaded"))
    with pytest.raises(ValueError, match=r"unet' holds its weights only as pickle files \['diffusion_pytorch_model"):
        load_pipeline(model)


def test_pipelines_load_with_use_safetensors(tmp_path, monkeypatch):
    """Past the folder check (a .bin beside other weights), diffusers itself is asked for safetensors only."""
    from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

    seen = {}
    original = CounterfactualDiffusionPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(CounterfactualDiffusionPipeline, "from_pretrained", classmethod(spy))
    load_pipeline("default")
    assert seen.get("use_safetensors") is True


def test_the_cli_refuses_pickle_weights_in_one_line(tmp_path, capsys):
    model = _pickle_only_unet(tmp_path)
    assert main(["generate", "--model", str(model), "--n", "1", "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only as pickle files" in err, err
