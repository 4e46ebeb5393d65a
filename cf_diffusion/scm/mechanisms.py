"""Structural mechanisms of the neural causal model: one small network per factor.

A mechanism maps (context, exogenous noise) to a value and back. The context is the node's parents
(normalised continuous values, one-hot discrete levels) concatenated with the latent of its confounded
c-component, if any.

- `FlowMechanism` (continuous factors): a conditional normalizing flow over the factor's value
  normalised to [-1, 1]. The value is `x = T_c^{-1}(u)` with `u ~ N(0, 1)`, where `T_c` (data to noise)
  is an affine map followed by rational-quadratic splines whose parameters come from the context; so
  the noise of an observed value is recovered exactly by `u = T_c(x)`.
- `GumbelMechanism` (binary/categorical factors): a Gumbel-max mechanism `x = argmax_k(l_c[k] + g[k])`
  with `g` i.i.d. standard Gumbel and logits `l_c` from the context. Its noise posterior given the
  observed level is sampled top-down with truncated Gumbels (Oberst & Sontag, 2019), which makes the
  counterfactuals counterfactually stable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from zuko.transforms import ComposedTransform, MonotonicAffineTransform, MonotonicRQSTransform


class Conditioner(nn.Module):
    """MLP from a context vector to mechanism parameters; the last layer starts at zero.

    With a zero-dimensional context (a root node without confounder) the parameters are a learned
    vector. A zero last layer makes every mechanism start as the identity flow or uniform logits.

    Args:
        in_dim: Context size C (may be 0).
        hidden_dim: Width of the two hidden layers.
        out_dim: Number of parameters P.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        if in_dim == 0:
            self.net = None
            self.bias = nn.Parameter(torch.zeros(out_dim))
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim),
                nn.SiLU(),
                nn.Linear(hidden_dim, hidden_dim),
                nn.SiLU(),
                nn.Linear(hidden_dim, out_dim),
            )
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, context: Tensor) -> Tensor:
        """Parameters for each context.

        Args:
            context: Tensor[..., C].

        Returns:
            Tensor[..., P].
        """
        if self.net is None:
            return self.bias.expand(*context.shape[:-1], self.out_dim)
        return self.net(context)


class FlowMechanism(nn.Module):
    """Conditional normalizing flow for one continuous factor (values normalised to [-1, 1]).

    Args:
        context_dim: Context size C.
        hidden_dim: Conditioner width.
        transforms: Number of spline transforms after the affine one.
        bins: Spline bins per transform.
        bound: The splines act on [-bound, bound] and are the identity outside.
    """

    def __init__(self, context_dim: int, hidden_dim: int, transforms: int, bins: int, bound: float = 5.0) -> None:
        super().__init__()
        self.transforms = transforms
        self.bins = bins
        self.bound = bound
        self.conditioner = Conditioner(context_dim, hidden_dim, 2 + transforms * (3 * bins - 1))

    def transform(self, context: Tensor) -> ComposedTransform:
        """The data-to-noise bijection `T_c` for each context.

        Args:
            context: Tensor[..., C].

        Returns:
            An element-wise transform acting on Tensor[...].
        """
        params = self.conditioner(context)
        parts = [MonotonicAffineTransform(params[..., 0], params[..., 1])]
        k = self.bins
        for i in range(self.transforms):
            p = params[..., 2 + i * (3 * k - 1) : 2 + (i + 1) * (3 * k - 1)]
            parts.append(MonotonicRQSTransform(p[..., :k], p[..., k : 2 * k], p[..., 2 * k :], bound=self.bound))
        return ComposedTransform(*parts)

    def abduct_and_log_prob(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Exogenous noise `u = T_c(x)` (exact) and log-density `log N(u) + log |T_c'(x)|` of normalised values.

        Args:
            x: Tensor[...], normalised values.
            context: Tensor[..., C], broadcastable to x's shape plus C.

        Returns:
            (u, log_prob), both Tensor[...].
        """
        u, ladj = self.transform(context).call_and_ladj(x)
        return u, -0.5 * u.square() - 0.5 * math.log(2 * math.pi) + ladj

    def predict(self, u: Tensor, context: Tensor) -> Tensor:
        """Values from noise, `x = T_c^{-1}(u)`.

        Args:
            u: Tensor[...], standard-normal noise.
            context: Tensor[..., C].

        Returns:
            Tensor[...], normalised values.
        """
        return self.transform(context).inv(u)


def sample_gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise of a given shape.

    Args:
        shape: Output shape.
        generator: Random generator (its device is used for drawing), or None.
        device: Device of the result.

    Returns:
        Tensor[shape].
    """
    draw_device = generator.device if generator is not None else device
    uniform = torch.rand(shape, generator=generator, device=draw_device).to(device)
    tiny = torch.finfo(uniform.dtype).tiny
    return -torch.log((-torch.log(uniform.clamp_min(tiny))).clamp_min(tiny))


class GumbelMechanism(nn.Module):
    """Gumbel-max mechanism for one binary/categorical factor.

    Args:
        context_dim: Context size C.
        num_levels: Number of levels K.
        hidden_dim: Conditioner width.
    """

    def __init__(self, context_dim: int, num_levels: int, hidden_dim: int) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.conditioner = Conditioner(context_dim, hidden_dim, num_levels)

    def logits(self, context: Tensor) -> Tensor:
        """Unnormalised log-probabilities.

        Args:
            context: Tensor[..., C].

        Returns:
            Tensor[..., K].
        """
        return self.conditioner(context)

    @staticmethod
    def log_prob(x: Tensor, logits: Tensor) -> Tensor:
        """Log-probability of observed levels.

        Args:
            x: LongTensor[...], level indices.
            logits: Tensor[..., K], broadcastable to x's shape plus K.

        Returns:
            Tensor[...].
        """
        log_p = torch.log_softmax(logits, dim=-1)
        log_p = log_p.expand(*x.shape, log_p.shape[-1])
        return log_p.gather(-1, x.unsqueeze(-1)).squeeze(-1)

    def abduct(self, x: Tensor, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample the Gumbel noise posterior given the observed level (top-down, Oberst & Sontag 2019).

        The maximum of the perturbed logits is `logsumexp(l) + G` with `G ~ Gumbel(0)` and is attained at
        the observed level; every other perturbed logit is a `Gumbel(l_k)` truncated below that maximum.

        Args:
            x: LongTensor[...], observed level indices.
            logits: Tensor[..., K], logits in the factual world (same leading shape as x).

        Returns:
            Tensor[..., K], noise `g` with `argmax(logits + g) == x`.
        """
        top = torch.logsumexp(logits, dim=-1, keepdim=True) + sample_gumbel(x.shape + (1,), generator, logits.device)
        perturbed = logits + sample_gumbel(tuple(logits.shape), generator, logits.device)
        below_top = torch.nextafter(top, torch.full_like(top, -math.inf))
        truncated = torch.minimum(-torch.logaddexp(-top, -perturbed), below_top)
        observed = nn.functional.one_hot(x, self.num_levels).bool()
        return torch.where(observed, top, truncated) - logits

    @staticmethod
    def predict(gumbel: Tensor, logits: Tensor) -> Tensor:
        """Levels from noise, `argmax(logits + g)`.

        Args:
            gumbel: Tensor[..., K].
            logits: Tensor[..., K].

        Returns:
            LongTensor[...].
        """
        return torch.argmax(logits + gumbel, dim=-1)
