"""The `cf-diffusion` command: demo, edit, generate, train, data make, evaluate, serve."""

import argparse
import importlib
import sys
from pathlib import Path

import cf_diffusion.editing_defaults as defaults
from cf_diffusion.training.stages import STAGES

EVALUATE_QUICK_METRICS = ("effectiveness", "ground_truth", "consistency")
"""`evaluate`'s default metrics (--full: every metric); the others run many more edits or reference images."""
EVALUATE_QUICK_METHODS = ("ours-ddim", "regenerate")
"""`evaluate`'s default methods (--full: all but cvae-scm): ours and the baseline without abduction."""


class _LazyChoices:
    """The argparse choices `module.name`, imported only when a value is checked or a subcommand's --help lists
    them, so that building the parser (and `cf-diffusion --help`) imports no torch."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def _values(self):
        return getattr(importlib.import_module(self.module), self.name)

    def __contains__(self, value) -> bool:
        return value in self._values()

    def __iter__(self):
        return iter(self._values())


def _demo(args) -> None:
    from cf_diffusion.demo import format_table, run_demo
    from cf_diffusion.outputs import check_output_file

    check_output_file(args.out, "--out", args.overwrite)
    path, table = run_demo(args.model, args.out, args.steps, args.guidance, args.seed)
    print(format_table(table))
    print(f"wrote {path}")


def _interventions(schema, text: str | None) -> dict:
    return schema.parse(text) if text else {}


def _edit_kwargs(args) -> dict:
    import torch

    kwargs = {} if args.mask_threshold is None else {"mask_threshold": args.mask_threshold}
    return {
        **kwargs,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "strength": args.strength,
        "abduction": args.abduction,
        "generator": torch.Generator().manual_seed(args.seed),
        "preserve": "auto" if args.show_mask and args.preserve is None else args.preserve,
        "working_size": args.working_size,
        "tile_batch_size": args.tile_batch_size,
        "num_counterfactuals": args.num_counterfactuals,
    }


def _save_edit(result, image, out: Path, show_mask: bool) -> None:
    """Writes the edited image to `out` atomically; with `show_mask`, first `<out stem>_mask.png`: input | edit |
    mask (`out` is written last, so a complete `out` means a complete edit)."""
    from cf_diffusion.outputs import write_image

    if show_mask:
        _save_mask(result, image, out)
    write_image(result.images[0], out)


def _save_mask(result, image, out: Path) -> None:
    """Writes `<out stem>_mask.png`: input | edit | mask."""
    import numpy as np

    from cf_diffusion.images import image_grid, save_image, unit_to_uint8

    mask = unit_to_uint8(result.masks[0, 0].cpu().numpy())
    panels = np.stack([np.asarray(image), np.asarray(result.images[0]), np.repeat(mask[..., None], 3, axis=-1)])
    coverage = float(result.masks[0].mean())
    captions = ["input", "edit", f"mask: {coverage:.1%} may change"]
    path = save_image(image_grid(panels, columns=3, captions=captions), out.with_name(f"{out.stem}_mask.png"))
    print(f"wrote {path}")


def _save_counterfactuals(result, out: Path) -> None:
    """Writes `<out stem>_counterfactuals.png`: the K counterfactuals of the first image, captioned with the factor
    draws they were generated with and, where the data do not identify a draw, its probability and bounds."""
    import numpy as np

    from cf_diffusion.images import image_grid, save_image

    num = len(result.images)
    captions = [
        "\n".join(item.caption(row[name]) for name, item in entry.factors.items())
        for entry, row in zip(result.identification, result.counterfactual_factors, strict=True)
    ]
    images = np.stack([np.asarray(image) for image in result.images])
    grid = image_grid(images, columns=min(8, num), captions=captions, scale=3, min_width=150)
    print(f"wrote {save_image(grid, out.with_name(f'{out.stem}_counterfactuals.png'))}")


def _side_outputs(out: Path, args) -> list[Path]:
    """The files an edit writes beside `out`: the mask panel and the counterfactuals' grid, when asked for."""
    sides = [out.with_name(f"{out.stem}_mask.png")] if args.show_mask else []
    return sides + ([out.with_name(f"{out.stem}_counterfactuals.png")] if args.num_counterfactuals > 1 else [])


