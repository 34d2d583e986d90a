"""`fedavg`: the full-precision baseline — fp32 training, fp32 updates on the wire."""

from __future__ import annotations

from qfd_app.strategies.registry import RESOURCE_POLICIES, Strategy


class FullPrecisionFedAvg(Strategy):
    """Federated averaging of float32 updates
    (McMahan et al., 2017), every device alike.

    Resource policy "race-to-idle" (the default) runs every device at f_max and
    p_max on an equal share of the band (the classic FL client); "optimal" lets the
    solver set f, p and B.
    """

    name = "fedavg"
    summary = "full-precision federated averaging: fp32 training and fp32 updates"
    option_help = ":race-to-idle or :optimal (the resource policy)"
    resource_policies = RESOURCE_POLICIES

    def widths(self) -> tuple[int, ...]:
        return (32,)

    def codec_for(self, bits: int) -> str:
        return "fp32"
