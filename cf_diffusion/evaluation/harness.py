"""The evaluation harness behind `cf-diffusion evaluate`: every metric, for our pipeline and the baselines, in one run.

For `n` held-out rows and one intervention per factor (every row's factor moved to another value, see
`shifted_values`), the counterfactual factors are drawn once from the pipeline's own causal model
(`pipe.scm.counterfactual`) and every method (`cf_diffusion.evaluation.methods`) is asked for the same ones, so the
methods differ only in how they make the image. The factor predictor reads every factor off every edited image.
Metrics (each can be chosen with `metrics`):

- `effectiveness`: readings against the targets, per factor (accuracy / macro F1, MAE for continuous factors);
  summaries: the intervened factor, the descendants (their SCM counterfactual values), the non-descendants
  (preservation rate: all non-descendants kept at once; continuous ones within `CONTINUOUS_TOLERANCE` standard
  deviations of the edited rows' factual values, as in `cf_diffusion.evaluation.edits`).
- `composition`: null edit repeated 1 and 10 times (`cycles`), MAE on [0, 255] and SSIM to the input.
- `reversibility`: edit, then edit back to the factual factors; distance to the input.
- `ground_truth` (procedural data only): L1 / MAE_255 / SSIM to the true counterfactual image, readings against
  the true counterfactual factors, and how often the SCM's descendant values equal the true ones.
- `consistency` (the seed paper's test): for each discrete intervened factor X and discrete descendant Y, and each
  factual pair (x, y), `P(Y_{X=x'} = y | X = x, Y = y)` estimated from the edited images of the rows with that
  evidence, against the sharp bounds of `counterfactual_bounds` (the model's graph, the training-distribution
  table) and, on procedural data, the true value from the dataset's own structural equations. An estimate is
  inside when `low - 2 se <= p <= high + 2 se`.
- `realism`: FID and KID between each method's edited images and real images of the same distribution that were
  not edited (the reference rows, as for `minimality`; an edit resembles its own factual image, and comparing the
  two sets with that pairing biases both figures down, KID below zero), on features of the Inception network when
  a local TorchScript file is given, else of the pipeline's factor-predictor trunk.
- `minimality`: CLD on the posteriors of the pipeline's VAE (an unconditional autoencoder trained on the data),
  with the intervened factor as the class; skipped for pixel-space pipelines.

Every metric that cannot run (no ground truth, no predictor, no VAE, a continuous factor...) is skipped with a
note in the results rather than failing. The results go to `out_dir` as `results.json`, `results.md` and
`results.png`, each written atomically.
"""

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from cf_diffusion.data import LabeledImageDataset, ProceduralDataset, available_datasets, get_dataset
from cf_diffusion.data.make import load_ground_truth
from cf_diffusion.evaluation.consistency import counterfactual_probability, preservation_rate
from cf_diffusion.evaluation.cvae import ConditionalVAE, load_cvae
from cf_diffusion.evaluation.effectiveness import effectiveness
from cf_diffusion.evaluation.image_distance import ground_truth_distance
from cf_diffusion.evaluation.methods import EditOptions, Method, apply_method
from cf_diffusion.evaluation.minimality import cld
from cf_diffusion.evaluation.realism import features, fid, kid, load_inception
from cf_diffusion.evaluation.soundness import composition, reversibility
from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.guidance import GuidanceScale, factor_weights
from cf_diffusion.scm.bounds import counterfactual_bounds

METRICS = ("effectiveness", "composition", "reversibility", "ground_truth", "consistency", "realism", "minimality")
METHODS = {
    "ours-ddim": ("ours", "ddim"),
    "ours-ddpm": ("ours", "ddpm"),
    "regenerate": ("regenerate", "ddim"),
    "no-scm": ("no-scm", "ddim"),
    "sdedit": ("sdedit", "ddim"),
    "cvae-scm": ("cvae-scm", "ddim"),
}
DEFAULT_METHODS = tuple(name for name in METHODS if name != "cvae-scm")  # cvae-scm needs a model of its own
HELD_OUT_SEED = 12345
CONTINUOUS_TOLERANCE = 0.5  # standard deviations of the edited rows' factual values within which a reading is kept
STANDARD_ERRORS = 2.0
RESULT_FILES = ("results.json", "results.md", "results.png")
REFERENCE_ROWS = 256


# ---------------------------------------------------------------------------------------------------------- data


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


def _rgb_to_channels(images: np.ndarray, channels: int) -> np.ndarray:
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
        images=_rgb_to_channels(rows.images.astype(np.float32) / 255.0, channels),
        factors={k: np.asarray(v) for k, v in rows.factors.items()},
        table={k: np.asarray(v) for k, v in table.factors.items()},
        reference_images=_rgb_to_channels(reference.images.astype(np.float32) / 255.0, channels),
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


# ---------------------------------------------------------------------------------------------------------- queries


