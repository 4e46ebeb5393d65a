"""Writing an assembled pipeline folder: whole or not at all."""

import pytest
from pipeline_fixtures import tiny_pipeline

from cf_diffusion.pipelines import CounterfactualDiffusionPipeline
from cf_diffusion.training.assemble import save_pipeline


def test_a_write_killed_midway_leaves_the_earlier_folder_and_the_next_write_replaces_it(tmp_path, monkeypatch):
    pipe = tiny_pipeline()
    path = save_pipeline(pipe, tmp_path / "pipeline")
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    original = CounterfactualDiffusionPipeline.save_pretrained

    def killed(self, folder, **kwargs):
        original(self, folder, **kwargs)
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # the run dies after some files are written

    monkeypatch.setattr(CounterfactualDiffusionPipeline, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        save_pipeline(pipe, path)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    CounterfactualDiffusionPipeline.from_pretrained(path)  # the earlier folder still loads
    monkeypatch.setattr(CounterfactualDiffusionPipeline, "save_pretrained", original)
    save_pipeline(pipe, path)
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]  # no staging or earlier folder left behind
    CounterfactualDiffusionPipeline.from_pretrained(path)
