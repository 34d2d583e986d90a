"""Flower strategies, chosen by the `strategy` setting."""

from __future__ import annotations

from qfd_app.ledger import Ledger
from qfd_app.settings import Settings
from qfd_app.strategies.base import UpdateAveraging
from qfd_app.strategies.fedavg import FullPrecisionFedAvg
from qfd_app.strategies.fixed import FixedBits


def make_strategy(settings: Settings, ledger: Ledger) -> UpdateAveraging:
    """The strategy named by `settings.strategy`, booking into `ledger`."""
    if settings.strategy == "fedavg":
        return FullPrecisionFedAvg(ledger, fraction_train=settings.fraction_train)
    if settings.strategy == "fixed":
        return FixedBits(ledger, codec=settings.codec, bits=settings.bits, fraction_train=settings.fraction_train)
    raise ValueError(f"Unknown strategy {settings.strategy!r}")  # settings validated it: a programming error
