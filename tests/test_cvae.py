"""The conditional-VAE deep structural causal model baseline (`cvae-scm`): the model, its training, the method.

Tiny models on 16 px colored-bars: these tests prove the plumbing and the method's definition, not the quality of
a model.
"""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from pipeline_fixtures import procedural_pipeline

from cf_diffusion.data import get_dataset
from cf_diffusion.evaluation.cvae import ConditionalVAE, load_cvae
from cf_diffusion.evaluation.harness import DEFAULT_METHODS, EvaluationConfig, evaluate
from cf_diffusion.evaluation.methods import EditOptions, Method, apply_method
from cf_diffusion.training.config import load_config
from cf_diffusion.training.cvae import train_cvae, train_recipe_cvae
from cf_diffusion.training.data import load_training_data

SCHEMA = get_dataset("colored-bars").schema


def tiny_cvae(seed: int = 0) -> ConditionalVAE:
    torch.manual_seed(seed)
    return ConditionalVAE(SCHEMA, in_channels=3, sample_size=16, block_out_channels=(8, 16), latent_dim=4)


def tiny_recipe(tmp_path, num_steps: int) -> dict:
    return load_config(
        {
            "output_dir": str(tmp_path / "run"),
            "data": {"dataset": "colored-bars", "num_images": 64, "resolution": 16},
            "training": {"checkpointing_steps": 10, "validation_steps": 0},
            "cvae": {"block_out_channels": [8, 16], "latent_dim": 4, "num_steps": num_steps, "batch_size": 16},
        }
    )


@pytest.fixture(scope="module")
def rows():
    sample = get_dataset("colored-bars").sample(3, seed=7, resolution=16)
    return sample.images.astype(np.float32) / 255.0, {k: np.asarray(v) for k, v in sample.factors.items()}


def encoded(columns) -> torch.Tensor:
    return SCHEMA.normalize({name: torch.as_tensor(np.asarray(columns[name])) for name in SCHEMA.names})


def test_model_round_trips_through_safetensors(tmp_path):
    cvae = tiny_cvae()
    cvae.save_pretrained(tmp_path / "cvae")
    assert (tmp_path / "cvae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list((tmp_path / "cvae").glob("*.bin"))
    loaded = ConditionalVAE.from_pretrained(tmp_path / "cvae")
    assert loaded.schema == SCHEMA and loaded.config.latent_dim == 4
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    factors = SCHEMA.encode({"size": ["small", "large"], "color": ["red", "green"], "digit": [1, 0], "bar": [0, 1]})
    assert torch.equal(cvae.counterfactual(images, factors, factors), loaded.counterfactual(images, factors, factors))


def test_the_decoder_reads_the_factors_and_bad_inputs_fail():
    cvae = tiny_cvae()
    red = SCHEMA.encode({"digit": [3], "size": ["large"], "color": ["red"], "bar": [1]})
    green = SCHEMA.encode({"digit": [3], "size": ["large"], "color": ["green"], "bar": [1]})
    condition = cvae.condition(red)
    assert condition.shape == (1, 10 + 2 + 2 + 2) == (1, cvae.condition_dim)
    assert condition[0].nonzero().flatten().tolist() == [3, 10 + 1, 12 + 0, 14 + 1]  # one-hot per factor
    latents = torch.zeros(1, 4)
    assert not torch.allclose(cvae.decode(latents, red), cvae.decode(latents, green))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, 16, 16\]"):
        cvae.encode(torch.zeros(1, 1, 16, 16), red)
    with pytest.raises(ValueError, match=r"Tensor\[B, 4\]"):
        cvae.decode(latents, red[:, :3])
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* 2"):
        ConditionalVAE(SCHEMA, sample_size=18, block_out_channels=(8, 16))


def test_training_reduces_the_loss_and_resumes(tmp_path):
    config = tiny_recipe(tmp_path, num_steps=30)
    data = load_training_data(config)
    cvae = train_cvae(config, data, Accelerator(), None)
    rows = torch.arange(len(data))
    images, factors = data.pixel_batch(rows), data.factor_batch(rows)
    torch.manual_seed(0)
    trained = cvae.loss(images, factors, beta=config["cvae"]["beta"]).item()
    torch.manual_seed(0)
    untrained = tiny_cvae().loss(images, factors, beta=config["cvae"]["beta"]).item()
    assert trained < 0.7 * untrained
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "cvae").iterdir())
    assert checkpoints == ["checkpoint-20", "checkpoint-30"]
    # extended from its last checkpoint, training goes on from step 30
    extended = load_config(config, {"cvae": {"num_steps": 31}})
    train_cvae(extended, data, Accelerator(), "latest")
    assert (tmp_path / "run" / "checkpoints" / "cvae" / "checkpoint-31").is_dir()


