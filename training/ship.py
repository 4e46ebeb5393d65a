"""Packs a trained pipeline folder as a shipped model: float16 weights (half the size) plus example images.

`python -m cf_diffusion.training.ship --pipeline runs/colored_bars/pipeline --dataset colored-bars
--out cf_diffusion/assets/colored-bars` (or, for a model of a labelled folder, `--data FOLDER --holdout N` instead of
`--dataset`) writes the folder that `cf-diffusion demo` and `--model default` load
(with `dtype=torch.float32`, which casts the weights back up).
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cf_diffusion.data import LabeledImageDataset, get_dataset
from cf_diffusion.factors import FactorSchema
from cf_diffusion.images import signed_to_uint8


def halve_weights(folder: Path) -> None:
    """Rewrites every safetensors file under `folder` with float32 tensors stored as float16 (atomically), keeping
    each file's metadata (the observational counts carry their schema in it)."""
    for path in folder.rglob("*.safetensors"):
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {"format": "pt"}
        half = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(half, str(tmp), metadata=metadata)
        os.replace(tmp, path)


def write_examples(folder: Path, dataset_name: str, resolution: int, num_examples: int, seed: int) -> None:
    """Held-out example images of the procedural dataset with their factors (`examples/examples.jsonl`)."""
    dataset = get_dataset(dataset_name)
    sample = dataset.sample(num_examples, seed=seed, resolution=resolution)
    rows = dataset.schema.from_values({k: torch.as_tensor(v) for k, v in sample.factors.items()})
    examples = folder / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_examples):
        name = f"example_{i}.png"
        Image.fromarray(np.ascontiguousarray(sample.images[i])).save(examples / name)
        lines.append(json.dumps({"file_name": name, "factors": {k: rows[k][i] for k in rows}}))
    (examples / "examples.jsonl").write_text("\n".join(lines) + "\n")


def write_folder_examples(folder: Path, data: str | Path, holdout: int, num_examples: int, seed: int) -> None:
    """Example images from the last `holdout` rows of a labelled folder (never trained on), at their own size, with
    their labels (`examples/examples.jsonl`)."""
    config = json.loads((folder / "factor_predictor" / "config.json").read_text())
    schema = FactorSchema.from_dict(config["schema"])
    dataset = LabeledImageDataset(data, schema=schema, channels=config["in_channels"])
    if not 0 < holdout <= len(dataset):
        raise ValueError(f"holdout must be in [1, {len(dataset)}] (the folder's rows), got {holdout!r}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(np.arange(len(dataset) - holdout, len(dataset)), size=num_examples, replace=False))
    examples = folder / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        item = dataset[int(row)]
        pixels = signed_to_uint8(item["pixel_values"]).permute(1, 2, 0).numpy()
        name = f"example_{i}.png"
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(examples / name)
        factors = {k: item["row"][k] for k in schema.names}
        lines.append(json.dumps({"file_name": name, "factors": factors}))
    (examples / "examples.jsonl").write_text("\n".join(lines) + "\n")


def ship_model(
    pipeline: str | Path,
    dataset_name: str | None,
    out: str | Path,
    num_examples: int = 4,
    seed: int = 2024,
    data: str | Path | None = None,
    holdout: int = 0,
    example_size: int | None = None,
):
    """Copies `pipeline` to `out` with float16 weights and `num_examples` held-out example images: of the procedural
    dataset `dataset_name` (rendered at `example_size`, or at the model's size when None; a high-resolution model
    ships larger examples), or of the last `holdout` rows of the labelled folder `data`."""
    if (dataset_name is None) == (data is None):
        raise ValueError("give exactly one of dataset_name (a procedural dataset) or data (a labelled folder)")
    pipeline, out = Path(pipeline), Path(out)
    config = json.loads((pipeline / "factor_predictor" / "config.json").read_text())
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pipeline, tmp)
    halve_weights(tmp)
    if data is None:
        write_examples(tmp, dataset_name, example_size or config["sample_size"], num_examples, seed)
    else:
        write_folder_examples(tmp, data, holdout, num_examples, seed)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a procedural dataset: examples are fresh rows of it")
    source.add_argument("--data", help="a labelled folder: examples are rows of its last --holdout rows")
    parser.add_argument("--holdout", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-examples", type=int, default=4)
    parser.add_argument("--example-size", type=int, help="side of procedural examples (default: the model's size)")
    args = parser.parse_args()
    out = ship_model(
        args.pipeline,
        args.dataset,
        args.out,
        args.num_examples,
        data=args.data,
        holdout=args.holdout,
        example_size=args.example_size,
    )
    print(out)
