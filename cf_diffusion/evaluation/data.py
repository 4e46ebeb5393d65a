"""The rows an evaluation edits: held-out rows of a procedural dataset, or rows of a folder of labelled images.

Besides the rows themselves (images and factual factors), an evaluation needs a table of the training distribution
(for the bounds of the consistency queries), reference rows that are not edited (for CLD and realism) and, where the
data has it, the ground truth: the procedural dataset and each row's exogenous noise, from which the true
counterfactual image of every edit is rendered.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cf_diffusion.data import LabeledImageDataset, ProceduralDataset, available_datasets, get_dataset
from cf_diffusion.data.make import load_ground_truth
from cf_diffusion.factors import FactorSchema
from cf_diffusion.images import uint8_to_unit

HELD_OUT_SEED = 12345
REFERENCE_ROWS = 256


@dataclass
class EvaluationData:
    """The rows the harness edits, and what it knows about them.

    Attributes:
        source: What the rows came from (a dataset name or a folder).
        images: Float array[N, H, W, C] in [0, 1] at the pipeline's size.
        factors: Factor name -> factual values, array[N] (level indices, raw units).
        table: Factor name -> values of the training distribution (for the bounds): a large sample of a
            procedural dataset, or the whole folder.
        reference_images: Other images of the same distribution, float array[M, H, W, C] (CLD's reference set:
            `max(n, REFERENCE_ROWS)` further rows), or None.
        reference_factors: Their factors, or None.
        dataset: The procedural dataset behind the rows, or None without ground truth.
        exogenous: The rows' exogenous noise (the true counterfactual of row i is known from it), or None.
        table_exogenous: The exogenous noise of `table`'s rows (true counterfactual probabilities), or None.
        notes: What was assumed or left out while loading.
    """

    source: str
    images: np.ndarray
    factors: dict[str, np.ndarray]
    table: dict[str, np.ndarray]
    reference_images: np.ndarray | None = None
    reference_factors: dict[str, np.ndarray] | None = None
    dataset: ProceduralDataset | None = None
    exogenous: dict[str, np.ndarray] | None = None
    table_exogenous: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_ground_truth(self) -> bool:
        """True when the true counterfactual of every row can be computed."""
        return self.dataset is not None and self.exogenous is not None


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Images float array[N, H, W, 3] as the model's `channels`: the mean of the colours for a greyscale model."""
    return images.mean(axis=-1, keepdims=True) if channels == 1 and images.shape[-1] == 3 else images


def _check_factor_names(schema: FactorSchema, names: Sequence[str], where: str) -> None:
    if sorted(names) != sorted(schema.names):
        raise ValueError(f"{where} has factors {sorted(names)}; the model's factors are {sorted(schema.names)}")


def _procedural_data(pipe, dataset: ProceduralDataset, n: int, seed: int, table_rows: int) -> EvaluationData:
    _check_factor_names(pipe.schema, dataset.schema.names, f"dataset {dataset.name!r}")
    size, channels = pipe.image_size, pipe.image_channels
    rows = dataset.sample(n, seed=HELD_OUT_SEED + seed, resolution=size)
    reference = dataset.sample(max(n, REFERENCE_ROWS), seed=HELD_OUT_SEED + seed + 1, resolution=size)
    table = dataset.sample(table_rows, seed=HELD_OUT_SEED + seed + 2, resolution=0)
    return EvaluationData(
        source=dataset.name,
        images=to_channels(uint8_to_unit(rows.images), channels),
        factors={k: np.asarray(v) for k, v in rows.factors.items()},
        table={k: np.asarray(v) for k, v in table.factors.items()},
        reference_images=to_channels(uint8_to_unit(reference.images), channels),
        reference_factors={k: np.asarray(v) for k, v in reference.factors.items()},
        dataset=dataset,
        exogenous=rows.exogenous,
        table_exogenous=table.exogenous,
        notes=[
            f"{n} held-out rows of the procedural dataset {dataset.name!r} (seed {HELD_OUT_SEED + seed}); bounds "
            f"and true counterfactual probabilities from {table_rows} further rows of its structural equations"
        ],
    )


