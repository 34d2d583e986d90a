"""The comparison's statistics against scipy's t tests, over many random draws."""

import math

import numpy as np
import pytest
from scipy import stats

from qfd_app.runs.stats import mean_interval, paired_difference, paired_ratio


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_mean_interval_is_scipys_one_sample_t_interval(n):
    rng = np.random.default_rng(n)
    for _ in range(200):
        x = rng.normal(rng.normal(0, 10), rng.uniform(0.01, 5), size=n)
        ours = mean_interval(x, confidence=0.9 if n == 5 else 0.95)
        ci = stats.ttest_1samp(x, 0).confidence_interval(
            confidence_level=0.9 if n == 5 else 0.95
        )
        assert ours.n == n
        assert ours.mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
        assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_paired_difference_is_scipys_paired_t_interval():
    rng = np.random.default_rng(1)
    paired_widths, unpaired_widths = [], []
    for _ in range(200):
        seed_effect = rng.normal(0, 3, size=3)  # what a seed does to both strategies
        a = 5 + seed_effect + rng.normal(0, 0.3, size=3)
        b = 4 + seed_effect + rng.normal(0, 0.3, size=3)
        ours = paired_difference(a, b)
        ci = stats.ttest_rel(a, b).confidence_interval()
        assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
        unpaired = stats.ttest_ind(a, b).confidence_interval()
        paired_widths.append(ours.high - ours.low)
        unpaired_widths.append(unpaired.high - unpaired.low)
    # pairing cancels the seed's effect: far narrower than the unpaired interval
    assert np.median(paired_widths) < 0.5 * np.median(unpaired_widths)


def test_paired_ratio_is_the_t_interval_of_the_per_seed_ratios():
    rng = np.random.default_rng(2)
    for _ in range(100):
        b = rng.uniform(1, 10, size=4)
        a = b * rng.uniform(0.3, 0.6, size=4)
        ours = paired_ratio(a, b)
        ci = stats.ttest_1samp(a / b, 0).confidence_interval()
        assert ours.mean == pytest.approx(np.mean(a / b))
        assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
        assert 0.3 <= ours.mean <= 0.6


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = sum(
        (i := mean_interval(rng.normal(2.0, 1.0, size=3))).low <= 2.0 <= i.high
        for _ in range(4000)
    )
    # binomial(4000, 0.95): sd 0.34 %; ±1.5 % is over 4 sd
    assert abs(covered / 4000 - 0.95) < 0.015


def test_missing_values_are_left_out_and_one_value_has_no_interval():
    i = mean_interval([1.0, math.nan, 3.0])
    assert (i.n, i.mean) == (2, 2.0)
    one = mean_interval([4.0])
    assert one.mean == 4.0 and math.isnan(one.low) and math.isnan(one.high)
    assert one.format() == "4"
    assert math.isnan(mean_interval([]).mean)
    assert math.isnan(paired_ratio([1.0], [0.0]).mean)  # a zero reference: no ratio


def test_format_shows_the_half_width():
    assert mean_interval([1.0, 2.0, 3.0]).format(".2f") == "2.00 ± 2.48"


def test_pairs_need_one_value_per_seed_on_both_sides():
    with pytest.raises(ValueError, match="one value per seed.*3 and 2"):
        paired_difference([1, 2, 3], [1, 2])
