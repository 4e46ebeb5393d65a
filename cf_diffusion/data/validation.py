"""Validation of a parsed labelled source: the schema it is read with, and its bad rows.

A row is bad when parsing found a problem (a missing or extra column), its image file is missing, a factor column
has no value, a label lies outside the schema, or its image is corrupt. Each bad row becomes a `BadRow` whose
message names the source, the row and the image file; `LoadReport` lists what loading kept and skipped.
"""

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cf_diffusion.data.sources import Problem, Source
from cf_diffusion.factor import Factor
from cf_diffusion.factors import FactorSchema

BAD_KINDS = ("missing file", "missing column", "extra column", "unlabelled row", "bad label", "corrupt image")


@dataclass
class BadRow:
    """One row that could not be used.

    Attributes:
        row: Row number in the source (0-based, data rows only).
        file: The image file (or array element) of the row.
        kind: One of `BAD_KINDS`.
        message: What is wrong and what was expected.
    """

    row: int
    file: str
    kind: str
    message: str


@dataclass
class LoadReport:
    """What loading kept and what it skipped.

    Attributes:
        source: The file the rows came from.
        total: Rows in the source.
        kept: Rows in the dataset.
        skipped: The skipped rows, in row order.
    """

    source: str
    total: int = 0
    kept: int = 0
    skipped: list[BadRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of skipped rows per kind of problem."""
        return dict(Counter(bad.kind for bad in self.skipped))

    def __str__(self) -> str:
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.counts().items()) or "none"
        return f"{self.source}: kept {self.kept} of {self.total} rows; skipped {len(self.skipped)} ({kinds})"


def choose_schema(
    source: Source, schema: FactorSchema | dict | None, columns: Sequence[str] | None
) -> tuple[FactorSchema | None, list[str]]:
    """The schema given (or the folder's `schema.json`) cut to the chosen columns, and the factor columns.

    Returns:
        (schema, names): the schema, None when it is to be inferred from the rows, and the factor columns.

    Raises:
        ValueError: When a chosen column is not in the source, the columns do not match the schema's factors, or
            there are no label columns.
    """
    from_folder = schema is None and source.schema_file is not None
    if from_folder:
        schema = json.loads(source.schema_file.read_text())
    if isinstance(schema, dict):
        schema = FactorSchema.from_dict(schema)
    names = list(columns) if columns is not None else (schema.names if schema is not None else source.header)
    if from_folder and all(name in schema for name in names):
        schema = FactorSchema([schema[name] for name in names])  # the folder's schema, cut to the chosen columns
    missing = [name for name in names if name not in source.header]
    if missing:
        raise ValueError(f"{source.description}: missing column(s) {missing}; its columns are {source.header}.")
    if schema is not None and sorted(schema.names) != sorted(names):
        raise ValueError(f"columns {names} do not match the schema's factors {schema.names}.")
    if not names:
        raise ValueError(f"{source.description} has no label columns.")
    return schema, names


def validate(
    source: Source,
    schema: FactorSchema | None,
    names: list[str],
    overrides: dict[str, Factor | str] | None,
    check_images: str,
) -> tuple[FactorSchema, list[BadRow]]:
    """Finds the bad rows of `source`; infers the schema from the well-formed rows when `schema` is None.

    Each row keeps its first problem: from parsing, then its image file, its labels (factor by factor), its image.

    Args:
        source: The parsed source.
        schema: The schema, or None to infer it (`FactorSchema.infer` with the source's defaults and `overrides`).
        names: The factor columns.
        overrides: `{column: Factor or kind}` for `FactorSchema.infer`.
        check_images: "none", "verify" or "decode" (see `LabeledImageDataset`).

    Returns:
        (schema, bad rows in row order).

    Raises:
        ValueError: When a schema is to be inferred and no row is well-formed and labelled.
    """
    problems = _row_problems(source, names)
    if schema is None:
        schema = _infer_schema(source, names, overrides, problems)
    for factor in schema:
        problems.update(_label_problems(source, factor, problems))
    if check_images != "none":
        problems.update(_image_problems(source, problems, check_images == "decode"))
    return schema, [
        BadRow(row, source.names[row], kind, f"{source.description} row {row} ({source.names[row]}): {detail}")
        for row, (kind, detail) in sorted(problems.items())
    ]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def _file_problem(source: Source, row: int) -> Problem | None:
    """A missing image file (for sources whose images are files)."""
    if source.check_files and not Path(source.refs[row]).is_file():
        return "missing file", f"image file {str(source.refs[row])!r} does not exist"
    return None


def _unlabelled_problem(record: dict[str, Any], names: list[str]) -> Problem | None:
    """Factor columns without a value."""
    unlabelled = [name for name in names if _is_missing(record.get(name))]
    return ("unlabelled row", f"no value for {unlabelled}") if unlabelled else None


def _row_problems(source: Source, names: list[str]) -> dict[int, Problem]:
    """The first problem of each row before its labels are checked: from parsing, its image file, missing labels."""
    problems = {}
    for row, record in enumerate(source.records):
        problem = source.problems[row] or _file_problem(source, row) or _unlabelled_problem(record, names)
        if problem is not None:
            problems[row] = problem
    return problems


def _infer_schema(
    source: Source, names: list[str], overrides: dict[str, Factor | str] | None, problems: dict[int, Problem]
) -> FactorSchema:
    """`FactorSchema.infer` on the rows without problems, with the source's default factors and `overrides`."""
    good = [record for row, record in enumerate(source.records) if row not in problems]
    if not good:
        raise ValueError(f"{source.description}: no well-formed, labelled rows to infer a schema from.")
    overrides = {**{k: v for k, v in source.defaults.items() if k in names}, **(overrides or {})}
    return FactorSchema.infer({n: [r[n] for r in good] for n in names}, overrides)


def _label_error(factor: Factor, value: Any) -> str | None:
    """Why `value` is not a value of `factor`, or None when it is."""
    try:
        factor.to_index(value) if factor.is_discrete else factor.check_value(value)
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _label_problems(source: Source, factor: Factor, problems: dict[int, Problem]) -> dict[int, Problem]:
    """Bad labels of `factor` in the rows without problems, checking each distinct value once."""
    checked: dict[Any, str | None] = {}
    found = {}
    for row, record in enumerate(source.records):
        if row in problems:
            continue
        value = record[factor.name]
        key = (type(value), value)
        if key not in checked:
            checked[key] = _label_error(factor, value)
        if checked[key] is not None:
            found[row] = "bad label", checked[key]
    return found


def _check_image(source: Source, row: int, decode: bool) -> None:
    """Opens the image of `row` and verifies (or, with `decode`, decodes) it.

    Raises:
        ValueError: When the image is corrupt or truncated, naming PIL's error.
    """
    try:
        with source.opener(source.refs[row]) as image:
            image.load() if decode else image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"corrupt or truncated image ({type(error).__name__}: {error})") from None


def _image_problems(source: Source, problems: dict[int, Problem], decode: bool) -> dict[int, Problem]:
    """Corrupt images of the rows without problems (`_check_image`)."""
    found = {}
    for row in range(len(source.records)):
        if row not in problems:
            try:
                _check_image(source, row, decode)
            except ValueError as error:
                found[row] = "corrupt image", str(error)
    return found
