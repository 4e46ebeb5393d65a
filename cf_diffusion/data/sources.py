"""Readers of labelled-image sources: each format parsed into one `Source` (records, image references, per-row
problems found while parsing), before validation.

The formats (`imagefolder` metadata, CelebA attribute lists, Morpho-MNIST IDX files with their CSV, Hugging Face
datasets) are described in `cf_diffusion.data.labeled`; `detect_format` tells them apart and `read_source` reads
one.
"""

import csv
import gzip
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cf_diffusion.factor import Factor
from cf_diffusion.reading import contained_path

CELEBA_ATTRIBUTE_FILES = ("list_attr_celeba.txt", "CelebAMask-HQ-attribute-anno.txt")
CELEBA_IMAGE_DIRS = ("img_align_celeba", "CelebA-HQ-img", "images", "img_celeba")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")

Problem = tuple[str, str]  # (kind, detail)


@dataclass
class Source:
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


def _read_imagefolder(path: Path) -> Source:
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
    return Source(
        str(path),
        [h for h in header if h != "file_name"],
        records,
        problems,
        [contained_path(path.parent, name, f"{path} row {row}") for row, name in enumerate(names)],
        names,
        Image.open,
        schema_file=schema_file if schema_file.is_file() else None,
    )


def _read_celeba(path: Path, image_dir: str | Path | None) -> Source:
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
    return Source(str(path), header, records, problems, refs, names, Image.open, defaults)


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


def _read_morphomnist(folder: Path, split: str | None) -> Source:
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
    return Source(
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


def _read_hf(dataset: Any, image_column: str) -> Source:
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
    return Source(
        "Hugging Face dataset",
        header,
        records,
        problems,
        list(range(len(dataset))),
        names,
        open_image,
        check_files=False,
    )


def detect_format(source: Any) -> str:
    """The format of `source`: "imagefolder", "celeba", "morphomnist" or "hf".

    Raises:
        ValueError: When `source` is none of these, listing what is expected.
    """
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


def read_source(
    format: str, source: str | Path | Any, image_dir: str | Path | None, split: str | None, image_column: str
) -> Source:
    """Reads `source` in `format` (see `LabeledImageDataset` for the arguments).

    Raises:
        ValueError: On an unknown format, or a source that cannot be read at all (no metadata, mismatched counts...).
    """
    readers = {
        "imagefolder": lambda: _read_imagefolder(Path(source)),
        "celeba": lambda: _read_celeba(Path(source), image_dir),
        "morphomnist": lambda: _read_morphomnist(Path(source), split),
        "hf": lambda: _read_hf(source, image_column),
    }
    if format not in readers:
        raise ValueError(f"unknown format {format!r}; expected one of {list(readers)}.")
    return readers[format]()
