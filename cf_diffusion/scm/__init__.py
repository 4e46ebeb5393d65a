"""The learned structural causal model (neural causal model) over labelled factors.

`counterfactual_bounds` lives in `cf_diffusion.scm.bounds` and is imported from there (not eagerly here).
"""

from .exogenous import Exogenous
from .ncm import NeuralCausalModel

__all__ = ["Exogenous", "NeuralCausalModel"]