def test_the_recipe_command_writes_the_model_once(tmp_path):
    config = tiny_recipe(tmp_path, num_steps=2)
    out = train_recipe_cvae(config)
    assert out == tmp_path / "run" / "cvae"
    assert ConditionalVAE.from_pretrained(out).config.block_out_channels == [8, 16]
    assert json.loads((out / "config.json").read_text())["latent_dim"] == 4
    with pytest.raises(ValueError, match="already holds a conditional VAE"):
        train_recipe_cvae(config)


def test_null_edit_returns_the_reconstruction(rows):
    images, factual = rows
    cvae = tiny_cvae()
    pipe = procedural_pipeline("colored-bars")
    generators = [torch.Generator().manual_seed(i) for i in range(len(images))]
    method = Method("cvae-scm", 25)
    out = apply_method(pipe, method, images, factual, factual, [], EditOptions(cvae=cvae), generators)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        mean, _ = cvae.encode(pixels, encoded(factual))
        reconstruction = (cvae.decode(mean, encoded(factual)).clamp(-1, 1) + 1) / 2
    assert method.name == "cvae-scm"
    assert out.shape == images.shape
    np.testing.assert_allclose(out, reconstruction.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_the_counterfactual_factors_are_the_scms(rows, monkeypatch):
    images, factual = rows
    cvae = tiny_cvae()
    pipe = procedural_pipeline("colored-bars")
    drawn = pipe.scm.counterfactual(  # do(color): bar descends from it
        {k: v.tolist() for k, v in factual.items()},
        {"color": (1 - factual["color"]).tolist()},
        num_samples=1,
        generator=torch.Generator().manual_seed(0),
    )
    targets = {name: drawn[name][:, 0].numpy() for name in SCHEMA.names}
    targets["size"] = 1 - factual["size"]  # a non-descendant the SCM keeps: the method must keep it factual
    decoded = []
    real_decode = ConditionalVAE.decode
    monkeypatch.setattr(ConditionalVAE, "decode", lambda self, z, f: decoded.append(f) or real_decode(self, z, f))
    generators = [torch.Generator().manual_seed(i) for i in range(len(images))]
    apply_method(pipe, Method("cvae-scm", 25), images, factual, targets, ["color"], EditOptions(cvae=cvae), generators)
    expected = {**factual, "color": targets["color"], "bar": targets["bar"]}
    assert pipe.scm.graph.descendants(["color"]) == {"bar"}
    assert torch.equal(decoded[0], encoded(expected))


def test_evaluate_runs_the_baseline_and_refuses_it_without_a_model(tmp_path):
    pipe = procedural_pipeline("colored-bars")
    assert "cvae-scm" not in DEFAULT_METHODS
    with pytest.raises(ValueError, match="needs a conditional VAE: pass --cvae"):
        evaluate(pipe, EvaluationConfig("colored-bars", tmp_path, methods=["cvae-scm"], n=2, show_progress=False))
    with pytest.raises(ValueError, match="holds no conditional VAE"):
        load_cvae(tmp_path / "missing", SCHEMA)
    tiny_cvae().save_pretrained(tmp_path / "cvae")
    config = EvaluationConfig(
        "colored-bars",
        tmp_path / "out",
        ["effectiveness", "composition"],
        n=4,
        methods=["cvae-scm", "regenerate"],
        steps=(2,),
        cycles=(1, 2),
        table_rows=1000,
        show_progress=False,
        cvae=tmp_path / "cvae",
    )
    results = evaluate(pipe, config)
    assert set(results["methods"]) == {"cvae-scm", "regenerate@2"}
    record = results["methods"]["cvae-scm"]
    assert set(record["edits"]) == {"do(digit)", "do(size)", "do(color)", "do(bar)"}
    assert set(record["composition"]) == {"1", "2"}
