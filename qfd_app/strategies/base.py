"""What every qfd strategy shares: query the devices, plan the round, average the updates, book the cost.

Each round (`configure_train`):

1. **sample** K of the known devices with a generator seeded by (seed, round), by
   partition id, so that every strategy run with the same seed trains the same devices
   (Flower's own sampling is unseeded and its node ids differ per run);
2. **query** them (`@app.query` of the ClientApp) for their `DeviceState`; a device that
   fails or reports an unusable state is booked `failed` / `rejected` and not trained;
3. **plan**: the subclass picks the candidate bit-widths and the resource policy, and the
   edge solver sets bits, clock, power and bandwidth; excluded devices are booked with
   the solver's reason;
4. send each scheduled device its own train message (bits, codec, plan).

`aggregate_train` decodes every reply against the codec and bits assigned to *that*
device, books its energy from the plan and the **bytes actually received** (upload time =
bits / rate), flags deadline misses, clips each update to `max_update_norm` when set, and
adds the example-weighted mean update to the global model (in partition order, so that the
sum does not depend on the order the replies came in).

What the strategy learns across rounds — ‖Δ̄‖² and each device's update range sums — is
its `state()`, saved with every checkpoint; `restore` continues a killed run from one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from qfd_app.edge import Allocation, Candidates, Devices, Network
from qfd_app.edge.energy import uplink_rate_bps
from qfd_app.edge.state import RANGE_BLOCK_SIZES, DeviceState, StateError, parse_state, solver_inputs
from qfd_app.runs.ledger import EXCLUDED, FAILED, OK, REJECTED, DeviceRecord, Ledger
from qfd_app.quant import decode_update, default_block_size, get_codec, payload_bytes

UPDATE_KEY, UPDATE_META_KEY, METRICS_KEY, STATE_KEY = "update", "update-meta", "metrics", "device-state"
# The metrics every train reply carries, with their types: one schema, so replies never differ.
# range-sq-<m> is the Σ m R² of the update for block size m (`device.range_sq_sums`).
REPLY_METRICS = {
    "num-examples": int, "train-loss": float, "partition-id": int, "train-s": float, "encode-s": float,
    **{f"range-sq-{m}": float for m in RANGE_BLOCK_SIZES},
}  # fmt: skip
QUERY_TIMEOUT_S = 300.0
DEADLINE_RTOL = 1e-9


class ReplyError(ValueError):
    """A device's reply that cannot be used; the message says why."""


@dataclass(frozen=True)
class Assignment:
    """What the server asked of one scheduled device this round (SI units)."""

    partition_id: int
    device_class: str
    codec: str
    bits: int
    bits_min: int
    bits_max: int
    cpu_hz: float
    power_w: float
    bandwidth_hz: float
    gain: float
    compute_s: float
    energy_compute_j: float


@dataclass(frozen=True)
class RoundPhysics:
    """The run's fixed inputs to every round's plan.

    network : Network
        Band, noise, deadline and ε (its `update_sq_norm` is replaced each round).
    epochs : int
        E, local epochs the devices really train.
    flops_per_sample : float
        φ of the real model (`planning.model_profile`).
    gamma : float
        γ of the compute-precision factor.
    shapes : tuple of shapes
        The model's tensors, for exact payload sizes.
    """

    network: Network
    epochs: int
    flops_per_sample: float
    gamma: float
    shapes: tuple[tuple[int, ...], ...]


