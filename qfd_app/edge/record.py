"""The JSON-ready record of one planned round: every input the solver
used and every output.

`qfd plan --json` prints it and a simulation round stores it, so that a round can be
re-solved or audited from its record alone. Layout (SI units, numbers only):

    network: bandwidth_hz, noise_w_per_hz, deadline_s, error_budget (ε),
             update_sq_norm, bandwidth_policy, downlink_bandwidth_hz, bs_power_w
    devices: one object per device —
             inputs:  bits_min, bits_max, cpu_hz_min, cpu_hz_max, power_w_max, kappa,
                      gain, weight, receive_power_w, download_rate_bps,
                      candidates [{bits, work_cycles, payload_bits, error,
                      download_bits}]
             outputs: status, reason, bits, cpu_hz, power_w, bandwidth_hz, download_s,
                      compute_s, upload_s, energy_download_j, energy_compute_j,
                      energy_upload_j, energy_j, download_bits, weight_used
    totals:  energy_j, energy_download_j, energy_compute_j, energy_upload_j,
             download_bits, payload_bits, error, error_budget_abs, budget_met,
             scheduled, excluded, price_error, price_bandwidth, solve_s
    warnings: [str]

`error` in a candidate is the unweighted V_n(b), so the budget reads
Σ weight_used² · error ≤ error_budget_abs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qfd_app.edge.allocate import downlink_rates
from qfd_app.edge.problem import Allocation, Candidates, Devices, Network

DEVICE_INPUTS = (
    "cpu_hz_min",
    "cpu_hz_max",
    "power_w_max",
    "kappa",
    "gain",
    "weight",
    "receive_power_w",
)
DEVICE_OUTPUTS = (
    "bits",
    "cpu_hz",
    "power_w",
    "bandwidth_hz",
    "download_s",
    "compute_s",
    "upload_s",
    "energy_download_j",
    "energy_compute_j",
    "energy_upload_j",
    "energy_j",
    "download_bits",
    "weight_used",
)


def _num(x: Any) -> float | int | None:
    """A JSON number; inf and nan become None (JSON has neither)."""
    if isinstance(x, (np.integer, int)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def round_record(
    devices: Devices, candidates: Candidates, network: Network, allocation: Allocation
) -> dict:
    """The record of one round (see the module docstring for its keys)."""
    valid = candidates.valid
    rate = downlink_rates(devices, network)
    rows = []
    for n in range(len(devices)):
        cols = np.flatnonzero(valid[n])
        row: dict[str, Any] = {
            "bits_min": int(candidates.bits[n, cols[0]]),
            "bits_max": int(candidates.bits[n, cols[-1]]),
        }
        row.update({key: _num(getattr(devices, key)[n]) for key in DEVICE_INPUTS})
        row["download_rate_bps"] = _num(rate[n])
        row["candidates"] = [
            {
                "bits": int(candidates.bits[n, k]),
                "work_cycles": _num(candidates.work_cycles[n, k]),
                "payload_bits": _num(candidates.payload_bits[n, k]),
                "error": _num(candidates.error[n, k]),
                "download_bits": _num(candidates.download_bits[n, k]),
            }
            for k in cols
        ]
        row["status"] = str(allocation.status[n])
        row["reason"] = allocation.reason[n]
        row.update({key: _num(getattr(allocation, key)[n]) for key in DEVICE_OUTPUTS})
        rows.append(row)
    scheduled = allocation.scheduled
    return {
        "network": {
            "bandwidth_hz": _num(network.bandwidth_hz),
            "noise_w_per_hz": _num(network.noise_w_per_hz),
            "deadline_s": _num(network.deadline_s),
            "error_budget": _num(network.error_budget),
            "update_sq_norm": _num(network.update_sq_norm),
            "bandwidth_policy": network.bandwidth_policy,
            "downlink_bandwidth_hz": _num(network.downlink_bandwidth_hz),
            "bs_power_w": _num(network.bs_power_w),
        },
        "devices": rows,
        "totals": {
            "energy_j": _num(allocation.energy_j.sum()),
            "energy_download_j": _num(allocation.energy_download_j.sum()),
            "energy_compute_j": _num(allocation.energy_compute_j.sum()),
            "energy_upload_j": _num(allocation.energy_upload_j.sum()),
            "download_bits": _num(allocation.download_bits.sum()),
            "payload_bits": _num(allocation.payload_bits.sum()),
            "error": _num(allocation.total_error),
            "error_budget_abs": _num(allocation.error_budget_abs),
            "budget_met": bool(allocation.budget_met),
            "scheduled": int(scheduled.sum()),
            "excluded": int((~scheduled).sum()),
            "price_error": _num(allocation.price_error),
            "price_bandwidth": _num(allocation.price_bandwidth),
            "solve_s": _num(allocation.solve_s),
        },
        "warnings": list(allocation.warnings),
    }
