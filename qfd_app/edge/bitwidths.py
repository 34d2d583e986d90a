"""Choosing one bit-width per device under the error budget
(a multiple-choice knapsack).

Given, for every device n and candidate k, the energy E[n, k] of its best plan (inf
when the candidate misses the deadline) and its weighted error Q[n, k] = w_n² V_n(b_k),
choose one k per device to

    minimise  Σ_n E[n, k_n]   subject to   Σ_n Q[n, k_n] ≤ budget.

Steps (docs/model.md §3.3):

1. **Lagrangian.** For a price λ ≥ 0 each device alone picks argmin_k E + λ Q. The
   error of these picks falls as λ grows; bisect λ until the picks just below and just
   above the smallest λ that meets the budget differ on at most one device. Each step
   tries the median of the switching prices still inside the bracket; a device whose
   pick is the same at both ends of the bracket keeps it, so each step only revisits the
   devices still in play.
2. **Greedy repair.** The picks just below the bracket miss the budget, those just above
   meet it. From the first, buy the upgrade with the least extra energy per unit of
   error removed until the budget holds; from either, take back the downgrade that saves
   most while the budget still holds. Keep the cheaper result.
3. **Exact core.** Enumerate every combination of the devices nearest their switching
   point, the others fixed (all devices and candidates when the product of their
   candidate counts is at most `exact_limit`: small rounds are solved exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Relative slack on the budget, so that a choice meeting it exactly is
# not lost to rounding.
BUDGET_RTOL = 1e-12


@dataclass(frozen=True)
class Choice:
    """The chosen candidate of each device.

    Attributes
    ----------
    index : int array, shape (N,)
        Column of the chosen candidate.
    budget_met : bool
        False when no choice meets the budget; then every device has its most precise
        candidate that is feasible.
    price : float
        λ, the energy (J) per unit of weighted error at the solution
        (0 if the budget is slack).
    """

    index: NDArray[np.int64]
    budget_met: bool
    price: float


def choose_bits(
    energy_j: NDArray[np.float64],
    weighted_error: NDArray[np.float64],
    budget: float,
    *,
    exact_limit: int = 1 << 16,
    price_hint: float | None = None,
) -> Choice:
    """Pick one candidate per row of `energy_j` (N, C) within the error budget.

    Parameters
    ----------
    energy_j : ndarray, shape (N, C)
        Energy of each candidate; inf marks a candidate that is padding or misses the
        deadline. Every row needs at least one finite entry.
    weighted_error : ndarray, shape (N, C)
        Q = w² V of each candidate (finite where `energy_j` is).
    budget : float
        Bound on Σ Q; inf switches the budget off.
    exact_limit : int
        Most combinations enumerated in the exact core (0 or 1: no enumeration).
    price_hint : float, optional
        A λ near the answer (e.g. the previous round's or solve's), to
        start bracketing from.

    Returns
    -------
    Choice
    """
    energy = np.asarray(energy_j, dtype=float)
    usable = np.isfinite(energy)
    error = np.where(usable, weighted_error, np.inf)
    rows = np.arange(len(energy))
    cheapest = np.argmin(energy, axis=1)
    limit = budget * (1 + BUDGET_RTOL)
    if error[rows, cheapest].sum() <= limit:
        return Choice(cheapest, True, 0.0)
    precise = _most_precise(energy, error)
    if error[rows, precise].sum() > limit:
        return Choice(precise, False, np.inf)
    lam_lo, pick_lo, lam_hi, pick_hi = _bracket_price(energy, error, limit, price_hint)
    best = _repair(energy, error, pick_lo, limit)
    for start in (best, pick_hi):
        candidate = _take_back(energy, error, start.copy(), limit)
        if energy[rows, candidate].sum() < energy[rows, best].sum():
            best = candidate
    best = _exact_core(energy, error, best, lam_hi, limit, exact_limit)
    return Choice(best, True, lam_hi)


def _most_precise(energy: NDArray, error: NDArray) -> NDArray[np.int64]:
    """Per row, the least-error usable candidate; among equal errors the cheapest."""
    least = error.min(axis=1, keepdims=True)
    tied = error <= least * (1 + 1e-12)
    return np.argmin(np.where(tied, energy, np.inf), axis=1)


def _bracket_price(energy: NDArray, error: NDArray, limit: float, hint: float | None):
    """Bisect λ until the picks below and above differ on at most one device.

    Each step tries the median of the switching prices still inside the bracket (the
    slopes −ΔE/ΔQ between neighbouring candidates), so that they halve with every
    step; the geometric mean serves when none is left inside.

    Returns (λ_lo, picks at λ_lo [over budget], λ_hi, picks at
    λ_hi [within budget]).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        pool = (np.diff(energy, axis=1) / -np.diff(error, axis=1)).ravel()
    pool = pool[(pool > 0) & (pool < np.inf)]  # nan and ±inf drop out
    lam_lo, lam_hi = _initial_bracket(energy, error, limit, pool, hint)
    pick_lo, pick_hi = _picks(energy, error, lam_lo), _picks(energy, error, lam_hi)
    live = np.flatnonzero(pick_lo != pick_hi)  # devices whose pick still depends on λ
    settled = np.ones(len(energy), bool)
    settled[live] = False
    err_fixed = error[settled, pick_hi[settled]].sum()
    while live.size > 1 and lam_hi > lam_lo * (1 + 1e-15):
        pool = pool[(pool > lam_lo) & (pool < lam_hi)]
        # a median of ≤ ~1000 is pivot enough
        sample = pool[:: max(pool.size // 1000, 1)]
        lam = (
            float(np.median(sample)) if sample.size else float(np.sqrt(lam_lo * lam_hi))
        )
        if not lam_lo < lam < lam_hi:
            lam = float(np.sqrt(lam_lo * lam_hi))
        if 2 * live.size > len(energy):  # cheaper than copying most rows
            pick = _picks(energy, error, lam)[live]
        else:
            pick = _picks(energy[live], error[live], lam)
        if err_fixed + error[live, pick].sum() <= limit:
            lam_hi, pick_hi[live] = lam, pick
        else:
            lam_lo, pick_lo[live] = lam, pick
        same = pick_lo[live] == pick_hi[live]
        err_fixed += error[live[same], pick_hi[live[same]]].sum()
        live = live[~same]
    return lam_lo, pick_lo, lam_hi, pick_hi


def _initial_bracket(energy, error, limit, pool, hint) -> tuple[float, float]:
    """Prices λ_lo (picks over budget) and λ_hi (within budget).

    Start from a narrow bracket around `hint`, or from the range of the switching
    prices, and widen it until it brackets the budget.
    """
    if hint is not None and 0 < hint < np.inf:
        lam_lo, lam_hi, widen = hint / 1.01, hint * 1.01, 10.0
    elif pool.size:
        lam_lo, lam_hi, widen = 0.5 * float(pool.min()), 2.0 * float(pool.max()), 1e3
    else:
        lam_lo, lam_hi, widen = 1.0, 1.0, 1e3
    rows = np.arange(len(energy))
    while error[rows, _picks(energy, error, lam_hi)].sum() > limit:
        lam_hi *= widen
    while error[rows, _picks(energy, error, lam_lo)].sum() <= limit:
        lam_lo /= widen
    return lam_lo, lam_hi


def _picks(energy: NDArray, error: NDArray, lam: float) -> NDArray[np.int64]:
    """argmin_k E + λ Q per row (inf where unusable)."""
    return np.argmin(energy + lam * error, axis=1)  # λ > 0: inf + λ·inf stays inf


def _repair(
    energy: NDArray, error: NDArray, pick: NDArray, limit: float
) -> NDArray[np.int64]:
    """Upgrade the device with the least extra energy per unit of error removed
    until within budget."""
    pick = pick.copy()
    rows = np.arange(len(energy))
    total = error[rows, pick].sum()
    while total > limit:
        removed = error[rows, pick][:, None] - error  # > 0 for an upgrade
        extra = energy - energy[rows, pick][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(removed > 0, np.maximum(extra, 0.0) / removed, np.inf)
        flat = int(np.argmin(ratio))
        n, k = divmod(flat, energy.shape[1])
        if not np.isfinite(ratio[n, k]):
            break  # cannot happen: the most precise choice fits
        total += error[n, k] - error[n, pick[n]]
        pick[n] = k
    return pick


def _take_back(
    energy: NDArray, error: NDArray, pick: NDArray, limit: float
) -> NDArray[np.int64]:
    """Downgrade, largest saving first, while the budget still holds.

    The slack only shrinks, so a move that does not fit now never will: keep the list of
    moves that fit and recompute only the row that moved.
    """
    rows = np.arange(len(energy))
    slack = limit - error[rows, pick].sum()
    added = error - error[rows, pick][:, None]  # error a move adds
    saved = energy[rows, pick][:, None] - energy  # energy it saves
    n, k = np.nonzero((added <= slack) & (saved > 0))
    gain = saved[n, k]
    while n.size:
        best = int(np.argmax(gain))
        row, col = int(n[best]), int(k[best])
        slack -= error[row, col] - error[row, pick[row]]
        pick[row] = col
        # drop the moved row's old moves and those that no longer fit,
        # then add its new ones
        keep = (n != row) & (error[n, k] - error[n, pick[n]] <= slack)
        n, k, gain = n[keep], k[keep], gain[keep]
        new = np.flatnonzero(
            (error[row] - error[row, col] <= slack) & (energy[row] < energy[row, col])
        )
        n = np.concatenate([n, np.full(new.size, row)])
        k = np.concatenate([k, new])
        gain = np.concatenate([gain, energy[row, col] - energy[row, new]])
    return pick


def _exact_core(
    energy: NDArray,
    error: NDArray,
    pick: NDArray,
    lam: float,
    limit: float,
    exact_limit: int,
) -> NDArray[np.int64]:
    """Enumerate the choices of the devices closest to switching; keep
    the best within budget.

    When the product of all devices' candidate counts is at most `exact_limit`, every
    device and candidate is enumerated (the round is solved exactly). Otherwise the core
    is the devices with the least regret under λ (how much worse their runner-up is),
    each limited to its current pick and the two candidates either side.
    """
    usable = np.isfinite(energy)
    counts = usable.sum(axis=1)
    movable = np.flatnonzero(counts > 1)
    if exact_limit <= 1 or movable.size < 2:
        return pick
    if np.sum(np.log(counts[movable])) <= np.log(exact_limit):
        core = movable
        options = [np.flatnonzero(usable[n]) for n in core]
    else:
        with np.errstate(invalid="ignore"):
            cost = energy + lam * error  # inf where unusable
        two = np.partition(cost, 1, axis=1)[:, :2]
        with np.errstate(invalid="ignore", divide="ignore"):
            regret = (two[:, 1] - two[:, 0]) / np.abs(two[:, 0])
        regret[counts < 2] = np.inf
        nearest = (
            np.argpartition(regret, 32)[:32]
            if regret.size > 32
            else np.arange(regret.size)
        )
        nearest = nearest[np.argsort(regret[nearest], kind="stable")]
        core, options, size = [], [], 1
        for n in nearest:
            near = np.flatnonzero(usable[n])
            at = int(np.searchsorted(near, pick[n]))
            opts = near[max(at - 2, 0) : at + 3]
            if size * opts.size > exact_limit:
                break
            core.append(int(n))
            options.append(opts)
            size *= opts.size
        if len(core) < 2:
            return pick
    others = np.ones(len(energy), bool)
    others[core] = False
    room = limit - error[others, pick[others]].sum()
    # Grid of all combinations: axis i runs over core device i's options.
    total_e = np.zeros([len(o) for o in options])
    total_q = np.zeros_like(total_e)
    for axis, (n, opts) in enumerate(zip(core, options, strict=True)):
        shape = [1] * len(core)
        shape[axis] = len(opts)
        total_e = total_e + energy[n, opts].reshape(shape)
        total_q = total_q + error[n, opts].reshape(shape)
    total_e = np.where(total_q <= room, total_e, np.inf)
    best = np.unravel_index(int(np.argmin(total_e)), total_e.shape)
    current = sum(energy[n, pick[n]] for n in core)
    if not total_e[best] < current:
        return pick
    pick = pick.copy()
    for n, opts, i in zip(core, options, best, strict=True):
        pick[n] = opts[i]
    return pick
