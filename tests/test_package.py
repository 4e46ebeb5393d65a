"""The package as users meet it: public names, the shipped default model, generic diffusers loading."""

import shutil

import torch
from diffusers import DiffusionPipeline

import cf_diffusion
from cf_diffusion.models import load_pipeline, model_path


def test_public_api_names():
    for name in (
        "CausalGraph",
        "Factor",
        "FactorSchema",
        "NeuralCausalModel",
        "counterfactual_bounds",
        "CounterfactualDiffusionPipeline",
        "FactorEncoder",
        "FactorPredictor",
    ):
        assert hasattr(cf_diffusion, name), name
    assert cf_diffusion.CounterfactualDiffusionPipeline is cf_diffusion.pipelines.CounterfactualDiffusionPipeline


def test_pipeline_folder_round_trip_keeps_scm_samples_and_loads_through_diffusers(tmp_path):
    pipe = load_pipeline("default")
    pipe.save_pretrained(tmp_path / "saved")
    again = DiffusionPipeline.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    assert type(again).__name__ == "CounterfactualDiffusionPipeline"
    first = pipe.scm.sample(500, interventions={"size": "large"}, generator=torch.Generator().manual_seed(3))
    second = again.scm.sample(500, interventions={"size": "large"}, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (first["size"] == 1).all()


def test_shipped_model_folder_has_every_component(tmp_path):
    folder = model_path("default")
    for component in ("unet", "vae", "scm", "factor_encoder", "factor_predictor", "scheduler"):
        assert (folder / component).is_dir(), component
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "weights must be safetensors"
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert load_pipeline(copy).schema.names == ["digit", "size", "color", "bar"]


def test_shipped_models_carry_their_recipes_editing_settings():
    from pathlib import Path

    from cf_diffusion.training.config import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    recipes = {
        "colored-bars": "colored_bars.yaml",
        "morpho": "morpho.yaml",
        "morphomnist": "morphomnist.yaml",
        "pendulum": "pendulum.yaml",
    }
    for name, recipe in recipes.items():
        editing = load_config(configs / recipe)["editing"]
        config = load_pipeline(name).config
        assert config.default_abduction == editing["abduction"], name
        assert config.default_guidance_scale == editing["guidance_scale"], name
        assert config.default_predictor_guidance == editing["predictor_guidance"], name
        assert config.default_keep_guidance == editing["keep_guidance"], name
        assert config.default_guidance_cutoff == editing["guidance_cutoff"], name
        assert config.default_keep_residual == editing["keep_residual"], name
        assert config.default_working_size == editing["working_size"], name


def test_a_real_28_px_digit_edits_in_one_call_with_the_shipped_morphomnist_model():
    import torch

    from cf_diffusion.models import load_examples

    pipe = load_pipeline("morphomnist")
    examples = load_examples("morphomnist")
    image = examples[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)  # a held-out digit as Morpho-MNIST stores it
    out = pipe(
        image=image,
        interventions={"intensity": 200.0},
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 1, 28, 28)  # padded to 32 px for the model, cropped back
    assert out.factual_factors[0]["digit"] == str(examples[0]["factors"]["digit"])  # the predictor reads it
    assert out.counterfactual_factors[0]["intensity"] == 200.0


def test_the_shipped_pendulum_model_edits_a_1024_px_scene_in_one_call():
    import numpy as np
    import torch

    from cf_diffusion.models import load_examples

    pipe = load_pipeline("pendulum")
    example = load_examples("pendulum")[0]
    assert example["image"].size == (1024, 1024)
    out = pipe(
        image=example["image"],
        factors=example["factors"],
        interventions={"light_angle": 70.0},
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )  # no working_size: the model's own (64 px), the edit composited back at 1024 px
    assert out.images.shape == (1, 1024, 1024, 3)
    edited = np.rint(out.images[0] * 255).astype(np.uint8)
    outside = out.masks[0, 0].numpy() == 0
    assert outside.any() and (~outside).any()
    assert np.array_equal(edited[outside], np.asarray(example["image"])[outside])
    assert out.counterfactual_factors[0]["light_angle"] == 70.0


def test_the_causal_core_imports_without_diffusers_and_the_pipeline_on_first_use():
    import subprocess
    import sys

    code = (
        "import sys\nimport cf_diffusion.graph, cf_diffusion.scm.bounds\nassert 'diffusers' not in sys.modules\n"
        "import cf_diffusion, diffusers\nassert not hasattr(diffusers, 'CounterfactualDiffusionPipeline')\n"
        "from cf_diffusion import CounterfactualDiffusionPipeline\n"
        "assert diffusers.CounterfactualDiffusionPipeline is CounterfactualDiffusionPipeline"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
