"""The statistics the engine's proof, the judge audit and the watch guard share (numpy and the
standard library only; ``tests/fit/test_stats.py`` checks each against scipy).

- :func:`paired_bootstrap` — percentile CI of a mean of paired differences (the held-out gain);
- :func:`wilson_interval` — Wilson score interval of a proportion (the judge's precision/recall);
- :func:`sign_test` — one-sided exact sign test on discordant pairs (the watch guard).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from nudge_rag.errors import BadInputError

__all__ = ["paired_bootstrap", "sign_test", "wilson_interval"]

_INDEX_CELLS = 2_000_000  # resample indices drawn at once (bounds the index matrix)


def paired_bootstrap(
    diffs: np.ndarray, *, n_resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile CI of the mean of per-query ``diffs`` (after − before), resampling queries.

    ``n_resamples`` means of ``len(diffs)`` draws with replacement (``default_rng(seed)``); the
    interval is their ``α`` and ``1 − α`` quantiles, ``α = (1 − confidence) / 2``. ``(nan, nan)``
    without any query.
    """
    if len(diffs) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, _INDEX_CELLS // len(diffs))
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        idx = rng.integers(0, len(diffs), size=(stop - start, len(diffs)))
        means[start:stop] = diffs[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def wilson_interval(hits: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (``(0, 1)`` when ``n == 0``).

    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = hits / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def sign_test(losses: int, wins: int) -> float:
    """One-sided exact sign test: ``P(X ≥ losses)`` for ``X ~ Binomial(losses + wins, 1/2)``.

    On paired hits (base, version) the discordant pairs are the searches only one of the two
    found: ``losses`` found by the base alone, ``wins`` by the version alone. This is McNemar's
    exact test, one-sided towards a loss (1.0 without discordant pairs).
    """
    if losses < 0 or wins < 0:
        msg = f"sign_test: found losses={losses}, wins={wins}; expected counts ≥ 0."
        raise BadInputError(msg)
    n = losses + wins
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(losses, n + 1)) / 2**n  # exact integers
