"""Training data: images and their factor table, from a procedural dataset or a folder of labelled images."""

from dataclasses import dataclass

import numpy as np
import torch

from cf_diffusion.factors import FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.images import signed_to_uint8, uint8_to_signed


@dataclass
class TrainingData:
    """Everything a training stage reads.

    Attributes:
        images: uint8 Tensor[N, C, H, W].
        table: factor name -> Tensor[N] (discrete level indices, continuous raw units).
        schema: the factor schema (continuous ranges filled from the data).
        graph: the causal graph over the factors.
        num_observational: rows `[0, num_observational)` are observational; the rest were rendered under
            interventions (`data.interventional_fraction`). None: all rows are observational.
    """

    images: torch.Tensor
    table: dict[str, torch.Tensor]
    schema: FactorSchema
    graph: CausalGraph
    num_observational: int | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def observational_table(self) -> dict[str, torch.Tensor]:
        """The factor table of the observational rows: what the SCM's mechanisms are fitted on."""
        if self.num_observational is None:
            return self.table
        return {name: column[: self.num_observational] for name, column in self.table.items()}

    def pixel_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images of rows `indices` as float Tensor[B, C, H, W] in [-1, 1]."""
        return uint8_to_signed(self.images[indices])

    def factor_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Factors of rows `indices` in `FactorSchema.encode` format: Tensor[B, F]."""
        return self.schema.normalize({name: column[indices] for name, column in self.table.items()})


def shard_indices(num_rows: int, rank: int, world_size: int) -> torch.Tensor:
    """The rows a process trains on: a disjoint, interleaved shard of the data set."""
    return torch.arange(rank, num_rows, world_size)


