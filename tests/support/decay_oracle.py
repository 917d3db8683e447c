"""The decayed statistics straight from their definition, sample by sample, for the tests.

After batches B1..Bk (in the order the server merged them), a sample of batch Bj weighs
``2 ** (-a / H)``, ``a`` being the number of samples in the batches merged after Bj. The
decayed statistics are the total weight, the weighted mean and the weighted sum of squared
deviations. Computed here with correctly rounded sums (``math.fsum``), independently of the
merge script's incremental (weighted Chan) update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def decayed_by_definition(batches: Sequence[Sequence[float]], half_life: float) -> tuple[float, float, float]:
    """(total weight, weighted mean, weighted sum of squared deviations) of ``batches``."""
    weights: list[float] = []
    values: list[float] = []
    after = 0
    for batch in reversed(batches):
        weight = 2.0 ** (-after / half_life)
        weights.extend([weight] * len(batch))
        values.extend(batch)
        after += len(batch)
    total = math.fsum(weights)
    mean = math.fsum(w * v for w, v in zip(weights, values)) / total
    m2 = math.fsum(w * (v - mean) ** 2 for w, v in zip(weights, values))
    return total, mean, m2


def assert_decayed(decayed: object, batches: Sequence[Sequence[float]], half_life: float,
                   rel: float = 1e-9) -> None:
    """``decayed`` (a ``DecayedStats``) equals the definition within ``rel`` relative: weight
    and weighted variance relative to themselves, the mean within ``rel`` of the weighted std
    (relative to the mean itself, 1e-9 of an offset of 1e6 would allow an error of 1e-3, far
    more than the spread's rounding)."""
    weight, mean, m2 = decayed_by_definition(batches, half_life)
    got_weight, got_mean, got_m2 = decayed.weight, decayed.mean, decayed.m2  # type: ignore[attr-defined]
    assert math.isclose(got_weight, weight, rel_tol=rel), (got_weight, weight)
    assert abs(got_mean - mean) <= rel * math.sqrt(m2 / weight), (got_mean, mean, math.sqrt(m2 / weight))
    assert math.isclose(got_m2 / got_weight, m2 / weight, rel_tol=rel), (got_m2 / got_weight, m2 / weight)
