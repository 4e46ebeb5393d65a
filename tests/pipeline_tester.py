"""Our small pipeline tester: what diffusers' PipelineTesterMixin checks, for pipelines built from tiny components.

A test class mixes `PipelineTesterMixin` in and defines `get_pipeline()` and `get_inputs(batch_size, seed)`; every
check compares outputs of the same pipeline under two ways of calling or storing it.
"""

import os
import tempfile

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import is_xformers_available

from cf_diffusion import CounterfactualDiffusionPipeline

ATOL = 1e-4


def _as_tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.float()
    return torch.as_tensor(np.asarray(images), dtype=torch.float32)


class PipelineTesterMixin:
    """Checks save/load, batch vs single calls, dict vs tuple, output types, callbacks, optional components."""

    def get_pipeline(self) -> CounterfactualDiffusionPipeline:
        raise NotImplementedError

    def get_inputs(self, batch_size: int = 1, seed: int = 0) -> dict:
        """Call arguments with one generator per image (so that batches and single images are comparable)."""
        raise NotImplementedError

    def test_save_load_gives_same_output(self):
        pipe = self.get_pipeline()
        expected = pipe(**self.get_inputs(), output_type="pt").images
        with tempfile.TemporaryDirectory() as tmp:
            pipe.save_pretrained(tmp)
            for folder in ("unet", "scheduler", "factor_encoder", "scm"):
                assert os.path.isdir(f"{tmp}/{folder}")
            assert os.path.isfile(f"{tmp}/scm/diffusion_pytorch_model.safetensors")
            assert os.path.isfile(f"{tmp}/factor_encoder/diffusion_pytorch_model.safetensors")
            for loader in (
                CounterfactualDiffusionPipeline,
                DiffusionPipeline,
            ):
                loaded = loader.from_pretrained(tmp)
                assert type(loaded) is CounterfactualDiffusionPipeline
                loaded.set_progress_bar_config(disable=True)
                output = loaded(**self.get_inputs(), output_type="pt").images
                assert torch.allclose(output, expected, atol=ATOL)

    def test_batch_equals_single_calls(self):
        pipe = self.get_pipeline()
        batched = pipe(**self.get_inputs(batch_size=3), output_type="pt")
        k = len(batched.images) // 3
        for i in range(3):
            single_inputs = self.get_inputs(batch_size=3)
            single_inputs["image"] = single_inputs["image"][i : i + 1]
            single_inputs["factors"] = single_inputs["factors"][i : i + 1]
            single_inputs["generator"] = single_inputs["generator"][i]
            single = pipe(**single_inputs, output_type="pt")
            assert torch.allclose(single.images, batched.images[i * k : (i + 1) * k], atol=ATOL)
            assert single.counterfactual_factors == batched.counterfactual_factors[i * k : (i + 1) * k]
            assert single.factual_factors == batched.factual_factors[i * k : (i + 1) * k]

    def test_dict_and_tuple_outputs_agree(self):
        pipe = self.get_pipeline()
        output = pipe(**self.get_inputs(), output_type="pt")
        images, factual, counterfactual, inversion = pipe(**self.get_inputs(), output_type="pt", return_dict=False)
        assert torch.allclose(images, output.images, atol=ATOL)
        assert factual == output.factual_factors and counterfactual == output.counterfactual_factors
        assert torch.allclose(inversion.trajectory, output.inversion.trajectory, atol=ATOL)

    def test_all_output_types(self):
        pipe = self.get_pipeline()
        pt = pipe(**self.get_inputs(batch_size=2), output_type="pt").images
        np_images = pipe(**self.get_inputs(batch_size=2), output_type="np").images
        pil = pipe(**self.get_inputs(batch_size=2), output_type="pil").images
        latent = pipe(**self.get_inputs(batch_size=2), output_type="latent").images
        n, c, h, w = pt.shape
        assert pt.min() >= 0 and pt.max() <= 1
        assert isinstance(np_images, np.ndarray) and np_images.shape == (n, h, w, c)
        assert np.allclose(np_images, pt.permute(0, 2, 3, 1).numpy(), atol=ATOL)
        assert len(pil) == n and all(isinstance(im, PIL.Image.Image) and im.size == (w, h) for im in pil)
        assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - np_images[0]).max() <= 1 / 255 + 1e-6
        unet = pipe.unet.config
        assert latent.shape == (n, unet.in_channels, unet.sample_size, unet.sample_size)

    def test_callback_reads_and_replaces_latents(self):
        pipe = self.get_pipeline()
        seen = []

        def callback(pipeline, step, timestep, kwargs):
            seen.append((step, int(timestep), kwargs["latents"].clone()))
            if step == pipeline.num_timesteps - 1:
                return {"latents": torch.full_like(kwargs["latents"], 0.25)}
            return {}

        inputs = self.get_inputs()
        output = pipe(**inputs, output_type="latent", callback_on_step_end=callback)
        reference = pipe(**self.get_inputs(), output_type="latent")
        assert [s for s, _, _ in seen] == list(range(pipe.num_timesteps))
        assert torch.allclose(seen[-1][2], reference.images, atol=ATOL)  # the callback saw the real latents
        assert torch.equal(output.images, torch.full_like(reference.images, 0.25))  # and replaced them

    def test_optional_components_none_save_and_load(self):
        pipe = self.get_pipeline()
        components = dict(pipe.components)
        for name in pipe._optional_components:
            if name != "vae":
                components[name] = None
        pipe = CounterfactualDiffusionPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        expected = pipe(**self.get_inputs(), output_type="pt").images
        with tempfile.TemporaryDirectory() as tmp:
            pipe.save_pretrained(tmp)
            loaded = CounterfactualDiffusionPipeline.from_pretrained(tmp)
        loaded.set_progress_bar_config(disable=True)
        for name in pipe._optional_components:
            assert (getattr(loaded, name) is None) == (getattr(pipe, name) is None)
        assert loaded.factor_predictor is None
        assert torch.allclose(loaded(**self.get_inputs(), output_type="pt").images, expected, atol=ATOL)

    def test_attention_slicing_keeps_output(self):
        pipe = self.get_pipeline()
        expected = pipe(**self.get_inputs(), output_type="pt").images
        pipe.enable_attention_slicing(1)
        assert torch.allclose(pipe(**self.get_inputs(), output_type="pt").images, expected, atol=ATOL)

    def test_xformers(self):
        pipe = self.get_pipeline()
        if is_xformers_available():
            pytest.skip("xformers is installed; its message for a missing install cannot be checked")
        with pytest.raises(ImportError, match="xformers is not installed"):
            pipe.enable_xformers_memory_efficient_attention()

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs an accelerator")
    def test_model_cpu_offload_keeps_output(self):
        pipe = self.get_pipeline()
        expected = pipe(**self.get_inputs(), output_type="pt").images
        pipe.enable_model_cpu_offload()
        output = pipe(**self.get_inputs(), output_type="pt").images
        assert torch.allclose(output.cpu(), expected, atol=1e-3)
