"""Device classes, their placement in the cell, and the uplink channel (seeded).

A `DeviceClass` is a profile shared by many devices (`iot`, `phone`, `edge`, …):
CPU range, cycles per FLOP, κ, maximum transmit power, receive power and the bit-width
demand
[b_min, b_max]. A `Fleet` is one row per device: its class, distance to the base
station and log-normal shadowing, both fixed for the whole run. `Fleet.gains(round)`
adds Rayleigh fading drawn anew each round. Everything random comes from
`numpy.random.SeedSequence((seed, stream, round))`, so the same scenario, seed and round
always give the same gains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Independent random streams of one seed.
_PLACEMENT, _SHADOWING, _FADING = 1, 2, 3


@dataclass(frozen=True)
class DeviceClass:
    """A device profile; every field is in SI units.

    Attributes
    ----------
    name : str
        Class name as written in the scenario (`iot`, `phone`, …).
    bits_min, bits_max : int
        Demand [b_min, b_max]: the fewest bits the device accepts,
        the most it can train.
    cpu_hz_min, cpu_hz_max : float
        Clock range f_min … f_max; a device that finishes early idles at f_min.
    cycles_per_flop : float
        c_n, CPU cycles per training FLOP.
    kappa : float
        κ_n, effective switched capacitance (E_cmp = κ W f²).
    power_w_max : float
        p_max, the most the radio may transmit.
    distance_m : float or None
        Fixed distance to the base station, or None to place the device
        uniformly in the cell.
    receive_power_w : float
        p_rx, the power the device draws while it receives the model (0: not
        charged).
    """

    name: str
    bits_min: int
    bits_max: int
    cpu_hz_min: float
    cpu_hz_max: float
    cycles_per_flop: float
    kappa: float
    power_w_max: float
    distance_m: float | None = None
    receive_power_w: float = 0.0


def path_loss_db(distance_m: ArrayLike) -> NDArray[np.float64]:
    """Urban macro-cell path loss PL(d) = 128.1 + 37.6 log10(d / 1 km), in dB
    (3GPP TR 36.814)."""
    return 128.1 + 37.6 * np.log10(np.asarray(distance_m, float) / 1000.0)


def place_uniform_disc(
    rng: np.random.Generator, n: int, radius_m: float, min_distance_m: float
) -> NDArray[np.float64]:
    """Distances of `n` points uniform in the annulus min_distance_m ≤ d ≤ radius_m.

    Uniform in area means d² is uniform: d = sqrt(d_min² + U (R² − d_min²)).
    """
    u = rng.random(n)
    return np.sqrt(min_distance_m**2 + u * (radius_m**2 - min_distance_m**2))


def _rng(seed: int, stream: int, round_: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence((seed, stream, round_)))


@dataclass(frozen=True)
class Fleet:
    """The devices of a scenario, one row each (classes, distances, shadowing).

    Attributes
    ----------
    classes : tuple of DeviceClass
        The profiles; `class_index` points into it.
    class_index : ndarray of int, shape (N,)
    distance_m : ndarray, shape (N,)
        Distance to the base station.
    shadowing_db : ndarray, shape (N,)
        Log-normal shadowing in dB, fixed per device.
    seed : int
        Seed of the fading of every round.
    """

    classes: tuple[DeviceClass, ...]
    class_index: NDArray[np.int64]
    distance_m: NDArray[np.float64]
    shadowing_db: NDArray[np.float64]
    seed: int

    @classmethod
    def build(
        cls,
        classes: tuple[DeviceClass, ...],
        class_index: ArrayLike,
        *,
        cell_radius_m: float,
        min_distance_m: float,
        shadowing_db: float,
        seed: int,
    ) -> Fleet:
        """Place the devices and draw their shadowing from `seed`.

        Devices of a class with a fixed `distance_m` sit there; the others are uniform
        in the annulus [min_distance_m, cell_radius_m]. Shadowing is N(0, σ²) in dB.
        """
        index = np.asarray(class_index, dtype=np.int64)
        n = len(index)
        distance = place_uniform_disc(
            _rng(seed, _PLACEMENT), n, cell_radius_m, min_distance_m
        )
        for k, device_class in enumerate(classes):
            if device_class.distance_m is not None:
                distance[index == k] = device_class.distance_m
        shadow = _rng(seed, _SHADOWING).normal(0.0, shadowing_db, n)
        return cls(tuple(classes), index, distance, shadow, seed)

    def __len__(self) -> int:
        return len(self.class_index)

    def column(self, field: str) -> NDArray:
        """One `DeviceClass` field for every device, e.g.
        `fleet.column("power_w_max")`."""
        values = np.array([getattr(c, field) for c in self.classes])
        return values[self.class_index]

    @property
    def class_names(self) -> list[str]:
        """The class name of every device."""
        return [self.classes[k].name for k in self.class_index]

    def fading(self, round_: int) -> NDArray[np.float64]:
        """Rayleigh fading of `round_`: an exponential power gain of
        mean 1 per device."""
        return _rng(self.seed, _FADING, round_).exponential(1.0, len(self))

    def gains(self, round_: int) -> NDArray[np.float64]:
        """Linear power gains g_n = 10^(−PL(d_n)/10) · 10^(X_n/10) · h_n
        of round `round_`."""
        large_scale_db = -path_loss_db(self.distance_m) + self.shadowing_db
        return np.power(10.0, large_scale_db / 10.0) * self.fading(round_)
