"""CausalGraph: the causal diagram over the labelled factors of an image.

A causal graph has named nodes, directed edges `a -> b` (a is a direct cause of b) and bidirected edges
`a <-> b` (a and b share a hidden confounder). Directed edges must form a DAG. An edge may be both directed
and bidirected (`a -> b` plus `a <-> b`: a causes b and they are also confounded).

Text form, accepted by `CausalGraph.parse` and produced by `str(graph)`::

    size <-> color; size -> bar; color -> bar; digit

Statements are separated by `;`, `,` or newlines; a statement is a lone node or a chain such as
`a -> b <- c <-> d`; `#` starts a comment that runs to the end of the line.
"""

from __future__ import annotations

import heapq
import io
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_EDGE_TOKEN = re.compile(r"(<->|->|<-)")
_STATEMENT_SEPARATOR = re.compile(r"[;,\n]")


def _pair_text(kind: str, a: str, b: str) -> str:
    return f"{a} {'->' if kind == 'directed' else '<->'} {b}"


class CausalGraph:
    """A causal diagram: nodes, directed edges (causes) and bidirected edges (hidden confounders).

    The graph is immutable after construction; every query returns fresh containers.

    Args:
        nodes: Node names in declaration order (valid Python identifiers, unique). Declaration order
            breaks ties in `topological_order`.
        directed: `(cause, effect)` pairs.
        bidirected: Unordered pairs of confounded nodes; each is stored sorted.

    Raises:
        ValueError: On a bad or duplicate node name, an edge naming an unknown node, a self-loop, a duplicate
            edge, or a directed cycle; the message names the offending node, edge or cycle.

    Example:
        >>> g = CausalGraph.parse("size <-> color; size -> bar; color -> bar; digit")
        >>> g.parents("bar")
        ['size', 'color']
    """

    def __init__(
        self,
        nodes: Iterable[str],
        directed: Iterable[tuple[str, str]] = (),
        bidirected: Iterable[tuple[str, str]] = (),
    ) -> None:
        if isinstance(nodes, str):
            raise ValueError(f"CausalGraph nodes must be a list of names, got the string {nodes!r}")
        self._nodes: list[str] = []
        for node in nodes:
            if not isinstance(node, str) or not node.isidentifier():
                raise ValueError(f"bad node name {node!r}: node names must be identifiers such as 'color' or 'x1'")
            if node in self._nodes:
                raise ValueError(f"duplicate node {node!r} in {self._nodes + [node]}")
            self._nodes.append(node)
        self._index = {node: i for i, node in enumerate(self._nodes)}
        self._directed = [self._check_edge(edge, "directed") for edge in directed]
        self._bidirected = [tuple(sorted(self._check_edge(edge, "bidirected"))) for edge in bidirected]
        self._check_duplicates(self._directed, "directed")
        self._check_duplicates(self._bidirected, "bidirected")
        self._parents = {node: [] for node in self._nodes}
        self._children = {node: [] for node in self._nodes}
        for a, b in self._directed:
            self._parents[b].append(a)
            self._children[a].append(b)
        for node in self._nodes:
            self._parents[node].sort(key=self._index.__getitem__)
            self._children[node].sort(key=self._index.__getitem__)
        self._topological = self._topological_sort()

    def _check_edge(self, edge: Any, kind: str) -> tuple[str, str]:
        if isinstance(edge, str) or not isinstance(edge, (tuple, list)) or len(edge) != 2:
            raise ValueError(f"malformed {kind} edge {edge!r}: expected a pair of node names such as ('a', 'b')")
        a, b = edge
        for node in (a, b):
            if not isinstance(node, str) or node not in self._index:
                raise ValueError(
                    f"{kind} edge {_pair_text(kind, a, b)!r} names unknown node {node!r}; nodes are {self._nodes}"
                )
        if a == b:
            raise ValueError(f"self-loop {_pair_text(kind, a, b)!r}: an edge must join two different nodes")
        return (a, b)

    @staticmethod
    def _check_duplicates(edges: list[tuple[str, str]], kind: str) -> None:
        seen: set[tuple[str, str]] = set()
        for a, b in edges:
            if (a, b) in seen:
                raise ValueError(f"duplicate {kind} edge {_pair_text(kind, a, b)!r}")
            seen.add((a, b))

    def _topological_sort(self) -> list[str]:
        indegree = {node: len(self._parents[node]) for node in self._nodes}
        ready = [self._index[node] for node in self._nodes if indegree[node] == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            node = self._nodes[heapq.heappop(ready)]
            order.append(node)
            for child in self._children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    heapq.heappush(ready, self._index[child])
        if len(order) < len(self._nodes):
            cycle = self._find_cycle({node for node in self._nodes if indegree[node] > 0})
            raise ValueError(f"directed cycle {' -> '.join(cycle)}: the directed edges must form a DAG")
        return order

    def _find_cycle(self, remaining: set[str]) -> list[str]:
        """Walks back along parents inside the cyclic remainder until a node repeats: that loop is a cycle."""
        node = min(remaining, key=self._index.__getitem__)
        path: list[str] = []
        position: dict[str, int] = {}
        while node not in position:
            position[node] = len(path)
            path.append(node)
            node = next(p for p in self._parents[node] if p in remaining)
        cycle = path[position[node] :][::-1]
        first = cycle.index(min(cycle, key=self._index.__getitem__))
        cycle = cycle[first:] + cycle[:first]
        return cycle + [cycle[0]]

    # ------------------------------------------------------------------ construction from text / dicts

    @classmethod
    def parse(cls, text: str) -> CausalGraph:
        """Builds a graph from text such as `"size <-> color; size -> bar; color -> bar; digit"`.

        Args:
            text: Statements separated by `;`, `,` or newlines. A statement is a lone node (`digit`) or a chain
                of nodes joined by `->`, `<-` or `<->` (`a -> b <- c`). `#` comments run to the end of the line.
                Nodes are declared in order of first appearance.

        Returns:
            The graph.

        Raises:
            ValueError: On malformed statements (naming the statement), bad node names, duplicate edges,
                self-loops and cycles.
        """
        if not isinstance(text, str):
            raise ValueError(f"CausalGraph.parse expects a string, got {type(text).__name__}")
        nodes: list[str] = []
        directed: list[tuple[str, str]] = []
        bidirected: list[tuple[str, str]] = []
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        for statement in _STATEMENT_SEPARATOR.split("\n".join(lines)):
            statement = statement.strip()
            if not statement:
                continue
            parts = [part.strip() for part in _EDGE_TOKEN.split(statement)]
            names, operators = parts[0::2], parts[1::2]
            for name in names:
                if not name.isidentifier():
                    what = "missing node" if not name else f"bad node name {name!r}"
                    raise ValueError(
                        f"malformed graph statement {statement!r}: {what}; expected 'a -> b', 'a <-> b' or 'a'"
                    )
                if name not in nodes:
                    nodes.append(name)
            for a, op, b in zip(names[:-1], operators, names[1:], strict=True):
                if op == "->":
                    directed.append((a, b))
                elif op == "<-":
                    directed.append((b, a))
                else:
                    bidirected.append((a, b))
        return cls(nodes, directed, bidirected)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CausalGraph:
        """Builds a graph from `{"nodes": [...], "directed": [[a, b], ...], "bidirected": [[a, b], ...]}`.

        Raises:
            ValueError: If `data` is not such a dict (naming the unexpected key) or describes a bad graph.
        """
        if not isinstance(data, dict):
            raise ValueError(f"CausalGraph.from_dict expects a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"nodes", "directed", "bidirected"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in graph dict; expected 'nodes', 'directed', 'bidirected'")
        if "nodes" not in data:
            raise ValueError("graph dict has no 'nodes' key")
        return cls(data["nodes"], data.get("directed") or (), data.get("bidirected") or ())

    def to_dict(self) -> dict[str, list]:
        """Plain JSON/YAML form: `{"nodes": [...], "directed": [[a, b], ...], "bidirected": [[a, b], ...]}`."""
        return {
            "nodes": list(self._nodes),
            "directed": [list(edge) for edge in self._directed],
            "bidirected": [list(edge) for edge in self._bidirected],
        }

    def __str__(self) -> str:
        """Parseable text whose parse gives an equal graph with the same declaration order."""
        statements: list[tuple[str, tuple[str, ...]]] = []
        for node in self._nodes:
            i = self._index[node]
            edges = [(a, "->", b) for a, b in self._directed if max(self._index[a], self._index[b]) == i]
            for pair in self._bidirected:
                a, b = sorted(pair, key=self._index.__getitem__)
                if self._index[b] == i:
                    edges.append((a, "<->", b))
            edges.sort(key=lambda e: (self._index[e[0]] + self._index[e[2]] - i, e[1]))
            if not any(min(self._index[a], self._index[b]) < i for a, _, b in edges):
                statements.append((node, (node,)))
            statements += [(f"{a} {op} {b}", (a, b)) for a, op, b in edges]
        keep = [True] * len(statements)
        for k, (_, names) in enumerate(statements):
            if len(names) == 1:
                keep[k] = False
                if (
                    self._appearance_order([s for s, kept in zip(statements, keep, strict=True) if kept])
                    != self._nodes
                ):
                    keep[k] = True
        return "; ".join(text for (text, _), kept in zip(statements, keep, strict=True) if kept)

    @staticmethod
    def _appearance_order(statements: list[tuple[str, tuple[str, ...]]]) -> list[str]:
        return list(dict.fromkeys(name for _, names in statements for name in names))

    def __repr__(self) -> str:
        return f"CausalGraph.parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        """Equal when the node lists (with their order) and the sets of edges are the same."""
        if not isinstance(other, CausalGraph):
            return NotImplemented
        return (
            self._nodes == other._nodes
            and set(self._directed) == set(other._directed)
            and set(self._bidirected) == set(other._bidirected)
        )

    def __hash__(self) -> int:
        return hash((tuple(self._nodes), frozenset(self._directed), frozenset(self._bidirected)))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._index

    # ------------------------------------------------------------------ queries

    @property
    def nodes(self) -> list[str]:
        """Node names in declaration order."""
        return list(self._nodes)

    @property
    def directed(self) -> list[tuple[str, str]]:
        """Directed edges `(cause, effect)` in declaration order."""
        return list(self._directed)

    @property
    def bidirected(self) -> list[tuple[str, str]]:
        """Bidirected edges, each pair sorted, in declaration order."""
        return list(self._bidirected)

    def _check_node(self, node: Any) -> str:
        if not isinstance(node, str) or node not in self._index:
            raise ValueError(f"unknown node {node!r}; the graph's nodes are {self._nodes}")
        return node

    def _check_nodes(self, nodes: str | Iterable[str]) -> list[str]:
        if isinstance(nodes, str):
            return [self._check_node(nodes)]
        return [self._check_node(node) for node in nodes]

    def parents(self, node: str) -> list[str]:
        """Direct causes of `node`, in declaration order."""
        return list(self._parents[self._check_node(node)])

    def children(self, node: str) -> list[str]:
        """Direct effects of `node`, in declaration order."""
        return list(self._children[self._check_node(node)])

    def confounded(self, node: str) -> list[str]:
        """Nodes sharing a bidirected edge (a hidden confounder) with `node`, in declaration order."""
        node = self._check_node(node)
        neighbours = {b if a == node else a for a, b in self._bidirected if node in (a, b)}
        return sorted(neighbours, key=self._index.__getitem__)

    def _reach(self, nodes: str | Iterable[str], step: dict[str, list[str]]) -> set[str]:
        start = self._check_nodes(nodes)
        seen: set[str] = set()
        stack = list(start)
        while stack:
            for nxt in step[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen - set(start)

    def ancestors(self, nodes: str | Iterable[str]) -> set[str]:
        """Strict ancestors (through directed edges) of one node or a set of nodes, excluding the nodes given."""
        return self._reach(nodes, self._parents)

    def descendants(self, nodes: str | Iterable[str]) -> set[str]:
        """Strict descendants (through directed edges) of one node or a set of nodes, excluding the nodes given."""
        return self._reach(nodes, self._children)

    def topological_order(self) -> list[str]:
        """All nodes, causes before effects; ties are broken by declaration order."""
        return list(self._topological)

    def c_components(self) -> list[list[str]]:
        """Confounded components: the classes of nodes joined by bidirected paths.

        Returns:
            Every node in exactly one component (singletons included); members in topological order, and
            components ordered by their first member's topological position.
        """
        root = {node: node for node in self._nodes}

        def find(node: str) -> str:
            while root[node] != node:
                root[node] = root[root[node]]
                node = root[node]
            return node

        for a, b in self._bidirected:
            root[find(a)] = find(b)
        components: dict[str, list[str]] = {}
        for node in self._topological:
            components.setdefault(find(node), []).append(node)
        return list(components.values())

    def do(self, nodes: str | Iterable[str]) -> CausalGraph:
        """The mutilated graph of an intervention on `nodes`: their incoming and bidirected edges removed."""
        cut = set(self._check_nodes(nodes))
        return CausalGraph(
            self._nodes,
            [(a, b) for a, b in self._directed if b not in cut],
            [(a, b) for a, b in self._bidirected if a not in cut and b not in cut],
        )

    def subgraph(self, nodes: Iterable[str]) -> CausalGraph:
        """The graph induced on `nodes` (kept in this graph's declaration order)."""
        keep = set(self._check_nodes(nodes))
        return CausalGraph(
            [node for node in self._nodes if node in keep],
            [(a, b) for a, b in self._directed if a in keep and b in keep],
            [(a, b) for a, b in self._bidirected if a in keep and b in keep],
        )

    # ------------------------------------------------------------------ drawing

    def to_dot(self) -> str:
        """Graphviz DOT text; bidirected edges are dashed with arrowheads at both ends."""
        lines = ["digraph G {", "  rankdir=TB;", "  node [shape=ellipse];"]
        lines += [f'  "{node}";' for node in self._nodes]
        lines += [f'  "{a}" -> "{b}";' for a, b in self._directed]
        lines += [
            f'  "{a}" -> "{b}" [dir=both, style=dashed, constraint=false, color=gray40];' for a, b in self._bidirected
        ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """Mermaid flowchart text; bidirected edges are dotted with arrowheads at both ends."""
        lines = ["flowchart TD"]
        lines += [f"  {node}([{node}])" for node in self._nodes]
        lines += [f"  {a} --> {b}" for a, b in self._directed]
        lines += [f"  {a} <-.-> {b}" for a, b in self._bidirected]
        return "\n".join(lines) + "\n"

    def layout(self) -> dict[str, tuple[float, float]]:
        """Layered positions: y is minus the longest directed path from a root (the causal depth); within a layer,
        nodes are ordered by the mean x of their parents and spread evenly around 0.

        Returns:
            `{node: (x, y)}`.
        """
        depth: dict[str, int] = {}
        for node in self._topological:
            depth[node] = 1 + max((depth[p] for p in self._parents[node]), default=-1)
        layers: dict[int, list[str]] = {}
        for node in self._topological:
            layers.setdefault(depth[node], []).append(node)
        positions: dict[str, tuple[float, float]] = {}
        for d in sorted(layers):
            members = layers[d]
            if d > 0:
                members = sorted(
                    members,
                    key=lambda n: sum(positions[p][0] for p in self._parents[n]) / len(self._parents[n]),
                )
            for k, node in enumerate(members):
                positions[node] = (k - (len(members) - 1) / 2, -float(d))
        return positions

    def draw(
        self,
        path_or_ax: str | Path | Any | None = None,
        values: dict[str, str] | None = None,
        colors: dict[str, str] | None = None,
    ) -> Figure:
        """Draws the graph with matplotlib (Agg): layered by causal depth, confounders as dashed curved arcs.

        Args:
            path_or_ax: `None` (only return the figure), a file path (also save a PNG there) or a matplotlib
                Axes to draw into.
            values: Optional `{node: text}` printed under each node's name (e.g. factor values).
            colors: Optional `{node: matplotlib colour}` filling those nodes' boxes (e.g. to highlight an
                intervention); the others are light blue.

        Returns:
            The matplotlib Figure.

        Raises:
            ValueError: If `values` or `colors` names an unknown node.
        """
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyArrowPatch

        values, colors = dict(values or {}), dict(colors or {})
        for node in [*values, *colors]:
            self._check_node(node)
        positions = self.layout()
        xs = [p[0] for p in positions.values()] or [0.0]
        ys = [p[1] for p in positions.values()] or [0.0]
        width, height = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
        if path_or_ax is None or isinstance(path_or_ax, (str, Path)):
            fig = Figure(figsize=(max(3.0, 2.0 * width), max(2.5, 1.6 * height)), dpi=100)
            ax = fig.add_subplot(1, 1, 1)
        else:
            ax = path_or_ax
            fig = ax.figure
        ax.set_axis_off()
        for node, (x, y) in positions.items():
            label = node if node not in values else f"{node}\n{values[node]}"
            box = dict(boxstyle="round,pad=0.4", facecolor=colors.get(node, "#e8f0fe"), edgecolor="#1a4f9c")
            ax.text(x, y, label, ha="center", va="center", fontsize=11, bbox=box, zorder=3)
        arrow = dict(shrinkA=18, shrinkB=18, mutation_scale=14, zorder=2)
        for a, b in self._directed:
            ax.add_patch(FancyArrowPatch(positions[a], positions[b], arrowstyle="-|>", color="black", **arrow))
        for a, b in self._bidirected:
            ax.add_patch(
                FancyArrowPatch(
                    positions[a],
                    positions[b],
                    arrowstyle="<|-|>",
                    connectionstyle="arc3,rad=0.4",
                    linestyle="--",
                    color="#b03030",
                    **arrow,
                )
            )
        ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
        ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
        if isinstance(path_or_ax, (str, Path)):
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", bbox_inches="tight")
            _write_atomic(Path(path_or_ax), buffer.getvalue())
        return fig


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
