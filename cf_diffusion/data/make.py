"""`cf-diffusion data make`: writes a procedural dataset to disk in the Hugging Face imagefolder layout.

Layout of the output folder:

    images/00000000.png ...   the rendered rows (RGB PNG)
    metadata.jsonl            one JSON object per row: `file_name` and one column per factor (level names for
                              discrete factors, numbers for continuous ones); `datasets.load_dataset("imagefolder",
                              data_dir=...)` and `LabeledImageDataset` read it directly
    graph.yaml                the true causal graph (`CausalGraph.to_dict`)
    schema.json               the factor schema (`FactorSchema.to_dict`)
    exogenous.safetensors     the exogenous noise of every row (row i = image i), so the true counterfactual of any
                              row can be recomputed (`load_ground_truth`)
    dataset.json              name, number of rows, resolution and seed

Rows are drawn in the main process from one seeded generator and rendered in fixed chunks (whose boundaries
depend only on `n` and the resolution) by a pool of worker processes, so the files are byte-identical for a seed
whatever the number of workers.
"""

import json
import multiprocessing
import os
import struct
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from cf_diffusion.data.procedural import ProceduralDataset
from cf_diffusion.progress import progress_enabled

IMAGE_DIR = "images"
MAX_CHUNK_ROWS = 256
CHUNK_PIXELS = 1 << 21


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and `os.replace`, so readers never see a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def png_bytes(image: np.ndarray, level: int = 6) -> bytes:
    """Encodes an RGB image as PNG (8-bit, every row with the "Up" filter), much faster than PIL for small images.

    Args:
        image: uint8 array[H, W, 3].
        level: zlib compression level.

    Returns:
        The PNG file's bytes; identical for identical pixels.
    """
    height, width, channels = image.shape
    if image.dtype != np.uint8 or channels != 3:
        raise ValueError(f"png_bytes expects a uint8 array[H, W, 3], got {image.dtype} {image.shape}")
    rows = image.reshape(height, width * 3)
    up = np.empty((height, width * 3 + 1), dtype=np.uint8)
    up[:, 0] = 2  # PNG filter type "Up": each byte minus the byte above it, modulo 256
    up[:, 1:] = rows
    up[1:, 1:] -= rows[:-1]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(up.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def _file_names(n: int) -> list[str]:
    width = max(8, len(str(max(n - 1, 0))))
    return [f"{IMAGE_DIR}/{i:0{width}d}.png" for i in range(n)]


def _init_worker() -> None:
    torch.set_num_threads(1)


_PREPARED: dict[str, ProceduralDataset] = {}


def _render_chunk(
    name: str, factors: dict[str, np.ndarray], exogenous: dict[str, np.ndarray], resolution: int, paths: list[str]
) -> int:
    """Renders one chunk of rows and writes their PNG files; returns the number of rows written."""
    if name not in _PREPARED:
        from cf_diffusion.data import get_dataset

        _PREPARED[name] = get_dataset(name)
        _PREPARED[name].prepare()
    images = _PREPARED[name].render(factors, exogenous, resolution)
    for image, path in zip(images, paths, strict=True):
        _write_atomic(Path(path), png_bytes(image))
    return len(paths)


def _metadata_lines(dataset: ProceduralDataset, factors: dict[str, np.ndarray], file_names: list[str]) -> str:
    schema = dataset.schema
    columns = {}
    for factor in schema:
        values = np.asarray(factors[factor.name])
        if factor.is_discrete:
            columns[factor.name] = np.asarray(factor.levels, dtype=object)[values.astype(np.int64)].tolist()
        else:
            columns[factor.name] = values.astype(np.float64).tolist()
    lines = []
    for i, file_name in enumerate(file_names):
        row = {"file_name": file_name, **{name: column[i] for name, column in columns.items()}}
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def _row_sample(dataset: ProceduralDataset, n: int, resolution: int, seed: int) -> tuple[list[bytes], list[str], int]:
    """A few rows as `make_dataset` writes them: PNG bytes, metadata lines, and the bytes of one row's factors and
    noise as arrays. At most one render chunk is drawn."""
    m = max(1, min(n, 4, CHUNK_PIXELS // resolution**2))
    sample = dataset.sample(m, seed=seed, resolution=0)
    images = dataset.render(sample.factors, sample.exogenous, resolution)
    lines = _metadata_lines(dataset, sample.factors, _file_names(m)).splitlines()
    arrays = sum(np.asarray(v).itemsize for v in (*sample.factors.values(), *sample.exogenous.values()))
    return [png_bytes(image) for image in images], lines, arrays


def estimate_make(dataset: ProceduralDataset, n: int, resolution: int, out: str | Path, seed: int = 0) -> dict:
    """The disk and memory `make_dataset` needs for `n` rows, scaled up from a few rows rendered and encoded now.

    Disk: the rows' PNG files (each rounded up to the file system's block), their metadata lines and their
    exogenous noise. Memory: the process holds every row's factors and noise (twice while saving), its file name
    (twice), and its metadata as Python values, a line, part of one string and of its bytes.

    Returns:
        {"disk": bytes, "memory": bytes}.
    """
    from cf_diffusion.resources import existing_parent

    pngs, lines, arrays = _row_sample(dataset, n, resolution, seed)
    block = os.statvfs(existing_parent(out)).f_frsize if hasattr(os, "statvfs") else 1
    png = sum(-(-len(data) // block) * block for data in pngs) / len(pngs)
    line = sum(len(text) + 1 for text in lines) / len(lines)
    name = sys.getsizeof(str(Path(out).absolute() / IMAGE_DIR / f"{n - 1:08d}.png"))  # the longest, as _file_names
    values = sum(sys.getsizeof(value) for value in json.loads(lines[0]).values())
    disk = n * (png + line + arrays)
    memory = n * (2 * arrays + 2 * name + values + 3 * line + sys.getsizeof(""))
    return {"disk": int(disk), "memory": int(memory)}


def check_make_fits(dataset: ProceduralDataset, n: int, resolution: int, out: str | Path, seed: int = 0) -> None:
    """Refuses a `make_dataset` whose estimate (`estimate_make`) exceeds the free disk or the available memory.

    Raises:
        ValueError: One line with what it needs, what there is, and how many rows would fit.
    """
    from cf_diffusion.resources import available_memory, check_fits, free_disk

    needs = estimate_make(dataset, n, resolution, out, seed)
    has = {"disk": free_disk(out), "memory": available_memory()}
    fits = min(int(n * has[key] / needs[key]) for key in needs if needs[key])
    check_fits(
        f"data make {dataset.name} --n {n} --resolution {resolution}",
        needs,
        has,
        f"make fewer rows (about {fits} fit) or a lower --resolution",
    )


def make_dataset(
    name: str,
    n: int,
    resolution: int,
    out: str | Path,
    seed: int = 0,
    num_workers: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Generates `n` rows of a procedural dataset and writes them as an imagefolder (see the module docstring).

    Args:
        name: A procedural dataset (`cf_diffusion.data.available_datasets()`).
        n: Number of rows (images).
        resolution: Image side in pixels (8 to 4096; the datasets are designed for 32 to 2048).
        out: Output folder; created if missing, and must be empty if it exists.
        seed: Seed of the row generator; the same seed gives byte-identical files.
        num_workers: Rendering processes (default: all CPU cores available to this process); 1 renders in the
            calling process.
        show_progress: Show a tqdm progress bar over the rendered images.

    Returns:
        The output folder.

    Raises:
        ValueError: On an unknown dataset name, `n < 1`, a resolution out of range, `num_workers < 1`, an
            output folder that exists and is not empty, or more rows than the free disk or the available memory
            hold (`check_make_fits`, before anything is written).
    """
    from cf_diffusion.data import get_dataset

    dataset = get_dataset(name)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of rows, got {n!r}.")
    if not isinstance(resolution, int) or not 8 <= resolution <= 4096:
        raise ValueError(f"resolution must be an integer in [8, 4096] pixels, got {resolution!r}.")
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"Output folder {str(out)!r} exists and is not empty; give a new or empty folder.")
    check_make_fits(dataset, n, resolution, out, seed)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)

    sample = dataset.sample(n, seed=seed, resolution=0)
    dataset.prepare()  # once here, inherited by forked workers
    _PREPARED[name] = dataset
    file_names = _file_names(n)
    rows = max(1, min(MAX_CHUNK_ROWS, CHUNK_PIXELS // resolution**2))
    jobs = [
        (
            name,
            {k: np.asarray(v)[i : i + rows] for k, v in sample.factors.items()},
            {k: np.asarray(v)[i : i + rows] for k, v in sample.exogenous.items()},
            resolution,
            [str(out / f) for f in file_names[i : i + rows]],
        )
        for i in range(0, n, rows)
    ]
    shown = show_progress and progress_enabled(True)
    with tqdm(total=n, unit="img", desc=f"data make {name}", disable=not shown) as progress:
        if num_workers == 1 or len(jobs) == 1:
            for job in jobs:
                progress.update(_render_chunk(*job))
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            workers = min(num_workers, len(jobs))
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                for future in as_completed([pool.submit(_render_chunk, *job) for job in jobs]):
                    progress.update(future.result())

    exogenous = {k: np.ascontiguousarray(v) for k, v in sample.exogenous.items()}
    tmp = out / "exogenous.safetensors.tmp"
    save_file(exogenous, str(tmp))
    os.replace(tmp, out / "exogenous.safetensors")
    _write_atomic(out / "graph.yaml", yaml.safe_dump(dataset.graph.to_dict(), sort_keys=False).encode())
    _write_atomic(out / "schema.json", (json.dumps(dataset.schema.to_dict(), indent=2) + "\n").encode())
    info = {"dataset": name, "rows": n, "resolution": resolution, "seed": seed}
    _write_atomic(out / "dataset.json", (json.dumps(info, indent=2) + "\n").encode())
    _write_atomic(out / "metadata.jsonl", _metadata_lines(dataset, sample.factors, file_names).encode())
    return out


def load_ground_truth(folder: str | Path) -> tuple[ProceduralDataset, dict[str, np.ndarray]]:
    """The procedural dataset and exogenous noise behind a folder written by `make_dataset`.

    With them, `dataset.counterfactual({k: v[rows] for k, v in exogenous.items()}, interventions, resolution)`
    gives the true counterfactual (factors and images) of any rows of the folder.

    Args:
        folder: A folder written by `make_dataset`.

    Returns:
        (dataset, exogenous): exogenous maps noise name -> array[N], row i = the folder's image i.

    Raises:
        ValueError: If `dataset.json` or `exogenous.safetensors` is missing or does not match the other.
    """
    folder = Path(folder)
    info_path, noise_path = folder / "dataset.json", folder / "exogenous.safetensors"
    for path in (info_path, noise_path):
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is missing; expected a folder written by `cf-diffusion data make`.")
    from cf_diffusion.data import get_dataset

    info = json.loads(info_path.read_text())
    exogenous = load_file(str(noise_path))
    lengths = {len(v) for v in exogenous.values()}
    if lengths != {info["rows"]}:
        raise ValueError(f"{str(noise_path)!r} holds rows {sorted(lengths)}; dataset.json says {info['rows']}.")
    return get_dataset(info["dataset"]), exogenous
