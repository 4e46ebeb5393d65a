"""cf-diffusion: causal counterfactual image editing with diffusers.

Importing the package also registers `CounterfactualDiffusionPipeline` with diffusers, so a saved pipeline folder
loads through the generic `DiffusionPipeline.from_pretrained` as well.
"""

from cf_diffusion.conditioning import FactorEncoder
from cf_diffusion.factors import Factor, FactorSchema, UnknownFactorError
from cf_diffusion.graph import CausalGraph
from cf_diffusion.pipelines import CounterfactualDiffusionPipeline, CounterfactualPipelineOutput
from cf_diffusion.predictor import FactorPredictor
from cf_diffusion.scm import NeuralCausalModel
from cf_diffusion.scm.bounds import Bounds, counterfactual_bounds

__version__ = "0.1.0"

__all__ = [
    "Bounds",
    "CausalGraph",
    "CounterfactualDiffusionPipeline",
    "CounterfactualPipelineOutput",
    "Factor",
    "FactorEncoder",
    "FactorPredictor",
    "FactorSchema",
    "NeuralCausalModel",
    "UnknownFactorError",
    "counterfactual_bounds",
]
