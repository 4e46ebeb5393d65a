"""Factor: one typed generative factor, and the checks and conversions of its single values.

A discrete factor (binary or categorical) turns a value into a level index (`Factor.to_index`); a continuous one
checks a number against its range (`Factor.check_value`). Whole columns and tables are converted in
`cf_diffusion.factor_columns`, and the ordered collection of factors is `cf_diffusion.factors.FactorSchema`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

FactorKind = Literal["binary", "categorical", "continuous"]
_KINDS = ("binary", "categorical", "continuous")
_RANGE_TOLERANCE = 1e-5


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
