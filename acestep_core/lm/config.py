"""The 5 Hz LM's configuration and our `config.json` for it.

Our LM folder holds `config.json`, `lm.safetensors` and `tokenizer.json`. The config file is

    {"format": "acestep-core-lm", "format_version": 1, "vocab_size": ..., "hidden_size": ..., ...}

and every other key maps one-to-one onto `LMConfig`; `acestep_core.config.from_dict` refuses a missing or
unknown key. Official (transformers) folders are read by `acestep_core.convert.lm`, never here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..config import ConfigError, from_dict, to_dict
from ..safetensors_io import read_json_bounded

FORMAT = "acestep-core-lm"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LMConfig:
    """A Qwen3 causal LM whose output head is tied to the token embedding (every released 5 Hz LM is)."""

    vocab_size: int  # rows of the embedding = width of the logits; may exceed the tokenizer's length
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # 128 in the released models, which is not hidden_size / num_heads for 0.6B
    rope_theta: float
    rms_norm_eps: float

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"LMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"LMConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                              f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"LMConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")


def _config_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def is_lm_config(path: str | os.PathLike) -> bool:
    """Whether `path` (a folder or its config.json) is in our LM format (as opposed to a transformers one)."""
    try:
        data = read_json_bounded(_config_file(path))
    except ValueError:  # missing, not a regular file, over the limit, not a JSON object
        return False
    return data.get("format") == FORMAT


def read_lm_config(path: str | os.PathLike) -> LMConfig:
    """Our `config.json` (a folder or the file itself) -> LMConfig; any malformed entry is a ConfigError."""
    path = _config_file(path)
    try:
        data = read_json_bounded(path)
    except ValueError as e:  # missing, not a regular file, over the limit, not UTF-8, not a JSON object
        raise ConfigError(str(e)) from None
    fmt, version = data.pop("format", None), data.pop("format_version", None)
    if fmt != FORMAT:
        raise ConfigError(f"{path}: format is {fmt!r}, expected {FORMAT!r} (an official LM folder is read by "
                          "python -m weights_convert)")
    if version != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version is {version!r}, this library reads {FORMAT_VERSION}")
    return from_dict(LMConfig, data, path)


def write_lm_config(config: LMConfig, path: str | os.PathLike) -> None:
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **to_dict(config)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
