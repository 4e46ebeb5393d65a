"""FactorEncoder: a factor vector (plus a per-factor "known" mask) -> the UNet's conditioning.

Each factor becomes one token: a learned embedding of its level (discrete) or of Fourier features of its
normalised value (continuous), plus a learned embedding of the factor's identity. An unknown factor gets a learned
*null* token instead, so training can drop factors at random and inference can guide on any subset of factors
(classifier-free guidance over factors). The tokens feed cross-attention (`encoder_hidden_states`) and, flattened,
the UNet's `class_embed_type="projection"` embedding, which reaches every residual block.

A UNet fine-tuned from a pretrained text-to-image model keeps cross-attention for its prompt tokens alone
(`cross_attention_tokens=False`): appending factor tokens would change the attention softmax, so the model would no
longer start as the base model; the factors then reach it through the (zero-initialised) class embedding only.
"""

import math
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from cf_diffusion.factors import FactorSchema


@dataclass
class FactorConditioning(BaseOutput):
    """Conditioning for a UNet2DConditionModel.

    Attributes:
        tokens: Tensor[B, F, D], one token per factor (for `encoder_hidden_states`).
        vector: Tensor[B, F * D], the tokens flattened (for `class_labels` with a projection class embedding).
    """

    tokens: torch.Tensor
    vector: torch.Tensor


