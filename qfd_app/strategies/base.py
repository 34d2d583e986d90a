"""The one Flower strategy of qfd: query the devices, plan the round, average the
updates, book the cost.

Each round (`configure_train`):

1. **sample** the devices with `planner.sample_partitions` (seeded by (seed, round), by
   partition id, so that every strategy run with the same seed trains the same devices;
   Flower's own sampling is unseeded and its node ids differ per run);
2. **query** them (`@app.query` of the ClientApp) for their `DeviceState`; a device that
   fails or reports an unusable state is booked `failed` / `rejected` and not trained;
3. **plan** with `planner.plan_round` under the strategy's rules; excluded devices are
   booked with the solver's reason;
4. send each scheduled device its own train message (`protocol.TrainConfig`) with its
   download of the global model (`downlink.Broadcaster`: encoded once per (codec, bits),
   or per device as a difference from its copy).

`aggregate_train` checks every reply (`protocol.reply_metrics`,
`averaging.decode_reply`), books its energy from the plan and the **bytes actually
received**, and adds the example-weighted mean update (`averaging`) to the global model.

What the strategy learns across rounds (`planner.History`) is its `state()`, saved with
every checkpoint; `restore` continues a killed run from one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from qfd_app import protocol
from qfd_app.downlink import Broadcaster, Download
from qfd_app.edge.state import DeviceState
from qfd_app.runs.ledger import (
    FAILED,
    OK,
    REJECTED,
    DeviceRecord,
    Ledger,
    excluded_record,
    planned_record,
)
from qfd_app.strategies import averaging, planner
from qfd_app.strategies.planner import Assignment, History, RoundPhysics
from qfd_app.strategies.registry import Strategy

QUERY_TIMEOUT_S = 300.0


class EdgeStrategy(FedAvg):
    """Federated averaging over the mobile edge network: query, plan,
    train, decode, book.

    Parameters
    ----------
    rules : Strategy
        The strategy's rules (bit-widths, codecs, resource policy,
        ε), from the registry.
    ledger : Ledger
        Receives one `DeviceRecord` per sampled device and round.
    physics : RoundPhysics
        Network, E, φ, γ and tensor shapes.
    fraction_train : float
        Fraction of connected devices sampled each round (at least `min_train_nodes`).
    seed : int
        Seed of the device sampling.
    max_update_norm : float
        Clip each device's update to this L2 norm before averaging; 0 leaves
        updates as they are.
    downlink : str
        How the global model goes down (`planner.DOWNLINKS`).
    """

    def __init__(
        self,
        rules: Strategy,
        ledger: Ledger,
        physics: RoundPhysics,
        *,
        fraction_train: float,
        seed: int,
        max_update_norm: float = 0.0,
        downlink: str = "fp32",
        min_train_nodes: int = 1,
        min_available_nodes: int = 1,
    ):
        super().__init__(
            fraction_train=fraction_train,
            # quality is measured centrally on the held-out split
            fraction_evaluate=0.0,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
        )
        self.rules, self.ledger, self.physics = rules, ledger, physics
        self.seed, self.max_update_norm = seed, max_update_norm
        self.history = History()
        self.broadcaster = Broadcaster(downlink, seed)
        # node id → the round of the model copy it reported holding
        self._held: dict[int, int] = {}
        # rounds done before a resume: Flower's round r is round r + offset
        self.round_offset = 0
        # node id → partition id, learnt from queries
        self._partition_of: dict[int, int] = {}
        self._global: dict[str, torch.Tensor] = {}
        # round → node → its assignment; round → partition → its download
        self._assigned: dict[int, dict[int, Assignment]] = {}
        self._downloads: dict[int, dict[int, Download]] = {}

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """What the strategy learnt so far, as JSON-able values (saved with
        each checkpoint)."""
        return {**self.history.to_json(), "downlink": self.broadcaster.state()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The devices' model copies of a `delta` downlink (saved with each
        checkpoint)."""
        return self.broadcaster.tensors()

    def restore(
        self, state: dict, completed_rounds: int, tensors: dict | None = None
    ) -> None:
        """Go on after `completed_rounds` rounds from a `state()` and `tensors()`."""
        self.history = History.from_json(state)
        self.broadcaster.restore(state.get("downlink", {}), tensors or {})
        self.round_offset = completed_rounds

    # -------------------------------------------------------------- sample, query, plan
    def configure_train(
        self, flower_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample, query, plan; one train message per scheduled device."""
        server_round = flower_round + self.round_offset
        self._global = arrays.to_torch_state_dict()
        # waits for min_available_nodes
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)
        started = time.perf_counter()
        # Devices never seen are asked who they are; their answers are also
        # this round's states.
        unknown = [n for n in sorted(nodes) if n not in self._partition_of]
        states = self._query(server_round, unknown, grid)
        node_of = {self._partition_of[n]: n for n in nodes if n in self._partition_of}
        sampled = planner.sample_partitions(
            list(node_of),
            connected=len(nodes),
            fraction=self.fraction_train,
            min_train=self.min_train_nodes,
            seed=self.seed,
            server_round=server_round,
        )
        states.update(
            self._query(
                server_round,
                [node_of[p] for p in sampled if node_of[p] not in unknown],
                grid,
            )
        )
        by_partition = {p: states[node_of[p]] for p in sampled if node_of[p] in states}
        log(
            INFO,
            "Round %d: sampled %d of %d devices",
            server_round,
            len(sampled),
            len(nodes),
        )
        queried = time.perf_counter()
        plan = planner.plan_round(
            self.rules,
            self.physics,
            by_partition,
            self.history,
            resync=self.broadcaster.resync(by_partition),
        )
        for warning in plan.allocation.warnings:
            log(WARNING, "Round %d: %s", server_round, warning)
        for n, (partition, state) in enumerate(
            zip(plan.partitions, plan.states, strict=True)
        ):
            if partition not in plan.assignments:
                self.ledger.book(
                    excluded_record(
                        server_round,
                        node_of[partition],
                        partition,
                        state,
                        plan.allocation.reason[n],
                    )
                )
        self.ledger.book_phases(
            server_round,
            query_s=queried - started,
            solve_s=time.perf_counter() - queried,
        )
        assigned = {node_of[p]: a for p, a in plan.assignments.items()}
        self._assigned[server_round] = assigned
        self._downloads[server_round] = downloads = self.broadcaster.downloads(
            server_round,
            self._global,
            {p: (a.codec, a.bits) for p, a in plan.assignments.items()},
            held={p: self._held.get(node_of[p], 0) for p in plan.assignments},
        )
        messages = []
        for node, a in assigned.items():
            download = downloads[a.partition_id]
            train = protocol.TrainConfig(
                server_round,
                int(config["local-epochs"]),
                a.codec,
                a.bits,
                a.cpu_hz,
                a.power_w,
                a.bandwidth_hz,
                self.broadcaster.downlink,
                download.base_round,
            )
            content = RecordDict(
                {
                    **download.records(),
                    protocol.CONFIG_KEY: ConfigRecord(train.to_record()),
                }
            )
            messages.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(server_round),
                )
            )
        return messages

    def _query(
        self, server_round: int, nodes: list[int], grid: Grid
    ) -> dict[int, DeviceState]:
        """Ask `nodes` for their state; book those that fail or lie, return
        the others' states."""
        if not nodes:
            return {}
        content = RecordDict(
            {protocol.CONFIG_KEY: ConfigRecord({"server-round": server_round})}
        )
        queries = [
            Message(
                content,
                dst_node_id=n,
                message_type=MessageType.QUERY,
                group_id=str(server_round),
            )
            for n in nodes
        ]
        states, answered = {}, set()
        for reply in grid.send_and_receive(queries, timeout=QUERY_TIMEOUT_S):
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                self._book_unplanned(
                    server_round, node, FAILED, f"query failed: {reply.error.reason}"
                )
                continue
            try:
                record = reply.content.config_records.get(protocol.STATE_KEY)
                if record is None:
                    raise protocol.StateError(
                        f"the query reply lacks the ConfigRecord {protocol.STATE_KEY!r}"
                    )
                self._partition_of[node], states[node] = protocol.parse_state(record)
                self._held[node] = protocol.reported_held_round(record)
            except protocol.StateError as err:
                partition = protocol.reported_partition(record or {})
                # known, so booked (and sampled) by its partition
                if partition is not None:
                    self._partition_of[node] = partition
                log(
                    WARNING,
                    "Round %d: rejected the state of node %d: %s",
                    server_round,
                    node,
                    err,
                )
                self._book_unplanned(server_round, node, REJECTED, f"bad state: {err}")
        for node in set(nodes) - answered:
            self._book_unplanned(
                server_round, node, FAILED, "no answer to the query before its timeout"
            )
        return states

    def _book_unplanned(
        self, server_round: int, node: int, status: str, reason: str
    ) -> None:
        """Book a device that dropped out before it could be planned
        (nothing charged)."""
        self.ledger.book(
            DeviceRecord(
                server_round, node, self._partition_of.get(node, -1), "", status, reason
            )
        )

    # ------------------------------------------------------------------ aggregation
    def aggregate_train(
        self, flower_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and book each reply, then add the weighted mean update to
        the global model."""
        server_round = flower_round + self.round_offset
        started = time.perf_counter()
        assigned = self._assigned.pop(server_round, {})
        downloads = self._downloads.pop(server_round, {})
        shapes = {name: tuple(t.shape) for name, t in self._global.items()}
        # (partition, examples, update)
        accepted: list[tuple[int, int, averaging.Update]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            plan = assigned.pop(node, None)
            if plan is None:
                continue  # not a device this round asked; nothing to book against
            download = downloads[plan.partition_id]
            if reply.has_error():
                self.ledger.book(
                    self._record(
                        server_round,
                        node,
                        plan,
                        download,
                        FAILED,
                        reply.error.reason,
                    )
                )
                continue
            sent, host = averaging.sent_bytes(reply), ""
            try:
                host = protocol.reply_host(
                    reply.content.config_records.get(protocol.HOST_KEY)
                )
                metrics = protocol.reply_metrics(
                    reply.content.metric_records.get(protocol.METRICS_KEY)
                )
                _check_start(
                    reply.content.config_records.get(protocol.START_KEY),
                    download,
                )
                update = averaging.decode_reply(reply, plan, shapes)
            except (KeyError, TypeError, ValueError) as err:  # ReplyError, PayloadError
                log(
                    WARNING,
                    "Round %d: rejected the update of node %d: %s",
                    server_round,
                    node,
                    err,
                )
                self.ledger.book(
                    self._record(
                        server_round,
                        node,
                        plan,
                        download,
                        REJECTED,
                        str(err),
                        sent=sent,
                        ray_node=host,
                    )
                )
                continue
            self.ledger.book(
                self._record(
                    server_round,
                    node,
                    plan,
                    download,
                    OK,
                    "",
                    sent=sent,
                    metrics=metrics,
                    ray_node=host,
                )
            )
            self.history.range_sq[plan.partition_id] = {
                int(key.removeprefix("range-sq-")): value
                for key, value in metrics.items()
                if key.startswith("range-sq-")
            }
            accepted.append(
                (
                    plan.partition_id,
                    metrics["num-examples"],
                    averaging.clipped(update, self.max_update_norm),
                )
            )
        for node, plan in assigned.items():
            self.ledger.book(
                self._record(
                    server_round,
                    node,
                    plan,
                    downloads[plan.partition_id],
                    FAILED,
                    "no reply before the round's timeout",
                )
            )

        summary = self.ledger.summarise(server_round)
        log(
            INFO,
            "Round %d: %d updates aggregated, %d failed, %d rejected, %d excluded; "
            "device energy %.4g J",
            server_round,
            summary["devices_ok"],
            summary["devices_failed"],
            summary["devices_rejected"],
            summary["devices_excluded"],
            summary["energy_j"],
        )
        decoded = time.perf_counter()
        self.ledger.book_phases(server_round, decode_s=decoded - started)
        if not accepted:
            log(
                WARNING,
                "Round %d: no usable update; the global model stays as it was.",
                server_round,
            )
            return None, None
        new_global, self.history.update_sq_norm = averaging.add_mean_update(
            self._global, accepted
        )
        metrics = MetricRecord(
            {"train-loss": summary["train_loss"], "bytes-up": summary["bytes_up"]}
        )
        self.ledger.book_phases(server_round, aggregate_s=time.perf_counter() - decoded)
        return ArrayRecord(torch_state_dict=new_global), metrics

    def _record(
        self,
        server_round,
        node,
        plan: Assignment,
        download: Download,
        status,
        reason,
        **reply,
    ):
        """The row of a planned device: its plan, the bytes of its `download`, and
        what its reply said (`reply`, see `planned_record`)."""
        network = self.physics.network
        return planned_record(
            server_round,
            node,
            plan,
            status,
            reason,
            noise_w_per_hz=network.noise_w_per_hz,
            deadline_s=network.deadline_s,
            bytes_down=download.num_bytes,
            **reply,
        )


def _check_start(record, download: Download) -> None:
    """Refuse an update that is a difference from another model than the one sent."""
    trained_from = protocol.reply_start_digest(record)
    if trained_from != download.digest:
        raise protocol.ReplyError(
            f"the device trained from a model (digest {trained_from[:12]}…) other "
            f"than the one it was sent ({download.digest[:12]}…)"
        )


def make_strategy(settings, ledger: Ledger, physics: RoundPhysics) -> EdgeStrategy:
    """The run's `EdgeStrategy` under the rules of `settings.strategy`,
    booking into `ledger`."""
    return EdgeStrategy(
        settings.rules(),
        ledger,
        physics,
        fraction_train=settings.fraction_train,
        seed=settings.seed,
        max_update_norm=settings.max_update_norm,
        downlink=settings.downlink,
        min_available_nodes=settings.min_available_nodes,
    )
