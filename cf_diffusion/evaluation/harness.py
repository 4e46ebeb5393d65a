"""The evaluation harness behind `cf-diffusion evaluate`: every metric, for our pipeline and the baselines, in one run.

For `n` held-out rows (`cf_diffusion.evaluation.data`) and one intervention per factor (every row's factor moved to
another value, see `cf_diffusion.evaluation.interventions`), the counterfactual factors are drawn once from the
pipeline's own causal model (`pipe.scm.counterfactual`) and every method (`cf_diffusion.evaluation.methods`) is asked
for the same ones (`cf_diffusion.evaluation.editing`), so the methods differ only in how they make the image. The
factor predictor reads every factor off every edited image. Metrics (each can be chosen with
`EvaluationConfig.metrics`; the figures are made in `cf_diffusion.evaluation.scoring`):

- `effectiveness`: readings against the targets, per factor (accuracy / macro F1, MAE for continuous factors);
  summaries: the intervened factor, the descendants (their SCM counterfactual values), the non-descendants
  (*kept*: all non-descendants kept at once; continuous ones within `CONTINUOUS_TOLERANCE` standard deviations of
  the edited rows' factual values, `cf_diffusion.evaluation.scoring.preservation`).
- `composition`: null edit repeated 1 and 10 times (`cycles`), MAE on [0, 255] and SSIM to the input.
- `reversibility`: edit, then edit back to the factual factors; distance to the input.
- `ground_truth` (procedural data only): L1 / MAE_255 / SSIM to the true counterfactual image, readings against
  the true counterfactual factors, and how often the SCM's descendant values equal the true ones.
- `consistency` (the seed paper's test, `cf_diffusion.evaluation.queries`): for each discrete intervened factor X
  and discrete descendant Y, and each factual pair (x, y), `P(Y_{X=x'} = y | X = x, Y = y)` estimated from the
  edited images of the rows with that evidence, against the sharp bounds of `counterfactual_bounds` (the model's
  graph, the training-distribution table) and, on procedural data, the true value from the dataset's own
  structural equations. An estimate is inside when its Wilson score interval at z = 2 meets the bounds.
- `realism`: FID and KID between each method's edited images and real images of the same distribution that were
  not edited (the reference rows, as for `minimality`; an edit resembles its own factual image, and comparing the
  two sets with that pairing biases both figures down, KID below zero), on features of the Inception network when
  a local TorchScript file is given, else of the pipeline's factor-predictor trunk.
- `minimality`: CLD on the posteriors of the pipeline's VAE (an unconditional autoencoder trained on the data),
  with the intervened factor as the class; skipped for pixel-space pipelines.

Every metric that cannot run (no ground truth, no predictor, no VAE, a continuous factor...) is skipped with a
note in the results rather than failing. The results go to `out_dir` as `results.json`, `results.md` and
`results.png`, each written atomically (`cf_diffusion.evaluation.report`).
"""

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cf_diffusion.editing_defaults import DEFAULT_GUIDANCE_REFERENCE, DEFAULT_SDEDIT_STRENGTH
from cf_diffusion.evaluation.cvae import ConditionalVAE, load_cvae
from cf_diffusion.evaluation.data import EvaluationData, load_evaluation_data, to_channels
from cf_diffusion.evaluation.editing import edit_rows, edit_seeds, editor, precomputed, select_rows, to_tensor
from cf_diffusion.evaluation.effectiveness import effectiveness
from cf_diffusion.evaluation.interventions import draw_targets, shifted_values
from cf_diffusion.evaluation.methods import EditOptions, Method
from cf_diffusion.evaluation.queries import answer_queries
from cf_diffusion.evaluation.readers import read_factors
from cf_diffusion.evaluation.report import RESULT_FILES, Example, write_results
from cf_diffusion.evaluation.scoring import (
    effect_summary,
    minimality_scores,
    posteriors,
    preservation,
    realism_scores,
    truth_scores,
)
from cf_diffusion.evaluation.soundness import composition, reversibility
from cf_diffusion.guidance import GuidanceScale, factor_weights
from cf_diffusion.images import uint8_to_unit

__all__ = ["DEFAULT_METHODS", "METHODS", "METRICS", "RESULT_FILES", "EvaluationConfig", "evaluate"]

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


