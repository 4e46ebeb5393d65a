"""cf-diffusion: causal counterfactual image editing with diffusers.

The public names are imported on first use, so the causal core (`cf_diffusion.graph`) loads without diffusers.
Importing `cf_diffusion.pipelines` (or using `cf_diffusion.CounterfactualDiffusionPipeline`) registers the
pipelines with diffusers, so a saved pipeline folder loads through the generic `DiffusionPipeline.from_pretrained`
as well.
"""

from cf_diffusion.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Bounds": "cf_diffusion.scm.bounds",
    "CausalGraph": "cf_diffusion.graph",
    "CounterfactualDiffusionPipeline": "cf_diffusion.pipelines",
    "CounterfactualPipelineOutput": "cf_diffusion.pipelines",
    "Factor": "cf_diffusion.factors",
    "FactorEncoder": "cf_diffusion.conditioning",
    "FactorGenerationPipeline": "cf_diffusion.pipelines",
    "FactorPredictor": "cf_diffusion.predictor",
    "FactorSchema": "cf_diffusion.factors",
    "NeuralCausalModel": "cf_diffusion.scm.ncm",
    "UnknownFactorError": "cf_diffusion.factors",
    "counterfactual_bounds": "cf_diffusion.scm.bounds",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
