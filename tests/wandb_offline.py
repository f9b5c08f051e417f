"""Read what an offline W&B run wrote: the records of its ``run-*.wandb`` file.

The file is wandb's LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
blocks of records, each with a 7-byte header (CRC32, little-endian length, type: 1 full, 2 first,
3 middle, 4 last) and a protobuf ``Record`` payload. Only what the tests need is decoded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a .wandb file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_run(run_dir: str | Path) -> dict:
    """Return ``{"history": [dict per step], "summary": dict, "config": dict, "run": dict}`` of an
    offline run (``run``: group, job type, name and initial config of the run record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict = {"history": [], "summary": {}, "config": {}, "run": {}}
    for payload in _payloads(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "run":
            out["run"] = {
                "group": rec.run.run_group,
                "job_type": rec.run.job_type,
                "name": rec.run.display_name,
                "config": {i.key: json.loads(i.value_json) for i in rec.run.config.update},
            }
        elif kind == "config":
            for i in rec.config.update:
                out["config"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out