def _check_edit_out(args) -> None:
    """--out (and the files beside it) can be written, and replace nothing without --overwrite."""
    from cf_diffusion.outputs import check_output_file, image_extensions

    out = check_output_file(args.out, "--out", args.overwrite, image_extensions())
    for side in _side_outputs(out, args):
        check_output_file(side, "--out", args.overwrite)


def _output_name(path: Path) -> str:
    """The output file name of an --input-dir image: `a.png` -> `a.png`, `a.jpg` -> `a.jpg.png` (distinct)."""
    return f"{path.stem}.png" if path.suffix.lower() == ".png" else f"{path.name}.png"


def _batch_outputs(args) -> tuple[dict[Path, Path], int]:
    """The --input-dir images still to edit, each with its output in --output-dir, and how many are skipped
    because their output is complete (none with --overwrite).

    Raises:
        ValueError: On a missing or empty input folder, an output folder that is (inside) the input folder or
            cannot be written, or two images that would write the same output file.
    """
    from cf_diffusion.outputs import check_output_folder, is_complete_image

    if args.output_dir is None:
        raise ValueError("edit --input-dir needs --output-dir.")
    source = Path(args.input_dir)
    if not source.is_dir():
        raise ValueError(f"--input-dir {args.input_dir!r} is not a folder")
    target = check_output_folder(args.output_dir, "--output-dir")
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise ValueError(
            f"--output-dir {args.output_dir!r} is --input-dir or inside it, where edits would replace or mix with "
            "the originals; choose a folder outside it"
        )
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file())
    if not files:
        raise ValueError(f"--input-dir {args.input_dir!r} holds no .png/.jpg images.")
    outputs = {path: target / _output_name(path) for path in files}
    written = [p for out in outputs.values() for p in (out, *_side_outputs(out, args))]
    clashes = sorted({p.name for p in written if written.count(p) > 1})
    if clashes:
        raise ValueError(f"--input-dir images would write the same output files {clashes}; rename those images")
    todo = {path: out for path, out in outputs.items() if args.overwrite or not is_complete_image(out)}
    return todo, len(outputs) - len(todo)


def _edit(args) -> None:
    from cf_diffusion.identification import format_identification
    from cf_diffusion.models import load_pipeline

    if (args.image is None) == (args.input_dir is None):
        raise ValueError("edit needs exactly one of --image (one file) or --input-dir (a folder of images).")
    if args.image is not None and args.out is None:
        raise ValueError("edit --image needs --out (the PNG to write).")
    if args.show_mask and args.preserve == "none":
        raise ValueError("--show-mask draws the preservation mask, which --preserve none turns off.")
    if args.image is not None:
        _check_edit_out(args)
    else:
        todo, skipped = _batch_outputs(args)
    image = _open_image(args.image) if args.image is not None else None
    pipe = load_pipeline(args.model)
    interventions = _interventions(pipe.schema, args.do)
    factors = pipe.schema.parse(args.factors) if args.factors else None
    _check_edit_memory(pipe, [image.size] if image is not None else _image_sizes(todo), args)
    if image is not None:
        result = pipe(image=image, factors=factors, interventions=interventions, **_edit_kwargs(args))
        if args.num_counterfactuals > 1:
            _save_counterfactuals(result, Path(args.out))
        _save_edit(result, image, Path(args.out), args.show_mask)
        print(f"factual:        {pipe.schema.format_row(result.factual_factors[0])}")
        print(f"counterfactual: {pipe.schema.format_row(result.counterfactual_factors[0])}")
        print(format_identification(result.identification[0], result.counterfactual_factors[0]))
        print(f"wrote {args.out}")
        return
    from accelerate import PartialState

    state = PartialState()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(sorted(todo)) as mine:
        for path in mine:
            image = _open_image(path)
            result = pipe(image=image, factors=factors, interventions=interventions, **_edit_kwargs(args))
            if args.num_counterfactuals > 1:
                _save_counterfactuals(result, todo[path])
            _save_edit(result, image, todo[path], args.show_mask)
    state.wait_for_everyone()
    if state.is_main_process:
        done = f" ({skipped} already complete, skipped; --overwrite redoes them)" if skipped else ""
        print(f"edited {len(todo)} images into {args.output_dir}{done}")


