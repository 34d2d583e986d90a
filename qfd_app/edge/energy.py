"""The per-device energy model of docs/model.md: work, compute, uplink, downlink
and quantization error.

Every function is plain numpy, broadcasts over its array arguments and takes SI units
(Hz, W, s, J, bits) — except `training_flops`, which counts a torch model's FLOPs with
torch's own counter (torch is imported only there). Symbols follow docs/model.md:

=====================  ======================================  ==================
code                   symbol                                  unit
=====================  ======================================  ==================
bits                   b                                       bits per value
work_cycles            W_n(b) = E · D_n · φ · c_n · ρ(b)       CPU cycles
cpu_hz                 f_n                                     Hz
kappa                  κ_n (effective switched capacitance)    J·s²  (E = κ W f²)
payload_bits           S_n(b)                                  bits
bandwidth_hz           B_n                                     Hz
gain                   g_n (linear power gain)                 1
power_w                p_n                                     W
noise_w_per_hz         N0                                      W/Hz
download_bits          S_down,n(b) (what the device receives)  bits
downlink_bandwidth_hz  B_dl (the downlink band)                Hz
bs_power_w             P_bs (the base station's power)         W
receive_power_w        p_rx,n (the device's receive power)     W
download_s             t_down,n = S_down,n / r_down,n          s
=====================  ======================================  ==================
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

LN2 = float(np.log(2.0))


def dbm_to_w(dbm: ArrayLike) -> NDArray[np.float64]:
    """Convert a power (or a power density) from dBm to W:
    p_W = 10^((dBm − 30)/10)."""
    return np.power(10.0, (np.asarray(dbm, dtype=float) - 30.0) / 10.0)


def w_to_dbm(power_w: ArrayLike) -> NDArray[np.float64]:
    """Convert a power from W to dBm; 0 W gives −inf."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(power_w, dtype=float)) + 30.0


def precision_factor(bits: ArrayLike, gamma: float) -> NDArray[np.float64]:
    """ρ(b) = (b/32)^γ: the compute cost of b-bit arithmetic relative to fp32.

    γ = 1 makes work proportional to the bit-width, γ = 0 switches the factor off.
    """
    return np.power(np.asarray(bits, dtype=float) / 32.0, gamma)


