"""Which node a scale-in takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scaleflow.core.models import Node, NodeState, Selector


def candidates(nodes: Sequence[Node], exclude: set[str] = frozenset()) -> list[Node]:
    return [n for n in nodes if n.state == NodeState.READY and n.id not in exclude]


def select_node(
    nodes: Sequence[Node],
    selector: Selector,
    load: Mapping[str, float] | None = None,
    exclude: set[str] = frozenset(),
) -> Node | None:
    """Pick the node to remove; ties go to the newest node (the coldest cache).

    ``load`` maps node id to a busy-ness figure (client connections, or the CPU
    share allocated on a Nomad node); it is only read by ``least_busy``.
    """
    pool = candidates(nodes, exclude)
    if not pool:
        return None
    newest_first = sorted(pool, key=lambda n: (n.created_at, n.id), reverse=True)
    if selector == Selector.NEWEST:
        return newest_first[0]
    if selector == Selector.OLDEST:
        return newest_first[-1]
    load = load or {}
    return min(newest_first, key=lambda n: load.get(n.id, float("inf")))
