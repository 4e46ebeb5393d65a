"""Reading image files as 8-bit pixels: 16-bit greyscale (PIL modes 'I;16' and 'I') is scaled to 8 bit, never
saturated as PIL's own `convert` does. File names read from data files stay inside their folder (`contained_path`)."""

import posixpath
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(image: Image.Image) -> Image.Image:
    """`image` with 16-bit greyscale scaled to 8-bit greyscale ('L', 65535 -> 255); other modes as they are."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64) / 257
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def read_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """The image file at `path`, fully read, in PIL `mode` (16-bit greyscale scaled as in `to_8bit`); `mode=None`
    keeps a greyscale image greyscale ('L') and reads any other as 'RGB'."""
    with Image.open(path) as image:
        image = to_8bit(image)
        if mode is None:
            mode = "L" if image.mode == "L" else "RGB"
        return image.convert(mode)


def contained_path(folder: str | Path, name: str, where: str) -> Path:
    """`folder / name` for a file name read from a data file (a metadata table, an examples list, CelebA's list).

    Args:
        folder: the folder the data file's names are relative to.
        name: the file name as the data file gives it.
        where: the data file and row, for the error message (e.g. "'data/metadata.jsonl' row 3").

    Raises:
        ValueError: When `name` is absolute or climbs out of `folder` (`../x.png`): a data file may only name
            files inside its own folder.
    """
    text = str(name).replace("\\", "/")  # a Windows-style name climbs out as well
    normal = posixpath.normpath(text)
    if posixpath.isabs(text) or PureWindowsPath(str(name)).drive or normal == ".." or normal.startswith("../"):
        raise ValueError(
            f"{where}: file name {str(name)!r} is absolute or climbs out of its folder {str(folder)!r}; expected a "
            "path relative to that folder, inside it"
        )
    return Path(folder) / name
