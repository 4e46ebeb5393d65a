"""Diffusers pipelines of cf-diffusion (installed as `cf_diffusion.pipelines`)."""

import diffusers

from .output import CounterfactualPipelineOutput, GenerationPipelineOutput, InversionOutput
from .pipeline_counterfactual import CounterfactualDiffusionPipeline
from .pipeline_generation import FactorGenerationPipeline

# `DiffusionPipeline.from_pretrained` resolves model_index.json's `_class_name` with `getattr(diffusers, name)`
# (diffusers 0.42 `_get_pipeline_class`); its only other route, a `[file, class]` name, needs a copy of this code as
# a .py file in every saved folder. So the classes are registered there when this package is imported (a plain
# `import cf_diffusion` imports them lazily, on first use of a pipeline).
for _pipeline in (CounterfactualDiffusionPipeline, FactorGenerationPipeline):
    if not hasattr(diffusers, _pipeline.__name__):
        setattr(diffusers, _pipeline.__name__, _pipeline)

__all__ = [
    "CounterfactualDiffusionPipeline",
    "CounterfactualPipelineOutput",
    "FactorGenerationPipeline",
    "GenerationPipelineOutput",
    "InversionOutput",
]
