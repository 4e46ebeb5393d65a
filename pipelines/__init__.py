"""Diffusers pipelines of cf-diffusion (installed as `cf_diffusion.pipelines`)."""

import diffusers

from .output import CounterfactualPipelineOutput, GenerationPipelineOutput, InversionOutput
from .pipeline_counterfactual import CounterfactualDiffusionPipeline

# `DiffusionPipeline.from_pretrained` looks the pipeline class named in model_index.json up in the `diffusers`
# namespace; registering ours there makes a saved pipeline loadable through the generic entry point too.
if not hasattr(diffusers, CounterfactualDiffusionPipeline.__name__):
    setattr(diffusers, CounterfactualDiffusionPipeline.__name__, CounterfactualDiffusionPipeline)

__all__ = [
    "CounterfactualDiffusionPipeline",
    "CounterfactualPipelineOutput",
    "GenerationPipelineOutput",
    "InversionOutput",
]
