"""FactorSchema: the ordered, typed factors of a label table, and conversions between tables, values and tensors.

Three representations of factor values are used throughout the package:

- a *table*: what users hand in. A dict `name -> column` (list, `np.ndarray`, `torch.Tensor`), a pandas
  DataFrame, a list of row dicts, or one row dict of scalars (a table of one row). Discrete values may be level
  names, integer indices, whole floats or bools (binary factors); continuous values are numbers in raw units.
- *values*: `dict[str, Tensor[N]]`, discrete factors as `torch.long` level indices, continuous factors as
  `torch.float32` raw units (`FactorSchema.to_values`). This is what the causal model works with.
- an *encoding*: `Tensor[N, F]` float32, one column per factor in schema order: discrete factors as their level
  index, continuous factors scaled from `[low, high]` to `[-1, 1]` (`FactorSchema.encode` / `normalize`).

One factor and the checks of its single values live in `cf_diffusion.factor`, the conversion of whole columns in
`cf_diffusion.factor_columns`; `Factor`, `UnknownFactorError` and `table_columns` are importable from here as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from cf_diffusion.factor import _KINDS, Factor, FactorKind, UnknownFactorError, _is_number, _scalar
from cf_diffusion.factor_columns import (
    _column_length,
    _continuous_from_range,
    _convert_column,
    _discrete_indices,
    _infer_factor,
    _numeric,
    table_columns,
)

__all__ = ["Factor", "FactorKind", "FactorSchema", "UnknownFactorError", "table_columns"]

_ASSIGNMENT_SEPARATOR = re.compile(r"\s*[,;]\s*|\s+")


class FactorSchema:
    """An ordered collection of factors: the typed columns of a label table.

    Args:
        factors: The factors; names must be unique. Their order is the column order of encodings.

    Raises:
        ValueError: On duplicate names or an entry that is not a Factor.

    Example:
        >>> schema = FactorSchema([Factor.binary("size"), Factor.categorical("color", ["red", "green"]),
        ...                        Factor.continuous("thickness", 1.0, 5.0)])
        >>> schema.parse("color=green,thickness=3.2")
        {'color': 'green', 'thickness': 3.2}
    """

    def __init__(self, factors: Iterable[Factor]) -> None:
        self._factors = list(factors)
        for factor in self._factors:
            if not isinstance(factor, Factor):
                raise ValueError(f"FactorSchema expects Factor objects, got {factor!r}")
        self._index: dict[str, int] = {}
        for i, factor in enumerate(self._factors):
            if factor.name in self._index:
                raise ValueError(f"duplicate factor name {factor.name!r} in {[f.name for f in self._factors]}")
            self._index[factor.name] = i

    # ------------------------------------------------------------------ container protocol

    @property
    def names(self) -> list[str]:
        """Factor names in schema order."""
        return [factor.name for factor in self._factors]

    @property
    def factors(self) -> list[Factor]:
        """The factors in schema order."""
        return list(self._factors)

    def __len__(self) -> int:
        return len(self._factors)

    def __iter__(self) -> Iterator[Factor]:
        return iter(self._factors)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, Factor):
            return name.name in self._index and self._factors[self._index[name.name]] == name
        return name in self._index

    def index(self, name: str) -> int:
        """Column of factor `name` in encodings.

        Raises:
            UnknownFactorError: (a ValueError) naming the factor and listing the schema's names.
        """
        if not isinstance(name, str) or name not in self._index:
            raise UnknownFactorError(f"unknown factor {name!r}; the schema's factors are {self.names}")
        return self._index[name]

    def __getitem__(self, name: str) -> Factor:
        return self._factors[self.index(name)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FactorSchema):
            return NotImplemented
        return self._factors == other._factors

    def __hash__(self) -> int:
        return hash(tuple(self._factors))

    def __repr__(self) -> str:
        return f"FactorSchema({self._factors!r})"

    # ------------------------------------------------------------------ serialisation and construction

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Plain JSON form: `{"factors": [factor.to_dict(), ...]}`."""
        return {"factors": [factor.to_dict() for factor in self._factors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | list[dict[str, Any]]) -> FactorSchema:
        """Inverse of `to_dict`; also accepts the bare list of factor dicts."""
        if isinstance(data, dict):
            if set(data) != {"factors"}:
                raise ValueError(f"schema dict must have exactly the key 'factors', got {sorted(data)}")
            data = data["factors"]
        if not isinstance(data, list | tuple):
            raise ValueError(f"FactorSchema.from_dict expects a dict or list, got {type(data).__name__}")
        return cls([Factor.from_dict(item) for item in data])

    @classmethod
    def infer(cls, table: Any, overrides: dict[str, Factor | str] | None = None) -> FactorSchema:
        """Guesses a schema from a table, one factor per column in column order.

        Rules: bool columns and integer columns with values in {0, 1} -> binary ("0", "1"); strings ->
        categorical with sorted levels; non-negative integers with at most 32 values -> categorical with levels
        "0".."max" (so an integer is its own level index); other numbers -> continuous with the data's range.

        Args:
            table: Any accepted table.
            overrides: `{name: Factor}` to use as is, or `{name: kind}` (`"binary"`, `"categorical"`,
                `"continuous"`) to force a kind.

        Returns:
            The schema.

        Raises:
            ValueError: On an override naming no column, an empty table, or a column that cannot be typed.
        """
        columns = table_columns(table)
        overrides = dict(overrides or {})
        for name in overrides:
            if name not in columns:
                raise ValueError(f"override for unknown column {name!r}; the table's columns are {list(columns)}")
        if not columns or not _column_length("", next(iter(columns.values()))):
            raise ValueError("cannot infer a schema from an empty table")
        factors = []
        for name, column in columns.items():
            override = overrides.get(name)
            if isinstance(override, Factor):
                if override.name != name:
                    raise ValueError(f"override for column {name!r} is a factor named {override.name!r}")
                factors.append(override)
            else:
                if override is not None and override not in _KINDS:
                    raise ValueError(
                        f"override for {name!r} must be a Factor or one of {list(_KINDS)}, got {override!r}"
                    )
                factors.append(_infer_factor(name, column, override))
        return cls(factors)

    def with_ranges(self, table: Any) -> FactorSchema:
        """A copy whose continuous factors have missing `low`/`high` filled with the data's min/max.

        Columns missing from `table` leave their factor unchanged.

        Raises:
            ValueError: If a column needed for a range is not numeric (naming it) or the data are constant.
        """
        columns = table_columns(table)
        factors = []
        for factor in self._factors:
            if factor.is_discrete or factor.has_range or factor.name not in columns:
                factors.append(factor)
                continue
            data = _numeric(columns[factor.name])
            if data is None or data.dtype == torch.bool or data.numel() == 0:
                raise ValueError(f"cannot take a range for continuous factor {factor.name!r} from its column")
            data = data.double()
            low = factor.low if factor.low is not None else float(data.min())
            high = factor.high if factor.high is not None else float(data.max())
            factors.append(_continuous_from_range(factor.name, low, high))
        return FactorSchema(factors)

    # ------------------------------------------------------------------ tables <-> values

    def to_values(self, table: Any, partial: bool = False) -> dict[str, torch.Tensor]:
        """Validates a table and converts it to value tensors.

        Args:
            table: Any accepted table (a values dict passes through unchanged apart from dtypes).
            partial: Allow columns of the schema to be missing.

        Returns:
            `{name: Tensor[N]}` in schema order: discrete factors as `torch.long` level indices, continuous ones
            as `torch.float32` raw values. Tensor columns keep their device.

        Raises:
            ValueError: On an unknown column (naming it and listing the schema's names), a missing column
                (unless `partial`), or a bad value (naming the factor, the row, the value and what is allowed).
        """
        columns = table_columns(table)
        for name in columns:
            if name not in self._index:
                raise UnknownFactorError(f"unknown factor {name!r} in table; the schema's factors are {self.names}")
        if not partial:
            missing = [name for name in self.names if name not in columns]
            if missing:
                raise ValueError(f"table is missing factor(s) {missing}; the schema's factors are {self.names}")
        return {
            factor.name: _convert_column(factor, columns[factor.name])
            for factor in self._factors
            if factor.name in columns
        }

    def from_values(self, values: dict[str, torch.Tensor]) -> dict[str, list]:
        """Converts value tensors back to readable lists.

        Args:
            values: `{name: Tensor[...]}` as from `to_values` (any subset of factors, any shape).

        Returns:
            `{name: list}` (nested like the tensor): level names for discrete factors, floats for continuous ones.

        Raises:
            ValueError: On an unknown name, or a discrete index out of range (naming the factor).
        """
        out: dict[str, list] = {}
        for name, tensor in values.items():
            factor = self[name]
            tensor = torch.as_tensor(tensor)
            if factor.levels is None:
                out[name] = tensor.detach().double().cpu().tolist()
                continue
            indices = _discrete_indices(factor, tensor)
            out[name] = np.asarray(factor.levels, dtype=object)[indices.cpu().numpy()].tolist()
        return {name: out[name] for name in self.names if name in out}

    # ------------------------------------------------------------------ values <-> normalised tensors

    def _require_ranges(self) -> None:
        for factor in self._factors:
            if factor.kind == "continuous" and not factor.has_range:
                raise ValueError(
                    f"continuous factor {factor.name!r} has no known range [low, high] (got [{factor.low}, "
                    f"{factor.high}]); give one or call schema.with_ranges(table)"
                )

    def normalize(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stacks value tensors into the model's encoding without range checks (model samples may leave the range).

        Args:
            values: `{name: Tensor[...]}` for every factor (discrete as indices, continuous as raw values).

        Returns:
            `Tensor[..., F]` float32: discrete = level index, continuous = `2 (x - low) / (high - low) - 1`.

        Raises:
            ValueError: On unknown or missing names, or a continuous factor with no known range.
        """
        for name in values:
            self.index(name)
        missing = [name for name in self.names if name not in values]
        if missing:
            raise ValueError(f"values are missing factor(s) {missing}; the schema's factors are {self.names}")
        self._require_ranges()
        columns = []
        for factor in self._factors:
            x = torch.as_tensor(values[factor.name]).to(torch.float32)
            if factor.kind == "continuous":
                x = 2.0 * (x - factor.low) / (factor.high - factor.low) - 1.0
            columns.append(x)
        return torch.stack(columns, dim=-1)

    def denormalize(self, encoded: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of `normalize`: discrete columns rounded and clamped to valid indices.

        Args:
            encoded: `Tensor[..., F]`.

        Returns:
            `{name: Tensor[...]}`: `torch.long` indices for discrete factors, `torch.float32` for continuous ones.

        Raises:
            ValueError: If the last dimension is not the number of factors, or a range is unknown.
        """
        encoded = torch.as_tensor(encoded)
        if encoded.dim() < 1 or encoded.shape[-1] != len(self._factors):
            raise ValueError(
                f"encoded tensor must have shape [..., {len(self._factors)}] (one column per factor {self.names}), "
                f"got {tuple(encoded.shape)}"
            )
        self._require_ranges()
        out = {}
        for i, factor in enumerate(self._factors):
            x = encoded[..., i].to(torch.float32)
            if factor.levels is None:
                out[factor.name] = factor.low + (x + 1.0) * 0.5 * (factor.high - factor.low)
            else:
                out[factor.name] = x.round().clamp(0, len(factor.levels) - 1).long()
        return out

    def encode(self, table: Any) -> torch.Tensor:
        """Validates a table (or values dict) and encodes it: `Tensor[N, F]` float32, see `normalize`."""
        self._require_ranges()
        return self.normalize(self.to_values(table))

    def decode(self, encoded: torch.Tensor) -> dict[str, list]:
        """Inverse of `encode`: `Tensor[N, F]` -> `{name: list}` of level names and floats."""
        return self.from_values(self.denormalize(encoded))

    # ------------------------------------------------------------------ text

    def parse(self, text: str) -> dict[str, str | float]:
        """Parses assignments such as `"color=red,thickness=3.2"` (separated by commas, semicolons or spaces).

        Level names containing separators (spaces, commas, semicolons, `=`) cannot be written in this form.

        Args:
            text: `name=value` parts. Discrete values are level names (or integer indices); continuous values
                are numbers inside the factor's range.

        Returns:
            `{name: level name | float}` in the order given.

        Raises:
            ValueError: Naming the bad part: no `=`, unknown factor, repeated factor, bad level or number.
        """
        if not isinstance(text, str):
            raise ValueError(f"parse expects a string such as 'color=red', got {type(text).__name__}")
        out: dict[str, str | float] = {}
        for part in _ASSIGNMENT_SEPARATOR.split(re.sub(r"\s*=\s*", "=", text.strip())):
            if not part:
                continue
            name, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not name or not value:
                raise ValueError(f"malformed assignment {part!r} in {text!r}; expected name=value")
            if name not in self._index:
                raise UnknownFactorError(f"unknown factor {name!r} in {part!r}; the schema's factors are {self.names}")
            if name in out:
                raise ValueError(f"factor {name!r} is assigned twice in {text!r}")
            factor = self[name]
            if factor.levels is not None:
                if value not in factor.levels and re.fullmatch(r"[+-]?\d+", value):
                    out[name] = factor.levels[factor.to_index(int(value))]
                else:
                    out[name] = factor.levels[factor.to_index(value)]
            else:
                try:
                    number = float(value)
                except ValueError:
                    raise ValueError(
                        f"factor {name!r}: {part!r} is not a number; expected {factor._allowed()}"
                    ) from None
                out[name] = factor.check_value(number)
        return out

    def format_row(self, values: dict[str, Any], precision: int = 2) -> str:
        """One row as text for captions, e.g. `"color=red thickness=3.20"`, in schema order.

        Args:
            values: `{name: value}` for any subset of factors; values as level names, indices, numbers or
                one-element tensors.
            precision: Decimals for continuous values.

        Raises:
            ValueError: On an unknown name or a bad discrete value.
        """
        for name in values:
            self.index(name)
        parts = []
        for factor in self._factors:
            if factor.name not in values:
                continue
            value = _scalar(values[factor.name])
            if factor.levels is not None:
                text = factor.levels[factor.to_index(value)]
            else:
                if not _is_number(value):
                    raise ValueError(f"factor {factor.name!r}: bad value {value!r}; expected a number")
                text = f"{float(value):.{precision}f}"
            parts.append(f"{factor.name}={text}")
        return " ".join(parts)

    # ------------------------------------------------------------------ checks of a pipeline's inputs

    def check_factors(self, table: Any, batch_size: int | None = None) -> int:
        """Checks the factors given for a batch of images: a full table of valid values, one row per image.

        Args:
            table: Any accepted table (see `to_values`) with every factor; one row dict is one image.
            batch_size: The number of images the table must describe; None accepts any.

        Returns:
            The table's number of rows.

        Raises:
            ValueError: On a bad table (see `to_values`), or a number of rows other than `batch_size`.
        """
        rows = len(next(iter(self.to_values(table).values())))
        if batch_size is not None and rows != batch_size:
            raise ValueError(
                f"factors describe {rows} image(s) but {batch_size} image(s) were given; give one value per "
                f"factor for one image, or one row (or column entry) per image"
            )
        return rows

    def check_interventions(self, interventions: Any, batch_size: int) -> None:
        """Checks interventions on a batch of images: `{name: value | callable | per-image column}`, each as
        `_check_intervention` takes it; None is no intervention.

        Raises:
            ValueError: On something other than a mapping, or a bad intervention.
        """
        from collections.abc import Mapping

        if interventions is None:
            return
        if not isinstance(interventions, Mapping):
            raise ValueError(
                f"interventions must be a dict {{factor name: value or callable}}, got {type(interventions).__name__}"
            )
        for name, value in interventions.items():
            self._check_intervention(name, value, batch_size=batch_size)

    def _check_intervention(self, name: Any, value: Any, batch_size: int) -> None:
        """One intervention on a batch of `batch_size` images: a factor of the schema set to a callable (a shift of
        its factual value), one valid value, or a column of one value per image (a list, tuple, array or tensor with
        at least one dimension).

        Raises:
            ValueError: On an unknown factor, a column of another length than 1 or `batch_size`, or a bad value.
        """
        if name not in self:
            raise ValueError(f"unknown factor {name!r} in interventions; the model's factors are {self.names}")
        if callable(value):
            return
        if isinstance(value, torch.Tensor | np.ndarray):
            per_image = value.ndim >= 1
        else:
            per_image = isinstance(value, list | tuple)
        column = value if per_image else [value]
        if len(column) not in (1, batch_size):
            raise ValueError(
                f"intervention on {name!r} has {len(column)} values; expected one value or {batch_size} "
                "(one per image)"
            )
        self.to_values({name: column}, partial=True)
