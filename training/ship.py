"""Packs a trained pipeline folder as a shipped model: float16 weights (half the size) plus example images.

`python -m cf_diffusion.training.ship --pipeline runs/colored_bars/pipeline --dataset colored-bars
--out cf_diffusion/assets/colored-bars` writes the folder that `cf-diffusion demo` and `--model default` load
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
from safetensors.torch import load_file, save_file

from cf_diffusion.data import get_dataset


def halve_weights(folder: Path) -> None:
    """Rewrites every safetensors file under `folder` with float32 tensors stored as float16 (atomically)."""
    for path in folder.rglob("*.safetensors"):
        tensors = load_file(str(path))
        half = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(half, str(tmp), metadata={"format": "pt"})
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


def ship_model(pipeline: str | Path, dataset_name: str, out: str | Path, num_examples: int = 4, seed: int = 2024):
    """Copies `pipeline` to `out` with float16 weights and `num_examples` held-out example images."""
    pipeline, out = Path(pipeline), Path(out)
    config = json.loads((pipeline / "factor_predictor" / "config.json").read_text())
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pipeline, tmp)
    halve_weights(tmp)
    write_examples(tmp, dataset_name, config["sample_size"], num_examples, seed)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-examples", type=int, default=4)
    args = parser.parse_args()
    print(ship_model(args.pipeline, args.dataset, args.out, args.num_examples))
