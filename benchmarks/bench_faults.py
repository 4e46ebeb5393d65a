"""Fault benchmark: kill -9 a small training run and a batch edit at random moments, resume each, count the damage.

Run: `python benchmarks/bench_faults.py --kills 3 --edit-kills 2` (the defaults; each kill costs a few CLI starts).

Training: a tiny pixel-space colored-bars recipe (the scm and predictor stages, a few hundred steps,
`checkpointing_steps` small, and a two-step unet stage) runs as `cf-diffusion train` in a child process, which is
killed (SIGKILL) after a random delay, then resumed with `--resume_from_checkpoint latest` until every stage is DONE
and the assembled pipeline folder loads. Edits: `cf-diffusion edit
--input-dir` over a few images, killed the same way, then re-run (complete outputs are skipped) until it finishes.

Prints one table: runs, kills (and how many struck while the pipeline was being assembled), runs that resumed to
the end with weights equal to an uninterrupted run's, the most steps a kill cost (the step reached, read off the
progress bar, minus the step resumed from), orphan temporary files left (`.tmp-checkpoint-*`, `*.tmp`, `*.old`), and
outputs lost or truncated.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from safetensors.torch import load_file

from cf_diffusion.outputs import is_complete_image
from cf_diffusion.pipelines import CounterfactualDiffusionPipeline

STAGES = ("scm", "predictor", "unet")


def recipe(output_dir: Path, steps: int, checkpointing_steps: int) -> dict:
    """A tiny pixel-space recipe whose scm and predictor stages run `steps` steps each."""
    return {
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"dataset": "colored-bars", "num_images": 200, "resolution": 16},
        "training": {"checkpointing_steps": checkpointing_steps, "checkpoints_total_limit": 2, "validation_steps": 0},
        "scm": {"num_steps": steps, "batch_size": 64, "hidden_dim": 8},
        "vae": None,
        "unet": {
            "block_out_channels": [16, 32],
            "layers_per_block": 1,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
            "num_steps": 2,
            "batch_size": 8,
        },
        "predictor": {"block_out_channels": [8, 16], "num_steps": steps, "batch_size": 8},
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cf_diffusion.cli", *args]


def run_killed(command: list[str], delay: float) -> tuple[bool, str]:
    """Runs `command`, SIGKILLs it after `delay` seconds unless it ended; (killed, stderr)."""
    env = {**os.environ, "CF_DIFFUSION_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            process.wait(delay)
            killed = False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
        err.seek(0)
        return killed, err.read()


def last_step(stderr: str) -> int | None:
    """The last step a training progress bar showed (`stage: ... 135/300`)."""
    found = re.findall(r"(?:scm|predictor|fit NeuralCausalModel)[^\r\n]*?\|\s*(\d+)/\d+", stderr)
    return int(found[-1]) if found else None


def resumed_step(stderr: str) -> int | None:
    found = re.findall(r"resumed from \S+ at step (\d+)", stderr)
    return int(found[0]) if found else None


def orphans(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-checkpoint-") or p.name.endswith((".tmp", ".old"))]


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    found = {}
    for stage, model in (("scm", "scm"), ("predictor", "factor_predictor")):
        for key, value in load_file(
            output_dir / "stages" / stage / model / "diffusion_pytorch_model.safetensors"
        ).items():
            found[f"{stage}.{key}"] = value
    return found


def stages_done(output_dir: Path) -> bool:
    return all((output_dir / "stages" / stage / "DONE").is_file() for stage in STAGES)


def finished(output_dir: Path) -> bool:
    """Every stage done and the assembled pipeline folder whole (it loads)."""
    if not stages_done(output_dir) or not (output_dir / "pipeline").is_dir():
        return False
    try:
        CounterfactualDiffusionPipeline.from_pretrained(output_dir / "pipeline")
    except (OSError, ValueError):
        return False
    return True


def train_once(config: Path, rng: random.Random, window: float) -> dict:
    """One training run killed once at a random moment of `window` seconds, then resumed until finished."""
    output_dir = Path(yaml.safe_load(config.read_text())["output_dir"])
    train = cli("train", "--config", str(config), "--stages", *STAGES)
    killed, stderr = run_killed(train, rng.uniform(0, window))
    in_assembly = killed and stages_done(output_dir)
    reached, lost, first = last_step(stderr), 0, True
    while not finished(output_dir):
        _, stderr = run_killed([*train, "--resume_from_checkpoint", "latest"], 3600)
        start = resumed_step(stderr)
        if first and reached is not None and start is not None:
            lost = max(0, reached - start)
        first = False
    return {"killed": killed, "in_assembly": in_assembly, "lost": lost, "orphans": len(orphans(output_dir))}


def edit_once(images: Path, out: Path, rng: random.Random, window: float) -> dict:
    """One batch edit killed at a random moment of `window` seconds, then re-run until it finishes."""
    edit = cli("edit", "--input-dir", str(images), "--output-dir", str(out), "--do", "color=green", "--steps", "5")
    run_killed(edit, rng.uniform(0, window))
    code = subprocess.run(edit, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    expected = [out / f"{p.stem}.png" for p in sorted(images.glob("*.png"))]
    bad = [p for p in expected if not is_complete_image(p)]
    return {"finished": code == 0, "bad": len(bad), "orphans": len(orphans(out))}


def measure_window(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="training runs, each killed once at a random moment")
    parser.add_argument("--edit-kills", type=int, default=2, help="batch edits, each killed once")
    parser.add_argument("--steps", type=int, default=200, help="steps of each training stage")
    parser.add_argument("--checkpointing-steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=6, help="images in the batch edit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    diffusers_logging.disable_progress_bar()  # the completeness checks load the pipeline many times
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bench_faults-"))

    reference = root / "reference.yaml"
    reference.write_text(yaml.safe_dump(recipe(root / "reference", args.steps, args.checkpointing_steps)))
    window = measure_window(cli("train", "--config", str(reference), "--stages", *STAGES))
    expected = weights(root / "reference")
    runs = []
    for k in range(args.kills):
        config = root / f"run{k}.yaml"
        config.write_text(yaml.safe_dump(recipe(root / f"run{k}", args.steps, args.checkpointing_steps)))
        result = train_once(config, rng, window)
        got = weights(root / f"run{k}")
        result["equal"] = got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
        runs.append(result)

    images = root / "images"
    images.mkdir()
    for i in range(args.images):
        Image.new("RGB", (16, 16), (200, 30 + 20 * i, 30)).save(images / f"img{i}.png")
    edit_window = measure_window(
        cli(
            "edit", "--input-dir", str(images), "--output-dir", str(root / "e0"), "--do", "color=green", "--steps", "5"
        )
    )
    edits = [edit_once(images, root / f"edit{k}", rng, edit_window) for k in range(args.edit_kills)]

    print(
        "| what | runs (killed) | resumed to the end (equal weights) | steps lost (max) | orphan temp files | "
        "outputs lost or truncated |"
    )
    print("|---|---|---|---|---|---|")
    killed, equal = sum(r["killed"] for r in runs), sum(r["equal"] for r in runs)
    in_assembly = sum(r["in_assembly"] for r in runs)
    lost, left = max((r["lost"] for r in runs), default=0), sum(r["orphans"] for r in runs)
    print(
        f"| training ({args.steps} steps x {len(STAGES)} stages, checkpoints every {args.checkpointing_steps}) | "
        f"{len(runs)} ({killed}, {in_assembly} while assembling) | {equal} | {lost} | {left} | - |"
    )
    print(
        f"| batch edit ({args.images} images) | {len(edits)} | {sum(e['finished'] for e in edits)} | - | "
        f"{sum(e['orphans'] for e in edits)} | {sum(e['bad'] for e in edits)} |"
    )
    print(f"(work folder {root}; kill window {window:.0f} s training, {edit_window:.0f} s edit)")


if __name__ == "__main__":
    main()
