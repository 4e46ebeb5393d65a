"""Tests for Factor and FactorSchema: validation, table forms, encodings against hand-computed values, errors."""

import json

import numpy as np
import pytest
import torch

from cf_diffusion.factors import Factor, FactorSchema, UnknownFactorError, table_columns


@pytest.fixture
def schema() -> FactorSchema:
    return FactorSchema(
        [
            Factor.binary("size", ("small", "large")),
            Factor.categorical("color", ["red", "green", "blue"]),
            Factor.continuous("thickness", 1.0, 5.0),
            Factor.categorical("digit", range(10)),
        ]
    )


ROWS = [
    {"size": "small", "color": "red", "thickness": 1.0, "digit": "3"},
    {"size": "large", "color": "blue", "thickness": 3.0, "digit": "9"},
    {"size": "large", "color": "green", "thickness": 5.0, "digit": "0"},
]
EXPECTED = {
    "size": torch.tensor([0, 1, 1]),
    "color": torch.tensor([0, 2, 1]),
    "thickness": torch.tensor([1.0, 3.0, 5.0]),
    "digit": torch.tensor([3, 9, 0]),
}
ENCODED = torch.tensor([[0.0, 0.0, -1.0, 3.0], [1.0, 2.0, 0.0, 9.0], [1.0, 1.0, 1.0, 0.0]])


# ---------------------------------------------------------------- Factor


def test_factor_constructors():
    b = Factor.binary("size")
    assert b.kind == "binary" and b.levels == ("0", "1") and b.is_discrete and b.num_levels == 2
    c = Factor.categorical("digit", range(3))
    assert c.levels == ("0", "1", "2") and c.num_levels == 3
    x = Factor.continuous("thickness", 1, 5)
    assert x.low == 1.0 and x.high == 5.0 and not x.is_discrete and x.has_range
    assert not Factor.continuous("t").has_range
    assert Factor("color", "categorical", ["a", "b"]).levels == ("a", "b")  # lists become tuples (hashable)
    with pytest.raises(ValueError, match="continuous factor 'thickness' has no levels"):
        _ = x.num_levels


@pytest.mark.parametrize(
    "make, culprit",
    [
        (lambda: Factor.binary("size", ("a", "b", "c")), "'size'"),
        (lambda: Factor.categorical("color", ["red", "red"]), "duplicate levels"),
        (lambda: Factor.categorical("color", "red"), "'red'"),
        (lambda: Factor.categorical("color", []), "'color'"),
        (lambda: Factor.continuous("t", 5, 1), "[5.0, 1.0]"),
        (lambda: Factor.continuous("t", float("nan"), 1), "'t'"),
        (lambda: Factor("t", "continuous", ("a",)), "'t'"),
        (lambda: Factor("c", "ordinal", ("a",)), "'ordinal'"),
        (lambda: Factor("c", "binary", ("a", "b"), 0.0, 1.0), "'c'"),
        (lambda: Factor.binary("bad name"), "'bad name'"),
        (lambda: Factor("c", "categorical", ("a", "")), "''"),
    ],
)
def test_factor_validation_errors_name_the_culprit(make, culprit):
    with pytest.raises(ValueError) as info:
        make()
    assert culprit in str(info.value)


@pytest.mark.parametrize(
    "value, index",
    [("green", 1), (2, 2), (np.int64(1), 1), (1.0, 1), (np.float32(2.0), 2), (torch.tensor(2), 2), (np.array([0]), 0)],
)
def test_to_index_accepts_names_indices_and_whole_floats(value, index):
    assert Factor.categorical("color", ["red", "green", "blue"]).to_index(value) == index


def test_to_index_bools_only_for_binary():
    assert Factor.binary("size").to_index(True) == 1 and Factor.binary("size").to_index(np.bool_(False)) == 0
    with pytest.raises(ValueError, match="factor 'color'.*True.*'red', 'green'"):
        Factor.categorical("color", ["red", "green"]).to_index(True)


