"""Label tables as factor columns: any accepted table as `{name: column}`, and one column as the value tensor of a
factor (or as the factor it suggests).

A column is a 1-D list, `np.ndarray` or `torch.Tensor`; numeric columns are converted without a Python loop, and
a bad value is reported with its factor, row and what the factor allows.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from cf_diffusion.factor import _RANGE_TOLERANCE, Factor, _is_number, _scalar

_MAX_INFERRED_CATEGORIES = 32


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
