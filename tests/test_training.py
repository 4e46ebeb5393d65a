"""Training: a tiny recipe end to end, exact resume after a kill, atomic checkpoints, recipe errors, the shipped
recipes, two CPU processes, and the fine-tune path from a tiny Stable-Diffusion-shaped model.

Everything is tiny (8-16 px, a few thousand parameters, a handful of steps): these tests prove the plumbing, never
the quality of a model.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from pipeline_fixtures import EMBED_DIM, tiny_pipeline, tiny_text_components

from cf_diffusion import CausalGraph, CounterfactualDiffusionPipeline
from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.data import available_datasets, get_dataset, make_dataset
from cf_diffusion.scm import NeuralCausalModel
from cf_diffusion.training import checkpoint as checkpoint_module
from cf_diffusion.training import diffusion
from cf_diffusion.training.assemble import assemble_pipeline, load_stage_vae
from cf_diffusion.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    starting_checkpoint,
)
from cf_diffusion.training.config import load_config
from cf_diffusion.training.data import load_training_data
from cf_diffusion.training.diffusion import ConditionedUNet, build_factor_encoder, build_unet, train_diffusion
from cf_diffusion.training.finetune import add_factor_conditioning, encode_prompts, load_text_components
from cf_diffusion.training.predictor import train_predictor
from cf_diffusion.training.run import STAGES, train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def tiny_recipe(output_dir: Path, latent: bool = True, **sections: dict) -> dict:
    """A recipe for 16 px colored-bars with tiny models and a handful of steps; `sections` override (same nesting)."""
    recipe = {
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"dataset": "colored-bars", "num_images": 200, "resolution": 16},
        "training": {"checkpointing_steps": 2, "checkpoints_total_limit": 3, "validation_steps": 2},
        "scm": {"num_steps": 5, "batch_size": 64, "hidden_dim": 8},
        "vae": {
            "block_out_channels": [8, 16],
            "norm_num_groups": 8,
            "num_steps": 2,
            "batch_size": 8,
            "decoder_num_steps": 2,
        },
        "unet": {
            "block_out_channels": [16, 32],
            "layers_per_block": 1,
            "attention_head_dim": 8,
            "embed_dim": 16,
            "norm_num_groups": 8,
            "num_steps": 3,
            "batch_size": 8,
            "lr_warmup_steps": 1,
        },
        "predictor": {"block_out_channels": [8, 16], "num_steps": 2, "batch_size": 8},
    }
    if not latent:
        recipe["vae"] = None
    return load_config(recipe, sections)


def colored_bars_image(resolution: int = 16, seed: int = 7) -> tuple[Image.Image, dict]:
    """One held-out colored-bars image and its factors (level names)."""
    dataset = get_dataset("colored-bars")
    sample = dataset.sample(1, seed=seed, resolution=resolution)
    values = dataset.schema.from_values({k: torch.as_tensor(v) for k, v in sample.factors.items()})
    return Image.fromarray(np.ascontiguousarray(sample.images[0])), {k: v[0] for k, v in values.items()}


def assert_same_state(a, b, where: str = "state") -> None:
    """Nested checkpoint states are equal: tensors up to float tolerance, everything else exactly."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), f"{where} differs"
        else:
            assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}.{i}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------- end to end


