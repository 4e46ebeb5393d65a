"""`cf-diffusion train`: every stage of a recipe, resumable, ending in one pipeline folder.

Stages, in order: `scm` (NeuralCausalModel.fit on the factor table), `vae` (skipped when the recipe says `vae: null`,
i.e. pixel space), `decoder` (the VAE's decoder refined with its encoder frozen; only with `vae.decoder_num_steps`),
`unet` (UNet2DConditionModel + FactorEncoder), `predictor` (FactorPredictor). Every stage (the scm stage too) writes
checkpoints. A finished stage is saved under `output_dir/stages/{name}` and reused by later runs; an unfinished one
resumes from its checkpoints when
`resume_from_checkpoint` is given (a fresh run over an earlier run's checkpoints is refused). The assembled pipeline
goes to `output_dir/pipeline`.

A finished stage keeps the recipe values it was trained with in `stages/{name}/recipe.json` (`_STAGE_KEYS`: the
seed, the data, its own section and the sections it builds on). When the recipe has changed since, training is
refused with one line naming the changed keys, before anything trains: a changed stage is never retrained in place
(that would silently replace a model the user may still want) nor reused (that would silently ship the old model).
Use another `output_dir`, or delete the stage folders to retrain. A stage finished before fingerprints existed (no
`recipe.json`) is reused as it is.
"""

import json
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from cf_diffusion.guidance import factor_weights
from cf_diffusion.training.checkpoint import check_fresh_start
from cf_diffusion.training.config import DEFAULTS, load_config
from cf_diffusion.training.data import check_brightness_factor, load_training_data
from cf_diffusion.training.stages import STAGES

logger = get_logger(__name__)

_SHARED_KEYS = ("seed", "data", "training.mixed_precision", "training.gradient_accumulation_steps")
# the recipe keys (sections or dotted keys) each stage's model depends on, but for `_OWN_KEYS`
_STAGE_KEYS = {
    "scm": ("seed", "data", "scm"),
    "vae": (*_SHARED_KEYS, "vae"),
    "decoder": (*_SHARED_KEYS, "vae"),
    "unet": (*_SHARED_KEYS, "vae", "unet"),
    "predictor": (*_SHARED_KEYS, "predictor"),
}
# keys only the named stages depend on, though they sit in a section other stages fingerprint whole
_OWN_KEYS = {"vae.decoder_num_steps": ("decoder",), "vae.decoder_lr": ("decoder",)}
# the section whose `brightness_jitter` each stage trains with: `data.brightness_factor` matters to it only then
_JITTER_SECTION = {"vae": "vae", "decoder": "vae", "unet": "unet", "predictor": "predictor"}


def _finished(output_dir: Path, name: str) -> bool:
    return (output_dir / "stages" / name / "DONE").is_file()


def _flatten(value, prefix: str) -> dict:
    """A recipe value as {dotted key: JSON value} (sections become their keys)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    return {prefix: json.loads(json.dumps(value, default=str))}


def _fingerprint(config: dict, name: str) -> dict:
    """The recipe values the stage `name` depends on, as {dotted key: value}."""
    found = {}
    for key in _STAGE_KEYS[name]:
        value = config
        for part in key.split("."):
            value = value[part]
        found.update(_flatten(value, key))
    section = config.get(_JITTER_SECTION.get(name)) or {}
    if not section.get("brightness_jitter"):
        found.pop("data.brightness_factor", None)
    return {k: v for k, v in found.items() if name in _OWN_KEYS.get(k, (name,))}


def _changed_keys(output_dir: Path, name: str, config: dict) -> list[str]:
    """The keys of `_fingerprint` whose values differ from those the finished stage `name` was trained with (none
    for an unfinished stage, or one finished before fingerprints existed). A key the stage's record lacks was added
    to the recipe format after it trained, when the behaviour was that of the key's default: it has changed only
    when the recipe's value differs from that default."""
    path = output_dir / "stages" / name / "recipe.json"
    if not _finished(output_dir, name) or not path.is_file():
        return []
    stored, current = json.loads(path.read_text()), _fingerprint(config, name)
    defaults = _fingerprint(DEFAULTS, name)
    for key in current.keys() - stored.keys():
        stored[key] = defaults.get(key)
    return sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))


def _check_fingerprints(config: dict, output_dir: Path) -> None:
    """Refuses a recipe that differs from the one a finished stage was trained with (see the module docstring).

    Raises:
        ValueError: Naming each such stage and its changed keys.
    """
    changed = {name: keys for name in STAGES if (keys := _changed_keys(output_dir, name, config))}
    if changed:
        stages = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in changed.items())
        raise ValueError(
            f"Finished stages in {str(output_dir)!r} were trained with a different recipe: {stages}. Use another "
            f"output_dir, or delete those stages' folders under 'stages' and 'checkpoints' there to retrain them."
        )


