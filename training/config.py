"""Training recipes: a YAML file with one section per stage, checked against the defaults below.

Unknown keys are errors (a typo must not silently fall back to a default).
"""

import copy
import math
from pathlib import Path

import yaml

from cf_diffusion.editing_defaults import (
    ABDUCTIONS,
    DEFAULT_ABDUCTION,
    DEFAULT_GUIDANCE_CUTOFF,
    DEFAULT_KEEP_GUIDANCE,
    DEFAULT_PREDICTOR_GUIDANCE,
)
from cf_diffusion.guidance import check_fraction, check_weights

DEFAULTS: dict = {
    "output_dir": "runs/model",
    "seed": 0,
    "data": {
        "dataset": None,  # a procedural dataset name (cf_diffusion.data.get_dataset), or
        "path": None,  # a folder of labelled images (LabeledImageDataset)
        "format": "imagefolder",
        "graph": None,  # causal graph text; procedural datasets bring their own
        "num_images": 20000,
        "resolution": 32,
        "channels": 3,
        "factors": None,  # optional list of factor names to keep
        "skip_bad": False,
        "holdout": 0,  # a folder's last N rows stay out of training (`cf-diffusion evaluate --holdout N` edits them)
        # procedural datasets only: this share of the rows is rendered under interventions (training/data.py)
        "interventional_fraction": 0.0,
        # a continuous factor measured in the units the pixels scale in (a median or mean of pixel values, as
        # Morpho-MNIST's intensity): where a stage's `brightness_jitter` rescales a training image's brightness by s,
        # this factor's value is scaled by the same s and s is narrowed to keep it within its training range, so the
        # pair stays a row of the image's own mechanism (one observational data may lack: a dim thick digit)
        "brightness_factor": None,
    },
    "training": {
        "mixed_precision": "no",
        "gradient_accumulation_steps": 1,
        "checkpointing_steps": 250,
        "checkpoints_total_limit": 2,
        "validation_steps": 500,
        "report_to": None,
        "num_workers": 0,
    },
    "scm": {"num_steps": 2000, "batch_size": 1024, "lr": 3e-3, "hidden_dim": 64, "confounder_dim": 2},
    "vae": {
        "pretrained": None,  # a local AutoencoderKL folder; None trains one (null: `vae: null` = pixel space)
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "num_steps": 1000,
        "batch_size": 32,
        "lr": 1e-3,
        "kl_weight": 1e-6,
        # each training image of the vae and decoder stages scaled by a factor drawn from [1 - j, 1 + j] (then
        # clipped; narrowed by `data.brightness_factor`), so the decoder draws back the brightness it is given
        # instead of the data's tie of brightness to other factors (real Morpho-MNIST: intensity to thickness); 0: none
        "brightness_jitter": 0.0,
        # the `decoder` stage: steps refining the decoder on posterior means, encoder frozen (0: no such stage)
        "decoder_num_steps": 0,
        "decoder_lr": 3e-4,
    },
    "unet": {
        # a local Stable-Diffusion-style folder (unet/, vae/, scheduler/, text_encoder/, tokenizer/) to fine-tune
        # (training/finetune.py); its VAE becomes `vae.pretrained` unless one is given, its noise schedule (and
        # prediction type) replaces the settings below, and the architecture keys below are ignored
        "pretrained": None,
        "block_out_channels": [64, 128, 128],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "embed_dim": 64,
        "norm_num_groups": 32,
        "prediction_type": "epsilon",
        "num_train_timesteps": 1000,
        "factor_dropout": 0.15,
        "num_steps": 4000,
        "batch_size": 128,
        "lr": 3e-4,
        "lr_warmup_steps": 200,
        "ema_decay": 0.999,
        # each training image's brightness scaled by a factor from [1 - j, 1 + j] (then clipped, and encoded afresh),
        # with `data.brightness_factor`; 0: none
        "brightness_jitter": 0.0,
    },
    "predictor": {
        "block_out_channels": [32, 64, 128],
        "num_steps": 1500,
        "batch_size": 128,
        "lr": 1e-3,
        "brightness_jitter": 0.0,  # as `unet.brightness_jitter`: it learns to read the other factors at any brightness
    },
    # the conditional VAE of the `cvae-scm` evaluation baseline (training/cvae.py; not part of the pipeline); beta
    # weighs the KL term against the per-pixel squared error (a Gaussian decoder of variance beta / 2 on [-1, 1])
    "cvae": {
        "block_out_channels": [32, 64, 128],
        "latent_dim": 16,
        "beta": 0.01,
        "num_steps": 3000,
        "batch_size": 128,
        "lr": 1e-3,
    },
    # how the assembled pipeline edits when a call does not say (saved in its model_index.json): settings measured
    # for the model, e.g. with benchmarks/bench_edits.py
    "editing": {
        "abduction": DEFAULT_ABDUCTION,  # or another of ABDUCTIONS
        "guidance_scale": None,  # None (by factor kind), a number, or {factor: w} (cf_diffusion.guidance)
        "guidance_cutoff": DEFAULT_GUIDANCE_CUTOFF,  # the fraction of the steps, the first ones, that it guides
        "predictor_guidance": DEFAULT_PREDICTOR_GUIDANCE,
        "keep_guidance": DEFAULT_KEEP_GUIDANCE,
        "keep_residual": False,  # an edit is the input plus the decoded change (the pipeline's keep_residual)
        "working_size": None,  # or the side at which images larger than it are edited (e.g. data.resolution)
    },
}

