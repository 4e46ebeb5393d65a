"""The models shipped with cf-diffusion, and loading a pipeline by name or folder."""

import json
from pathlib import Path

import torch

ASSETS = Path(__file__).parent / "assets"
SHIPPED_MODELS = {"colored-bars": ASSETS / "colored-bars", "morpho": ASSETS / "morpho"}
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

    pipe = CounterfactualDiffusionPipeline.from_pretrained(model_path(model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_examples(model: str | Path = "default") -> list[dict]:
    """The example images a model folder ships (`examples/examples.jsonl`): dicts with `image` (PIL) and `factors`."""
    from cf_diffusion.reading import read_image

    folder = model_path(model) / "examples"
    index = folder / "examples.jsonl"
    if not index.is_file():
        raise ValueError(f"Model {str(model)!r} ships no example images ({index} is missing).")
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return [{"image": read_image(folder / row["file_name"]), "factors": row["factors"]} for row in rows]
