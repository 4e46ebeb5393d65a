"""`cf-diffusion demo`: edit a model's built-in example images and draw factual | counterfactuals.

A model whose examples are larger than its own size (a high-resolution model such as `pendulum`) gets the
high-resolution panel instead: its first example edited once per cause (a demo factor with children in the graph,
whose edit moves what it causes), one row of input | edit | mask each."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cf_diffusion.editing_defaults import DEFAULT_NUM_INFERENCE_STEPS
from cf_diffusion.evaluation.interventions import shifted_values
from cf_diffusion.factors import Factor
from cf_diffusion.guidance import GuidanceScale
from cf_diffusion.identification import EditIdentification
from cf_diffusion.images import image_grid, save_image, unit_to_uint8
from cf_diffusion.models import load_examples, load_pipeline


def demo_factors(schema) -> list[Factor]:
    """Factors the demo intervenes on: every binary (two-level) and continuous factor."""
    return [f for f in schema if not f.is_discrete or f.num_levels == 2]


def _caption(row: dict, reference: dict | None, identification: EditIdentification | None = None) -> str:
    """Factor values, two per line; a value that differs from the factual one is marked with '*'. A factor the data
    do not identify comes last, on a line of its own, as `FactorIdentification.caption` writes it (`bar=0? p=0.58
    [0.52, 0.76]`: the model's probability of the value drawn and its sharp bounds)."""
    parts, unidentified = [], []
    for name, value in row.items():
        item = None if identification is None else identification.factors.get(name)
        if item is not None and not item.identified:
            unidentified.append(item.caption(value))
            continue
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        changed = reference is not None and reference[name] != value
        parts.append(f"{name}={text}{'*' if changed else ''}")
    return "\n".join([" ".join(parts[i : i + 2]) for i in range(0, len(parts), 2)] + unidentified)


def run_demo(
    model: str = "default",
    out: str | Path = "cf_demo.png",
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: GuidanceScale = None,
    seed: int = 0,
) -> tuple[Path, list[dict]]:
    """Edits every example image of `model` once per demo factor, writes the grid PNG and returns the factor table.

    Returns:
        (path of the PNG, rows of {"example", "edit", **factors}).
    """
    pipe = load_pipeline(model)
    examples = load_examples(model)
    if max(examples[0]["image"].size) > pipe.image_size:
        return _highres_demo(pipe, examples[0], out, num_inference_steps, guidance_scale, seed)
    schema = pipe.schema
    images = [e["image"] for e in examples]
    factual = [e["factors"] for e in examples]
    columns, table = [], []
    for factor in demo_factors(schema):
        values = _shifted(schema, factor, factual)
        out_ = pipe(
            image=images,
            factors=factual,
            interventions={factor.name: values},
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
        columns.append((f"do({factor.name})", out_.images, out_.counterfactual_factors, out_.identification))
    cells, captions = [], []
    for i, image in enumerate(images):
        pixels = np.asarray(image)
        cells.append(pixels[..., None] if pixels.ndim == 2 else pixels)
        factual_row = {name: out_.factual_factors[i][name] for name in schema.names}
        captions.append("factual\n" + _caption(factual_row, None))
        table.append({"example": i, "edit": "factual", **factual_row})
        for title, edited, rows, identification in columns:
            cells.append(unit_to_uint8(edited[i]))
            captions.append(f"{title}\n" + _caption(rows[i], factual_row, identification[i]))
            table.append({"example": i, "edit": title, **rows[i]})
    grid = image_grid(np.stack(cells), columns=1 + len(columns), captions=captions, scale=3, min_width=120)
    graph = Image.open(_draw_graph(pipe.scm.graph)).convert("RGB")
    graph.thumbnail((320, grid.height))
    canvas = Image.new("RGB", (grid.width + graph.width + 10, max(grid.height, graph.height)), "white")
    canvas.paste(grid, (0, 0))
    canvas.paste(graph, (grid.width + 10, 0))
    return save_image(canvas, out), table


def _shifted(schema, factor: Factor, factual: list[dict]) -> list:
    """The demo's target of `factor` for each factual row (`shifted_values`), in the factor's own values."""
    indices = schema.to_values({factor.name: [row[factor.name] for row in factual]}, partial=True)[factor.name]
    return schema.from_values({factor.name: torch.as_tensor(shifted_values(factor, indices.numpy()))})[factor.name]


def _highres_demo(
    pipe, example: dict, out: str | Path, num_inference_steps: int, guidance_scale: GuidanceScale, seed: int
) -> tuple[Path, list[dict]]:
    """The high-resolution panel: `example` edited at its own size (the pipeline's high-resolution defaults: the
    diffusion at the model's size, the input's own pixels outside the edit's mask) once per cause; one row per edit
    of input | edit | mask (the input, dimmed outside the mask)."""
    schema, graph = pipe.schema, pipe.scm.graph
    factual = example["factors"]
    pixels = np.asarray(example["image"].convert("RGB"))
    cells, captions, table = [], [], [{"example": 0, "edit": "factual", **factual}]
    for factor in [f for f in demo_factors(schema) if graph.children(f.name)]:
        target = _shifted(schema, factor, [factual])[0]
        edit = pipe(
            image=example["image"],
            factors=factual,
            interventions={factor.name: target},
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
        )
        mask = edit.masks[0, 0].numpy()[..., None]
        row = edit.counterfactual_factors[0]
        cells += [pixels, np.asarray(edit.images[0].convert("RGB")), (pixels * (0.25 + 0.75 * mask)).astype(np.uint8)]
        captions += [
            "input\n" + _caption(factual, None),
            f"do({factor.name})\n" + _caption(row, factual, edit.identification[0]),
            f"mask: {100 * mask.mean():.0f}% of the pixels may change\noutside it the input's own pixels",
        ]
        table.append({"example": 0, "edit": f"do({factor.name})", **row})
    return save_image(image_grid(np.stack(cells), columns=3, captions=captions), out), table


def _draw_graph(graph) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "graph.png"
    graph.draw(path)
    return path


def _text(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_table(table: list[dict]) -> str:
    """The demo's factor table as aligned text."""
    keys = list(table[0])
    widths = {k: max(len(k), *(len(_text(row[k])) for row in table)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(_text(row[k]).ljust(widths[k]) for k in keys) for row in table]
    return "\n".join(lines)