_OPTIONAL_SECTIONS = ("vae",)
_JITTERED = ("vae", "unet", "predictor")  # the sections with a `brightness_jitter`
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""What the UNet can learn to output: the noise, the velocity or the clean sample (`diffusion.diffusion_target`)."""
# integer keys that may be 0; every other integer key must be >= 1
_ZERO_ALLOWED = (
    "seed",
    "holdout",
    "num_workers",
    "validation_steps",
    "confounder_dim",
    "decoder_num_steps",
    "lr_warmup_steps",
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(value, default, name: str) -> None:
    """`value` has the type of its `default`: an integer (>= 1, or >= 0 for `_ZERO_ALLOWED`), a finite number >= 0,
    a list of integers >= 1, a boolean or a string. Keys whose default is None are checked where they are used.

    Raises:
        ValueError: Naming the key, what was expected and what was given.
    """
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        least = 0 if name.rsplit(".", 1)[-1] in _ZERO_ALLOWED else 1
        ok, expected = _is_int(value) and value >= least, f"an integer >= {least}"
    elif isinstance(default, float):
        is_number = _is_int(value) or isinstance(value, float)
        ok, expected = is_number and math.isfinite(value) and value >= 0, "a number >= 0"
    elif isinstance(default, list):
        ok, expected = isinstance(value, list) and all(_is_int(v) and v >= 1 for v in value), "a list of integers >= 1"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"Config {name!r} must be {expected}, got {value!r}.")


def _check_values(config: dict, defaults: dict = DEFAULTS, where: str = "") -> None:
    """Every value of a filled-in recipe against its default (`_check_value`), section by section."""
    for key, default in defaults.items():
        if isinstance(default, dict):
            if config[key] is not None:
                _check_values(config[key], default, f"{where}{key}.")
        else:
            _check_value(config[key], default, f"{where}{key}")


def _merge(defaults: dict, given: dict, where: str) -> dict:
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise ValueError(f"Unknown config key {where}{key!r}; expected one of {sorted(defaults)}.")
        if isinstance(defaults[key], dict) and value is not None:
            if not isinstance(value, dict):
                raise ValueError(f"Config key {where}{key!r} must be a mapping, got {type(value).__name__}.")
            merged[key] = _merge(defaults[key], value, f"{where}{key}.")
        elif isinstance(defaults[key], dict) and key not in _OPTIONAL_SECTIONS:
            raise ValueError(f"Config section {where}{key!r} cannot be null.")
        else:
            merged[key] = value
    return merged


def load_config(source: str | Path | dict, overrides: dict | None = None) -> dict:
    """Reads a recipe (a YAML path or a dict), fills defaults, validates, and applies `overrides` (same nesting)."""
    if isinstance(source, dict):
        given = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"Config file {str(path)!r} does not exist.")
        try:
            given = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"Config file {str(path)!r} is not valid YAML: {' '.join(str(error).split())}") from None
        if not isinstance(given, dict):
            raise ValueError(f"Config file {str(path)!r} must hold a mapping, got {type(given).__name__}.")
    config = _merge(DEFAULTS, given, "")
    if overrides:
        config = _merge(config, overrides, "")
    _check_values(config)
    data = config["data"]
    if (data["dataset"] is None) == (data["path"] is None):
        raise ValueError("Config 'data' needs exactly one of 'dataset' (a procedural dataset) or 'path' (a folder).")
    fraction = data["interventional_fraction"]
    if not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise ValueError(f"Config 'data.interventional_fraction' must be a number in [0, 1), got {fraction!r}.")
    if fraction and data["dataset"] is None:
        raise ValueError(
            "Config 'data.interventional_fraction' needs a procedural dataset ('data.dataset'): a folder of "
            "images cannot be re-rendered under interventions."
        )
    _check_editing(config["editing"], data["resolution"])
    _check_brightness(config)
    check_prediction_type(config["unet"]["prediction_type"], "Config 'unet.prediction_type'")
    pretrained = config["unet"]["pretrained"]
    if pretrained is not None:
        if config["vae"] is None:
            raise ValueError(
                "Config 'vae' cannot be null with 'unet.pretrained': a Stable-Diffusion-style model runs in the "
                "latent space of its VAE (leave 'vae' out, or give 'vae.pretrained')."
            )
        if config["vae"]["pretrained"] is None:
            config["vae"]["pretrained"] = str(Path(pretrained) / "vae")
    return config


def _check_brightness(config: dict) -> None:
    """The `brightness_jitter` keys are in [0, 1); `data.brightness_factor` is a name, and a jitter that scales it is
    on (the factor itself is checked against the data's schema when training starts)."""
    for section in _JITTERED:
        if config[section] is not None and not config[section]["brightness_jitter"] < 1:
            raise ValueError(
                f"Config '{section}.brightness_jitter' must be a number in [0, 1), got "
                f"{config[section]['brightness_jitter']!r}."
            )
    factor = config["data"]["brightness_factor"]
    scaled = any(config[section] is not None and config[section]["brightness_jitter"] for section in _JITTERED)
    if factor is not None and not (isinstance(factor, str) and scaled):
        raise ValueError(
            f"Config 'data.brightness_factor' must be a factor name, given with a 'brightness_jitter' above 0 in "
            f"{' or '.join(map(repr, _JITTERED))}, got {factor!r}."
        )


def check_prediction_type(prediction_type: str, where: str) -> None:
    """Refuses a prediction type the training loss has no target for."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{where} must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}.")


def _check_editing(editing: dict, resolution: int) -> None:
    """The `editing` section's values (its factor names are checked when training starts, with the data's schema;
    whether `working_size` is a multiple of the model's downsampling, when the pipeline is assembled)."""
    size = editing["working_size"]
    if size is not None and (not _is_int(size) or size < resolution):
        raise ValueError(
            f"Config 'editing.working_size' must be null or an integer of at least data.resolution ({resolution}), "
            f"got {size!r}."
        )
    if editing["abduction"] not in ABDUCTIONS:
        raise ValueError(
            f"Config 'editing.abduction' must be {' or '.join(map(repr, ABDUCTIONS))}, got {editing['abduction']!r}."
        )
    check_weights(editing["guidance_scale"], "Config 'editing.guidance_scale'")
    check_fraction(editing["guidance_cutoff"], "Config 'editing.guidance_cutoff'")