@dataclass(frozen=True)
class EvaluationConfig:
    """What `evaluate` runs, and where its results go.

    Attributes:
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
    """

    data: str | os.PathLike
    out_dir: str | os.PathLike
    metrics: Sequence[str] = METRICS
    n: int = 64
    steps: Sequence[int] = (25,)
    methods: Sequence[str] = DEFAULT_METHODS
    seed: int = 0
    factors: Sequence[str] | None = None
    baseline_steps: int | None = None
    guidance_scale: GuidanceScale = None
    guidance_reference: str = DEFAULT_GUIDANCE_REFERENCE
    sdedit_strength: float = DEFAULT_SDEDIT_STRENGTH
    cycles: Sequence[int] = (1, 10)
    inception: str | os.PathLike | None = None
    table_rows: int = 50_000
    batch_size: int = 32
    show_progress: bool = True
    holdout: int | None = None
    cvae: str | os.PathLike | ConditionalVAE | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"metrics {list(self.metrics)}: expected a non-empty subset of {list(METRICS)}")
        if not self.steps or any(not isinstance(s, int) or s < 1 for s in self.steps):
            raise ValueError(f"steps must be a non-empty list of positive integers, got {list(self.steps)}")
        if not 0.0 < self.sdedit_strength <= 1.0:
            raise ValueError(f"sdedit_strength must be in (0, 1], got {self.sdedit_strength}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        unknown = [name for name in self.methods if name not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods {list(self.methods)}: expected a non-empty subset of {list(METHODS)}")

    @property
    def baseline(self) -> int:
        """Sampling steps of the baselines: `baseline_steps`, else the largest entry of `steps`."""
        return self.baseline_steps or max(self.steps)

    def method_list(self) -> list[Method]:
        """Every method to run: each `ours-*` at every entry of `steps`, each baseline at `baseline`."""
        methods = []
        for name in self.methods:
            kind, abduction = METHODS[name]
            counts = self.steps if kind == "ours" else [self.baseline]
            methods.extend(Method(kind, int(count), abduction) for count in counts)
        return methods


@dataclass
class _Run:
    """What every edit of one `evaluate` call shares, and what the edits leave for the metrics of the whole run."""

    pipe: Any
    config: EvaluationConfig
    loaded: EvaluationData
    options: EditOptions
    images: torch.Tensor
    factual_posterior: tuple[torch.Tensor, torch.Tensor] | None = None
    reference_posterior: tuple[torch.Tensor, torch.Tensor] | None = None
    edited: dict[str, list[np.ndarray]] = field(default_factory=dict)
    reads: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def wanted(self) -> set[str]:
        """The chosen metrics."""
        return set(self.config.metrics)


