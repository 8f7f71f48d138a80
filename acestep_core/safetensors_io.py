"""Reading checkpoint files safely: safetensors, shard indexes and bounded JSON/text reads; atomic writes.

`read_state_dict` accepts a single `.safetensors` file or a sharded set described by a
`*.safetensors.index.json`. Files are opened with safetensors' memory map; a file that is truncated, empty,
a pickle / torch zip, whose header points past its end, or that holds complex tensors gives a
`CheckpointError` naming the file (and key). Whether a file is safetensors is decided by parsing its
header, never by sniffing its first bytes: the first 8 bytes are the header length, so any byte can start
a valid file. Only a file whose header does not parse is then named a pickle or zip when it looks like one.

Every JSON or text file (configs, tokenizer.json, shard indexes, the CLI's @FILE arguments) is read with
`read_text_bounded`: regular files only (never a device or FIFO, which could be endless) and at most a
stated size, checked before reading.
"""

from __future__ import annotations

import json
import os
import stat
import struct

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# Size limits of the files read whole (bytes). Real files are far smaller: configs a few KB, the Qwen3
# tokenizer.json 11 MB, a shard index of ten thousand tensors under 1 MB.
CONFIG_LIMIT = 1 << 20
TOKENIZER_LIMIT = 64 << 20
INDEX_LIMIT = 16 << 20
# safetensors refuses headers above 100 MB itself; checking first keeps a hostile length from being read.
HEADER_LIMIT = 100_000_000
# Pickle protocol 2+ opens with 0x80 and the protocol number; torch.save writes a zip file.
_PICKLE_HEADS = tuple(bytes([0x80, p]) for p in range(2, 6))
_ZIP_HEAD = b"PK\x03\x04"
# safetensors dtype names of complex tensors: ACE-Step has none, and a real-only model would drop the
# imaginary part silently when casting.
_COMPLEX_DTYPES = ("C64", "C128")


class CheckpointError(ValueError):
    """A checkpoint file or folder is unusable. The message names the file (and key)."""


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


def read_text_bounded(path: str | os.PathLike, limit: int, what: str) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; anything else is a one-line ValueError.

    `what` names the file in messages ("config file", "tokenizer file", ...). The file is opened without
    blocking and checked with fstat before a byte is read, so a FIFO, a device such as /dev/zero (also
    behind a symlink) or an oversized file is refused without reading it; at most limit + 1 bytes are
    ever read, in case the file grows meanwhile.
    """
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: {what} is a folder, not a file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot open the {what} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{path}: {what} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: {what} is not a regular file (a device, FIFO or socket); refusing to read it")
        if info.st_size > limit:
            raise ValueError(f"{path}: {what} is {info.st_size} bytes, over the {_size(limit)} limit")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise ValueError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if len(data) > limit:
        raise ValueError(f"{path}: {what} is over the {_size(limit)} limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not valid UTF-8 text (byte {data[e.start]:#04x} at offset "
                         f"{e.start})") from None


def read_json_bounded(path: str | os.PathLike, limit: int = CONFIG_LIMIT, what: str = "config file") -> dict:
    """A JSON object from `read_text_bounded`; anything else (not JSON, not an object) is a one-line ValueError."""
    text = read_text_bounded(path, limit, what)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)}: expected a JSON object")
    return data


def _read_header(path: str) -> tuple[int, int, bytes, dict | None, str | None]:
    """-> (file size, header length, first 8 bytes, parsed header, problem). Reads at most the header."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if size == 0:
            return size, 0, head, None, "empty file (0 bytes), expected a safetensors file"
        if len(head) < 8:
            return size, 0, head, None, f"truncated ({size} bytes), expected a safetensors file"
        (header_len,) = struct.unpack("<Q", head)  # the header length, little-endian u64
        if header_len > HEADER_LIMIT:
            return size, header_len, head, None, (f"header claims {header_len} bytes, over safetensors' "
                                                  f"{HEADER_LIMIT}-byte limit (corrupt or not a safetensors file)")
        if header_len > size - 8:
            return size, header_len, head, None, (f"header claims {header_len} bytes but the file has {size - 8} "
                                                  "after it (truncated or not a safetensors file)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return size, header_len, head, None, "the safetensors header is not valid JSON (corrupt file)"
        if not isinstance(header, dict):
            return size, header_len, head, None, "the safetensors header is not a JSON object (corrupt file)"
        return size, header_len, head, header, None


def _check_header(path: str) -> None:
    try:
        size, header_len, head, header, problem = _read_header(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if problem is not None:
        # Only now, with the header unparsable, does a pickle / zip opening mean anything.
        if head.startswith(_PICKLE_HEADS) or head.startswith(_ZIP_HEAD):
            raise CheckpointError(f"{path}: this is a pickle / torch.save file, not safetensors; "
                                  "refusing to unpickle it")
        raise CheckpointError(f"{path}: {problem}")
    data_len = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{path}: tensor {key!r} lies past the end of the file (truncated)")
        if info.get("dtype") in _COMPLEX_DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} is complex ({info['dtype']}); model weights must be real")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file")
    _check_header(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types; keep the message, drop the traceback
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None


def _shard_path(folder: str, name, index: str) -> str:
    """A shard name from an index -> its path, which must lie inside `folder`.

    Checked on the name itself (relative, no `..`), not on resolved links: a Hugging Face cache snapshot
    holds its files as symlinks into a blobs/ folder outside it, and those are the checkpoint's own files.
    """
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{index}: shard name {name!r} is not a file name")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or ".." in parts:
        raise CheckpointError(f"{index}: shard {name!r} lies outside {folder}; an index may only name files "
                              "inside its own folder")
    return os.path.join(folder, *parts)


def _read_index(index: str) -> dict[str, str]:
    try:
        text = read_text_bounded(index, INDEX_LIMIT, "safetensors index")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{index}: not valid JSON ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: not a valid safetensors index (needs a non-empty 'weight_map')")
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index}: weight_map[{key!r}] is {shard!r}, expected a file name")
    return weight_map


def read_state_dict(folder: str | os.PathLike, stem: str) -> dict[str, torch.Tensor]:
    """`folder/stem.safetensors`, or its shards listed in `folder/stem.safetensors.index.json`."""
    folder = os.fspath(folder)
    single = os.path.join(folder, stem + ".safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.lexists(index):
        weight_map = _read_index(index)
        paths = {shard: _shard_path(folder, shard, index) for shard in sorted(set(weight_map.values()))}
        out: dict[str, torch.Tensor] = {}
        for shard, path in paths.items():
            tensors = read_safetensors(path)
            for key in tensors:
                if key in out:
                    raise CheckpointError(f"{path}: tensor {key!r} is also in another shard of {index}")
            out.update(tensors)
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise CheckpointError(f"{index}: lists tensor {missing[0]!r} in {weight_map[missing[0]]}, which does "
                                  "not hold it")
        return out
    pickles = [n for n in ("pytorch_model.bin", stem + ".bin", stem + ".pt") if os.path.exists(os.path.join(folder, n))]
    if pickles:
        raise CheckpointError(f"{os.path.join(folder, pickles[0])}: pickle checkpoints are not loaded (unsafe); "
                              "convert it to safetensors first")
    raise CheckpointError(f"{single}: file not found")


def current_umask() -> int:
    """The process umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write to a temporary name beside `path`, then rename: a crash never leaves a half-written file.

    The file gets the permissions any new file gets under the umask (safetensors itself creates 0600).
    """
    path = os.fspath(path)
    tmp = path + ".partial"
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
