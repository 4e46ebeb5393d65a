"""The logic of the browser demo (`cf-diffusion serve`) as plain functions, testable without a browser or gradio.

Errors a user can cause (an upload that is not an image, an image of the wrong size, bad factor text) raise a
ValueError whose message is meant for the page; `cf_diffusion.web_app` shows it there.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cf_diffusion.editing_defaults import DEFAULT_NUM_INFERENCE_STEPS
from cf_diffusion.factors import FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.identification import identification_rows, support_note
from cf_diffusion.images import uint8_to_unit, unit_to_uint8
from cf_diffusion.models import SHIPPED_MODELS, load_examples, load_pipeline

KEEP = "keep"
"""The dropdown choice that leaves a discrete factor as it is."""
ROLE_COLORS = {"intervened": "#f4a259", "descendant": "#f9e07f"}
"""Fill of the causal graph's nodes an edit sets (intervened) or may change (their descendants)."""

Progress = Callable[..., Any]
"""Called as `progress(fraction, desc=text)` (gradio's `gr.Progress` is one)."""


@dataclass(frozen=True)
class FactorControl:
    """The page's control for one factor: a dropdown of `levels` (discrete) or a slider over [low, high]."""

    name: str
    levels: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None

    @property
    def is_slider(self) -> bool:
        return self.levels is None


@dataclass(frozen=True)
class EditView:
    """What the page shows of one edit.

    Attributes:
        image: The edit.
        mask: The preservation mask (white where the image may change) when the pipeline returns one, else None.
        graph: The causal graph with the intervened factors and their descendants highlighted.
        rows: The identification table (`cf_diffusion.identification.IDENTIFICATION_COLUMNS`).
        summary: The factual and counterfactual factors and the factors kept exactly.
    """

    image: Image.Image
    mask: Image.Image | None
    graph: Image.Image
    rows: list[tuple[str, ...]]
    summary: str


def model_choices(model: str) -> list[str]:
    """The models the page offers: the shipped ones, and `model` when it is a folder of its own."""
    return [*SHIPPED_MODELS, *([] if model in SHIPPED_MODELS or model == "default" else [model])]


@functools.cache
def pipeline(model: str):
    """The model's pipeline, loaded once per server."""
    return load_pipeline(model)


@functools.cache
def examples(model: str) -> list[dict]:
    """The model's example images (`load_examples`), read once per server."""
    return load_examples(model)


def factor_controls(schema: FactorSchema) -> list[FactorControl]:
    """One control per factor, in schema order: a dropdown for a discrete factor, a slider for a continuous one."""
    return [
        FactorControl(f.name, levels=tuple(f.levels))
        if f.is_discrete
        else FactorControl(f.name, low=float(f.low), high=float(f.high))
        for f in schema
    ]


def interventions(controls: list[FactorControl], choices: list[Any]) -> dict[str, Any]:
    """The interventions the controls set: a dropdown's level unless it is `KEEP`; for a slider, its value when its
    choice is `(True, value)` (its "do" box ticked), nothing for `(False, value)`."""
    chosen = {}
    for control, choice in zip(controls, choices, strict=True):
        if control.is_slider and choice[0]:
            chosen[control.name] = float(choice[1])
        elif not control.is_slider and choice != KEEP:
            chosen[control.name] = choice
    return chosen


def open_upload(path: str | Path, channels: int = 3) -> Image.Image:
    """The uploaded file at `path` as an image with `channels` (1 or 3) channels.

    Raises:
        ValueError: When the file is not an image PIL can read, or has so many pixels that PIL refuses it.
    """
    from cf_diffusion.reading import read_image

    try:
        return read_image(path, "RGB" if channels == 3 else "L")
    except Image.DecompressionBombError:
        raise ValueError(f"{Path(path).name!r} has too many pixels to edit here.") from None
    except OSError:
        raise ValueError(f"{Path(path).name!r} is not an image that can be read (PNG or JPEG, for example).") from None


def _pixels(pipe, image: Image.Image) -> torch.Tensor:
    """The image as the pipeline takes it, Tensor[1, C, H, W] in [-1, 1], checked for the model's channels and size.

    Raises:
        ValueError: On other channels or a size the model cannot edit (the pipeline's message).
    """
    pixels = pipe.image_processor.preprocess(uint8_to_unit(image)).to(torch.float32)
    pipe.check_inputs(image=pixels, batch_size=1)
    return pixels


def read_factors(pipe, image: Image.Image) -> dict[str, Any]:
    """The factors the pipeline's factor predictor reads off `image`, `{name: level | number}`.

    Raises:
        ValueError: On an image the model cannot edit, or a pipeline without a factor predictor.
    """
    pixels = _pixels(pipe, image)
    predictor = pipe.factor_predictor
    size = predictor.config.sample_size
    if tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
    decoded = pipe.schema.decode(predictor.predict(pixels.to(predictor.device, predictor.dtype)))
    return {name: column[0] for name, column in decoded.items()}


