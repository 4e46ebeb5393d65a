"""Stage: the causal model (NeuralCausalModel.fit on the factor table), checkpointed like the other stages.

Checkpoints go to `output_dir/checkpoints/scm` every `training.checkpointing_steps` steps (and after the last), the
last `training.checkpoints_total_limit` kept; `--resume_from_checkpoint latest` continues the fit exactly from the
newest one (see `NeuralCausalModel.fit`).
"""

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from cf_diffusion.progress import progress_enabled
from cf_diffusion.scm import NeuralCausalModel
from cf_diffusion.training.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    starting_checkpoint,
)
from cf_diffusion.training.data import TrainingData

logger = get_logger(__name__)


def _resume_state(checkpoint_dir: Path, accelerator: Accelerator, resume: str | None) -> dict | None:
    """The fit state to continue from (None: a fresh fit, refused over an earlier run's checkpoints)."""
    path = starting_checkpoint(checkpoint_dir, resume, accelerator)
    if path is None:
        return None
    step, state = load_checkpoint(path)
    logger.info(f"[scm] resumed from {path} at step {step}")
    return state


def train_scm(config: dict, data: TrainingData, accelerator: Accelerator, resume: str | None) -> NeuralCausalModel:
    """Fits the recipe's causal model on the observational rows, resuming from its latest checkpoint when asked."""
    scm_config, training = config["scm"], config["training"]
    checkpoint_dir = Path(config["output_dir"]) / "checkpoints" / "scm"
    state = _resume_state(checkpoint_dir, accelerator, resume)

    def save(step: int, fit_state: dict) -> None:
        if accelerator.is_main_process:
            save_checkpoint(checkpoint_dir, step, fit_state, keep=training["checkpoints_total_limit"])

    scm = NeuralCausalModel(
        graph=data.graph,
        schema=data.schema,
        hidden_dim=scm_config["hidden_dim"],
        confounder_dim=scm_config["confounder_dim"],
    )
    scm.fit(
        data.observational_table(),
        num_steps=scm_config["num_steps"],
        batch_size=scm_config["batch_size"],
        lr=scm_config["lr"],
        generator=torch.Generator().manual_seed(config["seed"]),
        show_progress=accelerator.is_local_main_process and progress_enabled(True),
        checkpoint=save,
        checkpoint_steps=training["checkpointing_steps"],
        resume=state,
    )
    return scm
