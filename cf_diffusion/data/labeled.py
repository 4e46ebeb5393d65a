"""LabeledImageDataset: users' labelled images, in the formats the ecosystem uses, as a torch Dataset.

Supported sources (detected from `source`, or named by `format`):

- `"imagefolder"`: a folder with `metadata.jsonl` or `metadata.csv` (Hugging Face imagefolder: a `file_name`
  column relative to the metadata file, one column per factor), or the path of the metadata file itself.
  A `schema.json` beside the metadata (as `cf-diffusion data make` writes) is used as the schema by default.
- `"celeba"`: CelebA's `list_attr_celeba.txt` or CelebA-HQ's `CelebAMask-HQ-attribute-anno.txt` (a count line,
  a line of attribute names, then `file -1 1 ...`), with its image folder (`img_align_celeba`, `CelebA-HQ-img`,
  `images`, or `image_dir`). Attributes -1/1 become binary factors 0/1.
- `"morphomnist"`: a Morpho-MNIST folder: `[split-]images-idx3-ubyte[.gz]`, `[split-]labels-idx1-ubyte[.gz]` and
  `[split-]morpho.csv` (columns `index`, `thickness`, `intensity`, ...); the labels become the factor `digit`.
- `"hf"`: a Hugging Face `datasets.Dataset` with an image column and factor columns.

Bad data (a missing image file, a row with a missing or extra column, an unlabelled row, a corrupt or truncated
image, a label outside the schema) raises a ValueError naming the file and the row. With `skip_bad=True` such rows
are skipped instead, and every skipped row is listed in `dataset.report` (and a warning says how many).
"""

import csv
import gzip
import io
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.images import pad_image
from cf_diffusion.reading import contained_path

CELEBA_ATTRIBUTE_FILES = ("list_attr_celeba.txt", "CelebAMask-HQ-attribute-anno.txt")
CELEBA_IMAGE_DIRS = ("img_align_celeba", "CelebA-HQ-img", "images", "img_celeba")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
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


Problem = tuple[str, str]  # (kind, detail)


@dataclass
class _Source:
    """A parsed source before validation: one record (column -> value) and one image reference per row."""

    description: str
    header: list[str]
    records: list[dict[str, Any]]
    problems: list[Problem | None]
    refs: list[Any]
    names: list[str]
    opener: Callable[[Any], Image.Image]
    defaults: dict[str, Factor] = field(default_factory=dict)
    schema_file: Path | None = None
    check_files: bool = True


