"""The downlink: what the server sends each device and what the device rebuilds.

The server's mirror and the device's copy must stay bit-identical round after round;
error feedback must carry what quantization left out into the next download; every
hostile download must be refused on the device with its reason.
"""

import pytest
import torch
from flwr.app import RecordDict

from qfd_app.downlink import (
    BASE_KEY,
    MODEL_KEY,
    MODEL_META_KEY,
    Broadcaster,
    DownlinkError,
    digest,
    received_model,
)
from qfd_app.protocol import TrainConfig
from qfd_app.quant import expected_payload_bytes, get_codec
from qfd_app.strategies.planner import DOWNLINKS

SHAPES = {"conv.weight": (8, 4, 3, 3), "conv.bias": (8,), "norm.weight": (300,)}


def model(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=g) for k, s in SHAPES.items()}


def config(downlink: str, bits: int, base_round: int = 0, round_: int = 1):
    return TrainConfig(round_, 1, "uniform", bits, 1e9, 0.1, 1e6, downlink, base_round)


def content(download) -> RecordDict:
    return RecordDict(download.records())


def device(download, downlink, bits, held=None, round_=1):
    cfg = config(downlink, bits, download.base_round, round_)
    return received_model(content(download), cfg, SHAPES, held)


@pytest.mark.parametrize("downlink", ["fp32", "fp16", "assigned"])
def test_shared_schemes_encode_once_per_codec_and_bits(downlink):
    w = model(0)
    sent = Broadcaster(downlink, seed=3).downloads(
        5, w, {0: ("uniform", 2), 1: ("uniform", 4), 2: ("uniform", 2)}, held={}
    )
    # devices with the same (codec, bits) share one encoding
    assert sent[0] is sent[2]
    assert (sent[0] is sent[1]) == (downlink != "assigned")
    for p, bits in ((0, 2), (1, 4)):
        codec, width = {"fp32": ("fp32", 32), "fp16": ("fp16", 16)}.get(
            downlink, ("uniform", bits)
        )
        assert (sent[p].codec, sent[p].bits) == (codec, width)
        assert sent[p].num_bytes == expected_payload_bytes(
            get_codec(codec, bits=width), SHAPES
        )
        rebuilt = device(sent[p], downlink, bits)
        assert digest(rebuilt) == sent[p].digest
        if downlink == "fp32":
            assert all(torch.equal(rebuilt[k], w[k]) for k in w)


def test_delta_mirror_and_device_stay_bit_identical_and_error_feedback_converges():
    """A device sampled every round: after the fp32 first download, deltas at 3 bits;
    its copy equals the server's mirror bit for bit, and with the model held still
    the residual w − m shrinks each download (what quantization left out is sent
    next time)."""
    server = Broadcaster("delta", seed=0)
    held, residuals = None, []
    for r in range(1, 8):
        w = model(0) if r >= 3 else model(r)  # the model stops moving after round 3
        sent = server.downloads(
            r, w, {7: ("uniform", 3)}, held={7: held[0] if held else 0}
        )[7]
        assert sent.base is None  # the device holds the copy the delta applies to
        rebuilt = device(sent, "delta", 3, held, round_=r)
        mirror_round, mirror = server.mirrors[7]
        assert mirror_round == r
        assert all(torch.equal(rebuilt[k], mirror[k]) for k in w)
        assert digest(rebuilt) == sent.digest
        held = (r, rebuilt)
        residuals.append(sum(float((w[k] - rebuilt[k]).square().sum()) for k in w))
    assert residuals[0] == 0.0  # the first download is the model, exact
    # held still from round 3: each delta quantizes the last residual, so it shrinks
    still = residuals[2:]
    assert all(b < a for a, b in zip(still, still[1:], strict=False))
    assert still[-1] < still[0] / 20


