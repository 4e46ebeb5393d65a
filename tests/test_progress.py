"""Progress bars: one per long phase on a terminal, none with --quiet or off a terminal; evaluate's quick defaults."""

import sys

import pytest

from cf_diffusion import cli, progress
from cf_diffusion.cli import build_parser, main
from cf_diffusion.data import make_dataset


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv(progress.ENV, "")  # restored after the test, whatever main() sets
    return monkeypatch


@pytest.mark.parametrize(("quiet", "tty", "shown"), [(False, True, True), (True, True, False), (False, False, False)])
def test_bars_show_on_a_terminal_unless_quiet(env, quiet, tty, shown):
    env.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    assert progress.set_progress(quiet) is shown
    assert progress.progress_enabled(not shown) is shown
    from cf_diffusion.models import load_pipeline

    assert load_pipeline("default")._progress_bar_config["disable"] is not shown


def test_every_command_takes_quiet():
    parser = build_parser()
    for argv in (
        ["data", "make", "colored-bars", "--n", "1", "--out", "o"],
        ["edit", "--do", "color=red"],
        ["train", "--config", "c.yaml"],
        ["generate"],
        ["demo"],
        ["evaluate", "--data", "colored-bars", "--out", "o"],
    ):
        assert parser.parse_args([*argv, "--quiet"]).quiet and not parser.parse_args(argv).quiet


def test_data_make_draws_one_bar_only_when_shown(env, tmp_path, capsys):
    for shown in ("1", "0"):
        env.setenv(progress.ENV, shown)
        make_dataset("colored-bars", 4, 16, tmp_path / shown, num_workers=1)
        assert ("data make colored-bars" in capsys.readouterr().err) is (shown == "1")


def test_evaluate_defaults_are_quick_and_full_runs_everything(env, tmp_path, monkeypatch):
    from cf_diffusion.evaluation import harness

    seen = []
    monkeypatch.setattr(harness, "evaluate", lambda pipe, config: seen.append(config))
    base = ["evaluate", "--data", "colored-bars", "--out", str(tmp_path / "eval"), "--quiet"]
    assert main(base) == 0 and main([*base, "--full"]) == 0
    assert main([*base, "--full", "--metrics", "realism", "--methods", "sdedit"]) == 0
    quick, full, chosen = seen
    assert (quick.metrics, quick.methods) == (list(cli.EVALUATE_QUICK_METRICS), list(cli.EVALUATE_QUICK_METHODS))
    assert (full.metrics, full.methods) == (list(harness.METRICS), list(harness.DEFAULT_METHODS))
    assert (chosen.metrics, chosen.methods) == (["realism"], ["sdedit"])
    assert quick.show_progress is False


def test_a_progress_variable_set_beforehand_decides_instead_of_the_terminal(env):
    env.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    env.setenv(progress.ENV, "1")
    assert progress.set_progress(False) is True
    assert progress.set_progress(True) is False
