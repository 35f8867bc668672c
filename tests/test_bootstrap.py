"""The 95 % bootstrap intervals over items (common section 2, and neurons.py's generic one): known answers,
seeding, pairing, strata."""
import math
import sys
from pathlib import Path

import numpy
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import common  # noqa: E402
import neurons  # noqa: E402


def test_all_correct_items_give_exactly_one_and_none_give_exactly_zero():
    assert common.bootstrap_mean_ci([True] * 50) == (1.0, 1.0)
    assert common.bootstrap_mean_ci(numpy.zeros(50)) == (0.0, 0.0)
    assert neurons.bootstrap_ci(lambda i: 1.0, 50) == (1.0, 1.0)


def test_half_correct_of_400_is_close_to_the_normal_interval():
    values = numpy.array([1, 0] * 200)
    half = 1.96 * math.sqrt(0.25 / 400)
    for low, high in (common.bootstrap_mean_ci(values), neurons.bootstrap_ci(lambda i: values[i].mean(), 400)):
        assert low == pytest.approx(0.5 - half, abs=0.01) and high == pytest.approx(0.5 + half, abs=0.01)


def test_the_generic_and_the_vectorised_mean_agree_on_one_array():
    values = numpy.random.default_rng(3).random(37)
    assert common.bootstrap_mean_ci(values, seed=5) == neurons.bootstrap_ci(lambda i: values[i].mean(), 37, seed=5)


def test_seeded_reproducible_and_another_seed_differs():
    values = numpy.random.default_rng(0).integers(0, 2, 300)
    assert common.bootstrap_mean_ci(values) == common.bootstrap_mean_ci(values, seed=0)
    assert common.bootstrap_mean_ci(values) != common.bootstrap_mean_ci(values, seed=1)
    statistic = lambda i: numpy.median(values[i] * i)  # noqa: E731
    assert neurons.bootstrap_ci(statistic, 300, seed=2) == neurons.bootstrap_ci(statistic, 300, seed=2)
    assert neurons.bootstrap_ci(statistic, 300, seed=2) != neurons.bootstrap_ci(statistic, 300, seed=3)


def test_paired_delta_of_identical_before_and_after_is_exactly_zero():
    before = numpy.random.default_rng(1).integers(0, 2, 120).astype(bool)
    assert common.bootstrap_paired_delta_ci(before, before) == (0.0, 0.0)
    strata = [numpy.random.default_rng(k).integers(0, 2, (3, 10 + k)) for k in range(3)]  # 3 tasks × 3 seeds
    assert common.bootstrap_paired_delta_ci(strata, strata) == (0.0, 0.0)


def test_paired_delta_is_narrower_than_unpaired_and_contains_the_point_delta():
    rng = numpy.random.default_rng(4)
    before = rng.integers(0, 2, 500)
    after = before.copy()
    after[rng.choice(500, 25, replace=False)] = 0  # a few items flip to wrong
    low, high = common.bootstrap_paired_delta_ci(before, after)
    delta = after.mean() - before.mean()
    assert low <= delta <= high <= 0
    assert high - low < 0.05  # unpaired, two independent means of 500 would span about 0.12


def test_strata_average_tasks_and_resample_seeds_jointly():
    # two tasks; the statistic is the mean over tasks (and rows) of the per-task mean
    easy, hard = numpy.ones((2, 30)), numpy.zeros((2, 50))
    assert common.bootstrap_mean_ci([easy, hard]) == (0.5, 0.5)
    # two seeds that disagree on every item: a joint draw keeps their mean at exactly 1/2
    seeds = numpy.array([[1, 0] * 20, [0, 1] * 20])
    assert common.bootstrap_mean_ci([seeds]) == (0.5, 0.5)
    assert math.isnan(common.bootstrap_mean_ci([])[0]) and math.isnan(neurons.bootstrap_ci(len, 0)[1])
    assert common.BOOTSTRAP_RESAMPLES == 1000 and "1000 resamples, seed 0" in common.BOOTSTRAP_NOTE
