"""The solver's inputs and outputs: the network, the devices, their candidate
bit-widths, the plan.

Arrays have one row per device (N,) and, for candidates, one column per bit-width
(N, C). All quantities are SI (docs/model.md, §1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

BANDWIDTH_POLICIES = ("equal", "optimal")
SCHEDULED, EXCLUDED = "scheduled", "excluded"

# A macro cell's downlink (3GPP TR 36.814, Table A.2.1.1-2): 46 dBm over 10 MHz.
DOWNLINK_BANDWIDTH_HZ = 10e6
BS_POWER_W = 39.81  # 46 dBm


@dataclass(frozen=True)
class Network:
    """The round's shared settings (SI units).

    Attributes
    ----------
    bandwidth_hz : float
        B, the uplink band shared by FDMA.
    noise_w_per_hz : float
        N0, noise power spectral density.
    deadline_s : float
        T, time for the download, local training and upload.
    error_budget : float
        ε, the bound on the aggregate's quantization variance relative to
        `update_sq_norm`; inf switches the budget off.
    update_sq_norm : float
        ‖Δ̄‖², the squared norm of the previous aggregate update
        (the unit of `error`).
    bandwidth_policy : str
        "equal" (B/K each) or "optimal" (water-filling).
    downlink_bandwidth_hz : float
        B_dl, the downlink band, split equally among the round's N devices.
    bs_power_w : float
        P_bs, the base station's transmit power, split with the band.
    """

    bandwidth_hz: float
    noise_w_per_hz: float
    deadline_s: float
    error_budget: float = math.inf
    update_sq_norm: float = 1.0
    bandwidth_policy: str = "equal"
    downlink_bandwidth_hz: float = DOWNLINK_BANDWIDTH_HZ
    bs_power_w: float = BS_POWER_W

    def __post_init__(self) -> None:
        if self.bandwidth_policy not in BANDWIDTH_POLICIES:
            raise ValueError(
                f"bandwidth_policy must be one of {BANDWIDTH_POLICIES}; got "
                f"{self.bandwidth_policy!r}."
            )
        for name in (
            "bandwidth_hz",
            "noise_w_per_hz",
            "deadline_s",
            "update_sq_norm",
            "downlink_bandwidth_hz",
            "bs_power_w",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}.")
        if not self.error_budget >= 0:
            raise ValueError(
                f"error_budget must be ≥ 0 (inf: off); got {self.error_budget!r}."
            )

    @property
    def error_budget_abs(self) -> float:
        """ε ‖Δ̄‖², the bound on Σ w_n² V_n(b_n)."""
        return self.error_budget * self.update_sq_norm


@dataclass(frozen=True)
class Devices:
    """Per-device inputs, arrays of shape (N,).

    Attributes
    ----------
    cpu_hz_min, cpu_hz_max : clock range f_min, f_max (Hz).
    kappa : κ, effective switched capacitance (E_cmp = κ W f²).
    power_w_max : p_max (W).
    gain : g, linear power gain of this round's channel.
    weight : D_n / D, the device's share of the round's data
        (renormalised over the admitted).
    receive_power_w : p_rx, the power the device draws while it receives (W);
        None: 0 (downloads not charged).
    """

    cpu_hz_min: NDArray[np.float64]
    cpu_hz_max: NDArray[np.float64]
    kappa: NDArray[np.float64]
    power_w_max: NDArray[np.float64]
    gain: NDArray[np.float64]
    weight: NDArray[np.float64]
    receive_power_w: NDArray[np.float64] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.receive_power_w is None:
            object.__setattr__(self, "receive_power_w", np.zeros(np.shape(self.gain)))

    def __len__(self) -> int:
        return len(self.gain)


@dataclass(frozen=True)
class Candidates:
    """Per device × candidate bit-width inputs, arrays of shape (N, C).

    Row n lists device n's bit-widths in ascending order, padded with 0 on the right
    (`candidate_bits` builds it from the demands).

    Attributes
    ----------
    bits : int array, b (0 = padding).
    work_cycles : W_n(b), CPU cycles of the local training.
    payload_bits : S_n(b), exact size of the encoded update.
    error : V_n(b), quantization variance bound of the update (unweighted).
    download_bits : S_down,n(b), exact size of the model the device receives when it
        is assigned b (it depends on b under the `assigned` and `delta` downlinks);
        None: 0 (no download).
    """

    bits: NDArray[np.int64]
    work_cycles: NDArray[np.float64]
    payload_bits: NDArray[np.float64]
    error: NDArray[np.float64]
    download_bits: NDArray[np.float64] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.download_bits is None:
            object.__setattr__(self, "download_bits", np.zeros(np.shape(self.bits)))

    @property
    def valid(self) -> NDArray[np.bool_]:
        """True where a column holds a real candidate."""
        return self.bits > 0


def candidate_bits(
    bits_min: ArrayLike, bits_max: ArrayLike, widths: ArrayLike
) -> NDArray[np.int64]:
    """Rows of the bit-widths of `widths` (e.g. those a codec sends) in
    [b_min, b_max], 0-padded.

    >>> candidate_bits([2, 8], [4, 32], [*range(1, 17), 32]).tolist()
    [[2, 3, 4, 0, 0, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14, 15, 16, 32]]
    """
    lo = np.asarray(bits_min, dtype=np.int64)[:, None]
    hi = np.asarray(bits_max, dtype=np.int64)[:, None]
    codec = np.sort(np.asarray(widths, dtype=np.int64))
    inside = (codec >= lo) & (codec <= hi)  # (N, W)
    width = max(int(inside.sum(axis=1).max(initial=0)), 1)
    # Stable sort puts each row's candidates first, in ascending order.
    order = np.argsort(~inside, axis=1, kind="stable")[:, :width]
    picked = np.take_along_axis(inside, order, axis=1)
    return np.where(picked, codec[order], 0)


@dataclass(frozen=True)
class Allocation:
    """The plan of one round, arrays of shape (N,); excluded devices hold 0 everywhere.

    Attributes
    ----------
    status : str array, "scheduled" or "excluded".
    reason : tuple of str, why a device is excluded
        (or a note on a scheduled one), else "".
    bits, cpu_hz, power_w, bandwidth_hz, compute_s, upload_s : the device's plan.
    download_s : t_down,n, the time it takes to receive the model
        (download_s + compute_s + upload_s ≤ T).
    energy_compute_j, energy_upload_j, energy_download_j : κ W f², p τ and
        p_rx t_down.
    energy_j : their sum, its energy this round.
    payload_bits : S_n(b_n), what it uploads.
    download_bits : S_down,n(b_n), what it receives.
    error : V_n(b_n), unweighted.
    weight_used : w_n renormalised over the scheduled devices (0 for the excluded).
    total_error : Σ w_n² V_n(b_n).
    error_budget_abs : ε ‖Δ̄‖².
    budget_met : whether total_error ≤ error_budget_abs.
    price_error : λ (J per unit of weighted error) at the solution.
    price_bandwidth : μ (J/Hz) of the optimised split (0 for an equal split).
    warnings : tuple of str, things the caller should log.
    solve_s : wall time of the solve.
    """

    status: NDArray[np.str_]
    reason: tuple[str, ...]
    bits: NDArray[np.int64]
    cpu_hz: NDArray[np.float64]
    power_w: NDArray[np.float64]
    bandwidth_hz: NDArray[np.float64]
    compute_s: NDArray[np.float64]
    upload_s: NDArray[np.float64]
    energy_compute_j: NDArray[np.float64]
    energy_upload_j: NDArray[np.float64]
    energy_j: NDArray[np.float64]
    payload_bits: NDArray[np.float64]
    error: NDArray[np.float64]
    weight_used: NDArray[np.float64]
    download_s: NDArray[np.float64]
    energy_download_j: NDArray[np.float64]
    download_bits: NDArray[np.float64]
    total_error: float
    error_budget_abs: float
    budget_met: bool
    price_error: float = 0.0
    price_bandwidth: float = 0.0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    solve_s: float = 0.0

    @property
    def scheduled(self) -> NDArray[np.bool_]:
        """True for the devices that take part in the round."""
        return self.status == SCHEDULED
