"""Abduction of the image noise U_I by inverting a diffusion sampler, and the samplers that replay it.

Two abductions, both pure functions of a noise-prediction function `model_fn(x, t, cond)`:

- DDIM inversion (`ddim_invert`): run the deterministic DDIM sampler backwards, from the clean sample up the noise
  levels. Approximate: the step from level s to t uses the model at `(x_s, t)` instead of `(x_t, t)`, so replaying it
  with `ddim_sample` returns the start point with an error that falls roughly as 1 / steps.
- Edit-friendly DDPM noise maps (`ddpm_noise_maps`, Huberman-Spiegelglas et al., "An Edit Friendly DDPM Noise
  Space", CVPR 2024): draw every `x_t` independently from `q(x_t | x_0)`, then solve for the noise added at each
  step so that the stochastic (eta = 1) sampler `ddpm_sample` lands exactly on the next `x_t`, and finally on `x_0`.
  Exact by construction, whatever the model.

All functions take the forward scheduler (a `DDIMScheduler`, after `set_timesteps`) and its timesteps (descending,
as `inference_timesteps` returns them), so the sampler's prediction type (epsilon, v-prediction, sample),
clipping and thresholding are exactly those of the scheduler's `step`. `strength` in (0, 1] keeps only the last
`strength` fraction of the schedule: inversion then stops, and sampling starts, at an intermediate noise level.
"""

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""`model_fn(x: Tensor[B, ...], t: Tensor[] (long), cond) -> Tensor[B, ...]`, the output the scheduler expects."""

Generator = torch.Generator | list[torch.Generator] | None


def inference_timesteps(
    scheduler: DDIMScheduler,
    num_inference_steps: int,
    strength: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sets the scheduler's timesteps and returns the last `strength` fraction of them.

    Args:
        scheduler: The forward scheduler; `set_timesteps(num_inference_steps)` is called on it.
        num_inference_steps: Steps of the full schedule.
        strength: Fraction in (0, 1] of the schedule to keep (rounded to whole steps), from its low-noise end.
        device: Where to put the timesteps.

    Returns:
        Tensor[S] of descending timesteps, S = round(num_inference_steps * strength).

    Raises:
        ValueError: If `num_inference_steps < 1`, `strength` is outside (0, 1], or it keeps no step.
    """
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    num_steps = min(round(num_inference_steps * strength), num_inference_steps)
    if num_steps < 1:
        raise ValueError(
            f"strength={strength} keeps no step of num_inference_steps={num_inference_steps}; "
            f"use strength >= {0.5 / num_inference_steps:.3g} or more steps"
        )
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps[num_inference_steps - num_steps :]


def inverse_scheduler_for(scheduler: DDIMScheduler) -> DDIMInverseScheduler:
    """The `DDIMInverseScheduler` matching a forward scheduler's config (its own defaults would clip samples)."""
    return DDIMInverseScheduler.from_config(scheduler.config)


