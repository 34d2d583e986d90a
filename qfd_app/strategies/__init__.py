"""Flower strategies, chosen by the `strategy` setting."""

from __future__ import annotations

from qfd_app.ledger import Ledger
from qfd_app.settings import Settings
from qfd_app.strategies.base import UpdateAveraging
from qfd_app.strategies.fedavg import FullPrecisionFedAvg

STRATEGY_CLASSES = {"fedavg": FullPrecisionFedAvg}


def make_strategy(settings: Settings, ledger: Ledger) -> UpdateAveraging:
    """The strategy named by `settings.strategy`, booking into `ledger`."""
    return STRATEGY_CLASSES[settings.strategy](ledger, fraction_train=settings.fraction_train)
