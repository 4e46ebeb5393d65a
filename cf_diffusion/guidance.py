"""How hard an edit is guided: one guidance weight per edited image, from per-factor weights.

The pipeline regenerates with `eps = eps_ref + w (eps_cf - eps_ref)`. For a discrete factor, w > 1 sharpens the
model's commitment to the new level, which a small model otherwise only half makes. For a continuous factor the
conditional branch already points at the requested value, and w > 1 extrapolates past it (BENCHMARKS.md, "Edit
quality of the shipped colored-bars model" and "How the editing settings were chosen"). So by default discrete
factors are guided at `DISCRETE_GUIDANCE` and continuous ones at `CONTINUOUS_GUIDANCE`; an image's weight is the
largest weight among the sources of its change: the changed factors no other changed factor is an ancestor of
(descendants change under their source's weight, so `{intensity: 1.5}` guides do(intensity) harder without touching
do(thickness), which changes intensity as a descendant). A
model can carry its own weights, chosen for it and saved with it (the pipeline's `default_guidance_scale`): they
replace the defaults by kind, and a call's `guidance_scale` replaces both.
"""

from collections.abc import Mapping

import torch

from cf_diffusion.editing_defaults import CONTINUOUS_GUIDANCE, DISCRETE_GUIDANCE
from cf_diffusion.factors import FactorSchema
from cf_diffusion.graph import CausalGraph

GuidanceScale = float | Mapping[str, float] | None


def is_weight(w: object) -> bool:
    """Whether `w` is a valid guidance weight: a number (not a bool) >= 0."""
    return not isinstance(w, bool) and isinstance(w, int | float) and w >= 0


def factor_weights(
    schema: FactorSchema, guidance_scale: GuidanceScale, defaults: GuidanceScale = None
) -> dict[str, float]:
    """The guidance weight of each factor: by kind, replaced by the model's `defaults`, replaced by `guidance_scale`.

    Args:
        schema: The model's factors.
        guidance_scale: None (the model's defaults), one number for every factor, or `{factor: w}` (the other
            factors keep their default).
        defaults: The model's own weights, in the same forms (None: the weights by kind).

    Returns:
        Factor name -> w >= 0.

    Raises:
        ValueError: On a negative or non-numeric weight, or an unknown factor name.
    """
    weights = {f.name: DISCRETE_GUIDANCE if f.is_discrete else CONTINUOUS_GUIDANCE for f in schema}
    weights.update(_given_weights(schema, defaults, "default_guidance_scale"))
    weights.update(_given_weights(schema, guidance_scale, "guidance_scale"))
    return weights


def check_weights(guidance_scale: GuidanceScale, what: str = "guidance_scale") -> None:
    """Checks the form of `guidance_scale` without a schema: None, a number >= 0, or a mapping to such numbers.

    Raises:
        ValueError: Naming `what`, the bad weight and, in a mapping, its factor.
    """
    if guidance_scale is None:
        return
    given = guidance_scale.items() if isinstance(guidance_scale, Mapping) else [(None, guidance_scale)]
    for name, w in given:
        if not is_weight(w):
            where = "" if name is None else f" for {name!r}"
            raise ValueError(f"{what} must be a number >= 0 (or a dict of them), got {w!r}{where}")


def check_fraction(value: object, what: str) -> None:
    """Checks a fraction of something (`guidance_cutoff`, a mask threshold): a number (not a bool) in [0, 1].

    Raises:
        ValueError: Naming `what` and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")


def _given_weights(schema: FactorSchema, guidance_scale: GuidanceScale, what: str) -> dict[str, float]:
    """The weights `guidance_scale` sets, checked (`what` names it in errors)."""
    check_weights(guidance_scale, what)
    if guidance_scale is None:
        return {}
    if not isinstance(guidance_scale, Mapping):
        return {name: float(guidance_scale) for name in schema.names}
    unknown = [name for name in guidance_scale if name not in schema.names]
    if unknown:
        raise ValueError(f"{what} names unknown factor(s) {unknown}; the model's factors are {schema.names}")
    return {name: float(w) for name, w in guidance_scale.items()}


def change_sources(graph: CausalGraph, names: list[str], changed: torch.Tensor) -> torch.Tensor:
    """The changed factors that no other changed factor is an ancestor of: bool Tensor[N, F].

    Args:
        graph: The causal graph over the factors.
        names: The factor names, in the columns' order.
        changed: bool Tensor[N, F], which factors of each image the edit changes.
    """
    ancestors = {name: graph.ancestors(name) for name in names}
    ancestry = torch.tensor([[other in ancestors[name] for other in names] for name in names], device=changed.device)
    has_changed_ancestor = (changed[:, None, :] & ancestry[None]).any(dim=2)
    return changed & ~has_changed_ancestor


def edit_guidance(
    schema: FactorSchema, guidance_scale: GuidanceScale, changed: torch.Tensor, defaults: GuidanceScale = None
) -> torch.Tensor:
    """Each edited image's guidance weight: the largest weight of the sources of its change (1 if none).

    Args:
        schema: The model's factors.
        guidance_scale: As for `factor_weights`.
        changed: bool Tensor[N, F], the sources of each image's change (`change_sources`).
        defaults: The model's own weights, as for `factor_weights`.

    Returns:
        float32 Tensor[N] on `changed`'s device.
    """
    weights = factor_weights(schema, guidance_scale, defaults)
    per_factor = torch.tensor([weights[name] for name in schema.names], device=changed.device)
    largest = torch.where(changed, per_factor, torch.full_like(per_factor, float("-inf"))).amax(dim=1)
    return torch.where(changed.any(dim=1), largest, torch.ones_like(largest))