def batch_indices(shard: torch.Tensor, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Rows of one step's batch, drawn from the shard by a generator seeded with (seed, step).

    Seeding by step makes the data order a pure function of the step counter, so a resumed run sees exactly the
    batches an uninterrupted one would have.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return shard[torch.randint(len(shard), (batch_size,), generator=generator)]


def brightness_batch(
    data: TrainingData, rows: torch.Tensor, jitter: float, seed: int, step: int, factor: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels (in [-1, 1]) and factors (`FactorSchema.encode` format) of rows `rows`, each image's brightness
    scaled by a factor s drawn from [1 - jitter, 1 + jitter], then clipped.

    With `factor`, a continuous factor measured in the units the pixels scale in (a median or mean of pixel values,
    as Morpho-MNIST's intensity), that factor's value is scaled by the same s, and s is narrowed so the value stays
    within the factor's training range: the pair is a new (image, factors) row of the image's own mechanism, one
    the observational rows may never show (a dim thick stroke). Without it the factors are the rows' own. The draws
    are a function of (seed, step), so a resumed run sees the batches an uninterrupted one would have.
    """
    values = {name: column[rows] for name, column in data.table.items()}
    pixels = data.pixel_batch(rows)
    if not jitter:
        return pixels, data.schema.normalize(values)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    draws = torch.rand(len(rows), generator=generator)
    low, high = torch.full((len(rows),), 1.0 - jitter), torch.full((len(rows),), 1.0 + jitter)
    if factor is not None:
        value = values[factor].double()
        least, most = data.schema[factor].low, data.schema[factor].high
        positive = value > 0
        low = torch.where(positive, torch.maximum(low.double(), least / value), low.double()).float()
        high = torch.where(positive, torch.minimum(high.double(), most / value), high.double()).float()
    scale = low + draws * (high - low)
    if factor is not None:
        values[factor] = values[factor] * scale
    pixels = ((pixels + 1) * scale[:, None, None, None] - 1).clamp(-1, 1)
    return pixels, data.schema.normalize(values)


def stage_batch(
    config: dict, section: str, data: TrainingData, rows: torch.Tensor, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`brightness_batch` with the recipe's jitter for the stage section `section` and its `data.brightness_factor`."""
    jitter, factor = config[section]["brightness_jitter"], config["data"]["brightness_factor"]
    return brightness_batch(data, rows, jitter, seed, step, factor)


def check_brightness_factor(config: dict, schema: FactorSchema) -> None:
    """`data.brightness_factor` must be None or one of the data's continuous factors (checked before training)."""
    name = config["data"]["brightness_factor"]
    if name is None:
        return
    continuous = [f.name for f in schema if f.kind == "continuous"]
    if name not in continuous:
        raise ValueError(
            f"Config 'data.brightness_factor' must be one of the data's continuous factors {continuous} (the one "
            f"that scales with the pixels' brightness), got {name!r}."
        )


def load_training_data(config: dict) -> TrainingData:
    """Builds the training data described by a recipe's `data` section (see training/config.py)."""
    data = config["data"]
    if data["dataset"] is not None:
        from cf_diffusion.data import get_dataset

        dataset = get_dataset(data["dataset"])
        num_interventional = round(data["interventional_fraction"] * data["num_images"])
        num_observational = data["num_images"] - num_interventional
        sample = dataset.sample(num_observational, seed=config["seed"], resolution=data["resolution"])
        schema = dataset.schema
        graph = dataset.graph
        factors, images = sample.factors, sample.images
        if num_interventional:
            rendered = _interventional_sample(
                dataset, sample.factors, num_interventional, config["seed"], data["resolution"]
            )
            factors = {name: np.concatenate([factors[name], rendered.factors[name]]) for name in factors}
            images = np.concatenate([images, rendered.images])
        table = schema.to_values(factors)
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    else:
        from cf_diffusion.data import LabeledImageDataset

        folder = LabeledImageDataset(
            data["path"],
            format=data["format"],
            resolution=data["resolution"],
            channels=data["channels"],
            columns=data["factors"],
            skip_bad=data["skip_bad"],
        )
        schema = folder.schema
        if data["graph"] is None:
            raise ValueError("Config 'data.graph' is required for a folder dataset (e.g. 'age -> hair; smile').")
        graph = CausalGraph.parse(data["graph"])
        _check_graph_matches(graph, schema, f"the folder {str(data['path'])!r}'s label columns")
        keep = len(folder) - data["holdout"]
        num_observational = None
        if not 0 < keep <= len(folder):
            raise ValueError(
                f"Config 'data.holdout' must be in [0, {len(folder)}) (the folder has {len(folder)} rows), "
                f"got {data['holdout']!r}."
            )
        table = schema.to_values({k: v[:keep] for k, v in folder.factor_table().items()})
        pixels = torch.stack([folder[i]["pixel_values"] for i in range(keep)])
        images = signed_to_uint8(pixels)
    _check_graph_matches(graph, schema, "the factors")
    return TrainingData(
        images=images,
        table=table,
        schema=schema.with_ranges(table),
        graph=graph,
        num_observational=num_observational,
    )


def _check_graph_matches(graph: CausalGraph, schema: FactorSchema, what: str) -> None:
    """The causal graph's nodes must be the data's factors, before any image is decoded or stage trained."""
    if set(graph.nodes) != set(schema.names):
        missing, extra = sorted(set(schema.names) - set(graph.nodes)), sorted(set(graph.nodes) - set(schema.names))
        raise ValueError(
            f"The graph's nodes {sorted(graph.nodes)} must be {what} {sorted(schema.names)} (not in the graph: "
            f"{missing}; not in the data: {extra}); choose columns with 'data.factors' or fix 'data.graph'."
        )


def _interventional_sample(dataset, observed: dict[str, np.ndarray], n: int, seed: int, resolution: int):
    """`n` rows rendered under do(every factor with parents = an independent draw from its observed marginal).

    The image's own mechanism, p(image | factors), is the same under any intervention on the factors, so these
    rows are valid training data for the image models; they fill the parts of factor space that the observational
    rows leave empty (a thin but bright digit), which counterfactual edits visit. Roots keep their own
    distribution, so all factors are independent in these rows.
    """
    rng = np.random.default_rng(seed + 1)
    num_observed = len(next(iter(observed.values())))
    interventions = {
        name: observed[name][rng.integers(num_observed, size=n)]
        for name in dataset.graph.nodes
        if dataset.graph.parents(name)
    }
    return dataset.sample(n, seed=seed + 1, resolution=resolution, interventions=interventions)
