"""What a command needs against what the machine has: free disk, available memory, and a refusal that says both."""

import shutil
from pathlib import Path

import psutil


def format_bytes(size: float) -> str:
    """`size` in bytes as a short text with a decimal unit, e.g. "1.2 GB"."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def existing_parent(path: str | Path) -> Path:
    """`path` itself when it exists, else its nearest existing parent (where a folder to be made will live)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or will hold it: see `existing_parent`)."""
    return int(shutil.disk_usage(existing_parent(path)).free)


def check_fits(what: str, needs: dict[str, int], has: dict[str, int], advice: str) -> None:
    """Refuses `what` when it needs more of a resource than there is.

    Args:
        what: the work, e.g. "data make colored-bars --n 1000000000".
        needs: resource name ("disk", "memory") -> estimated bytes needed.
        has: resource name -> bytes available.
        advice: what to do instead, ending the message.

    Raises:
        ValueError: One line naming each resource that falls short, with both amounts.
    """
    short = [name for name in needs if needs[name] > has[name]]
    if short:
        amounts = "; ".join(
            f"about {format_bytes(needs[name])} of {name}, {format_bytes(has[name])} available" for name in short
        )
        raise ValueError(f"{what} needs {amounts}: {advice}")
