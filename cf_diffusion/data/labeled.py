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

The formats are read in `cf_diffusion.data.sources` and the rows checked in `cf_diffusion.data.validation`.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cf_diffusion.data.sources import detect_format, read_source
from cf_diffusion.data.validation import LoadReport, choose_schema, validate
from cf_diffusion.factor import Factor
from cf_diffusion.factors import FactorSchema
from cf_diffusion.images import pad_image, uint8_to_signed


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
        format = format or detect_format(source)
        if crop not in ("center", "random", "none"):
            raise ValueError(f"crop must be 'center', 'random' or 'none', got {crop!r}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
        if check_images not in ("none", "verify", "decode"):
            raise ValueError(f"check_images must be 'none', 'verify' or 'decode', got {check_images!r}.")
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels or None, got {resolution!r}.")
        self._source = read_source(format, source, image_dir, split, image_column)
        self.resolution, self.crop, self.channels = resolution, crop, channels
        self.schema, names = choose_schema(self._source, schema, columns)
        self.schema, bad = validate(self._source, self.schema, names, overrides, check_images)
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
        return uint8_to_signed(torch.from_numpy(array).permute(2, 0, 1))

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
