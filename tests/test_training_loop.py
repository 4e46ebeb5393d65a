"""The shared step loop of the training stages: what a checkpoint keeps of the random number generators, and the
progress notes it logs."""

import logging

import torch
from accelerate import Accelerator

from cf_diffusion.training import loop
from cf_diffusion.training.checkpoint import load_checkpoint, save_checkpoint

DEVICE_STATES = [torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)]


def tiny_stage() -> loop.Stage:
    model = torch.nn.Linear(2, 1)
    return loop.Stage("tiny", {"model": model}, torch.optim.SGD(model.parameters(), lr=0.1))


def fake_cuda(monkeypatch, restored: list) -> None:
    """Two CUDA devices whose generators are in `DEVICE_STATES`; restoring them appends to `restored`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: DEVICE_STATES)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)


def test_a_checkpoint_keeps_and_restores_the_cpu_and_cuda_rng_states(tmp_path, monkeypatch):
    accelerator, stage, restored = Accelerator(cpu=True), tiny_stage(), []
    fake_cuda(monkeypatch, restored)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path, 1, stage.state(accelerator))
    expected = torch.rand(3)
    _, state = load_checkpoint(path)
    assert [s.tolist() for s in state["cuda_rng"]] == [s.tolist() for s in DEVICE_STATES]
    stage.load_state(state, accelerator)
    assert torch.equal(torch.rand(3), expected)
    assert [[s.tolist() for s in states] for states in restored] == [[s.tolist() for s in DEVICE_STATES]]


def test_without_cuda_only_the_cpu_rng_is_kept_and_such_checkpoints_load_on_cuda(tmp_path, monkeypatch):
    accelerator, stage, restored = Accelerator(cpu=True), tiny_stage(), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path, 1, stage.state(accelerator))
    expected = torch.rand(3)
    _, state = load_checkpoint(path)
    assert "cuda_rng" not in state
    fake_cuda(monkeypatch, restored)
    stage.load_state(state, accelerator)
    assert torch.equal(torch.rand(3), expected) and restored == []


def test_resuming_is_a_progress_note_on_stderr(tmp_path, capsys):
    accelerator, stage = Accelerator(cpu=True), tiny_stage()
    config = {
        "output_dir": str(tmp_path),
        "training": {"checkpointing_steps": 1, "checkpoints_total_limit": 2, "validation_steps": 0},
    }
    model = stage.models["model"]

    def loss_fn(micro_step: int) -> torch.Tensor:
        return model(torch.ones(1, 2)).square().sum()

    notes = logging.getLogger("cf_diffusion.training")
    loop.show_progress_notes()
    try:
        loop.run_stage(stage, accelerator, loss_fn, 2, config)
        assert "resumed" not in capsys.readouterr().err
        assert loop.run_stage(stage, accelerator, loss_fn, 3, config, "latest") == 2
    finally:
        notes.handlers.clear()
        notes.setLevel(logging.NOTSET)
    assert (
        f"[tiny] resumed from {tmp_path / 'checkpoints' / 'tiny' / 'checkpoint-2'} at step 2"
        in capsys.readouterr().err
    )