def training_flops(model: Any, *inputs: Any) -> float:
    """φ: FLOPs of one forward and one backward pass of
    `model(*inputs)`, counted by torch.

    `torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add of
    matmuls and convolutions (element-wise ops are not counted). The output (or its
    `.sample`, as diffusers models return) is summed and back-propagated, so gradients
    of every parameter that requires one are included. Works on the `meta` device, where
    nothing is computed.

    Parameters
    ----------
    model : torch.nn.Module
        The model, e.g. a diffusers `UNet2DModel`.
    *inputs
        Its inputs for a batch; divide the result by the batch size
        for FLOPs per sample.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(*inputs)
        getattr(out, "sample", out).sum().backward()
    return float(counter.get_total_flops())


def work_cycles(
    *,
    epochs: ArrayLike,
    samples: ArrayLike,
    flops_per_sample: ArrayLike,
    cycles_per_flop: ArrayLike,
    bits: ArrayLike,
    gamma: float,
) -> NDArray[np.float64]:
    """Local work W_n(b) = E · D_n · φ · c_n · ρ(b) in CPU cycles.

    Parameters
    ----------
    epochs : array_like
        Local epochs E.
    samples : array_like
        Training samples D_n on the device.
    flops_per_sample : array_like
        φ, training FLOPs (forward + backward) per sample, measured on the real model.
    cycles_per_flop : array_like
        c_n, CPU cycles the device spends per FLOP.
    bits : array_like
        Bit-width b the device trains at.
    gamma : float
        Exponent of the precision factor ρ(b) = (b/32)^γ.
    """
    base = (
        np.asarray(epochs, float)
        * np.asarray(samples, float)
        * np.asarray(flops_per_sample, float)
    )
    return base * np.asarray(cycles_per_flop, float) * precision_factor(bits, gamma)


def compute_time_s(work_cycles: ArrayLike, cpu_hz: ArrayLike) -> NDArray[np.float64]:
    """t_cmp = W / f."""
    return np.asarray(work_cycles, float) / np.asarray(cpu_hz, float)


def compute_energy_j(
    kappa: ArrayLike, work_cycles: ArrayLike, cpu_hz: ArrayLike
) -> NDArray[np.float64]:
    """E_cmp = κ · W · f² (dynamic CMOS power κ f³ over the time W / f)."""
    f = np.asarray(cpu_hz, float)
    return np.asarray(kappa, float) * np.asarray(work_cycles, float) * f * f


def uplink_rate_bps(
    bandwidth_hz: ArrayLike,
    gain: ArrayLike,
    power_w: ArrayLike,
    noise_w_per_hz: ArrayLike,
) -> NDArray[np.float64]:
    """Shannon rate of an FDMA sub-band: r = B · log2(1 + g p / (N0 B)).

    The limit B → ∞ is g p / (N0 ln 2), the most any bandwidth can give at power p.
    """
    b = np.asarray(bandwidth_hz, float)
    snr = (
        np.asarray(gain, float)
        * np.asarray(power_w, float)
        / (np.asarray(noise_w_per_hz, float) * b)
    )
    return b * np.log1p(snr) / LN2


def power_for_rate_w(
    rate_bps: ArrayLike,
    bandwidth_hz: ArrayLike,
    gain: ArrayLike,
    noise_w_per_hz: ArrayLike,
) -> NDArray[np.float64]:
    """The transmit power that reaches `rate_bps`: p = (N0 B / g)(2^{r/B} − 1)."""
    b = np.asarray(bandwidth_hz, float)
    scale = np.asarray(noise_w_per_hz, float) * b / np.asarray(gain, float)
    return scale * np.expm1(LN2 * np.asarray(rate_bps, float) / b)


def downlink_rate_bps(
    bandwidth_hz: ArrayLike,
    bs_power_w: ArrayLike,
    gain: ArrayLike,
    noise_w_per_hz: ArrayLike,
    num_devices: ArrayLike,
) -> NDArray[np.float64]:
    """FDMA downlink rate of each of K devices: r_down = (B_dl/K) log2(1 + g P_bs /
    (N0 B_dl)).

    The band B_dl and the power P_bs are split equally among the K devices (constant
    power spectral density), so each gets B_dl/K at P_bs/K and its SNR
    g (P_bs/K) / (N0 B_dl/K) = g P_bs / (N0 B_dl) does not depend on K.
    """
    k = np.asarray(num_devices, float)
    return uplink_rate_bps(
        np.asarray(bandwidth_hz, float) / k,
        gain,
        np.asarray(bs_power_w, float) / k,
        noise_w_per_hz,
    )


def upload_energy_j(power_w: ArrayLike, upload_s: ArrayLike) -> NDArray[np.float64]:
    """E_com = p · τ."""
    return np.asarray(power_w, float) * np.asarray(upload_s, float)


def quantization_error(
    bits: ArrayLike, block_sizes: ArrayLike, block_ranges: ArrayLike
) -> NDArray[np.float64]:
    """Variance bound of stochastic uniform quantization: V(b) = Σ_j m_j
    R_j² / (4 (2^b − 1)²).

    A value in a block of range R_j quantized to 2^b − 1 steps of width
    s = R_j/(2^b − 1) with unbiased stochastic rounding has variance at most s²/4; a
    block holds m_j values.

    Parameters
    ----------
    bits : array_like
        Bit-widths b; the result has their shape.
    block_sizes, block_ranges : array_like
        m_j and R_j of every block of the update (1-D, same length).

    Returns
    -------
    ndarray
        V(b), in the squared unit of the update.
    """
    m = np.asarray(block_sizes, float)
    r = np.asarray(block_ranges, float)
    total = float(np.sum(m * r * r))
    levels = np.exp2(np.asarray(bits, float)) - 1.0
    return total / (4.0 * levels * levels)
