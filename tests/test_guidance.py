"""Per-factor guidance weights and each edit's weight."""

import pytest
import torch
from pipeline_fixtures import tiny_schema

from cf_diffusion.factors import FactorSchema
from cf_diffusion.graph import CausalGraph
from cf_diffusion.guidance import (
    CONTINUOUS_GUIDANCE,
    DISCRETE_GUIDANCE,
    change_sources,
    edit_guidance,
    factor_weights,
)


def test_defaults_guide_discrete_factors_and_not_continuous_ones():
    weights = factor_weights(tiny_schema(), None)
    assert weights == {
        "size": DISCRETE_GUIDANCE,
        "color": DISCRETE_GUIDANCE,
        "bar": DISCRETE_GUIDANCE,
        "thickness": 1.0,
    }
    assert CONTINUOUS_GUIDANCE == 1.0


def test_one_number_or_a_dict_overrides():
    assert set(factor_weights(tiny_schema(), 2.0).values()) == {2.0}
    weights = factor_weights(tiny_schema(), {"thickness": 1.5, "color": 0})
    assert weights["thickness"] == 1.5 and weights["color"] == 0.0 and weights["size"] == DISCRETE_GUIDANCE


def test_each_edit_takes_the_largest_weight_of_what_it_changes():
    changed = torch.tensor(
        [
            [False, False, False, True],  # thickness only
            [True, False, True, True],  # size, bar, thickness
            [False, False, False, False],  # the null edit
        ]
    )
    w = edit_guidance(tiny_schema(), {"thickness": 1.5, "bar": 4.0}, changed)
    torch.testing.assert_close(w, torch.tensor([1.5, 4.0, 1.0]))


def test_descendants_change_under_the_weight_of_their_changed_ancestor():
    graph = CausalGraph.parse("a -> b -> c; d")
    names = ["d", "a", "b", "c"]
    changed = torch.tensor(
        [
            [False, True, True, True],  # do(a): b and c follow
            [False, False, False, True],  # do(c)
            [True, True, False, True],  # do(d, a) with c changed through an unchanged b: a is still its ancestor
            [False, False, False, False],  # the null edit
        ]
    )
    sources = change_sources(graph, names, changed)
    expected = [[False, True, False, False], [False, False, False, True], [True, True, False, False], [False] * 4]
    assert sources.tolist() == expected
    schema = FactorSchema.from_dict([{"name": n, "kind": "continuous"} for n in names])
    w = edit_guidance(schema, {"c": 1.5, "d": 2.0}, sources)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.5, 2.0, 1.0]))


@pytest.mark.parametrize(
    ("guidance_scale", "match"),
    [
        (-1.0, "number >= 0"),
        ({"shape": 2.0}, "unknown factor"),
        ({"size": "high"}, "'high' for 'size'"),
        (True, ">= 0"),
    ],
)
def test_bad_weights_are_named(guidance_scale, match):
    with pytest.raises(ValueError, match=match):
        factor_weights(tiny_schema(), guidance_scale)


def test_model_defaults_replace_the_kind_defaults_and_a_call_replaces_both():
    schema = tiny_schema()
    weights = factor_weights(schema, None, {"color": 1.5})
    assert weights["color"] == 1.5 and weights["size"] == DISCRETE_GUIDANCE and weights["thickness"] == 1.0
    assert set(factor_weights(schema, None, 2.0).values()) == {2.0}
    weights = factor_weights(schema, {"size": 4.0}, {"color": 1.5, "size": 2.0})
    assert weights["size"] == 4.0 and weights["color"] == 1.5
    with pytest.raises(ValueError, match="default_guidance_scale names unknown factor"):
        factor_weights(schema, None, {"shape": 2.0})
