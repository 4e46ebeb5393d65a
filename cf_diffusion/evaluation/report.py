"""The results of an evaluation as files: `results.json` (every figure), `results.md` (the tables) and
`results.png` (an example edit per intervention above the consistency estimates and their bounds), each written
atomically."""

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cf_diffusion.evaluation.queries import STANDARD_ERRORS
from cf_diffusion.factors import FactorSchema
from cf_diffusion.images import unit_to_uint8

RESULT_FILES = ("results.json", "results.md", "results.png")


@dataclass
class Example:
    """Panels of one intervention's example row for the figure: (title, uint8 image [H, W, 3], caption)."""

    edit: str
    panels: list[tuple[str, np.ndarray, str]] = field(default_factory=list)

    def add(self, title: str, image: np.ndarray, schema: FactorSchema, row: Mapping[str, Any]) -> None:
        """Appends a panel: `image` float array[H, W, C] in [0, 1], captioned with the factor values of `row`."""
        image = unit_to_uint8(image)
        parts = schema.format_row(dict(row)).split(" ")
        caption = "\n".join(" ".join(parts[i : i + 2]) for i in range(0, len(parts), 2))
        self.panels.append((title, np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image, caption))


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


def _edit_columns() -> list[tuple[str, Callable[[Mapping[str, Any]], Any]]]:
    """The columns of the edits table: title, and the figure of an edit's entry (None where it has none)."""

    def effect(entry: Mapping[str, Any], name: str) -> Any:
        scores = entry.get("effectiveness", {})
        return scores.get(f"{name}_accuracy", scores.get(f"{name}_mae"))

    return [
        ("intervened", lambda e: effect(e, "intervened")),
        ("descendants", lambda e: effect(e, "descendants")),
        ("kept", lambda e: e.get("preservation", {}).get("all")),
        ("truth L1", lambda e: e.get("ground_truth", {}).get("l1")),
        ("truth SSIM", lambda e: e.get("ground_truth", {}).get("ssim")),
        ("truth factors", lambda e: e.get("ground_truth", {}).get("factor_accuracy")),
        ("reverse MAE255", lambda e: e.get("reversibility", {}).get("mae_255")),
        ("CLD", lambda e: e.get("minimality", {}).get("cld")),
        ("seconds", lambda e: e.get("seconds")),
    ]


def _edits_table(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines: one row per edit and method, with the columns some edit has a figure for."""
    edits = [(m, e, entry) for m, record in results["methods"].items() for e, entry in record["edits"].items()]
    used = [(title, get) for title, get in _edit_columns() if any(get(entry) is not None for _, _, entry in edits)]
    lines = ["| edit | method | " + " | ".join(title for title, _ in used) + " |", "|---" * (len(used) + 2) + "|"]
    for edit in results["interventions"]:
        for method, e, entry in edits:
            if e == edit:
                lines.append(f"| {edit} | {method} | " + " | ".join(_number(get(entry)) for _, get in used) + " |")
    return lines


def _scm_vs_truth(results: Mapping[str, Any]) -> list[str]:
    scm_vs_truth = {e: i["scm_vs_truth"] for e, i in results["interventions"].items() if "scm_vs_truth" in i}
    if not scm_vs_truth:
        return []
    return [
        "",
        "The SCM's counterfactual descendants against the true ones (accuracy, or MAE): "
        + "; ".join(f"{e} {_scores_text(v)}" for e, v in scm_vs_truth.items()),
    ]


def _composition_table(results: Mapping[str, Any]) -> list[str]:
    compositions = {m: r["composition"] for m, r in results["methods"].items() if "composition" in r}
    if not compositions:
        return []
    cycles = list(next(iter(compositions.values())))
    lines = ["", "## Composition (null edit repeated k times)", ""]
    lines.append("| method | " + " | ".join(f"MAE255 k={k} | SSIM k={k}" for k in cycles) + " |")
    lines.append("|---" * (2 * len(cycles) + 1) + "|")
    for method, values in compositions.items():
        cells = [f"{_number(values[k]['mae_255'])} | {_number(values[k]['ssim'])}" for k in cycles]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _realism_table(results: Mapping[str, Any]) -> list[str]:
    if not results.get("realism_network"):
        return []
    lines = ["", "## Realism", "", f"Features: {results['realism_network']}.", ""]
    lines += ["| method | FID | KID | KID std |", "|---|---|---|---|"]
    for method, record in results["methods"].items():
        r = record.get("realism", {})
        lines.append(
            f"| {method} | {_number(r.get('fid'))} | {_number(r.get('kid'), 4)} | {_number(r.get('kid_std'), 4)} |"
        )
    return lines


def _estimate_text(estimate: Mapping[str, Any] | None) -> str:
    if not estimate:
        return ""
    inside = "in" if estimate["inside"] else "**out**"
    return f"{estimate['probability']:.2f} ± {estimate['stderr']:.2f} (n={estimate['n']}) {inside}"


def _consistency_table(results: Mapping[str, Any]) -> list[str]:
    if not results["consistency"]:
        return []
    methods = list(results["methods"])
    lines = [
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
        cells = [_estimate_text(entry.get("estimates", {}).get(method)) for method in methods]
        query = entry["query"].replace("|", "\\|")
        lines.append(f"| {query} | {bounds_text} | {truth} | " + " | ".join(cells) + " |")
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
    lines += _edits_table(results)
    lines += _per_factor_table(results)
    lines += _scm_vs_truth(results)
    lines += _composition_table(results)
    lines += _realism_table(results)
    lines += _consistency_table(results)
    lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def _figure(results: Mapping[str, Any], examples: Sequence[Example]) -> Figure:
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


def write_results(results: Mapping[str, Any], examples: Sequence[Example], out_dir: str | os.PathLike) -> dict:
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