def _folder_data(pipe, folder: Path, n: int, seed: int, table_rows: int, holdout: int | None) -> EvaluationData:
    schema = pipe.schema
    loaded = LabeledImageDataset(folder, schema=schema, resolution=pipe.image_size, channels=pipe.image_channels)
    table = loaded.factor_table()
    count = len(loaded)
    if holdout is not None and not 0 < holdout <= count:
        raise ValueError(f"holdout must be in [1, {count}] (the folder's rows), got {holdout!r}")
    first = count - holdout if holdout else 0
    rng = np.random.default_rng(HELD_OUT_SEED + seed)
    order = first + rng.permutation(count - first)
    rows, others = np.sort(order[:n]), np.sort(order[n : n + max(n, REFERENCE_ROWS)])
    where = f"its last {holdout} rows (held out of training)" if holdout else "all its rows"
    notes = [f"{len(rows)} rows of the folder {str(folder)!r}, a seeded random choice among {where}"]
    if count - first < n:
        notes.append(f"only {count - first} rows to choose from, fewer than n={n}")

    def pick(indices: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pixels = torch.stack([loaded[int(i)]["pixel_values"] for i in indices])
        values = schema.to_values({k: [table[k][int(i)] for i in indices] for k in schema.names})
        images = ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return images, {k: v.numpy() for k, v in values.items()}

    images, factors = pick(rows)
    reference_images, reference_factors = pick(others) if len(others) else (None, None)
    if reference_images is None:
        notes.append("no rows left over for CLD's reference set")
    data = EvaluationData(
        source=str(folder),
        images=images,
        factors=factors,
        table={k: v.numpy() for k, v in schema.to_values(table).items()},
        reference_images=reference_images,
        reference_factors=reference_factors,
    )
    if (folder / "dataset.json").is_file() and (folder / "exogenous.safetensors").is_file():
        dataset, exogenous = load_ground_truth(folder)
        _check_factor_names(schema, dataset.schema.names, f"dataset {dataset.name!r} behind {str(folder)!r}")
        data.dataset = dataset
        data.exogenous = {k: np.asarray(v)[rows] for k, v in exogenous.items()}
        sample = dataset.sample(table_rows, seed=HELD_OUT_SEED + seed + 2, resolution=0)
        data.table = {k: np.asarray(v) for k, v in sample.factors.items()}
        data.table_exogenous = sample.exogenous
        notes.append(
            f"ground truth from the folder's exogenous noise ({dataset.name!r}); bounds and true counterfactual "
            f"probabilities from {table_rows} rows of its structural equations"
        )
    else:
        notes.append(
            "no ground truth in the folder (no dataset.json and exogenous.safetensors): ground-truth metrics and "
            "true counterfactual probabilities are skipped; bounds use the folder's own labels"
        )
    data.notes = notes
    return data


def load_evaluation_data(
    pipe, data: str | os.PathLike, n: int, seed: int = 0, table_rows: int = 50_000, holdout: int | None = None
):
    """The rows to evaluate on: `n` held-out rows of a procedural dataset, or `n` rows of a labelled folder.

    Args:
        pipe: The `CounterfactualDiffusionPipeline` (its schema, image size and channels).
        data: A procedural dataset name (`cf_diffusion.data.available_datasets()`), or a folder of labelled images
            (imagefolder layout; with ground truth when `cf-diffusion data make` wrote it).
        n: Rows to edit.
        seed: Seed of the row choice.
        table_rows: Rows drawn from a procedural dataset's structural equations for the bounds and the true
            counterfactual probabilities.
        holdout: For a folder: choose among its last `holdout` rows only (None: all of them).

    Returns:
        EvaluationData.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (rows to edit), got {n!r}")
    if not isinstance(table_rows, int) or table_rows < 1:
        raise ValueError(f"table_rows must be a positive integer, got {table_rows!r}")
    text = os.fspath(data)
    if text in available_datasets():
        if holdout is not None:
            raise ValueError("holdout applies to a folder of labelled images; procedural rows are always held out")
        return _procedural_data(pipe, get_dataset(text), n, seed, table_rows)
    folder = Path(text)
    if folder.is_dir():
        return _folder_data(pipe, folder, n, seed, table_rows, holdout)
    raise ValueError(
        f"data {text!r} is neither a procedural dataset ({available_datasets()}) nor a folder of labelled images"
    )
