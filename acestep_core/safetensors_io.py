"""Reading and writing safetensors files safely: clear one-line errors, atomic writes, never a pickle.

`read_state_dict` accepts a single `.safetensors` file or a sharded set described by a
`*.safetensors.index.json`. Files are opened with safetensors' memory map; a file that is truncated, empty,
a pickle / torch zip, or whose header points past its end gives a `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from safetensors import safe_open
from safetensors.torch import save_file


class CheckpointError(ValueError):
    """A checkpoint file or folder is unusable. The message names the file (and key)."""


def _check_header(path: str) -> None:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if size == 0:
                raise CheckpointError(f"{path}: empty file (0 bytes), expected a safetensors file")
            # A pickle / torch zip starts with 0x80 / "PK"; a safetensors header length may too (its low byte can be
            # 0x80), so those bytes only mean "pickle" when the length they spell does not fit in the file.
            pickled = head[:1] == b"\x80" or head[:2] == b"PK"
            if pickled and (len(head) < 8 or struct.unpack("<Q", head)[0] > size - 8):
                raise CheckpointError(f"{path}: this is a pickle / torch.save file, not safetensors; refusing to unpickle it")
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated ({size} bytes), expected a safetensors file")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(f"{path}: header claims {header_len} bytes but the file has {size - 8} after it "
                                      "(truncated or not a safetensors file)")
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON (corrupt file)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object (corrupt file)")
    data_len = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{path}: tensor {key!r} lies past the end of the file (truncated)")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    _check_header(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types; keep the message, drop the traceback
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


def read_state_dict(folder: str | os.PathLike, stem: str) -> dict[str, torch.Tensor]:
    """`folder/stem.safetensors`, or its shards listed in `folder/stem.safetensors.index.json`."""
    folder = os.fspath(folder)
    single = os.path.join(folder, stem + ".safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{index}: not a valid safetensors index (needs a 'weight_map')") from None
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_safetensors(os.path.join(folder, shard)))
        return out
    pickles = [n for n in ("pytorch_model.bin", stem + ".bin", stem + ".pt") if os.path.exists(os.path.join(folder, n))]
    if pickles:
        raise CheckpointError(f"{os.path.join(folder, pickles[0])}: pickle checkpoints are not loaded (unsafe); "
                              "convert it to safetensors first")
    raise CheckpointError(f"{single}: file not found")


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write to a temporary name beside `path`, then rename: a crash never leaves a half-written file."""
    path = os.fspath(path)
    tmp = path + ".partial"
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