@pytest.mark.parametrize("value", ["purple", 3, -1, 1.5, float("nan"), None, "1", [0, 1]])
def test_to_index_errors_name_factor_value_and_levels(value):
    with pytest.raises(ValueError) as info:
        Factor.categorical("color", ["red", "green", "blue"]).to_index(value)
    message = str(info.value)
    assert "'color'" in message and "['red', 'green', 'blue']" in message and repr(value) in message


def test_level_and_check_value():
    color = Factor.categorical("color", ["red", "green"])
    assert color.level(1) == "green" and color.level("red") == "red"
    t = Factor.continuous("thickness", 1.0, 5.0)
    assert t.check_value(5.0) == 5.0 and t.check_value(np.float64(1.0)) == 1.0
    assert t.check_value(5.0 + 1e-6) == pytest.approx(5.0)  # tolerance of 1e-5 of the range width
    assert Factor.continuous("free").check_value(-1e9) == -1e9
    assert Factor.continuous("half", low=0.0).check_value(7.0) == 7.0
    with pytest.raises(ValueError, match=r"'half'.*-1.0.*out of range \[0.0, None\]"):
        Factor.continuous("half", low=0.0).check_value(-1.0)
    with pytest.raises(ValueError, match=r"'thickness'.*5.1.*\[1.0, 5.0\]"):
        t.check_value(5.1)
    for bad in ("3", None, True, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="'thickness'"):
            t.check_value(bad)
    with pytest.raises(ValueError, match="'color' is categorical"):
        color.check_value(1.0)
    with pytest.raises(ValueError, match="'thickness' is continuous"):
        t.to_index(1)


@pytest.mark.parametrize(
    "factor",
    [Factor.binary("a", ("no", "yes")), Factor.categorical("b", ["x", "y", "z"]), Factor.continuous("c", -1, 2.5)],
)
def test_factor_dict_round_trip_through_json(factor):
    assert Factor.from_dict(json.loads(json.dumps(factor.to_dict()))) == factor


def test_factor_from_dict_errors():
    with pytest.raises(ValueError, match="'colour'"):
        Factor.from_dict({"name": "c", "kind": "binary", "colour": 1})
    with pytest.raises(ValueError, match="'kind'"):
        Factor.from_dict({"name": "c"})


# ---------------------------------------------------------------- FactorSchema container


def test_schema_container(schema):
    assert schema.names == ["size", "color", "thickness", "digit"]
    assert len(schema) == 4 and [f.name for f in schema] == schema.names
    assert "color" in schema and "colour" not in schema and Factor.binary("size", ("small", "large")) in schema
    assert schema["thickness"].high == 5.0 and schema.index("digit") == 3
    assert schema.factors[1] is schema["color"]
    for lookup in (schema.index, schema.__getitem__):
        with pytest.raises(
            UnknownFactorError, match=r"unknown factor 'colour'.*\['size', 'color', 'thickness', 'digit'\]"
        ):
            lookup("colour")
        with pytest.raises(KeyError):
            lookup("colour")
    with pytest.raises(ValueError, match="duplicate factor name 'a'"):
        FactorSchema([Factor.binary("a"), Factor.continuous("a")])
    with pytest.raises(ValueError, match="'a'"):
        FactorSchema(["a"])


def test_schema_dict_round_trip(schema):
    text = json.dumps(schema.to_dict())
    assert FactorSchema.from_dict(json.loads(text)) == schema
    assert FactorSchema.from_dict(schema.to_dict()["factors"]) == schema
    with pytest.raises(ValueError, match="'factor'"):
        FactorSchema.from_dict({"factor": []})


# ---------------------------------------------------------------- tables -> values


