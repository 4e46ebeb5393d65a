"""Exogenous: the abducted noise of a batch of individuals, the result of `NeuralCausalModel.abduct`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Exogenous:
    """Posterior samples of every exogenous variable of a neural causal model, S samples per row.

    Attributes:
        noise: Per factor: Tensor[N, S] of standard-normal flow noise for continuous factors, Tensor[N, S, K]
            of Gumbel noise for discrete factors with K levels.
        latents: Per confounded c-component (key: its members as a tuple, in topological order):
            Tensor[N, S, D], the shared latent U_c (D = confounder_dim).
    """

    noise: dict[str, Tensor]
    latents: dict[tuple[str, ...], Tensor]

    @property
    def num_rows(self) -> int:
        """Number of individuals N."""
        return next(iter(self.noise.values())).shape[0]

    @property
    def num_samples(self) -> int:
        """Number of posterior samples S per individual."""
        return next(iter(self.noise.values())).shape[1]
