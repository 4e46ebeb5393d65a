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

The model's structure, mechanisms and likelihood are here; fitting is in `cf_diffusion.scm.fitting` and sampling,
abduction and counterfactuals in `cf_diffusion.scm.inference`, both mixed into `NeuralCausalModel`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from ..factors import FactorSchema
from ..graph import CausalGraph
from .counts import COUNTS_FILE, CountsUnavailable, ObservationalCounts
from .fitting import FitMixin
from .inference import InferenceMixin
from .mechanisms import FlowMechanism, GumbelMechanism
from .tensors import broadcast


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


class NeuralCausalModel(FitMixin, InferenceMixin, ModelMixin, ConfigMixin):
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
        return torch.cat([broadcast(part, shape, 1) for part in parts], dim=-1)

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
        x = broadcast(values[name], shape, 0)
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
