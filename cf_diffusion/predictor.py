"""FactorPredictor: a small CNN that reads every factor off an image (the anti-causal direction, image -> factors).

The pipeline uses it to recover the factual factors of an image when the user gives none; the evaluation uses it to
check that an edit changed what it should and kept the rest.
"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from cf_diffusion.factors import FactorSchema


class FactorPredictor(ModelMixin, ConfigMixin):
    """Predicts every factor of a `FactorSchema` from an image in [-1, 1].

    A stack of convolutional blocks (each halves the resolution after the first), global average pooling, and one
    linear head per factor: logits over the levels of a discrete factor, the normalised value (as in
    `FactorSchema.encode`, [-1, 1]) of a continuous one.

    Args:
        schema: the factor schema, as `FactorSchema.to_dict()` (or a FactorSchema).
        in_channels: image channels.
        sample_size: image height and width the model reads.
        block_out_channels: channels of each convolutional block.
        norm_num_groups: groups of the GroupNorm layers (must divide every entry of `block_out_channels`).
        dropout: dropout before the heads.
    """

    @register_to_config
    def __init__(
        self,
        schema: dict,
        in_channels: int = 3,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        norm_num_groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if isinstance(schema, FactorSchema):
            schema = schema.to_dict()
            self.register_to_config(schema=schema)
        self.schema = FactorSchema.from_dict(schema)
        for channels in block_out_channels:
            if channels % norm_num_groups:
                raise ValueError(
                    f"block_out_channels {tuple(block_out_channels)} must all be divisible by "
                    f"norm_num_groups={norm_num_groups}"
                )
        blocks = []
        channels_in = in_channels
        for i, channels in enumerate(block_out_channels):
            blocks += [
                nn.Conv2d(channels_in, channels, 3, stride=1 if i == 0 else 2, padding=1),
                nn.GroupNorm(norm_num_groups, channels),
                nn.SiLU(),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.GroupNorm(norm_num_groups, channels),
                nn.SiLU(),
            ]
            channels_in = channels
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict(
            {
                factor.name: nn.Linear(channels_in, factor.num_levels if factor.is_discrete else 1)
                for factor in self.schema
            }
        )

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.config.in_channels, self.config.sample_size, self.config.sample_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be Tensor[B, {expected[0]}, {expected[1]}, {expected[2]}] in [-1, 1], "
                f"got shape {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reads the factors off a batch of images.

        Args:
            images: Tensor[B, C, H, W] in [-1, 1].

        Returns:
            dict name -> Tensor[B, L] of logits for a discrete factor with L levels, or Tensor[B] of the normalised
            value (unbounded; [-1, 1] is the factor's range) for a continuous factor.

        Raises:
            ValueError: If the images do not have the configured channels and size.
        """
        self._check_images(images)
        features = self.features(images)
        out = {}
        for factor in self.schema:
            head = self.heads[factor.name](features)
            out[factor.name] = head if factor.is_discrete else head.squeeze(1)
        return out

    def loss(self, images: torch.Tensor, factors: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss: cross-entropy for discrete factors plus mean squared error for continuous ones.

        Args:
            images: Tensor[B, C, H, W] in [-1, 1].
            factors: Tensor[B, F] from `FactorSchema.encode`.
            known: bool Tensor[B, F]; only known entries count. None means all are known.

        Returns:
            A scalar: the mean over factors (with at least one known entry) of each factor's mean loss.

        Raises:
            ValueError: On shapes that do not match, or if no entry is known.
        """
        num_factors = len(self.schema)
        if factors.ndim != 2 or factors.shape != (images.shape[0], num_factors):
            raise ValueError(
                f"factors must be Tensor[{images.shape[0]}, {num_factors}] (one column per factor of "
                f"{self.schema.names}), got shape {tuple(factors.shape)}"
            )
        if known is None:
            known = torch.ones_like(factors, dtype=torch.bool)
        if known.shape != factors.shape:
            raise ValueError(f"known must have the shape of factors {tuple(factors.shape)}, got {tuple(known.shape)}")
        if not known.any():
            raise ValueError("no factor is known in this batch, so there is nothing to learn from")
        outputs = self(images)
        losses = []
        for i, factor in enumerate(self.schema):
            rows = known[:, i]
            if not rows.any():
                continue
            prediction, target = outputs[factor.name][rows], factors[rows, i]
            if factor.is_discrete:
                losses.append(F.cross_entropy(prediction, target.round().long()))
            else:
                losses.append(F.mse_loss(prediction, target.to(prediction.dtype)))
        return torch.stack(losses).mean()

    def energy(self, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """How far each image reads from its target factors: per image, the sum over factors of the cross-entropy
        (discrete) or the squared error of the normalised value (continuous); differentiable in `images`, for
        guidance toward the targets.

        Args:
            images: Tensor[B, C, H, W] in [-1, 1].
            factors: Tensor[B, F] from `FactorSchema.encode`.

        Returns:
            Tensor[B].
        """
        outputs = self(images)
        terms = []
        for i, factor in enumerate(self.schema):
            prediction, target = outputs[factor.name], factors[:, i]
            if factor.is_discrete:
                terms.append(F.cross_entropy(prediction, target.round().long(), reduction="none"))
            else:
                terms.append((prediction - target.to(prediction.dtype)) ** 2)
        return torch.stack(terms, dim=1).sum(dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The most likely level of each discrete factor and the clamped value of each continuous one.

        Args:
            images: Tensor[B, C, H, W] in [-1, 1].

        Returns:
            Tensor[B, F] float32 in `FactorSchema.encode` format.
        """
        outputs = self(images)
        columns = []
        for factor in self.schema:
            output = outputs[factor.name]
            columns.append(output.argmax(dim=1).float() if factor.is_discrete else output.float().clamp(-1.0, 1.0))
        return torch.stack(columns, dim=1)
