"""The learned structural causal model (neural causal model) over labelled factors.

The names are imported on first use, so `cf_diffusion.scm.bounds` (the linear programmes) loads without diffusers.
`counterfactual_bounds` lives in `cf_diffusion.scm.bounds` and is imported from there.
"""

from cf_diffusion.lazy import lazy_exports

_EXPORTS = {"Exogenous": "cf_diffusion.scm.exogenous", "NeuralCausalModel": "cf_diffusion.scm.ncm"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