def parse_factors(schema: FactorSchema, text: str) -> dict[str, Any]:
    """The factual factors typed in the page (`name=value ...`, as `FactorSchema.format_row` writes them).

    Raises:
        ValueError: On bad text or a missing factor.
    """
    factors = schema.parse(text)
    missing = [name for name in schema.names if name not in factors]
    if missing:
        raise ValueError(f"Factual factors: {missing} missing; give every factor of {schema.names}.")
    return factors


def highlighted(graph: CausalGraph, intervened: list[str]) -> dict[str, str]:
    """`{node: role}` of the nodes an edit on `intervened` sets ("intervened") or may change ("descendant")."""
    roles = {node: "descendant" for node in graph.descendants(intervened)} if intervened else {}
    return {**roles, **{node: "intervened" for node in intervened}}


def draw_graph(graph: CausalGraph, intervened: list[str]) -> Image.Image:
    """The causal graph as an image, its intervened nodes and their descendants filled with `ROLE_COLORS`."""
    colors = {node: ROLE_COLORS[role] for node, role in highlighted(graph, intervened).items()}
    buffer = io.BytesIO()
    graph.draw(colors=colors).savefig(buffer, format="png", bbox_inches="tight")
    return Image.open(buffer).convert("RGB")


class _Steps:
    """Stands in for the pipeline's tqdm bar: reports each phase's progress (abduction, prediction, ...)."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done, self.description = progress, total, 0, "sampling"

    def set_description(self, description: str, refresh: bool = True) -> None:
        self.description = description

    def update(self, n: int = 1) -> None:
        self.done += n
        self.progress(self.done / self.total, desc=self.description)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def reporting_progress(pipe, progress: Progress | None) -> Iterator[None]:
    """While inside, the pipeline reports its steps to `progress` instead of its (disabled) tqdm bar."""
    if progress is None:
        yield
        return
    pipe.progress_bar = lambda iterable=None, total=None: _Steps(progress, total)
    try:
        yield
    finally:
        del pipe.progress_bar


def _to_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(unit_to_uint8(array).squeeze())


def run_edit(
    pipe,
    image: Image.Image,
    factual: dict[str, Any],
    chosen: dict[str, Any],
    steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    seed: int = 0,
    preserve: bool = False,
    progress: Progress | None = None,
) -> EditView:
    """Edits `image` (factual factors `factual`) under the interventions `chosen`, as `cf-diffusion edit` does.

    Args:
        preserve: Keep the input's pixels outside the region the intervention affects (`preserve="auto"`; the
            pipeline's default for images larger than the model's, which are then always preserved).

    Raises:
        ValueError: On no intervention, or an image or values the pipeline refuses.
    """
    if not chosen:
        raise ValueError("Choose at least one intervention: set a factor's control to a value.")
    _pixels(pipe, image)
    with reporting_progress(pipe, progress):
        result = pipe(
            image=image,
            factors=factual,
            interventions=chosen,
            num_inference_steps=int(steps),
            generator=torch.Generator().manual_seed(int(seed)),
            preserve="auto" if preserve else None,
            output_type="np",
        )
    schema = pipe.schema
    counterfactual = result.counterfactual_factors[0]
    entry = result.identification[0]
    mask = None if result.masks is None else _to_image(result.masks[0, 0].cpu().numpy())
    support = support_note(entry)
    summary = (
        f"factual: {schema.format_row(result.factual_factors[0])}  \n"
        f"counterfactual: {schema.format_row(counterfactual)}"
        + (f"  \nkept exactly: {', '.join(entry.kept)}" if entry.kept else "")
        + (f"  \n{support}" if support else "")
    )
    return EditView(
        _to_image(result.images[0]),
        mask,
        draw_graph(pipe.scm.graph, list(chosen)),
        identification_rows(entry, counterfactual),
        summary,
    )


def run_generate(
    pipe,
    text: str,
    num_images: int = 8,
    steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[tuple[Image.Image, str]]:
    """Samples factors from the causal model (under the interventions in `text`, e.g. "size=large"; none when
    empty), then images, as `cf-diffusion generate` does; each image with its factors as caption."""
    with reporting_progress(pipe, progress):
        result = pipe.generate(
            interventions=pipe.schema.parse(text) if text.strip() else None,
            num_images=int(num_images),
            num_inference_steps=int(steps),
            generator=torch.Generator().manual_seed(int(seed)),
            output_type="np",
        )
    return [
        (_to_image(image), pipe.schema.format_row(row))
        for image, row in zip(result.images, result.factors, strict=True)
    ]
