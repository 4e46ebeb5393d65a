"""The editing settings' names and defaults: the abductions, guidance references and preservation modes an edit
accepts, and what the pipeline, the command, the evaluation and a recipe's `editing:` section use when a call does
not say. Plain values only, so the command's parser and the recipe checks import no torch."""

ABDUCTIONS = ("ddim", "ddpm")
"""How the image noise is abducted: DDIM inversion or edit-friendly DDPM noise maps (`cf_diffusion.inversion`)."""
DEFAULT_ABDUCTION = "ddim"
GUIDANCE_REFERENCES = ("factual", "null")
"""The reference branch of the editing guidance: the factual conditioning, or the counterfactual one with the factors
the edit changes unknown ("null")."""
DEFAULT_GUIDANCE_REFERENCE = "factual"
PRESERVE_MODES = ("auto", "none")
"""`preserve=`: keep the input outside the region the intervention affects, or let the whole image change."""
DISCRETE_GUIDANCE = 3.0
"""An edit's guidance weight for a discrete factor when neither the call nor the model gives one (`guidance`)."""
CONTINUOUS_GUIDANCE = 1.0
"""An edit's guidance weight for a continuous factor when neither the call nor the model gives one."""
DEFAULT_GENERATE_GUIDANCE = 3.0
"""`generate`'s classifier-free guidance over all factors."""
DEFAULT_NUM_INFERENCE_STEPS = 50
DEFAULT_STRENGTH = 1.0
"""Fraction of the schedule the abduction inverts (1: up to pure noise)."""
DEFAULT_SDEDIT_STRENGTH = 0.6
"""Fraction of the schedule the `sdedit` evaluation baseline re-noises and denoises."""
DEFAULT_TILE_BATCH_SIZE = 8
"""Tiles per UNet call for images larger than the model's size."""
# lower than DiffEdit's 0.5, which keeps only the strongest effect and leaves its weaker parts (a lamp's shadow)
# unmasked (BENCHMARKS.md, "The shadow over 8 scenes, by mask threshold"; benchmarks/bench_shadow.py)
DEFAULT_MASK_THRESHOLD = 0.1
"""Fraction of the largest effect from which `preserve="auto"` masks a region."""
DEFAULT_PREDICTOR_GUIDANCE = 0.0
"""The pipeline's `predictor_guidance` (0: none)."""
DEFAULT_KEEP_GUIDANCE = 0.0
"""The pipeline's `keep_guidance` (0: none)."""
DEFAULT_GUIDANCE_CUTOFF = 1.0
"""The pipeline's `guidance_cutoff`: the fraction of the prediction steps guided by the edit's weight (1: all)."""
