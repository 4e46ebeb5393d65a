"""Benchmark of the NeuralCausalModel: fit time, counterfactual throughput and errors against analytic truth.

Run: `python benchmarks/bench_scm.py` (about two to three minutes on two CPU cores). Prints three tables:

1. fit time for 100k rows of a 5-node graph with one confounded pair (mixed binary, categorical, continuous);
2. counterfactual samples per second (abduction + action + prediction), median of several runs;
3. the error of the fitted model against the closed-form truth of the analytic cases of tests/test_scm.py.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from cf_diffusion.factors import Factor, FactorSchema
from cf_diffusion.scm import NeuralCausalModel

FIVE_NODES = "a -> b; b -> c; b <-> c; c -> d; a -> e; d -> e"


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bernoulli(p: torch.Tensor | float, n: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).long()


def five_node_data(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A hidden confounder of b and c; a, c, e continuous, b binary, d categorical with 3 levels."""
    hidden = torch.randn(n, generator=generator)
    a = torch.randn(n, generator=generator)
    b = _bernoulli(torch.sigmoid(a + 1.5 * hidden), n, generator)
    c = 1.0 * b + 0.8 * hidden + 0.5 * torch.randn(n, generator=generator)
    d = torch.bucketize(c + 0.5 * torch.randn(n, generator=generator), torch.tensor([0.0, 1.0]))
    e = 0.5 * a + d - 0.3 * d**2 + 0.3 * torch.randn(n, generator=generator)
    return {"a": a, "b": b, "c": c, "d": d, "e": e}


def five_node_schema() -> FactorSchema:
    return FactorSchema(
        [
            Factor.continuous("a"),
            Factor.binary("b"),
            Factor.continuous("c"),
            Factor.categorical("d", ["low", "mid", "high"]),
            Factor.continuous("e"),
        ]
    )


def bench_fit(rows: int, steps: int) -> NeuralCausalModel:
    data = five_node_data(rows, _seed(0))
    model = NeuralCausalModel(FIVE_NODES, five_node_schema())
    start = time.perf_counter()
    losses = model.fit(data, num_steps=steps, generator=_seed(1), show_progress=False)
    seconds = time.perf_counter() - start
    print("## Fit (5 nodes, one confounded pair b <-> c, batch 1024, 32 importance samples)\n")
    print("| rows | steps | seconds | ms / step | final NLL |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {rows:,} | {steps} | {seconds:.1f} | {1000 * seconds / steps:.1f} | {losses[-1]:.3f} |\n")
    return model


def bench_counterfactual(model: NeuralCausalModel, rows: int, samples: int, repeats: int) -> None:
    factual = {name: value[:rows] for name, value in five_node_data(rows, _seed(2)).items()}
    cases = [
        ("do(b = 1)", {"b": 1}),
        ("do(a = a + 1) (soft)", {"a": lambda t: t + 1}),
        ("do(c = 0.5)", {"c": 0.5}),
    ]
    print(f"## Counterfactual throughput ({rows:,} rows x {samples} samples, median of {repeats} runs)\n")
    print("| intervention | seconds | samples / s |")
    print("|---|---:|---:|")
    for label, interventions in cases:
        times = []
        for repeat in range(repeats):
            start = time.perf_counter()
            model.counterfactual(factual, interventions, num_samples=samples, generator=_seed(repeat))
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        print(f"| {label} | {seconds:.3f} | {rows * samples / seconds:,.0f} |")
    print()


def error_linear_gaussian(steps: int) -> list[tuple[str, float, float, float]]:
    g = _seed(0)
    x = torch.randn(20_000, generator=g)
    y = 2 * x + torch.randn(20_000, generator=g)
    model = NeuralCausalModel("x -> y", FactorSchema([Factor.continuous("x"), Factor.continuous("y")]))
    model.fit({"x": x, "y": y}, num_steps=steps, generator=_seed(1), show_progress=False)
    x_new = torch.rand(1000, generator=_seed(3)) * 4 - 2
    cf = model.counterfactual({"x": x[:1000], "y": y[:1000]}, {"x": x_new}, generator=_seed(4))
    truth = y[:1000] + 2 * (x_new - x[:1000])
    rows = [("linear-Gaussian: E|y_cf - (y + 2(x' - x))| (noise std 1)", (cf["y"][:, 0] - truth).abs().mean().item())]
    for value in (-1.5, 0.0, 1.0):
        mean = model.sample(100_000, {"x": value}, generator=_seed(5))["y"].mean().item()
        rows.append((f"linear-Gaussian: E[y | do(x={value})] (truth {2 * value})", abs(mean - 2 * value)))
    return [(label, error, 0.1 if "cf" in label else 0.05, math.nan) for label, error in rows]


