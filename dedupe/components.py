"""Connected components of the near-duplicate graph, as steps over grouped data.

Each grouping step receives ``(key, values)`` from a GroupByKey and reads ``values`` twice at
most, front to back, holding only a running minimum and a count: on runners whose grouped values
are streamed and re-iterable (Dataflow, Flink, Spark) a bucket, a node's neighbourhood or a cluster
can be larger than a worker's memory, and a corpus of identical documents never puts every id in
one worker's memory. (The steps are deliberately not written as a combiner plus a join: the
DaskRunner expands every fork-and-join in a pipeline into a copy of its upstream graph, so a
join per step makes its graph grow exponentially with the rounds.)

Nodes are strings that sort as documents do (``id \x00 source``), so "smallest node" is the
documented keep rule. The algorithm is Kiveris et al.'s alternating large-star / small-star
(SoCC 2014): each round makes every node point at a smaller one closer to its component's
minimum; it stops when a round changes no edge, after O(log n) rounds. The steps count their
changes as marker elements that travel with the edges (key ``MARKER``), so convergence is known
without comparing edge sets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

MARKER = "\x00changes"  # sorts before every node; never a node (nodes start with a document id)


PUBLISHED = "\x01"  # prefix of the nodes of a published corpus: they sort first, so they are kept


def node_key(doc_id: str, source: str) -> str:
    return f"{doc_id}\x00{source}"


def published_node(doc_id: str, source: str) -> str:
    return PUBLISHED + node_key(doc_id, source)


def is_published(node: str) -> bool:
    return node.startswith(PUBLISHED)


def node_id(node: str) -> str:
    return node.split("\x00", 1)[0].removeprefix(PUBLISHED)


#: buckets up to this size yield every pair (each is then verified); larger ones a star
ALL_PAIRS_MAX = 32


def bucket_edges(item, all_pairs_max: int = ALL_PAIRS_MAX) -> Iterator[tuple[str, str]]:
    """LSH bucket → candidate edges (larger, smaller).

    A bucket of at most ``all_pairs_max`` members yields all its pairs, as an in-memory LSH would (so
    verification sees every candidate pair); a larger one yields an edge from each member to the
    bucket's smallest member: two passes, at most ``all_pairs_max`` members held. (Members that
    are near duplicates of each other but not of the smallest one are then missed: the price of
    bounded work on giant buckets.)
    """
    _, members = item
    small: list[str] = []
    for node in members:
        small.append(node)
        if len(small) > all_pairs_max:
            break
    else:
        small = sorted(set(small))
        for i, v in enumerate(small):
            for u in small[i + 1 :]:
                yield u, v
        return
    m = min(members)
    for node in members:
        if node != m:
            yield node, m


def _pass_markers(values: Iterable) -> Iterator[tuple[str, tuple]]:
    totals: dict[tuple, int] = defaultdict(int)
    for r, step, _, n in values:
        totals[(r, step)] += n
    for (r, step), n in sorted(totals.items()):
        yield MARKER, (r, step, "", n)


def large_star(item, r: int) -> Iterator[tuple]:
    """Node u with neighbours Γ(u): every larger neighbour is re-attached to m = min(Γ(u) ∪ {u}).
    Changes: the edges emitted when m ≠ u (a larger neighbour moves to a smaller node)."""
    u, neighbours = item
    if u == MARKER:
        yield from _pass_markers(neighbours)
        return
    m = min(min(neighbours), u)
    changed = 0
    for v in neighbours:
        if v > u:
            yield v, m
            changed += m != u
    if changed:
        yield MARKER, (r, "large", u, changed)


def small_star(item, r: int) -> Iterator[tuple]:
    """Node u with its smaller neighbours N(u): u and all of N(u) attach to m = min(N(u)).
    Changes: the edges from the other members of N(u) to m."""
    u, smaller = item
    if u == MARKER:
        yield from _pass_markers(smaller)
        return
    m = min(smaller)
    yield u, m
    changed = 0
    for v in smaller:
        if v != m:
            yield v, m
            changed += 1
    if changed:
        yield MARKER, (r, "small", u, changed)


def both_directions(edge: tuple) -> Iterator[tuple]:
    u, v = edge
    if u == MARKER:
        yield edge
        return
    yield u, v
    yield v, u


def larger_first(edge: tuple) -> tuple:
    u, v = edge
    if u == MARKER or u > v:
        return edge
    return v, u


def is_marker(edge: tuple) -> bool:
    return edge[0] == MARKER


def union_find_components(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """In-memory reference: node → smallest node of its component (tests and small runs)."""
    parent: dict[str, str] = {n: n for n in nodes}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for u, v in edges:
        ru, rv = find(u), find(v)
        if ru != rv:
            if ru < rv:
                parent[rv] = ru
            else:
                parent[ru] = rv
    return {n: find(n) for n in parent}
