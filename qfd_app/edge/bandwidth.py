"""Sharing the uplink band: who fits in the round, and the energy-optimal
split (water-filling).

Admission. Device n needs at least B_need,n (`upload.min_bandwidth_hz`) to
meet the deadline at its fewest bits, f_max and p_max. Devices are admitted
cheapest-first (smallest B_need):

* equal split: the largest K with B_need,(K) ≤ B/K — every admitted device fits in
  its share B/K, and the next one would not fit in B/(K+1);
* optimised split: the largest K with Σ_{i≤K} B_need,(i) ≤ B.

Water-filling. For fixed bit-widths let e_n(B_n) be device n's least energy on a
sub-band B_n (`upload.optimal_upload`): convex and decreasing. The split minimising
Σ e_n(B_n) with Σ B_n = B and B_n ≥ B_need,n equalises the marginal values:
−e_n'(B_n) = μ for every device above its floor, μ being the price of bandwidth
(J/Hz). We solve it by projected Newton steps on log(−e_n'(B_n)) = log μ
(see `water_fill`); each step finds the price that keeps Σ B_n = B (a 1-D search), then
backtracks until the energy falls. e_n' and e_n'' come from the envelope theorem at the
optimal τ (`slopes`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qfd_app.edge.energy import LN2
from qfd_app.edge.upload import INTERIOR, POWER_MAX, Upload, h, optimal_upload


def admit_equal(need_hz: NDArray[np.float64], bandwidth_hz: float) -> NDArray[np.bool_]:
    """Admitted devices under an equal split: the largest K with B_need,(K) ≤ B/K."""
    order = np.argsort(need_hz, kind="stable")
    k = np.arange(1, len(need_hz) + 1)
    fits = need_hz[order] <= bandwidth_hz / k
    admitted = np.zeros(len(need_hz), bool)
    # `fits` is a prefix: B_need rises, B/k falls
    admitted[order[: int(fits.sum())]] = True
    return admitted


def admit_optimal(
    need_hz: NDArray[np.float64], bandwidth_hz: float
) -> NDArray[np.bool_]:
    """Admitted devices under an optimised split: the largest K with Σ_{i≤K}
    B_need,(i) ≤ B."""
    order = np.argsort(need_hz, kind="stable")
    fits = np.cumsum(need_hz[order]) <= bandwidth_hz
    admitted = np.zeros(len(need_hz), bool)
    admitted[order[: int(fits.sum())]] = True
    return admitted


def slopes(up: Upload, p: dict) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """e'(B) and e''(B) of each device's least energy, from the optimum `up` at
    bandwidth p["bandwidth_hz"].

    With y = B τ, z = S ln 2 / y, E_com = (N0/g) ψ(y), ψ(y) = y
    (e^{S ln 2 / y} − 1), ψ' = −h(z), ψ'' = z² e^z / y, and C(τ) = κ
    W³/(T − τ)² the compute energy:

    * τ fixed (clock floor or f_max bind): e' = E_B = −(N0/g) τ h(z),
      e'' = E_BB = (N0/g) z² e^z τ/B;
    * τ interior: e' = E_B, e'' = E_BB − E_Bτ² / E_ττ with E_Bτ = (N0/g)(z²
      e^z − h(z)) and E_ττ = (N0/g) z² e^z B/τ + 6 κ W³/(T − τ)⁴;
    * p = p_max: τ = τ_lo(B) = S/R(B), R = B log2(1 + a/B), a = g p_max/N0, and
      e = p_max τ_lo + C(τ_lo): e' = (p_max + C') τ_lo', e'' = C''
      τ_lo'² + (p_max + C') τ_lo''.
    """
    s, w, bw, g = p["payload_bits"], p["work_cycles"], p["bandwidth_hz"], p["gain"]
    n0, t, pmax, kap = (
        p["noise_w_per_hz"],
        p["deadline_s"],
        p["power_w_max"],
        p["kappa"],
    )
    tau = up.upload_s
    c = n0 / g
    z = s * LN2 / (bw * tau)
    ez = np.exp(z)
    hz = h(z)
    rest = t - tau
    k3 = kap * w**3
    c1 = 2.0 * k3 / rest**3  # C'(τ) right of the kink
    c2 = 6.0 * k3 / rest**4  # C''(τ)
    e_b = -c * tau * hz
    e_bb = c * z * z * ez * tau / bw
    e_bt = c * (z * z * ez - hz)
    e_tt = c * z * z * ez * bw / tau + c2
    d1 = e_b.copy()
    d2 = np.where(up.case == INTERIOR, e_bb - e_bt**2 / e_tt, e_bb)
    power = up.case == POWER_MAX
    if power.any():
        a = g * pmax / n0
        r = bw * np.log1p(a / bw) / LN2
        r1 = np.log1p(a / bw) / LN2 - a / ((bw + a) * LN2)
        r2 = -(a * a) / (bw * (bw + a) ** 2 * LN2)
        t1 = -s * r1 / r**2
        t2 = -s * r2 / r**2 + 2.0 * s * r1**2 / r**3
        m = pmax + c1
        d1 = np.where(power, m * t1, d1)
        d2 = np.where(power, c2 * t1**2 + m * t2, d2)
    return d1, np.maximum(d2, 0.0)


def _price_step(value, rate, lo, hi):
    """The log-Newton targets B + δ(x) and the log price x = log μ
    that makes Σ δ = 0.

    Each device's target is δ_n(x) = clip(r_n (x − L_n), lo_n, hi_n)
    with L_n = log(−e_n') and r_n = e_n'/e_n'' < 0: one Newton step on
    log(−e_n'(B)) = log μ. Σ δ(x) falls with x and is piecewise linear; find its
    zero by secant steps on the free devices, kept inside a bisection bracket.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        at_hi = value + hi / rate  # x where δ_n reaches hi_n
        at_lo = value + lo / rate  # x where δ_n reaches lo_n
    a, b = np.min(at_hi), np.max(at_lo)  # Σ δ(a) > 0 ≥ Σ δ(b)
    x = np.sum(rate * value) / np.sum(rate)  # Σ r (x − L) = 0, unclipped
    x = x if a < x < b else 0.5 * (a + b)
    scale = np.sum(hi)
    for _ in range(100):
        delta = np.clip(rate * (x - value), lo, hi)
        f = delta.sum()
        if abs(f) <= 1e-14 * scale or b - a <= 1e-15 * max(abs(a), abs(b), 1.0):
            break
        if f > 0:
            a = x
        else:
            b = x
        free = (delta > lo) & (delta < hi)
        slope = np.sum(rate[free])  # dΣδ/dx < 0
        new = x - f / slope if slope < 0 else 0.5 * (a + b)
        x = new if a < new < b else 0.5 * (a + b)
    return delta, float(np.exp(x))


def water_fill(
    params: dict,
    *,
    total_hz: float,
    need_hz: NDArray[np.float64],
    start_hz: NDArray[np.float64],
    max_iter: int = 60,
    rtol: float = 1e-12,
) -> tuple[NDArray[np.float64], Upload, float]:
    """Energy-optimal split of `total_hz` for fixed bit-widths.

    Newton steps on the marginal values in log form, log(−e_n'(B_n)) = log μ: the
    energy of a thin sub-band grows like exp(1/B), where plain Newton on e' crawls,
    while its logarithm is nearly linear. Each step is a descent direction (bandwidth
    moves from devices that value it below μ to those that value it above), and a
    backtracking line search keeps Σ e_n falling.

    Parameters
    ----------
    params : dict
        Keyword arguments of `optimal_upload` without `bandwidth_hz`
        (arrays of shape (N,)).
    total_hz : float
        B, the band to share.
    need_hz : ndarray, shape (N,)
        Each device's least feasible bandwidth at its bit-width;
        Σ need_hz ≤ total_hz.
    start_hz : ndarray, shape (N,)
        A feasible split to start from (≥ need_hz, summing to total_hz).
    max_iter : int
        Cap on Newton steps.
    rtol : float
        Stop when the first-order saving of a step is below rtol × the energy.

    Returns
    -------
    (bandwidth_hz, Upload at that split, μ in J/Hz)
    """
    bw = start_hz.copy()
    up = optimal_upload(bandwidth_hz=bw, **params)
    energy = up.energy_j.sum()
    mu = 0.0
    for _ in range(max_iter):
        d1, d2 = slopes(up, {**params, "bandwidth_hz": bw})
        d1 = np.minimum(d1, -1e-300)  # e' < 0: more band never costs energy
        d2 = np.maximum(d2, 1e-9 * np.abs(d1) / bw)  # keep the model strictly convex
        # A step may close at most 80 % of a device's slack above its floor: near B_need
        # the energy climbs steeply (full power), which the local model cannot see.
        delta, mu = _price_step(
            np.log(-d1), d1 / d2, -0.8 * (bw - need_hz), total_hz - bw
        )
        predicted = float(np.dot(d1, delta))
        if -predicted <= rtol * energy:
            break
        step = 1.0
        while step > 1e-8:
            trial = np.maximum(bw + step * delta, need_hz)
            trial_up = optimal_upload(
                bandwidth_hz=trial, upload_s_guess=up.upload_s, **params
            )
            trial_energy = trial_up.energy_j.sum()
            if trial_energy <= energy + 1e-4 * step * predicted:
                break
            step *= 0.5
        else:
            break
        bw, up, energy = trial, trial_up, trial_energy
    fixed = _fix_sum(bw, need_hz, total_hz)
    if fixed is not bw:
        bw, up = (
            fixed,
            optimal_upload(bandwidth_hz=fixed, upload_s_guess=up.upload_s, **params),
        )
    return bw, up, mu


def _fix_sum(bw: NDArray, need_hz: NDArray, total_hz: float) -> NDArray:
    """Remove a rounding excess so that Σ B ≤ total, taking it from the
    device with most slack."""
    excess = bw.sum() - total_hz
    if excess > 0:
        i = int(np.argmax(bw - need_hz))
        bw = bw.copy()
        bw[i] -= excess
    return bw