def test_delta_download_is_the_assigned_codec_size():
    server = Broadcaster("delta", seed=0)
    first = server.downloads(1, model(1), {0: ("uniform", 2)}, held={})[0]
    assert (first.codec, first.bits) == ("fp32", 32)  # the first download: full model
    assert server.resync([0, 1]) == [1]
    second = server.downloads(2, model(2), {0: ("uniform", 2)}, held={0: 1})[0]
    assert second.num_bytes == expected_payload_bytes(
        get_codec("uniform", bits=2), SHAPES
    )


def test_a_device_that_lost_its_copy_is_sent_the_mirror_and_rebuilds_it_exactly():
    server = Broadcaster("delta", seed=0)
    server.downloads(1, model(1), {0: ("uniform", 4)}, held={})
    sent = server.downloads(2, model(2), {0: ("uniform", 4)}, held={0: 0})[0]
    assert sent.base is not None and BASE_KEY in content(sent).array_records
    rebuilt = device(sent, "delta", 4, held=None, round_=2)
    assert all(torch.equal(rebuilt[k], server.mirrors[0][1][k]) for k in SHAPES)
    assert sent.num_bytes == expected_payload_bytes(
        get_codec("uniform", bits=4), SHAPES
    ) + expected_payload_bytes(get_codec("fp32", bits=32), SHAPES)


def test_a_delta_from_a_copy_the_device_does_not_hold_is_refused_with_the_rounds():
    server = Broadcaster("delta", seed=0)
    server.downloads(1, model(1), {0: ("uniform", 4)}, held={})
    sent = server.downloads(2, model(2), {0: ("uniform", 4)}, held={0: 1})[0]
    with pytest.raises(DownlinkError, match="round 1.*holds the copy of round 9"):
        device(sent, "delta", 4, held=(9, model(1)), round_=2)
    with pytest.raises(DownlinkError, match="holds no copy"):
        device(sent, "delta", 4, held=None, round_=2)


def test_checkpointed_mirrors_send_what_the_uninterrupted_server_sends():
    a = Broadcaster("delta", seed=1)
    for r in (1, 2):
        a.downloads(r, model(r), {0: ("uniform", 3), 1: ("uniform", 5)}, {0: r - 1})
    b = Broadcaster("delta", seed=1)
    b.restore(a.state(), {k: v.clone() for k, v in a.tensors().items()})
    args = (3, model(3), {0: ("uniform", 3), 1: ("uniform", 5)}, {0: 2, 1: 2})
    for x, y in zip(a.downloads(*args).values(), b.downloads(*args).values()):
        assert x.digest == y.digest and x.num_bytes == y.num_bytes


@pytest.mark.parametrize("downlink", ["fp16", "assigned", "delta"])
def test_hostile_downloads_are_refused_on_the_device_with_a_reason(downlink):
    server = Broadcaster(downlink, seed=0)
    held = None
    if downlink == "delta":
        server.downloads(1, model(1), {0: ("uniform", 4)}, held={})
        held = (1, server.mirrors[0][1])
    sent = server.downloads(2, model(2), {0: ("uniform", 4)}, held={0: 1})[0]
    cfg = config(downlink, 4, sent.base_round, 2)

    truncated = content(sent)
    arrays = truncated.array_records[MODEL_KEY]
    name = next(iter(arrays))
    arrays[name].data = arrays[name].data[:-3]
    with pytest.raises(DownlinkError, match="'model' is refused.*truncated"):
        received_model(truncated, cfg, SHAPES, held)

    # a download at other bits than the scheme gives this device
    wrong_bits = config(downlink, 3, sent.base_round, 2)
    expected = "refused.*differ" if downlink != "fp16" else None
    if expected:
        with pytest.raises(DownlinkError, match=expected):
            received_model(content(sent), wrong_bits, SHAPES, held)

    missing = content(sent)
    del missing[MODEL_META_KEY]
    with pytest.raises(DownlinkError, match="lacks"):
        received_model(missing, cfg, SHAPES, held)


def test_every_scheme_is_known_to_the_broadcaster():
    for downlink in DOWNLINKS:
        Broadcaster(downlink, seed=0)
    with pytest.raises(ValueError, match="downlink must be one of"):
        Broadcaster("fp8", seed=0)
