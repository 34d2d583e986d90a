"""The per-round solver: bit-width, CPU clock, transmit power and
bandwidth of every device.

A strategy calls `solve_round` once per round with arrays (one row per sampled
device, one column per candidate bit-width) and gets an `Allocation` back;
`race_to_idle` plans the classic FL client (fp32, f_max, p_max, equal split).
docs/model.md states the problem:

    minimise   Σ_n E_rx,n(b_n) + E_cmp,n + E_com,n
    over       b_n ∈ [b_min,n, b_max,n], f_min,n ≤ f_n ≤ f_max,n,
               p_n ≤ p_max,n, B_n ≥ 0
    subject to t_down,n(b_n) + t_cmp,n + τ_n ≤ T,  Σ_n w_n² V_n(b_n) ≤ ε ‖Δ̄‖²,
               Σ_n B_n ≤ B.

The download comes first and does not depend on f, p or B: the base station splits its
band and power equally among the round's N devices (`downlink_rates`), so device n
receives S_down,n(b) bits in t_down,n(b) = S_down,n(b) / r_down,n and spends
E_rx,n(b) = p_rx,n t_down,n(b). For each bit-width the device then plans compute and
upload within the time left, T − t_down,n(b), and E_rx,n(b) is added to the energy of
that bit-width: a (device, bit-width) cell is the upload problem of `upload.py` with a
deadline of its own.

Steps:

1. **Admission** (`bandwidth.admit_*`): a device that cannot meet the deadline even at
   b_min, f_max and p_max on the bandwidth it could get, after its download, is
   excluded, with that reason.
   The aggregate averages the admitted devices only, so their weights are renormalised
   to sum to 1 (`weight_used`).
2. **Per candidate** (`upload.optimal_upload`): the optimal τ (hence f, p and energy)
   of every device × bit-width on its bandwidth, vectorised.
3. **Bit-widths** (`bitwidths.choose_bits`): the error budget through its price λ,
   greedy repair and an exact core.
4. **Bandwidth**: `equal` gives every admitted device B/K. `optimal` alternates step 3
   on the current split with water-filling for the chosen bits (`bandwidth.water_fill`,
   price μ); each half-step can only lower the energy, and it stops
   when the bits repeat.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qfd_app.edge.bandwidth import admit_equal, admit_optimal, water_fill
from qfd_app.edge.bitwidths import BUDGET_RTOL, choose_bits
from qfd_app.edge.energy import downlink_rate_bps, uplink_rate_bps
from qfd_app.edge.problem import (
    BANDWIDTH_POLICIES,
    EXCLUDED,
    SCHEDULED,
    Allocation,
    Candidates,
    Devices,
    Network,
    candidate_bits,
)
from qfd_app.edge.upload import Upload, min_bandwidth_hz, optimal_upload

__all__ = [
    "BANDWIDTH_POLICIES",
    "Allocation",
    "Candidates",
    "Devices",
    "Network",
    "candidate_bits",
    "downlink_rates",
    "race_to_idle",
    "solve_round",
]

# ----------------------------------------------------------------------------- solver


def downlink_rates(devices: Devices, network: Network) -> NDArray[np.float64]:
    """r_down,n (bit/s) of each of the round's N devices: B_dl and P_bs split equally
    among them (`energy.downlink_rate_bps`)."""
    return downlink_rate_bps(
        network.downlink_bandwidth_hz,
        network.bs_power_w,
        devices.gain,
        network.noise_w_per_hz,
        max(len(devices), 1),
    )


def _download(devices: Devices, candidates: Candidates, network: Network):
    """t_down,n(b) = S_down,n(b) / r_down,n and E_rx,n(b) = p_rx,n t_down,n(b), (N, C)
    (0 for padding)."""
    rate = downlink_rates(devices, network)[:, None]
    t_down = np.where(candidates.valid, candidates.download_bits / rate, 0.0)
    return t_down, devices.receive_power_w[:, None] * t_down


def solve_round(
    devices: Devices,
    candidates: Candidates,
    network: Network,
    *,
    exact_limit: int = 1 << 16,
    max_alternations: int = 6,
) -> Allocation:
    """Plan one round: minimise the total energy under deadline, budget and bandwidth.

    Parameters
    ----------
    devices : Devices
        Shape (N,) inputs.
    candidates : Candidates
        Shape (N, C) inputs; to fix a device's bits, give it one candidate.
    network : Network
        Band, noise, deadline, error budget and bandwidth policy.
    exact_limit : int
        Most bit-width combinations enumerated exactly (see `bitwidths.choose_bits`).
    max_alternations : int
        Cap on bits ↔ bandwidth alternations of the optimised split.

    Returns
    -------
    Allocation
        Never raises for an infeasible round: excluded devices carry their reason, an
        unmeetable budget gives every device its most precise
        feasible bits and a warning.
    """
    started = time.perf_counter()
    _check_shapes(devices, candidates)
    if max_alternations < 1:
        raise ValueError(f"max_alternations must be ≥ 1; got {max_alternations}.")
    n = len(devices)
    valid = candidates.valid
    rows = np.arange(n)
    first = np.argmax(valid, axis=1)  # column of b_min
    t_down, e_down = _download(devices, candidates, network)
    left = network.deadline_s - t_down  # (N, C): time for compute and upload
    need_min = min_bandwidth_hz(
        payload_bits=candidates.payload_bits[rows, first],
        work_cycles=candidates.work_cycles[rows, first],
        **_radio(devices, network, left[rows, first]),
    )
    admit = admit_equal if network.bandwidth_policy == "equal" else admit_optimal
    admitted = admit(need_min, network.bandwidth_hz)
    idx = np.flatnonzero(admitted)
    builder = _Builder(devices, candidates, network, admitted, t_down, e_down)
    builder.exclusion_reasons(need_min, first)
    if idx.size == 0:
        return builder.finish(started)

    weight = devices.weight[idx] / devices.weight[idx].sum()
    werr = np.where(valid[idx], weight[:, None] ** 2 * candidates.error[idx], np.inf)
    per_device = _per_device(devices, network, idx)
    cells = _Cells(candidates, idx, per_device, left, e_down)
    budget = network.error_budget_abs
    if network.bandwidth_policy == "equal":
        share = network.bandwidth_hz / idx.size
        table = cells.table(np.full(idx.size, share))
        choice = choose_bits(table.energy_j, werr, budget, exact_limit=exact_limit)
        col = choice.index
        plan = table.plan(col)
        bandwidth = np.full(idx.size, share)
        mu = 0.0
    else:
        col, choice, plan, bandwidth, mu = _alternate(
            candidates,
            network,
            idx,
            per_device,
            cells,
            left[idx],
            werr,
            need_min[idx],
            first[idx],
            exact_limit,
            max_alternations,
        )
    builder.scheduled_plan(idx, col, plan, bandwidth, weight, choice, mu)
    return builder.finish(started)


def _alternate(
    candidates,
    network,
    idx,
    per_device,
    cells,
    left,
    werr,
    need_min,
    first,
    exact_limit,
    max_alternations,
):
    """Optimised split: bits on the current split ↔ water-filling
    for the chosen bits."""
    k = idx.size
    rows = np.arange(k)
    s_all, w_all = candidates.payload_bits[idx], candidates.work_cycles[idx]
    bandwidth = need_min + (network.bandwidth_hz - need_min.sum()) / k
    col = first
    radio = {
        key: per_device[key]
        for key in ("gain", "noise_w_per_hz", "cpu_hz_max", "power_w_max")
    }
    choice, table = None, None
    for _ in range(max_alternations):
        table = cells.table(bandwidth, guess=table)
        hint = None if choice is None else choice.price
        new = choose_bits(
            table.energy_j,
            werr,
            network.error_budget_abs,
            exact_limit=exact_limit,
            price_hint=hint,
        )
        if choice is not None and _no_better(
            table.energy_j, werr, col, new.index, network.error_budget_abs
        ):
            new = type(new)(col, choice.budget_met, choice.price)
        converged = choice is not None and np.array_equal(new.index, col)
        col, choice = new.index, new
        if converged:
            break
        fixed = {
            "payload_bits": s_all[rows, col],
            "work_cycles": w_all[rows, col],
            **per_device,
            "deadline_s": left[rows, col],  # T − t_down at the chosen bits
        }
        need = min_bandwidth_hz(
            payload_bits=fixed["payload_bits"],
            work_cycles=fixed["work_cycles"],
            deadline_s=fixed["deadline_s"],
            **radio,
        )
        bandwidth, up, mu = water_fill(
            fixed,
            total_hz=network.bandwidth_hz,
            need_hz=np.minimum(need, bandwidth),
            start_hz=bandwidth,
        )
    plan = {key: getattr(up, key) for key in vars(up)}
    return col, choice, plan, bandwidth, mu


class _Cells:
    """The admitted devices' real candidates (padding skipped), gathered once per solve.

    Each cell's deadline is the time its download leaves, T − t_down,n(b) (`left`,
    (N, C)), and its receive energy E_rx,n(b) (`e_down`, (N, C)) is added to its energy.
    `table(bandwidth)` solves every cell on its device's bandwidth
    and returns a `_Table`.
    """

    def __init__(
        self,
        candidates: Candidates,
        idx: NDArray,
        per_device: dict,
        left: NDArray,
        e_down: NDArray,
    ) -> None:
        valid = candidates.valid[idx]
        self.shape = valid.shape
        self.rows, cols = np.nonzero(valid)
        at = idx[self.rows]
        self.args = {
            key: v[self.rows] if isinstance(v, np.ndarray) else v
            for key, v in per_device.items()
        }
        self.args["payload_bits"] = candidates.payload_bits[at, cols]
        self.args["work_cycles"] = candidates.work_cycles[at, cols]
        self.args["deadline_s"] = left[at, cols]
        self.e_down = e_down[at, cols]
        # (K, C) → cell, −1 for padding
        self.flat = np.full(self.shape, -1, dtype=np.int64)
        self.flat[self.rows, cols] = np.arange(self.rows.size)
        self.cols = cols

    def table(self, bandwidth: NDArray, guess: _Table | None = None) -> _Table:
        up = optimal_upload(
            bandwidth_hz=bandwidth[self.rows],
            upload_s_guess=None if guess is None else guess.up.upload_s,
            **self.args,
        )
        energy = np.full(self.shape, np.inf)
        energy[self.rows, self.cols] = up.energy_j + self.e_down
        return _Table(self, up, energy)


@dataclass(frozen=True)
class _Table:
    """`optimal_upload` of every cell; `energy_j` is the (K, C) table
    for `choose_bits` (receive energy included)."""

    cells: _Cells
    up: Upload
    energy_j: NDArray[np.float64]

    def plan(self, col: NDArray[np.int64]) -> dict[str, NDArray]:
        """The per-device fields of `Upload` at the chosen column of each row."""
        at = self.cells.flat[np.arange(self.cells.shape[0]), col]
        return {key: getattr(self.up, key)[at] for key in vars(self.up)}


def _no_better(energy, werr, old, new, budget) -> bool:
    """The old picks meet the budget and cost no more than the new ones."""
    rows = np.arange(len(energy))
    old_ok = werr[rows, old].sum() <= budget * (1 + BUDGET_RTOL)
    return bool(old_ok and energy[rows, old].sum() <= energy[rows, new].sum())


def race_to_idle(
    devices: Devices, candidates: Candidates, network: Network
) -> Allocation:
    """The classic FL client: highest candidate bit-width, f = f_max,
    p = p_max, equal split.

    Devices that miss the deadline this way (download, then training and upload) are
    excluded (same admission as `solve_round` with an equal split). The error budget is
    reported, not enforced.
    """
    started = time.perf_counter()
    _check_shapes(devices, candidates)
    n = len(devices)
    rows = np.arange(n)
    top = candidates.valid.sum(axis=1) - 1  # column of b_max
    s, w = candidates.payload_bits[rows, top], candidates.work_cycles[rows, top]
    t_down, e_down = _download(devices, candidates, network)
    need = min_bandwidth_hz(
        payload_bits=s,
        work_cycles=w,
        **_radio(devices, network, network.deadline_s - t_down[rows, top]),
    )
    admitted = admit_equal(need, network.bandwidth_hz)
    idx = np.flatnonzero(admitted)
    builder = _Builder(devices, candidates, network, admitted, t_down, e_down)
    builder.exclusion_reasons(need, top, at="b_max")
    if idx.size == 0:
        return builder.finish(started, enforced=False)
    share = network.bandwidth_hz / idx.size
    f, p = devices.cpu_hz_max[idx], devices.power_w_max[idx]
    upload_s = s[idx] / uplink_rate_bps(
        share, devices.gain[idx], p, network.noise_w_per_hz
    )
    e_cmp = devices.kappa[idx] * w[idx] * f * f
    plan = {
        "upload_s": upload_s,
        "compute_s": w[idx] / f,
        "cpu_hz": f,
        "power_w": p,
        "energy_compute_j": e_cmp,
        "energy_upload_j": p * upload_s,
        "energy_j": e_cmp + p * upload_s,
    }
    weight = devices.weight[idx] / devices.weight[idx].sum()
    builder.scheduled_plan(
        idx, top[idx], plan, np.full(idx.size, share), weight, None, 0.0
    )
    return builder.finish(started, enforced=False)


# ----------------------------------------------------------------------------- helpers


def _check_shapes(devices: Devices, candidates: Candidates) -> None:
    shape = np.shape(candidates.bits)
    if len(shape) != 2:
        raise ValueError(f"candidates.bits must have shape (N, C); got {shape}.")
    n = shape[0]
    for name in (
        "cpu_hz_min",
        "cpu_hz_max",
        "kappa",
        "power_w_max",
        "gain",
        "weight",
        "receive_power_w",
    ):
        if np.shape(getattr(devices, name)) != (n,):
            raise ValueError(
                f"devices.{name} must have shape ({n},), one value per row of "
                f"candidates.bits; got {np.shape(getattr(devices, name))}."
            )
    for name in ("work_cycles", "payload_bits", "error", "download_bits"):
        if np.shape(getattr(candidates, name)) != shape:
            raise ValueError(
                f"candidates.{name} must have shape {shape}; got "
                f"{np.shape(getattr(candidates, name))}."
            )
    if n and not candidates.valid[:, 0].all():
        raise ValueError(
            "every device needs at least one candidate bit-width (column 0 is padding)."
        )


def _radio(devices: Devices, network: Network, left: NDArray) -> dict:
    """Arguments of `min_bandwidth_hz` other than the payload and the work; `left` is
    each device's deadline for compute and upload, T − t_down."""
    return {
        "gain": devices.gain,
        "noise_w_per_hz": network.noise_w_per_hz,
        "deadline_s": left,
        "cpu_hz_max": devices.cpu_hz_max,
        "power_w_max": devices.power_w_max,
    }