def keep_tolerances(schema: FactorSchema, factual: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per continuous factor: how far a reading may lie from its target and still take it, `CONTINUOUS_TOLERANCE`
    standard deviations of the rows' factual values (raw units, array[N] each)."""
    return {
        f.name: CONTINUOUS_TOLERANCE * float(np.std(np.asarray(factual[f.name], dtype=np.float64)))
        for f in schema
        if not f.is_discrete
    }


def shifted_values(factor: Factor, values: np.ndarray) -> np.ndarray:
    """The harness's intervention value for each row: another value of the factor, drawn from the rows' own values.

    Discrete factors: the next level, `(x + 1) mod L` (the other level of a binary factor). Continuous factors: the
    value half the empirical distribution further on, `Q((F(x) + 1/2) mod 1)` with `F` the rows' empirical CDF
    (mid-ranks) and `Q` its quantile function, so that every target is a value the data takes (the literature's
    protocol draws interventions from the marginal, not from the edges of a range no row reaches) and lies about
    half the population away from the factual value. A single row (no distribution to draw from) is shifted by half
    the factor's range, wrapped into it.

    Args:
        factor: The intervened factor (a single continuous row needs a range).
        values: Factual values of all rows, array[N] (level indices or raw units).

    Returns:
        array[N] of intervention values, each different from the factual one (for distinct continuous values).
    """
    values = np.asarray(values)
    if factor.is_discrete:
        return (values.astype(np.int64) + 1) % factor.num_levels
    values = values.astype(np.float64)
    if len(values) > 1:
        ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
        return np.quantile(values, np.mod((ranks + 0.5) / len(values) + 0.5, 1.0), method="inverted_cdf")
    if not factor.has_range:
        raise ValueError(f"continuous factor {factor.name!r} needs a range [low, high] to shift a single row")
    width = factor.high - factor.low
    return factor.low + np.mod(values - factor.low + width / 2, width)


@dataclass(frozen=True)
class CounterfactualQuery:
    """`P(target_{do(intervention)} | evidence)` over discrete factors, all values as level indices.

    Attributes:
        intervention: `{X: x'}`.
        evidence: `{X: x, Y: y}`, the factual event.
        target: `{Y: y}`, the event in the world under `do(X = x')`.
    """

    intervention: dict[str, int]
    evidence: dict[str, int]
    target: dict[str, int]

    def label(self, schema: FactorSchema) -> str:
        """E.g. `P(bar_{size=large} = 1 | size=small, bar=1)`."""

        def text(event: Mapping[str, int]) -> str:
            return ", ".join(f"{name}={schema[name].level(value)}" for name, value in event.items())

        ((name, value),) = self.target.items()
        return f"P({name}_{{{text(self.intervention)}}} = {schema[name].level(value)} | {text(self.evidence)})"


def consistency_queries(graph: CausalGraph, schema: FactorSchema, intervened: str) -> list[CounterfactualQuery]:
    """The queries `P(Y_{X=x'} = y | X = x, Y = y)` for a discrete intervened X and each discrete descendant Y.

    One query per level pair (x, y), with `x' = shifted_values(X, x)`: the probability that Y keeps its factual
    value when X is moved, e.g. `P(bar_{size=large} = 1 | size=small, bar=1)` on `colored-bars`.

    Args:
        graph: The causal graph (the model's).
        schema: The factor schema.
        intervened: X.

    Returns:
        The queries, by descendant in topological order, then x, then y.
    """
    factor = schema[intervened]
    if not factor.is_discrete:
        return []
    order = graph.topological_order()
    descendants = sorted(graph.descendants(intervened), key=order.index)
    queries = []
    for name in descendants:
        if not schema[name].is_discrete:
            continue
        for x in range(factor.num_levels):
            x_new = int(shifted_values(factor, np.array([x]))[0])
            for y in range(schema[name].num_levels):
                queries.append(CounterfactualQuery({intervened: x_new}, {intervened: x, name: y}, {name: y}))
    return queries


def true_probability(
    dataset: ProceduralDataset, exogenous: Mapping[str, np.ndarray], query: CounterfactualQuery
) -> dict[str, float | int]:
    """Monte Carlo value of a query under a procedural dataset's own structural equations.

    Over rows `i` drawn from the dataset's exogenous distribution, with factual factors `v_i` and counterfactual
    factors `v_i'` (same noise, `do(X = x')`): `p = sum_i [e(v_i)] [t(v_i')] / sum_i [e(v_i)]`.

    Args:
        dataset: The procedural dataset.
        exogenous: Noise name -> array[N], a sample of its exogenous distribution.
        query: The query.

    Returns:
        `{"probability": p, "stderr": sqrt(p (1 - p) / n), "n": rows with the evidence}`.
    """
    n = len(next(iter(exogenous.values())))
    factual = dataset.counterfactual(dict(exogenous), {}, resolution=0).factors
    world = dataset.counterfactual(dict(exogenous), dict(query.intervention), resolution=0).factors
    keep = np.ones(n, dtype=bool)
    for name, value in query.evidence.items():
        keep &= np.asarray(factual[name]) == value
    hit = np.ones(n, dtype=bool)
    for name, value in query.target.items():
        hit &= np.asarray(world[name]) == value
    count = int(keep.sum())
    if count == 0:
        raise ValueError(f"no row of the sample has the evidence {query.evidence}; draw more rows")
    p = float(hit[keep].mean())
    return {"probability": p, "stderr": math.sqrt(p * (1 - p) / count), "n": count}


def judge_estimate(
    factual: Mapping[str, np.ndarray],
    read: Mapping[str, np.ndarray],
    query: CounterfactualQuery,
    low: float,
    high: float,
    standard_errors: float = STANDARD_ERRORS,
) -> dict[str, float | int | bool]:
    """Estimate a query from edited images and say whether it lies inside the bounds.

    `p = (1/n) sum_{i: e(factual_i)} [t(read_i)]` over the n rows whose factual factors satisfy the evidence, with
    binomial standard error `se = sqrt(p (1 - p) / n)` (`counterfactual_probability`); inside when the Wilson
    score interval of p at z = `standard_errors`,
    `(p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)`, meets [low, high]. Unlike `p -+ z se`,
    it does not shrink to a point when p is 0 or 1 (few rows, all edits alike).

    Args:
        factual: Factor name -> factual values of the edited rows, array[N].
        read: Factor name -> values read off their edited images, array[N].
        query: The query; every row with the evidence must have been edited under `query.intervention`.
        low: Lower bound.
        high: Upper bound.
        standard_errors: k, the tolerance in standard errors.

    Returns:
        `{"probability", "stderr", "n", "inside"}`.
    """
    estimate = counterfactual_probability(factual, read, query.evidence, query.target)
    p, n, z = estimate["probability"], estimate["n"], standard_errors
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    inside = center - half <= high and center + half >= low
    return {**estimate, "inside": bool(inside)}


# ---------------------------------------------------------------------------------------------------------- editing


class PredictorTrunk(nn.Module):
    """The factor predictor's convolutional trunk (pooled features) on images in [0, 1]: realism features.

    Args:
        predictor: A `FactorPredictor`.
    """

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`Tensor[B, C, H, W]` in [0, 1] -> `Tensor[B, D]` pooled trunk features."""
        return self.predictor.features(images.to(self.predictor.dtype) * 2 - 1)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2).clamp(0, 1)


def _to_array(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def _seeds(seed: int, stream: int, count: int) -> np.ndarray:
    """One seed per row for a stream of edits: every method sees the same noise for the same row and stream."""
    return np.random.SeedSequence([seed, stream]).generate_state(count, dtype=np.uint64)


def _rows(columns: Mapping[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {name: np.asarray(values)[rows] for name, values in columns.items()}


def edit_rows(
    pipe,
    method: Method,
    images: np.ndarray,
    factual: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    intervened: Sequence[str],
    options: EditOptions,
    seeds: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """`apply_method` in batches, with fresh per-row generators from `seeds`: float array[N, H, W, C]."""
    parts = []
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[rows]]
        parts.append(
            apply_method(
                pipe, method, images[rows], _rows(factual, rows), _rows(target, rows), intervened, options, generators
            )
        )
    return np.concatenate(parts).astype(np.float32)


def _editor(
    pipe,
    method: Method,
    factual: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    intervened: Sequence[str],
    options: EditOptions,
    seeds: np.ndarray,
    batch_size: int,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit function `Tensor[N, C, H, W] -> Tensor[N, C, H, W]` (for `composition` and `reversibility`) that runs
    `_edit` with fresh generators from the same `seeds` at every call."""

    def edit_fn(images: torch.Tensor) -> torch.Tensor:
        edited = edit_rows(pipe, method, _to_array(images), factual, target, intervened, options, seeds, batch_size)
        return _to_tensor(edited)

    return edit_fn


def _precomputed(edited: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit function of an edit already made of the harness's images: it returns `edited` (saves a rerun)."""

    def edit_fn(images: torch.Tensor) -> torch.Tensor:
        if images.shape != edited.shape:
            raise ValueError(f"the precomputed edit has shape {tuple(edited.shape)}, got {tuple(images.shape)}")
        return edited

    return edit_fn


@torch.no_grad()
def read_factors(pipe, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every factor read off images by the pipeline's factor predictor.

    Args:
        pipe: A pipeline with a `factor_predictor`.
        images: Float array[N, H, W, C] in [0, 1].
        batch_size: Images per forward pass.

    Returns:
        Factor name -> array[N]: level indices for discrete factors, raw units for continuous ones.
    """
    predictor = pipe.factor_predictor
    if predictor is None:
        raise ValueError("the pipeline has no factor_predictor to read factors off images")
    encoded = [
        predictor.predict(_to_tensor(images[s : s + batch_size]).to(predictor.device, predictor.dtype) * 2 - 1).cpu()
        for s in range(0, len(images), batch_size)
    ]
    return {name: values.numpy() for name, values in pipe.schema.denormalize(torch.cat(encoded)).items()}


def draw_targets(pipe, factual: Mapping[str, np.ndarray], name: str, values: np.ndarray, seed: int) -> dict:
    """The counterfactual factors under `do(name = values)` from the pipeline's SCM (one draw per row), with
    continuous values clipped into their factor's range (model samples may leave it; the pipeline refuses them)."""
    schema = pipe.schema
    drawn = pipe.scm.counterfactual(
        {k: np.asarray(v).tolist() for k, v in factual.items()},
        {name: np.asarray(values).tolist()},
        num_samples=1,
        generator=torch.Generator().manual_seed(seed),
    )
    targets = {}
    for factor in schema:
        column = drawn[factor.name][:, 0].cpu().numpy()
        targets[factor.name] = column if factor.is_discrete else np.clip(column, factor.low, factor.high)
    return targets


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _effect_summary(schema: FactorSchema, scores: Mapping[str, Mapping[str, float]], intervened: str, descendants):
    """Headline figures of one edit: intervened factor, descendants (accuracy or MAE)."""
    summary: dict[str, Any] = {"per_factor": dict(scores)}
    key = "accuracy" if schema[intervened].is_discrete else "mae"
    summary[f"intervened_{key}"] = scores[intervened][key]
    discrete = [scores[d]["accuracy"] for d in descendants if schema[d].is_discrete]
    continuous = [scores[d]["mae"] for d in descendants if not schema[d].is_discrete]
    if discrete:
        summary["descendants_accuracy"] = _mean(discrete)
    if continuous:
        summary["descendants_mae"] = _mean(continuous)
    return summary


def _posteriors(pipe, images: np.ndarray, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of the VAE posterior of each image, flattened: two `Tensor[N, D]`."""
    means, logvars = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = _to_tensor(images[start : start + batch_size]) * 2 - 1
            posterior = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
            means.append(posterior.mean.flatten(1).double().cpu())
            logvars.append(posterior.logvar.flatten(1).double().cpu())
    return torch.cat(means), torch.cat(logvars)


# ---------------------------------------------------------------------------------------------------------- evaluate


def _methods(names: Sequence[str], steps: Sequence[int], baseline_steps: int) -> list[Method]:
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(f"methods {list(names)}: expected a non-empty subset of {list(METHODS)}")
    methods = []
    for name in names:
        kind, abduction = METHODS[name]
        counts = steps if kind == "ours" else [baseline_steps]
        methods.extend(Method(kind, int(count), abduction) for count in counts)
    return methods


@dataclass
class _Example:
    """Panels of one intervention's example row for the figure: (title, uint8 image [H, W, 3], caption)."""

    edit: str
    panels: list[tuple[str, np.ndarray, str]] = field(default_factory=list)


def _uint8(image: np.ndarray) -> np.ndarray:
    image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _caption(schema: FactorSchema, row: Mapping[str, Any]) -> str:
    parts = schema.format_row(dict(row)).split(" ")
    return "\n".join(" ".join(parts[i : i + 2]) for i in range(0, len(parts), 2))


def evaluate(
    pipe,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    metrics: Sequence[str] = METRICS,
    n: int = 64,
    steps: Sequence[int] = (25,),
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    *,
    factors: Sequence[str] | None = None,
    baseline_steps: int | None = None,
    guidance_scale: GuidanceScale = None,
    guidance_reference: str = "factual",
    sdedit_strength: float = 0.6,
    cycles: Sequence[int] = (1, 10),
    inception: str | os.PathLike | None = None,
    table_rows: int = 50_000,
    batch_size: int = 32,
    show_progress: bool = True,
    holdout: int | None = None,
    cvae: str | os.PathLike | ConditionalVAE | None = None,
) -> dict[str, Any]:
    """Evaluates counterfactual editing with every metric, for our pipeline and the baselines (module docstring).

    Args:
        pipe: A `CounterfactualDiffusionPipeline`, or a model name or folder for `cf_diffusion.models.load_pipeline`.
        data: A procedural dataset name, or a folder of labelled images (with ground truth when written by
            `cf-diffusion data make`).
        out_dir: Folder for `results.json`, `results.md` and `results.png` (created if missing).
        metrics: Any subset of `METRICS`.
        n: Rows to edit (each is edited once per intervened factor and method).
        steps: Sampling steps of our pipeline; each value is one `ours-*` method.
        methods: Any subset of `METHODS`: `ours-ddim`, `ours-ddpm` (at every entry of `steps`) and the baselines
            `regenerate` (a), `no-scm` (b) and `sdedit` (c) (at `baseline_steps`), and `cvae-scm` (d, a conditional VAE
            under the pipeline's causal model; not a default, it needs `cvae`).
        seed: Seed of the rows, the counterfactual draws and every method's noise.
        factors: The factors to intervene on, one at a time (default: every factor of the model).
        baseline_steps: Sampling steps of the baselines (default: the largest entry of `steps`).
        guidance_scale: Guidance along the edit for every method (None: the model's `default_guidance_scale`,
            else per factor kind, `cf_diffusion.guidance`; for `regenerate`, classifier-free guidance, None: the
            pipeline's default). The report gives the weights in use per factor.
        guidance_reference: `"factual"` or `"null"`, as in the pipeline's `__call__`.
        sdedit_strength: Fraction of the schedule that SDEdit re-noises, in (0, 1].
        cycles: Null-edit repetitions reported by `composition`.
        inception: Local path of the FID Inception TorchScript file; None uses the factor predictor's trunk.
        table_rows: Rows drawn from a procedural dataset for the bounds and the true probabilities.
        batch_size: Images per pipeline call.
        show_progress: Show a progress bar over (intervention, method) pairs.
        holdout: Edit only the folder's last `holdout` rows (those a recipe's `data.holdout` kept out of training);
            None chooses among all its rows.
        cvae: The conditional VAE of `cvae-scm` (a folder written by `python -m cf_diffusion.training.cvae`, or the
            model); required when `methods` has `cvae-scm`, unused otherwise.

    Returns:
        The results, as written to `results.json`: `settings`, `data`, `notes`, `interventions` (per edit: its
        descendants and non-descendants, and how often the SCM's descendant values equal the true ones),
        `methods` (per method: `edits` -> per edit the chosen metrics; `composition`; `realism`) and
        `consistency` (per query: bounds, true value, and each method's estimate and whether it is inside).
    """
    from cf_diffusion.models import load_pipeline

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics {list(metrics)}: expected a non-empty subset of {list(METRICS)}")
    if not steps or any(not isinstance(s, int) or s < 1 for s in steps):
        raise ValueError(f"steps must be a non-empty list of positive integers, got {list(steps)}")
    if not 0.0 < sdedit_strength <= 1.0:
        raise ValueError(f"sdedit_strength must be in (0, 1], got {sdedit_strength}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(pipe, str | os.PathLike):
        pipe = load_pipeline(pipe)
    wanted = set(metrics)
    schema, graph = pipe.schema, pipe.scm.graph
    edited_factors = list(factors) if factors is not None else schema.names
    bad = [name for name in edited_factors if name not in schema]
    if bad or not edited_factors:
        raise ValueError(
            f"factors {edited_factors}: expected a non-empty subset of the model's factors {schema.names}"
        )
    method_list = _methods(methods, steps, baseline_steps or max(steps))
    cvae = load_cvae(cvae, pipe.schema).to(pipe.device) if "cvae-scm" in methods else None
    options = EditOptions(guidance_scale, guidance_reference, sdedit_strength, cvae=cvae)
    loaded = load_evaluation_data(pipe, data, n, seed, table_rows, holdout)
    notes = list(loaded.notes)
    has_reader = pipe.factor_predictor is not None
    if not has_reader and wanted & {"effectiveness", "consistency"}:
        notes.append("the pipeline has no factor_predictor: effectiveness and consistency are skipped")
    if "ground_truth" in wanted and not loaded.has_ground_truth:
        notes.append(
            "ground_truth skipped: the data has no ground truth (neither a procedural dataset nor a folder written "
            "by `cf-diffusion data make`)"
        )
    use_vae = "minimality" in wanted and pipe.vae is not None and loaded.reference_images is not None
    if "minimality" in wanted:
        notes.append(
            "minimality (CLD) on the posteriors of the pipeline's VAE, an unconditional autoencoder trained on the "
            "data; the class is the intervened factor"
            if use_vae
            else "minimality (CLD) skipped: it needs an unconditional autoencoder's posterior (the pipeline has no "
            "VAE) and reference images"
        )

    images = loaded.images
    results: dict[str, Any] = {
        "settings": {
            "model": str(pipe.name_or_path or type(pipe).__name__),
            "data": os.fspath(data),
            "metrics": [m for m in METRICS if m in wanted],
            "n": len(images),
            "steps": list(steps),
            "baseline_steps": baseline_steps or max(steps),
            "methods": [m.name for m in method_list],
            "seed": seed,
            "guidance_scale": factor_weights(pipe.schema, guidance_scale, pipe.config.default_guidance_scale),
            "guidance_reference": guidance_reference,
            "sdedit_strength": sdedit_strength,
            "cycles": sorted(set(cycles)),
            "image_size": pipe.image_size,
        },
        "data": {"source": loaded.source, "rows": len(images), "ground_truth": loaded.has_ground_truth},
        "notes": notes,
        "interventions": {},
        "methods": {m.name: {"edits": {}} for m in method_list},
        "consistency": [],
    }
    run = _Run(pipe, loaded, options, wanted, seed, batch_size, _to_tensor(images))
    if has_reader and "effectiveness" in wanted:
        results["reader_floor"] = effectiveness(read_factors(pipe, images, batch_size), loaded.factors, schema)
    if use_vae:
        run.factual_posterior = _posteriors(pipe, images, batch_size)
        run.reference_posterior = _posteriors(pipe, loaded.reference_images, batch_size)
    edited_by_method: dict[str, list[np.ndarray]] = {m.name: [] for m in method_list}
    reads: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    examples: list[_Example] = []
    progress = tqdm(
        total=len(method_list) * (len(edited_factors) + ("composition" in wanted)),
        desc="evaluate",
        disable=not show_progress,
    )
    for j, name in enumerate(edited_factors):
        edit = f"do({name})"
        values = shifted_values(schema[name], loaded.factors[name])
        targets = draw_targets(pipe, loaded.factors, name, values, seed + j)
        descendants = sorted(graph.descendants(name))
        info: dict[str, Any] = {
            "descendants": descendants,
            "non_descendants": [k for k in schema.names if k != name and k not in descendants],
        }
        truth = None
        if loaded.has_ground_truth:
            truth = loaded.dataset.counterfactual(loaded.exogenous, {name: values}, resolution=pipe.image_size)
            truth.images = _rgb_to_channels(truth.images.astype(np.float32) / 255.0, pipe.image_channels)
            if descendants:
                info["scm_vs_truth"] = effectiveness(
                    {d: targets[d] for d in descendants}, {d: truth.factors[d] for d in descendants}, schema
                )
        results["interventions"][edit] = info
        example = _Example(
            edit, [("factual", _uint8(images[0]), _caption(schema, _rows(loaded.factors, slice(0, 1))))]
        )
        if truth is not None:
            caption = _caption(schema, _rows(truth.factors, slice(0, 1)))
            example.panels.append(("true counterfactual", _uint8(truth.images[0]), caption))
        for method in method_list:
            entry, edited, read = _score_edit(run, method, j, name, targets, info, truth)
            results["methods"][method.name]["edits"][edit] = entry
            edited_by_method[method.name].append(edited)
            if read is not None:
                reads[(method.name, name)] = read
            caption = _caption(schema, _rows(read if read is not None else targets, slice(0, 1)))
            example.panels.append((method.name, _uint8(edited[0]), caption))
            progress.update()
        examples.append(example)

    if "composition" in wanted:
        for method in method_list:
            seeds = _seeds(seed, 0, len(images))
            null_edit = _editor(pipe, method, loaded.factors, loaded.factors, [], options, seeds, batch_size)
            composed = composition(null_edit, run.images, cycles)
            results["methods"][method.name]["composition"] = {str(k): v for k, v in composed.items()}
            progress.update()
    progress.close()
    if "realism" in wanted:
        results["realism_network"] = _realism(pipe, results, loaded, edited_by_method, inception, batch_size)
    if "consistency" in wanted and has_reader:
        results["consistency"] = _consistency(pipe, loaded, edited_factors, method_list, reads, notes)
    write_results(results, examples, out_dir)
    return results


@dataclass
class _Run:
    """What every edit of one `evaluate` call shares."""

    pipe: Any
    loaded: EvaluationData
    options: EditOptions
    wanted: set[str]
    seed: int
    batch_size: int
    images: torch.Tensor
    factual_posterior: tuple[torch.Tensor, torch.Tensor] | None = None
    reference_posterior: tuple[torch.Tensor, torch.Tensor] | None = None


def _score_edit(
    run: _Run,
    method: Method,
    index: int,
    name: str,
    targets: Mapping[str, np.ndarray],
    info: Mapping[str, Any],
    truth: Any,
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray] | None]:
    """Edits every row under `do(name)` with one method and scores the edits with the chosen metrics.

    Returns:
        (the metrics of the edit, the edited images float array[N, H, W, C], the factors read off them or None).
    """
    pipe, schema, loaded, wanted = run.pipe, run.pipe.schema, run.loaded, run.wanted
    factual = loaded.factors
    start = time.perf_counter()
    seeds = _seeds(run.seed, 1 + index, len(loaded.images))
    edited = edit_rows(pipe, method, loaded.images, factual, targets, [name], run.options, seeds, run.batch_size)
    edited_t = _to_tensor(edited)
    entry: dict[str, Any] = {}
    read = read_factors(pipe, edited, run.batch_size) if pipe.factor_predictor is not None else None
    others = info["non_descendants"]
    if read is not None and "effectiveness" in wanted:
        entry["effectiveness"] = _effect_summary(
            schema, effectiveness(read, targets, schema), name, info["descendants"]
        )
    if read is not None and others and wanted & {"effectiveness", "consistency"}:
        tolerance = {k: v for k, v in keep_tolerances(schema, factual).items() if k in others}
        entry["preservation"] = preservation_rate(factual, read, others, tolerance)
    if truth is not None and "ground_truth" in wanted:
        entry["ground_truth"] = ground_truth_distance(edited_t, _to_tensor(truth.images))
        if read is not None:
            scores = effectiveness(read, truth.factors, schema)
            entry["ground_truth"]["factors"] = scores
            entry["ground_truth"]["factor_accuracy"] = _mean(
                [s["accuracy"] for s in scores.values() if "accuracy" in s]
            )
    if "reversibility" in wanted:
        back_seeds = _seeds(run.seed, 1001 + index, len(loaded.images))
        backward = _editor(pipe, method, targets, factual, [name], run.options, back_seeds, run.batch_size)
        entry["reversibility"] = reversibility(_precomputed(edited_t), backward, run.images)
    if run.factual_posterior is not None:
        entry["minimality"] = _minimality(
            pipe,
            edited,
            schema[name],
            factual[name],
            targets[name],
            run.factual_posterior,
            run.reference_posterior,
            loaded.reference_factors[name],
            run.batch_size,
        )
    entry["seconds"] = time.perf_counter() - start
    return entry, edited, read


def _minimality(
    pipe,
    edited: np.ndarray,
    factor: Factor,
    factual_labels: np.ndarray,
    counterfactual_labels: np.ndarray,
    factual_posterior: tuple[torch.Tensor, torch.Tensor],
    reference_posterior: tuple[torch.Tensor, torch.Tensor],
    reference_labels: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """Mean CLD (and its parts) of one method's edits, with the intervened factor as the class."""
    if not factor.is_discrete:
        return {"skipped": f"CLD needs classes; {factor.name!r} is continuous"}
    missing = sorted(set(np.concatenate([factual_labels, counterfactual_labels]).tolist()) - set(reference_labels))
    if missing:
        levels = [factor.level(int(m)) for m in missing]
        return {"skipped": f"no reference image has {factor.name} in {levels}; every class needs references"}
    scores = cld(
        factual_posterior,
        _posteriors(pipe, edited, batch_size),
        reference_posterior,
        torch.as_tensor(reference_labels),
        torch.as_tensor(factual_labels),
        torch.as_tensor(counterfactual_labels),
    )
    return {key: value.mean().item() for key, value in scores.items()}


def _realism(
    pipe,
    results: dict[str, Any],
    loaded: EvaluationData,
    edited_by_method: Mapping[str, list[np.ndarray]],
    inception: str | os.PathLike | None,
    batch_size: int,
) -> str | None:
    """FID and KID of each method's edited images (all interventions pooled) against the reference rows: real
    images that were not edited (the factual images themselves, with a note, when there are none).

    Returns:
        The feature network's description, or None (with a note) when there is none.
    """
    if inception is not None:
        network: nn.Module = load_inception(inception, device=pipe.device)
        described = f"Inception (FID TorchScript network from {os.fspath(inception)!r})"
    elif pipe.factor_predictor is not None:
        network = PredictorTrunk(pipe.factor_predictor)
        described = (
            "the pipeline's factor_predictor trunk (pooled convolutional features), not Inception: FID/KID are "
            "comparable only between methods evaluated with this predictor"
        )
    else:
        results["notes"].append("realism skipped: no Inception path was given and the pipeline has no predictor")
        return None
    if loaded.reference_images is None:
        real = loaded.images
        results["notes"].append("realism against the edited rows' own factual images (no other rows): biased down")
    else:
        real = loaded.reference_images
        results["notes"].append(f"realism against {len(real)} real rows that were not edited (the reference rows)")
    reference = features(_to_tensor(real), network, batch_size)
    for name, parts in edited_by_method.items():
        edited = features(_to_tensor(np.concatenate(parts)), network, batch_size)
        results["methods"][name]["realism"] = {"fid": fid(edited, reference), **kid(edited, reference)}
    return described


def _consistency(
    pipe,
    loaded: EvaluationData,
    edited_factors: Sequence[str],
    methods: Sequence[Method],
    reads: Mapping[tuple[str, str], Mapping[str, np.ndarray]],
    notes: list[str],
) -> list[dict[str, Any]]:
    """Every consistency query of the edited factors: bounds, true value and each method's estimate."""
    schema, graph = pipe.schema, pipe.scm.graph
    entries = []
    for name in edited_factors:
        for query in consistency_queries(graph, schema, name):
            entry: dict[str, Any] = {
                "query": query.label(schema),
                "intervention": query.intervention,
                "evidence": query.evidence,
                "target": query.target,
            }
            entries.append(entry)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    bounds = counterfactual_bounds(
                        graph, loaded.table, query.target, query.intervention, query.evidence, schema=schema
                    )
                except ValueError as error:
                    entry["bounds_error"] = str(error)
                    continue
            entry.update(bounds=[bounds.low, bounds.high], sharp=bounds.sharp)
            entry["warnings"] = [str(w.message) for w in caught]
            if loaded.dataset is not None and loaded.table_exogenous is not None:
                entry["truth"] = true_probability(loaded.dataset, loaded.table_exogenous, query)
            rows = np.ones(len(loaded.images), dtype=bool)
            for key, value in query.evidence.items():
                rows &= np.asarray(loaded.factors[key]) == value
            entry["estimates"] = {
                method.name: judge_estimate(loaded.factors, reads[(method.name, name)], query, *bounds)
                for method in methods
                if rows.any()
            }
            if not rows.any():
                entry["note"] = "no edited row has the evidence"
    if any("bounds_error" in e for e in entries):
        notes.append("some consistency queries have no bounds (see their bounds_error)")
    return entries


# ---------------------------------------------------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _scores_text(scores: Mapping[str, Mapping[str, float]]) -> str:
    """`{factor: effectiveness scores}` as "a accuracy 0.9, b MAE 1.2"."""
    return ", ".join(
        f"{k} accuracy {_number(v['accuracy'])}" if "accuracy" in v else f"{k} MAE {_number(v['mae'])}"
        for k, v in scores.items()
    )


def _per_factor_table(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines: every factor's reading per edit and method (the Morpho-MNIST literature's table), below a
    row for the unedited images (the reader's own error, the floor of every figure)."""
    floor = results.get("reader_floor")
    if not floor:
        return []
    names = list(floor)
    kind = {k: "accuracy" if "accuracy" in floor[k] else "mae" for k in names}
    lines = [
        "",
        "Every factor read off the edited images against its target (accuracy, or MAE in the factor's units); the "
        "first row reads the unedited images against their own labels.",
        "",
        "| edit | method | " + " | ".join(f"{k} {'acc' if kind[k] == 'accuracy' else 'MAE'}" for k in names) + " |",
        "|---" * (len(names) + 2) + "|",
        "| none | factual images | " + " | ".join(_number(floor[k][kind[k]]) for k in names) + " |",
    ]
    for edit in results["interventions"]:
        for method, record in results["methods"].items():
            scores = record["edits"].get(edit, {}).get("effectiveness", {}).get("per_factor")
            if scores:
                lines.append(f"| {edit} | {method} | " + " | ".join(_number(scores[k][kind[k]]) for k in names) + " |")
    return lines


def format_results(results: Mapping[str, Any]) -> str:
    """The results as markdown: settings, per-edit table, composition, realism, consistency, notes."""
    settings = results["settings"]
    lines = [
        "# Counterfactual evaluation",
        "",
        f"Model `{settings['model']}`, data `{settings['data']}` ({results['data']['rows']} rows, ground truth: "
        f"{'yes' if results['data']['ground_truth'] else 'no'}), guidance "
        f"{settings['guidance_scale']} ({settings['guidance_reference']} reference), SDEdit "
        f"strength {settings['sdedit_strength']}, seed "
        f"{settings['seed']}.",
        "",
        "## Edits",
        "",
        "Readings of the edited images by the factor predictor against the counterfactual targets (accuracy, or MAE "
        "for continuous factors); *kept*: non-descendants all preserved; *truth*: against the true counterfactual.",
        "",
    ]
    columns = [
        (
            "intervened",
            lambda e: e.get("effectiveness", {}).get(
                "intervened_accuracy", e.get("effectiveness", {}).get("intervened_mae")
            ),
        ),
        (
            "descendants",
            lambda e: e.get("effectiveness", {}).get(
                "descendants_accuracy", e.get("effectiveness", {}).get("descendants_mae")
            ),
        ),
        ("kept", lambda e: e.get("preservation", {}).get("all")),
        ("truth L1", lambda e: e.get("ground_truth", {}).get("l1")),
        ("truth SSIM", lambda e: e.get("ground_truth", {}).get("ssim")),
        ("truth factors", lambda e: e.get("ground_truth", {}).get("factor_accuracy")),
        ("reverse MAE255", lambda e: e.get("reversibility", {}).get("mae_255")),
        ("CLD", lambda e: e.get("minimality", {}).get("cld")),
        ("seconds", lambda e: e.get("seconds")),
    ]
    edits = [(m, e, entry) for m, record in results["methods"].items() for e, entry in record["edits"].items()]
    used = [(title, get) for title, get in columns if any(get(entry) is not None for _, _, entry in edits)]
    lines.append("| edit | method | " + " | ".join(title for title, _ in used) + " |")
    lines.append("|---" * (len(used) + 2) + "|")
    for edit in results["interventions"]:
        for method, e, entry in edits:
            if e == edit:
                lines.append(f"| {edit} | {method} | " + " | ".join(_number(get(entry)) for _, get in used) + " |")
    lines += _per_factor_table(results)
    scm_vs_truth = {e: i["scm_vs_truth"] for e, i in results["interventions"].items() if "scm_vs_truth" in i}
    if scm_vs_truth:
        lines += [
            "",
            "The SCM's counterfactual descendants against the true ones (accuracy, or MAE): "
            + "; ".join(f"{e} {_scores_text(v)}" for e, v in scm_vs_truth.items()),
        ]
    compositions = {m: r["composition"] for m, r in results["methods"].items() if "composition" in r}
    if compositions:
        cycles = list(next(iter(compositions.values())))
        lines += ["", "## Composition (null edit repeated k times)", ""]
        lines.append("| method | " + " | ".join(f"MAE255 k={k} | SSIM k={k}" for k in cycles) + " |")
        lines.append("|---" * (2 * len(cycles) + 1) + "|")
        for method, values in compositions.items():
            cells = [f"{_number(values[k]['mae_255'])} | {_number(values[k]['ssim'])}" for k in cycles]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if results.get("realism_network"):
        lines += ["", "## Realism", "", f"Features: {results['realism_network']}.", ""]
        lines += ["| method | FID | KID | KID std |", "|---|---|---|---|"]
        for method, record in results["methods"].items():
            r = record.get("realism", {})
            lines.append(
                f"| {method} | {_number(r.get('fid'))} | {_number(r.get('kid'), 4)} | {_number(r.get('kid_std'), 4)} |"
            )
    if results["consistency"]:
        methods = list(results["methods"])
        lines += [
            "",
            "## Counterfactual consistency",
            "",
            f"Estimate from edited images ± one standard error (n rows); *in* when its Wilson score interval at "
            f"z = {STANDARD_ERRORS:g} meets the bounds.",
            "",
            "| query | bounds | truth | " + " | ".join(methods) + " |",
            "|---" * (len(methods) + 3) + "|",
        ]
        for entry in results["consistency"]:
            bounds = entry.get("bounds")
            bounds_text = f"[{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "n/a"
            truth = _number(entry["truth"]["probability"]) if "truth" in entry else ""
            cells = []
            for method in methods:
                e = entry.get("estimates", {}).get(method)
                cells.append(
                    f"{e['probability']:.2f} ± {e['stderr']:.2f} (n={e['n']}) {'in' if e['inside'] else '**out**'}"
                    if e
                    else ""
                )
            query = entry["query"].replace("|", "\\|")
            lines.append(f"| {query} | {bounds_text} | {truth} | " + " | ".join(cells) + " |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def _figure(results: Mapping[str, Any], examples: Sequence[_Example]) -> Figure:
    """Example edits (one row per intervention) above a bar chart of the consistency estimates and their bounds."""
    columns = max(len(e.panels) for e in examples)
    queries = [q for q in results["consistency"] if "bounds" in q]
    fig = Figure(figsize=(max(1.6 * columns, 8.0), 2.0 * len(examples) + 4.0), layout="constrained")
    grid = fig.add_gridspec(len(examples) + 1, columns, height_ratios=[1.0] * len(examples) + [1.6])
    for row, example in enumerate(examples):
        for col, (title, image, caption) in enumerate(example.panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(image, interpolation="nearest")
            ax.set_title(f"{example.edit}\n{title}" if col == 0 else title, fontsize=6)
            ax.set_xlabel(caption, fontsize=5)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[len(examples), :])
    if not queries:
        ax.text(0.5, 0.5, "no counterfactual query with bounds", ha="center", va="center")
        ax.set_axis_off()
        return fig
    methods = list(results["methods"])
    width = 0.8 / len(methods)
    for i, query in enumerate(queries):
        low, high = query["bounds"]
        ax.fill_between([i - 0.45, i + 0.45], low, high, color="0.8", label="sharp bounds" if i == 0 else None)
        if "truth" in query:
            ax.hlines(
                query["truth"]["probability"], i - 0.45, i + 0.45, colors="black", label="truth" if i == 0 else None
            )
    for k, method in enumerate(methods):
        xs, ps, errors = [], [], []
        for i, query in enumerate(queries):
            estimate = query.get("estimates", {}).get(method)
            if estimate:
                xs.append(i - 0.4 + (k + 0.5) * width)
                ps.append(estimate["probability"])
                errors.append(STANDARD_ERRORS * estimate["stderr"])
        ax.bar(xs, ps, width, yerr=errors, label=method, capsize=2)
    ax.set_xticks(range(len(queries)))
    ax.set_xticklabels([q["query"] for q in queries], rotation=20, ha="right", fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability")
    ax.set_title(f"Counterfactual probabilities from edited images (± {STANDARD_ERRORS:g} se) against their bounds")
    ax.legend(fontsize=6, ncols=min(len(methods) + 2, 6))
    return fig


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_results(results: Mapping[str, Any], examples: Sequence[_Example], out_dir: str | os.PathLike) -> dict:
    """Writes `results.json`, `results.md` and `results.png` into `out_dir`, each through a temporary file.

    Returns:
        File name -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in RESULT_FILES}
    text = json.dumps(_plain(results), indent=2) + "\n"
    _replace(paths["results.json"], lambda tmp: tmp.write_text(text))
    _replace(paths["results.md"], lambda tmp: tmp.write_text(format_results(results)))
    figure = _figure(results, examples)
    _replace(paths["results.png"], lambda tmp: figure.savefig(tmp, format="png", dpi=150))
    return paths
