"""qfd ClientApp: a device reports its state, rebuilds the global DDPM from its
download, trains it at its assigned precision and replies with its encoded update."""

from __future__ import annotations

import time

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from qfd_app import downlink, protocol
from qfd_app.edge.state import device_state
from qfd_app.quant import encode_update, fake_quantized, get_codec, range_sq_sums
from qfd_app.settings import load_settings

# context.state: Σ m R² of the device's last update, per block size
RANGES_KEY = "update-ranges"

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(
            context.node_config["num-partitions"]
        )
    except KeyError as err:
        raise ValueError(
            f"node config key {err} is missing: start the SuperNode with "
            '--node-config "partition-id=<i> num-partitions=<n>"'
        ) from None


@app.query()
def query(msg: Message, context: Context) -> Message:
    settings = load_settings(context.run_config)
    partition_id, num_partitions = _partition(context)
    images = settings.data.load_partition(partition_id, num_partitions)
    ranges = context.state.metric_records.get(RANGES_KEY, {})
    state = device_state(
        settings.load_scenario(),
        partition_id,
        num_partitions,
        server_round=int(msg.content[protocol.CONFIG_KEY]["server-round"]),
        num_examples=len(images),
        node_config=context.node_config,
        range_sq={int(k): v for k, v in ranges.items()},
    )
    record = ConfigRecord(
        {
            **protocol.state_record(partition_id, state),
            protocol.HELD_ROUND: _held_round(context),
        }
    )
    return Message(RecordDict({protocol.STATE_KEY: record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    # diffusers takes most of this module's import (~4 s of ~6 s on 2 vCPUs); a
    # deployed SuperNode runs every message in a fresh process, so `query` skips it
    from qfd_app.diffusion import ddpm

    settings = load_settings(context.run_config)
    if settings.client_threads:
        # Ray runs several ClientApps per machine
        torch.set_num_threads(settings.client_threads)
    partition_id, num_partitions = _partition(context)
    images = settings.data.load_partition(partition_id, num_partitions)
    config = protocol.TrainConfig.from_record(msg.content[protocol.CONFIG_KEY])
    server_round, bits = config.server_round, config.bits
    codec = get_codec(config.codec, bits=bits)
    seed = settings.seed * 1_000_003 + server_round * 10_007 + partition_id

    model = ddpm.build_unet(settings.model, settings.image_size, images.pixels.shape[1])
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    # DownlinkError: Flower replies with the error and its reason
    start = downlink.received_model(msg.content, config, shapes, _held(context))
    if config.downlink == "delta":
        context.state[downlink.HELD_KEY] = ArrayRecord(torch_state_dict=start)
        context.state[downlink.HELD_ROUND_KEY] = ConfigRecord({"round": server_round})
    model.load_state_dict(start)
    train_bits = bits if settings.quantized_training else 32
    started = time.perf_counter()
    # b-bit weights in the forward pass; ≥ 16 bits: fp32
    with fake_quantized(model, train_bits):
        loss = ddpm.train_local(
            model,
            images.pixels,
            epochs=config.local_epochs,
            batch_size=settings.batch_size,
            learning_rate=ddpm.round_learning_rate(
                settings.learning_rate,
                server_round,
                settings.num_server_rounds,
                settings.lr_schedule,
            ),
            seed=seed,
            device=ddpm.pick_device(settings.device),
            warmup_steps=settings.lr_warmup_steps,
            max_grad_norm=settings.max_grad_norm,
            compute_dtype=ddpm.compute_dtype(train_bits, settings.low_bit_compute),
        )
    trained = time.perf_counter()
    update = {
        name: value.detach().cpu() - start[name]
        for name, value in model.state_dict().items()
    }
    ranges = range_sq_sums(update)
    context.state[RANGES_KEY] = MetricRecord({str(m): v for m, v in ranges.items()})
    arrays, meta = encode_update(update, codec, torch.Generator().manual_seed(seed))
    metrics = {
        "num-examples": len(images),
        "train-loss": loss,
        "partition-id": partition_id,
        "train-s": trained - started,
        "encode-s": time.perf_counter() - trained,
        **{f"range-sq-{m}": v for m, v in ranges.items()},
    }
    content = RecordDict(
        {
            protocol.UPDATE_KEY: arrays,
            protocol.UPDATE_META_KEY: meta,
            protocol.METRICS_KEY: MetricRecord(metrics),
            protocol.HOST_KEY: ConfigRecord({"ray-node": _ray_node()}),
            protocol.START_KEY: ConfigRecord({"digest": downlink.digest(start)}),
        }
    )
    return Message(content, reply_to=msg)


def _held_round(context: Context) -> int:
    """The round of the model copy the device keeps (`delta` downlink); 0: none."""
    record = context.state.config_records.get(downlink.HELD_ROUND_KEY)
    return 0 if record is None else int(record["round"])


def _held(context: Context) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The model copy the device keeps (`delta` downlink) and its round, if any."""
    arrays = context.state.array_records.get(downlink.HELD_KEY)
    if arrays is None:
        return None
    return _held_round(context), arrays.to_torch_state_dict()


def _ray_node() -> str:
    """The id of the Ray node this ClientApp runs on; '' outside a Ray
    worker (deployment)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 — no Ray, or no node: the run goes on
        return ""
