"""Tests for CausalGraph: parsing, queries against hand-computed answers, round trips, errors and drawings."""

import json
import random

import pytest

from cf_diffusion.graph import CausalGraph

SEED_GRAPH = "size <-> color; size -> bar; color -> bar; digit"


def random_graph(rng: random.Random, n: int) -> CausalGraph:
    """A random DAG with confounders, declared in a shuffled order (so declaration order != causal order)."""
    causal = [f"v{i}" for i in range(n)]
    declared = causal[:]
    rng.shuffle(declared)
    directed = [(causal[i], causal[j]) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.3]
    bidirected = [(causal[i], causal[j]) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.2]
    rng.shuffle(directed)
    return CausalGraph(declared, directed, bidirected)


def test_parse_seed_graph():
    g = CausalGraph.parse(SEED_GRAPH)
    assert g.nodes == ["size", "color", "bar", "digit"]
    assert set(g.directed) == {("size", "bar"), ("color", "bar")}
    assert g.bidirected == [("color", "size")]
    assert g.parents("bar") == ["size", "color"]
    assert g.children("size") == ["bar"]
    assert g.parents("digit") == [] and g.children("digit") == []
    assert g.confounded("size") == ["color"] and g.confounded("bar") == []
    assert g.topological_order() == ["size", "color", "bar", "digit"]
    assert g.c_components() == [["size", "color"], ["bar"], ["digit"]]
    assert len(g) == 4 and "bar" in g and "colour" not in g


def test_parse_chains_separators_comments_and_reverse_arrows():
    g = CausalGraph.parse("a -> b -> c, d <- c\n e <-> a  # a comment -> ignored\n;;")
    assert g.nodes == ["a", "b", "c", "d", "e"]
    assert set(g.directed) == {("a", "b"), ("b", "c"), ("c", "d")}
    assert g.bidirected == [("a", "e")]


def test_ancestors_descendants_are_strict_and_accept_sets():
    g = CausalGraph.parse("a -> b -> c -> d; x -> c; a <-> x; y")
    assert g.ancestors("c") == {"a", "b", "x"}
    assert g.descendants("a") == {"b", "c", "d"}
    assert g.descendants(["b", "c"]) == {"d"}
    assert g.ancestors({"b", "d"}) == {"a", "c", "x"}
    assert g.ancestors("y") == set() and g.descendants("d") == set()
    assert g.ancestors("d") == {"a", "b", "c", "x"}  # bidirected edges do not make ancestors


def test_topological_order_breaks_ties_by_declaration_order():
    g = CausalGraph(["d", "c", "b", "a"], [("a", "b"), ("c", "b")])
    assert g.topological_order() == ["d", "c", "a", "b"]
    assert CausalGraph(["z", "y", "x"]).topological_order() == ["z", "y", "x"]


@pytest.mark.parametrize("seed", range(20))
def test_topological_order_and_components_on_random_graphs(seed):
    rng = random.Random(seed)
    g = random_graph(rng, rng.randint(1, 9))
    order = g.topological_order()
    position = {node: i for i, node in enumerate(order)}
    assert sorted(order) == sorted(g.nodes)
    assert all(position[a] < position[b] for a, b in g.directed)
    components = g.c_components()
    members = [node for component in components for node in component]
    assert sorted(members) == sorted(g.nodes)
    for component in components:
        assert component == sorted(component, key=position.__getitem__)
    component_of = {node: i for i, component in enumerate(components) for node in component}
    assert all(component_of[a] == component_of[b] for a, b in g.bidirected)
    # members of one component are joined by bidirected paths: count components by a separate flood fill
    neighbours = {node: set(g.confounded(node)) for node in g.nodes}
    unseen, count = set(g.nodes), 0
    while unseen:
        count += 1
        stack = [unseen.pop()]
        while stack:
            for nxt in neighbours[stack.pop()] & unseen:
                unseen.discard(nxt)
                stack.append(nxt)
    assert count == len(components)
    # ancestors agree with reachability through parents
    for node in g.nodes:
        assert all(node in g.descendants(a) for a in g.ancestors(node))


@pytest.mark.parametrize("seed", range(20))
def test_text_and_dict_round_trips_keep_declaration_order(seed):
    rng = random.Random(100 + seed)
    g = random_graph(rng, rng.randint(1, 9))
    again = CausalGraph.parse(str(g))
    assert again == g and again.nodes == g.nodes
    assert CausalGraph.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert eval(repr(g)) == g


def test_str_of_seed_graph_is_the_natural_text():
    assert str(CausalGraph.parse(SEED_GRAPH)) == "size <-> color; size -> bar; color -> bar; digit"


def test_to_dict_is_plain_json():
    d = CausalGraph.parse(SEED_GRAPH).to_dict()
    assert d == {
        "nodes": ["size", "color", "bar", "digit"],
        "directed": [["size", "bar"], ["color", "bar"]],
        "bidirected": [["color", "size"]],
    }


