"""NeuralCausalModel: a learned structural causal model over labelled factors that respects a causal graph.

Every factor has its own mechanism whose inputs are exactly its parents in the graph (plus the latent of
its c-component when it is confounded), so interventional and counterfactual queries are answered by
surgery on the graph: abduction (posterior of the exogenous noise given the factual values), action
(replace the mechanisms of the intervened factors) and prediction (propagate in topological order).

Hidden confounders: each c-component with more than one member (factors joined by bidirected edges) shares
a latent `U_c ~ N(0, I_D)` fed to all its members. Fitting maximises an importance-weighted likelihood that
marginalises `U_c` with `num_importance` samples from its prior,
`log p(v_C | pa_C) ~= logmeanexp_k sum_{m in C} log p(v_m | pa_m, U_c^k)`; abduction resamples `U_c` from
its posterior by self-normalised importance resampling with the same weights. Unconfounded factors get no
latent and their likelihood is exact.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..factors import FactorSchema
from ..graph import CausalGraph
from .counts import COUNTS_FILE, CountsUnavailable, ObservationalCounts
from .exogenous import Exogenous
from .mechanisms import FlowMechanism, GumbelMechanism, sample_gumbel


def _as_graph(graph: CausalGraph | dict | str) -> CausalGraph:
    if isinstance(graph, CausalGraph):
        return graph
    if isinstance(graph, str):
        return CausalGraph.parse(graph)
    if isinstance(graph, Mapping):
        return CausalGraph.from_dict(dict(graph))
    raise ValueError(f"graph must be a CausalGraph, a dict or a string; got {type(graph).__name__}")


def _as_schema(schema: FactorSchema | dict) -> FactorSchema:
    if isinstance(schema, FactorSchema):
        return schema
    if isinstance(schema, Mapping):
        return FactorSchema.from_dict(dict(schema))
    raise ValueError(f"schema must be a FactorSchema or a dict; got {type(schema).__name__}")


class NeuralCausalModel(ModelMixin, ConfigMixin):
    """A neural causal model over the factors of a `FactorSchema`, constrained by a `CausalGraph`.

    Continuous factors have conditional spline flows (noise recovered exactly by inversion); binary and
    categorical factors have Gumbel-max mechanisms (noise posterior sampled top-down, counterfactually
    stable). Confounded c-components share a latent, marginalised by importance weighting (see module doc).
    Values go in and out as `schema.to_values` gives them: dict name -> Tensor (long level indices for
    discrete factors, float raw units for continuous ones).

    Args:
        graph: The causal graph (a CausalGraph, its `to_dict()`, or text for `CausalGraph.parse`). Its nodes
            must be exactly the schema's factors. Stored in the config as a plain dict.
        schema: The factors (a FactorSchema or its `to_dict()`). Continuous ranges may be missing until `fit`
            completes them from the data. Stored in the config as a plain dict.
        hidden_dim: Width of every mechanism's two hidden layers.
        confounder_dim: Size D of each c-component's latent.
        num_importance: Prior samples K of each latent for the importance-weighted likelihood and abduction.
        flow_transforms: Spline transforms per continuous mechanism (after one affine transform).
        flow_bins: Bins per spline.

    Attributes:
        observational_counts: The counts of the table `fit` last saw (`ObservationalCounts`; saved beside the weights
            and loaded with them), or None when the model has none.
        counts_unavailable: Why the model has no observational counts (None when it has them).
    """

    @register_to_config
    def __init__(
        self,
        graph: CausalGraph | dict | str,
        schema: FactorSchema | dict,
        hidden_dim: int = 64,
        confounder_dim: int = 2,
        num_importance: int = 32,
        flow_transforms: int = 1,
        flow_bins: int = 8,
    ) -> None:
        super().__init__()
        graph = _as_graph(graph)
        schema = _as_schema(schema)
        missing = [name for name in schema.names if name not in graph.nodes]
        extra = [node for node in graph.nodes if node not in schema.names]
        if missing or extra:
            raise ValueError(
                f"graph nodes {graph.nodes} must be exactly the schema factors {schema.names}; "
                f"factors missing from the graph: {missing}, graph nodes without a factor: {extra}"
            )
        minimum = {"hidden_dim": 1, "confounder_dim": 1, "num_importance": 1, "flow_bins": 1, "flow_transforms": 0}
        given = {"hidden_dim": hidden_dim, "confounder_dim": confounder_dim, "num_importance": num_importance}
        given.update(flow_bins=flow_bins, flow_transforms=flow_transforms)
        for name, value in given.items():
            if value < minimum[name]:
                raise ValueError(f"{name} must be >= {minimum[name]}; got {value}")
        self.register_to_config(graph=graph.to_dict(), schema=schema.to_dict())
        self._graph = graph
        self._schema = schema
        self._order = graph.topological_order()
        rank = {node: i for i, node in enumerate(self._order)}
        self._components = [
            tuple(sorted(members, key=rank.__getitem__)) for members in graph.c_components() if len(members) > 1
        ]
        self._component_of = {node: comp for comp in self._components for node in comp}

        mechanisms = []
        for name in schema.names:
            factor = schema[name]
            context_dim = sum(self._feature_dim(parent) for parent in graph.parents(name))
            if name in self._component_of:
                context_dim += confounder_dim
            if factor.is_discrete:
                mechanisms.append(GumbelMechanism(context_dim, factor.num_levels, hidden_dim))
            else:
                mechanisms.append(FlowMechanism(context_dim, hidden_dim, flow_transforms, flow_bins))
        self.mechanisms = nn.ModuleList(mechanisms)
        self._index = {name: i for i, name in enumerate(schema.names)}
        self.observational_counts: ObservationalCounts | None = None
        self.counts_unavailable = "the causal model has not been fitted"

    @property
    def device(self) -> torch.device:
        """The parameters' device. `ModelMixin.device` also searches every submodule for offloading hooks, which a
        causal model never has (pipelines exclude it from offloading); the inference methods ask many times."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype (see `device`)."""
        return next(self.parameters()).dtype

    @property
    def graph(self) -> CausalGraph:
        """The causal graph."""
        return self._graph

    @property
    def schema(self) -> FactorSchema:
        """The factor schema (with the continuous ranges completed by `fit`)."""
        return self._schema

    @property
    def components(self) -> list[tuple[str, ...]]:
        """The confounded c-components (more than one member), members in topological order."""
        return list(self._components)

    # ------------------------------------------------------------------ features and normalisation

    def _feature_dim(self, name: str) -> int:
        factor = self._schema[name]
        return factor.num_levels if factor.is_discrete else 1

    def _range(self, name: str) -> tuple[float, float]:
        factor = self._schema[name]
        if factor.low is None or factor.high is None:
            raise ValueError(
                f"continuous factor {name!r} has no range (low, high); give it in the schema or call fit(table) first"
            )
        if not factor.high > factor.low:
            raise ValueError(f"continuous factor {name!r} has an empty range ({factor.low}, {factor.high})")
        return float(factor.low), float(factor.high)

    def _normalize(self, name: str, x: Tensor) -> Tensor:
        low, high = self._range(name)
        return 2 * (x - low) / (high - low) - 1

    def _denormalize(self, name: str, z: Tensor) -> Tensor:
        low, high = self._range(name)
        return (z + 1) * (high - low) / 2 + low

    def _context(self, name: str, values: dict[str, Tensor], latent: Tensor | None, shape: tuple[int, ...]) -> Tensor:
        """Mechanism input of `name`: its parents' features and its component's latent, Tensor[*shape, C]."""
        parts = []
        for parent in self._graph.parents(name):
            factor = self._schema[parent]
            value = values[parent]
            if factor.is_discrete:
                feature = nn.functional.one_hot(value, factor.num_levels).to(self.dtype)
            else:
                feature = self._normalize(parent, value).unsqueeze(-1).to(self.dtype)
            parts.append(feature)
        if latent is not None:
            parts.append(latent)
        if not parts:
            return torch.zeros(*shape, 0, device=self.device, dtype=self.dtype)
        return torch.cat([_broadcast(part, shape, 1) for part in parts], dim=-1)

    # ------------------------------------------------------------------ likelihood

    def _node_terms(self, name: str, values: dict[str, Tensor], latent: Tensor | None) -> tuple[Tensor, Tensor]:
        """Log-likelihood of a factor given its parents (and latent) and the statistic its noise posterior needs.

        Args:
            name: The factor.
            values: Values of (at least) the factor and its parents, Tensor[N] each.
            latent: The component's latent, Tensor[N, K, D], or None.

        Returns:
            (log_prob, statistic): log p(v | pa, U) in raw units, Tensor[N] (Tensor[N, K] with a latent), and
            the exact flow noise (same shape) for a continuous factor or the logits (plus a dim of size L, the
            number of levels) for a discrete one.
        """
        shape = tuple(latent.shape[:-1]) if latent is not None else tuple(values[name].shape)
        context = self._context(name, values, latent, shape)
        mechanism = self.mechanisms[self._index[name]]
        x = _broadcast(values[name], shape, 0)
        if self._schema[name].is_discrete:
            logits = mechanism.logits(context)
            return mechanism.log_prob(x, logits), logits
        low, high = self._range(name)
        u, log_prob = mechanism.abduct_and_log_prob(self._normalize(name, x).to(self.dtype), context)
        return log_prob - math.log((high - low) / 2), u

    def _log_likelihood(
        self, values: dict[str, Tensor], num_importance: int, generator: torch.Generator | None
    ) -> Tensor:
        """Log-likelihood of each row, importance-weighted over confounder latents, Tensor[N]."""
        n = len(values[self._order[0]])
        total = torch.zeros(n, device=self.device, dtype=self.dtype)
        for name in self._order:
            if name not in self._component_of:
                total = total + self._node_terms(name, values, None)[0]
        for component in self._components:
            latent = self._randn((n, num_importance, self.config.confounder_dim), generator)
            joint = sum(self._node_terms(member, values, latent)[0] for member in component)
            total = total + torch.logsumexp(joint, dim=-1) - math.log(num_importance)
        return total

    @torch.no_grad()
    def log_prob(self, table: Any, generator: torch.Generator | None = None) -> Tensor:
        """Log-likelihood of each row in raw units (densities for continuous factors, masses for discrete ones).

        Exact for unconfounded factors; for confounded c-components an importance-weighted estimate with
        `num_importance` prior samples of the latent (a stochastic lower bound in expectation). No gradients.

        Args:
            table: Factual rows: dict of columns (or DataFrame), as `schema.to_values` accepts; all factors.
            generator: Random generator for the latent samples.

        Returns:
            Tensor[N].
        """
        return self._log_likelihood(self._values(table), self.config.num_importance, generator)

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        table: Any,
        num_steps: int = 2000,
        batch_size: int = 1024,
        lr: float = 3e-3,
        generator: torch.Generator | None = None,
        show_progress: bool = True,
        checkpoint: Callable[[int, dict], None] | None = None,
        checkpoint_steps: int = 0,
        resume: dict | None = None,
    ) -> list[float]:
        """Fit every mechanism by maximum likelihood (Adam, cosine-decayed learning rate, minibatches).

        Confounder latents are marginalised by the importance-weighted likelihood (module doc). Continuous
        factors without a range get it from the table (`schema.with_ranges`), and the completed schema is
        stored in the config.

        A fit can be checkpointed and resumed exactly: `checkpoint(step, state)` is called every `checkpoint_steps`
        steps and after the last one, with the fit's whole state (weights, optimiser, schedule, the generator's state,
        the losses so far: nested dicts of tensors and JSON values, copies); a fresh model given the same table,
        settings and generator, and `resume=state`, continues from that step and ends bit-identical to a fit that
        was never interrupted.

        Args:
            table: Observed rows: dict of columns (or DataFrame), one column per factor.
            num_steps: Optimiser steps.
            batch_size: Rows per step (sampled with replacement).
            lr: Peak learning rate.
            generator: Random generator for minibatches and latent samples.
            show_progress: Show a tqdm progress bar.
            checkpoint: Called as `checkpoint(step, state)` to save the fit's state (None: never).
            checkpoint_steps: Steps between checkpoints (0: only after the last step).
            resume: A state `checkpoint` was given, to continue that fit from its step.

        Returns:
            The loss (mean negative log-likelihood per row, raw units) of every step (resumed: from the first).

        Raises:
            ValueError: On bad settings, an empty table, or a `resume` state of a fit with other settings.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {num_steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if any(
            not self._schema[n].is_discrete and None in (self._schema[n].low, self._schema[n].high)
            for n in self._order
        ):
            self._schema = self._schema.with_ranges(table)
            self.register_to_config(schema=self._schema.to_dict())
        values = self._values(table)
        n = len(values[self._order[0]])
        if n == 0:
            raise ValueError("table has no rows; fit needs at least one")
        self.observational_counts, self.counts_unavailable = ObservationalCounts.from_table(self._schema, values), None
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps)
        settings = {"num_steps": num_steps, "batch_size": batch_size, "lr": lr, "rows": n}
        losses = [] if resume is None else self._load_fit_state(resume, settings, optimizer, scheduler, generator)
        self.train()
        progress = tqdm(
            range(len(losses), num_steps),
            initial=len(losses),
            total=num_steps,
            desc="fit NeuralCausalModel",
            disable=not show_progress,
        )
        for step in progress:
            rows = self._randint(n, batch_size, generator)
            batch = {name: value[rows] for name, value in values.items()}
            loss = -self._log_likelihood(batch, self.config.num_importance, generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            progress.set_postfix(nll=f"{losses[-1]:.4f}", refresh=False)
            done = step + 1
            if checkpoint is not None and (done == num_steps or (checkpoint_steps and done % checkpoint_steps == 0)):
                checkpoint(done, self._fit_state(settings, optimizer, scheduler, generator, losses))
        self.eval()
        return losses

    def _fit_state(self, settings: dict, optimizer, scheduler, generator: torch.Generator | None, losses) -> dict:
        """A copy of everything a fit needs to continue exactly (see `fit`)."""
        rng = generator.get_state() if generator is not None else torch.get_rng_state()
        return {
            "model": {key: value.detach().clone() for key, value in self.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": copy.deepcopy(scheduler.state_dict()),
            "rng": rng.clone(),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "settings": dict(settings),
        }

    def _load_fit_state(
        self, state: dict, settings: dict, optimizer, scheduler, generator: torch.Generator | None
    ) -> list[float]:
        """Restores a `_fit_state` into this model, the optimiser, the schedule and the generator; returns the losses.

        Raises:
            ValueError: When the state belongs to a fit with other settings (steps, batch size, rate, rows).
        """
        saved = state["settings"]
        changed = sorted(key for key in settings if saved.get(key) != settings[key])
        if changed:
            pairs = ", ".join(f"{key}: {saved.get(key)!r} -> {settings[key]!r}" for key in changed)
            raise ValueError(f"cannot resume the causal model's fit: it was started with other settings ({pairs})")
        self.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if generator is not None:
            generator.set_state(state["rng"])
        else:
            torch.set_rng_state(state["rng"])
        return state["losses"].tolist()

    # ------------------------------------------------------------------ saving and loading the counts

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """`ModelMixin.save_pretrained`, plus the observational counts (when the model has them)."""
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process and self.observational_counts is not None:
            self.observational_counts.save(Path(save_directory) / COUNTS_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> NeuralCausalModel:
        """`ModelMixin.from_pretrained`, plus the observational counts of a local folder (`counts_unavailable` says
        why a model has none)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        try:
            model.observational_counts = ObservationalCounts.load(folder / COUNTS_FILE, model.schema)
            model.counts_unavailable = None
        except CountsUnavailable as error:
            model.observational_counts, model.counts_unavailable = None, str(error)
        return loaded

    # ------------------------------------------------------------------ abduction, action, prediction

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
            latents[component] = _take(prior, picks)
            statistics.update({member: _take(statistic, picks) for member, (_, statistic) in terms.items()})
        noise = {}
        for name in self._order:
            statistic = statistics[name] if name in statistics else self._node_terms(name, values, None)[1]
            if self._schema[name].is_discrete:
                mechanism = self.mechanisms[self._index[name]]
                x = _broadcast(values[name], shape, 0)
                noise[name] = mechanism.abduct(x, _broadcast(statistic, shape, 1), generator)
            else:
                noise[name] = _broadcast(statistic, shape, 0)
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
                out[name] = _broadcast(spec, (len(spec), 1), 0)
                continue
            if name not in changed:
                value = factual[name].unsqueeze(1)
            else:
                component = self._component_of.get(name)
                latent = exogenous.latents[component] if component is not None else None
                noise = _compact(exogenous.noise[name])
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
        return {name: _broadcast(value, (n, num_samples), 0).contiguous() for name, value in out.items()}

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

    # ------------------------------------------------------------------ helpers

    def _values(self, table: Any) -> dict[str, Tensor]:
        values = self._schema.to_values(table)
        for name in self._schema.names:
            if not self._schema[name].is_discrete:
                self._range(name)
        return {
            name: value.to(self.device) if self._schema[name].is_discrete else value.to(self.device, self.dtype)
            for name, value in values.items()
        }

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=device).to(self.device, self.dtype)

    def _rand(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else self.device
        return torch.rand(shape, generator=generator, device=device).to(self.device, self.dtype)

    def _randint(self, high: int, size: int, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randint(high, (size,), generator=generator, device=device).to(self.device)


def _broadcast(x: Tensor, shape: tuple[int, ...], trailing: int) -> Tensor:
    """Broadcast x to `shape` plus its `trailing` feature dims, inserting missing batch dims after its own.

    Args:
        x: Tensor[*b, *f] where `b` is a prefix of `shape` (or ones) and `f` has `trailing` dims.
        shape: Target batch shape, e.g. (N, S).
        trailing: Number of feature dims of x (0 for values, 1 for feature vectors and logits).

    Returns:
        Tensor[*shape, *f] (a view).
    """
    batch = x.ndim - trailing
    x = x.reshape(*x.shape[:batch], *([1] * (len(shape) - batch)), *x.shape[batch:])
    return x.expand(*shape, *x.shape[len(shape) :])


def _compact(x: Tensor) -> Tensor:
    """Tensor[N, S, *f] -> Tensor[N, 1, *f] when the sample dim is a broadcast (stride-0) view, else x."""
    return x[:, :1] if x.shape[1] == 1 or x.stride(1) == 0 else x


def _take(x: Tensor, picks: Tensor) -> Tensor:
    """Select importance samples: x Tensor[N, K, *f] and picks LongTensor[N, S] give Tensor[N, S, *f]."""
    index = picks.reshape(*picks.shape, *([1] * (x.ndim - 2))).expand(*picks.shape, *x.shape[2:])
    return x.gather(1, index)


def _is_column(value: Any) -> bool:
    """Whether an intervention value is a column of per-row values (not one scalar or level name)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.ndim >= 1
    return isinstance(value, list | tuple)