def test_tiny_recipe_trains_a_pipeline_that_loads_and_edits(tmp_path):
    editing = {"abduction": "ddpm", "guidance_scale": {"color": 2.0}, "working_size": 32}
    config = tiny_recipe(tmp_path / "run", editing=editing)
    path = train(config)
    run = tmp_path / "run"
    assert path == run / "pipeline" and (path / "model_index.json").is_file()
    assert all((run / "stages" / stage / "DONE").is_file() for stage in STAGES)
    assert all((run / "validation" / f"{stage}-000002.png").is_file() for stage in ("vae", "decoder", "unet"))
    assert [p.name for p in list_checkpoints(run / "checkpoints" / "unet")] == ["checkpoint-2", "checkpoint-3"]

    pipe = CounterfactualDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae is not None and pipe.unet.config.sample_size == 8 and pipe.image_size == 16
    assert pipe.schema.names == get_dataset("colored-bars").schema.names
    assert pipe.config.default_abduction == "ddpm" and pipe.config.default_guidance_scale == {"color": 2.0}
    assert pipe.config.default_working_size == 32
    image, factors = colored_bars_image()
    other = "green" if factors["color"] == "red" else "red"
    out = pipe(
        image=image,
        factors=factors,
        interventions={"color": other},
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images.shape == (1, 16, 16, 3) and np.isfinite(out.images).all()
    counterfactual = out.counterfactual_factors[0]
    assert counterfactual["color"] == other
    assert counterfactual["size"] == factors["size"] and counterfactual["digit"] == factors["digit"]
    read = pipe(image=image, interventions={}, num_inference_steps=2, output_type="np")  # factor_predictor reads
    assert set(read.factual_factors[0]) == set(factors)
    # A look at the run from its last unet checkpoint (EMA weights) gives the finished model.
    from_checkpoint = assemble_pipeline(config, checkpoint=run / "checkpoints" / "unet" / "checkpoint-3")
    assert torch.equal(from_checkpoint.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_decoder_stage_refines_the_decoder_and_keeps_the_encoder(tmp_path):
    config = tiny_recipe(tmp_path / "run", vae={"decoder_num_steps": 3})
    stages = tmp_path / "run" / "stages"
    with pytest.raises(ValueError, match="run the 'vae' stage first"):
        train(config, stages=("decoder",))
    train(config, stages=("vae", "decoder"))
    joint = AutoencoderKL.from_pretrained(stages / "vae" / "vae")
    refined = AutoencoderKL.from_pretrained(stages / "decoder" / "vae")
    for module in ("encoder", "quant_conv"):
        assert_same_state(getattr(joint, module).state_dict(), getattr(refined, module).state_dict(), module)
    assert refined.config.scaling_factor == joint.config.scaling_factor
    assert not torch.equal(joint.decoder.conv_out.weight, refined.decoder.conv_out.weight)
    assert not torch.equal(joint.post_quant_conv.weight, refined.post_quant_conv.weight)
    assert torch.equal(load_stage_vae(config).decoder.conv_out.weight, refined.decoder.conv_out.weight)
    _, state = load_checkpoint(tmp_path / "run" / "checkpoints" / "decoder" / "checkpoint-3")
    assert state["lr_scheduler"]["last_epoch"] == 3
    # Without decoder steps the recipe has no decoder stage, and the pipeline is assembled without it.
    plain = load_config(config, {"output_dir": str(tmp_path / "plain"), "vae": {"decoder_num_steps": 0}})
    assert train(plain) == tmp_path / "plain" / "pipeline"
    assert not (tmp_path / "plain" / "stages" / "decoder").exists()


# ---------------------------------------------------------------------------------------------- resume


def killed_at(run_stage, micro_step: int, error: type[BaseException]):
    """`run_stage` whose loss raises `error` at micro-batch `micro_step`, as a run killed there."""

    def dying_run_stage(stage, accelerator, loss_fn, *args, **kwargs):
        def loss_until_killed(step: int) -> torch.Tensor:
            if step == micro_step:
                raise error
            return loss_fn(step)

        return run_stage(stage, accelerator, loss_until_killed, *args, **kwargs)

    return dying_run_stage


def test_killed_and_extended_unet_stages_resume_exactly(tmp_path, monkeypatch):
    config = tiny_recipe(tmp_path / "a", latent=False, unet={"num_steps": 4})
    data = load_training_data(config)
    accelerator = Accelerator()
    train_diffusion(config, data, accelerator, None)
    _, uninterrupted = load_checkpoint(tmp_path / "a" / "checkpoints" / "unet" / "checkpoint-4")

    class Killed(Exception):
        pass

    original = diffusion.run_stage
    starts = []

    def recording_run_stage(*args, **kwargs):
        starts.append(original(*args, **kwargs))
        return starts[-1]

    # Killed inside step 3: the checkpoint of step 2 survives and the run resumes from it.
    killed = load_config(config, {"output_dir": str(tmp_path / "b")})
    monkeypatch.setattr(diffusion, "run_stage", killed_at(original, 3, Killed))
    with pytest.raises(Killed):
        train_diffusion(killed, data, accelerator, None)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints" / "unet")] == ["checkpoint-2"]
    monkeypatch.setattr(diffusion, "run_stage", recording_run_stage)
    train_diffusion(killed, data, accelerator, "latest")

    # Finished at step 2, then extended to 4 steps by a second run.
    extended = load_config(config, {"output_dir": str(tmp_path / "c"), "unet": {"num_steps": 2}})
    train_diffusion(extended, data, accelerator, None)
    train_diffusion(load_config(extended, {"unet": {"num_steps": 4}}), data, accelerator, "latest")

    assert starts == [2, 0, 2]
    _, at_two = load_checkpoint(tmp_path / "a" / "checkpoints" / "unet" / "checkpoint-2")
    assert not torch.allclose(
        at_two["models"]["model"]["unet.conv_in.weight"], uninterrupted["models"]["model"]["unet.conv_in.weight"]
    )
    assert all("exp_avg" in state and "exp_avg_sq" in state for state in uninterrupted["optimizer"]["state"].values())
    for run in ("b", "c"):
        step, resumed = load_checkpoint(tmp_path / run / "checkpoints" / "unet" / "checkpoint-4")
        assert step == 4
        assert_same_state(resumed, uninterrupted)


def test_train_resumes_a_killed_stage_through_the_command_path(tmp_path, monkeypatch):
    config = tiny_recipe(tmp_path / "run", latent=False, unet={"num_steps": 3})
    original = diffusion.run_stage
    monkeypatch.setattr(diffusion, "run_stage", killed_at(original, 2, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(config, stages=("unet",))
    assert not (tmp_path / "run" / "stages" / "unet" / "DONE").exists()
    monkeypatch.setattr(diffusion, "run_stage", original)
    assert train(config, resume_from_checkpoint="latest", stages=("unet",)) is None  # other stages still to run
    assert (tmp_path / "run" / "stages" / "unet" / "DONE").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints" / "unet")] == [
        "checkpoint-2",
        "checkpoint-3",
    ]


def _fit_scm(data, num_steps: int = 6, **kwargs) -> tuple[NeuralCausalModel, list[float]]:
    torch.manual_seed(0)
    scm = NeuralCausalModel(data.graph, data.schema, hidden_dim=8)
    generator = torch.Generator().manual_seed(3)
    losses = scm.fit(data.observational_table(), num_steps, 32, generator=generator, show_progress=False, **kwargs)
    return scm, losses


def test_an_interrupted_scm_fit_resumes_bit_identically(tmp_path):
    data = load_training_data(tiny_recipe(tmp_path, latent=False))
    uninterrupted, losses = _fit_scm(data)
    saved = {}
    _fit_scm(data, checkpoint=lambda step, state: saved.update({step: state}), checkpoint_steps=2)
    assert sorted(saved) == [2, 4, 6]
    save_checkpoint(tmp_path / "ckpt", 4, saved[4])  # through the checkpoint files, as a killed run would
    _, state = load_checkpoint(tmp_path / "ckpt" / "checkpoint-4")
    resumed, resumed_losses = _fit_scm(data, resume=state)
    assert resumed_losses == losses
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"other settings \(num_steps: 6 -> 8\)"):
        _fit_scm(data, num_steps=8, resume=state)


def test_train_resumes_a_killed_scm_stage_from_its_checkpoint(tmp_path, monkeypatch):
    config = tiny_recipe(tmp_path / "a", latent=False, scm={"num_steps": 5})
    train(config, stages=("scm",))
    original = NeuralCausalModel._randint
    calls = []

    def killed_at_step_3(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, *args)

    killed = load_config(config, {"output_dir": str(tmp_path / "b")})
    monkeypatch.setattr(NeuralCausalModel, "_randint", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(killed, stages=("scm",))
    checkpoints = tmp_path / "b" / "checkpoints" / "scm"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-2"]
    calls.clear()
    assert train(killed, resume_from_checkpoint="latest", stages=("scm",)) is None
    assert len(calls) == 3  # steps 3 to 5 only
    models = [NeuralCausalModel.from_pretrained(tmp_path / run / "stages" / "scm" / "scm") for run in "ab"]
    for key, value in models[0].state_dict().items():
        assert torch.equal(models[1].state_dict()[key], value), key
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]


def test_editing_weights_for_unknown_factors_fail_before_training(tmp_path):
    config = tiny_recipe(tmp_path / "run", editing={"guidance_scale": {"hue": 2.0}})
    with pytest.raises(ValueError, match="'editing.guidance_scale'.*unknown factor.*'hue'"):
        train(config)
    assert not (tmp_path / "run" / "stages").exists()


def test_finished_stages_refuse_a_changed_recipe_and_name_its_keys(tmp_path):
    run = tmp_path / "run"
    config = tiny_recipe(run, latent=False)
    train(config, stages=("scm", "predictor"))
    done = {stage: (run / "stages" / stage / "DONE").stat().st_mtime_ns for stage in ("scm", "predictor")}
    changed = load_config(config, {"data": {"num_images": 150}, "predictor": {"lr": 0.01}})
    with pytest.raises(ValueError, match=r"scm \(data.num_images\); predictor \(data.num_images, predictor.lr\)"):
        train(changed, stages=("unet",))
    assert not (run / "stages" / "unet").exists()
    # Keys no stage's model depends on may change; finished stages are reused.
    assert train(load_config(config, {"training": {"validation_steps": 5}}), stages=("scm", "predictor")) is None
    # A key the stage's record lacks (added to the recipe format after it trained) counts at its default.
    record = run / "stages" / "predictor" / "recipe.json"
    stored = json.loads(record.read_text())
    del stored["predictor.lr"]
    record.write_text(json.dumps(stored))
    assert train(config, stages=("scm", "predictor")) is None
    with pytest.raises(ValueError, match=r"stages .*: predictor \(predictor.lr\)\."):
        train(load_config(config, {"predictor": {"lr": 0.01}}), stages=("unet",))
    # Stages finished before fingerprints existed are reused as they are.
    for stage in done:
        (run / "stages" / stage / "recipe.json").unlink()
    assert train(changed, stages=("scm", "predictor")) is None
    assert done == {stage: (run / "stages" / stage / "DONE").stat().st_mtime_ns for stage in done}


def test_a_fresh_run_over_an_interrupted_one_is_refused_and_keeps_its_checkpoints(tmp_path):
    run = tmp_path / "run"
    config = tiny_recipe(run, latent=False, predictor={"num_steps": 4})
    data = load_training_data(config)
    train_predictor(config, data, Accelerator(), None)  # an earlier run, never marked DONE
    checkpoints = run / "checkpoints" / "predictor"
    before = [p.name for p in list_checkpoints(checkpoints)]
    fresh = load_config(config, {"predictor": {"num_steps": 2}})
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run \\(up to checkpoint-4\\).*latest"):
        train(fresh, stages=("predictor",))
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train_predictor(fresh, data, Accelerator(), None)
    assert [p.name for p in list_checkpoints(checkpoints)] == before == ["checkpoint-2", "checkpoint-4"]
    assert train(config, resume_from_checkpoint="latest", stages=("predictor",)) is None
    assert (run / "stages" / "predictor" / "DONE").is_file()


def test_a_stage_removes_the_temporary_folders_of_unfinished_checkpoint_writes(tmp_path):
    config = tiny_recipe(tmp_path / "run", latent=False)
    checkpoints = tmp_path / "run" / "checkpoints" / "predictor"
    orphan = checkpoints / ".tmp-checkpoint-6-4242"
    orphan.mkdir(parents=True)
    (orphan / "state.json").write_text("{half a fi")
    train_predictor(config, load_training_data(config), Accelerator(), None)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    state = {"models": {"w": torch.arange(4.0)}, "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "lr": 0.1}}
    save_checkpoint(tmp_path, 2, state)
    leftover = tmp_path / ".tmp-checkpoint-9-12345"
    leftover.mkdir()
    (leftover / "state.json").write_text("{half a fi")
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-2"

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 4, {"models": {"w": torch.zeros(4)}})
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2"]
    step, loaded = load_checkpoint(resolve_checkpoint(tmp_path, "latest"))
    assert step == 2
    assert_same_state(loaded, state)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        resolve_checkpoint(tmp_path, str(leftover))
    for step in (4, 6, 8):
        save_checkpoint(tmp_path, step, state, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert resolve_checkpoint(tmp_path / "none-yet", "latest") is None


# ---------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    ("recipe", "overrides", "match"),
    [
        ({"data": {"dataset": "colored-bars"}, "unet": {"learning_rate": 1e-4}}, None, "'learning_rate'"),
        ({"data": {"dataset": "colored-bars"}, "optimizer": {"lr": 1}}, None, "'optimizer'"),
        ({"data": {"dataset": "colored-bars"}}, {"scm": {"steps": 3}}, "scm.'steps'"),
        ({}, None, "'data'.*'dataset'.*'path'"),
        ({"data": {"dataset": "colored-bars", "path": "images/"}}, None, "'data' needs exactly one"),
        ({"data": {"dataset": "colored-bars"}, "unet": 3}, None, "'unet' must be a mapping"),
        ({"data": {"dataset": "colored-bars"}, "scm": None}, None, "'scm' cannot be null"),
        ({"data": {"dataset": "colored-bars"}, "vae": None, "unet": {"pretrained": "sd15"}}, None, "'vae' cannot"),
        ({"data": {"dataset": "morpho", "interventional_fraction": 1.0}}, None, "in \\[0, 1\\), got 1.0"),
        ({"data": {"path": "images/", "interventional_fraction": 0.5}}, None, "needs a procedural dataset"),
        ({"data": {"dataset": "morpho"}, "editing": {"abduction": "euler"}}, None, "'editing.abduction'.*'euler'"),
        ({"data": {"dataset": "morpho"}, "editing": {"guidance_scale": {"digit": -1}}}, None, "'editing.guidance"),
        ({"data": {"dataset": "morpho"}, "editing": {"guidance_scale": "high"}}, None, "'editing.guidance_scale'"),
        ({"data": {"dataset": "morpho"}, "editing": {"keep_residual": "yes"}}, None, "'editing.keep_residual'"),
        ({"data": {"dataset": "morpho"}, "editing": {"guidance_cutoff": 1.5}}, None, "'editing.guidance_cutoff'.*1.5"),
        ({"data": {"dataset": "morpho"}, "editing": {"working_size": 16}}, None, "'editing.working_size'.*\\(32\\)"),
        ({"data": {"dataset": "morpho"}, "unet": {"prediction_type": "x0"}}, None, "'unet.prediction_type'.*'x0'"),
        (
            {"data": {"dataset": "morpho"}, "training": {"checkpointing_steps": 0}},
            None,
            "'training.checkpointing_steps' must be an integer >= 1, got 0",
        ),
        ({"data": {"dataset": "morpho"}}, {"scm": {"batch_size": 0}}, "'scm.batch_size' must be an integer >= 1"),
        ({"data": {"dataset": "morpho"}, "unet": {"num_steps": "five"}}, None, "'unet.num_steps' .*, got 'five'"),
        ({"data": {"dataset": "morpho"}, "unet": {"num_steps": True}}, None, "'unet.num_steps' must be an integer"),
        ({"data": {"dataset": "morpho"}, "vae": {"lr": "3e-4"}}, None, "'vae.lr' must be a number >= 0, got '3e-4'"),
        ({"data": {"dataset": "morpho"}, "unet": {"lr": float("nan")}}, None, "'unet.lr' must be a number >= 0"),
        ({"data": {"dataset": "morpho", "holdout": -1}}, None, "'data.holdout' must be an integer >= 0, got -1"),
        ({"data": {"dataset": "morpho", "skip_bad": "yes"}}, None, "'data.skip_bad' must be true or false"),
        (
            {"data": {"dataset": "morpho"}, "unet": {"block_out_channels": [64, "x"]}},
            None,
            "'unet.block_out_channels' must be a list of integers >= 1",
        ),
    ],
)
def test_recipe_errors_name_the_key(recipe, overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(recipe, overrides)


def test_recipe_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="missing.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("data:\n  dataset: morpho\n  resoluton: 32\n")
    with pytest.raises(ValueError, match="data.'resoluton'"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "list.yaml").write_text("- data\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("data:\n  dataset: [morpho\n")
    with pytest.raises(ValueError, match=r"broken.yaml' is not valid YAML: .*line 2") as raised:
        load_config(tmp_path / "broken.yaml")
    assert "\n" not in str(raised.value)
    config = load_config({"data": {"dataset": "morpho"}, "unet": {"pretrained": "models/sd15"}})
    assert config["vae"]["pretrained"] == str(Path("models/sd15") / "vae")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_recipes_load(path):
    config = load_config(path)
    data = config["data"]
    assert config["output_dir"] == f"runs/{path.stem}"
    if data["dataset"] is not None:
        assert data["dataset"] in available_datasets()
    else:
        graph = CausalGraph.parse(data["graph"])
        assert set(graph.nodes) <= set(data["factors"] or graph.nodes)
    if config["unet"]["pretrained"] is not None:
        assert config["vae"]["pretrained"] == str(Path(config["unet"]["pretrained"]) / "vae")


def test_the_recipe_set_is_complete():
    assert {p.stem for p in CONFIGS} >= {"colored_bars", "morpho", "pendulum", "morphomnist", "celeba_hq_sd15"}
    assert load_config(REPO / "configs" / "pendulum.yaml")["data"]["resolution"] == 64
    morphomnist = load_config(REPO / "configs" / "morphomnist.yaml")["data"]
    assert morphomnist["format"] == "morphomnist" and morphomnist["path"] == "../shared/data/morphomnist"
    celeba = load_config(REPO / "configs" / "celeba_hq_sd15.yaml")
    graph = CausalGraph.parse(celeba["data"]["graph"])
    assert set(graph.nodes) == set(celeba["data"]["factors"]) and graph.bidirected


def test_folder_recipe_loads_the_chosen_factor_columns(tmp_path):
    folder = make_dataset("colored-bars", 12, 16, tmp_path / "bars", num_workers=1, show_progress=False)
    recipe = tiny_recipe(tmp_path / "run")
    recipe["data"] = {"path": str(folder), "resolution": 16, "factors": ["size", "bar"], "graph": "size -> bar"}
    data = load_training_data(load_config(recipe))
    assert data.schema.names == ["size", "bar"]
    assert data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert set(data.graph.nodes) == {"size", "bar"}
    recipe["data"]["holdout"] = 4
    held = load_training_data(load_config(recipe))
    assert held.images.shape[0] == 8 and torch.equal(held.images, data.images[:8])
    recipe["data"]["holdout"] = 12
    with pytest.raises(ValueError, match="data.holdout"):
        load_training_data(load_config(recipe))


def test_interventional_rows_fill_factor_space_and_the_scm_fits_only_observational_rows(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "run")
    recipe["data"] = {"dataset": "morpho", "num_images": 200, "resolution": 16, "interventional_fraction": 0.5}
    data = load_training_data(load_config(recipe))
    assert len(data) == 200 and data.num_observational == 100
    observed = data.observational_table()
    assert all(len(column) == 100 for column in observed.values())
    thickness, intensity = data.table["thickness"], data.table["intensity"]
    # do(intensity = a draw from its observed marginal): the values are observed ones, no longer tied to thickness
    assert set(intensity[100:].tolist()) <= set(observed["intensity"].tolist())
    assert np.corrcoef(thickness[:100], intensity[:100])[0, 1] > 0.8
    assert abs(np.corrcoef(thickness[100:], intensity[100:])[0, 1]) < 0.4
    measured = get_dataset("morpho").measure(data.images[100:].permute(0, 2, 3, 1).numpy())
    assert np.median(np.abs(measured["intensity"] - intensity[100:].numpy())) < 10

    fitted = []
    monkeypatch.setattr(
        "cf_diffusion.scm.NeuralCausalModel.fit", lambda self, table, **kwargs: fitted.append(len(table["digit"]))
    )
    train(recipe, stages=["scm"])
    assert fitted == [100]


# ---------------------------------------------------------------------------------------------- two processes

SHARD_RECORDER = """
import json, sys
from pathlib import Path

import cf_diffusion.training.diffusion as diffusion
import cf_diffusion.training.predictor as predictor
from cf_diffusion.training.data import shard_indices
from cf_diffusion.training.run import train

out = Path(sys.argv[2])


def recorder(stage):
    def recording(num_rows, rank, world_size):
        shard = shard_indices(num_rows, rank, world_size)
        record = {"num_rows": num_rows, "world_size": world_size, "rows": shard.tolist()}
        (out / f"{stage}-{rank}.json").write_text(json.dumps(record))
        return shard
    return recording


diffusion.shard_indices = recorder("unet")
predictor.shard_indices = recorder("predictor")
print("pipeline:", train(sys.argv[1]))
"""


class BarrierWriter:
    """An accelerator stand-in for a slower process: the main process writes a checkpoint while it waits."""

    is_main_process = False

    def __init__(self, folder: Path):
        self.folder = folder

    def wait_for_everyone(self) -> None:
        save_checkpoint(self.folder, 2, {"x": torch.zeros(1)})


def test_every_process_looks_for_earlier_checkpoints_before_any_writes(tmp_path):
    """A process slower than the main one must not take the main one's first checkpoint for an earlier run's."""
    assert starting_checkpoint(tmp_path, None, BarrierWriter(tmp_path)) is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        starting_checkpoint(tmp_path, None, BarrierWriter(tmp_path))
    assert starting_checkpoint(tmp_path, "latest", BarrierWriter(tmp_path / "other")) == tmp_path / "checkpoint-2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_on_disjoint_shards(tmp_path):
    """Two processes with gloo, as `accelerate launch --multi_gpu --num_processes 2` starts them on a CPU machine
    with ACCELERATE_USE_CPU=1 (torchrun's environment variables)."""
    config = tiny_recipe(tmp_path / "run", latent=False, data={"num_images": 50, "resolution": 8})
    config["unet"].update(block_out_channels=[8, 16], norm_num_groups=4, num_steps=2)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(config))
    (tmp_path / "record.py").write_text(SHARD_RECORDER)
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "ACCELERATE_USE_CPU": "1",
            "OMP_NUM_THREADS": "1",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(tmp_path / "record.py"), str(recipe), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    for stage in ("unet", "predictor"):
        records = [json.loads((tmp_path / f"{stage}-{rank}.json").read_text()) for rank in range(2)]
        assert all(r["world_size"] == 2 and r["num_rows"] == 50 for r in records)
        first, second = (set(r["rows"]) for r in records)
        assert not first & second and first | second == set(range(50))
    pipe = CounterfactualDiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    image, factors = colored_bars_image(resolution=8)
    other = "0" if factors["bar"] == "1" else "1"
    out = pipe(image=image, factors=factors, interventions={"bar": other}, num_inference_steps=2)
    assert out.images[0].size == (8, 8) and out.counterfactual_factors[0]["bar"] == other


# ---------------------------------------------------------------------------------------------- fine-tuning

CROSS_ATTENTION_DIM = 32


def tiny_stable_diffusion(folder: Path) -> Path:
    """A randomly initialised model laid out like Stable Diffusion (unet, vae, scheduler, text encoder, tokenizer)."""
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.18215,
    ).save_pretrained(folder / "vae")
    DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    ).save_pretrained(folder / "scheduler")
    text_encoder, tokenizer = tiny_text_components(
        folder, hidden_size=CROSS_ATTENTION_DIM, intermediate_size=37, num_attention_heads=4
    )
    tokenizer.save_pretrained(folder / "tokenizer")
    text_encoder.save_pretrained(folder / "text_encoder")
    return folder


@pytest.fixture(scope="module")
def stable_diffusion(tmp_path_factory) -> Path:
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


def test_factor_conditioning_starts_as_the_base_model(stable_diffusion, tmp_path):
    config = tiny_recipe(tmp_path, unet={"pretrained": str(stable_diffusion)})
    schema = get_dataset("colored-bars").schema
    base = UNet2DConditionModel.from_pretrained(stable_diffusion / "unet").eval()
    model = ConditionedUNet(build_unet(config, 8, 4, len(schema)), build_factor_encoder(config, schema)).eval()
    assert (
        model.unet.config.class_embed_type == "projection" and not model.factor_encoder.config.cross_attention_tokens
    )
    text_encoder, tokenizer = load_text_components(stable_diffusion)
    assert not any(p.requires_grad for p in text_encoder.parameters())
    g = torch.Generator().manual_seed(0)
    noisy, timesteps = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([1, 250, 600, 999])
    factors = torch.stack([torch.randint(0, f.num_levels, (4,), generator=g) for f in schema], dim=1).float()
    known = torch.rand(4, 4, generator=g) > 0.5
    with torch.no_grad():
        for prompt in ("", "a r d"):
            prompt_embeds = encode_prompts(text_encoder, tokenizer, [prompt] * 4)
            expected = base(noisy, timesteps, encoder_hidden_states=prompt_embeds).sample
            assert torch.equal(model(noisy, timesteps, factors, None, prompt_embeds), expected)
            assert torch.equal(model(noisy, timesteps, torch.zeros_like(factors), known, prompt_embeds), expected)
        # The factors do reach the UNet once the zero-initialised layer has learned something.
        torch.nn.init.normal_(model.unet.class_embedding.linear_2.weight)
        assert not torch.allclose(model(noisy, timesteps, factors, None, prompt_embeds), expected)
    with pytest.raises(ValueError, match="prompt_embeds are required"):
        model(noisy, timesteps, factors, None)
    with pytest.raises(ValueError, match="already has class_embed_type='projection'"):
        add_factor_conditioning(model.unet, 8)


def test_fine_tuned_pipeline_loads_and_edits_with_a_prompt(stable_diffusion, tmp_path):
    config = tiny_recipe(tmp_path / "run", unet={"pretrained": str(stable_diffusion), "num_steps": 2, "lr": 1e-3})
    path = train(config)
    pipe = CounterfactualDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder is not None and pipe.tokenizer is not None
    assert not pipe.factor_encoder.config.cross_attention_tokens
    assert pipe.unet.config.cross_attention_dim == CROSS_ATTENTION_DIM and pipe.unet.config.sample_size == 8
    base_unet = UNet2DConditionModel.from_pretrained(stable_diffusion / "unet")
    base_vae = AutoencoderKL.from_pretrained(stable_diffusion / "vae")
    assert not torch.equal(pipe.unet.conv_in.weight, base_unet.conv_in.weight)  # the UNet was trained
    assert torch.equal(pipe.vae.encoder.conv_in.weight, base_vae.encoder.conv_in.weight)  # the VAE was frozen
    assert pipe.vae.config.scaling_factor == 0.18215
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # the pretrained noise schedule

    image, factors = colored_bars_image()
    inputs = {
        "image": image,
        "factors": factors,
        "interventions": {"size": "small" if factors["size"] == "large" else "large"},
        "num_inference_steps": 3,
        "output_type": "pt",
    }
    red = pipe(**inputs, prompt="a r d").images
    blue = pipe(**inputs, prompt="a b d").images
    assert red.shape == (1, 3, 16, 16) and torch.isfinite(red).all()
    assert (red - blue).abs().max() > 1e-6  # the prompt reaches the UNet
    from_checkpoint = assemble_pipeline(config, checkpoint=tmp_path / "run" / "checkpoints" / "unet" / "checkpoint-2")
    assert torch.equal(from_checkpoint.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_pipeline_needs_a_prompt_when_factor_tokens_skip_cross_attention():
    pipe = tiny_pipeline()
    encoder = FactorEncoder(pipe.schema, embed_dim=EMBED_DIM, cross_attention_tokens=False)
    with pytest.raises(ValueError, match="cross_attention_tokens=False .* needs a text_encoder"):
        type(pipe)(**{**pipe.components, "factor_encoder": encoder})
    tokens = encoder(torch.zeros(2, len(pipe.schema))).tokens
    prompt = torch.randn(2, 3, 5)
    assert torch.equal(encoder.encoder_hidden_states(tokens, prompt), prompt)
    joined = pipe.factor_encoder.encoder_hidden_states(tokens, torch.randn(2, 3, EMBED_DIM))
    assert joined.shape == (2, 3 + len(pipe.schema), EMBED_DIM) and torch.equal(joined[:, 3:], tokens)
