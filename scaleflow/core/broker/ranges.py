"""Range lists: sorted, disjoint ``(start, end)`` slot ranges, ends inclusive."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

RangeList = list[tuple[int, int]]


def normalize(ranges: Iterable[tuple[int, int]]) -> RangeList:
    """Sorted, with touching or overlapping ranges merged."""
    out: RangeList = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def count(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(end - start + 1 for start, end in ranges)


def slots(ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
    for start, end in ranges:
        yield from range(start, end + 1)


def take_from_end(ranges: RangeList, n: int) -> tuple[RangeList, RangeList]:
    """(what remains, the last ``n`` slots)."""
    rest = list(normalize(ranges))
    taken: RangeList = []
    while n > 0 and rest:
        start, end = rest.pop()
        size = end - start + 1
        if size <= n:
            taken.append((start, end))
            n -= size
        else:
            taken.append((end - n + 1, end))
            rest.append((start, end - n))
            n = 0
    return rest, normalize(taken)


def take_from_start(ranges: RangeList, n: int) -> tuple[RangeList, RangeList]:
    """(what remains, the first ``n`` slots)."""
    rest = list(normalize(ranges))
    taken: RangeList = []
    while n > 0 and rest:
        start, end = rest.pop(0)
        size = end - start + 1
        if size <= n:
            taken.append((start, end))
            n -= size
        else:
            taken.append((start, start + n - 1))
            rest.insert(0, (start + n, end))
            n = 0
    return rest, normalize(taken)


def label(ranges: Iterable[tuple[int, int]]) -> str:
    return ",".join(f"{s}-{e}" if s != e else str(s) for s, e in ranges)