def _table_forms():
    columns = {name: [row[name] for row in ROWS] for name in ROWS[0]}
    forms = {
        "rows": ROWS,
        "columns": columns,
        "numpy": {name: np.asarray(column) for name, column in columns.items()},
        "indices": {"size": [0, 1, 1], "color": np.array([0, 2, 1]), "thickness": [1, 3, 5], "digit": [3.0, 9.0, 0.0]},
        "tensors": {name: t.clone() for name, t in EXPECTED.items()},
        "mixed": {
            "size": [False, True, True],
            "color": ["red", 2, 1.0],
            "thickness": [1, 3.0, np.float32(5)],
            "digit": torch.tensor([[3], [9], [0]]),
        },
    }
    return forms


@pytest.mark.parametrize("form", list(_table_forms()))
def test_to_values_from_every_table_form(schema, form):
    values = schema.to_values(_table_forms()[form])
    assert list(values) == schema.names
    for name, expected in EXPECTED.items():
        assert values[name].dtype == expected.dtype and torch.equal(values[name], expected), name


def test_to_values_from_a_dataframe(schema):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(ROWS)
    frame["color"] = frame["color"].astype("category")
    values = schema.to_values(frame)
    assert all(torch.equal(values[name], EXPECTED[name]) for name in EXPECTED)
    series = schema.to_values({"color": frame["color"], "thickness": frame["thickness"]}, partial=True)
    assert torch.equal(series["color"], EXPECTED["color"]) and torch.equal(series["thickness"], EXPECTED["thickness"])


def test_single_row_dict_is_a_table_of_one_row(schema):
    values = schema.to_values({"size": "large", "color": 2, "thickness": torch.tensor(2.5), "digit": np.int64(7)})
    assert values["size"].tolist() == [1] and values["color"].tolist() == [2]
    assert values["thickness"].tolist() == [2.5] and values["digit"].tolist() == [7]


def test_to_values_is_vectorised_on_100k_rows(schema):
    n = 100_000
    gen = torch.Generator().manual_seed(0)
    table = {
        "size": torch.randint(0, 2, (n,), generator=gen).numpy(),
        "color": np.array(["red", "green", "blue"])[torch.randint(0, 3, (n,), generator=gen).numpy()],
        "thickness": (1 + 4 * torch.rand(n, generator=gen, dtype=torch.float64)).numpy(),
        "digit": torch.randint(0, 10, (n,), generator=gen),
    }
    values = schema.to_values(table)
    assert torch.equal(values["size"], torch.from_numpy(table["size"]).long())
    assert torch.equal(values["digit"], table["digit"])
    assert (np.array(["red", "green", "blue"])[values["color"].numpy()] == table["color"]).all()
    assert torch.allclose(values["thickness"].double(), torch.from_numpy(table["thickness"]), atol=1e-6)


def test_partial_and_missing_columns(schema):
    values = schema.to_values({"digit": [4], "color": ["blue"]}, partial=True)
    assert list(values) == ["color", "digit"] and values["color"].tolist() == [2]
    with pytest.raises(ValueError, match=r"missing factor\(s\) \['size', 'thickness'\]"):
        schema.to_values({"digit": [4], "color": ["blue"]})


