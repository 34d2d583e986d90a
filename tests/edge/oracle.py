"""Random small populations and an independent reference solver (brute force + scipy).

The reference shares no code with `qfd_app.edge`: it writes the energy of one
device as a plain function of its upload time τ and minimises it with scipy's
bounded scalar search, checks feasibility from the definitions, and enumerates every
bit-width combination.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from qfd_app.edge.allocate import Candidates, Devices, Network, candidate_bits
from qfd_app.quant.registry import codec_bits

ONDEMAND_WIDTHS = codec_bits("uniform", "fp32")  # what `ondemand` may assign

N0 = 10 ** (-174 / 10) / 1000  # −174 dBm/Hz in W/Hz


def random_population(
    rng: np.random.Generator,
    *,
    max_devices: int = 6,
    max_width: int = 4,
    gamma: float | None = None,
    policy: str = "equal",
    downlink: bool = False,
) -> tuple[Devices, Candidates, Network]:
    """A population of 1…max_devices devices with random gains, demands,
    deadline and budget; with `downlink`, also a random downlink (band, base station
    power), receive powers and download sizes, either the same at every bit-width (as
    fp32) or the upload's (as `assigned`), device by device."""
    n = int(rng.integers(1, max_devices + 1))
    bits_min = rng.integers(1, 15, n)
    bits_max = np.minimum(bits_min + rng.integers(0, max_width, n), 16)
    bits = candidate_bits(bits_min, bits_max, ONDEMAND_WIDTHS)
    valid = bits > 0
    gamma = float(rng.choice([0.0, 1.0])) if gamma is None else gamma
    samples = rng.integers(10, 500, n)
    flops = rng.uniform(1e6, 1e8)
    cycles_per_flop = rng.uniform(0.1, 1.0, n)
    params = rng.uniform(1e4, 1e6)
    work = (
        samples[:, None]
        * flops
        * cycles_per_flop[:, None]
        * (np.where(valid, bits, 32) / 32) ** gamma
    )
    payload = bits * params + 64 * math.ceil(params / 256)
    with np.errstate(divide="ignore"):
        error = np.where(valid, params / (4 * (2.0**bits - 1) ** 2), 0.0)
    cpu_min = rng.uniform(1e8, 1e9, n)
    devices = Devices(
        cpu_hz_min=cpu_min,
        cpu_hz_max=cpu_min * rng.uniform(1.0, 5.0, n),
        kappa=np.full(n, 1e-28),
        power_w_max=rng.uniform(0.01, 0.3, n),
        gain=10 ** rng.uniform(-13, -8, n),
        weight=samples / samples.sum(),
        receive_power_w=rng.uniform(0.05, 2.0, n) if downlink else None,
    )
    download = None
    if downlink:
        as_assigned = rng.random(n) < 0.5
        full = 32 * params + np.zeros(bits.shape)
        download = np.where(valid, np.where(as_assigned[:, None], payload, full), 0.0)
    candidates = Candidates(
        bits, np.where(valid, work, 0.0), np.where(valid, payload, 0.0), error, download
    )
    budget = math.inf if rng.random() < 0.2 else float(rng.uniform(0.0005, 0.05))
    radio = (
        {
            "downlink_bandwidth_hz": 10 ** rng.uniform(5, 7.3),
            "bs_power_w": rng.uniform(1.0, 80.0),
        }
        if downlink
        else {}
    )
    network = Network(
        bandwidth_hz=10 ** rng.uniform(5, 7),
        noise_w_per_hz=N0,
        deadline_s=float(rng.uniform(0.5, 20.0)),
        error_budget=budget,
        update_sq_norm=params,
        bandwidth_policy=policy,
        **radio,
    )
    return devices, candidates, network


def download_s(devices: Devices, network: Network, n: int, bits: float) -> float:
    """t_down of `bits` to device n: the base station's band and power split equally
    among all the devices, r = (B_dl/N) log2(1 + g (P_bs/N) / (N0 B_dl/N))."""
    k = len(devices.gain)
    band, power = network.downlink_bandwidth_hz / k, network.bs_power_w / k
    snr = float(devices.gain[n]) * power / (network.noise_w_per_hz * band)
    return bits / (band * math.log2(1 + snr))


