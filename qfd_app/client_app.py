"""qfd ClientApp: a device trains the global DDPM on its partition and replies with its update."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from qfd_app import ddpm
from qfd_app.settings import load_settings
from qfd_app.strategies.base import METRICS_KEY, UPDATE_KEY

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(
            f"node config key {err} is missing: start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings = load_settings(context.run_config)
    if settings.client_threads:
        torch.set_num_threads(settings.client_threads)  # Ray runs several ClientApps per machine
    partition_id, num_partitions = _partition(context)
    images = settings.data.load_partition(partition_id, num_partitions)
    server_round = int(msg.content["config"]["server-round"])

    start = msg.content["arrays"].to_torch_state_dict()
    model = ddpm.build_unet(settings.model, settings.image_size, images.pixels.shape[1])
    model.load_state_dict(start)
    loss = ddpm.train_local(
        model,
        images.pixels,
        epochs=int(msg.content["config"]["local-epochs"]),
        batch_size=settings.batch_size,
        learning_rate=ddpm.round_learning_rate(
            settings.learning_rate, server_round, settings.num_server_rounds, settings.lr_schedule
        ),
        seed=settings.seed * 1_000_003 + server_round * 10_007 + partition_id,
        device=ddpm.pick_device(settings.device),
    )
    update = {name: value.detach().cpu() - start[name] for name, value in model.state_dict().items()}
    metrics = {"num-examples": len(images), "train-loss": loss, "partition-id": partition_id}
    content = RecordDict({UPDATE_KEY: ArrayRecord(torch_state_dict=update), METRICS_KEY: MetricRecord(metrics)})
    return Message(content, reply_to=msg)