@pytest.mark.parametrize(
    "column, value, pattern",
    [
        ("color", ["red", "purple", "red"], r"factor 'color', row 1: bad value 'purple'.*\['red', 'green', 'blue'\]"),
        ("color", np.array(["red", "red", "pink"]), r"factor 'color', row 2: bad value 'pink'.*\['red', 'green'"),
        ("color", [0, 1, 7], r"factor 'color', row 2: bad value 7.*indices 0..2"),
        ("color", torch.tensor([0.0, 0.5, 1.0]), r"factor 'color', row 1: bad value 0.5"),
        ("color", torch.tensor([True, False, True]), r"'color' is categorical; bools are only for binary"),
        ("size", [0, 1, -1], r"factor 'size', row 2: bad value -1.*\['small', 'large'\]"),
        ("size", ["small", None, "large"], r"factor 'size', row 1: bad value None"),
        ("thickness", [1.0, 6.0, 2.0], r"factor 'thickness', row 1: bad value 6.0.*\[1.0, 5.0\]"),
        ("thickness", np.array([1.0, 2.0, np.nan]), r"factor 'thickness', row 2: bad value nan"),
        ("thickness", [1.0, "thick", 2.0], r"factor 'thickness', row 1: bad value 'thick'.*number"),
        ("thickness", [True, False, True], r"factor 'thickness', row 0: bad value True.*number"),
        ("digit", ["3", "10", "1"], r"factor 'digit', row 1: bad value '10'"),
    ],
)
def test_bad_values_name_factor_row_value_and_allowed(schema, column, value, pattern):
    table = {name: [row[name] for row in ROWS] for name in ROWS[0]}
    table[column] = value
    with pytest.raises(ValueError, match=pattern):
        schema.to_values(table)


def test_table_shape_errors(schema):
    with pytest.raises(
        ValueError, match=r"unknown factor 'colour' in table.*\['size', 'color', 'thickness', 'digit'\]"
    ):
        schema.to_values({"colour": ["red"]}, partial=True)
    with pytest.raises(ValueError, match="column 'color' has 2 rows but column 'size' has 1"):
        schema.to_values({"size": [0], "color": ["red", "blue"]}, partial=True)
    with pytest.raises(ValueError, match=r"column 'digit' must be 1-D.*\(2, 2\)"):
        schema.to_values({"digit": np.zeros((2, 2))}, partial=True)
    with pytest.raises(ValueError, match=r"mixes scalars \(\['size'\]\) with columns \(\['color'\]\)"):
        schema.to_values({"size": 1, "color": ["red"]}, partial=True)
    with pytest.raises(ValueError, match="row 1 has keys"):
        schema.to_values([{"size": 1}, {"color": "red"}], partial=True)
    with pytest.raises(ValueError, match="unsupported table of type str"):
        schema.to_values("size=1")


def test_table_columns_forms():
    assert table_columns([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]) == {"a": [1, 2], "b": ["x", "y"]}
    assert table_columns({"a": 1.5}) == {"a": [1.5]}
    assert table_columns([]) == {}


# ---------------------------------------------------------------- values <-> encodings


def test_encode_known_values_and_decode_back(schema):
    encoded = schema.encode(ROWS)
    assert encoded.dtype == torch.float32 and encoded.shape == (3, 4)
    assert torch.equal(encoded, ENCODED)
    assert schema.decode(encoded) == {name: [row[name] for row in ROWS] for name in schema.names}
    assert torch.equal(schema.encode(EXPECTED), ENCODED)


def test_normalize_denormalize_round_trip_any_shape(schema):
    gen = torch.Generator().manual_seed(0)
    values = {
        "size": torch.randint(0, 2, (4, 5), generator=gen),
        "color": torch.randint(0, 3, (4, 5), generator=gen),
        "thickness": 1 + 4 * torch.rand(4, 5, generator=gen),
        "digit": torch.randint(0, 10, (4, 5), generator=gen),
    }
    encoded = schema.normalize(values)
    assert encoded.shape == (4, 5, 4)
    assert torch.allclose(encoded[..., 2], (values["thickness"] - 3) / 2)
    back = schema.denormalize(encoded)
    for name in ("size", "color", "digit"):
        assert back[name].dtype == torch.long and torch.equal(back[name], values[name])
    assert torch.allclose(back["thickness"], values["thickness"], atol=1e-6)


def test_normalize_allows_values_outside_the_range_but_encode_does_not(schema):
    values = {name: t[:1] for name, t in EXPECTED.items()} | {"thickness": torch.tensor([9.0])}
    assert schema.normalize(values)[0, 2].item() == pytest.approx(3.0)  # (9 - 3) / 2: model samples may leave
    with pytest.raises(ValueError, match="'thickness', row 0: bad value 9.0"):
        schema.encode(values)