def _per_device(devices: Devices, network: Network, idx: NDArray) -> dict:
    """Arguments of `optimal_upload` other than payload, work, deadline (per cell:
    T − t_down) and bandwidth, for rows `idx`."""
    return {
        "gain": devices.gain[idx],
        "noise_w_per_hz": network.noise_w_per_hz,
        "cpu_hz_min": devices.cpu_hz_min[idx],
        "cpu_hz_max": devices.cpu_hz_max[idx],
        "power_w_max": devices.power_w_max[idx],
        "kappa": devices.kappa[idx],
    }


class _Builder:
    """Collects the per-device outputs and writes the `Allocation`."""

    FIELDS = (
        "cpu_hz",
        "power_w",
        "bandwidth_hz",
        "compute_s",
        "upload_s",
        "energy_compute_j",
        "energy_upload_j",
        "energy_j",
        "payload_bits",
        "error",
        "weight_used",
        "download_s",
        "energy_download_j",
        "download_bits",
    )

    def __init__(
        self,
        devices: Devices,
        candidates: Candidates,
        network: Network,
        admitted: NDArray,
        t_down: NDArray,
        e_down: NDArray,
    ) -> None:
        n = len(devices)
        self.devices, self.candidates, self.network = devices, candidates, network
        self.t_down, self.e_down = t_down, e_down
        self.status = np.where(admitted, SCHEDULED, EXCLUDED)
        self.reason = [""] * n
        self.bits = np.zeros(n, dtype=np.int64)
        self.out = {k: np.zeros(n) for k in self.FIELDS}
        self.warnings: list[str] = []
        self.budget_met, self.price_error, self.price_bandwidth = True, 0.0, 0.0
        n_out = int((~admitted).sum())
        if n_out:
            self.warnings.append(
                f"{n_out} of {n} devices cannot meet the {network.deadline_s:g} s "
                "deadline and are excluded."
            )

    def exclusion_reasons(self, need: NDArray, col: NDArray, at: str = "b_min") -> None:
        c, d, net = self.candidates, self.devices, self.network
        for i in np.flatnonzero(self.status == EXCLUDED):
            b, w, s = (
                c.bits[i, col[i]],
                c.work_cycles[i, col[i]],
                c.payload_bits[i, col[i]],
            )
            compute_s = w / d.cpu_hz_max[i]
            t_down = self.t_down[i, col[i]]
            # what the download leaves of the deadline, when there is one
            after = f" after its {t_down:.3g} s download" if t_down > 0 else ""
            if t_down >= net.deadline_s:
                why = (
                    f"the download alone ({c.download_bits[i, col[i]]:.3g} bits of "
                    f"the model at {at}={b}) takes {t_down:.3g} s, over the "
                    f"{net.deadline_s:g} s deadline"
                )
            elif compute_s >= net.deadline_s - t_down and t_down > 0:
                why = (
                    f"the download takes {t_down:.3g} s and training "
                    f"{compute_s:.3g} s at {at}={b} and f_max: together over the "
                    f"{net.deadline_s:g} s deadline"
                )
            elif compute_s >= net.deadline_s:
                why = (
                    f"training alone takes {compute_s:.3g} s at {at}={b} and f_max, "
                    f"over the {net.deadline_s:g} s deadline"
                )
            elif not np.isfinite(need[i]):
                why = (
                    f"even unlimited bandwidth cannot upload {s:.3g} bits at {at}={b} "
                    f"and p_max within the deadline{after}"
                )
            elif self.network.bandwidth_policy == "equal" or at == "b_max":
                k = int((self.status == SCHEDULED).sum()) + 1
                why = (
                    f"needs {need[i] / 1e6:.3g} MHz at {at}={b}, f_max, "
                    f"p_max to meet the deadline{after}; an equal share would be "
                    f"{net.bandwidth_hz / k / 1e6:.3g} MHz"
                )
            else:
                used = float(np.sum(need[self.status == SCHEDULED]))
                why = (
                    f"needs {need[i] / 1e6:.3g} MHz at {at}={b}, f_max, p_max to meet "
                    f"the deadline{after}; {(net.bandwidth_hz - used) / 1e6:.3g} MHz "
                    "is left after the devices that need less"
                )
            self.reason[i] = why

    def scheduled_plan(self, idx, col, plan, bandwidth, weight, choice, mu) -> None:
        c = self.candidates
        self.bits[idx] = c.bits[idx, col]
        for key in (
            "cpu_hz",
            "power_w",
            "compute_s",
            "upload_s",
            "energy_compute_j",
            "energy_upload_j",
            "energy_j",
        ):
            self.out[key][idx] = plan[key]
        self.out["bandwidth_hz"][idx] = bandwidth
        self.out["download_s"][idx] = self.t_down[idx, col]
        self.out["energy_download_j"][idx] = self.e_down[idx, col]
        self.out["energy_j"][idx] += self.e_down[idx, col]
        self.out["download_bits"][idx] = c.download_bits[idx, col]
        self.out["payload_bits"][idx] = c.payload_bits[idx, col]
        self.out["error"][idx] = c.error[idx, col]
        self.out["weight_used"][idx] = weight
        self.price_bandwidth = float(mu)
        if choice is not None:
            self.price_error = float(choice.price) if choice.budget_met else math.inf
            if not choice.budget_met:
                for i in idx:
                    self.reason[i] = (
                        "error budget unmet: at its most precise bit-width that "
                        "meets the deadline"
                    )

    def finish(self, started: float, *, enforced: bool = True) -> Allocation:
        total_error = float(np.sum(self.out["weight_used"] ** 2 * self.out["error"]))
        budget = self.network.error_budget_abs
        met = total_error <= budget * (1 + BUDGET_RTOL)
        if not met and not enforced:
            self.warnings.append(
                f"total error {total_error:.4g} exceeds the error budget {budget:.4g}; "
                "this policy does not enforce it."
            )
        elif not met:
            self.warnings.append(
                "no choice of bit-widths meets the error budget: total "
                f"error {total_error:.4g} > budget {budget:.4g} (ε = "
                f"{self.network.error_budget:g}); every device is at its most precise "
                "bit-width that meets the deadline."
            )
        return Allocation(
            status=self.status,
            reason=tuple(self.reason),
            bits=self.bits,
            **self.out,
            total_error=total_error,
            error_budget_abs=budget,
            budget_met=met,
            price_error=self.price_error,
            price_bandwidth=self.price_bandwidth,
            warnings=tuple(self.warnings),
            solve_s=time.perf_counter() - started,
        )
