"""Stage: the factor predictor (anti-causal classifier/regressor per factor).

It reads factual factors off a user's image when none are given, and measures edits in the evaluation. Inputs get
a little Gaussian noise during training so that the predictor also reads slightly imperfect generated images, and
with `predictor.brightness_jitter` a rescaled brightness (`data.brightness_factor` scaled with it), so that it reads
the other factors off shapes rather than off the brightness the data tie to them.
"""

import torch
from accelerate import Accelerator
from torch import nn

from cf_diffusion.predictor import FactorPredictor
from cf_diffusion.training.data import TrainingData, batch_indices, shard_indices, stage_batch
from cf_diffusion.training.loop import Stage, run_stage


class PredictorLoss(nn.Module):
    """Wraps the predictor so that its training loss is the module's forward (what DDP synchronises)."""

    def __init__(self, predictor: FactorPredictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return self.predictor.loss(images, factors)


def train_predictor(config: dict, data: TrainingData, accelerator: Accelerator, resume: str | None) -> FactorPredictor:
    """Trains a FactorPredictor on the data set's images and factors."""
    predictor_config = config["predictor"]
    torch.manual_seed(config["seed"])
    predictor = FactorPredictor(
        data.schema,
        in_channels=data.images.shape[1],
        sample_size=data.images.shape[-1],
        block_out_channels=tuple(predictor_config["block_out_channels"]),
    )
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=predictor_config["lr"], weight_decay=1e-4)
    model, optimizer = accelerator.prepare(PredictorLoss(predictor), optimizer)
    shard = shard_indices(len(data), accelerator.process_index, accelerator.num_processes)

    def loss_fn(micro_step: int) -> torch.Tensor:
        rows = batch_indices(shard, predictor_config["batch_size"], config["seed"] + 1, micro_step)
        pixels, factors = stage_batch(config, "predictor", data, rows, config["seed"] + 1, micro_step)
        pixels = pixels.to(accelerator.device)
        pixels = pixels + 0.05 * torch.randn_like(pixels)
        return model(pixels, factors.to(accelerator.device))

    stage = Stage("predictor", {"model": model}, optimizer)
    run_stage(stage, accelerator, loss_fn, predictor_config["num_steps"], config, resume)
    return accelerator.unwrap_model(model).predictor