def test_equality_ignores_edge_order_but_not_node_order():
    a = CausalGraph(["x", "y", "z"], [("x", "y"), ("y", "z")], [("z", "x")])
    b = CausalGraph(["x", "y", "z"], [("y", "z"), ("x", "y")], [("x", "z")])
    assert a == b and hash(a) == hash(b)
    assert a != CausalGraph(["y", "x", "z"], [("x", "y"), ("y", "z")], [("z", "x")])
    assert a != CausalGraph(["x", "y", "z"], [("x", "y")], [("z", "x")])


def test_directed_and_bidirected_on_the_same_pair_is_allowed():
    g = CausalGraph.parse("a -> b; a <-> b")
    assert g.parents("b") == ["a"] and g.confounded("b") == ["a"]
    assert g.c_components() == [["a", "b"]]


def test_do_and_subgraph():
    g = CausalGraph.parse("a -> b -> c; a <-> c; b <-> d")
    cut = g.do("b")
    assert cut.nodes == g.nodes
    assert set(cut.directed) == {("b", "c")}
    assert cut.bidirected == [("a", "c")]
    sub = g.subgraph(["c", "a", "b"])
    assert sub.nodes == ["a", "b", "c"] and sub.bidirected == [("a", "c")]


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("a -> b; b -> c; c -> a", "a -> b -> c -> a"),
        ("x; a -> b; b -> a", "a -> b -> a"),
        ("a -> a", "a -> a"),
        ("a <-> a", "a <-> a"),
        ("a -> b; a -> b", "a -> b"),
        ("a <-> b; b <-> a", "a <-> b"),
        ("a => b", "a => b"),
        ("a -> ", "a ->"),
        ("-> b", "-> b"),
        ("a -> b c", "b c"),
        ("1a -> b", "1a"),
        ("a -> b <=> c", "b <=> c"),
    ],
)
def test_parse_errors_name_the_culprit(text, culprit):
    with pytest.raises(ValueError) as info:
        CausalGraph.parse(text)
    assert culprit in str(info.value)


def test_cycle_message_names_the_cycle():
    with pytest.raises(ValueError, match="cycle a -> b -> c -> a"):
        CausalGraph(["a", "b", "c", "d"], [("d", "a"), ("a", "b"), ("b", "c"), ("c", "a")])


@pytest.mark.parametrize(
    "nodes, directed, bidirected, culprit",
    [
        (["a", "b"], [("a", "q")], [], "'q'"),
        (["a", "b"], [], [("p", "b")], "'p'"),
        (["a", "a"], [], [], "duplicate node 'a'"),
        (["a", "b c"], [], [], "'b c'"),
        (["a", 3], [], [], "3"),
        (["a", "b"], ["ab"], [], "'ab'"),
        (["a", "b"], [("a", "b", "c")], [], "('a', 'b', 'c')"),
        (["a", "b"], [("b", "b")], [], "b -> b"),
    ],
)
def test_constructor_errors_name_the_culprit(nodes, directed, bidirected, culprit):
    with pytest.raises(ValueError) as info:
        CausalGraph(nodes, directed, bidirected)
    assert culprit in str(info.value)


def test_queries_on_unknown_nodes_name_them():
    g = CausalGraph.parse(SEED_GRAPH)
    for query in (g.parents, g.children, g.ancestors, g.descendants, g.confounded, g.do):
        with pytest.raises(ValueError, match="unknown node 'colour'"):
            query("colour")
    with pytest.raises(ValueError, match="unknown node 'zz'"):
        g.ancestors(["size", "zz"])


def test_from_dict_errors_name_the_key():
    with pytest.raises(ValueError, match="'edges'"):
        CausalGraph.from_dict({"nodes": ["a"], "edges": []})
    with pytest.raises(ValueError, match="'nodes'"):
        CausalGraph.from_dict({"directed": []})


def test_dot_and_mermaid_list_every_node_and_edge():
    g = CausalGraph.parse(SEED_GRAPH)
    dot = g.to_dot()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert '"size" -> "bar";' in dot and '"color" -> "bar";' in dot
    assert '"color" -> "size" [dir=both, style=dashed' in dot
    assert '"digit";' in dot
    mermaid = g.to_mermaid()
    assert mermaid.startswith("flowchart TD")
    assert "size --> bar" in mermaid and "color <-.-> size" in mermaid and "digit([digit])" in mermaid


def test_layout_is_layered_by_causal_depth():
    g = CausalGraph.parse("a -> b -> c; a -> c; d")
    pos = g.layout()
    assert pos["a"][1] == 0 and pos["d"][1] == 0 and pos["b"][1] == -1 and pos["c"][1] == -2
    assert pos["a"][0] != pos["d"][0]


def test_draw_saves_a_png_and_draws_into_axes(tmp_path):
    from matplotlib.figure import Figure

    g = CausalGraph.parse(SEED_GRAPH)
    path = tmp_path / "sub" / "graph.png"
    fig = g.draw(path, values={"size": "1", "color": "red"})
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["graph.png"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "size\n1" in texts and "color\nred" in texts and "bar" in texts
    assert sum(p.get_linestyle() == "--" for p in fig.axes[0].patches) == 1
    assert len(fig.axes[0].patches) == 3

    own = Figure()
    ax = own.add_subplot(1, 1, 1)
    assert g.draw(ax) is own
    with pytest.raises(ValueError, match="unknown node 'colour'"):
        g.draw(values={"colour": "red"})
