"""qfd's ClientApp with faults injected by partition id, for the fault test.

partition 0 raises in round 2; partition 1 kills its own process (a hard crash) in the
last round (3: in Flower 1.42's simulation the Ray worker dies with it and the engine
keeps sending later devices to the dead worker, so a crash earlier would fail healthy
devices too); partition 2 truncates one tensor of its payload; partition 3 reports a
NaN channel gain; partition 5 reports its train loss as a list in round 1; partition 6
receives hostile downloads (`faulty_server.py`) and refuses them. The others behave.
"""

import math
import os

from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from qfd_app import client_app as qfd

app = ClientApp()


def _who(msg: Message, context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(
        msg.content["config"]["server-round"]
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    reply = qfd.query(msg, context)
    partition, _ = _who(msg, context)
    if partition == 3:
        reply.content["device-state"]["gain"] = math.nan
    return reply


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition, server_round = _who(msg, context)
    if partition == 0 and server_round == 2:
        raise RuntimeError("injected fault: the device's training raised")
    if partition == 1 and server_round == 3:
        os._exit(1)  # the device's process dies without a reply
    reply = qfd.train(msg, context)
    if partition == 2:
        arrays = reply.content["update"]
        name = next(iter(arrays))
        array = arrays[name]
        arrays[name] = Array(
            dtype=array.dtype,
            shape=array.shape,
            stype=array.stype,
            data=array.data[:-3],
        )
    if partition == 5 and server_round == 1:
        metrics = reply.content["metrics"]
        metrics["train-loss"] = [metrics["train-loss"]]
    return reply
