"""Images per second of `cf-diffusion data make` (render + PNG + metadata, all cores), median of several runs.

Usage: python benchmarks/bench_data.py [--runs 3] [--n-small 10000] [--n-large 32] [--datasets colored-bars ...]
The goal at 32 px is >= 2,000 images/s on two cores.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cf_diffusion.data import available_datasets, make_dataset


def images_per_second(name: str, n: int, resolution: int, runs: int, workers: int | None) -> tuple[float, float]:
    """Median images per wall-clock second and per CPU second (this process and its workers) over `runs` runs.

    On a shared machine the wall-clock rate depends on the other load; the CPU rate times the number of cores is
    what an otherwise idle machine reaches.
    """
    rates, cpu_rates = [], []
    for run in range(runs):
        folder = Path(tempfile.mkdtemp(prefix="bench_data_"))
        try:
            start, cpu = time.perf_counter(), os.times()
            make_dataset(name, n, resolution, folder / "out", seed=run, num_workers=workers, show_progress=False)
            rates.append(n / (time.perf_counter() - start))
            end = os.times()
            used = sum(
                getattr(end, f) - getattr(cpu, f) for f in ("user", "system", "children_user", "children_system")
            )
            cpu_rates.append(n / used)
        finally:
            shutil.rmtree(folder)
    return statistics.median(rates), statistics.median(cpu_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-small", type=int, default=10_000, help="images per run at 32 px")
    parser.add_argument("--n-large", type=int, default=32, help="images per run at 1024 px")
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--datasets", nargs="+", default=available_datasets())
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"data make throughput, median of {args.runs} runs, {args.workers or cores} worker(s) on {cores} cores")
    print(f"{'dataset':<24}{'32 px img/s':>12}{'per CPU-s':>11}{'1024 px img/s':>15}{'per CPU-s':>11}")
    for name in args.datasets:
        small, small_cpu = images_per_second(name, args.n_small, 32, args.runs, args.workers)
        large, large_cpu = images_per_second(name, args.n_large, 1024, args.runs, args.workers)
        print(f"{name:<24}{small:>12,.0f}{small_cpu:>11,.0f}{large:>15,.1f}{large_cpu:>11,.2f}", flush=True)


if __name__ == "__main__":
    main()
