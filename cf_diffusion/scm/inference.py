"""Queries of a NeuralCausalModel: abduction, action and prediction.

`InferenceMixin` holds the sampling and counterfactual methods of `cf_diffusion.scm.ncm.NeuralCausalModel` (mixed
into it, they use its mechanisms, schema and graph): the posterior of the exogenous variables given factual rows,
interventions (hard values or soft callables) and propagation in topological order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .exogenous import Exogenous
from .mechanisms import sample_gumbel
from .tensors import broadcast, compact, take


class InferenceMixin:
    """Observational and interventional sampling, abduction and counterfactuals of `NeuralCausalModel`."""

    @torch.no_grad()
    def abduct(self, factual: Any, num_samples: int = 1, generator: torch.Generator | None = None) -> Exogenous:
        """Sample the posterior of all exogenous variables given factual rows (vectorised over rows).

        Each confounded c-component's latent is resampled from K = `num_importance` prior samples with
        self-normalised importance weights p(v_C | pa_C, U_c); given the latent, continuous noise is recovered
        exactly by inverting the flow and Gumbel noise is sampled top-down from its posterior.

        Args:
            factual: Factual rows, all factors (as `schema.to_values` accepts).
            num_samples: Posterior samples S per row.
            generator: Random generator.

        Returns:
            Exogenous with noise Tensor[N, S] / Tensor[N, S, K] per factor and latents Tensor[N, S, D].
        """
        return self._abduct(self._values(factual), num_samples, generator)

    def _abduct(self, values: dict[str, Tensor], num_samples: int, generator: torch.Generator | None) -> Exogenous:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}")
        n = len(values[self._order[0]])
        shape = (n, num_samples)
        latents, statistics = {}, {}
        for component in self._components:
            prior = self._randn((n, self.config.num_importance, self.config.confounder_dim), generator)
            terms = {member: self._node_terms(member, values, prior) for member in component}
            weights = torch.softmax(sum(log_prob for log_prob, _ in terms.values()), dim=-1)
            cdf = torch.cumsum(weights, dim=-1)
            uniform = self._rand(shape, generator) * cdf[:, -1:]
            picks = torch.searchsorted(cdf, uniform).clamp_max(self.config.num_importance - 1)
            latents[component] = take(prior, picks)
            statistics.update({member: take(statistic, picks) for member, (_, statistic) in terms.items()})
        noise = {}
        for name in self._order:
            statistic = statistics[name] if name in statistics else self._node_terms(name, values, None)[1]
            if self._schema[name].is_discrete:
                mechanism = self.mechanisms[self._index[name]]
                x = broadcast(values[name], shape, 0)
                noise[name] = mechanism.abduct(x, broadcast(statistic, shape, 1), generator)
            else:
                noise[name] = broadcast(statistic, shape, 0)
        return Exogenous(noise=noise, latents=latents)

    def _prior(self, n: int, generator: torch.Generator | None) -> Exogenous:
        """Exogenous variables drawn from their prior, one sample per row (S = 1)."""
        latents = {c: self._randn((n, 1, self.config.confounder_dim), generator) for c in self._components}
        noise = {}
        for name in self._order:
            factor = self._schema[name]
            if factor.is_discrete:
                noise[name] = sample_gumbel((n, 1, factor.num_levels), generator, self.device).to(self.dtype)
            else:
                noise[name] = self._randn((n, 1), generator)
        return Exogenous(noise=noise, latents=latents)

    def _propagate(
        self, exogenous: Exogenous, interventions: dict[str, Any], factual: dict[str, Tensor] | None
    ) -> dict[str, Tensor]:
        """Action + prediction in topological order, Tensor[N, S] per factor.

        With factual values, factors that are neither intervened nor descendants of an intervened factor are
        copied from the factual values, and a soft intervention on a factor whose ancestors are untouched
        shifts its factual value. Values that are the same for every sample of a row are kept as Tensor[N, 1]
        while propagating, so their mechanisms run once per row instead of once per sample.
        """
        n, num_samples = exogenous.num_rows, exogenous.num_samples
        changed = set(self._order) if factual is None else self._graph.descendants(set(interventions))
        out = {}
        for name in self._order:
            spec = interventions.get(name)
            if spec is not None and not callable(spec):
                out[name] = broadcast(spec, (len(spec), 1), 0)
                continue
            if name not in changed:
                value = factual[name].unsqueeze(1)
            else:
                component = self._component_of.get(name)
                latent = exogenous.latents[component] if component is not None else None
                noise = compact(exogenous.noise[name])
                parents = [out[parent].shape[1] for parent in self._graph.parents(name)]
                width = num_samples if latent is not None else max(parents, default=1)
                context = self._context(name, out, latent, (n, width))
                mechanism = self.mechanisms[self._index[name]]
                if self._schema[name].is_discrete:
                    value = mechanism.predict(noise, mechanism.logits(context))
                else:
                    # the flow is exactly invertible on the range, but extrapolates past it (a descendant of a
                    # parent pushed to the edge of its own range); a factor's values stay in its range
                    value = self._denormalize(name, mechanism.predict(noise, context).clamp(-1, 1))
            out[name] = value if spec is None else self._soft(name, spec, value)
        return {name: broadcast(value, (n, num_samples), 0).contiguous() for name, value in out.items()}

    def _soft(self, name: str, shift: Callable[[Tensor], Tensor], value: Tensor) -> Tensor:
        """Apply a soft intervention to the value the mechanism gives, checking the result."""
        factor = self._schema[name]
        result = torch.as_tensor(shift(value), device=value.device)
        try:
            result = result.expand(value.shape)
        except RuntimeError as error:
            raise ValueError(
                f"soft intervention on {name!r} returned shape {tuple(result.shape)}; expected {tuple(value.shape)}"
            ) from error
        if factor.is_discrete:
            if result.is_floating_point() and not torch.equal(result, result.round()):
                raise ValueError(
                    f"soft intervention on {name!r} returned non-integer levels; allowed: {factor.levels}"
                )
            result = result.long()
            if result.numel() and (result.min() < 0 or result.max() >= factor.num_levels):
                raise ValueError(
                    f"soft intervention on {name!r} returned level indices outside 0..{factor.num_levels - 1}; "
                    f"allowed levels: {factor.levels}"
                )
            return result.clone()
        result = result.to(value.dtype)
        if not torch.isfinite(result).all():
            raise ValueError(f"soft intervention on {name!r} returned non-finite values")
        return result.clone()

    def _interventions(self, interventions: Mapping[str, Any] | None, n: int) -> dict[str, Any]:
        """Validate interventions; values become Tensor[1] or Tensor[n] in the values representation."""
        if interventions is None:
            return {}
        if not isinstance(interventions, Mapping):
            raise ValueError(
                f"interventions must be a dict name -> value or callable; got {type(interventions).__name__}"
            )
        parsed = {}
        for name, spec in interventions.items():
            if name not in self._index:
                raise ValueError(f"unknown factor {name!r} in interventions; allowed factors: {self._schema.names}")
            if callable(spec):
                parsed[name] = spec
                continue
            column = spec if _is_column(spec) else [spec]
            value = self._schema.to_values({name: column}, partial=True)[name].to(self.device)
            if value.ndim != 1 or len(value) not in (1, n):
                raise ValueError(
                    f"intervention on {name!r} has {len(value)} values; expected one value or {n} (one per row)"
                )
            parsed[name] = value if self._schema[name].is_discrete else value.to(self.dtype)
        return parsed

    @torch.no_grad()
    def sample(
        self, n: int, interventions: Mapping[str, Any] | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw n rows from the observational or interventional distribution.

        Args:
            n: Number of rows.
            interventions: {name: value} (level name, index or number; one value or n values, one per row) or
                {name: callable} (soft intervention: an element-wise function, e.g. `lambda t: t + 1`, applied in
                raw units / level indices to the value the factor's own mechanism gives in that world; it may
                leave a continuous factor's range), on any subset of factors.
            generator: Random generator.

        Returns:
            dict name -> Tensor[n] (long indices for discrete factors, float raw units for continuous ones).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        parsed = self._interventions(interventions, n)
        out = self._propagate(self._prior(n, generator), parsed, factual=None)
        return {name: out[name].squeeze(1) for name in self._schema.names}

    @torch.no_grad()
    def counterfactual(
        self,
        factual: Any,
        interventions: Mapping[str, Any],
        num_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Counterfactual values by abduction, action and prediction, vectorised over rows and samples.

        Factors that are neither intervened nor descendants of an intervened factor come back exactly equal to
        their factual values.

        Args:
            factual: Factual rows, all factors (as `schema.to_values` accepts), N rows.
            interventions: As in `sample`; per-row values have length N.
            num_samples: Posterior samples S per row.
            generator: Random generator.

        Returns:
            dict name -> Tensor[N, S] (long indices for discrete factors, float raw units for continuous ones).
        """
        values = self._values(factual)
        n = len(values[self._order[0]])
        parsed = self._interventions(interventions, n)
        out = self._propagate(self._abduct(values, num_samples, generator), parsed, factual=values)
        return {name: out[name] for name in self._schema.names}


def _is_column(value: Any) -> bool:
    """Whether an intervention value is a column of per-row values (not one scalar or level name)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.ndim >= 1
    return isinstance(value, list | tuple)
