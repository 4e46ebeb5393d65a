"""Commands that would not fit are refused before they start: `data make` (disk, memory) and `edit` (memory)."""

import os

import pytest

from cf_diffusion import resources
from cf_diffusion.cli import main
from cf_diffusion.data import get_dataset, make_dataset
from cf_diffusion.data.make import estimate_make


def test_format_bytes():
    assert [resources.format_bytes(b) for b in (12, 1234, 5.6e9, 7e15)] == ["12 B", "1.2 kB", "5.6 GB", "7000.0 TB"]


def _disk_used(folder) -> int:
    block = os.statvfs(folder).f_frsize
    return sum(-(-p.stat().st_size // block) * block for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["colored-bars", "morpho"])
def test_the_data_make_estimate_covers_what_it_writes(tmp_path, name):
    estimate = estimate_make(get_dataset(name), 64, 32, tmp_path / "out")
    make_dataset(name, 64, 32, tmp_path / "out", num_workers=1, show_progress=False)
    used = _disk_used(tmp_path / "out")
    assert used * 0.8 <= estimate["disk"] <= used * 2, (estimate, used)


def test_data_make_too_large_is_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "huge"
    assert main(["data", "make", "colored-bars", "--n", "99999999999", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs about" in err and "TB of disk" in err and "fit)" in err, err
    assert not out.exists()


def test_data_make_refuses_what_the_memory_does_not_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"of memory, 1\.0 kB available: make fewer rows \(about \d+ fit\)"):
        make_dataset("colored-bars", 100, 32, tmp_path / "out", num_workers=1, show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def pipe():
    from cf_diffusion.models import load_pipeline

    return load_pipeline("default")


def test_the_edit_memory_estimate_grows_with_the_image_tiles_steps_and_images(pipe):
    def estimate(size=1024, working_size=None, tiles=8, steps=50, images=1):
        return resources.estimate_edit_memory(pipe, size, size, working_size, tiles, steps, images)

    assert estimate(working_size=128) < estimate() < estimate(size=2048)
    assert estimate(tiles=1) < estimate() < estimate(steps=100) < estimate(steps=100, images=2)
    full = resources.FULL_SIZE_BUFFERS * 3 * 10000**2 * resources.FLOAT_BYTES
    assert estimate(size=10000, working_size=128) > full  # the blend back at full size remains


def test_edit_beyond_the_available_memory_is_refused_with_a_working_size(pipe, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

    Image.new("RGB", (1024, 768), (200, 30, 30)).save(tmp_path / "big.png")
    available = resources.estimate_edit_memory(pipe, 768, 1024, 256, 8, 50) + 1
    monkeypatch.setattr(resources, "available_memory", lambda: available)
    monkeypatch.setattr(CounterfactualDiffusionPipeline, "__call__", lambda *a, **k: pytest.fail("diffusion ran"))
    argv = ["edit", "--image", str(tmp_path / "big.png"), "--do", "color=green", "--out", str(tmp_path / "o.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "editing a 1024x768 image at its own size needs about" in err and "pass --working-size 256" in err, err
    resources.check_edit_fits(pipe, 768, 1024, 256, 8, 50)  # the suggestion fits
    monkeypatch.setattr(resources, "available_memory", lambda: 1)
    with pytest.raises(ValueError, match="downscale the image first"):
        resources.check_edit_fits(pipe, 768, 1024, None, 8, 50)
