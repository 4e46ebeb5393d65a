"""The observational joint of a causal model's factors, as counts: what `counterfactual_bounds` needs.

A fitted `NeuralCausalModel` keeps the counts of the table it was fitted on and saves them beside its weights as
`observational_counts.safetensors`, so a shipped model bounds its edits without its training data. Discrete
factors are counted by level; a continuous factor is counted by bin, `NUM_BINS` equal-width bins over its range
(the bounds of a discrete factor with a continuous factor among its relevant nodes are the bounds of that
discretised model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from cf_diffusion.factors import Factor, FactorSchema

COUNTS_FILE = "observational_counts.safetensors"
"""File name of the counts inside a causal model's folder."""
NUM_BINS = 8
"""Equal-width bins per continuous factor."""


class CountsUnavailable(ValueError):
    """The stored counts are missing, unreadable or do not match the model; the message says which."""


@dataclass(frozen=True, eq=False)
class ObservationalCounts:
    """How often each configuration of the factors was observed.

    Attributes:
        schema: The model's factors; continuous ones need their range.
        configs: int64 array [M, F], one row per observed configuration, one column per factor in schema order: the
            level index of a discrete factor, the bin of a continuous one.
        counts: int64 array [M], positive: how many rows had that configuration.
    """

    schema: FactorSchema
    configs: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_table(cls, schema: FactorSchema, table: Any) -> ObservationalCounts:
        """Counts of a factor table (anything `schema.to_values` accepts, every factor present)."""
        values = schema.to_values(table)
        columns = [_cells(factor, values[factor.name]) for factor in schema]
        configs, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
        return cls(schema, configs.astype(np.int64), counts.astype(np.int64))

    def bin_schema(self) -> FactorSchema:
        """The schema with each continuous factor replaced by a categorical one whose levels are its bins."""
        return FactorSchema(
            Factor.categorical(factor.name, [_bin_label(factor, i) for i in range(NUM_BINS)])
            if not factor.is_discrete
            else factor
            for factor in self.schema
        )

    def cell(self, name: str, value: Any) -> int:
        """The level index (discrete factor) or bin (continuous factor) of one value of factor `name`."""
        factor = self.schema[name]
        return int(_cells(factor, self.schema.to_values({name: [value]}, partial=True)[name])[0])

    def occurrences(self, table: Any) -> np.ndarray:
        """How many observed rows share each row's configuration (level or bin of every factor): int64 array[N].

        Args:
            table: Rows of every factor, anything `schema.to_values` accepts.
        """
        values = self.schema.to_values(table)
        cells = np.stack([_cells(factor, values[factor.name]) for factor in self.schema], axis=1)
        observed = dict(zip(map(tuple, self.configs.tolist()), self.counts.tolist(), strict=True))
        return np.array([observed.get(tuple(cell), 0) for cell in cells.tolist()], dtype=np.int64)

    def columns(self) -> dict[str, np.ndarray]:
        """The configurations as a table `{name: column of level or bin indices}`; `counts` weighs its rows."""
        return {name: self.configs[:, i] for i, name in enumerate(self.schema.names)}

    def save(self, path: str | Path) -> Path:
        """Writes the counts and the schema they refer to (in the metadata) to a safetensors file."""
        path = Path(path)
        metadata = {"schema": json.dumps(self.schema.to_dict()), "num_bins": str(NUM_BINS)}
        save_file({"configs": self.configs, "counts": self.counts}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, schema: FactorSchema) -> ObservationalCounts:
        """Reads counts written by `save` for a model with factors `schema`.

        Raises:
            CountsUnavailable: The file is missing or unreadable, was written for other factors or bins, or holds
                configurations or counts that are not valid; the message says which.
        """
        path = Path(path)
        if not path.is_file():
            raise CountsUnavailable(f"the model has no {COUNTS_FILE} (saved before it was stored, or removed)")
        try:
            with safe_open(str(path), framework="np") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
            stored = FactorSchema.from_dict(json.loads(metadata["schema"]))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
            raise CountsUnavailable(f"{COUNTS_FILE} is unreadable ({error})") from None
        if stored != schema or metadata.get("num_bins") != str(NUM_BINS):
            raise CountsUnavailable(f"{COUNTS_FILE} was written for other factors or bins than the model's")
        configs, counts = tensors.get("configs"), tensors.get("counts")
        if configs is None or counts is None:
            raise CountsUnavailable(f"{COUNTS_FILE} lacks its 'configs' or 'counts' tensor")
        if configs.ndim != 2 or configs.shape[1] != len(schema) or counts.shape != (configs.shape[0],):
            raise CountsUnavailable(
                f"{COUNTS_FILE} has configs of shape {configs.shape} and counts of shape {counts.shape}; expected "
                f"[M, {len(schema)}] and [M]"
            )
        cells = np.array([factor.num_levels if factor.is_discrete else NUM_BINS for factor in schema])
        if configs.dtype.kind not in "iu" or (configs.size and ((configs < 0) | (configs >= cells)).any()):
            raise CountsUnavailable(f"{COUNTS_FILE} holds configurations outside the factors' levels or bins")
        if counts.dtype.kind not in "iu" or not len(counts) or (counts <= 0).any():
            raise CountsUnavailable(f"{COUNTS_FILE} holds counts that are not positive integers")
        return cls(schema, configs.astype(np.int64), counts.astype(np.int64))


def _cells(factor: Factor, column: torch.Tensor) -> np.ndarray:
    """Level indices of a discrete column, or bins of a continuous one (values outside the range go to an end bin)."""
    values = column.detach().cpu().numpy()
    if factor.is_discrete:
        return values.astype(np.int64)
    if not factor.has_range:
        raise ValueError(f"continuous factor {factor.name!r} has no range; counts need it to bin its values")
    scaled = (values.astype(np.float64) - factor.low) / (factor.high - factor.low) * NUM_BINS
    return np.clip(np.floor(scaled), 0, NUM_BINS - 1).astype(np.int64)


def _bin_label(factor: Factor, i: int) -> str:
    width = (factor.high - factor.low) / NUM_BINS
    return f"{i}:[{factor.low + i * width:.4g},{factor.low + (i + 1) * width:.4g})"
