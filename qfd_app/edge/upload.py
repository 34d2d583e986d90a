"""The cheapest way for one device to train and upload one bit-width
within the deadline.

For a fixed bit-width (work W, payload S) and a fixed sub-band B, the device chooses its
upload time τ; everything else follows from it (docs/model.md, "one device"):

    p(τ) = (N0 B / g)(2^{S/(B τ)} − 1)              power that sends S bits in τ
    f(τ) = max(f_min, W / (T − τ))                  slowest clock that still meets T
    E(τ) = τ p(τ) + κ W f(τ)²

with τ_lo ≤ τ ≤ τ_hi, τ_lo = S / (B log2(1 + g p_max/(N0 B))) (full power) and
τ_hi = T − W / f_max (full clock). E is convex in τ. Write z = S ln 2 / (B τ) (the
spectral efficiency in nats) and h(z) = e^z (z − 1) + 1 ≥ 0; then

    dE/dτ = G(τ) = −(N0 B / g) h(z) + 2 κ W³ / (T − τ)³
                                            where W/(T − τ) > f_min
    G(τ)  =        −(N0 B / g) h(z)         where the clock floor binds

The first term (a longer upload needs less power) is negative, the second (a shorter
compute window needs a faster clock) positive. Below τ_kink = T − W/f_min the floor
binds, G < 0, so the optimum is at or above max(τ_lo, τ_kink); there G is smooth and
increasing and the optimum is its zero, or an endpoint when G has one sign. We find the
zero with Newton steps safeguarded by bisection (`rtsafe` of Numerical Recipes §9.4),
vectorised over all elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qfd_app.edge.energy import LN2

# Which bound the optimal τ sits on (`Upload.case`).
INTERIOR, POWER_MAX, CPU_FLOOR, CPU_MAX, INFEASIBLE = 0, 1, 2, 3, -1

# Relative slack on τ_lo ≤ τ_hi, so that a device given exactly its minimum
# bandwidth (computed by `min_bandwidth_hz`) is not declared infeasible by rounding.
FEASIBILITY_RTOL = 1e-9


def h(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """h(z) = e^z (z − 1) + 1, by its series z²/2 + z³/3 + z⁴/8 where z < 1e-3
    (no cancellation)."""
    ez = np.exp(z)
    return np.where(
        z < 1e-3, z * z * (0.5 + z * (1.0 / 3.0 + z * 0.125)), ez * (z - 1.0) + 1.0
    )


@dataclass(frozen=True)
class Upload:
    """The optimal plan of each element (device × bit-width);
    infeasible ones hold inf/nan.

    Attributes
    ----------
    feasible : bool array
        The deadline can be met at p ≤ p_max, f ≤ f_max.
    case : int array
        `INTERIOR`, `POWER_MAX` (τ = τ_lo), `CPU_FLOOR` (τ = τ_kink), `CPU_MAX`
        (τ = τ_hi) or `INFEASIBLE`.
    upload_s, compute_s, cpu_hz, power_w : float arrays
        τ, t_cmp = W/f, f and p.
    energy_compute_j, energy_upload_j, energy_j : float arrays
        κ W f², p τ and their sum (inf where infeasible).
    """

    feasible: NDArray[np.bool_]
    case: NDArray[np.int64]
    upload_s: NDArray[np.float64]
    compute_s: NDArray[np.float64]
    cpu_hz: NDArray[np.float64]
    power_w: NDArray[np.float64]
    energy_compute_j: NDArray[np.float64]
    energy_upload_j: NDArray[np.float64]
    energy_j: NDArray[np.float64]


def optimal_upload(
    *,
    payload_bits: ArrayLike,
    work_cycles: ArrayLike,
    bandwidth_hz: ArrayLike,
    gain: ArrayLike,
    noise_w_per_hz: float,
    deadline_s: ArrayLike,
    cpu_hz_min: ArrayLike,
    cpu_hz_max: ArrayLike,
    power_w_max: ArrayLike,
    kappa: ArrayLike,
    upload_s_guess: ArrayLike | None = None,
    max_iter: int = 60,
) -> Upload:
    """Minimise E(τ) over τ_lo ≤ τ ≤ τ_hi for every element
    (arguments broadcast).

    Parameters
    ----------
    payload_bits, work_cycles : array_like
        S and W of the bit-width.
    bandwidth_hz, gain : array_like
        The sub-band B and the linear power gain g.
    noise_w_per_hz : float
        N0.
    deadline_s : array_like
        T.
    cpu_hz_min, cpu_hz_max, power_w_max, kappa : array_like
        The device's limits and κ.
    upload_s_guess : array_like, optional
        A τ near the answer (e.g. the previous solve's), to start Newton from.
    max_iter : int
        Cap on safeguarded Newton iterations; convergence
        (step ≤ 1e-12 τ) takes 3–10.

    Returns
    -------
    Upload
    """
    s, w, bw, g, t, fmin, fmax, pmax, kap = (
        np.asarray(x, dtype=float)
        for x in (
            payload_bits,
            work_cycles,
            bandwidth_hz,
            gain,
            deadline_s,
            cpu_hz_min,
            cpu_hz_max,
            power_w_max,
            kappa,
        )
    )
    shape = np.broadcast_shapes(
        s.shape,
        w.shape,
        bw.shape,
        g.shape,
        t.shape,
        fmin.shape,
        fmax.shape,
        pmax.shape,
        kap.shape,
    )
    n0 = float(noise_w_per_hz)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        noise_per_gain = n0 * bw / g  # N0 B / g, W
        rate_max = bw * np.log1p(pmax / noise_per_gain) / LN2
        tau_lo = np.broadcast_to(s / rate_max, shape)  # full power
        tau_hi = np.broadcast_to(t - w / fmax, shape)  # full clock
        tau_kink = t - w / fmin  # below it the clock floor binds
        feasible = (tau_hi > 0) & (tau_lo <= tau_hi * (1 + FEASIBILITY_RTOL)) & (bw > 0)
        tau_lo = np.minimum(tau_lo, tau_hi)
        lo = np.maximum(tau_lo, tau_kink)  # G < 0 below τ_kink
        hi = tau_hi
        z_scale = s * LN2 / bw  # z = z_scale / τ
        k3 = 2.0 * kap * w * w * w  # 2 κ W³
        # G at both ends; at τ_kink the compute term is its right limit 2 κ f_min³.
        rest_lo, rest_hi = t - lo, t - hi
        g_lo = -noise_per_gain * h(z_scale / lo) + k3 / (rest_lo * rest_lo * rest_lo)
        g_hi = -noise_per_gain * h(z_scale / hi) + k3 / (rest_hi * rest_hi * rest_hi)
    tau = np.where(g_lo >= 0, lo, hi)  # an endpoint, unless G changes sign
    case = np.where(g_lo >= 0, np.where(lo > tau_lo, CPU_FLOOR, POWER_MAX), CPU_MAX)
    inner = feasible & (g_lo < 0) & (g_hi > 0)
    if inner.any():

        def pick(x):
            return np.broadcast_to(x, shape)[inner]

        guess = (
            None if upload_s_guess is None else pick(np.asarray(upload_s_guess, float))
        )
        tau[inner] = _root(
            pick(lo),
            pick(hi),
            pick(noise_per_gain),
            pick(z_scale),
            pick(k3),
            pick(t),
            guess,
            max_iter,
        )
        case[inner] = INTERIOR
    case[~feasible] = INFEASIBLE
    return _evaluate(tau, feasible, case, s, w, bw, g, t, fmin, fmax, pmax, kap, n0)


def _root(lo, hi, c, a, k, tt, guess, max_iter):
    """Zero of the increasing G on (lo, hi): Newton, falling back to bisection when
    it leaves the bracket.

    G(τ) = −c h(a/τ) + k/(T − τ)³ with c = N0 B/g, a = S ln 2 / B, k = 2 κ W³.
    Elements stop once their Newton step is below 1e-12 τ; the arrays shrink to the
    others now and then.
    """
    out = np.empty_like(lo)
    todo = np.arange(lo.size)
    tau = np.where(hi > 4.0 * lo, np.sqrt(lo * hi), 0.5 * (lo + hi))
    if guess is not None:
        tau = np.where((guess > lo) & (guess < hi), guess, tau)
    for _ in range(max_iter):
        z = a / tau
        ez = np.exp(z)
        rest = tt - tau
        rest3 = rest * rest * rest
        hz = np.where(
            z < 1e-3, z * z * (0.5 + z * (1.0 / 3.0 + z * 0.125)), ez * (z - 1.0) + 1.0
        )
        g = -c * hz + k / rest3
        dg = c * z * z * ez / tau + 3.0 * k / (rest3 * rest)  # G'(τ) > 0
        lo = np.where(g < 0, tau, lo)
        hi = np.where(g > 0, tau, hi)
        step = g / dg
        newton = tau - step
        inside = (newton >= lo) & (newton <= hi)
        mid = np.where(hi > 4.0 * lo, np.sqrt(lo * hi), 0.5 * (lo + hi))
        tau = np.where(inside, newton, mid)
        done = (inside & (np.abs(step) <= 1e-12 * tau)) | (hi - lo <= 1e-15 * hi)
        n_done = int(done.sum())
        if n_done:
            out[todo[done]] = tau[done]
            if n_done == todo.size:
                return out
            if 4 * n_done >= todo.size:  # shrink only when it pays
                keep = ~done
                todo, tau, lo, hi, c, a, k, tt = (
                    x[keep] for x in (todo, tau, lo, hi, c, a, k, tt)
                )
    out[todo] = tau
    return out


def _evaluate(tau, feasible, case, s, w, bw, g, t, fmin, fmax, pmax, kap, n0) -> Upload:
    """Power, clock, times and energies at the chosen τ; nan (inf for energies)
    where infeasible."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        power = np.minimum(n0 * bw / g * np.expm1(s * LN2 / (bw * tau)), pmax)
        cpu = np.clip(w / (t - tau), fmin, fmax)
        compute_s = w / cpu
        e_cmp = kap * w * cpu * cpu
        e_com = power * tau
        energy = e_cmp + e_com
    # τ's shape
    out = [np.asarray(x) for x in (tau, compute_s, cpu, power, e_cmp, e_com, energy)]
    if not feasible.all():
        bad = ~feasible
        for x in out[:4]:
            x[bad] = np.nan
        for x in out[4:]:
            x[bad] = np.inf
    upload_s, compute_s, cpu, power, e_cmp, e_com, energy = out
    return Upload(
        feasible=feasible,
        case=case,
        upload_s=upload_s,
        compute_s=compute_s,
        cpu_hz=cpu,
        power_w=power,
        energy_compute_j=e_cmp,
        energy_upload_j=e_com,
        energy_j=energy,
    )


def min_bandwidth_hz(
    *,
    payload_bits: ArrayLike,
    work_cycles: ArrayLike,
    gain: ArrayLike,
    noise_w_per_hz: float,
    deadline_s: ArrayLike,
    cpu_hz_max: ArrayLike,
    power_w_max: ArrayLike,
    max_iter: int = 200,
) -> NDArray[np.float64]:
    """The least bandwidth that meets the deadline at f_max and
    p_max (inf if none does).

    The upload may take τ = T − W/f_max, so the rate must reach R = S/τ:
    B log2(1 + g p_max/(N0 B)) = R. With x = R/B (bits/s/Hz) and q = g p_max/(N0 R)
    this is φ(x) = 2^x − 1 − q x = 0. φ is convex with φ(0) = 0 and
    φ'(0) = ln 2 − q, so a positive root exists iff q > ln 2 (the rate g
    p_max/(N0 ln 2) of infinite bandwidth beats R). Newton from the right of the root,
    where φ > 0, converges monotonically; B = R/x.
    """
    s, w, g, t, fmax, pmax = np.broadcast_arrays(
        *(
            np.asarray(v, dtype=float)
            for v in (
                payload_bits,
                work_cycles,
                gain,
                deadline_s,
                cpu_hz_max,
                power_w_max,
            )
        )
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        window = t - w / fmax
        rate = s / window
        q = g * pmax / (float(noise_w_per_hz) * rate)
    ok = (window > 0) & (q > LN2)
    out = np.full(s.shape, np.inf)
    if not ok.any():
        return out
    qq = q[ok]
    # Start right of the root, where φ > 0: φ(1) = 1 − q > 0 for q < 1; for q ≥ 1
    # with L = log2 q, x0 = L + 2 log2(L + 1) + 1 gives 2^x0 = 2q(L + 1)² ≥ 1 + q x0.
    big = np.log2(np.maximum(qq, 1.0))
    x = np.where(qq < 1.0, 1.0, big + 2.0 * np.log2(big + 1.0) + 1.0)
    todo = np.arange(qq.size)
    root = np.empty_like(x)
    for _ in range(max_iter):
        e = np.exp2(x)
        step = (e - 1.0 - qq * x) / (LN2 * e - qq)
        x = x - step
        done = np.abs(step) <= 1e-13 * x
        if done.any():
            root[todo[done]] = x[done]
            keep = ~done
            todo, x, qq = todo[keep], x[keep], qq[keep]
            if not todo.size:
                break
    root[todo] = x
    x = root
    out[ok] = rate[ok] / x
    return out