def test_denormalize_rounds_and_clamps_discrete_columns(schema):
    encoded = torch.tensor([[0.4, -3.0, 0.0, 9.6], [0.6, 1.4, 2.0, 12.0]])
    back = schema.denormalize(encoded)
    assert back["size"].tolist() == [0, 1] and back["color"].tolist() == [0, 1] and back["digit"].tolist() == [9, 9]
    assert back["thickness"].tolist() == [3.0, 7.0]
    assert schema.decode(encoded)["color"] == ["red", "green"]


def test_encoding_errors(schema):
    with pytest.raises(ValueError, match=r"shape \[..., 4\].*\(3, 3\)"):
        schema.denormalize(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"missing factor\(s\) \['digit'\]"):
        schema.normalize({name: EXPECTED[name] for name in ("size", "color", "thickness")})
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        schema.normalize(dict(EXPECTED, colour=torch.zeros(3)))
    open_schema = FactorSchema([Factor.binary("a"), Factor.continuous("t", low=0.0)])
    with pytest.raises(ValueError, match=r"'t' has no known range.*with_ranges"):
        open_schema.encode({"a": [0], "t": [1.0]})
    with pytest.raises(ValueError, match="'t' has no known range"):
        open_schema.denormalize(torch.zeros(1, 2))


def test_from_values_keeps_nesting_and_checks_indices(schema):
    out = schema.from_values({"color": torch.tensor([[0, 2], [1, 1]]), "thickness": torch.tensor([1.5, 2.0])})
    assert out == {"color": [["red", "blue"], ["green", "green"]], "thickness": [1.5, 2.0]}
    with pytest.raises(ValueError, match="factor 'color', row 1: bad value 3"):
        schema.from_values({"color": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        schema.from_values({"colour": torch.tensor([0])})


# ---------------------------------------------------------------- inference of schemas and ranges


def test_infer_rules():
    table = {
        "flag": np.array([True, False, True]),
        "bit": [0, 1, 1],
        "color": ["red", "blue", "red"],
        "digit": np.array([0, 7, 3]),
        "width": np.array([0.5, 2.5, 1.0]),
        "offset": [-2, 3, 0],
        "count": np.array([0, 500, 3]),
    }
    schema = FactorSchema.infer(table)
    assert schema.names == list(table)
    assert schema["flag"] == Factor.binary("flag") and schema["bit"] == Factor.binary("bit")
    assert schema["color"] == Factor.categorical("color", ["blue", "red"])
    assert schema["digit"] == Factor.categorical("digit", range(8))
    assert schema["width"] == Factor.continuous("width", 0.5, 2.5)
    assert schema["offset"] == Factor.continuous("offset", -2.0, 3.0)
    assert schema["count"] == Factor.continuous("count", 0.0, 500.0)
    assert torch.equal(schema.to_values(table)["digit"], torch.tensor([0, 7, 3]))


def test_infer_overrides_and_dataframes():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"digit": [0, 1, 1], "t": [1.0, 2.0, 3.0], "size": ["s", "l", "l"]})
    schema = FactorSchema.infer(
        frame, overrides={"digit": "categorical", "t": Factor.continuous("t", 0, 10), "size": "binary"}
    )
    assert schema["digit"] == Factor.categorical("digit", ["0", "1"])
    assert schema["t"] == Factor.continuous("t", 0, 10)
    assert schema["size"] == Factor.binary("size", ("l", "s"))
    assert FactorSchema.infer({"c": [2.0, 2.0]})["c"].low < 2.0 < FactorSchema.infer({"c": [2.0, 2.0]})["c"].high


