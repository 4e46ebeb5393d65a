"""Factor and FactorSchema: typed generative factors and conversions between tables, values and tensors.

Three representations of factor values are used throughout the package:

- a *table*: what users hand in. A dict `name -> column` (list, `np.ndarray`, `torch.Tensor`), a pandas
  DataFrame, a list of row dicts, or one row dict of scalars (a table of one row). Discrete values may be level
  names, integer indices, whole floats or bools (binary factors); continuous values are numbers in raw units.
- *values*: `dict[str, Tensor[N]]`, discrete factors as `torch.long` level indices, continuous factors as
  `torch.float32` raw units (`FactorSchema.to_values`). This is what the causal model works with.
- an *encoding*: `Tensor[N, F]` float32, one column per factor in schema order: discrete factors as their level
  index, continuous factors scaled from `[low, high]` to `[-1, 1]` (`FactorSchema.encode` / `normalize`).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

FactorKind = Literal["binary", "categorical", "continuous"]
_KINDS = ("binary", "categorical", "continuous")
_RANGE_TOLERANCE = 1e-5
_MAX_INFERRED_CATEGORIES = 32
_ASSIGNMENT_SEPARATOR = re.compile(r"\s*[,;]\s*|\s+")


class UnknownFactorError(ValueError, KeyError):
    """A factor name the schema does not have; a ValueError that `dict`-style code may also catch as KeyError."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _scalar(x: Any) -> Any:
    """Unwraps one-element tensors/arrays and numpy scalars to Python scalars; leaves anything else as is."""
    if isinstance(x, torch.Tensor) and x.dim() <= 1 and x.numel() == 1:
        return x.item()
    if isinstance(x, np.ndarray) and x.ndim <= 1 and x.size == 1:
        return x.reshape(()).item()
    if isinstance(x, np.generic):
        return x.item()
    return x


