"""The statistics of ``nudge_rag.fit.stats`` against scipy, over grids that include the edges
(no trials, no successes, all successes, all ties)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from nudge_rag.errors import BadInputError
from nudge_rag.fit.stats import paired_bootstrap, sign_test, wilson_interval

LEVELS = (0.8, 0.9, 0.95, 0.99)


def test_sign_test_is_scipys_one_sided_binomial_test():
    for n in range(1, 41):
        for losses in range(n + 1):
            want = sp.binomtest(losses, n, p=0.5, alternative="greater").pvalue
            assert sign_test(losses, n - losses) == pytest.approx(want, rel=1e-9, abs=1e-15)
    for losses, wins in [(150, 120), (600, 540), (1000, 0), (0, 1000)]:
        want = sp.binomtest(losses, losses + wins, alternative="greater").pvalue
        assert sign_test(losses, wins) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_sign_test_without_discordant_pairs_is_one_and_refuses_negative_counts():
    assert sign_test(0, 0) == 1.0
    assert sign_test(0, 7) == 1.0  # no loss at all: nothing speaks for one
    with pytest.raises(BadInputError, match=r"sign_test: found losses=-1, wins=3; expected"):
        sign_test(-1, 3)
    with pytest.raises(ValueError, match="expected counts ≥ 0"):
        sign_test(2, -1)


def test_wilson_interval_is_scipys_wilson_interval():
    for level in LEVELS:
        for n in (*range(1, 31), 57, 100, 1000):
            for hits in sorted({0, 1, n // 3, n // 2, n - 1, n}):
                got = wilson_interval(hits, n, confidence=level)
                ci = sp.binomtest(hits, n).proportion_ci(confidence_level=level, method="wilson")
                assert got == pytest.approx((ci.low, ci.high), abs=1e-12), (hits, n, level)


def test_wilson_interval_without_trials_is_the_whole_unit_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 0, confidence=0.5) == (0.0, 1.0)


def _percentile_interval(diffs: np.ndarray, n_resamples: int, level: float, seed: int):
    """The percentile bootstrap written out: one draw of every resample's indices."""
    idx = np.random.default_rng(seed).integers(0, len(diffs), size=(n_resamples, len(diffs)))
    means = diffs[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return np.quantile(means, alpha), np.quantile(means, 1 - alpha)


@pytest.mark.parametrize("n", [1, 2, 5, 30, 200])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_paired_bootstrap_is_the_percentile_interval_of_resampled_query_means(n, level):
    diffs = np.random.default_rng(n).normal(0.02, 0.1, n)
    for seed in (0, 7):
        got = paired_bootstrap(diffs, n_resamples=2000, confidence=level, seed=seed)
        assert got == pytest.approx(_percentile_interval(diffs, 2000, level, seed), abs=1e-12)


@pytest.mark.parametrize(("n", "n_resamples"), [(40, 20_000), (3000, 2000)])
def test_paired_bootstrap_agrees_with_scipys_percentile_bootstrap(n, n_resamples):
    # (3000, 2000): 3000 × 2000 indices are drawn in bounded chunks, not in one matrix
    diffs = np.random.default_rng(1).normal(0.03, 0.2, n)
    for level in (0.9, 0.95):
        got = paired_bootstrap(diffs, n_resamples=n_resamples, confidence=level, seed=3)
        ref = sp.bootstrap(
            (diffs,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(11),
        ).confidence_interval
        # two Monte Carlo estimates of the same quantiles: they agree to a few % of the SE
        se = diffs.std(ddof=1) / np.sqrt(n)
        assert got == pytest.approx((ref.low, ref.high), abs=0.06 * se)


def test_paired_bootstrap_edges_no_queries_one_query_all_ties():
    low, high = paired_bootstrap(np.zeros(0), n_resamples=100, confidence=0.95, seed=0)
    assert np.isnan(low) and np.isnan(high)
    one = paired_bootstrap(np.array([0.25]), n_resamples=100, confidence=0.95, seed=0)
    assert one == pytest.approx((0.25, 0.25))
    for tie in (0.0, -0.5):  # every query moved alike: no spread, the CI is the point
        ci = paired_bootstrap(np.full(50, tie), n_resamples=500, confidence=0.95, seed=0)
        assert ci == pytest.approx((tie, tie))
