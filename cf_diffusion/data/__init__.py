"""Datasets: procedural datasets with a known SCM (and true counterfactuals), and loaders for labelled images."""

from collections.abc import Callable

from cf_diffusion.data.colored_bars import ColoredBars
from cf_diffusion.data.labeled import LabeledImageDataset, LoadReport
from cf_diffusion.data.make import load_ground_truth, make_dataset
from cf_diffusion.data.measure import mean_stroke_thickness, median_foreground_intensity
from cf_diffusion.data.morpho import Morpho
from cf_diffusion.data.pendulum import Pendulum
from cf_diffusion.data.procedural import ProceduralDataset, ProceduralSample

_DATASETS: dict[str, Callable[[], ProceduralDataset]] = {
    "colored-bars": lambda: ColoredBars("backdoor"),
    "colored-bars-frontdoor": lambda: ColoredBars("frontdoor"),
    "morpho": Morpho,
    "pendulum": Pendulum,
}


def available_datasets() -> list[str]:
    """Names of the procedural datasets `get_dataset` knows."""
    return list(_DATASETS)


def get_dataset(name: str) -> ProceduralDataset:
    """The procedural dataset called `name` (one of `available_datasets()`).

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    if name not in _DATASETS:
        raise ValueError(f"Unknown procedural dataset {name!r}; expected one of {available_datasets()}.")
    return _DATASETS[name]()


__all__ = [
    "ColoredBars",
    "LabeledImageDataset",
    "LoadReport",
    "Morpho",
    "Pendulum",
    "ProceduralDataset",
    "ProceduralSample",
    "available_datasets",
    "get_dataset",
    "load_ground_truth",
    "make_dataset",
    "mean_stroke_thickness",
    "median_foreground_intensity",
]