def _image_sizes(paths) -> list[tuple[int, int]]:
    """(width, height) of each image file that can be opened (the others fail when they are edited)."""
    from PIL import Image

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:
            continue
    return sizes


def _check_edit_memory(pipe, sizes: list[tuple[int, int]], args) -> None:
    """Refuses, before any diffusion, an edit whose largest image would not fit in the available memory."""
    from cf_diffusion.resources import check_edit_fits

    if sizes:
        width, height = max(sizes, key=lambda size: size[0] * size[1])
        check_edit_fits(
            pipe, height, width, args.working_size, args.tile_batch_size, args.steps, args.num_counterfactuals
        )


def _open_image(path):
    from cf_diffusion.reading import read_image

    try:
        return read_image(path)
    except OSError as error:  # missing, a folder, not an image, truncated
        raise ValueError(f"Cannot read image {str(path)!r}: {error}") from None


def _generate(args) -> None:
    import numpy as np
    import torch

    from cf_diffusion.images import image_grid, save_image, unit_to_uint8
    from cf_diffusion.models import load_pipeline
    from cf_diffusion.outputs import check_output_file

    check_output_file(args.out, "--out", args.overwrite)
    pipe = load_pipeline(args.model)
    result = pipe.generate(
        interventions=_interventions(pipe.schema, args.do),
        num_images=args.n,
        num_inference_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
        **({} if args.guidance is None else {"guidance_scale": args.guidance}),
    )
    images = unit_to_uint8(np.asarray(result.images))
    captions = [pipe.schema.format_row(row).replace(" ", "\n") for row in result.factors]
    save_image(image_grid(images, columns=min(8, args.n), captions=captions, scale=3, min_width=110), args.out)
    print(f"wrote {args.out}")


def _train(args) -> None:
    from cf_diffusion.training.loop import show_progress_notes
    from cf_diffusion.training.run import train

    show_progress_notes()
    path = train(args.config, args.resume_from_checkpoint, tuple(args.stages or STAGES))
    print(f"pipeline: {path}" if path else "stages finished; the pipeline is assembled once every stage is done")


def _data_make(args) -> None:
    from cf_diffusion.data import make_dataset

    path = make_dataset(args.name, args.n, args.resolution, args.out, seed=args.seed, num_workers=args.workers)
    print(f"wrote {path}")


def _evaluate(args) -> None:
    from cf_diffusion.evaluation.harness import DEFAULT_METHODS, METRICS, RESULT_FILES, EvaluationConfig, evaluate
    from cf_diffusion.models import load_pipeline
    from cf_diffusion.outputs import check_output_folder
    from cf_diffusion.progress import progress_enabled

    out = check_output_folder(args.out, "--out")
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"--out {args.out!r} holds {existing} of an earlier evaluation; pass --overwrite to replace")
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)  # one bar for the evaluation, not one per batch of edits
    config = EvaluationConfig(
        args.data,
        args.out,
        metrics=args.metrics or list(METRICS if args.full else EVALUATE_QUICK_METRICS),
        n=args.n,
        steps=args.steps,
        methods=args.methods or list(DEFAULT_METHODS if args.full else EVALUATE_QUICK_METHODS),
        seed=args.seed,
        guidance_scale=args.guidance,
        inception=args.inception,
        holdout=args.holdout,
        cvae=args.cvae,
        show_progress=progress_enabled(True),
    )
    evaluate(pipe, config)
    print(f"wrote {args.out}/results.json, results.md, results.png")