def _typed(text: str) -> Any:
    """A CSV cell as a Python value: None when empty, else int, float or the text."""
    text = text.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def _column_problem(keys: Sequence[str], header: Sequence[str]) -> Problem | None:
    missing = [k for k in header if k not in keys]
    if missing:
        return "missing column", f"missing column(s) {missing}"
    extra = [k for k in keys if k not in header]
    if extra:
        return "extra column", f"extra column(s) {extra}; expected {list(header)}"
    return None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, Any]], list[Problem | None]]:
    """A CSV table: (header, typed records, per-row missing/extra column problems); blank lines are ignored."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        records, problems = [], []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            records.append(dict(zip(header, (_typed(c) for c in cells), strict=False)))
            problem = None
            if len(cells) != len(header):
                kind = "missing column" if len(cells) < len(header) else "extra column"
                problem = kind, f"{len(cells)} values for the {len(header)} columns {header}"
            problems.append(problem)
    return header, records, problems


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]], list[Problem | None]]:
    """A JSON-lines table: (header = keys of the first object, records, per-row problems)."""
    header: list[str] | None = None
    records, problems = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record, problem = {}, ("missing column", f"not a JSON object ({error.msg})")
        else:
            problem = None if isinstance(record, dict) else ("missing column", "not a JSON object")
            record = record if isinstance(record, dict) else {}
        if problem is None:
            header = list(record) if header is None else header
            problem = _column_problem(list(record), header)
        records.append(record)
        problems.append(problem)
    return header or [], records, problems


def _read_imagefolder(path: Path) -> _Source:
    if path.is_dir():
        found = [path / f for f in METADATA_FILES if (path / f).is_file()]
        if not found:
            raise ValueError(f"{str(path)!r} has no {' or '.join(METADATA_FILES)}; expected an imagefolder.")
        if len(found) > 1:
            raise ValueError(f"{str(path)!r} has both {list(METADATA_FILES)}; pass the path of the one to use.")
        path = found[0]
    if path.name.endswith(".jsonl"):
        header, records, problems = _read_jsonl(path)
    elif path.name.endswith(".csv"):
        header, records, problems = _read_csv(path)
    else:
        raise ValueError(f"{str(path)!r} is not a metadata.jsonl or metadata.csv file.")
    if "file_name" not in header:
        raise ValueError(f"{str(path)!r} has no 'file_name' column; its columns are {header}.")
    names = [str(record.get("file_name")) for record in records]
    schema_file = path.parent / "schema.json"
    return _Source(
        str(path),
        [h for h in header if h != "file_name"],
        records,
        problems,
        [contained_path(path.parent, name, f"{path} row {row}") for row, name in enumerate(names)],
        names,
        Image.open,
        schema_file=schema_file if schema_file.is_file() else None,
    )


def _read_celeba(path: Path, image_dir: str | Path | None) -> _Source:
    if path.is_dir():
        found = [path / f for f in CELEBA_ATTRIBUTE_FILES if (path / f).is_file()]
        if not found:
            raise ValueError(f"{str(path)!r} has no {' or '.join(CELEBA_ATTRIBUTE_FILES)}.")
        path = found[0]
    if image_dir is None:
        candidates = [path.parent / d for d in CELEBA_IMAGE_DIRS if (path.parent / d).is_dir()]
        if not candidates:
            raise ValueError(f"no image folder ({', '.join(CELEBA_IMAGE_DIRS)}) beside {str(path)!r}; give image_dir.")
        image_dir = candidates[0]
    lines = [line.split() for line in path.read_text().splitlines()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(f"{str(path)!r}: expected a count line, a line of attribute names, then one line per image.")
    header, rows = lines[1], [cells for cells in lines[2:] if cells]
    if int(lines[0][0]) != len(rows):
        raise ValueError(f"{str(path)!r} announces {lines[0][0]} images but lists {len(rows)}: truncated or corrupt.")
    records, problems = [], []
    for cells in rows:
        values = [{"1": 1, "-1": 0}.get(text, text) for text in cells[1:]]
        records.append({"file_name": cells[0], **dict(zip(header, values, strict=False))})
        problem = None
        if len(values) != len(header):
            kind = "missing column" if len(values) < len(header) else "extra column"
            problem = kind, f"{len(values)} attribute values, expected {len(header)}"
        else:
            bad = {a: v for a, v in zip(header, values, strict=True) if isinstance(v, str)}
            if bad:
                problem = "bad label", f"attribute value(s) {bad}, expected -1 or 1"
        problems.append(problem)
    names = [cells[0] for cells in rows]
    defaults = {attribute: Factor.binary(attribute) for attribute in header}
    refs = [contained_path(image_dir, name, f"{path} row {row}") for row, name in enumerate(names)]
    return _Source(str(path), header, records, problems, refs, names, Image.open, defaults)


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes (optionally gzipped) as an array, checking the magic number and length."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError) as error:
        raise ValueError(f"{str(path)!r} cannot be decompressed ({error}): truncated or corrupt.") from None
    if len(data) < 4 + 4 * dims or data[:3] != b"\x00\x00\x08" or data[3] != dims:
        raise ValueError(f"{str(path)!r} is not an IDX file of unsigned bytes with {dims} dimension(s).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = data[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} holds {len(body)} data bytes but its header says {shape}: truncated.")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _split_file(folder: Path, stem: str, split: str | None) -> Path:
    prefix = f"{split}-" if split else ""
    for suffix in ("", ".gz"):
        if (folder / f"{prefix}{stem}{suffix}").is_file():
            return folder / f"{prefix}{stem}{suffix}"
    raise ValueError(f"{str(folder)!r} has no {prefix}{stem}[.gz]; expected a Morpho-MNIST folder.")


def _read_morphomnist(folder: Path, split: str | None) -> _Source:
    if split is None:
        splits = sorted({p.name.split("images-idx3-ubyte")[0].rstrip("-") for p in folder.glob("*images-idx3-ubyte*")})
        if len(splits) > 1:
            raise ValueError(f"{str(folder)!r} holds the splits {splits}; choose one with split=.")
        split = splits[0] if splits else None
    images_path = _split_file(folder, "images-idx3-ubyte", split)
    labels_path = _split_file(folder, "labels-idx1-ubyte", split)
    table_path = _split_file(folder, "morpho.csv", split)
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    header, records, problems = _read_csv(table_path)
    if not len(images) == len(labels) == len(records):
        raise ValueError(
            f"{str(folder)!r}: {images_path.name} has {len(images)} images, {labels_path.name} {len(labels)} labels "
            f"and {table_path.name} {len(records)} rows; expected one of each per image."
        )
    for row, record in enumerate(records):
        if problems[row] is None and "index" in record and record["index"] != row:
            problems[row] = "bad label", f"index is {record['index']!r}, expected {row}"
        record["digit"] = int(labels[row])
    return _Source(
        str(table_path),
        ["digit"] + [h for h in header if h != "index"],
        records,
        problems,
        list(range(len(images))),
        [f"{images_path.name}[{i}]" for i in range(len(images))],
        lambda i: Image.fromarray(images[i], mode="L"),
        {"digit": Factor.categorical("digit", range(10))},
        check_files=False,
    )


def _read_hf(dataset: Any, image_column: str) -> _Source:
    import datasets

    if image_column not in dataset.column_names:
        raise ValueError(
            f"Hugging Face dataset has no image column {image_column!r}; its columns are {dataset.column_names}."
        )
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(f"column {image_column!r} of the Hugging Face dataset is not an Image feature.")
    undecoded = dataset.cast_column(image_column, datasets.Image(decode=False))
    header = [c for c in dataset.column_names if c != image_column]
    columns = {c: dataset[c] for c in header}
    encoded = undecoded[image_column]
    records = [{c: columns[c][i] for c in header} for i in range(len(dataset))]
    problems: list[Problem | None] = [None if e else ("missing file", "the image is missing") for e in encoded]

    def open_image(i: int) -> Image.Image:
        entry = encoded[i]
        return Image.open(io.BytesIO(entry["bytes"])) if entry.get("bytes") else Image.open(entry["path"])

    names = [str((e or {}).get("path") or f"{image_column}[{i}]") for i, e in enumerate(encoded)]
    return _Source(
        "Hugging Face dataset",
        header,
        records,
        problems,
        list(range(len(dataset))),
        names,
        open_image,
        check_files=False,
    )


def _detect(source: Any) -> str:
    if hasattr(source, "column_names") and hasattr(source, "features"):
        return "hf"
    path = Path(source)
    if path.is_file():
        if path.name in CELEBA_ATTRIBUTE_FILES:
            return "celeba"
        if path.name in METADATA_FILES:
            return "imagefolder"
    elif path.is_dir():
        if any((path / f).is_file() for f in METADATA_FILES):
            return "imagefolder"
        if any((path / f).is_file() for f in CELEBA_ATTRIBUTE_FILES):
            return "celeba"
        if any(path.glob("*images-idx3-ubyte*")):
            return "morphomnist"
    raise ValueError(
        f"cannot tell the format of {str(source)!r}: expected an imagefolder (metadata.jsonl / metadata.csv), a "
        "CelebA attribute file or folder, a Morpho-MNIST folder (IDX + CSV) or a Hugging Face datasets.Dataset."
    )


class LabeledImageDataset(torch.utils.data.Dataset):
    """Labelled images as a torch Dataset of `dict(pixel_values, factors, row)`.

    Args:
        source: A folder or file (imagefolder, CelebA, Morpho-MNIST) or a Hugging Face `datasets.Dataset`.
        format: "imagefolder", "celeba", "morphomnist" or "hf"; detected from `source` when None.
        schema: The factor schema (a FactorSchema or its dict form); its names choose the factor columns. When
            None: an imagefolder's `schema.json` if there is one, else inferred with `FactorSchema.infer`.
        overrides: `{column: Factor or kind}` passed to `FactorSchema.infer` (ignored when a schema is given).
        columns: Factor columns to use (default: every label column); the other columns are not factors.
        resolution: Output side in pixels: the shorter side is resized to it (bicubic) and the image cropped to a
            square (`crop`); an image no larger than it is padded to it instead (`pad_image`: never upscaled, since
            upscaling thickens strokes); None keeps the image's size.
        crop: "center", "random" (a fresh crop per access) or "none" (resize to a square, changing the aspect).
        channels: 3 (RGB) or 1 (greyscale).
        skip_bad: Skip bad rows (listed in `.report`) instead of raising.
        check_images: How images are checked when loading: "none", "verify" (open every file and run PIL's
            integrity check: catches missing, non-image and truncated PNG files) or "decode" (decode every image:
            catches every corrupt file, slower). Images that fail later, when read, raise a ValueError.
        image_dir: CelebA's image folder (default: the known folder names beside the attribute file).
        split: Morpho-MNIST file prefix such as "t10k" or "train" (needed when a folder holds several).
        image_column: Image column of a Hugging Face dataset.

    Attributes:
        schema: The factor schema (continuous ranges filled from the data where unknown).
        report: LoadReport of kept and skipped rows.

    Raises:
        ValueError: On bad data (unless `skip_bad`), naming the source file, the row and the image file, or on a
            source that cannot be read at all (no metadata, unknown format, mismatched counts...).
    """

    def __init__(
        self,
        source: str | Path | Any,
        format: str | None = None,
        schema: FactorSchema | dict | None = None,
        overrides: dict[str, Factor | str] | None = None,
        columns: Sequence[str] | None = None,
        resolution: int | None = None,
        crop: str = "center",
        channels: int = 3,
        skip_bad: bool = False,
        check_images: str = "verify",
        image_dir: str | Path | None = None,
        split: str | None = None,
        image_column: str = "image",
    ):
        format = format or _detect(source)
        if crop not in ("center", "random", "none"):
            raise ValueError(f"crop must be 'center', 'random' or 'none', got {crop!r}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
        if check_images not in ("none", "verify", "decode"):
            raise ValueError(f"check_images must be 'none', 'verify' or 'decode', got {check_images!r}.")
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels or None, got {resolution!r}.")
        readers = {
            "imagefolder": lambda: _read_imagefolder(Path(source)),
            "celeba": lambda: _read_celeba(Path(source), image_dir),
            "morphomnist": lambda: _read_morphomnist(Path(source), split),
            "hf": lambda: _read_hf(source, image_column),
        }
        if format not in readers:
            raise ValueError(f"unknown format {format!r}; expected one of {list(readers)}.")
        self.resolution, self.crop, self.channels = resolution, crop, channels
        self._source = readers[format]()
        self._overrides = overrides
        self.schema, names = self._choose_schema(schema, overrides, columns)
        bad = self._validate(names, check_images)
        self.report = LoadReport(self._source.description, total=len(self._source.records), skipped=bad)
        if bad and not skip_bad:
            more = f" (and {len(bad) - 1} more bad row(s); pass skip_bad=True to skip them)" if len(bad) > 1 else ""
            raise ValueError(bad[0].message + more)
        skipped = {b.row for b in bad}
        self._rows = [i for i in range(len(self._source.records)) if i not in skipped]
        self.report.kept = len(self._rows)
        if not self._rows:
            raise ValueError(f"{self._source.description}: no usable rows ({self.report}).")
        if bad:
            warnings.warn(f"skipped bad rows: {self.report}", stacklevel=2)
        table = self.factor_table()
        self.schema = self.schema.with_ranges(table)
        self._factors = self.schema.encode(table)

    def _choose_schema(
        self, schema: FactorSchema | dict | None, overrides: dict | None, columns: Sequence[str] | None
    ) -> tuple[FactorSchema | None, list[str]]:
        source = self._source
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

    def _validate(self, names: list[str], check_images: str) -> list[BadRow]:
        """Finds bad rows; infers the schema from the well-formed rows when none was given."""
        source = self._source
        problems: dict[int, Problem] = {}
        for row, record in enumerate(source.records):
            problem = source.problems[row]
            if problem is None and source.check_files and not Path(source.refs[row]).is_file():
                problem = "missing file", f"image file {str(source.refs[row])!r} does not exist"
            if problem is None:
                unlabelled = [name for name in names if _is_missing(record.get(name))]
                if unlabelled:
                    problem = "unlabelled row", f"no value for {unlabelled}"
            if problem is not None:
                problems[row] = problem
        if self.schema is None:
            good = [record for row, record in enumerate(source.records) if row not in problems]
            if not good:
                raise ValueError(f"{source.description}: no well-formed, labelled rows to infer a schema from.")
            overrides = {**{k: v for k, v in source.defaults.items() if k in names}, **(self._overrides or {})}
            self.schema = FactorSchema.infer({n: [r[n] for r in good] for n in names}, overrides)
        for factor in self.schema:
            checked: dict[Any, str | None] = {}
            for row, record in enumerate(source.records):
                if row in problems:
                    continue
                value = record[factor.name]
                key = (type(value), value)
                if key not in checked:
                    try:
                        factor.to_index(value) if factor.is_discrete else factor.check_value(value)
                        checked[key] = None
                    except (ValueError, TypeError) as error:
                        checked[key] = str(error)
                if checked[key] is not None:
                    problems[row] = "bad label", checked[key]
        if check_images != "none":
            for row in range(len(source.records)):
                if row not in problems:
                    try:
                        self._check_image(row, check_images == "decode")
                    except ValueError as error:
                        problems[row] = "corrupt image", str(error)
        return [
            BadRow(row, source.names[row], kind, f"{source.description} row {row} ({source.names[row]}): {detail}")
            for row, (kind, detail) in sorted(problems.items())
        ]

    def _check_image(self, row: int, decode: bool) -> None:
        try:
            with self._source.opener(self._source.refs[row]) as image:
                image.load() if decode else image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"corrupt or truncated image ({type(error).__name__}: {error})") from None

    def __len__(self) -> int:
        return len(self._rows)

    def factor_table(self) -> dict[str, list]:
        """The kept rows' factor columns `{name: list}` as in the source (for `NeuralCausalModel.fit`); no image
        is decoded."""
        records = self._source.records
        return {name: [records[i][name] for i in self._rows] for name in self.schema.names}

    def _load_image(self, index: int) -> Image.Image:
        row = self._rows[index]
        try:
            with self._source.opener(self._source.refs[row]) as image:
                image.load()
                return image.convert("RGB" if self.channels == 3 else "L")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(
                f"{self._source.description} row {row} ({self._source.names[row]}): corrupt or truncated image "
                f"({type(error).__name__}: {error})"
            ) from None

    def _transform(self, image: Image.Image) -> torch.Tensor:
        """Resizes and crops as configured: Tensor[C, H, W] in [-1, 1]."""
        if self.resolution is not None and max(image.size) <= self.resolution:
            image = pad_image(image, self.resolution)
        elif self.resolution is not None:
            size = self.resolution
            if self.crop == "none":
                image = image.resize((size, size), Image.BICUBIC)
            else:
                width, height = image.size
                scale = size / min(width, height)
                new = (max(size, round(width * scale)), max(size, round(height * scale)))
                image = image.resize(new, Image.BICUBIC) if new != image.size else image
                if self.crop == "center":
                    left, top = (new[0] - size) // 2, (new[1] - size) // 2
                else:
                    left = int(torch.randint(0, new[0] - size + 1, ()))
                    top = int(torch.randint(0, new[1] - size + 1, ()))
                image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32)
        array = array[..., None] if array.ndim == 2 else array
        return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item `index`: `{"pixel_values": Tensor[C, H, W] in [-1, 1], "factors": Tensor[F] (schema.encode),
        "row": the source's row as a dict}`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} rows")
        index %= len(self)
        row = self._source.records[self._rows[index]]
        return {
            "pixel_values": self._transform(self._load_image(index)),
            "factors": self._factors[index],
            "row": dict(row),
        }
