"""
Figures over rounds: the median with its spread, and comparisons that say
"no measurable difference" when the spreads overlap.

Plain Python, without Django or the bench extra: the tests read it too.
"""

from collections.abc import Callable, Sequence
from itertools import product
from statistics import median

Measure = Callable[[float, float], float]


def difference(a: float, b: float) -> float:
    """``a - b``, in their unit."""
    return a - b


def ratio(a: float, b: float) -> float:
    """``a / b``: how many times ``b`` ``a`` is."""
    return a / b if b else float("inf")


def percent_less(a: float, b: float) -> float:
    """How much less ``a`` is than ``b``, in percent of ``b`` (negative when more)."""
    return 100 * (1 - a / b) if b else float("nan")


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """
    One figure over rounds: ``{"median", "min", "max", "rounds"}``.

    Raises ``ValueError`` when ``values`` is empty.
    """
    if not values:
        raise ValueError("a spread needs at least one round")
    return {
        "median": float(median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "rounds": len(values),
    }


def overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether the ranges ``min(a)``–``max(a)`` and ``min(b)``–``max(b)`` share a point."""
    return min(a) <= max(b) and min(b) <= max(a)


def compare(a: Sequence[float], b: Sequence[float], measure: Measure) -> dict[str, object]:
    """
    ``a`` against ``b``, each one figure's values over rounds.

    Returns ``{"measurable", "value", "low", "high", "pairs"}``: whether the
    two spreads are apart (``False`` when they overlap, which the report
    reads as "no measurable difference"); ``measure`` of the two medians;
    the smallest and largest ``measure`` of a pair of rounds. Pairs are
    round by round (``"pairs": "round"``) when ``a`` and ``b`` have as many
    rounds, since interleaved rounds shared the machine's conditions;
    otherwise every round of ``a`` against every round of ``b`` (``"all"``).
    """
    if len(a) == len(b):
        pairs, how = list(zip(a, b, strict=True)), "round"
    else:
        pairs, how = list(product(a, b)), "all"
    each = [measure(x, y) for x, y in pairs]
    return {
        "measurable": not overlap(a, b),
        "value": measure(median(a), median(b)),
        "low": min(each),
        "high": max(each),
        "pairs": how,
    }