def _serve(args) -> None:
    try:
        from cf_diffusion.web_app import serve
    except ImportError as error:
        raise ValueError(f"serve needs gradio ({error}): pip install 'cf-diffusion[web]'") from None
    serve(args.model, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `cf-diffusion`."""
    parser = argparse.ArgumentParser(prog="cf-diffusion", description="Causal counterfactual image editing.")
    commands = parser.add_subparsers(dest="command", required=True)

    def editing_options(p: argparse.ArgumentParser, steps: int = defaults.DEFAULT_NUM_INFERENCE_STEPS) -> None:
        p.add_argument("--model", default="default", help="'default', a shipped model name, or a pipeline folder")
        p.add_argument("--steps", type=int, default=steps, help="sampling steps")
        p.add_argument(
            "--guidance",
            type=float,
            help="guidance scale (default: edits use the model's own weights, else guide discrete factors at "
            f"{defaults.DISCRETE_GUIDANCE:g} and continuous ones at {defaults.CONTINUOUS_GUIDANCE:g}; generate "
            f"{defaults.DEFAULT_GENERATE_GUIDANCE:g})",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--overwrite", action="store_true", help="replace existing outputs (--input-dir: redo complete ones too)"
        )

    demo = commands.add_parser("demo", help="edit built-in examples with the default model; writes cf_demo.png")
    editing_options(demo)
    demo.add_argument("--out", default="cf_demo.png")
    demo.set_defaults(func=_demo)

    edit = commands.add_parser("edit", help="edit an image (or a folder) counterfactually")
    editing_options(edit)
    edit.add_argument("--image", help="the image to edit")
    edit.add_argument("--do", required=True, help="interventions, e.g. 'color=green' or 'size=large,color=red'")
    edit.add_argument("--factors", help="the image's factual factors (default: read off the image)")
    edit.add_argument("--strength", type=float, default=defaults.DEFAULT_STRENGTH, help="inversion depth in (0, 1]")
    edit.add_argument("--abduction", choices=defaults.ABDUCTIONS, help="default: the model's (saved with it)")
    edit.add_argument("--out", help="output PNG (with --image)")
    edit.add_argument("--input-dir", help="edit every image of a folder (split across accelerate processes)")
    edit.add_argument(
        "--output-dir",
        help="where --input-dir results go, outside --input-dir (a.png -> a.png, a.jpg -> a.jpg.png); complete ones "
        "are skipped unless --overwrite",
    )
    edit.add_argument(
        "--preserve",
        choices=defaults.PRESERVE_MODES,
        help="auto: keep the input's own pixels outside the region the intervention affects (default for images "
        "larger than the model's size); none: let the whole image change",
    )
    edit.add_argument(
        "--mask-threshold",
        type=float,
        help="--preserve auto: fraction of the largest effect from which a region is masked (default "
        f"{defaults.DEFAULT_MASK_THRESHOLD})",
    )
    edit.add_argument(
        "--working-size",
        type=int,
        help="shorter side in pixels at which to run the diffusion (e.g. 128 for a 1024 px photo; default: the "
        "image's own); the edit is brought back to full size",
    )
    edit.add_argument(
        "--tile-batch-size",
        type=int,
        default=defaults.DEFAULT_TILE_BATCH_SIZE,
        help="tiles per UNet call for large images",
    )
    edit.add_argument(
        "--num-counterfactuals",
        type=int,
        default=1,
        help="K > 1 also writes OUT_counterfactuals.png: K counterfactual draws of the causal model, each captioned "
        "with its factor values and, where the data do not identify them, their probabilities and sharp bounds",
    )
    edit.add_argument(
        "--show-mask",
        action="store_true",
        help="also write OUT_mask.png (OUT's stem + _mask.png): input | edit | mask panel, white where the image "
        "may change (implies --preserve auto)",
    )
    edit.set_defaults(func=_edit)

    generate = commands.add_parser("generate", help="sample factors from the causal model, then images")
    editing_options(generate)
    generate.add_argument("--do", help="interventions for the causal model, e.g. 'size=large'")
    generate.add_argument("--n", type=int, default=16)
    generate.add_argument("--out", default="grid.png")
    generate.set_defaults(func=_generate)

    train = commands.add_parser("train", help="train a model from a recipe (configs/*.yaml)")
    train.add_argument("--config", required=True)
    train.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint", default=None)
    train.add_argument("--stages", nargs="+", choices=STAGES)
    train.set_defaults(func=_train)

    data = commands.add_parser("data", help="procedural datasets with ground truth")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    make = data_commands.add_parser("make", help="write a procedural dataset as an imagefolder")
    make.add_argument("name", help="colored-bars, colored-bars-frontdoor, morpho or pendulum")
    make.add_argument("--n", type=int, required=True)
    make.add_argument("--resolution", type=int, default=32)
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    make.set_defaults(func=_data_make)

    evaluate = commands.add_parser("evaluate", help="counterfactual metrics and baselines on a labelled data set")
    evaluate.add_argument("--model", default="default", help="'default', a shipped model name, or a pipeline folder")
    evaluate.add_argument("--data", required=True, help="a procedural dataset name or a folder from `data make`")
    evaluate.add_argument("--out", required=True, help="folder for results.json, results.md and results.png")
    harness = "cf_diffusion.evaluation.harness"
    evaluate.add_argument(
        "--metrics",
        nargs="+",
        choices=_LazyChoices(harness, "METRICS"),
        metavar="METRIC",
        help="any of %(choices)s (default: effectiveness ground_truth consistency; --full: all)",
    )
    evaluate.add_argument(
        "--methods",
        nargs="+",
        choices=_LazyChoices(harness, "METHODS"),
        metavar="METHOD",
        help="any of %(choices)s (default: ours-ddim regenerate; --full: all but cvae-scm, which needs --cvae)",
    )
    evaluate.add_argument("--cvae", help="the cvae-scm method's model (from `python -m cf_diffusion.training.cvae`)")
    evaluate.add_argument("--n", type=int, default=64)
    evaluate.add_argument("--steps", type=int, nargs="+", default=[25], help="sampling steps (full run: 10 25 50)")
    evaluate.add_argument("--guidance", type=float, help="guidance scale (default: as in edit)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation")
    evaluate.add_argument("--inception", help="a local Inception TorchScript file for FID/KID")
    evaluate.add_argument(
        "--holdout", type=int, help="edit only the folder's last N rows (those a recipe's data.holdout kept out)"
    )
    evaluate.add_argument(
        "--full",
        action="store_true",
        help="every metric and method (all but cvae-scm) where --metrics/--methods are not given: tens of minutes; "
        f"the default is {' '.join(EVALUATE_QUICK_METRICS)} on {' '.join(EVALUATE_QUICK_METHODS)}, a few minutes",
    )
    evaluate.set_defaults(func=_evaluate)

    serve = commands.add_parser("serve", help="a browser demo: edit and generate in a page (needs the [web] extra)")
    serve.add_argument("--model", default="default", help="the model shown first: a shipped model or a folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves other machines too)")
    serve.add_argument("--port", type=int, default=7860)
    serve.set_defaults(func=_serve)
    _add_quiet(parser)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """`--quiet` (no progress bars) on every command that runs (the leaves of the subcommand tree)."""
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not commands:
        parser.add_argument("--quiet", action="store_true", help="no progress bars (none either when not a terminal)")
    for action in commands:
        for sub in dict.fromkeys(action.choices.values()):
            _add_quiet(sub)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; errors are one line on stderr and exit status 2 (Ctrl-C: "interrupted", status 130)."""
    args = build_parser().parse_args(argv)
    from cf_diffusion.progress import set_progress

    set_progress(getattr(args, "quiet", False))
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"cf-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cf-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
