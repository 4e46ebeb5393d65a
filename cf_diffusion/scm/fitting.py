"""Fitting a NeuralCausalModel: maximum likelihood over a label table, checkpointed and resumed exactly.

`FitMixin` holds the fitting methods of `cf_diffusion.scm.ncm.NeuralCausalModel` (mixed into it, they use its
mechanisms, schema and likelihood).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .counts import ObservationalCounts


class FitMixin:
    """`NeuralCausalModel.fit` and the state it checkpoints and resumes from."""

    def fit(
        self,
        table: Any,
        num_steps: int = 2000,
        batch_size: int = 1024,
        lr: float = 3e-3,
        generator: torch.Generator | None = None,
        show_progress: bool = True,
        checkpoint: Callable[[int, dict], None] | None = None,
        checkpoint_steps: int = 0,
        resume: dict | None = None,
    ) -> list[float]:
        """Fit every mechanism by maximum likelihood (Adam, cosine-decayed learning rate, minibatches).

        Confounder latents are marginalised by the importance-weighted likelihood (module doc). Continuous
        factors without a range get it from the table (`schema.with_ranges`), and the completed schema is
        stored in the config.

        A fit can be checkpointed and resumed exactly: `checkpoint(step, state)` is called every `checkpoint_steps`
        steps and after the last one, with the fit's whole state (weights, optimiser, schedule, the generator's state,
        the losses so far: nested dicts of tensors and JSON values, copies); a fresh model given the same table,
        settings and generator, and `resume=state`, continues from that step and ends bit-identical to a fit that
        was never interrupted.

        Args:
            table: Observed rows: dict of columns (or DataFrame), one column per factor.
            num_steps: Optimiser steps.
            batch_size: Rows per step (sampled with replacement).
            lr: Peak learning rate.
            generator: Random generator for minibatches and latent samples.
            show_progress: Show a tqdm progress bar.
            checkpoint: Called as `checkpoint(step, state)` to save the fit's state (None: never).
            checkpoint_steps: Steps between checkpoints (0: only after the last step).
            resume: A state `checkpoint` was given, to continue that fit from its step.

        Returns:
            The loss (mean negative log-likelihood per row, raw units) of every step (resumed: from the first).

        Raises:
            ValueError: On bad settings, an empty table, or a `resume` state of a fit with other settings.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {num_steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if any(
            not self._schema[n].is_discrete and None in (self._schema[n].low, self._schema[n].high)
            for n in self._order
        ):
            self._schema = self._schema.with_ranges(table)
            self.register_to_config(schema=self._schema.to_dict())
        values = self._values(table)
        n = len(values[self._order[0]])
        if n == 0:
            raise ValueError("table has no rows; fit needs at least one")
        self.observational_counts, self.counts_unavailable = ObservationalCounts.from_table(self._schema, values), None
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps)
        settings = {"num_steps": num_steps, "batch_size": batch_size, "lr": lr, "rows": n}
        losses = [] if resume is None else self._load_fit_state(resume, settings, optimizer, scheduler, generator)
        self.train()
        progress = tqdm(
            range(len(losses), num_steps),
            initial=len(losses),
            total=num_steps,
            desc="fit NeuralCausalModel",
            disable=not show_progress,
        )
        for step in progress:
            rows = self._randint(n, batch_size, generator)
            batch = {name: value[rows] for name, value in values.items()}
            loss = -self._log_likelihood(batch, self.config.num_importance, generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            progress.set_postfix(nll=f"{losses[-1]:.4f}", refresh=False)
            done = step + 1
            if checkpoint is not None and (done == num_steps or (checkpoint_steps and done % checkpoint_steps == 0)):
                checkpoint(done, self._fit_state(settings, optimizer, scheduler, generator, losses))
        self.eval()
        return losses

    def _fit_state(self, settings: dict, optimizer, scheduler, generator: torch.Generator | None, losses) -> dict:
        """A copy of everything a fit needs to continue exactly (see `fit`)."""
        rng = generator.get_state() if generator is not None else torch.get_rng_state()
        return {
            "model": {key: value.detach().clone() for key, value in self.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": copy.deepcopy(scheduler.state_dict()),
            "rng": rng.clone(),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "settings": dict(settings),
        }

    def _load_fit_state(
        self, state: dict, settings: dict, optimizer, scheduler, generator: torch.Generator | None
    ) -> list[float]:
        """Restores a `_fit_state` into this model, the optimiser, the schedule and the generator; returns the losses.

        Raises:
            ValueError: When the state belongs to a fit with other settings (steps, batch size, rate, rows).
        """
        saved = state["settings"]
        changed = sorted(key for key in settings if saved.get(key) != settings[key])
        if changed:
            pairs = ", ".join(f"{key}: {saved.get(key)!r} -> {settings[key]!r}" for key in changed)
            raise ValueError(f"cannot resume the causal model's fit: it was started with other settings ({pairs})")
        self.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if generator is not None:
            generator.set_state(state["rng"])
        else:
            torch.set_rng_state(state["rng"])
        return state["losses"].tolist()
