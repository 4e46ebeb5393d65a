"""Resumable training state in safetensors + JSON (no pickle), written atomically.

A checkpoint is a folder `checkpoint-{step}` holding `state.safetensors` (every tensor: model weights, optimizer
moments, EMA shadow weights, the CPU's and CUDA devices' RNG states) and `state.json` (everything else: step,
optimizer hyper-parameters). It is written to a temporary folder and renamed into place, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _flatten(prefix: str, value, tensors: dict, meta: dict) -> None:
    """Splits a nested state dict into tensors (by dotted key) and JSON-able leaves."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
    elif isinstance(value, dict):
        meta[prefix] = {"__dict__": [str(k) for k in value], "int_keys": [isinstance(k, int) for k in value]}
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, tensors, meta)
    elif isinstance(value, (list, tuple)):
        meta[prefix] = {"__list__": len(value)}
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, tensors, meta)
    else:
        meta[prefix] = {"__value__": value}


def _unflatten(prefix: str, tensors: dict, meta: dict):
    if prefix in tensors:
        return tensors[prefix]
    node = meta[prefix]
    if "__value__" in node:
        return node["__value__"]
    if "__list__" in node:
        return [_unflatten(f"{prefix}.{i}", tensors, meta) for i in range(node["__list__"])]
    return {
        (int(k) if is_int else k): _unflatten(f"{prefix}.{k}", tensors, meta)
        for k, is_int in zip(node["__dict__"], node["int_keys"], strict=True)
    }


def save_checkpoint(output_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Writes `state` (nested dicts/lists of tensors and JSON values) as `output_dir/checkpoint-{step}` atomically.

    Args:
        output_dir: the run's checkpoint folder.
        step: the global step the state belongs to.
        state: e.g. {"unet": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}.
        keep: how many of the newest checkpoints to keep; older ones are deleted after the new one is in place.

    Returns:
        The checkpoint folder.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = {}, {}
    _flatten("state", state, tensors, meta)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "meta": meta}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Deletes the temporary folders of checkpoint writes that never finished (a run killed mid-write) and returns
    them. Only the main process writes checkpoints, so any such folder left when a stage starts is an orphan."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    orphans = sorted(p for p in output_dir.iterdir() if p.name.startswith(".tmp-checkpoint-"))
    for orphan in orphans:
        shutil.rmtree(orphan, ignore_errors=True)
    return orphans


def check_fresh_start(output_dir: str | Path, resume: str | None) -> None:
    """Refuses a fresh run (`resume` None) over the checkpoints of an earlier run: its higher step numbers would
    make rotation delete the new checkpoints, and "latest" would later resume the old run.

    Raises:
        ValueError: When `resume` is None and `output_dir` holds checkpoints.
    """
    found = list_checkpoints(output_dir) if resume is None else []
    if found:
        raise ValueError(
            f"{str(output_dir)!r} holds checkpoints of an earlier run (up to {found[-1].name}): pass "
            "--resume_from_checkpoint latest to continue it, or delete that folder to start afresh."
        )


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: str | Path, resume: str | None) -> Path | None:
    """Maps `--resume_from_checkpoint` ("latest", a folder, or None) to a checkpoint folder (None: start fresh)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.safetensors").is_file():
        raise ValueError(f"resume_from_checkpoint {resume!r} is not a checkpoint folder (no state.safetensors).")
    return path


def starting_checkpoint(output_dir: str | Path, resume: str | None, accelerator) -> Path | None:
    """The checkpoint a stage starts from (None: fresh), agreed by every process before any of them writes one.

    Each process refuses a fresh run over an earlier run's checkpoints (`check_fresh_start`) and resolves `resume`;
    the main process removes unfinished writes (`remove_partial_checkpoints`); then all wait for each other, so the
    main process's first checkpoint of this run cannot be taken by a slower process for an earlier run's.

    Args:
        output_dir: The stage's checkpoint folder.
        resume: "latest", a checkpoint folder, or None.
        accelerator: The run's `accelerate.Accelerator`.
    """
    check_fresh_start(output_dir, resume)
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir)
    path = resolve_checkpoint(output_dir, resume)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(path: str | Path) -> tuple[int, dict]:
    """Reads a checkpoint folder back: (step, state) with the same nesting that was saved."""
    path = Path(path)
    info = json.loads((path / "state.json").read_text())
    return info["step"], _unflatten("state", load_file(str(path / "state.safetensors")), info["meta"])