def ddim_step(scheduler: DDIMScheduler, model_output: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM step from timestep `t` to the previous one: Tensor[B, ...]."""
    return scheduler.step(model_output, t, x, eta=0.0).prev_sample


def ddpm_step(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    t: torch.Tensor,
    x: torch.Tensor,
    noise_map: torch.Tensor,
) -> torch.Tensor:
    """One stochastic (eta = 1, i.e. DDPM) step with a given noise term instead of fresh noise.

    Args:
        scheduler: The forward scheduler.
        model_output: Tensor[B, ...], the model's output at `(x, t)`.
        t: The current timestep.
        x: Tensor[B, ...], the sample at `t`.
        noise_map: Tensor[B, ...], the term added to the step's posterior mean (sigma_t z_t in the paper).

    Returns:
        Tensor[B, ...]: `mu_theta(x, t) + noise_map`, the sample at the previous timestep.
    """
    mean = scheduler.step(model_output, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    return mean + noise_map


def ddim_invert(
    model_fn: ModelFn,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any,
    inverse_scheduler: DDIMInverseScheduler,
) -> torch.Tensor:
    """DDIM inversion of clean samples up to the first (noisiest) of `timesteps`.

    Args:
        model_fn: The model (call it with guidance 1: inversion reads the factual image under its own conditioning).
        x: Tensor[B, ...], clean samples (pixels or latents).
        timesteps: Tensor[S], descending timesteps from `inference_timesteps`.
        cond: Passed to `model_fn` unchanged.
        inverse_scheduler: `inverse_scheduler_for(scheduler)`, after `set_timesteps(num_inference_steps)` with the
            full schedule's number of steps.

    Returns:
        Tensor[S + 1, B, ...]: the trajectory in sampling order, `[x_{t_0}, ..., x_{t_{S-1}}, x]`; entry `i` is the
        sample at `timesteps[i]` and the last entry is the input.

    Raises:
        ValueError: If the inverse scheduler has no timesteps set.
    """
    if inverse_scheduler.num_inference_steps is None:
        raise ValueError("inverse_scheduler has no timesteps; call inverse_scheduler.set_timesteps(...) first")
    trajectory = [x]
    for t in timesteps.flip(0):
        x = inverse_scheduler.step(model_fn(x, t, cond), t, x).prev_sample
        trajectory.append(x)
    return torch.stack(trajectory[::-1])


def ddim_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any,
    scheduler: DDIMScheduler,
) -> torch.Tensor:
    """Deterministic DDIM sampling from `x` at `timesteps[0]` to a clean sample: Tensor[B, ...]."""
    for t in timesteps:
        x = ddim_step(scheduler, model_fn(x, t, cond), t, x)
    return x


def _randn_per_sample(num_steps: int, like: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Tensor[S, B, ...] standard normal noise; with a list of generators, sample b's noise comes from generator b."""
    if isinstance(generator, list):
        if len(generator) != like.shape[0]:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {like.shape[0]}; expected one per sample"
            )
        shape = (num_steps, *like.shape[1:])
        noise = [randn_tensor(shape, generator=g, device=like.device, dtype=like.dtype) for g in generator]
        return torch.stack(noise, dim=1)
    return randn_tensor((num_steps, *like.shape), generator=generator, device=like.device, dtype=like.dtype)


def ddpm_noise_maps(
    model_fn: ModelFn,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any,
    scheduler: DDIMScheduler,
    generator: Generator = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit-friendly DDPM noise maps of clean samples.

    Every `x_{t_i} = sqrt(a_i) x + sqrt(1 - a_i) n_i` is drawn with its own noise `n_i`; then, step by step, the
    noise term is solved from `x_{t_{i+1}} = mu_theta(x_{t_i}, t_i) + noise_maps[i]` (the last target is `x` itself)
    and `x_{t_{i+1}}` is recomputed from that equation, so `ddpm_sample` replays the trajectory bit for bit. The maps
    are stored unscaled (sigma_t z_t), which keeps the final step exact even where its sigma is 0.

    Args:
        model_fn: The model (call it with guidance 1).
        x: Tensor[B, ...], clean samples.
        timesteps: Tensor[S], descending timesteps from `inference_timesteps`.
        cond: Passed to `model_fn` unchanged.
        scheduler: The forward scheduler, after `set_timesteps`.
        generator: A generator, or a list of B (sample b's noise from generator b), or None.

    Returns:
        (trajectory Tensor[S + 1, B, ...] in sampling order, the last entry equal to `x` up to rounding;
        noise_maps Tensor[S, B, ...]).
    """
    noise = _randn_per_sample(len(timesteps), x, generator)
    targets = [scheduler.add_noise(x, noise[i], t.reshape(1)) for i, t in enumerate(timesteps)] + [x]
    sample = targets[0]
    trajectory, noise_maps = [sample], []
    for i, t in enumerate(timesteps):
        mean = ddpm_step(scheduler, model_fn(sample, t, cond), t, sample, torch.zeros_like(sample))
        noise_maps.append(targets[i + 1] - mean)
        sample = mean + noise_maps[-1]
        trajectory.append(sample)
    return torch.stack(trajectory), torch.stack(noise_maps)


def ddpm_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any,
    scheduler: DDIMScheduler,
    noise_maps: torch.Tensor,
) -> torch.Tensor:
    """DDPM sampling from `x` at `timesteps[0]` with given noise maps Tensor[S, B, ...]: Tensor[B, ...].

    Raises:
        ValueError: If there is not one noise map per timestep.
    """
    if len(noise_maps) != len(timesteps):
        raise ValueError(f"got {len(noise_maps)} noise maps for {len(timesteps)} timesteps; expected one per step")
    for t, noise_map in zip(timesteps, noise_maps, strict=True):
        x = ddpm_step(scheduler, model_fn(x, t, cond), t, x, noise_map)
    return x
