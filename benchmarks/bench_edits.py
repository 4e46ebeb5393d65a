"""Edit quality of a model on held-out procedural data with ground truth (the numbers quoted in the README).

    python benchmarks/bench_edits.py --model default --dataset colored-bars --n 128

Prints one markdown table per editing setting (abduction, steps, guidance scale, inversion strength): for each
intervention the fraction of edits whose intervened factor takes the requested value, whose descendants take their
SCM counterfactual value, whose non-descendants (digit included) are preserved, the error of each continuous factor,
the error to the true counterfactual image and the null edit's error; the row `none` reads the unedited images, and
each `do(x), true image` row the true counterfactual images (what a perfect editor scores with these readers). See
cf_diffusion/evaluation/edits.py for the definitions.
"""

import argparse
import time

from cf_diffusion.data import get_dataset
from cf_diffusion.evaluation.edits import EditSettings, evaluate_edits, format_report
from cf_diffusion.guidance import factor_weights
from cf_diffusion.models import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dataset", default="colored-bars")
    parser.add_argument("--factors", nargs="+", help="factors to intervene on (default: all but the digit)")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[25])
    parser.add_argument(
        "--guidance",
        nargs="+",
        default=["auto"],
        help="guidance scales; 'auto': the model's own weights, else by factor kind (the default)",
    )
    parser.add_argument("--strength", type=float, nargs="+", default=[1.0])
    parser.add_argument("--abduction", nargs="+", default=["ddim", "ddpm"])
    parser.add_argument("--seed", type=int, default=12345, help="seed of the held-out rows and of the edits' noise")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    dataset = get_dataset(args.dataset)
    factors = args.factors or [name for name in pipe.schema.names if name != "digit"]
    for abduction in args.abduction:
        for steps in args.steps:
            for strength in args.strength:
                for guidance in [None if g == "auto" else float(g) for g in args.guidance]:
                    settings = EditSettings(steps, guidance, strength, abduction)
                    weights = factor_weights(pipe.schema, guidance, pipe.config.default_guidance_scale)
                    start = time.perf_counter()
                    report = evaluate_edits(pipe, dataset, factors, args.n, settings, args.seed)
                    seconds = time.perf_counter() - start
                    print(
                        f"\n{abduction}, {steps} steps, guidance {guidance or weights}, strength {strength} "
                        f"(n={args.n}, seed {args.seed}, {seconds:.0f} s)"
                    )
                    print(format_report(report))


if __name__ == "__main__":
    main()
