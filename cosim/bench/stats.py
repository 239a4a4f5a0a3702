"""How the bench repeats runs and turns them into a verdict (see the package docstring for why): runs taken in turn
with their counterpart, and a paired ratio (the median of the pairs' ratios, its distribution-free interval, and the
fastest runs' ratio beside it). The interval itself is cosim.stats' ``median_interval``, shared with the sweeps."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

from cosim.stats import median_interval

Measured = TypeVar("Measured")


def in_turn(count: int, measurements: Sequence[Callable[[], Measured]]) -> list[list[Measured]]:
    """``count`` results of each measurement, taken in turn so that drift in the machine's speed affects them alike,
    the one that goes first alternating from round to round (a bias of a round's later runs cancels too)."""
    results: list[list[Measured]] = [[] for _ in measurements]
    for index in range(count):
        order = range(len(measurements)) if index % 2 == 0 else reversed(range(len(measurements)))
        for which in order:
            results[which].append(measurements[which]())
    return results


class PairedRatio(NamedTuple):
    median: float  # of the pairs' ratios: the verdict
    interval: tuple[float, float]  # its confidence interval
    fastest: float  # the fastest run of the second side against the fastest of the first


def paired_ratio(first: Sequence[float], second: Sequence[float]) -> PairedRatio:
    """The second side against the first from pairs of runs (``first[i]`` and ``second[i]`` taken together)."""
    ratios = [b / a for a, b in zip(first, second)]
    return PairedRatio(statistics.median(ratios), median_interval(ratios), min(second) / min(first))