class EdgeStrategy(FedAvg):
    """Federated averaging over the mobile edge network: query, plan, train, decode, book.

    Subclasses say which bit-widths a device may get (`candidate_bits`), which codec sends
    them (`codec_for`) and how resources are set (`allocate`).

    Parameters
    ----------
    ledger : Ledger
        Receives one `DeviceRecord` per sampled device and round.
    physics : RoundPhysics
        Network, E, φ, γ and tensor shapes.
    fraction_train : float
        Fraction of connected devices sampled each round (at least `min_train_nodes`).
    seed : int
        Seed of the device sampling.
    max_update_norm : float
        Clip each device's update to this L2 norm before averaging, to cap the influence
        of one device; 0 leaves updates as they are.
    """

    def __init__(
        self,
        ledger: Ledger,
        physics: RoundPhysics,
        *,
        fraction_train: float,
        seed: int,
        max_update_norm: float = 0.0,
        min_train_nodes: int = 1,
        min_available_nodes: int = 1,
    ):
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,  # quality is measured centrally on the held-out split
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
        )
        self.ledger, self.physics, self.seed, self.max_update_norm = ledger, physics, seed, max_update_norm
        self.update_sq_norm = math.nan  # ‖Δ̄‖² of the last aggregate update; unknown before round 1
        self.range_sq: dict[int, dict[int, float]] = {}  # partition → range sums of its last update
        self.round_offset = 0  # rounds done before a resume: Flower's round r is round r + offset
        self._partition_of: dict[int, int] = {}  # node id → partition id, learnt from queries
        self._global: dict[str, torch.Tensor] = {}
        self._assigned: dict[int, dict[int, Assignment]] = {}

    # ------------------------------------------------------------------ what subclasses choose
    def candidate_bits(self, states: Sequence[DeviceState]) -> np.ndarray | None:
        """(N, C) candidate bit-widths, 0-padded; None: each device's demand."""
        raise NotImplementedError

    def codec_for(self, bits: int) -> str:
        """The codec that sends an update at `bits`."""
        raise NotImplementedError

    def allocate(self, devices: Devices, candidates: Candidates, network: Network) -> Allocation:
        """The round's plan (`edge.solve_round` or `edge.race_to_idle`)."""
        raise NotImplementedError

    def error_budget_active(self) -> bool:
        """Whether the plan enforces ε; only `ondemand` does."""
        return False

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """What the strategy learnt so far, as JSON-able values (saved with each checkpoint)."""
        return {
            "update_sq_norm": self.update_sq_norm if math.isfinite(self.update_sq_norm) else None,
            "range_sq": {str(p): {str(m): v for m, v in sums.items()} for p, sums in self.range_sq.items()},
        }

    def restore(self, state: dict, completed_rounds: int) -> None:
        """Go on after `completed_rounds` rounds from a `state()`."""
        norm = state["update_sq_norm"]
        self.update_sq_norm = math.nan if norm is None else float(norm)
        self.range_sq = {int(p): {int(m): float(v) for m, v in sums.items()} for p, sums in state["range_sq"].items()}
        self.round_offset = completed_rounds

    # ------------------------------------------------------------------ sampling and query
    def configure_train(
        self, flower_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample, query, plan; one train message per scheduled device."""
        server_round = flower_round + self.round_offset
        self._global = arrays.to_torch_state_dict()
        nodes = self._wait_for_nodes(grid)
        started = time.perf_counter()
        # Devices never seen are asked who they are; their answers are also this round's states.
        unknown = [n for n in nodes if n not in self._partition_of]
        states = self._query(server_round, unknown, grid)
        known = sorted((self._partition_of[n], n) for n in nodes if n in self._partition_of)
        size = min(max(int(len(nodes) * self.fraction_train), self.min_train_nodes), len(known))
        rng = np.random.default_rng([self.seed, server_round])
        sampled = sorted(known[i][1] for i in rng.choice(len(known), size=size, replace=False))
        states.update(self._query(server_round, [n for n in sampled if n not in unknown], grid))
        sampled = [n for n in sampled if n in states]
        log(INFO, "Round %d: sampled %d of %d devices", server_round, size, len(nodes))
        queried = time.perf_counter()
        assigned = self._plan(server_round, sampled, [self._with_ranges(n, states[n]) for n in sampled])
        self.ledger.book_phases(server_round, query_s=queried - started, solve_s=time.perf_counter() - queried)
        self._assigned[server_round] = assigned
        messages = []
        for node, plan in assigned.items():
            node_config = ConfigRecord(
                {
                    **dict(config), "server-round": server_round, "codec": plan.codec, "bits": plan.bits,
                    "cpu-hz": plan.cpu_hz, "power-w": plan.power_w, "bandwidth-hz": plan.bandwidth_hz,
                }
            )  # fmt: skip
            content = RecordDict({"arrays": arrays, "config": node_config})
            messages.append(
                Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round))
            )
        self.ledger.book_broadcast(server_round, arrays.count_bytes() * len(messages))
        return messages

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)  # waits for min_available_nodes
        return sorted(nodes)

    def _query(self, server_round: int, nodes: list[int], grid: Grid) -> dict[int, DeviceState]:
        """Ask `nodes` for their state; book those that fail or lie, return the others' states."""
        if not nodes:
            return {}
        content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
        queries = [
            Message(content, dst_node_id=n, message_type=MessageType.QUERY, group_id=str(server_round)) for n in nodes
        ]
        states, answered = {}, set()
        for reply in grid.send_and_receive(queries, timeout=QUERY_TIMEOUT_S):
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                self._book_unplanned(server_round, node, FAILED, f"query failed: {reply.error.reason}")
                continue
            record = reply.content.config_records.get(STATE_KEY)
            try:
                if record is None:
                    raise StateError(f"the query reply lacks the ConfigRecord {STATE_KEY!r}")
                partition = record.get("partition-id")
                if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
                    raise StateError(f"'partition-id' must be an int ≥ 0; got {partition!r}")
                self._partition_of[node] = partition
                states[node] = parse_state(record)
            except StateError as err:
                log(WARNING, "Round %d: rejected the state of node %d: %s", server_round, node, err)
                self._book_unplanned(server_round, node, REJECTED, f"bad state: {err}")
        for node in set(nodes) - answered:
            self._book_unplanned(server_round, node, FAILED, "no answer to the query before its timeout")
        return states

    def _book_unplanned(self, server_round: int, node: int, status: str, reason: str) -> None:
        """Book a device that dropped out before it could be planned (nothing charged)."""
        self.ledger.book(DeviceRecord(server_round, node, self._partition_of.get(node, -1), "", status, reason))

    # ------------------------------------------------------------------ planning
    def _plan(self, server_round: int, nodes: list[int], states: list[DeviceState]) -> dict[int, Assignment]:
        if not nodes:
            return {}
        states = self._with_mean_ranges(states)
        network = self.physics.network
        budget_on = self.error_budget_active() and math.isfinite(self.update_sq_norm) and all(s.range_sq for s in states)
        if budget_on:
            network = replace(network, update_sq_norm=max(self.update_sq_norm, 1e-300))
        else:
            network = replace(network, error_budget=math.inf)
        devices, candidates = solver_inputs(
            states,
            bits=self.candidate_bits(states),
            epochs=self.physics.epochs,
            flops_per_sample=self.physics.flops_per_sample,
            gamma=self.physics.gamma,
            payload_bits=self.payload_bits,
            error=lambda n, b: 0.0 if not budget_on or b == 32 else states[n].error(b, default_block_size(b)),
        )
        plan = self.allocate(devices, candidates, network)
        for warning in plan.warnings:
            log(WARNING, "Round %d: %s", server_round, warning)
        assigned = {}
        for n, (node, state) in enumerate(zip(nodes, states, strict=True)):
            partition = self._partition_of[node]
            if not plan.scheduled[n]:
                self.ledger.book(DeviceRecord(server_round, node, partition, state.device_class, EXCLUDED, plan.reason[n],
                                        bits_min=state.bits_min, bits_max=state.bits_max, gain=state.gain))  # fmt: skip
                continue
            bits = int(plan.bits[n])
            assigned[node] = Assignment(
                partition_id=partition, device_class=state.device_class, codec=self.codec_for(bits), bits=bits,
                bits_min=state.bits_min, bits_max=state.bits_max,
                cpu_hz=float(plan.cpu_hz[n]), power_w=float(plan.power_w[n]), bandwidth_hz=float(plan.bandwidth_hz[n]),
                gain=state.gain, compute_s=float(plan.compute_s[n]), energy_compute_j=float(plan.energy_compute_j[n]),
            )  # fmt: skip
        return assigned

    def _with_ranges(self, node: int, state: DeviceState) -> DeviceState:
        """A device that reports no range sums (it never trained, or it restarted) gets the ones
        of its last update the server received, if any."""
        known = self.range_sq.get(self._partition_of[node])
        return replace(state, range_sq=known) if not state.range_sq and known else state

    @staticmethod
    def _with_mean_ranges(states: list[DeviceState]) -> list[DeviceState]:
        """A device that has not trained yet gets the mean range statistics of those that have."""
        known = [s.range_sq for s in states if s.range_sq]
        if not known or len(known) == len(states):
            return states
        mean = {m: float(np.mean([k[m] for k in known if m in k])) for m in known[0]}
        return [s if s.range_sq else replace(s, range_sq=mean) for s in states]

    def payload_bits(self, bits: int) -> float:
        """S(b): the exact size, in bits, of an update encoded at `bits` by `codec_for(bits)`."""
        codec = get_codec(self.codec_for(bits), bits=bits)
        return 8.0 * sum(int(codec.size_bytes(shape)) for shape in self.physics.shapes)

    # ------------------------------------------------------------------ aggregation
    def aggregate_train(
        self, flower_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and book each reply, then add the weighted mean update to the global model."""
        server_round = flower_round + self.round_offset
        started = time.perf_counter()
        assigned = self._assigned.pop(server_round, {})
        accepted: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # (partition, examples, update)
        for reply in replies:
            node = reply.metadata.src_node_id
            plan = assigned.pop(node, None)
            if plan is None:
                continue  # not a device this round asked; nothing to book against
            if reply.has_error():
                self.ledger.book(self._record(server_round, node, plan, FAILED, reply.error.reason))
                continue
            sent = 0
            try:
                sent = self.payload_bytes(reply)
                metrics = _reply_metrics(reply)
                update = self.decode_update(reply, plan)
                _check_finite(update)
            except (ReplyError, KeyError, TypeError, ValueError) as err:
                log(WARNING, "Round %d: rejected the update of node %d: %s", server_round, node, err)
                self.ledger.book(self._record(server_round, node, plan, REJECTED, str(err), sent=sent))
                continue
            self.ledger.book(self._record(server_round, node, plan, OK, "", sent=sent, metrics=metrics))
            self.range_sq[plan.partition_id] = {m: metrics[f"range-sq-{m}"] for m in RANGE_BLOCK_SIZES}
            accepted.append((plan.partition_id, metrics["num-examples"], self._clipped(update)))
        for node, plan in assigned.items():
            self.ledger.book(self._record(server_round, node, plan, FAILED, "no reply before the round's timeout"))

        summary = self.ledger.summarise(server_round)
        log(INFO, "Round %d: %d updates aggregated, %d failed, %d rejected, %d excluded; device energy %.4g J",
            server_round, summary["devices_ok"], summary["devices_failed"], summary["devices_rejected"],
            summary["devices_excluded"], summary["energy_j"])  # fmt: skip
        decoded = time.perf_counter()
        self.ledger.book_phases(server_round, decode_s=decoded - started)
        if not accepted:
            log(WARNING, "Round %d: no usable update; the global model stays as it was.", server_round)
            return None, None
        accepted.sort(key=lambda item: item[0])
        total = sum(n for _, n, _ in accepted)
        new_global, sq_norm = {}, 0.0
        for name, weights in self._global.items():
            mean_update = sum(update[name] * (n / total) for _, n, update in accepted)
            sq_norm += float(mean_update.double().square().sum())
            new_global[name] = weights + mean_update.to(weights.dtype)
        self.update_sq_norm = sq_norm
        metrics = MetricRecord({"train-loss": summary["train_loss"], "bytes-up": summary["bytes_up"]})
        new_arrays = ArrayRecord(torch_state_dict=new_global)
        self.ledger.book_phases(server_round, aggregate_s=time.perf_counter() - decoded)
        return new_arrays, metrics

    def _clipped(self, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`update` scaled down to L2 norm `max_update_norm` if it is longer (0: unchanged)."""
        if not self.max_update_norm:
            return update
        norm = math.sqrt(sum(float(t.double().square().sum()) for t in update.values()))
        if norm <= self.max_update_norm:
            return update
        return {name: t * (self.max_update_norm / norm) for name, t in update.items()}

    def decode_update(self, reply: Message, plan: Assignment) -> dict[str, torch.Tensor]:
        """The update carried by a reply, as fp32 tensors; raises `ValueError` if unusable.

        The payload must be encoded with exactly the codec and bits assigned to this device
        and carry the global model's tensor names and shapes (`PayloadError` says why not).
        """
        arrays = reply.content.array_records.get(UPDATE_KEY)
        meta = reply.content.config_records.get(UPDATE_META_KEY)
        if arrays is None or meta is None:
            raise ReplyError(f"the reply lacks the ArrayRecord {UPDATE_KEY!r} or the ConfigRecord {UPDATE_META_KEY!r}")
        shapes = {name: tuple(t.shape) for name, t in self._global.items()}
        update = decode_update(arrays, meta, expected_codec=plan.codec, expected_bits=plan.bits, expected_shapes=shapes)
        return {name: t.float() for name, t in update.items()}

    @staticmethod
    def payload_bytes(reply: Message) -> int:
        """Bytes of encoded update the device sent (what its radio carried); 0 if none."""
        arrays = reply.content.array_records.get(UPDATE_KEY)
        return 0 if arrays is None else payload_bytes(arrays)

    def _record(self, server_round, node, plan: Assignment, status, reason, *, sent=0, metrics=None) -> DeviceRecord:
        """The ledger row of a trained device: energy from its plan and the bytes received.

        A device whose reply never came (`failed`) is charged nothing: nothing is known of it.
        """
        charged = status != FAILED
        upload_s = 0.0
        if sent:
            rate = uplink_rate_bps(plan.bandwidth_hz, plan.gain, plan.power_w, self.physics.network.noise_w_per_hz)
            upload_s = float(8 * sent / rate)
        compute_s = plan.compute_s if charged else 0.0
        metrics = metrics or {}
        return DeviceRecord(
            round=server_round, node_id=node, partition_id=plan.partition_id, device_class=plan.device_class,
            status=status, reason=reason, bits=plan.bits, bits_min=plan.bits_min, bits_max=plan.bits_max,
            cpu_hz=plan.cpu_hz, power_w=plan.power_w,
            bandwidth_hz=plan.bandwidth_hz, gain=plan.gain, compute_s=compute_s, upload_s=upload_s,
            energy_compute_j=plan.energy_compute_j if charged else 0.0, energy_upload_j=plan.power_w * upload_s,
            bytes_up=sent,
            deadline_missed=charged and compute_s + upload_s > self.physics.network.deadline_s * (1 + DEADLINE_RTOL),
            num_examples=metrics.get("num-examples", 0), train_loss=metrics.get("train-loss", math.nan),
            host_train_s=metrics.get("train-s", 0.0), host_encode_s=metrics.get("encode-s", 0.0),
        )  # fmt: skip


def _reply_metrics(reply: Message) -> dict:
    record = reply.content.metric_records.get(METRICS_KEY)
    if record is None:
        raise ReplyError(f"no MetricRecord {METRICS_KEY!r} in the reply")
    out = {}
    for key, kind in REPLY_METRICS.items():
        if key not in record:
            raise ReplyError(f"metric {key!r} is missing")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ReplyError(f"metric {key!r} must be {kind.__name__}, got {value!r}")
        if not math.isfinite(value):
            raise ReplyError(f"metric {key!r} is not finite: {value!r}")
        out[key] = kind(value)
    if out["num-examples"] <= 0:
        raise ReplyError(f"metric 'num-examples' must be positive, got {out['num-examples']}")
    return out


def _check_finite(update: dict[str, torch.Tensor]) -> None:
    for name, tensor in update.items():
        if not torch.isfinite(tensor).all():
            raise ReplyError(f"tensor {name!r} holds NaN or Inf")
