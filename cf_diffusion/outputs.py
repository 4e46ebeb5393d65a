"""Where the command line writes: every output path is checked before any diffusion runs, an existing file is
replaced only with `--overwrite`, and images are written atomically (a temporary file renamed into place), so a
kill leaves either the previous file or the complete new one."""

import os
from pathlib import Path

from PIL import Image

PNG = (".png",)


def image_extensions() -> tuple[str, ...]:
    """The file extensions PIL can write an image to."""
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE))


def check_writable_folder(folder: Path, what: str) -> None:
    """`folder` must exist, be a folder and be writable.

    Raises:
        ValueError: Naming `what` (the flag and path that need the folder).
    """
    if not folder.exists():
        raise ValueError(f"{what}: its folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{what}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: the folder {str(folder)!r} is not writable")


def check_output_file(path: str | Path, flag: str, overwrite: bool, extensions: tuple[str, ...] = PNG) -> Path:
    """Checks that the file `path` (given as `flag`) can be written: not a folder, a known extension, an existing
    writable folder, and no existing file unless `overwrite`.

    Raises:
        ValueError: Naming the flag, the path and what was expected.
    """
    path = Path(path)
    what = f"{flag} {str(path)!r}"
    if path.is_dir():
        raise ValueError(f"{what} is a folder; expected the path of a file to write")
    if path.suffix.lower() not in extensions:
        raise ValueError(f"{what} has an unknown extension; expected one of {', '.join(extensions)}")
    if path.exists() and not overwrite:
        raise ValueError(f"{what} exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, what)
    return path


def check_output_folder(path: str | Path, flag: str) -> Path:
    """Checks that the folder `path` (given as `flag`) is a folder, or can be created in a writable one.

    Raises:
        ValueError: Naming the flag, the path and what was expected.
    """
    path = Path(path)
    what = f"{flag} {str(path)!r}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} is a file; expected a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    check_writable_folder(existing, what)
    return path


def is_complete_image(path: Path) -> bool:
    """Whether `path` is an image file that reads to its end (not missing, empty or cut short)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def write_image(image: Image.Image, path: str | Path) -> Path:
    """Writes `image` to `path` atomically, in the format of its extension."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
    os.replace(tmp, path)
    return path
