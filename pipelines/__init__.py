"""Diffusers pipelines of cf-diffusion (installed as `cf_diffusion.pipelines`)."""

import diffusers

from .output import CounterfactualPipelineOutput, GenerationPipelineOutput, InversionOutput
from .pipeline_counterfactual import CounterfactualDiffusionPipeline

# `DiffusionPipeline.from_pretrained` resolves model_index.json's `_class_name` with `getattr(diffusers, name)`
# (diffusers 0.42 `_get_pipeline_class`); its only other route, a `[file, class]` name, needs a copy of this code as
# a .py file in every saved folder. So the class is registered there when this package is imported (a plain
# `import cf_diffusion` imports it lazily, on first use of the pipeline).
if not hasattr(diffusers, CounterfactualDiffusionPipeline.__name__):
    setattr(diffusers, CounterfactualDiffusionPipeline.__name__, CounterfactualDiffusionPipeline)

__all__ = [
    "CounterfactualDiffusionPipeline",
    "CounterfactualPipelineOutput",
    "GenerationPipelineOutput",
    "InversionOutput",
]