@pytest.mark.parametrize(
    "table, overrides, culprit",
    [
        ({"a": [0, 1]}, {"b": "binary"}, "'b'"),
        ({"a": [0, 1]}, {"a": "ordinal"}, "'ordinal'"),
        ({"a": [0, 1]}, {"a": Factor.binary("b")}, "'b'"),
        ({"a": [0, 2]}, {"a": "binary"}, "'a' cannot be binary"),
        ({"a": [0.5, 2]}, {"a": "categorical"}, "'a' cannot be categorical"),
        ({"a": ["x", 1]}, None, "'a' mixes text"),
        ({"a": ["x", "y"]}, {"a": "continuous"}, "'a' is not numeric"),
        ({"a": [1.0, float("inf")]}, None, "'a' has non-finite"),
        ({"a": []}, None, "empty table"),
    ],
)
def test_infer_errors_name_the_culprit(table, overrides, culprit):
    with pytest.raises(ValueError) as info:
        FactorSchema.infer(table, overrides)
    assert culprit in str(info.value)


def test_with_ranges_fills_only_missing_ends():
    schema = FactorSchema(
        [
            Factor.continuous("a"),
            Factor.continuous("b", low=-10.0),
            Factor.continuous("c", 0, 1),
            Factor.binary("d"),
            Factor.continuous("e"),
        ]
    )
    filled = schema.with_ranges({"a": [2.0, -1.0, 4.0], "b": [3.0, 5.0, 4.0], "c": [0.5, 0.6, 0.7], "d": [0, 1, 0]})
    assert filled["a"] == Factor.continuous("a", -1.0, 4.0)
    assert filled["b"] == Factor.continuous("b", -10.0, 5.0)
    assert filled["c"] == Factor.continuous("c", 0, 1) and filled["d"] == Factor.binary("d")
    assert filled["e"] == Factor.continuous("e")  # no column: unchanged
    assert schema["a"].low is None  # the original is untouched
    with pytest.raises(ValueError, match="'a'"):
        schema.with_ranges({"a": ["x", "y"]})


# ---------------------------------------------------------------- text


def test_parse_and_format_row(schema):
    assert schema.parse("color=blue,thickness=3.2") == {"color": "blue", "thickness": 3.2}
    assert schema.parse(" size = large ; digit=7 ") == {"size": "large", "digit": "7"}
    assert schema.parse("size=1 color=0") == {"size": "large", "color": "red"}  # indices as a fallback
    assert schema.parse("") == {}
    row = {"thickness": torch.tensor(3.14159), "color": 2, "size": True, "digit": np.int64(4)}
    text = schema.format_row(row)
    assert text == "size=large color=blue thickness=3.14 digit=4"
    assert schema.parse(text) == {"size": "large", "color": "blue", "thickness": 3.14, "digit": "4"}
    assert schema.format_row({"thickness": 2.0}, precision=1) == "thickness=2.0"


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("colour=red", "unknown factor 'colour' in 'colour=red'"),
        ("color", "malformed assignment 'color'"),
        ("color=", "malformed assignment 'color='"),
        ("=red", "malformed assignment '=red'"),
        ("color=red,color=blue", "factor 'color' is assigned twice"),
        ("color=purple", "factor 'color': bad value 'purple'"),
        ("color=5", "factor 'color': bad value 5"),
        ("thickness=thick", "factor 'thickness': 'thickness=thick' is not a number"),
        ("thickness=9", "factor 'thickness': value 9.0 is out of range [1.0, 5.0]"),
    ],
)
def test_parse_errors_name_the_bad_part(schema, text, culprit):
    with pytest.raises(ValueError) as info:
        schema.parse(text)
    assert culprit in str(info.value)


def test_format_row_errors(schema):
    with pytest.raises(ValueError, match="unknown factor 'colour'"):
        schema.format_row({"colour": "red"})
    with pytest.raises(ValueError, match="factor 'color': bad value 'purple'"):
        schema.format_row({"color": "purple"})
    with pytest.raises(ValueError, match="factor 'thickness': bad value 'x'"):
        schema.format_row({"thickness": "x"})