def error_chain(steps: int) -> list[tuple[str, float, float, float]]:
    g = _seed(0)
    a = _bernoulli(0.3, 20_000, g)
    b = 1.5 * a + torch.randn(20_000, generator=g)
    c = _bernoulli(torch.sigmoid(2 * b - 1), 20_000, g)
    schema = FactorSchema([Factor.binary("a"), Factor.continuous("b"), Factor.binary("c")])
    model = NeuralCausalModel("a -> b; b -> c", schema, hidden_dim=32)
    model.fit({"a": a, "b": b, "c": c}, num_steps=steps, generator=_seed(1), show_progress=False)
    u = torch.randn(1_000_000, generator=_seed(2))
    truth_c_do_a = torch.sigmoid(2 * (1.5 + u) - 1).mean().item()
    truth_c_do_b = 1 / (1 + math.exp(-2))
    observed_c = c.float().mean().item()
    do_a = model.sample(100_000, {"a": 1}, generator=_seed(3))
    do_b = model.sample(100_000, {"b": 1.5}, generator=_seed(4))
    return [
        (
            "chain: P(c=1 | do(a=1))",
            abs(do_a["c"].float().mean().item() - truth_c_do_a),
            0.03,
            abs(observed_c - truth_c_do_a),
        ),
        ("chain: E[b | do(a=1)]", abs(do_a["b"].mean().item() - 1.5), 0.03, abs(b.mean().item() - 1.5)),
        (
            "chain: P(c=1 | do(b=1.5))",
            abs(do_b["c"].float().mean().item() - truth_c_do_b),
            0.03,
            abs(observed_c - truth_c_do_b),
        ),
    ]


def error_confounded(steps: int) -> list[tuple[str, float, float, float]]:
    g = _seed(0)
    hidden = _bernoulli(0.5, 20_000, g).float()
    z = _bernoulli(0.1 + 0.8 * hidden, 20_000, g)
    x = _bernoulli(0.1 + 0.8 * hidden, 20_000, g)
    y = _bernoulli(0.1 + 0.3 * x + 0.5 * z, 20_000, g)
    schema = FactorSchema([Factor.binary("z"), Factor.binary("x"), Factor.binary("y")])
    model = NeuralCausalModel("z <-> x; x -> y; z -> y", schema, hidden_dim=32, num_importance=16)
    model.fit({"z": z, "x": x, "y": y}, num_steps=steps, generator=_seed(1), show_progress=False)
    do_x = model.sample(100_000, {"x": 1}, generator=_seed(2))
    do_z = model.sample(100_000, {"z": 1}, generator=_seed(3))
    observed_y_x = y[x == 1].float().mean().item()
    observed_x_z = x[z == 1].float().mean().item()
    return [
        (
            "confounded z<->x: P(y=1 | do(x=1)) (truth 0.65)",
            abs(do_x["y"].float().mean().item() - 0.65),
            0.03,
            abs(observed_y_x - 0.65),
        ),
        (
            "confounded z<->x: P(x=1 | do(z=1)) (truth 0.5)",
            abs(do_z["x"].float().mean().item() - 0.5),
            0.03,
            abs(observed_x_z - 0.5),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the 5-node fit")
    parser.add_argument("--steps", type=int, default=2000, help="fit steps of the 5-node model")
    parser.add_argument("--cf-rows", type=int, default=1000, help="factual rows per counterfactual call")
    parser.add_argument("--cf-samples", type=int, default=100, help="counterfactual samples per row")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    model = bench_fit(args.rows, args.steps)
    bench_counterfactual(model, args.cf_rows, args.cf_samples, args.repeats)

    print("## Error against analytic truth (20k rows; tolerance as in tests/test_scm.py)\n")
    print("| case | |model - truth| | tolerance | |observational - truth| |")
    print("|---|---:|---:|---:|")
    for label, error, tolerance, observational in (
        error_linear_gaussian(300) + error_chain(800) + error_confounded(300)
    ):
        gap = "" if math.isnan(observational) else f"{observational:.4f}"
        print(f"| {label} | {error:.4f} | {tolerance} | {gap} |")


if __name__ == "__main__":
    main()