def evaluate(pipe, config: EvaluationConfig) -> dict[str, Any]:
    """Evaluates counterfactual editing with every metric, for our pipeline and the baselines (module docstring).

    Args:
        pipe: A `CounterfactualDiffusionPipeline`, or a model name or folder for `cf_diffusion.models.load_pipeline`.
        config: What to run and where the results go.

    Returns:
        The results, as written to `results.json`: `settings`, `data`, `notes`, `interventions` (per edit: its
        descendants and non-descendants, and how often the SCM's descendant values equal the true ones),
        `methods` (per method: `edits` -> per edit the chosen metrics; `composition`; `realism`) and
        `consistency` (per query: bounds, true value, and each method's estimate and whether it is inside).
    """
    from cf_diffusion.models import load_pipeline

    if isinstance(pipe, str | os.PathLike):
        pipe = load_pipeline(pipe)
    edited_factors = list(config.factors) if config.factors is not None else pipe.schema.names
    bad = [name for name in edited_factors if name not in pipe.schema]
    if bad or not edited_factors:
        raise ValueError(
            f"factors {edited_factors}: expected a non-empty subset of the model's factors {pipe.schema.names}"
        )
    methods = config.method_list()
    cvae = load_cvae(config.cvae, pipe.schema).to(pipe.device) if "cvae-scm" in config.methods else None
    options = EditOptions(config.guidance_scale, config.guidance_reference, config.sdedit_strength, cvae=cvae)
    loaded = load_evaluation_data(pipe, config.data, config.n, config.seed, config.table_rows, config.holdout)
    run = _Run(pipe, config, loaded, options, to_tensor(loaded.images), edited={m.name: [] for m in methods})
    use_vae = "minimality" in run.wanted and pipe.vae is not None and loaded.reference_images is not None
    results = _start_results(run, methods, use_vae)
    if pipe.factor_predictor is not None and "effectiveness" in run.wanted:
        results["reader_floor"] = effectiveness(
            read_factors(pipe, loaded.images, config.batch_size), loaded.factors, pipe.schema
        )
    if use_vae:
        run.factual_posterior = posteriors(pipe, loaded.images, config.batch_size)
        run.reference_posterior = posteriors(pipe, loaded.reference_images, config.batch_size)
    progress = tqdm(
        total=len(methods) * (len(edited_factors) + ("composition" in run.wanted)),
        desc="evaluate",
        disable=not config.show_progress,
    )
    examples = [_intervene(run, results, methods, j, name, progress) for j, name in enumerate(edited_factors)]
    if "composition" in run.wanted:
        _compose(run, results, methods, progress)
    progress.close()
    if "realism" in run.wanted:
        results["realism_network"] = realism_scores(
            pipe, results, loaded, run.edited, config.inception, config.batch_size
        )
    if "consistency" in run.wanted and pipe.factor_predictor is not None:
        results["consistency"] = answer_queries(pipe, loaded, edited_factors, methods, run.reads, results["notes"])
    write_results(results, examples, config.out_dir)
    return results


def _notes(run: _Run, use_vae: bool) -> list[str]:
    """The data's notes, and one for each metric that is skipped or needs saying how it is made."""
    notes, wanted = list(run.loaded.notes), run.wanted
    if run.pipe.factor_predictor is None and wanted & {"effectiveness", "consistency"}:
        notes.append("the pipeline has no factor_predictor: effectiveness and consistency are skipped")
    if "ground_truth" in wanted and not run.loaded.has_ground_truth:
        notes.append(
            "ground_truth skipped: the data has no ground truth (neither a procedural dataset nor a folder written "
            "by `cf-diffusion data make`)"
        )
    if "minimality" in wanted:
        notes.append(
            "minimality (CLD) on the posteriors of the pipeline's VAE, an unconditional autoencoder trained on the "
            "data; the class is the intervened factor"
            if use_vae
            else "minimality (CLD) skipped: it needs an unconditional autoencoder's posterior (the pipeline has no "
            "VAE) and reference images"
        )
    return notes


def _start_results(run: _Run, methods: Sequence[Method], use_vae: bool) -> dict[str, Any]:
    """The results before any edit: settings, data, notes, and empty records for the edits to fill."""
    pipe, config, loaded = run.pipe, run.config, run.loaded
    return {
        "settings": {
            "model": str(pipe.name_or_path or type(pipe).__name__),
            "data": os.fspath(config.data),
            "metrics": [m for m in METRICS if m in run.wanted],
            "n": len(loaded.images),
            "steps": list(config.steps),
            "baseline_steps": config.baseline,
            "methods": [m.name for m in methods],
            "seed": config.seed,
            "guidance_scale": factor_weights(pipe.schema, config.guidance_scale, pipe.config.default_guidance_scale),
            "guidance_reference": config.guidance_reference,
            "sdedit_strength": config.sdedit_strength,
            "cycles": sorted(set(config.cycles)),
            "image_size": pipe.image_size,
        },
        "data": {"source": loaded.source, "rows": len(loaded.images), "ground_truth": loaded.has_ground_truth},
        "notes": _notes(run, use_vae),
        "interventions": {},
        "methods": {m.name: {"edits": {}} for m in methods},
        "consistency": [],
    }


