"""The models shipped with cf-diffusion, and loading a pipeline by name or folder."""

import json
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets"
SHIPPED_MODELS = {
    "colored-bars": ASSETS / "colored-bars",
    "morpho": ASSETS / "morpho",
    "morphomnist": ASSETS / "morphomnist",
    "pendulum": ASSETS / "pendulum",
}
DEFAULT_MODEL = "colored-bars"


def model_path(model: str | Path) -> Path:
    """Resolves "default", a shipped model's name, or a pipeline folder to a folder holding `model_index.json`."""
    name = DEFAULT_MODEL if str(model) == "default" else str(model)
    path = SHIPPED_MODELS.get(name, Path(name))
    if not (path / "model_index.json").is_file():
        if name in SHIPPED_MODELS:
            raise ValueError(f"The shipped model {name!r} is not installed (no {path / 'model_index.json'}).")
        raise ValueError(
            f"Model {str(model)!r} is neither 'default', a shipped model ({sorted(SHIPPED_MODELS)}) nor a pipeline "
            f"folder with a model_index.json."
        )
    return path


def load_pipeline(model: str | Path = "default", device: str | torch.device = "cpu"):
    """Loads a CounterfactualDiffusionPipeline in float32 (shipped weights are stored in float16 to stay small)."""
    from cf_diffusion.pipelines import CounterfactualDiffusionPipeline
    from cf_diffusion.progress import progress_enabled

    path = model_path(model)
    _check_components(path)
    try:
        pipe = CounterfactualDiffusionPipeline.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    except OSError as error:  # unreadable JSON or weights
        raise ValueError(f"Cannot load model {str(path)!r}: {str(error).strip().splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=not progress_enabled(False))  # the CLI's choice (cf_diffusion.progress)
    return pipe.to(device)


def _check_components(path: Path) -> None:
    """`path/model_index.json` must be valid JSON and each component it lists must have its folder, with safetensors
    weights where it has weights.

    Raises:
        ValueError: Naming the file or the missing folder.
    """
    index = path / "model_index.json"
    try:
        entries = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(index)!r} is not valid JSON: {error}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{str(index)!r} must hold a JSON object, got {type(entries).__name__}")
    listed = [name for name, entry in entries.items() if isinstance(entry, list) and entry and entry[0] is not None]
    missing = [name for name in listed if not (path / name).is_dir()]
    if missing:
        raise ValueError(f"Model {str(path)!r} lacks the folders {missing} that its model_index.json lists")
    _check_no_pickle_weights(path, listed)


def _check_no_pickle_weights(path: Path, components: list[str]) -> None:
    """Refuses a component whose weights are only pickle files (`.bin`, `.pt`, `.ckpt`): unpickling can run
    arbitrary code, so pipelines load safetensors only.

    Raises:
        ValueError: Naming the component folder and its pickle files.
    """
    for name in components:
        folder = path / name
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles and not any(p.suffix == ".safetensors" for p in folder.iterdir()):
            raise ValueError(
                f"Model component {str(folder)!r} holds its weights only as pickle files {pickles}, which "
                "cf-diffusion never loads (unpickling can run code); expected .safetensors weights (convert them with "
                "`safetensors.torch.save_file`)"
            )


def load_examples(model: str | Path = "default") -> list[dict]:
    """The example images a model folder ships (`examples/examples.jsonl`): dicts with `image` (PIL) and `factors`."""
    from cf_diffusion.reading import contained_path, read_image

    folder = model_path(model) / "examples"
    index = folder / "examples.jsonl"
    if not index.is_file():
        raise ValueError(f"Model {str(model)!r} ships no example images ({index} is missing).")
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    paths = [contained_path(folder, row["file_name"], f"{index} row {i}") for i, row in enumerate(rows)]
    images = [read_image(path, mode=None) for path in paths]  # greyscale examples stay one channel
    return [{"image": image, "factors": row["factors"]} for image, row in zip(images, rows, strict=True)]
