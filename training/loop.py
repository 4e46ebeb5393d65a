"""The step loop every training stage shares: accumulation, clipping, EMA, checkpoints, resume, validation."""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from cf_diffusion.progress import progress_enabled
from cf_diffusion.training.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    starting_checkpoint,
)

logger = get_logger(__name__)


def show_progress_notes() -> None:
    """Sends the training modules' progress notes (a stage resumed or finished; INFO of `cf_diffusion.training`)
    to stderr, one line each. The command-line entry points call it; a library leaves logging to its caller."""
    notes = logging.getLogger("cf_diffusion.training")
    if not notes.handlers:
        notes.addHandler(logging.StreamHandler())
        notes.setLevel(logging.INFO)


def rng_state() -> dict:
    """The random number generators' state: the CPU's (`rng`) and, with CUDA, every device's (`cuda_rng`)."""
    state = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what `rng_state` saved; the device generators only where CUDA is there (a checkpoint written on
    a machine without it, or before device states were kept, restores the CPU's alone)."""
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])


@dataclass
class Stage:
    """One trainable stage.

    Attributes:
        name: the stage name (progress bar, checkpoint folder `output_dir/checkpoints/{name}`).
        models: name -> module (already passed through `accelerator.prepare`).
        optimizer: the prepared optimizer.
        lr_scheduler: the prepared learning-rate scheduler, or None.
        ema: a diffusers EMAModel over the trained parameters, or None.
        max_grad_norm: gradient clipping norm (None: no clipping).
    """

    name: str
    models: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object | None = None
    ema: object | None = None
    max_grad_norm: float | None = 1.0
    losses: list[float] = field(default_factory=list)

    def state(self, accelerator: Accelerator) -> dict:
        state = {
            "models": {k: accelerator.unwrap_model(m).state_dict() for k, m in self.models.items()},
            "optimizer": self.optimizer.state_dict(),
            **rng_state(),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state(self, state: dict, accelerator: Accelerator) -> None:
        for key, model in self.models.items():
            accelerator.unwrap_model(model).load_state_dict(state["models"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state)


def run_stage(
    stage: Stage,
    accelerator: Accelerator,
    loss_fn: Callable[[int], torch.Tensor],
    num_steps: int,
    config: dict,
    resume_from_checkpoint: str | None = None,
    validate: Callable[[int], None] | None = None,
) -> int:
    """Runs a stage to `num_steps` optimizer steps, resuming from its latest checkpoint when asked.

    Args:
        stage: models, optimizer and friends.
        accelerator: the run's Accelerator (its `gradient_accumulation_steps` micro-batches make one step).
        loss_fn: micro-batch index -> scalar loss (micro-batch index = step * accumulation + micro).
        num_steps: the total number of optimizer steps of the stage.
        config: the run's recipe: checkpoints go to `output_dir/checkpoints/{stage.name}` every
            `training.checkpointing_steps` steps (and at the end), the last `training.checkpoints_total_limit` kept.
        resume_from_checkpoint: "latest", a checkpoint folder, or None (a fresh run: refused over an earlier run's
            checkpoints, see `check_fresh_start`). Temporary folders of unfinished checkpoint writes are removed.
        validate: called with the step on the main process every `training.validation_steps` steps (0: never).

    Returns:
        The step the stage started from (0 for a fresh run).
    """
    training = config["training"]
    checkpointing_steps, validation_steps = training["checkpointing_steps"], training["validation_steps"]
    checkpoint_dir = Path(config["output_dir"]) / "checkpoints" / stage.name
    start = 0
    path = starting_checkpoint(checkpoint_dir, resume_from_checkpoint, accelerator)
    if path is not None:
        start, state = load_checkpoint(path)
        stage.load_state(state, accelerator)
        logger.info(f"[{stage.name}] resumed from {path} at step {start}")
    accumulation = accelerator.gradient_accumulation_steps
    progress = tqdm(
        range(start, num_steps),
        initial=start,
        total=num_steps,
        desc=stage.name,
        disable=not accelerator.is_local_main_process or not progress_enabled(True),
    )
    trained = [p for m in stage.models.values() for p in m.parameters() if p.requires_grad]
    for step in progress:
        for micro in range(accumulation):
            with accelerator.accumulate(*stage.models.values()):
                loss = loss_fn(step * accumulation + micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients and stage.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trained, stage.max_grad_norm)
                stage.optimizer.step()
                if stage.lr_scheduler is not None:
                    stage.lr_scheduler.step()
                stage.optimizer.zero_grad(set_to_none=True)
        if stage.ema is not None:
            stage.ema.step(trained)
        value = accelerator.gather(loss.detach()[None]).mean().item()
        stage.losses.append(value)
        progress.set_postfix(loss=f"{value:.4f}")
        accelerator.log({f"{stage.name}/loss": value}, step=step)
        done = step + 1
        if accelerator.is_main_process and (done % checkpointing_steps == 0 or done == num_steps):
            save_checkpoint(checkpoint_dir, done, stage.state(accelerator), keep=training["checkpoints_total_limit"])
        if validate is not None and validation_steps and accelerator.is_main_process and done % validation_steps == 0:
            validate(done)
        accelerator.wait_for_everyone()
    return start