@dataclass(frozen=True)
class Factor:
    """One labelled generative factor of an image.

    Attributes:
        name: Identifier, e.g. `"color"`.
        kind: `"binary"` (two levels), `"categorical"` (named levels) or `"continuous"` (a real number).
        levels: Level names of a discrete factor (binary: exactly two); `None` for continuous ones.
        low: Lower end of a continuous factor's range, or `None` while unknown (learn it with
            `FactorSchema.with_ranges`).
        high: Upper end of a continuous factor's range, or `None` while unknown.

    Raises:
        ValueError: On a bad name or kind, levels that are missing, duplicated or not strings, or a range with
            `low >= high` or non-finite ends.
    """

    name: str
    kind: FactorKind
    levels: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"bad factor name {self.name!r}: factor names must be identifiers such as 'color'")
        if self.kind not in _KINDS:
            raise ValueError(f"factor {self.name!r} has unknown kind {self.kind!r}; expected one of {list(_KINDS)}")
        if self.kind == "continuous":
            if self.levels is not None:
                raise ValueError(f"continuous factor {self.name!r} cannot have levels, got {self.levels!r}")
            for end in ("low", "high"):
                value = getattr(self, end)
                if value is not None:
                    if not _is_number(value) or not math.isfinite(value):
                        raise ValueError(f"factor {self.name!r}: {end} must be a finite number or None, got {value!r}")
                    object.__setattr__(self, end, float(value))
            if self.low is not None and self.high is not None and not self.low < self.high:
                raise ValueError(f"factor {self.name!r}: range needs low < high, got [{self.low}, {self.high}]")
            return
        if self.low is not None or self.high is not None:
            raise ValueError(f"{self.kind} factor {self.name!r} cannot have a range, got [{self.low}, {self.high}]")
        if self.levels is None or isinstance(self.levels, str):
            raise ValueError(f"{self.kind} factor {self.name!r} needs a sequence of level names, got {self.levels!r}")
        levels = tuple(self.levels)
        for level in levels:
            if not isinstance(level, str) or not level:
                raise ValueError(f"factor {self.name!r}: level names must be non-empty strings, got {level!r}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"factor {self.name!r} has duplicate levels {list(levels)}")
        if self.kind == "binary" and len(levels) != 2:
            raise ValueError(f"binary factor {self.name!r} needs exactly 2 levels, got {list(levels)}")
        if not levels:
            raise ValueError(f"categorical factor {self.name!r} needs at least one level")
        object.__setattr__(self, "levels", levels)

    @classmethod
    def binary(cls, name: str, levels: Sequence[str] = ("0", "1")) -> Factor:
        """A two-level factor; level index 0 is `levels[0]`."""
        return cls(name, "binary", tuple(str(level) for level in levels))

    @classmethod
    def categorical(cls, name: str, levels: Iterable[str | int]) -> Factor:
        """A factor with named levels (integers are turned into their text, e.g. `range(10)` -> "0".."9")."""
        if isinstance(levels, str):
            raise ValueError(f"categorical factor {name!r} needs a sequence of level names, got the string {levels!r}")
        return cls(name, "categorical", tuple(str(level) for level in levels))

    @classmethod
    def continuous(cls, name: str, low: float | None = None, high: float | None = None) -> Factor:
        """A real-valued factor on `[low, high]` (either end `None` while unknown)."""
        return cls(name, "continuous", None, low, high)

    @property
    def is_discrete(self) -> bool:
        """True for binary and categorical factors."""
        return self.kind != "continuous"

    @property
    def num_levels(self) -> int:
        """Number of levels of a discrete factor.

        Raises:
            ValueError: For a continuous factor.
        """
        if self.levels is None:
            raise ValueError(f"continuous factor {self.name!r} has no levels")
        return len(self.levels)

    @property
    def has_range(self) -> bool:
        """True for a continuous factor whose `low` and `high` are both known."""
        return self.low is not None and self.high is not None

    def _allowed(self) -> str:
        if self.levels is not None:
            return f"levels {list(self.levels)} or indices 0..{len(self.levels) - 1}"
        return f"numbers in [{self.low}, {self.high}]" if self.has_range else "finite numbers"

    def to_index(self, value: Any) -> int:
        """Level index of a discrete value.

        Args:
            value: A level name, an integer index (Python or numpy), a bool (binary factors only), a whole float
                such as `1.0`, or a one-element tensor/array of those.

        Returns:
            The index in `0..num_levels - 1`.

        Raises:
            ValueError: Naming the factor, the value and the allowed levels when the value is none of these.
        """
        if self.levels is None:
            raise ValueError(f"to_index is for discrete factors; {self.name!r} is continuous")
        value = _scalar(value)
        index: int | None = None
        if isinstance(value, str):
            if value in self.levels:
                return self.levels.index(value)
        elif isinstance(value, bool):
            index = int(value) if self.kind == "binary" else None
        elif isinstance(value, numbers.Integral):
            index = int(value)
        elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            index = int(value)
        if index is None or not 0 <= index < len(self.levels):
            raise ValueError(f"factor {self.name!r}: bad value {value!r}; expected {self._allowed()}")
        return index

    def level(self, index: int) -> str:
        """Level name of a level index (anything `to_index` accepts)."""
        return self.levels[self.to_index(index)]

    def check_value(self, x: Any) -> float:
        """Validates a continuous value.

        Args:
            x: A real number (or a one-element tensor/array).

        Returns:
            `x` as a float.

        Raises:
            ValueError: Naming the factor (and its range) when `x` is not a finite number or lies outside
                `[low, high]` (where known, with a relative tolerance of 1e-5).
        """
        if self.levels is not None:
            raise ValueError(f"check_value is for continuous factors; {self.name!r} is {self.kind}")
        x = _scalar(x)
        if not _is_number(x) or not math.isfinite(x):
            raise ValueError(f"factor {self.name!r}: bad value {x!r}; expected {self._allowed()}")
        tolerance = _RANGE_TOLERANCE * (self.high - self.low) if self.has_range else 0.0
        if (self.low is not None and x < self.low - tolerance) or (
            self.high is not None and x > self.high + tolerance
        ):
            raise ValueError(f"factor {self.name!r}: value {x!r} is out of range [{self.low}, {self.high}]")
        return float(x)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form: `{"name", "kind", "levels" (list or None), "low", "high"}`."""
        return {
            "name": self.name,
            "kind": self.kind,
            "levels": list(self.levels) if self.levels is not None else None,
            "low": self.low,
            "high": self.high,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Factor:
        """Inverse of `to_dict`; `levels`, `low` and `high` may be left out.

        Raises:
            ValueError: If `data` is not a dict, lacks `name`/`kind`, or has an unknown key (named).
        """
        if not isinstance(data, dict):
            raise ValueError(f"Factor.from_dict expects a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"name", "kind", "levels", "low", "high"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in factor dict; expected name, kind, levels, low, high")
        for key in ("name", "kind"):
            if key not in data:
                raise ValueError(f"factor dict {data!r} has no {key!r}")
        levels = data.get("levels")
        if levels is not None and not isinstance(levels, str):
            levels = tuple(str(level) for level in levels)
        return cls(data["name"], data["kind"], levels, data.get("low"), data.get("high"))


def _column_length(name: str, column: Any) -> int:
    if isinstance(column, torch.Tensor | np.ndarray):
        if column.ndim == 2 and column.shape[1] == 1:
            return column.shape[0]
        if column.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D (one value per row), got shape {tuple(column.shape)}")
        return column.shape[0]
    return len(column)


def _is_scalar(x: Any) -> bool:
    if isinstance(x, torch.Tensor | np.ndarray):
        return x.ndim == 0
    return isinstance(x, str | bytes | numbers.Number | np.generic) or x is None


def table_columns(table: Any) -> dict[str, Any]:
    """Turns any accepted table into `{name: column}` with columns of equal length.

    Args:
        table: A dict `name -> sequence/np.ndarray/Tensor[N]`, a pandas DataFrame, a list of row dicts, or one
            row dict of scalars (a table of one row).

    Returns:
        `{name: column}`; columns are 1-D `np.ndarray`, `torch.Tensor` or lists, all of the same length.

    Raises:
        ValueError: On an unsupported table type, rows with different keys, scalars mixed with columns, or
            columns of different lengths (naming the column).
    """
    if type(table).__name__ == "DataFrame" and hasattr(table, "columns") and hasattr(table, "to_dict"):
        columns = {str(name): table[name].to_numpy() for name in table.columns}
    elif isinstance(table, dict):
        scalars = [name for name, column in table.items() if _is_scalar(column)]
        if scalars and len(scalars) < len(table):
            others = [name for name in table if name not in scalars]
            raise ValueError(
                f"table mixes scalars ({scalars}) with columns ({others}); give one value per factor or one "
                "column per factor"
            )
        columns = {name: [column] for name, column in table.items()} if scalars else dict(table)
    elif isinstance(table, list | tuple) and all(isinstance(row, dict) for row in table):
        keys = list(table[0]) if table else []
        for i, row in enumerate(table):
            if set(row) != set(keys):
                raise ValueError(f"row {i} has keys {sorted(row)} but row 0 has {sorted(keys)}")
        columns = {name: [row[name] for row in table] for name in keys}
    else:
        raise ValueError(
            f"unsupported table of type {type(table).__name__}; expected a dict of columns, a pandas DataFrame, "
            "a list of row dicts or one row dict"
        )
    lengths = {name: _column_length(name, column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        bad = next(name for name in lengths if lengths[name] != lengths[first])
        raise ValueError(f"column {bad!r} has {lengths[bad]} rows but column {first!r} has {lengths[first]}")
    return {name: _flat_column(column) for name, column in columns.items()}


def _flat_column(column: Any) -> Any:
    """1-D view of an array or tensor column; pandas Series (anything with `to_numpy`) become numpy arrays."""
    if isinstance(column, torch.Tensor | np.ndarray):
        return column.reshape(-1)
    if hasattr(column, "to_numpy"):
        return np.asarray(column.to_numpy()).reshape(-1)
    return column


def _numeric(column: Any) -> torch.Tensor | None:
    """The column as a tensor when it is purely numeric or boolean (no Python loop for arrays), else None."""
    if isinstance(column, torch.Tensor):
        return column if not column.is_complex() else None
    array = column if isinstance(column, np.ndarray) else None
    if array is None:
        if not all(isinstance(x, numbers.Real | np.generic) and not isinstance(x, np.str_) for x in column):
            return None
        array = np.asarray(column)
    if array.dtype.kind not in "biuf":
        return None
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


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


def _continuous_from_range(name: str, low: float, high: float) -> Factor:
    """A continuous factor on `[low, high]`, widened symmetrically when the data are constant."""
    if not low < high:
        pad = max(abs(low), 1.0) * 1e-3
        low, high = low - pad, high + pad
    return Factor.continuous(name, low, high)


def _infer_factor(name: str, column: Any, kind: str | None) -> Factor:
    data = _numeric(column)
    if data is None:
        values = list(column.tolist() if isinstance(column, np.ndarray) else column)
        if kind == "continuous":
            raise ValueError(f"column {name!r} is not numeric, so it cannot be continuous")
        if not all(isinstance(v, str) for v in values):
            bad = next(v for v in values if not isinstance(v, str))
            raise ValueError(f"column {name!r} mixes text with {bad!r}; use all level names or all numbers")
        levels = sorted(set(values))
        if kind == "binary":
            return Factor.binary(name, levels)
        return Factor.categorical(name, levels)
    if data.dtype == torch.bool:
        data = data.long()
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"column {name!r} has non-finite values")
    low, high = float(data.min()), float(data.max())
    whole = not data.is_floating_point() or bool(torch.all(data == data.round()))
    if kind is None:
        if data.is_floating_point() or low < 0 or high >= _MAX_INFERRED_CATEGORIES:
            kind = "continuous"
        else:
            kind = "binary" if high <= 1 else "categorical"
    if kind == "continuous":
        return _continuous_from_range(name, low, high)
    if not whole or low < 0 or (kind == "binary" and high > 1):
        expected = "0 or 1" if kind == "binary" else "non-negative whole numbers (level indices)"
        raise ValueError(f"column {name!r} cannot be {kind}: its values lie in [{low}, {high}], expected {expected}")
    if kind == "binary":
        return Factor.binary(name)
    return Factor.categorical(name, [str(i) for i in range(int(high) + 1)])


def _first_bad(name: str, mask: torch.Tensor, column: torch.Tensor, expected: str) -> ValueError:
    row = int(torch.nonzero(mask.reshape(-1))[0])
    return ValueError(f"factor {name!r}, row {row}: bad value {column.reshape(-1)[row].item()!r}; expected {expected}")


def _discrete_indices(factor: Factor, data: torch.Tensor) -> torch.Tensor:
    """Vectorised level indices of a numeric tensor for a discrete factor (bools only for binary factors)."""
    if data.dtype == torch.bool:
        if factor.kind != "binary":
            raise ValueError(f"factor {factor.name!r} is categorical; bools are only for binary factors")
        return data.long()
    if data.is_floating_point():
        bad = ~(torch.isfinite(data) & (data == data.round()))
        if bool(bad.any()):
            raise _first_bad(factor.name, bad, data, factor._allowed())
    indices = data.long()
    bad = (indices < 0) | (indices >= len(factor.levels))
    if bool(bad.any()):
        raise _first_bad(factor.name, bad, data, factor._allowed())
    return indices


def _discrete_indices_of_objects(factor: Factor, column: Any) -> torch.Tensor:
    """Level indices of a column of names or mixed values, calling `to_index` once per distinct value."""
    if isinstance(column, np.ndarray):
        try:
            distinct, inverse = np.unique(column, return_inverse=True)
        except TypeError:
            column = column.tolist()
        else:
            codes = []
            for value in distinct.tolist():
                try:
                    codes.append(factor.to_index(value))
                except ValueError:
                    row = int(np.flatnonzero(column == np.asarray(value, dtype=column.dtype))[0])
                    raise ValueError(
                        f"factor {factor.name!r}, row {row}: bad value {value!r}; expected {factor._allowed()}"
                    ) from None
            return torch.from_numpy(np.asarray(codes, dtype=np.int64)[inverse.reshape(-1)])
    values = [_scalar(v) for v in column]
    mapping: dict[Any, int] = {}
    for row, value in enumerate(values):
        if value not in mapping:
            try:
                mapping[value] = factor.to_index(value)
            except (ValueError, TypeError):
                raise ValueError(
                    f"factor {factor.name!r}, row {row}: bad value {value!r}; expected {factor._allowed()}"
                ) from None
    return torch.tensor([mapping[v] for v in values], dtype=torch.long)


def _convert_column(factor: Factor, column: Any) -> torch.Tensor:
    data = _numeric(column)
    if factor.levels is not None:
        if data is not None:
            return _discrete_indices(factor, data)
        return _discrete_indices_of_objects(factor, column)
    if data is None or data.dtype == torch.bool:
        values = column.tolist() if isinstance(column, np.ndarray | torch.Tensor) else list(column)
        for row, value in enumerate(values):
            value = _scalar(value)
            if not _is_number(value):
                raise ValueError(f"factor {factor.name!r}, row {row}: bad value {value!r}; expected a number")
        data = torch.tensor([float(_scalar(v)) for v in values], dtype=torch.float64)
    wide = data.double() if data.dtype != torch.float64 else data
    bad = ~torch.isfinite(wide)
    if factor.low is not None or factor.high is not None:
        tolerance = _RANGE_TOLERANCE * (factor.high - factor.low) if factor.has_range else 0.0
        if factor.low is not None:
            bad |= wide < factor.low - tolerance
        if factor.high is not None:
            bad |= wide > factor.high + tolerance
    if bool(bad.any()):
        raise _first_bad(factor.name, bad, wide, factor._allowed())
    return data.to(torch.float32)
