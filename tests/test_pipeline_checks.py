"""The pipeline's input checks: keyword-only `check_inputs`, and the factor checks `FactorSchema` owns."""

import re

import numpy as np
import pytest
import torch
from pipeline_fixtures import tiny_images, tiny_pipeline, tiny_schema

FACTORS = [
    {"size": "small", "color": "red", "bar": "1", "thickness": 3.0},
    {"size": "large", "color": "blue", "bar": "0", "thickness": 2.0},
]


def test_check_factors_returns_the_number_of_rows_and_checks_it_against_the_batch():
    schema = tiny_schema()
    assert schema.check_factors(FACTORS[0]) == 1
    assert schema.check_factors(FACTORS, batch_size=2) == 2
    with pytest.raises(ValueError, match=r"factors describe 2 image\(s\) but 3 image\(s\) were given"):
        schema.check_factors(FACTORS, batch_size=3)
    with pytest.raises(ValueError, match=r"table is missing factor\(s\) \['thickness'\]"):
        schema.check_factors({name: value for name, value in FACTORS[0].items() if name != "thickness"})


def test_check_interventions_takes_values_callables_and_one_column_entry_per_image():
    schema = tiny_schema()
    for interventions in (
        None,
        {},
        {"color": "green", "thickness": lambda t: t + 1},
        {"color": ["red", "blue", "green"], "bar": torch.tensor(1), "thickness": np.array([2.0, 3.0, 4.0])},
        {"size": ("large",)},
    ):
        schema.check_interventions(interventions, batch_size=3)


@pytest.mark.parametrize(
    ("interventions", "message"),
    [
        ([("color", "red")], "interventions must be a dict {factor name: value or callable}, got list"),
        ({"hue": "red"}, "unknown factor 'hue' in interventions; the model's factors are"),
        ({"color": ["red", "blue"]}, "intervention on 'color' has 2 values; expected one value or 3 (one per image)"),
        ({"thickness": torch.tensor([1.0, 2.0])}, "intervention on 'thickness' has 2 values"),
        ({"color": "purple"}, "factor 'color', row 0: bad value 'purple'"),
        ({"thickness": [2.0, 9.0, 3.0]}, "factor 'thickness', row 1: bad value 9.0"),
    ],
)
def test_check_interventions_names_the_bad_intervention(interventions, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_schema().check_interventions(interventions, batch_size=3)


def test_check_inputs_takes_keyword_arguments_only():
    pipe = tiny_pipeline()
    pixels = tiny_images(1, 8) * 2 - 1
    pipe.check_inputs(image=pixels, batch_size=1)
    with pytest.raises(TypeError):
        pipe.check_inputs(pixels, 1, None, None)
    with pytest.raises(ValueError, match="factors were not given and the pipeline has no factor_predictor"):
        tiny_pipeline(with_predictor=False).check_inputs(image=pixels, batch_size=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"preserve": "all"}, r"preserve must be one of \['auto', 'none'\] or a mask"),
        ({"preserve": torch.ones(1, 1, 5, 5)}, r"preserve must be Tensor\[1 or 1, 1, H, W\]"),
        ({"preserve": "auto", "mask": torch.ones(1, 1, 8, 8)}, "pass either mask .* or preserve .*, not both"),
        ({"mask_threshold": 1.5}, r"mask_threshold must be a number in \[0, 1\], got 1.5"),
        ({"prompt": 3}, "a prompt was given but the pipeline has no text_encoder"),
    ],
)
def test_mask_and_output_checks(change, message):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=message):
        pipe.check_inputs(image=tiny_images(1, 8) * 2 - 1, batch_size=1, factors=FACTORS[0], **change)
