"""qfd's ServerApp with a hostile downlink, for the fault test: partition 6's download
is truncated in round 1 and claims other bits than its assignment in round 2 (its
neighbours sharing the same encoding get theirs intact)."""

import dataclasses

from flwr.app import Array, ArrayRecord, ConfigRecord

from qfd_app import downlink, server_app

app = server_app.app  # the ServerApp Flower loads (an assignment, as Flower checks)

HOSTILE = 6
_downloads = downlink.Broadcaster.downloads


def hostile_downloads(self, server_round, model, assigned, held):
    sent = _downloads(self, server_round, model, assigned, held)
    if HOSTILE not in sent or server_round > 2:
        return sent
    arrays, meta = sent[HOSTILE].model
    arrays, meta = ArrayRecord(dict(arrays.items())), ConfigRecord(dict(meta.items()))
    if server_round == 1:
        name = next(iter(arrays))
        a = arrays[name]
        arrays[name] = Array(
            dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data[:-5]
        )
    else:
        meta["bits"] = int(meta["bits"]) + 1
    sent[HOSTILE] = dataclasses.replace(sent[HOSTILE], model=(arrays, meta))
    return sent


downlink.Broadcaster.downloads = hostile_downloads
