"""`fedavg`: the full-precision baseline — fp32 training, fp32 updates on the wire."""

from __future__ import annotations

from qfd_app.ledger import Ledger
from qfd_app.strategies.base import UpdateAveraging


class FullPrecisionFedAvg(UpdateAveraging):
    """Federated averaging of float32 updates (McMahan et al., 2017), every device alike."""

    def __init__(self, ledger: Ledger, *, fraction_train: float):
        super().__init__(ledger, codec="fp32", bits=32, fraction_train=fraction_train)
