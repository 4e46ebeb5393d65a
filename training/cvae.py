"""The conditional VAE of the `cvae-scm` evaluation baseline (not part of the pipeline), trained by one command:

    python -m cf_diffusion.training.cvae --config RECIPE [--resume_from_checkpoint latest] [--out FOLDER]

on the recipe's data (the rows and factors every stage of `cf-diffusion train` reads, `data.holdout` rows left
out) with the recipe's `cvae` settings, through the shared step loop (checkpoints in `output_dir/checkpoints/cvae`,
resumable). The model goes to `output_dir/cvae` unless `--out` says otherwise; `cf-diffusion evaluate --methods
cvae-scm --cvae FOLDER` edits with it under the pipeline's causal model.
"""

import argparse
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

from cf_diffusion.evaluation.cvae import ConditionalVAE
from cf_diffusion.training.config import load_config
from cf_diffusion.training.data import TrainingData, batch_indices, load_training_data, shard_indices
from cf_diffusion.training.loop import Stage, run_stage, show_progress_notes

logger = get_logger(__name__)


class ConditionalVAELoss(nn.Module):
    """Wraps the model so that its training loss is the module's forward (what DDP synchronises)."""

    def __init__(self, cvae: ConditionalVAE, beta: float):
        super().__init__()
        self.cvae = cvae
        self.beta = beta

    def forward(self, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return self.cvae.loss(images, factors, self.beta)


def train_cvae(config: dict, data: TrainingData, accelerator: Accelerator, resume: str | None) -> ConditionalVAE:
    """Trains a ConditionalVAE on the data set's images and factors (recipe section `cvae`)."""
    cvae_config = config["cvae"]
    torch.manual_seed(config["seed"])
    cvae = ConditionalVAE(
        data.schema,
        in_channels=data.images.shape[1],
        sample_size=data.images.shape[-1],
        block_out_channels=tuple(cvae_config["block_out_channels"]),
        latent_dim=cvae_config["latent_dim"],
    )
    optimizer = torch.optim.AdamW(cvae.parameters(), lr=cvae_config["lr"], weight_decay=0.0)
    model, optimizer = accelerator.prepare(ConditionalVAELoss(cvae, cvae_config["beta"]), optimizer)
    shard = shard_indices(len(data), accelerator.process_index, accelerator.num_processes)

    def loss_fn(micro_step: int) -> torch.Tensor:
        rows = batch_indices(shard, cvae_config["batch_size"], config["seed"] + 2, micro_step)
        return model(data.pixel_batch(rows).to(accelerator.device), data.factor_batch(rows).to(accelerator.device))

    stage = Stage("cvae", {"model": model}, optimizer)
    run_stage(stage, accelerator, loss_fn, cvae_config["num_steps"], config, resume)
    return accelerator.unwrap_model(model).cvae


def train_recipe_cvae(config: str | Path | dict, out: str | Path | None = None, resume: str | None = None) -> Path:
    """Trains the recipe's conditional VAE and saves it (safetensors) to `out` (default: `output_dir/cvae`).

    Raises:
        ValueError: When `out` already holds a model (delete it to retrain).
    """
    config = load_config(config)
    out = Path(out) if out is not None else Path(config["output_dir"]) / "cvae"
    if (out / "config.json").is_file():
        raise ValueError(f"{str(out)!r} already holds a conditional VAE: delete it to retrain, or pass another --out.")
    training = config["training"]
    accelerator = Accelerator(
        mixed_precision=training["mixed_precision"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"],
        project_dir=config["output_dir"],
    )
    set_seed(config["seed"])
    start = time.perf_counter()
    cvae = train_cvae(config, load_training_data(config), accelerator, resume)
    if accelerator.is_main_process:
        cvae.save_pretrained(out)
    accelerator.wait_for_everyone()
    logger.info(f"[cvae] finished in {time.perf_counter() - start:.0f} s: {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cf_diffusion.training.cvae", description="Trains a recipe's conditional VAE."
    )
    parser.add_argument("--config", required=True, help="a recipe (configs/*.yaml); its `cvae` section")
    parser.add_argument("--out", help="where the model goes (default: the recipe's output_dir/cvae)")
    parser.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint", default=None)
    args = parser.parse_args(argv)
    show_progress_notes()
    train_recipe_cvae(args.config, args.out, args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
