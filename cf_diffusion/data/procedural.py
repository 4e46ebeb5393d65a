"""ProceduralDataset: a dataset whose true structural causal model and renderer are known.

Each row is fully determined by its exogenous noise (a dict of arrays, one entry per noise variable). The factual
factors are the mechanisms applied to that noise; a counterfactual is the same noise under an intervention, so the
true counterfactual of any row (factors *and* image) is known exactly.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from cf_diffusion.factors import FactorSchema
from cf_diffusion.graph import CausalGraph


@dataclass
class ProceduralSample:
    """Rows of a procedural dataset.

    Attributes:
        factors: factor name -> array[N] (discrete: level indices, continuous: raw units).
        exogenous: noise name -> array[N] (the row's exogenous noise; holds the image noise U_I too).
        images: uint8 array[N, R, R, 3], or None when not rendered.
    """

    factors: dict[str, np.ndarray]
    exogenous: dict[str, np.ndarray]
    images: np.ndarray | None = None


class ProceduralDataset(ABC):
    """Base class of the procedural datasets: true SCM (graph, schema, mechanisms) plus a renderer."""

    name: str
    default_resolution: int = 32

    @property
    @abstractmethod
    def graph(self) -> CausalGraph:
        """The true causal graph over the factors (bidirected edges = hidden confounders)."""

    @property
    @abstractmethod
    def schema(self) -> FactorSchema:
        """The factor schema (names, kinds, levels, ranges)."""

    @abstractmethod
    def sample_exogenous(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draws the exogenous noise of `n` rows."""

    @abstractmethod
    def mechanisms(self, exogenous: dict[str, np.ndarray], interventions: dict[str, np.ndarray]) -> dict:
        """Applies the structural equations in topological order, replacing intervened factors by their values.

        Args:
            exogenous: noise name -> array[N].
            interventions: factor name -> array[N] of values (level indices / raw units), already validated.

        Returns:
            factor name -> array[N].
        """

    #: pixels rendered per chunk (bounds the renderer's memory at high resolution)
    chunk_pixels: int = 1 << 20

    @abstractmethod
    def _render_chunk(self, factors: dict, exogenous: dict, resolution: int) -> np.ndarray:
        """Draws one chunk of rows: uint8 array[n, R, R, 3]."""

    def render(self, factors: dict[str, np.ndarray], exogenous: dict[str, np.ndarray], resolution: int) -> np.ndarray:
        """Draws the images of rows, anti-aliased, at any resolution: uint8 array[N, R, R, 3]."""
        if not 8 <= resolution <= 4096:
            raise ValueError(f"resolution must be in [8, 4096], got {resolution}.")
        n = len(next(iter(factors.values())))
        chunk = max(1, self.chunk_pixels // resolution**2)
        parts = [
            self._render_chunk(
                {k: np.asarray(v)[i : i + chunk] for k, v in factors.items()},
                {k: np.asarray(v)[i : i + chunk] for k, v in exogenous.items()},
                resolution,
            )
            for i in range(0, n, chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, resolution, resolution, 3), np.uint8)

    def prepare(self) -> None:
        """Loads what every render needs (assets, caches) ahead of time, e.g. before forking render workers.

        The base class needs nothing; subclasses with assets override it.
        """
        return None

    def _intervention_arrays(self, interventions: dict | None, n: int) -> dict[str, np.ndarray]:
        """Validates `{name: value or per-row values}` against the schema and broadcasts to arrays[N]."""
        out = {}
        for name, value in (interventions or {}).items():
            if name not in self.schema:
                raise ValueError(f"Unknown factor {name!r} in interventions; {self.name} has {self.schema.names}.")
            values = np.broadcast_to(np.asarray(value, dtype=object), (n,))
            out[name] = self.schema.to_values({name: list(values)}, partial=True)[name].numpy()
        return out

    def sample(
        self, n: int, seed: int = 0, resolution: int | None = None, interventions: dict | None = None
    ) -> ProceduralSample:
        """Draws `n` rows (optionally under interventions) and renders them unless `resolution` is 0."""
        rng = np.random.default_rng(seed)
        exogenous = self.sample_exogenous(n, rng)
        factors = self.mechanisms(exogenous, self._intervention_arrays(interventions, n))
        resolution = self.default_resolution if resolution is None else resolution
        images = self.render(factors, exogenous, resolution) if resolution else None
        return ProceduralSample(factors, exogenous, images)

    def counterfactual(
        self, exogenous: dict[str, np.ndarray], interventions: dict, resolution: int | None = None
    ) -> ProceduralSample:
        """The true counterfactual of rows: the same exogenous noise, the structural equations under `do(...)`."""
        n = len(next(iter(exogenous.values())))
        factors = self.mechanisms(exogenous, self._intervention_arrays(interventions, n))
        resolution = self.default_resolution if resolution is None else resolution
        images = self.render(factors, exogenous, resolution) if resolution else None
        return ProceduralSample(factors, exogenous, images)