@dataclass(frozen=True)
class One:
    """One device with one bit-width, as plain floats."""

    payload_bits: float
    work_cycles: float
    gain: float
    cpu_hz_min: float
    cpu_hz_max: float
    power_w_max: float
    kappa: float
    deadline_s: float
    noise_w_per_hz: float
    download_s: float = 0.0
    receive_power_w: float = 0.0

    @classmethod
    def of(
        cls, devices: Devices, candidates: Candidates, network: Network, n: int, k: int
    ) -> One:
        return cls(
            float(candidates.payload_bits[n, k]),
            float(candidates.work_cycles[n, k]),
            float(devices.gain[n]),
            float(devices.cpu_hz_min[n]),
            float(devices.cpu_hz_max[n]),
            float(devices.power_w_max[n]),
            float(devices.kappa[n]),
            network.deadline_s,
            network.noise_w_per_hz,
            download_s(devices, network, n, float(candidates.download_bits[n, k])),
            float(devices.receive_power_w[n]),
        )

    def window(self, bandwidth_hz: float) -> tuple[float, float] | None:
        """[τ_lo, τ_hi] from p ≤ p_max and f ≤ f_max after the download, or None when
        it is empty."""
        snr = self.gain * self.power_w_max / (self.noise_w_per_hz * bandwidth_hz)
        tau_lo = self.payload_bits / (bandwidth_hz * math.log2(1 + snr))
        tau_hi = self.deadline_s - self.download_s - self.work_cycles / self.cpu_hz_max
        return (tau_lo, tau_hi) if 0 < tau_hi and tau_lo <= tau_hi else None

    def energy_at(self, tau: float, bandwidth_hz: float) -> float:
        """p_rx t_down + τ p(τ) + κ W f(τ)², straight from the definitions."""
        power = (
            self.noise_w_per_hz
            * bandwidth_hz
            / self.gain
            * (2 ** (self.payload_bits / (bandwidth_hz * tau)) - 1)
        )
        left = self.deadline_s - self.download_s
        cpu = max(self.cpu_hz_min, self.work_cycles / (left - tau))
        receive = self.receive_power_w * self.download_s
        return receive + tau * power + self.kappa * self.work_cycles * cpu**2

    def least_energy(self, bandwidth_hz: float) -> float:
        """min over the window of `energy_at` (inf if the deadline cannot be met)."""
        window = self.window(bandwidth_hz)
        if window is None:
            return math.inf
        lo, hi = window
        if hi - lo <= 1e-12 * hi:
            return self.energy_at(hi, bandwidth_hz)
        res = minimize_scalar(
            lambda t: self.energy_at(t, bandwidth_hz),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12 * hi, "maxiter": 500},
        )
        return min(
            res.fun, self.energy_at(lo, bandwidth_hz), self.energy_at(hi, bandwidth_hz)
        )

    def least_bandwidth(self, top_hz: float) -> float:
        """Smallest bandwidth with a non-empty window, by bisection on log B
        (inf if even top_hz fails)."""
        if self.window(top_hz) is None:
            return math.inf
        lo, hi = math.log(1e-6), math.log(top_hz)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if self.window(math.exp(mid)) is not None else (mid, hi)
        return math.exp(hi)


def options(candidates: Candidates, n: int) -> list[int]:
    return [int(k) for k in np.flatnonzero(candidates.valid[n])]


def best_bits(devices, candidates, network, rows, energy_of) -> tuple[float, bool]:
    """min Σ energy_of(combo) over all bit combinations of `rows` within the budget.

    Returns (energy, budget_met); when no combination meets the budget, the energy of
    the most precise feasible bits and False.
    """
    weight = devices.weight[rows] / devices.weight[rows].sum()
    limit = network.error_budget_abs * (1 + 1e-12)
    best = math.inf
    for combo in itertools.product(*(options(candidates, n) for n in rows)):
        error = sum(
            w * w * candidates.error[n, k]
            for w, n, k in zip(weight, rows, combo, strict=True)
        )
        if error <= limit:
            best = min(best, energy_of(combo))
    return best, math.isfinite(best)


def equal_split_oracle(devices, candidates, network, rows) -> tuple[float, bool]:
    """Least energy of `rows` sharing the band equally: brute force over
    bits × scipy over τ."""
    share = network.bandwidth_hz / len(rows)
    table = {
        (n, k): One.of(devices, candidates, network, n, k).least_energy(share)
        for n in rows
        for k in options(candidates, n)
    }
    return best_bits(
        devices,
        candidates,
        network,
        rows,
        lambda combo: sum(table[n, k] for n, k in zip(rows, combo)),
    )


def optimal_split_energy(devices, candidates, network, rows, combo) -> float:
    """Least energy of `rows` at bits `combo` with the band split optimally
    (SLSQP over the shares)."""
    ones = [
        One.of(devices, candidates, network, n, k)
        for n, k in zip(rows, combo, strict=True)
    ]
    total = network.bandwidth_hz
    need = np.array([o.least_bandwidth(total) for o in ones])
    if not np.all(np.isfinite(need)) or need.sum() > total:
        return math.inf
    if len(ones) == 1:
        return ones[0].least_energy(total)

    def energy(x):
        return sum(
            o.least_energy(max(xi, ni * (1 + 1e-9)) * 1.0)
            for o, xi, ni in zip(ones, x * total, need)
        )

    start = need / total + (1 - need.sum() / total) / len(ones)
    scale = energy(start)
    res = minimize(
        lambda x: energy(x) / scale,
        start,
        method="SLSQP",
        bounds=[(ni / total * (1 + 1e-9), 1.0) for ni in need],
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}],
        options={"ftol": 1e-14, "maxiter": 300},
    )
    found = energy(res.x) if abs(res.x.sum() - 1) < 1e-9 else math.inf
    return min(found, scale)