class FactorEncoder(ModelMixin, ConfigMixin):
    """Embeds normalised factor vectors (`FactorSchema.encode`) as per-factor tokens with a learned null each.

    Args:
        schema: the factor schema, as `FactorSchema.to_dict()` (or a FactorSchema).
        embed_dim: token width D (the UNet's `cross_attention_dim` when the tokens join cross-attention).
        num_frequencies: Fourier frequencies used to embed a continuous value in [-1, 1].
        cross_attention_tokens: Whether the factor tokens join the UNet's cross-attention (after the prompt tokens,
            if any). False: the UNet cross-attends to the prompt tokens only and sees the factors through
            `class_labels` alone (a UNet fine-tuned from a text-to-image model).
    """

    @register_to_config
    def __init__(
        self, schema: dict, embed_dim: int = 64, num_frequencies: int = 8, cross_attention_tokens: bool = True
    ):
        super().__init__()
        if isinstance(schema, FactorSchema):
            schema = schema.to_dict()
            self.register_to_config(schema=schema)
        self.schema = FactorSchema.from_dict(schema)
        self.level_embeddings = nn.ModuleDict()
        self.value_projections = nn.ModuleDict()
        for factor in self.schema:
            if factor.is_discrete:
                self.level_embeddings[factor.name] = nn.Embedding(factor.num_levels, embed_dim)
            else:
                self.value_projections[factor.name] = nn.Sequential(
                    nn.Linear(2 * num_frequencies + 1, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
                )
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32), persistent=False
        )
        self.null_tokens = nn.Parameter(torch.randn(len(self.schema), embed_dim) * 0.02)
        self.factor_embeddings = nn.Parameter(torch.randn(len(self.schema), embed_dim) * 0.02)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def num_factors(self) -> int:
        return len(self.schema)

    @property
    def vector_dim(self) -> int:
        """Width of `FactorConditioning.vector` (the UNet's `projection_class_embeddings_input_dim`)."""
        return self.num_factors * self.config.embed_dim

    def encoder_hidden_states(self, tokens: torch.Tensor, prompt_embeds: torch.Tensor | None) -> torch.Tensor:
        """What the UNet cross-attends to: prompt tokens then factor tokens, or the prompt tokens alone.

        Args:
            tokens: The factor tokens Tensor[B, F, D] (`FactorConditioning.tokens`, cast as the UNet needs).
            prompt_embeds: Prompt tokens Tensor[B, L, D_text] from a text encoder, or None.

        Returns:
            Tensor[B, L + F, D] (or Tensor[B, F, D] without a prompt); Tensor[B, L, D_text] when
            `cross_attention_tokens` is False. Prompt tokens are cast to the tokens' dtype and device.

        Raises:
            ValueError: If `cross_attention_tokens` is False and there are no prompt tokens.
        """
        if not self.config.cross_attention_tokens:
            if prompt_embeds is None:
                raise ValueError(
                    "prompt_embeds are required: this FactorEncoder has cross_attention_tokens=False, so the UNet "
                    "cross-attends to prompt tokens only (pass a text encoder's embeddings, e.g. of the empty prompt)"
                )
            return prompt_embeds.to(tokens)
        if prompt_embeds is None:
            return tokens
        return torch.cat([prompt_embeds.to(tokens), tokens], dim=1)

    def unet_kwargs(
        self,
        factors: torch.Tensor,
        known: torch.Tensor | None,
        prompt_embeds: torch.Tensor | None,
        class_embed_type: str | None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """The UNet's conditioning keyword arguments for factors (and prompt tokens), as the pipelines sample with
        and training learns with.

        Args:
            factors: Tensor[B, F] from `FactorSchema.encode`.
            known: bool Tensor[B, F] (False: the factor's null token), or None for all known.
            prompt_embeds: Prompt tokens Tensor[B, L, D_text], or None (`encoder_hidden_states`).
            class_embed_type: The UNet's `config.class_embed_type`; `"projection"` adds `class_labels`.
            dtype: The UNet's dtype to cast the tokens to, or None to keep the encoder's.

        Returns:
            `{"encoder_hidden_states": Tensor[B, ..., D]}`, plus `"class_labels"`: Tensor[B, F * D] (the flattened
            tokens) with a projection class embedding.
        """
        cond = self(factors, known)
        tokens, vector = cond.tokens, cond.vector
        if dtype is not None:
            tokens, vector = tokens.to(dtype), vector.to(dtype)
        kwargs = {"encoder_hidden_states": self.encoder_hidden_states(tokens, prompt_embeds)}
        if class_embed_type == "projection":
            kwargs["class_labels"] = vector
        return kwargs

    def forward(self, factors: torch.Tensor, known: torch.Tensor | None = None) -> FactorConditioning:
        """Embeds a batch of factor vectors.

        Args:
            factors: Tensor[B, F] from `FactorSchema.encode` (level index for discrete factors, value in [-1, 1]
                for continuous ones). Entries whose `known` is False are ignored (any value is fine).
            known: bool Tensor[B, F]; False uses the factor's null token. None means every factor is known.

        Returns:
            FactorConditioning with tokens Tensor[B, F, D] and vector Tensor[B, F * D].
        """
        if factors.ndim != 2 or factors.shape[1] != self.num_factors:
            raise ValueError(
                f"factors must be Tensor[B, {self.num_factors}] (one column per factor of {self.schema.names}), "
                f"got shape {tuple(factors.shape)}."
            )
        if known is None:
            known = torch.ones_like(factors, dtype=torch.bool)
        if known.shape != factors.shape:
            raise ValueError(f"known must have the shape of factors {tuple(factors.shape)}, got {tuple(known.shape)}.")
        dtype = self.null_tokens.dtype
        tokens = []
        for i, factor in enumerate(self.schema):
            column = factors[:, i]
            if factor.is_discrete:
                index = torch.where(known[:, i], column.round().long(), torch.zeros_like(column, dtype=torch.long))
                if ((index < 0) | (index >= factor.num_levels)).any():
                    raise ValueError(f"Factor {factor.name!r} has a level index outside [0, {factor.num_levels}).")
                token = self.level_embeddings[factor.name](index)
            else:
                value = torch.where(known[:, i], column, torch.zeros_like(column)).to(dtype)[:, None]
                angles = value * self.frequencies.to(dtype)
                features = torch.cat([value, angles.sin(), angles.cos()], dim=1)
                token = self.value_projections[factor.name](features)
            tokens.append(torch.where(known[:, i, None], token, self.null_tokens[i].expand_as(token)))
        stacked = self.norm(torch.stack(tokens, dim=1) + self.factor_embeddings)
        return FactorConditioning(tokens=stacked, vector=stacked.flatten(1))
