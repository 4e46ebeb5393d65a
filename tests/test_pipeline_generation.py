"""FactorGenerationPipeline: generation as its own pipeline over the edit pipeline's components."""

import diffusers
import pytest
import torch
from diffusers import DiffusionPipeline
from pipeline_fixtures import tiny_pipeline, tiny_text_components

import cf_diffusion
from cf_diffusion.pipelines import FactorGenerationPipeline, GenerationPipelineOutput

FACTORS = [
    {"size": "small", "color": "red", "bar": "1", "thickness": 3.0},
    {"size": "large", "color": "blue", "bar": "0", "thickness": 2.0},
]
ATOL = 1e-6


def generate_inputs(seed: int = 3) -> dict:
    return {
        "num_images": 2,
        "num_inference_steps": 2,
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "pt",
    }


def test_generation_pipeline_shares_the_edit_pipelines_components_and_generates_as_pipe_generate():
    pipe = tiny_pipeline(latent=True)
    generation = FactorGenerationPipeline.from_pipe(pipe)
    generation.set_progress_bar_config(disable=True)
    for name in ("unet", "scheduler", "factor_encoder", "scm", "vae"):
        assert getattr(generation, name) is getattr(pipe, name)
    output = generation(**generate_inputs())
    assert isinstance(output, GenerationPipelineOutput) and output.images.shape == (2, 3, 16, 16)
    delegated = pipe.generate(**generate_inputs())
    assert torch.equal(output.images, delegated.images) and output.factors == delegated.factors
    images, factors = pipe.generate(**generate_inputs(), return_dict=False)
    assert torch.equal(images, output.images) and factors == output.factors


def test_saved_generation_pipelines_and_edit_folders_load_as_generation_pipelines(tmp_path):
    pipe = tiny_pipeline(latent=True)
    expected = pipe.generate(**generate_inputs()).images
    FactorGenerationPipeline.from_pipe(pipe).save_pretrained(tmp_path / "generation")
    pipe.save_pretrained(tmp_path / "edit")
    for loader, folder in (
        (DiffusionPipeline, "generation"),
        (FactorGenerationPipeline, "generation"),
        (FactorGenerationPipeline, "edit"),
    ):
        loaded = loader.from_pretrained(tmp_path / folder)
        assert type(loaded) is FactorGenerationPipeline, (loader, folder)
        loaded.set_progress_bar_config(disable=True)
        assert torch.allclose(loaded(**generate_inputs()).images, expected, atol=ATOL), (loader, folder)


def test_generation_pipeline_is_exported_and_registered_with_diffusers():
    assert cf_diffusion.FactorGenerationPipeline is FactorGenerationPipeline
    assert diffusers.FactorGenerationPipeline is FactorGenerationPipeline


def test_pipe_generate_reports_progress_through_the_edit_pipelines_progress_bar():
    pipe = tiny_pipeline()
    totals = []

    class Steps:
        def __init__(self, total):
            totals.append(total)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n=1):
            totals.append(n)

    pipe.progress_bar = lambda iterable=None, total=None: Steps(total)
    pipe.generate(num_images=1, num_inference_steps=3, output_type="pt")
    assert totals == [3, 1, 1, 1]


def test_generation_callback_reads_and_replaces_latents():
    generation = FactorGenerationPipeline.from_pipe(tiny_pipeline())
    generation.set_progress_bar_config(disable=True)
    seen = []

    def callback(pipeline, step, timestep, kwargs):
        seen.append((pipeline, step))
        if step == pipeline.num_timesteps - 1:
            return {"latents": torch.full_like(kwargs["latents"], 0.25)}
        return {}

    output = generation(**generate_inputs(), callback_on_step_end=callback)
    assert seen == [(generation, 0), (generation, 1)]
    assert torch.equal(output.images, torch.full_like(output.images, 0.625))  # latents 0.25 -> pixels (0.25 + 1) / 2


def test_generation_with_a_prompt(tmp_path):
    pipe = tiny_pipeline()
    text_encoder, tokenizer = tiny_text_components(tmp_path)
    pipe = type(pipe)(**{**pipe.components, "text_encoder": text_encoder, "tokenizer": tokenizer})
    pipe.set_progress_bar_config(disable=True)
    generation = FactorGenerationPipeline.from_pipe(pipe)
    generation.set_progress_bar_config(disable=True)
    prompted = generation(**generate_inputs(), prompt=["a", "b"]).images
    assert torch.equal(prompted, pipe.generate(**generate_inputs(), prompt=["a", "b"]).images)
    assert not torch.allclose(prompted, generation(**generate_inputs()).images)
    with pytest.raises(ValueError, match="prompt is a list of 1 prompts but there are 2 image"):
        generation(**generate_inputs(), prompt=["a"])


BAD_INPUTS = [
    ({"guidance_scale": {"color": 2.0}}, "guidance_scale of generate must be one number >= 0"),
    ({"factors": FACTORS, "interventions": {"color": "red"}}, "pass either factors or interventions"),
    ({"num_images": 0}, "num_images must be an integer >= 1, got 0"),
    ({"interventions": {"hue": "red"}}, "unknown factor 'hue' in interventions"),
    ({"interventions": {"color": ["red", "blue", "red"]}}, "intervention on 'color' has 3 values; expected one"),
    ({"generator": [torch.Generator()]}, "generator is a list of 1 generators but there are 2 image"),
    ({"factors": FACTORS, "generator": [torch.Generator()] * 3}, "generator is a list of 3 generators but"),
    ({"output_type": "jpeg"}, "output_type must be one of"),
    ({"prompt": "a red digit"}, "a prompt was given but the pipeline has no text_encoder"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, r"callback_on_step_end_tensor_inputs \['noise'\] are not"),
    ({"latents": torch.zeros(1, 3, 8, 8)}, r"latents must have shape \(2, 3, 8, 8\), got \(1, 3, 8, 8\)"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_generation_inputs_raise_value_error(change, message):
    generation = FactorGenerationPipeline.from_pipe(tiny_pipeline())
    with pytest.raises(ValueError, match=message):
        generation(**{"num_images": 2, "num_inference_steps": 2, **change})


def test_generation_pipeline_checks_its_components():
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_pipeline()
    components = {name: getattr(pipe, name) for name in ("unet", "factor_encoder", "scm")}
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="scheduler must be a DDIMScheduler"):
        FactorGenerationPipeline(**components, scheduler=scheduler)
    with pytest.raises(ValueError, match="text_encoder and tokenizer go together"):
        FactorGenerationPipeline(**components, scheduler=pipe.scheduler, text_encoder=object())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs an accelerator")
def test_pipe_generate_with_model_cpu_offload_keeps_output():
    pipe = tiny_pipeline(latent=True)
    expected = pipe.generate(**generate_inputs()).images
    pipe.enable_model_cpu_offload()
    output = pipe.generate(**generate_inputs()).images
    assert torch.allclose(output.cpu(), expected, atol=1e-3)
