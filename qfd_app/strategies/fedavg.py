"""`fedavg`: the full-precision baseline — fp32 training, fp32 updates on the wire."""

from __future__ import annotations

from qfd_app.strategies.base import UpdateAveraging


class FullPrecisionFedAvg(UpdateAveraging):
    """Federated averaging of float32 updates (McMahan et al., 2017), every device alike.

    The train config asks for no quantization; replies are plain float32 `ArrayRecord`s,
    which `UpdateAveraging.decode_update` validates as they are.
    """
