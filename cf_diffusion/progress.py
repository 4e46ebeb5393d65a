"""Whether long phases show progress bars (one bar per phase: a training stage, `data make`'s rendering, an edit's
abduction and prediction, an evaluation).

Library calls keep their own defaults. The `cf-diffusion` command decides once, in `main`: bars on a terminal, none
with `--quiet` or when stderr (where bars are drawn) is not a terminal, and says so in the environment variable
`CF_DIFFUSION_PROGRESS` ("1" or "0"), which the processes it starts (`accelerate launch`) inherit. Set beforehand, the
variable decides instead of the terminal test (`--quiet` still wins).
"""

import os
import sys

ENV = "CF_DIFFUSION_PROGRESS"


def progress_enabled(default: bool) -> bool:
    """Whether to show progress bars: as `CF_DIFFUSION_PROGRESS` says when it is set, else `default`."""
    value = os.environ.get(ENV)
    return default if value is None else value == "1"


def set_progress(quiet: bool) -> bool:
    """Decides for this process and its children whether bars are shown (not with `quiet`, not when stderr is not a
    terminal, unless `CF_DIFFUSION_PROGRESS` was already set: "1" shows them anywhere, "0" never) and returns the
    decision; diffusers' own bars follow it."""
    from diffusers.utils import logging

    forced = os.environ.get(ENV)
    shown = not quiet and (forced == "1" or (forced != "0" and sys.stderr.isatty()))
    os.environ[ENV] = "1" if shown else "0"
    logging.enable_progress_bar() if shown else logging.disable_progress_bar()
    return shown
