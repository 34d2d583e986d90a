"""Choosing bit-widths under the error budget: exact on small
rounds, feasible always."""

import itertools

import numpy as np
import pytest

from qfd_app.edge.bitwidths import choose_bits


def random_table(rng, n, c):
    energy = np.cumsum(rng.uniform(0.01, 1, (n, c)), axis=1) * rng.uniform(
        0.5, 2, (n, 1)
    )
    error = np.cumsum(rng.uniform(0.01, 1, (n, c))[:, ::-1], axis=1)[
        :, ::-1
    ] * rng.uniform(0.1, 3, (n, 1))
    energy[:, 1:][rng.random((n, c - 1)) < 0.2] = np.inf  # padding or missed deadlines
    return energy, error


def brute_force(energy, error, budget):
    best = np.inf
    for combo in itertools.product(range(energy.shape[1]), repeat=len(energy)):
        rows = np.arange(len(energy))
        if error[rows, combo].sum() <= budget * (1 + 1e-12):
            best = min(best, energy[rows, combo].sum())
    return best


def test_small_rounds_are_solved_exactly():
    rng = np.random.default_rng(0)
    for _ in range(400):
        n, c = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        energy, error = random_table(rng, n, c)
        usable_error = np.where(np.isfinite(energy), error, np.inf)
        budget = rng.uniform(
            usable_error.min(axis=1).sum() * 0.9, error[:, 0].sum() * 1.1
        )
        best = brute_force(energy, usable_error, budget)
        choice = choose_bits(energy, error, budget)
        rows = np.arange(n)
        assert choice.budget_met == np.isfinite(best)
        if choice.budget_met:
            assert error[rows, choice.index].sum() <= budget * (1 + 1e-12)
            assert energy[rows, choice.index].sum() == pytest.approx(best, rel=1e-12)


def test_without_the_exact_core_the_choice_still_meets_the_budget_and_is_near_the_optimum():  # noqa: E501
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(300):
        energy, error = random_table(rng, int(rng.integers(2, 6)), 4)
        usable_error = np.where(np.isfinite(energy), error, np.inf)
        budget = rng.uniform(usable_error.min(axis=1).sum(), error[:, 0].sum())
        choice = choose_bits(energy, error, budget, exact_limit=0)
        rows = np.arange(len(energy))
        assert choice.budget_met and error[rows, choice.index].sum() <= budget * (
            1 + 1e-12
        )
        gaps.append(
            energy[rows, choice.index].sum() / brute_force(energy, usable_error, budget)
            - 1
        )
    assert np.median(gaps) == 0.0 and np.mean(gaps) < 0.05


def test_a_slack_budget_picks_the_cheapest_and_no_budget_means_infinity():
    energy, error = random_table(np.random.default_rng(2), 5, 4)
    for budget in (np.inf, 1e9):
        choice = choose_bits(energy, error, budget)
        assert (
            np.array_equal(choice.index, np.argmin(energy, axis=1))
            and choice.price == 0.0
        )


def test_an_unmeetable_budget_picks_the_least_error_usable_candidate():
    energy, error = random_table(np.random.default_rng(3), 5, 4)
    choice = choose_bits(energy, error, 1e-9)
    assert not choice.budget_met
    assert np.array_equal(
        choice.index, np.argmin(np.where(np.isfinite(energy), error, np.inf), axis=1)
    )


def test_large_rounds_meet_the_budget_close_to_the_lagrangian_bound():
    rng = np.random.default_rng(4)
    energy, error = random_table(rng, 20_000, 9)
    usable_error = np.where(np.isfinite(energy), error, np.inf)
    budget = 0.5 * (usable_error.min(axis=1).sum() + error[:, 0].sum())
    choice = choose_bits(energy, error, budget)
    rows = np.arange(len(energy))
    assert choice.budget_met and error[rows, choice.index].sum() <= budget
    # weak duality: any λ gives a lower bound
    # Σ min(E + λQ) − λ·budget on the optimum
    lam = choice.price
    bound = np.min(energy + lam * usable_error, axis=1).sum() - lam * budget
    assert energy[rows, choice.index].sum() <= bound * (1 + 1e-4)