def _intervene(
    run: _Run, results: dict[str, Any], methods: Sequence[Method], index: int, name: str, progress: tqdm
) -> Example:
    """Edits every row under `do(name)` with every method and scores the edits into `results`.

    Returns:
        The intervention's example row for the figure: the first row's factual image, its true counterfactual
        (with ground truth) and each method's edit.
    """
    pipe, loaded, schema = run.pipe, run.loaded, run.pipe.schema
    edit = f"do({name})"
    values = shifted_values(schema[name], loaded.factors[name])
    targets = draw_targets(pipe, loaded.factors, name, values, run.config.seed + index)
    descendants = sorted(pipe.scm.graph.descendants(name))
    info: dict[str, Any] = {
        "descendants": descendants,
        "non_descendants": [k for k in schema.names if k != name and k not in descendants],
    }
    truth = None
    if loaded.has_ground_truth:
        truth = loaded.dataset.counterfactual(loaded.exogenous, {name: values}, resolution=pipe.image_size)
        truth.images = to_channels(uint8_to_unit(truth.images), pipe.image_channels)
        if descendants:
            info["scm_vs_truth"] = effectiveness(
                {d: targets[d] for d in descendants}, {d: truth.factors[d] for d in descendants}, schema
            )
    results["interventions"][edit] = info
    first = slice(0, 1)
    example = Example(edit)
    example.add("factual", loaded.images[0], schema, select_rows(loaded.factors, first))
    if truth is not None:
        example.add("true counterfactual", truth.images[0], schema, select_rows(truth.factors, first))
    for method in methods:
        entry, edited, read = _score_edit(run, method, index, name, targets, info, truth)
        results["methods"][method.name]["edits"][edit] = entry
        run.edited[method.name].append(edited)
        if read is not None:
            run.reads[(method.name, name)] = read
        example.add(method.name, edited[0], schema, select_rows(read if read is not None else targets, first))
        progress.update()
    return example


def _score_edit(
    run: _Run,
    method: Method,
    index: int,
    name: str,
    targets: dict[str, np.ndarray],
    info: dict[str, Any],
    truth: Any,
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray] | None]:
    """Edits every row under `do(name)` with one method and scores the edits with the chosen metrics.

    Returns:
        (the metrics of the edit, the edited images float array[N, H, W, C], the factors read off them or None).
    """
    pipe, schema, loaded, wanted = run.pipe, run.pipe.schema, run.loaded, run.wanted
    factual, batch_size, count = loaded.factors, run.config.batch_size, len(loaded.images)
    start = time.perf_counter()
    seeds = edit_seeds(run.config.seed, 1 + index, count)
    edited = edit_rows(pipe, method, loaded.images, factual, targets, [name], run.options, seeds, batch_size)
    entry: dict[str, Any] = {}
    read = read_factors(pipe, edited, batch_size) if pipe.factor_predictor is not None else None
    others = info["non_descendants"]
    if read is not None and "effectiveness" in wanted:
        entry["effectiveness"] = effect_summary(
            schema, effectiveness(read, targets, schema), name, info["descendants"]
        )
    if read is not None and others and wanted & {"effectiveness", "consistency"}:
        entry["preservation"] = preservation(schema, factual, read, others)
    if truth is not None and "ground_truth" in wanted:
        entry["ground_truth"] = truth_scores(schema, edited, truth, read)
    if "reversibility" in wanted:
        back_seeds = edit_seeds(run.config.seed, 1001 + index, count)
        backward = editor(pipe, method, targets, factual, [name], run.options, back_seeds, batch_size)
        entry["reversibility"] = reversibility(precomputed(to_tensor(edited)), backward, run.images)
    if run.factual_posterior is not None:
        entry["minimality"] = minimality_scores(
            pipe,
            edited,
            schema[name],
            factual[name],
            targets[name],
            run.factual_posterior,
            run.reference_posterior,
            loaded.reference_factors[name],
            batch_size,
        )
    entry["seconds"] = time.perf_counter() - start
    return entry, edited, read


def _compose(run: _Run, results: dict[str, Any], methods: Sequence[Method], progress: tqdm) -> None:
    """`composition` of every method's null edit, repeated `cycles` times, into `results`."""
    loaded, config = run.loaded, run.config
    for method in methods:
        seeds = edit_seeds(config.seed, 0, len(loaded.images))
        null_edit = editor(run.pipe, method, loaded.factors, loaded.factors, [], run.options, seeds, config.batch_size)
        composed = composition(null_edit, run.images, config.cycles)
        results["methods"][method.name]["composition"] = {str(k): v for k, v in composed.items()}
        progress.update()