def _skipped(config: dict, name: str) -> bool:
    """Whether the recipe has no such stage: no autoencoder in pixel space, no decoder refinement unless asked."""
    if name in ("vae", "decoder") and config["vae"] is None:
        return True
    return name == "decoder" and not config["vae"]["decoder_num_steps"]


def train(
    config: str | Path | dict,
    resume_from_checkpoint: str | None = None,
    stages: tuple[str, ...] = STAGES,
    overrides: dict | None = None,
) -> Path | None:
    """Runs the recipe's stages and assembles the pipeline.

    Args:
        config: a recipe (YAML path or dict; see training/config.py).
        resume_from_checkpoint: "latest" (or a folder) to continue an interrupted stage.
        stages: the stages to run now; the pipeline is assembled once all of them are finished.
        overrides: recipe values to replace (same nesting as the YAML).

    Returns:
        The pipeline folder, or None when some stage is still unfinished.
    """
    config = load_config(config, overrides)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"Unknown training stages {sorted(unknown)}; expected some of {list(STAGES)}.")
    training = config["training"]
    output_dir = Path(config["output_dir"])
    _check_fingerprints(config, output_dir)
    for name in stages:
        if not _skipped(config, name) and not _finished(output_dir, name):
            check_fresh_start(output_dir / "checkpoints" / name, resume_from_checkpoint)
    accelerator = Accelerator(
        mixed_precision=training["mixed_precision"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"],
        log_with=training["report_to"],
        project_dir=str(output_dir),
    )
    if training["report_to"]:
        accelerator.init_trackers("cf-diffusion")
    set_seed(config["seed"])
    data = load_training_data(config)
    check_brightness_factor(config, data.schema)
    try:  # before hours of training, not at assembly
        factor_weights(data.schema, None, config["editing"]["guidance_scale"])
    except ValueError as error:
        raise ValueError(f"Config 'editing.guidance_scale': {error}") from None
    for name in stages:
        if _skipped(config, name) or _finished(output_dir, name):
            continue
        start = time.perf_counter()
        models = _run_stage(name, config, data, accelerator, resume_from_checkpoint)
        if accelerator.is_main_process:
            for key, model in models.items():
                model.save_pretrained(output_dir / "stages" / name / key)
            fingerprint = json.dumps(_fingerprint(config, name), indent=1)
            (output_dir / "stages" / name / "recipe.json").write_text(fingerprint)
            (output_dir / "stages" / name / "DONE").write_text(f"{time.perf_counter() - start:.0f} s\n")
        accelerator.wait_for_everyone()
        logger.info(f"[{name}] finished in {time.perf_counter() - start:.0f} s")
    needed = [s for s in STAGES if not _skipped(config, s)]
    if not all(_finished(output_dir, s) for s in needed):
        accelerator.end_training()
        return None
    from cf_diffusion.training.assemble import assemble_pipeline, save_pipeline

    path = output_dir / "pipeline"
    if accelerator.is_main_process:
        save_pipeline(assemble_pipeline(config), path)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return path


def _run_stage(name: str, config: dict, data, accelerator: Accelerator, resume: str | None) -> dict:
    """Runs one stage; returns its trained models by component name."""
    if name == "scm":
        from cf_diffusion.training.scm import train_scm

        return {"scm": train_scm(config, data, accelerator, resume)}
    if name == "vae":
        from cf_diffusion.training.vae import load_or_train_vae

        return {"vae": load_or_train_vae(config, data, accelerator, resume)}
    if name == "decoder":
        from cf_diffusion.training.assemble import load_stage_vae
        from cf_diffusion.training.vae import train_decoder

        if not _finished(Path(config["output_dir"]), "vae"):
            raise ValueError("The 'decoder' stage refines the 'vae' stage's autoencoder: run the 'vae' stage first.")
        # the vae stage's autoencoder: an unfinished decoder stage has none of its own yet
        return {"vae": train_decoder(config, load_stage_vae(config), data, accelerator, resume)}
    if name == "unet":
        from cf_diffusion.training.assemble import load_stage_vae
        from cf_diffusion.training.diffusion import train_diffusion

        return train_diffusion(config, data, accelerator, resume, load_stage_vae(config))
    from cf_diffusion.training.predictor import train_predictor

    return {"factor_predictor": train_predictor(config, data, accelerator, resume)}
